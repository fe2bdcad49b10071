#include "policies/health_state.h"

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace bulwark {
namespace {

using Transition = HealthState::Transition;

const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

TEST(HealthStateTest, StartsHealthyWithNoProbeRecorded) {
  HealthState state({.unhealthy_threshold = 3, .healthy_threshold = 2});
  EXPECT_TRUE(state.Healthy());
  const HealthState::Snapshot snapshot = state.GetSnapshot();
  EXPECT_TRUE(snapshot.healthy);
  EXPECT_FALSE(snapshot.last_result.has_value());
  EXPECT_EQ(snapshot.last_probe_time, absl::InfinitePast());
  EXPECT_EQ(snapshot.consecutive_successes, 0u);
  EXPECT_EQ(snapshot.consecutive_failures, 0u);
}

TEST(HealthStateTest,
     BecomesUnhealthyAfterUnhealthyThresholdConsecutiveFailures) {
  HealthState state({.unhealthy_threshold = 3, .healthy_threshold = 2});
  EXPECT_EQ(state.Record(ProbeResult::kFailure, kStart),
            Transition::kUnchanged);
  EXPECT_EQ(state.Record(ProbeResult::kTimeout, kStart + absl::Seconds(5)),
            Transition::kUnchanged);
  EXPECT_TRUE(state.Healthy());
  EXPECT_EQ(state.Record(ProbeResult::kFailure, kStart + absl::Seconds(10)),
            Transition::kBecameUnhealthy);
  EXPECT_FALSE(state.Healthy());
  // Further failures change nothing more.
  EXPECT_EQ(state.Record(ProbeResult::kFailure, kStart + absl::Seconds(15)),
            Transition::kUnchanged);
  EXPECT_EQ(state.GetSnapshot().consecutive_failures, 4u);
}

TEST(HealthStateTest,
     BecomesHealthyAgainAfterHealthyThresholdConsecutiveSuccesses) {
  HealthState state({.unhealthy_threshold = 1, .healthy_threshold = 2});
  ASSERT_EQ(state.Record(ProbeResult::kFailure, kStart),
            Transition::kBecameUnhealthy);
  EXPECT_EQ(state.Record(ProbeResult::kSuccess, kStart + absl::Seconds(5)),
            Transition::kUnchanged);
  EXPECT_FALSE(state.Healthy());
  EXPECT_EQ(state.Record(ProbeResult::kSuccess, kStart + absl::Seconds(10)),
            Transition::kBecameHealthy);
  EXPECT_TRUE(state.Healthy());
}

TEST(HealthStateTest, AnInterruptedRunStartsCountingAgain) {
  HealthState state({.unhealthy_threshold = 2, .healthy_threshold = 2});
  // Failure, success, failure: never two failures in a row.
  EXPECT_EQ(state.Record(ProbeResult::kFailure, kStart),
            Transition::kUnchanged);
  EXPECT_EQ(state.Record(ProbeResult::kSuccess, kStart),
            Transition::kUnchanged);
  EXPECT_EQ(state.Record(ProbeResult::kFailure, kStart),
            Transition::kUnchanged);
  EXPECT_TRUE(state.Healthy());
  ASSERT_EQ(state.Record(ProbeResult::kTimeout, kStart),
            Transition::kBecameUnhealthy);
  // Success, failure, success: never two successes in a row.
  EXPECT_EQ(state.Record(ProbeResult::kSuccess, kStart),
            Transition::kUnchanged);
  EXPECT_EQ(state.Record(ProbeResult::kTimeout, kStart),
            Transition::kUnchanged);
  EXPECT_EQ(state.Record(ProbeResult::kSuccess, kStart),
            Transition::kUnchanged);
  EXPECT_FALSE(state.Healthy());
}

TEST(HealthStateTest, SnapshotKeepsLastVerdictTimeAndCounts) {
  HealthState state({.unhealthy_threshold = 3, .healthy_threshold = 2});
  state.Record(ProbeResult::kSuccess, kStart);
  state.Record(ProbeResult::kSuccess, kStart + absl::Seconds(5));
  state.Record(ProbeResult::kTimeout, kStart + absl::Seconds(10));
  const HealthState::Snapshot snapshot = state.GetSnapshot();
  EXPECT_TRUE(snapshot.healthy);
  EXPECT_EQ(snapshot.last_result, ProbeResult::kTimeout);
  EXPECT_EQ(snapshot.last_probe_time, kStart + absl::Seconds(10));
  EXPECT_EQ(snapshot.consecutive_successes, 0u);
  EXPECT_EQ(snapshot.consecutive_failures, 1u);
}

TEST(HealthStateTest, ThresholdsBelowOneActAsOne) {
  HealthState state({.unhealthy_threshold = 0, .healthy_threshold = 0});
  EXPECT_EQ(state.Record(ProbeResult::kFailure, kStart),
            Transition::kBecameUnhealthy);
  EXPECT_EQ(state.Record(ProbeResult::kSuccess, kStart),
            Transition::kBecameHealthy);
}

}  // namespace
}  // namespace bulwark
