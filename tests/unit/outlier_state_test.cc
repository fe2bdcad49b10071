#include "policies/outlier_state.h"

#include "gtest/gtest.h"

namespace bulwark {
namespace {

using Verdict = OutlierState::Verdict;
const absl::Time kStart = absl::UnixEpoch() + absl::Hours(1000);

OutlierState::Options Consecutive(uint32_t n) {
  return {.consecutive_failures = n,
          .failure_rate = 2.0,  // off
          .base_ejection_time = absl::Seconds(30),
          .max_ejection_time = absl::Seconds(300)};
}

TEST(OutlierStateTest, ConsecutiveFailuresAskForAnEjection) {
  OutlierState state(Consecutive(3));
  EXPECT_EQ(state.Record(true, kStart), Verdict::kKeep);
  EXPECT_EQ(state.Record(true, kStart), Verdict::kKeep);
  EXPECT_EQ(state.Record(false, kStart), Verdict::kKeep);  // the run breaks
  EXPECT_EQ(state.Record(true, kStart), Verdict::kKeep);
  EXPECT_EQ(state.Record(true, kStart), Verdict::kKeep);
  EXPECT_EQ(state.Record(true, kStart), Verdict::kEject);
}

TEST(OutlierStateTest, FailureRateCountsOnceTheWindowHoldsMinimumRequests) {
  OutlierState state({.consecutive_failures = 0,
                      .failure_rate = 0.5,
                      .minimum_requests = 10,
                      .window = absl::Seconds(10)});
  absl::Time now = kStart;
  // Alternating: 50 % failures, never two in a row.
  for (int i = 0; i < 9; ++i) {
    EXPECT_EQ(state.Record(i % 2 == 0, now), Verdict::kKeep) << i;
  }
  EXPECT_EQ(state.Record(true, now), Verdict::kEject);  // 5 of 10
  // Calls older than the window no longer count.
  OutlierState fresh({.consecutive_failures = 0,
                      .failure_rate = 0.5,
                      .minimum_requests = 4,
                      .window = absl::Seconds(10)});
  fresh.Record(true, now);
  fresh.Record(true, now);
  now += absl::Seconds(11);
  EXPECT_EQ(fresh.Record(false, now), Verdict::kKeep);
  EXPECT_EQ(fresh.Record(false, now), Verdict::kKeep);
  EXPECT_EQ(fresh.Record(false, now), Verdict::kKeep);
  EXPECT_EQ(fresh.Record(true, now), Verdict::kKeep);  // 1 of 4
}

TEST(OutlierStateTest, EjectionLastsBaseTimesCountUpToMax) {
  OutlierState state(Consecutive(1));
  absl::Time now = kStart;
  EXPECT_EQ(state.Eject(now), now + absl::Seconds(30));
  EXPECT_TRUE(state.Ejected(now + absl::Seconds(29)));
  EXPECT_FALSE(state.EndIfDue(now + absl::Seconds(29)));
  now += absl::Seconds(30);
  EXPECT_TRUE(state.EndIfDue(now));
  EXPECT_FALSE(state.EndIfDue(now));  // once
  EXPECT_FALSE(state.Ejected(now));
  EXPECT_EQ(state.Eject(now), now + absl::Seconds(60));
  now += absl::Seconds(60);
  ASSERT_TRUE(state.EndIfDue(now));
  for (int i = 3; i <= 12; ++i) {
    const absl::Time until = state.Eject(now);
    EXPECT_EQ(until - now, std::min(absl::Seconds(30) * i, absl::Seconds(300)))
        << i;
    now = until;
    ASSERT_TRUE(state.EndIfDue(now));
  }
}

TEST(OutlierStateTest, EjectionCountDecaysOnePerBaseTimeWithoutEjection) {
  OutlierState state(Consecutive(1));
  absl::Time now = kStart;
  for (int i = 0; i < 3; ++i) {
    now = state.Eject(now);
    ASSERT_TRUE(state.EndIfDue(now));
  }
  EXPECT_EQ(state.GetSnapshot(now).ejections, 3u);
  EXPECT_EQ(state.GetSnapshot(now + absl::Seconds(30)).ejections, 2u);
  EXPECT_EQ(state.GetSnapshot(now + absl::Seconds(89)).ejections, 1u);
  EXPECT_EQ(state.GetSnapshot(now + absl::Seconds(90)).ejections, 0u);
  // 60 s after the last one ended: the count is 1, so the next one is 2 x 30.
  const absl::Time later = now + absl::Seconds(60);
  EXPECT_EQ(state.Eject(later) - later, absl::Seconds(60));
}

TEST(OutlierStateTest, CountsStartAfreshAfterAnEjection) {
  OutlierState state(Consecutive(2));
  EXPECT_EQ(state.Record(true, kStart), Verdict::kKeep);
  EXPECT_EQ(state.Record(true, kStart), Verdict::kEject);
  const absl::Time until = state.Eject(kStart);
  // Calls finishing while ejected (sent before) do not count.
  EXPECT_EQ(state.Record(true, kStart + absl::Seconds(1)), Verdict::kKeep);
  ASSERT_TRUE(state.EndIfDue(until));
  EXPECT_EQ(state.Record(true, until), Verdict::kKeep);
  EXPECT_EQ(state.Record(true, until), Verdict::kEject);
}

TEST(OutlierStateTest, WatchNotServingEjectsUntilServing) {
  OutlierState state(Consecutive(5));
  state.EjectUntilServing();
  const absl::Time far = kStart + absl::Hours(5);
  EXPECT_TRUE(state.Ejected(far));
  EXPECT_FALSE(state.EndIfDue(far));  // not a timed ejection
  EXPECT_TRUE(state.GetSnapshot(far).until_serving);
  state.Serving();
  EXPECT_FALSE(state.Ejected(far));
  EXPECT_EQ(state.GetSnapshot(far).ejections, 0u);
}

TEST(OutlierStateTest, SnapshotShowsTimeLeft) {
  OutlierState state(Consecutive(1));
  state.Eject(kStart);
  const OutlierState::Snapshot s =
      state.GetSnapshot(kStart + absl::Seconds(10));
  EXPECT_TRUE(s.ejected);
  EXPECT_EQ(s.time_left, absl::Seconds(20));
  EXPECT_EQ(s.ejections, 1u);
}

}  // namespace
}  // namespace bulwark
