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
                           size_t size, int picks) {
  std::vector<int> counts(size, 0);
  for (int i = 0; i < picks; ++i) {
    std::optional<size_t> chosen = balancer.Pick(endpoints.span());
    EXPECT_TRUE(chosen.has_value());
    if (chosen) ++counts[*chosen];
  }
  return counts;
}

TEST(BalancerTest, RoundRobinVisitsEveryEndpointInTurn) {
  Balancer balancer(Balancer::Policy::kRoundRobin);
  Endpoints endpoints({true, true, true});
  std::vector<size_t> order;
  for (int i = 0; i < 6; ++i) order.push_back(*balancer.Pick(endpoints.span()));
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
  EXPECT_EQ(balancer.Pick(endpoints.span()), 1u);
  // The sidecar counts the call it sends; the choice follows the loads.
  endpoints[1].in_flight.store(4);
  EXPECT_EQ(balancer.Pick(endpoints.span()), 3u);
}

TEST(BalancerTest, LeastRequestIgnoresUnhealthyEvenIfIdle) {
  Balancer balancer(Balancer::Policy::kLeastRequest);
  Endpoints endpoints({false, true, true}, {0, 9, 4});
  EXPECT_EQ(balancer.Pick(endpoints.span()), 2u);
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
  for (int i = 0; i < 100; ++i) EXPECT_EQ(balancer.Pick(endpoints.span()), 17u);
}

TEST(BalancerTest, NoHealthyEndpointGivesNone) {
  for (Balancer::Policy policy :
       {Balancer::Policy::kRoundRobin, Balancer::Policy::kLeastRequest}) {
    Balancer balancer(policy);
    EXPECT_EQ(balancer.Pick(Endpoints({false, false}).span()), std::nullopt);
    EXPECT_EQ(balancer.Pick(Endpoints({}).span()), std::nullopt);
    EXPECT_EQ(balancer.Pick(Endpoints(std::vector<bool>(40, false)).span()),
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

}  // namespace
}  // namespace bulwark
