#include "policies/clock.h"

#include <functional>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bulwark {
namespace {

using ::testing::ElementsAre;

TEST(FakeClockTest, MovesOnlyWhenTold) {
  FakeClock clock;
  const absl::Time start = clock.Now();
  EXPECT_EQ(clock.Now(), start);
  clock.AdvanceBy(absl::Milliseconds(250));
  EXPECT_EQ(clock.Now(), start + absl::Milliseconds(250));
  clock.SetNow(start);
  EXPECT_EQ(clock.Now(), start);
}

TEST(FakeTimerQueueTest, FiresInDeadlineOrderAtTheirOwnInstants) {
  FakeClock clock;
  FakeTimerQueue timers(clock);
  const absl::Time start = clock.Now();
  std::vector<int> fired;
  std::vector<absl::Time> fired_at;
  auto record = [&](int n) {
    return [&, n] {
      fired.push_back(n);
      fired_at.push_back(clock.Now());
    };
  };
  timers.Schedule(start + absl::Seconds(3), record(3));
  timers.Schedule(start + absl::Seconds(1), record(1));
  timers.Schedule(start + absl::Seconds(2), record(2));
  timers.Schedule(start + absl::Seconds(1),
                  record(11));  // same instant: scheduling order

  timers.AdvanceBy(absl::Milliseconds(1500));
  EXPECT_THAT(fired, ElementsAre(1, 11));
  timers.AdvanceBy(absl::Seconds(10));
  EXPECT_THAT(fired, ElementsAre(1, 11, 2, 3));
  EXPECT_THAT(fired_at,
              ElementsAre(start + absl::Seconds(1), start + absl::Seconds(1),
                          start + absl::Seconds(2), start + absl::Seconds(3)));
  EXPECT_EQ(clock.Now(), start + absl::Milliseconds(11500));
}

TEST(FakeTimerQueueTest, RunsCallbacksScheduledByCallbacksWhenDue) {
  FakeClock clock;
  FakeTimerQueue timers(clock);
  const absl::Time start = clock.Now();
  std::vector<absl::Time> ticks;
  // A periodic timer that re-arms itself, as a health checker's probe timer
  // does.
  std::function<void()> tick = [&] {
    ticks.push_back(clock.Now());
    if (ticks.size() < 5) timers.Schedule(clock.Now() + absl::Seconds(1), tick);
  };
  timers.Schedule(start + absl::Seconds(1), tick);
  timers.AdvanceBy(absl::Milliseconds(3500));
  EXPECT_THAT(ticks,
              ElementsAre(start + absl::Seconds(1), start + absl::Seconds(2),
                          start + absl::Seconds(3)));
  EXPECT_EQ(timers.PendingCount(), 1u);
  EXPECT_EQ(timers.NextDeadline().second, start + absl::Seconds(4));
  timers.AdvanceBy(absl::Seconds(10));
  EXPECT_EQ(ticks.size(), 5u);
  EXPECT_EQ(timers.PendingCount(), 0u);
}

TEST(FakeTimerQueueTest, CancelPreventsTheCallbackOnce) {
  FakeClock clock;
  FakeTimerQueue timers(clock);
  int fired = 0;
  const TimerQueue::TimerId id =
      timers.Schedule(clock.Now() + absl::Seconds(1), [&] { ++fired; });
  timers.Schedule(clock.Now() + absl::Seconds(2), [&] { fired += 10; });
  EXPECT_TRUE(timers.Cancel(id));
  EXPECT_FALSE(timers.Cancel(id));
  timers.AdvanceBy(absl::Seconds(5));
  EXPECT_EQ(fired, 10);
  EXPECT_FALSE(timers.NextDeadline().first);
}

TEST(FakeTimerQueueTest, CancelAfterFiringReportsFalse) {
  FakeClock clock;
  FakeTimerQueue timers(clock);
  int fired = 0;
  const TimerQueue::TimerId id =
      timers.Schedule(clock.Now() + absl::Seconds(1), [&] { ++fired; });
  timers.AdvanceBy(absl::Seconds(1));
  EXPECT_EQ(fired, 1);
  EXPECT_FALSE(timers.Cancel(id));
}

TEST(FakeTimerQueueTest,
     PastDeadlinesFireOnTheNextAdvanceWithoutMovingTimeBack) {
  FakeClock clock;
  FakeTimerQueue timers(clock);
  const absl::Time start = clock.Now();
  absl::Time fired_at;
  timers.Schedule(start - absl::Seconds(1), [&] { fired_at = clock.Now(); });
  timers.AdvanceBy(absl::ZeroDuration());
  EXPECT_EQ(fired_at, start);
}

}  // namespace
}  // namespace bulwark
