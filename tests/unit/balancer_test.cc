#include "policies/balancer.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bulwark {
namespace {

using ::testing::Each;
using ::testing::ElementsAre;

// Any instant: only peak EWMA reads it.
const absl::Time kT0 = absl::FromUnixSeconds(1'000'000);

// A cluster's endpoints as the sidecar keeps them: stable objects, a span of
// pointers.
class Endpoints {
 public:
  // `healthy[i]` and `in_flight[i]` describe endpoint i.
  Endpoints(std::vector<bool> healthy, std::vector<uint32_t> in_flight = {}) {
    for (size_t i = 0; i < healthy.size(); ++i) {
      auto load = std::make_unique<EndpointLoad>();
      load->healthy.store(healthy[i]);
      load->in_flight.store(i < in_flight.size() ? in_flight[i] : 0);
      pointers_.push_back(load.get());
      loads_.push_back(std::move(load));
    }
  }
  absl::Span<const EndpointLoad* const> span() const { return pointers_; }
  EndpointLoad& operator[](size_t i) { return *loads_[i]; }

 private:
  std::vector<std::unique_ptr<EndpointLoad>> loads_;
  std::vector<const EndpointLoad*> pointers_;
};

// How many of `picks` picks went to each endpoint.
std::vector<int> Histogram(Balancer& balancer, const Endpoints& endpoints,
                           size_t size, int picks, absl::Time now = kT0) {
  std::vector<int> counts(size, 0);
  for (int i = 0; i < picks; ++i) {
    std::optional<size_t> chosen = balancer.Pick(endpoints.span(), now);
    EXPECT_TRUE(chosen.has_value());
    if (chosen) ++counts[*chosen];
  }
  return counts;
}

TEST(BalancerTest, RoundRobinVisitsEveryEndpointInTurn) {
  Balancer balancer(Balancer::Policy::kRoundRobin);
  Endpoints endpoints({true, true, true});
  std::vector<size_t> order;
  for (int i = 0; i < 6; ++i)
    order.push_back(*balancer.Pick(endpoints.span(), kT0));
  EXPECT_THAT(order, ElementsAre(0, 1, 2, 0, 1, 2));
}

TEST(BalancerTest, RoundRobinSkipsUnhealthy) {
  Balancer balancer(Balancer::Policy::kRoundRobin);
  // Healthy endpoints 0 and 3, with a run of unhealthy ones in between: each
  // healthy one must still get exactly half, not 0 one quarter and 3 three
  // quarters.
  Endpoints endpoints({true, false, false, true});
  EXPECT_THAT(Histogram(balancer, endpoints, 4, 1000),
              ElementsAre(500, 0, 0, 500));
}

TEST(BalancerTest, RoundRobinFollowsHealthChanges) {
  Balancer balancer(Balancer::Policy::kRoundRobin);
  Endpoints endpoints({true, true, true});
  endpoints[1].healthy.store(false);
  EXPECT_THAT(Histogram(balancer, endpoints, 3, 100), ElementsAre(50, 0, 50));
  endpoints[1].healthy.store(true);
  EXPECT_THAT(Histogram(balancer, endpoints, 3, 99), Each(33));
}

TEST(BalancerTest, LeastRequestPicksFewestInFlight) {
  Balancer balancer(Balancer::Policy::kLeastRequest);
  Endpoints endpoints({true, true, true, true}, {5, 2, 7, 3});
  EXPECT_EQ(balancer.Pick(endpoints.span(), kT0), 1u);
  // The sidecar counts the call it sends; the choice follows the loads.
  endpoints[1].in_flight.store(4);
  EXPECT_EQ(balancer.Pick(endpoints.span(), kT0), 3u);
}

TEST(BalancerTest, LeastRequestIgnoresUnhealthyEvenIfIdle) {
  Balancer balancer(Balancer::Policy::kLeastRequest);
  Endpoints endpoints({false, true, true}, {0, 9, 4});
  EXPECT_EQ(balancer.Pick(endpoints.span(), kT0), 2u);
}

TEST(BalancerTest, LeastRequestRotatesTies) {
  Balancer balancer(Balancer::Policy::kLeastRequest);
  // 0 and 1 tie at the minimum (and sit next to each other, where "first after
  // a rotating start" would favour 0); 2 is busier, 3 is unhealthy.
  Endpoints endpoints({true, true, true, false}, {1, 1, 5, 0});
  EXPECT_THAT(Histogram(balancer, endpoints, 4, 1000),
              ElementsAre(500, 500, 0, 0));
}

TEST(BalancerTest, LeastRequestWithManyEndpointsAvoidsTheBusyOnes) {
  Balancer balancer(Balancer::Policy::kLeastRequest);
  // 64 endpoints (power of two choices): 32 idle, 31 busy, one unhealthy.
  std::vector<bool> healthy(64, true);
  healthy[63] = false;
  std::vector<uint32_t> in_flight(64, 0);
  for (size_t i = 32; i < 64; ++i) in_flight[i] = 100;
  Endpoints endpoints(healthy, in_flight);
  std::vector<int> counts = Histogram(balancer, endpoints, 64, 64000);
  int to_busy = 0;
  for (size_t i = 32; i < 64; ++i) to_busy += counts[i];
  EXPECT_EQ(counts[63], 0);
  // A busy endpoint wins only when both draws are busy: about a quarter of the
  // picks.
  EXPECT_LT(to_busy, 64000 * 30 / 100);
  for (size_t i = 0; i < 32; ++i) EXPECT_GT(counts[i], 0) << i;
}

TEST(BalancerTest, LeastRequestWithManyEndpointsFindsTheOnlyHealthyOne) {
  Balancer balancer(Balancer::Policy::kLeastRequest);
  std::vector<bool> healthy(40, false);
  healthy[17] = true;
  Endpoints endpoints(healthy);
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(balancer.Pick(endpoints.span(), kT0), 17u);
}

TEST(BalancerTest, NoHealthyEndpointGivesNone) {
  for (Balancer::Policy policy :
       {Balancer::Policy::kRoundRobin, Balancer::Policy::kLeastRequest,
        Balancer::Policy::kPeakEwma}) {
    Balancer balancer(policy);
    EXPECT_EQ(balancer.Pick(Endpoints({false, false}).span(), kT0),
              std::nullopt);
    EXPECT_EQ(balancer.Pick(Endpoints({}).span(), kT0), std::nullopt);
    EXPECT_EQ(
        balancer.Pick(Endpoints(std::vector<bool>(40, false)).span(), kT0),
        std::nullopt);
  }
}

TEST(BalancerTest, PickFunctionsArePureInThePickNumber) {
  Endpoints endpoints({true, false, true, true});
  EXPECT_EQ(PickRoundRobin(endpoints.span(), 0), 0u);
  EXPECT_EQ(PickRoundRobin(endpoints.span(), 1), 2u);
  EXPECT_EQ(PickRoundRobin(endpoints.span(), 2), 3u);
  EXPECT_EQ(PickRoundRobin(endpoints.span(), 3), 0u);
  Endpoints tied({true, true, true}, {2, 1, 1});
  EXPECT_EQ(PickLeastRequest(tied.span(), 0), 1u);
  EXPECT_EQ(PickLeastRequest(tied.span(), 1), 2u);
}

// --- peak EWMA ---------------------------------------------------------------

// The estimate in whole microseconds (the exp() makes nanoseconds inexact).
int64_t EstimateUs(const EndpointLoad& load, absl::Time now) {
  const std::optional<absl::Duration> estimate = LatencyEstimate(load, now);
  return estimate.has_value() ? absl::ToInt64Microseconds(*estimate) : -1;
}

TEST(PeakEwmaTest, EstimateJumpsToAPeakAndFallsATenthOfTheWayPerLowerSample) {
  EndpointLoad load;
  EXPECT_EQ(LatencyEstimate(load, kT0), std::nullopt);
  ObserveLatency(load, absl::Milliseconds(10), kT0);
  EXPECT_EQ(EstimateUs(load, kT0), 10'000);
  ObserveLatency(load, absl::Milliseconds(50), kT0);
  EXPECT_EQ(EstimateUs(load, kT0), 50'000);  // a peak: at once
  ObserveLatency(load, absl::Milliseconds(10), kT0);
  EXPECT_EQ(EstimateUs(load, kT0), 46'000);  // 50 + (10 - 50) / 10
  ObserveLatency(load, absl::Milliseconds(10), kT0);
  EXPECT_EQ(EstimateUs(load, kT0), 42'400);
}

TEST(PeakEwmaTest, EstimateDecaysTowardZeroBetweenSamples) {
  EndpointLoad load;
  ObserveLatency(load, absl::Milliseconds(50), kT0);
  EXPECT_EQ(EstimateUs(load, kT0 + kPeakEwmaDecay), 18'393);  // 50 / e
  EXPECT_EQ(EstimateUs(load, kT0 + 2 * kPeakEwmaDecay), 6'766);
  // Reading changes nothing; a clock read out of order does not inflate it.
  EXPECT_EQ(EstimateUs(load, kT0), 50'000);
  EXPECT_EQ(EstimateUs(load, kT0 - absl::Seconds(1)), 50'000);
  // A sample starts from the decayed value.
  ObserveLatency(load, absl::Milliseconds(5), kT0 + kPeakEwmaDecay);
  EXPECT_EQ(EstimateUs(load, kT0 + kPeakEwmaDecay), 17'054);  // 18.39 - 1.34
}

TEST(PeakEwmaTest, ALowerBoundRaisesTheEstimateButNeverLowersIt) {
  EndpointLoad load;
  ObserveLatencyAtLeast(load, absl::Milliseconds(20), kT0);
  EXPECT_EQ(EstimateUs(load, kT0), 20'000);  // a first sample too
  ObserveLatencyAtLeast(load, absl::Milliseconds(1), kT0);
  EXPECT_EQ(EstimateUs(load, kT0), 20'000);
  ObserveLatencyAtLeast(load, absl::Milliseconds(30), kT0);
  EXPECT_EQ(EstimateUs(load, kT0), 30'000);
  // It restarts the decay from the decayed value, not from the old stamp.
  ObserveLatencyAtLeast(load, absl::ZeroDuration(), kT0 + kPeakEwmaDecay);
  EXPECT_EQ(EstimateUs(load, kT0 + kPeakEwmaDecay), 11'036);
  EXPECT_EQ(EstimateUs(load, kT0 + 2 * kPeakEwmaDecay), 4'060);
}

TEST(PeakEwmaTest, CostWeighsCallsInFlightByTheEstimate) {
  EndpointLoad load;
  EXPECT_EQ(PeakEwmaCost(load, kT0), 0.0);  // never sampled, idle: try it
  load.in_flight.store(1);
  const double unsampled_busy = PeakEwmaCost(load, kT0);
  EndpointLoad slow;
  ObserveLatency(slow, absl::Seconds(30), kT0);
  slow.in_flight.store(1000);
  EXPECT_GT(unsampled_busy, PeakEwmaCost(slow, kT0));  // one probe at a time
  load.in_flight.store(2);
  EXPECT_GT(PeakEwmaCost(load, kT0), unsampled_busy);
  EndpointLoad sampled;
  ObserveLatency(sampled, absl::Milliseconds(5), kT0);
  EXPECT_DOUBLE_EQ(PeakEwmaCost(sampled, kT0), 5e6);
  sampled.in_flight.store(3);
  EXPECT_DOUBLE_EQ(PeakEwmaCost(sampled, kT0), 20e6);
}

TEST(PeakEwmaTest, AvoidsTheSlowEndpointAtEqualCallsInFlight) {
  Balancer balancer(Balancer::Policy::kPeakEwma);
  Endpoints endpoints({true, true, true}, {2, 2, 2});
  ObserveLatency(endpoints[0], absl::Milliseconds(5), kT0);
  ObserveLatency(endpoints[1], absl::Milliseconds(5), kT0);
  ObserveLatency(endpoints[2], absl::Milliseconds(50), kT0);
  // Least request would rotate over all three; peak EWMA over the fast two.
  EXPECT_THAT(Histogram(balancer, endpoints, 3, 1000, kT0),
              ElementsAre(500, 500, 0));
}

TEST(PeakEwmaTest, TheSlowEndpointTakesCallsOnceTheFastOnesAreLoaded) {
  Balancer balancer(Balancer::Policy::kPeakEwma);
  Endpoints endpoints({true, true, true}, {9, 9, 0});
  ObserveLatency(endpoints[0], absl::Milliseconds(5), kT0);
  ObserveLatency(endpoints[1], absl::Milliseconds(5), kT0);
  ObserveLatency(endpoints[2], absl::Milliseconds(50), kT0);
  // 5 ms x (9 + 1) = 50 ms x (0 + 1): a tie, rotated.
  EXPECT_THAT(Histogram(balancer, endpoints, 3, 300, kT0),
              ElementsAre(100, 100, 100));
  endpoints[0].in_flight.store(10);
  endpoints[1].in_flight.store(10);
  EXPECT_EQ(balancer.Pick(endpoints.span(), kT0), 2u);
  endpoints[2].in_flight.store(1);  // 100 ms against 55 ms
  EXPECT_THAT(Histogram(balancer, endpoints, 3, 100, kT0),
              ElementsAre(50, 50, 0));
}

TEST(PeakEwmaTest, AnAvoidedSlowEndpointIsTriedAgainOnceItsEstimateDecays) {
  Balancer balancer(Balancer::Policy::kPeakEwma);
  Endpoints endpoints({true, true}, {5, 0});
  ObserveLatency(endpoints[1], absl::Milliseconds(50), kT0);
  // The fast endpoint answers in 5 ms all along: cost 5 x (5 + 1) = 30 ms.
  // The slow one, unsampled since kT0, costs 50 ms x e^(-t / 10 s): below
  // 30 ms after 10 s x ln(5 / 3) = 5.1 s.
  std::optional<absl::Duration> first_probe;
  for (absl::Duration t = absl::ZeroDuration(); t < absl::Seconds(10);
       t += absl::Milliseconds(100)) {
    ObserveLatency(endpoints[0], absl::Milliseconds(5), kT0 + t);
    if (balancer.Pick(endpoints.span(), kT0 + t) == 1u) {
      first_probe = t;
      break;
    }
  }
  ASSERT_TRUE(first_probe.has_value());
  EXPECT_EQ(*first_probe, absl::Milliseconds(5200));
  // Its answer (still slow) sets the estimate right again.
  ObserveLatency(endpoints[1], absl::Milliseconds(50), kT0 + *first_probe);
  EXPECT_EQ(balancer.Pick(endpoints.span(), kT0 + *first_probe), 0u);
}

TEST(PeakEwmaTest, UnsampledEndpointsGetOneProbeAtATime) {
  Balancer balancer(Balancer::Policy::kPeakEwma);
  Endpoints endpoints({true, true, true}, {30, 0, 1});
  ObserveLatency(endpoints[0], absl::Milliseconds(5), kT0);
  // 1 is new and idle: it goes first; 2 is new with a call out: last.
  EXPECT_EQ(balancer.Pick(endpoints.span(), kT0), 1u);
  endpoints[1].in_flight.store(1);
  EXPECT_EQ(balancer.Pick(endpoints.span(), kT0), 0u);
}

TEST(PeakEwmaTest, WithManyEndpointsAvoidsTheSlowOnes) {
  Balancer balancer(Balancer::Policy::kPeakEwma);
  // 64 endpoints (power of two choices), equally loaded: 32 fast, 32 slow.
  Endpoints endpoints(std::vector<bool>(64, true),
                      std::vector<uint32_t>(64, 1));
  for (size_t i = 0; i < 64; ++i) {
    ObserveLatency(endpoints[i],
                   i < 32 ? absl::Milliseconds(5) : absl::Milliseconds(50),
                   kT0);
  }
  std::vector<int> counts = Histogram(balancer, endpoints, 64, 64000, kT0);
  int to_slow = 0;
  for (size_t i = 32; i < 64; ++i) to_slow += counts[i];
  // A slow endpoint wins only when both draws are slow: about a quarter.
  EXPECT_LT(to_slow, 64000 * 30 / 100);
  EXPECT_GT(to_slow, 64000 * 20 / 100);
}

TEST(PeakEwmaTest, PickIsPureInThePickNumberAndTheTime) {
  Endpoints endpoints({true, true, false}, {0, 0, 0});
  // Both unsampled and idle: a tie, rotated by the pick number.
  EXPECT_EQ(PickPeakEwma(endpoints.span(), 0, kT0), 0u);
  EXPECT_EQ(PickPeakEwma(endpoints.span(), 1, kT0), 1u);
  ObserveLatency(endpoints[0], absl::Milliseconds(1), kT0);
  EXPECT_EQ(PickPeakEwma(endpoints.span(), 0, kT0), 1u);  // 0 beats 1 ms
  EXPECT_EQ(PickPeakEwma(endpoints.span(), 1, kT0), 1u);
}

}  // namespace
}  // namespace bulwark
