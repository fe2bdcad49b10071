// AdaptiveLimit against a modelled upstream, on simulated time (no clock, no
// sleeps): an upstream that serves `capacity` calls at once in `service` each
// and queues the rest (a call admitted behind k others takes service x
// max(1, k / capacity)), offered an open-loop load (arrivals on schedule
// whether or not earlier calls answered). The limit admits a call when fewer
// than limit() are in flight, else the call is rejected.
#include "policies/adaptive_limit.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <queue>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace bulwark {
namespace {

struct Upstream {
  int capacity = 20;
  absl::Duration service = absl::Milliseconds(10);
  double CapacityPerSecond() const {
    return capacity / absl::ToDoubleSeconds(service);
  }
};

struct Totals {
  int64_t offered = 0;
  int64_t admitted = 0;
  int64_t rejected = 0;
  absl::Duration latency_sum;
  absl::Duration max_latency;
  uint32_t min_limit = UINT32_MAX;
  uint32_t max_limit = 0;
  double MeanLatencyMs() const {
    return admitted == 0 ? 0
                         : absl::ToDoubleMilliseconds(latency_sum) / admitted;
  }
};

class Simulation {
 public:
  explicit Simulation(AdaptiveLimit::Options options) : limit_(options) {}

  // Offers `rate` calls per second for `duration` to `upstream`.
  Totals Run(const Upstream& upstream, double rate, absl::Duration duration) {
    Totals totals;
    const absl::Duration gap = absl::Seconds(1.0 / rate);
    const absl::Time end = now_ + duration;
    absl::Time next_arrival = now_;
    while (true) {
      const bool completion_first =
          !completions_.empty() && completions_.top().at <= next_arrival;
      if (!completion_first && next_arrival >= end) break;
      if (completion_first) {
        const Completion c = completions_.top();
        completions_.pop();
        now_ = c.at;
        --in_flight_;
        limit_.OnSample(now_, c.latency, c.in_flight_at_admit, false);
        continue;
      }
      now_ = next_arrival;
      next_arrival += gap;
      ++totals.offered;
      const uint32_t limit = limit_.limit();
      totals.min_limit = std::min(totals.min_limit, limit);
      totals.max_limit = std::max(totals.max_limit, limit);
      if (in_flight_ >= static_cast<int>(limit)) {
        ++totals.rejected;
        continue;
      }
      ++in_flight_;
      ++totals.admitted;
      const double load =
          std::max(1.0, static_cast<double>(in_flight_) / upstream.capacity);
      const absl::Duration latency = upstream.service * load;
      totals.latency_sum += latency;
      totals.max_latency = std::max(totals.max_latency, latency);
      completions_.push(
          {now_ + latency, latency, static_cast<uint32_t>(in_flight_)});
    }
    return totals;
  }

  const AdaptiveLimit& limit() const { return limit_; }

 private:
  struct Completion {
    absl::Time at;
    absl::Duration latency;
    uint32_t in_flight_at_admit;
    bool operator>(const Completion& o) const { return at > o.at; }
  };
  AdaptiveLimit limit_;
  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
  int in_flight_ = 0;
  std::priority_queue<Completion, std::vector<Completion>,
                      std::greater<Completion>>
      completions_;
};

constexpr AdaptiveLimit::Options kOptions{
    .min_limit = 4, .max_limit = 256, .initial_limit = 20};

TEST(AdaptiveLimitTest, StartsAtTheInitialLimitWithinTheBounds) {
  EXPECT_EQ(AdaptiveLimit(kOptions).limit(), 20u);
  EXPECT_EQ(AdaptiveLimit({.min_limit = 4, .max_limit = 8, .initial_limit = 20})
                .limit(),
            8u);
  EXPECT_EQ(
      AdaptiveLimit({.min_limit = 30, .max_limit = 256, .initial_limit = 20})
          .limit(),
      30u);
}

TEST(AdaptiveLimitTest, SteadyLoadTheUpstreamServesIsNeverRejected) {
  const Upstream upstream;
  Simulation sim(kOptions);
  const Totals t =
      sim.Run(upstream, 0.7 * upstream.CapacityPerSecond(), absl::Seconds(60));
  EXPECT_EQ(t.rejected, 0) << "limit ranged " << t.min_limit << ".."
                           << t.max_limit;
  EXPECT_NEAR(t.MeanLatencyMs(), 10.0, 0.5);
}

TEST(AdaptiveLimitTest, UnderOverloadGoodputStaysAtCapacityAndLatencyLow) {
  const Upstream upstream;
  Simulation sim(kOptions);
  sim.Run(upstream, 0.7 * upstream.CapacityPerSecond(), absl::Seconds(10));
  // A 3x step: the first 5 s settle the limit, the next 15 s are measured.
  sim.Run(upstream, 3 * upstream.CapacityPerSecond(), absl::Seconds(5));
  const Totals t =
      sim.Run(upstream, 3 * upstream.CapacityPerSecond(), absl::Seconds(15));
  const double goodput = t.admitted / 15.0;
  EXPECT_GE(goodput, 0.9 * upstream.CapacityPerSecond());
  EXPECT_LE(t.MeanLatencyMs(), 2 * 10.0);
  EXPECT_LE(t.max_latency, 2 * upstream.service);
  // Settled: the limit stays near the upstream's capacity.
  EXPECT_GE(t.min_limit, static_cast<uint32_t>(upstream.capacity));
  EXPECT_LE(t.max_limit, static_cast<uint32_t>(2 * upstream.capacity));
}

TEST(AdaptiveLimitTest, FullAdmissionReturnsWithinSecondsAfterOverload) {
  const Upstream upstream;
  Simulation sim(kOptions);
  sim.Run(upstream, 3 * upstream.CapacityPerSecond(), absl::Seconds(20));
  sim.Run(upstream, 0.7 * upstream.CapacityPerSecond(), absl::Seconds(5));
  const Totals after =
      sim.Run(upstream, 0.7 * upstream.CapacityPerSecond(), absl::Seconds(30));
  EXPECT_EQ(after.rejected, 0);
}

TEST(AdaptiveLimitTest, FollowsTheUpstreamWhenItsCapacityHalves) {
  Upstream upstream;
  Simulation sim(kOptions);
  sim.Run(upstream, 3 * upstream.CapacityPerSecond(), absl::Seconds(10));
  upstream.capacity = 10;
  sim.Run(upstream, 3 * 2000.0, absl::Seconds(5));
  const Totals t = sim.Run(upstream, 3 * 2000.0, absl::Seconds(15));
  EXPECT_GE(t.admitted / 15.0, 0.9 * upstream.CapacityPerSecond());
  EXPECT_LE(t.max_latency, 2 * upstream.service);
  EXPECT_LE(t.max_limit, static_cast<uint32_t>(2 * upstream.capacity));
}

TEST(AdaptiveLimitTest, ALastingRiseInTheUpstreamsOwnLatencyIsLearned) {
  Upstream upstream;
  Simulation sim(kOptions);
  sim.Run(upstream, 0.5 * upstream.CapacityPerSecond(), absl::Seconds(10));
  // Every call now takes 3x as long, whatever the load (a slower dependency):
  // the capacity in calls at once is unchanged, in calls a second a third.
  upstream.service = absl::Milliseconds(30);
  sim.Run(upstream, 0.5 * upstream.CapacityPerSecond(), absl::Seconds(30));
  const Totals t =
      sim.Run(upstream, 0.5 * upstream.CapacityPerSecond(), absl::Seconds(30));
  EXPECT_EQ(t.rejected, 0) << "limit ranged " << t.min_limit << ".."
                           << t.max_limit;
  EXPECT_NEAR(absl::ToDoubleMilliseconds(sim.limit().baseline()), 30.0, 3.0);
}

TEST(AdaptiveLimitTest, OverloadOutcomesShrinkTheLimit) {
  AdaptiveLimit limit(kOptions);
  absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  for (int i = 0; i < 200; ++i) {
    now += absl::Milliseconds(5);
    limit.OnSample(now, absl::Milliseconds(10), 10, /*overloaded=*/true);
  }
  EXPECT_EQ(limit.limit(), kOptions.min_limit);
}

TEST(AdaptiveLimitTest, AnIdleRouteDoesNotGrowWithoutBound) {
  const Upstream upstream;
  Simulation sim(kOptions);
  // Two calls in flight on average: the limit grows to serve them and stays
  // near twice the calls seen, far below max_limit.
  sim.Run(upstream, 200, absl::Seconds(60));
  const Totals t = sim.Run(upstream, 200, absl::Seconds(10));
  EXPECT_EQ(t.rejected, 0);
  EXPECT_LE(t.max_limit, 20u);
}

}  // namespace
}  // namespace bulwark
