#include "policies/retry_budget.h"

#include "gtest/gtest.h"

namespace bulwark {
namespace {

const absl::Time kStart = absl::UnixEpoch() + absl::Hours(1000);

TEST(RetryBackoffTest, GrowsByTwoUpToTheCapWithFullJitter) {
  const absl::Duration initial = absl::Milliseconds(25);
  const absl::Duration max = absl::Milliseconds(250);
  // The top of the range: 25, 50, 100, 200, 250, 250 ms.
  EXPECT_EQ(RetryBackoff(1, initial, max, 0.999999), absl::Microseconds(24999));
  EXPECT_EQ(RetryBackoff(2, initial, max, 0.5), absl::Milliseconds(25));
  EXPECT_EQ(RetryBackoff(3, initial, max, 0.5), absl::Milliseconds(50));
  EXPECT_EQ(RetryBackoff(4, initial, max, 0.5), absl::Milliseconds(100));
  EXPECT_EQ(RetryBackoff(5, initial, max, 0.5), absl::Milliseconds(125));
  EXPECT_EQ(RetryBackoff(60, initial, max, 0.5), absl::Milliseconds(125));
  EXPECT_EQ(RetryBackoff(1, initial, max, 0.0), absl::ZeroDuration());
}

TEST(RetryBudgetTest, FloorAllowsMinPerSecondTimesTheWindowWithoutCalls) {
  RetryBudget budget({.ratio = 0.2, .min_per_second = 1});
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(budget.TryTakeExtra(kStart)) << i;
  EXPECT_FALSE(budget.TryTakeExtra(kStart));
  EXPECT_EQ(budget.AvailableApprox(kStart), 0);
}

TEST(RetryBudgetTest, ExtrasStayWithinRatioOfTheCalls) {
  RetryBudget budget({.ratio = 0.2, .min_per_second = 0});
  for (int i = 0; i < 1000; ++i) budget.RecordCall(kStart);
  int sent = 0;
  for (int i = 0; i < 1000; ++i) sent += budget.TryTakeExtra(kStart) ? 1 : 0;
  EXPECT_EQ(sent, 200);
}

TEST(RetryBudgetTest, EveryCallFailingSendsAtMostOnePointTwoTimesTheCalls) {
  // Each call tries up to 4 extra attempts; the budget is what stops them.
  RetryBudget budget({.ratio = 0.2, .min_per_second = 0});
  int64_t attempts = 0;
  absl::Time now = kStart;
  for (int call = 0; call < 5000; ++call) {
    now += absl::Milliseconds(2);
    budget.RecordCall(now);
    ++attempts;
    for (int extra = 0; extra < 4 && budget.TryTakeExtra(now); ++extra) {
      ++attempts;
    }
  }
  EXPECT_LE(attempts, 5000 * 1.2 + 1);
  EXPECT_GE(attempts, 5000 * 1.19);
}

TEST(RetryBudgetTest, OldCallsAndExtrasLeaveTheWindow) {
  RetryBudget budget({.ratio = 0.5, .min_per_second = 0});
  for (int i = 0; i < 100; ++i) budget.RecordCall(kStart);
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(budget.TryTakeExtra(kStart));
  EXPECT_FALSE(budget.TryTakeExtra(kStart + absl::Seconds(9)));
  // 10 s later the calls that allowed the extras are gone, and so are they.
  EXPECT_FALSE(budget.TryTakeExtra(kStart + absl::Seconds(10)));
  EXPECT_EQ(budget.AvailableApprox(kStart + absl::Seconds(10)), 0);
  budget.RecordCall(kStart + absl::Seconds(10));
  budget.RecordCall(kStart + absl::Seconds(10));
  EXPECT_TRUE(budget.TryTakeExtra(kStart + absl::Seconds(10)));
  EXPECT_FALSE(budget.TryTakeExtra(kStart + absl::Seconds(10)));
}

}  // namespace
}  // namespace bulwark
