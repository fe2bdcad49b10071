#include "policies/concurrency_limiter.h"

#include <atomic>
#include <deque>
#include <latch>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policies/clock.h"

namespace bulwark {
namespace {

using AcquireStatus = ConcurrencyLimiter::AcquireStatus;
using CancelStatus = ConcurrencyLimiter::CancelStatus;
using Permit = ConcurrencyLimiter::Permit;
using WaitResult = ConcurrencyLimiter::WaitResult;
using WaitStatus = ConcurrencyLimiter::WaitStatus;

// Keeps whatever a parked waiter was given, so a test can look at it (and hold
// the permit).
struct Outcome {
  int calls = 0;
  std::optional<WaitStatus> status;
  Permit permit;
};

class ConcurrencyLimiterTest : public ::testing::Test {
 protected:
  ConcurrencyLimiter::Waiter WaiterInto(
      Outcome& outcome, absl::Time deadline = absl::InfiniteFuture()) {
    return {.timers = timers_,
            .call_deadline = deadline,
            .on_done = [&outcome](WaitResult result) {
              ++outcome.calls;
              outcome.status = result.status;
              outcome.permit = std::move(result.permit);
            }};
  }

  ConcurrencyLimiter::Waiter UnusedWaiter() {
    return {.timers = timers_, .on_done = [](WaitResult) { FAIL(); }};
  }

  FakeClock clock_;
  FakeTimerQueue timers_{clock_};
};

TEST_F(ConcurrencyLimiterTest, GrantsUpToMaxInFlightAtOnce) {
  ConcurrencyLimiter limiter(
      {.max_in_flight = 2, .max_queued = 0, .queue_timeout = absl::Seconds(1)},
      clock_);
  auto first = limiter.Acquire(UnusedWaiter());
  auto second = limiter.Acquire(UnusedWaiter());
  EXPECT_EQ(first.status, AcquireStatus::kGranted);
  EXPECT_TRUE(first.permit.Held());
  EXPECT_EQ(second.status, AcquireStatus::kGranted);
  EXPECT_EQ(limiter.InFlightApprox(), 2u);
  EXPECT_EQ(timers_.PendingCount(), 0u);
}

TEST_F(ConcurrencyLimiterTest, RejectsAtOnceWhenMaxQueuedIsZero) {
  ConcurrencyLimiter limiter(
      {.max_in_flight = 1, .max_queued = 0, .queue_timeout = absl::Seconds(1)},
      clock_);
  auto held = limiter.Acquire(UnusedWaiter());
  auto rejected = limiter.Acquire(UnusedWaiter());
  EXPECT_EQ(rejected.status, AcquireStatus::kConcurrencyLimit);
  EXPECT_FALSE(rejected.permit.Held());
  EXPECT_EQ(limiter.QueuedApprox(), 0u);
  EXPECT_EQ(timers_.PendingCount(), 0u);
}

TEST_F(ConcurrencyLimiterTest, RejectsWhenTheQueueIsFull) {
  ConcurrencyLimiter limiter(
      {.max_in_flight = 1, .max_queued = 2, .queue_timeout = absl::Seconds(1)},
      clock_);
  Outcome a, b;
  auto held = limiter.Acquire(UnusedWaiter());
  auto parked_a = limiter.Acquire(WaiterInto(a));
  auto parked_b = limiter.Acquire(WaiterInto(b));
  auto rejected = limiter.Acquire(UnusedWaiter());
  EXPECT_EQ(parked_a.status, AcquireStatus::kParked);
  EXPECT_EQ(parked_b.status, AcquireStatus::kParked);
  EXPECT_EQ(rejected.status, AcquireStatus::kConcurrencyLimit);
  EXPECT_EQ(limiter.QueuedApprox(), 2u);
  held.permit.Release();
  limiter.Cancel(parked_b.wait);
}

TEST_F(ConcurrencyLimiterTest, TryAcquireAnswersOnlyWhatNeedsNoWaiter) {
  ConcurrencyLimiter limiter(
      {.max_in_flight = 1, .max_queued = 1, .queue_timeout = absl::Seconds(1)},
      clock_);
  std::optional<ConcurrencyLimiter::AcquireResult> free = limiter.TryAcquire();
  ASSERT_TRUE(free.has_value());
  EXPECT_EQ(free->status, AcquireStatus::kGranted);
  EXPECT_TRUE(free->permit.Held());
  // The slot is held and the queue has room: only Acquire, with a waiter,
  // can answer.
  EXPECT_FALSE(limiter.TryAcquire().has_value());
  Outcome parked;
  auto waiting = limiter.Acquire(WaiterInto(parked));
  ASSERT_EQ(waiting.status, AcquireStatus::kParked);
  // The queue is full: refused without a lock or a waiter.
  std::optional<ConcurrencyLimiter::AcquireResult> full = limiter.TryAcquire();
  ASSERT_TRUE(full.has_value());
  EXPECT_EQ(full->status, AcquireStatus::kConcurrencyLimit);
  EXPECT_FALSE(full->permit.Held());
  EXPECT_EQ(limiter.InFlightApprox(), 1u);
  EXPECT_EQ(limiter.QueuedApprox(), 1u);
  free->permit.Release();  // hands the slot to the parked waiter
  EXPECT_EQ(parked.calls, 1);
  EXPECT_EQ(parked.status, WaitStatus::kGranted);
}

TEST_F(ConcurrencyLimiterTest, FifoOrderIsKept) {
  ConcurrencyLimiter limiter(
      {.max_in_flight = 1, .max_queued = 3, .queue_timeout = absl::Seconds(1)},
      clock_);
  Outcome first, second, third;
  auto held = limiter.Acquire(UnusedWaiter());
  limiter.Acquire(WaiterInto(first));
  limiter.Acquire(WaiterInto(second));
  limiter.Acquire(WaiterInto(third));

  held.permit.Release();
  EXPECT_EQ(first.status, WaitStatus::kGranted);
  EXPECT_TRUE(first.permit.Held());
  EXPECT_EQ(second.calls, 0);
  EXPECT_EQ(limiter.InFlightApprox(), 1u);

  first.permit.Release();
  EXPECT_EQ(second.status, WaitStatus::kGranted);
  EXPECT_EQ(third.calls, 0);

  second.permit.Release();
  EXPECT_EQ(third.status, WaitStatus::kGranted);
  third.permit.Release();

  EXPECT_EQ(limiter.InFlightApprox(), 0u);
  EXPECT_EQ(limiter.QueuedApprox(), 0u);
  // Each grant cancelled its waiter's timer.
  EXPECT_EQ(timers_.PendingCount(), 0u);
}

TEST_F(ConcurrencyLimiterTest,
       ReleaseHandsTheSlotOverSoNewcomersCannotJumpTheQueue) {
  ConcurrencyLimiter limiter(
      {.max_in_flight = 1, .max_queued = 1, .queue_timeout = absl::Seconds(1)},
      clock_);
  Outcome waiting;
  auto held = limiter.Acquire(UnusedWaiter());
  limiter.Acquire(WaiterInto(waiting));
  held.permit.Release();
  ASSERT_EQ(waiting.status, WaitStatus::kGranted);
  EXPECT_EQ(limiter.InFlightApprox(), 1u);
  Outcome newcomer;
  EXPECT_EQ(limiter.Acquire(WaiterInto(newcomer)).status,
            AcquireStatus::kParked);
  waiting.permit.Release();
  EXPECT_EQ(newcomer.status, WaitStatus::kGranted);
}

TEST_F(ConcurrencyLimiterTest, QueueTimeoutRejectsWithQueueTimeout) {
  ConcurrencyLimiter limiter({.max_in_flight = 1,
                              .max_queued = 1,
                              .queue_timeout = absl::Milliseconds(50)},
                             clock_);
  Outcome waiting;
  auto held = limiter.Acquire(UnusedWaiter());
  limiter.Acquire(WaiterInto(waiting, clock_.Now() + absl::Seconds(10)));
  EXPECT_EQ(timers_.NextDeadline().second,
            clock_.Now() + absl::Milliseconds(50));

  timers_.AdvanceBy(absl::Milliseconds(49));
  EXPECT_EQ(waiting.calls, 0);
  timers_.AdvanceBy(absl::Milliseconds(1));
  EXPECT_EQ(waiting.calls, 1);
  EXPECT_EQ(waiting.status, WaitStatus::kQueueTimeout);
  EXPECT_FALSE(waiting.permit.Held());
  EXPECT_EQ(limiter.QueuedApprox(), 0u);

  // The slot is still the holder's; releasing it hands nothing to the departed
  // waiter.
  held.permit.Release();
  EXPECT_EQ(waiting.calls, 1);
  EXPECT_EQ(limiter.InFlightApprox(), 0u);
}

TEST_F(ConcurrencyLimiterTest,
       CallDeadlineBeforeQueueTimeoutGivesDeadlineExceeded) {
  ConcurrencyLimiter limiter({.max_in_flight = 1,
                              .max_queued = 1,
                              .queue_timeout = absl::Milliseconds(50)},
                             clock_);
  Outcome waiting;
  auto held = limiter.Acquire(UnusedWaiter());
  limiter.Acquire(WaiterInto(waiting, clock_.Now() + absl::Milliseconds(20)));
  EXPECT_EQ(timers_.NextDeadline().second,
            clock_.Now() + absl::Milliseconds(20));

  timers_.AdvanceBy(absl::Milliseconds(20));
  EXPECT_EQ(waiting.calls, 1);
  EXPECT_EQ(waiting.status, WaitStatus::kDeadlineExceeded);
  EXPECT_EQ(timers_.PendingCount(), 0u);
}

TEST_F(ConcurrencyLimiterTest,
       DeadlineEqualToQueueTimeoutGivesDeadlineExceeded) {
  ConcurrencyLimiter limiter({.max_in_flight = 1,
                              .max_queued = 1,
                              .queue_timeout = absl::Milliseconds(50)},
                             clock_);
  Outcome waiting;
  auto held = limiter.Acquire(UnusedWaiter());
  limiter.Acquire(WaiterInto(waiting, clock_.Now() + absl::Milliseconds(50)));
  timers_.AdvanceBy(absl::Milliseconds(50));
  EXPECT_EQ(waiting.status, WaitStatus::kDeadlineExceeded);
}

TEST_F(ConcurrencyLimiterTest, InfiniteQueueTimeoutAndNoDeadlineArmsNoTimer) {
  ConcurrencyLimiter limiter({.max_in_flight = 1,
                              .max_queued = 1,
                              .queue_timeout = absl::InfiniteDuration()},
                             clock_);
  Outcome waiting;
  auto held = limiter.Acquire(UnusedWaiter());
  limiter.Acquire(WaiterInto(waiting));
  EXPECT_EQ(timers_.PendingCount(), 0u);
  held.permit.Release();
  EXPECT_EQ(waiting.status, WaitStatus::kGranted);
}

TEST_F(ConcurrencyLimiterTest, CancelWhileQueuedFreesTheSlotAndFiresNothing) {
  ConcurrencyLimiter limiter({.max_in_flight = 1,
                              .max_queued = 1,
                              .queue_timeout = absl::Milliseconds(50)},
                             clock_);
  Outcome cancelled;
  auto held = limiter.Acquire(UnusedWaiter());
  auto parked = limiter.Acquire(WaiterInto(cancelled));
  ASSERT_EQ(parked.status, AcquireStatus::kParked);
  EXPECT_EQ(timers_.PendingCount(), 1u);

  EXPECT_EQ(limiter.Cancel(parked.wait), CancelStatus::kCancelled);
  EXPECT_EQ(limiter.QueuedApprox(), 0u);
  EXPECT_EQ(timers_.PendingCount(), 0u);

  // The queue place is free again for someone else ...
  Outcome next;
  EXPECT_EQ(limiter.Acquire(WaiterInto(next)).status, AcquireStatus::kParked);
  // ... and neither the grant nor the timeout reaches the cancelled waiter.
  held.permit.Release();
  timers_.AdvanceBy(absl::Seconds(1));
  EXPECT_EQ(cancelled.calls, 0);
  EXPECT_EQ(next.status, WaitStatus::kGranted);
  EXPECT_EQ(limiter.Cancel(parked.wait), CancelStatus::kAlreadyResolved);
}

TEST_F(ConcurrencyLimiterTest,
       CancelAfterGrantReportsResolvedAndThePermitStillReleases) {
  ConcurrencyLimiter limiter(
      {.max_in_flight = 1, .max_queued = 1, .queue_timeout = absl::Seconds(1)},
      clock_);
  // The sidecar's callback posts the result to the waiter's worker; model the
  // post queue.
  std::vector<WaitResult> posted;
  auto held = limiter.Acquire(UnusedWaiter());
  auto parked = limiter.Acquire(
      {.timers = timers_, .on_done = [&posted](WaitResult result) {
         posted.push_back(std::move(result));
       }});
  held.permit.Release();  // the grant happens on "another worker" ...
  // ... before the client goes away.
  EXPECT_EQ(limiter.Cancel(parked.wait), CancelStatus::kAlreadyResolved);
  ASSERT_EQ(posted.size(), 1u);
  EXPECT_EQ(limiter.InFlightApprox(), 1u);
  posted.clear();  // the worker finds its call gone and drops the result
  EXPECT_EQ(limiter.InFlightApprox(), 0u);
}

TEST_F(ConcurrencyLimiterTest, PermitReleasedExactlyOnce) {
  ConcurrencyLimiter limiter(
      {.max_in_flight = 2, .max_queued = 0, .queue_timeout = absl::Seconds(1)},
      clock_);
  auto other = limiter.Acquire(UnusedWaiter());
  {
    Permit permit = std::move(limiter.Acquire(UnusedWaiter()).permit);
    EXPECT_EQ(limiter.InFlightApprox(), 2u);
    Permit moved = std::move(permit);
    EXPECT_FALSE(
        permit.Held());  // NOLINT(bugprone-use-after-move): tested contract
    moved.Release();
    EXPECT_EQ(limiter.InFlightApprox(), 1u);
    moved.Release();
    permit.Release();
    EXPECT_EQ(limiter.InFlightApprox(), 1u);
  }  // both destructors run here: still nothing more released
  EXPECT_EQ(limiter.InFlightApprox(), 1u);

  Permit assigned = std::move(limiter.Acquire(UnusedWaiter()).permit);
  EXPECT_EQ(limiter.InFlightApprox(), 2u);
  assigned = std::move(other.permit);  // releases the slot `assigned` held
  EXPECT_EQ(limiter.InFlightApprox(), 1u);
  assigned = Permit();
  EXPECT_EQ(limiter.InFlightApprox(), 0u);
}

TEST_F(ConcurrencyLimiterTest, DroppingAGrantedPermitInTheCallbackPassesItOn) {
  ConcurrencyLimiter limiter(
      {.max_in_flight = 1, .max_queued = 2, .queue_timeout = absl::Seconds(1)},
      clock_);
  Outcome gone, next;
  auto held = limiter.Acquire(UnusedWaiter());
  limiter.Acquire({.timers = timers_, .on_done = [&gone](WaitResult result) {
                     ++gone.calls;
                     gone.status = result.status;
                   }});  // the permit dies with `result`
  limiter.Acquire(WaiterInto(next));
  held.permit.Release();
  EXPECT_EQ(gone.calls, 1);
  EXPECT_EQ(gone.status, WaitStatus::kGranted);
  EXPECT_EQ(next.status, WaitStatus::kGranted);
  EXPECT_EQ(limiter.InFlightApprox(), 1u);
  next.permit.Release();
  EXPECT_EQ(limiter.InFlightApprox(), 0u);
}

TEST_F(ConcurrencyLimiterTest, CallbackNeverRunsInsideAcquire) {
  ConcurrencyLimiter limiter({.max_in_flight = 1,
                              .max_queued = 1,
                              .queue_timeout = absl::Milliseconds(50)},
                             clock_);
  Outcome late;
  auto held = limiter.Acquire(UnusedWaiter());
  // Its deadline has already passed: the waiter still hears so from its timer,
  // not inline.
  auto parked =
      limiter.Acquire(WaiterInto(late, clock_.Now() - absl::Seconds(1)));
  EXPECT_EQ(parked.status, AcquireStatus::kParked);
  EXPECT_EQ(late.calls, 0);
  EXPECT_EQ(timers_.NextDeadline().second, clock_.Now());  // due at once
  timers_.AdvanceBy(absl::ZeroDuration());
  EXPECT_EQ(late.status, WaitStatus::kDeadlineExceeded);
}

// Real threads contend for 3 slots. Each thread keeps up to 3 permits at a
// time, so even a thread running alone fills every slot and its next attempt
// parks (or is rejected), whatever the scheduler does; with others running,
// parked waiters are granted by other threads' releases, and some cancel,
// racing those grants. Exact accounting: every attempt ends granted, rejected
// or cancelled, every grant is released, and the permits held at once (counted
// independently) never exceed the limit.
TEST(ConcurrencyLimiterThreadsTest, InFlightNeverExceedsLimitUnderManyThreads) {
  constexpr uint32_t kMaxInFlight = 3;
  constexpr int kThreads = 8;
  constexpr int kAttemptsPerThread = 20000;
  FakeClock clock;
  FakeTimerQueue timers(clock);  // never advanced: waits end by grant or cancel
  ConcurrencyLimiter limiter({.max_in_flight = kMaxInFlight,
                              .max_queued = 4,
                              .queue_timeout = absl::Seconds(1)},
                             clock);

  std::atomic<int> holding{0};
  std::atomic<int> most_held{0};
  std::atomic<int> limiter_over_limit{0};
  std::atomic<int> granted_at_once{0};
  std::atomic<int> granted_after_wait{0};
  std::atomic<int> rejected{0};
  std::atomic<int> cancelled{0};
  std::atomic<int> cancel_lost_race{0};
  auto mark_held = [&] {
    const int now_held = holding.fetch_add(1) + 1;
    int seen = most_held.load();
    while (now_held > seen &&
           !most_held.compare_exchange_weak(seen, now_held)) {
    }
    if (limiter.InFlightApprox() > kMaxInFlight) {
      limiter_over_limit.fetch_add(1);
    }
  };
  auto release = [&](Permit& permit) {
    holding.fetch_sub(1);
    permit.Release();
  };

  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      start.arrive_and_wait();
      std::deque<Permit> kept;
      for (int i = 0; i < kAttemptsPerThread; ++i) {
        auto result =
            limiter.Acquire({.timers = timers, .on_done = [&](WaitResult wait) {
                               ASSERT_EQ(wait.status, WaitStatus::kGranted);
                               granted_after_wait.fetch_add(1);
                               mark_held();
                               release(wait.permit);
                             }});
        switch (result.status) {
          case AcquireStatus::kGranted:
            granted_at_once.fetch_add(1);
            mark_held();
            kept.push_back(std::move(result.permit));
            break;
          case AcquireStatus::kParked:
            if (i % 3 == 0) {
              if (limiter.Cancel(result.wait) == CancelStatus::kCancelled) {
                cancelled.fetch_add(1);
              } else {
                cancel_lost_race.fetch_add(1);  // its callback counts it
              }
            }
            break;
          case AcquireStatus::kConcurrencyLimit:
            rejected.fetch_add(1);
            break;
          case AcquireStatus::kLoadShed:  // adaptive only
            ADD_FAILURE() << "load_shed from a fixed limiter";
            break;
        }
        // Keep permits for a while, so attempts find the slots taken, but give
        // one back whenever this attempt got none, so supply never runs dry.
        if (!kept.empty() && (kept.size() > kMaxInFlight ||
                              result.status != AcquireStatus::kGranted)) {
          release(kept.front());
          kept.pop_front();
        }
      }
      for (Permit& permit : kept) release(permit);
    });
  }
  for (std::thread& thread : threads) thread.join();

  EXPECT_EQ(granted_at_once + granted_after_wait + rejected + cancelled,
            kThreads * kAttemptsPerThread);
  EXPECT_LE(most_held.load(), static_cast<int>(kMaxInFlight));
  EXPECT_EQ(limiter_over_limit.load(), 0);
  EXPECT_EQ(holding.load(), 0);
  EXPECT_EQ(limiter.InFlightApprox(), 0u);
  EXPECT_EQ(limiter.QueuedApprox(), 0u);
  // Every grant and every cancel disarmed its waiter's timer.
  EXPECT_EQ(timers.PendingCount(), 0u);
  EXPECT_GT(granted_after_wait.load(), 0);
  RecordProperty("granted_after_wait", granted_after_wait.load());
  RecordProperty("cancelled", cancelled.load());
  RecordProperty("cancel_lost_race", cancel_lost_race.load());
}

// The same with an adaptive limit that moves (samples, some overloaded, shrink
// and grow it while threads acquire and release), priorities, and
// displacement: every attempt still ends exactly once (granted, refused,
// cancelled or displaced), and the permits held never exceed max_in_flight.
TEST(ConcurrencyLimiterThreadsTest, AMovingAdaptiveLimitKeepsExactAccounts) {
  constexpr uint32_t kMaxInFlight = 6;
  constexpr int kThreads = 8;
  constexpr int kAttemptsPerThread = 20000;
  FakeClock clock;
  FakeTimerQueue timers(clock);  // never advanced: waits end by grant or cancel
  ConcurrencyLimiter limiter(
      {.max_in_flight = kMaxInFlight,
       .max_queued = 4,
       .queue_timeout = absl::Seconds(1),
       .priorities = true,
       .adaptive = ConcurrencyLimiter::AdaptiveOptions{.min_limit = 1,
                                                       .initial_limit = 3}},
      clock);
  std::atomic<int> holding{0};
  std::atomic<int> most_held{0};
  std::atomic<int> ended{0};
  std::atomic<int> granted_after_wait{0};
  std::atomic<int> displaced{0};
  auto mark_held = [&] {
    const int now_held = holding.fetch_add(1) + 1;
    int seen = most_held.load();
    while (now_held > seen &&
           !most_held.compare_exchange_weak(seen, now_held)) {
    }
  };
  std::atomic<uint64_t> samples{0};
  auto release = [&](Permit& permit) {
    holding.fetch_sub(1);
    const uint64_t n = samples.fetch_add(1);
    clock.AdvanceBy(absl::Microseconds(50));
    permit.ReleaseSample(/*overloaded=*/(n / 2000) % 3 == 0);
  };
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      std::deque<Permit> kept;
      for (int i = 0; i < kAttemptsPerThread; ++i) {
        auto result = limiter.Acquire(
            {.timers = timers,
             .priority = static_cast<Priority>((t + i) % kPriorityCount),
             .on_done = [&](WaitResult wait) {
               ended.fetch_add(1);
               if (wait.status == WaitStatus::kLoadShed) {
                 displaced.fetch_add(1);
                 return;
               }
               ASSERT_EQ(wait.status, WaitStatus::kGranted);
               granted_after_wait.fetch_add(1);
               mark_held();
               release(wait.permit);
             }});
        switch (result.status) {
          case AcquireStatus::kGranted:
            ended.fetch_add(1);
            mark_held();
            kept.push_back(std::move(result.permit));
            break;
          case AcquireStatus::kParked:
            if (i % 3 == 0 &&
                limiter.Cancel(result.wait) == CancelStatus::kCancelled) {
              ended.fetch_add(1);
            }
            break;
          case AcquireStatus::kLoadShed:
            ended.fetch_add(1);
            break;
          case AcquireStatus::kConcurrencyLimit:
            ADD_FAILURE() << "an adaptive limiter refuses with load_shed";
            break;
        }
        if (!kept.empty() &&
            (kept.size() > 2 || result.status != AcquireStatus::kGranted)) {
          release(kept.front());
          kept.pop_front();
        }
      }
      for (Permit& permit : kept) release(permit);
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(ended.load(), kThreads * kAttemptsPerThread);
  EXPECT_LE(most_held.load(), static_cast<int>(kMaxInFlight));
  EXPECT_EQ(holding.load(), 0);
  EXPECT_EQ(limiter.InFlightApprox(), 0u);
  EXPECT_EQ(limiter.QueuedApprox(), 0u);
  EXPECT_EQ(timers.PendingCount(), 0u);
  EXPECT_GT(granted_after_wait.load(), 0);
  RecordProperty("displaced", displaced.load());
  RecordProperty("final_limit", static_cast<int>(limiter.LimitApprox()));
}

// --- priorities, and the adaptive queue (SPEC section 7) -------------------

ConcurrencyLimiter::Waiter PriorityWaiter(
    FakeTimerQueue& timers, Outcome& outcome, Priority priority,
    absl::Time deadline = absl::InfiniteFuture()) {
  return {.timers = timers,
          .call_deadline = deadline,
          .priority = priority,
          .on_done = [&outcome](WaitResult result) {
            ++outcome.calls;
            outcome.status = result.status;
            outcome.permit = std::move(result.permit);
          }};
}

TEST_F(ConcurrencyLimiterTest, HigherPrioritiesAreServedFirst) {
  ConcurrencyLimiter limiter({.max_in_flight = 1,
                              .max_queued = 3,
                              .queue_timeout = absl::Seconds(1),
                              .priorities = true},
                             clock_);
  auto held = limiter.Acquire(UnusedWaiter());
  Outcome sheddable, normal, critical;
  limiter.Acquire(PriorityWaiter(timers_, sheddable, Priority::kSheddable));
  limiter.Acquire(PriorityWaiter(timers_, normal, Priority::kNormal));
  limiter.Acquire(PriorityWaiter(timers_, critical, Priority::kCritical));
  held.permit.Release();
  EXPECT_EQ(critical.status, WaitStatus::kGranted);
  EXPECT_EQ(normal.calls, 0);
  critical.permit.Release();
  EXPECT_EQ(normal.status, WaitStatus::kGranted);
  EXPECT_EQ(sheddable.calls, 0);
  normal.permit.Release();
  EXPECT_EQ(sheddable.status, WaitStatus::kGranted);
}

TEST_F(ConcurrencyLimiterTest,
       AFullQueueShedsItsLowestNewestWaiterForAHigherArrival) {
  ConcurrencyLimiter limiter({.max_in_flight = 1,
                              .max_queued = 2,
                              .queue_timeout = absl::Seconds(1),
                              .priorities = true},
                             clock_);
  auto held = limiter.Acquire(UnusedWaiter());
  Outcome old_sheddable, new_sheddable, high, critical, normal;
  limiter.Acquire(PriorityWaiter(timers_, old_sheddable, Priority::kSheddable));
  limiter.Acquire(PriorityWaiter(timers_, new_sheddable, Priority::kSheddable));
  // Full: a high arrival takes the newest sheddable waiter's place.
  auto parked = limiter.Acquire(PriorityWaiter(timers_, high, Priority::kHigh));
  EXPECT_EQ(parked.status, AcquireStatus::kParked);
  EXPECT_EQ(new_sheddable.status, WaitStatus::kLoadShed);
  EXPECT_EQ(old_sheddable.calls, 0);
  EXPECT_EQ(limiter.QueuedApprox(), 2u);
  // A critical one displaces the remaining sheddable, never the high one.
  limiter.Acquire(PriorityWaiter(timers_, critical, Priority::kCritical));
  EXPECT_EQ(old_sheddable.status, WaitStatus::kLoadShed);
  EXPECT_EQ(high.calls, 0);
  // Nobody below normal is left: a normal arrival is refused.
  auto refused =
      limiter.Acquire(PriorityWaiter(timers_, normal, Priority::kNormal));
  EXPECT_EQ(refused.status, AcquireStatus::kConcurrencyLimit);
  EXPECT_EQ(limiter.QueuedApprox(), 2u);
  held.permit.Release();
  EXPECT_EQ(critical.status, WaitStatus::kGranted);
  critical.permit.Release();
  EXPECT_EQ(high.status, WaitStatus::kGranted);
}

ConcurrencyLimiter::Options AdaptiveOptions(uint32_t initial) {
  return {.max_in_flight = 100,
          .max_queued = 8,
          .queue_timeout = absl::Milliseconds(50),
          .priorities = true,
          .adaptive = ConcurrencyLimiter::AdaptiveOptions{
              .min_limit = 1,
              .initial_limit = initial,
              .queue_target = absl::Milliseconds(10),
              .queue_interval = absl::Milliseconds(100)}};
}

TEST_F(ConcurrencyLimiterTest,
       AdaptiveStartsAtTheInitialLimitAndRefusesWithLoadShed) {
  ConcurrencyLimiter limiter(
      {.max_in_flight = 100,
       .max_queued = 0,
       .adaptive = ConcurrencyLimiter::AdaptiveOptions{.min_limit = 1,
                                                       .initial_limit = 2}},
      clock_);
  EXPECT_EQ(limiter.LimitApprox(), 2u);
  auto a = limiter.Acquire(UnusedWaiter());
  auto b = limiter.Acquire(UnusedWaiter());
  auto c = limiter.Acquire(UnusedWaiter());
  EXPECT_EQ(a.status, AcquireStatus::kGranted);
  EXPECT_EQ(b.status, AcquireStatus::kGranted);
  EXPECT_EQ(c.status, AcquireStatus::kLoadShed);
}

// Samples of 10 ms calls that show the upstream unloaded make the limit grow;
// the growth hands slots to waiters at once.
TEST_F(ConcurrencyLimiterTest, AGrowingLimitServesWaiters) {
  ConcurrencyLimiter limiter(AdaptiveOptions(2), clock_);
  std::vector<Permit> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(std::move(limiter.Acquire(UnusedWaiter()).permit));
  }
  Outcome waiting;
  ASSERT_EQ(limiter.Acquire(PriorityWaiter(timers_, waiting, Priority::kNormal))
                .status,
            AcquireStatus::kParked);
  // Calls come and go on the two slots at 10 ms each (the waiter stays
  // queued behind them: a release hands it a slot, so it is released too).
  for (int i = 0; i < 64 && waiting.calls == 0; ++i) {
    clock_.AdvanceBy(absl::Milliseconds(10));
    Permit p = std::move(held.front());
    held.erase(held.begin());
    p.ReleaseSample(/*overloaded=*/false);
    if (waiting.calls > 0) break;
    // The freed slot went to nobody else (the waiter would have had it).
    held.push_back(std::move(limiter.Acquire(UnusedWaiter()).permit));
  }
  EXPECT_EQ(waiting.status, WaitStatus::kGranted);
}

TEST_F(ConcurrencyLimiterTest,
       AdaptiveShedsAWaiterWhoseDeadlineIsShorterThanTheWait) {
  ConcurrencyLimiter limiter(AdaptiveOptions(1), clock_);
  // Teach it a 100 ms latency: sixteen samples over more than 20 ms.
  for (int i = 0; i < 16; ++i) {
    auto p = limiter.Acquire(UnusedWaiter());
    ASSERT_EQ(p.status, AcquireStatus::kGranted);
    clock_.AdvanceBy(absl::Milliseconds(100));
    p.permit.ReleaseSample(false);
  }
  const uint32_t limit = limiter.LimitApprox();
  std::vector<Permit> held;
  for (uint32_t i = 0; i < limit; ++i) {
    held.push_back(std::move(limiter.Acquire(UnusedWaiter()).permit));
  }
  // One waiter ahead at 100 ms per slot / limit: a deadline 1 ms away cannot
  // be met, one 10 s away can.
  Outcome first, hopeless, patient;
  ASSERT_EQ(
      limiter.Acquire(PriorityWaiter(timers_, first, Priority::kNormal)).status,
      AcquireStatus::kParked);
  EXPECT_EQ(limiter
                .Acquire(PriorityWaiter(timers_, hopeless, Priority::kNormal,
                                        clock_.Now() + absl::Milliseconds(1)))
                .status,
            AcquireStatus::kLoadShed);
  EXPECT_EQ(limiter
                .Acquire(PriorityWaiter(timers_, patient, Priority::kNormal,
                                        clock_.Now() + absl::Seconds(10)))
                .status,
            AcquireStatus::kParked);
  EXPECT_EQ(hopeless.calls, 0);  // answered by Acquire itself
}

TEST_F(ConcurrencyLimiterTest,
       AStandingQueueServesNewestFirstAndCutsWaitsToTheTarget) {
  ConcurrencyLimiter::Options options = AdaptiveOptions(1);
  options.queue_timeout = absl::Seconds(1);
  ConcurrencyLimiter limiter(options, clock_);
  auto held = limiter.Acquire(UnusedWaiter());
  Outcome a, b, c;
  limiter.Acquire(PriorityWaiter(timers_, a, Priority::kNormal));
  // Not empty for queue_interval (100 ms): the queue stands. Waiters parked
  // now wait at most queue_target (10 ms); the newest is served first.
  timers_.AdvanceBy(absl::Milliseconds(100));
  limiter.Acquire(PriorityWaiter(timers_, b, Priority::kNormal));
  timers_.AdvanceBy(absl::Milliseconds(1));
  limiter.Acquire(PriorityWaiter(timers_, c, Priority::kNormal));
  held.permit.Release();
  EXPECT_EQ(c.status, WaitStatus::kGranted);
  EXPECT_EQ(b.calls, 0);
  // A critical waiter is not cut to the target: it keeps queue_timeout.
  Outcome critical;
  limiter.Acquire(PriorityWaiter(timers_, critical, Priority::kCritical));
  timers_.AdvanceBy(absl::Milliseconds(9));  // b: 10 ms parked
  EXPECT_EQ(b.status, WaitStatus::kQueueTimeout);
  timers_.AdvanceBy(absl::Milliseconds(20));
  EXPECT_EQ(critical.calls, 0);
  EXPECT_EQ(a.calls, 0);  // parked before the queue stood: queue_timeout
  timers_.AdvanceBy(absl::Milliseconds(890));
  EXPECT_EQ(a.status, WaitStatus::kQueueTimeout);
}

TEST_F(ConcurrencyLimiterTest, ABriefDrainDoesNotEndAStandingQueue) {
  ConcurrencyLimiter::Options options = AdaptiveOptions(1);
  options.queue_timeout = absl::Seconds(1);
  ConcurrencyLimiter limiter(options, clock_);
  auto held = limiter.Acquire(UnusedWaiter());
  Outcome a, b, c, d;
  limiter.Acquire(PriorityWaiter(timers_, a, Priority::kNormal));
  timers_.AdvanceBy(absl::Milliseconds(100));  // standing now
  held.permit.Release();                       // a gets the slot: empty
  ASSERT_EQ(a.status, WaitStatus::kGranted);
  // Refilled 5 ms later (a batch of releases drained it for an instant):
  // still the same standing episode, newest first.
  timers_.AdvanceBy(absl::Milliseconds(5));
  limiter.Acquire(PriorityWaiter(timers_, b, Priority::kNormal));
  limiter.Acquire(PriorityWaiter(timers_, c, Priority::kNormal));
  a.permit.Release();
  EXPECT_EQ(c.status, WaitStatus::kGranted);
  EXPECT_EQ(b.calls, 0);
  // b, parked while standing, waits at most queue_target.
  timers_.AdvanceBy(absl::Milliseconds(10));
  EXPECT_EQ(b.status, WaitStatus::kQueueTimeout);
  // Empty for queue_interval: the next queue starts a new episode (FIFO,
  // queue_timeout).
  timers_.AdvanceBy(absl::Milliseconds(100));
  limiter.Acquire(PriorityWaiter(timers_, d, Priority::kNormal));
  timers_.AdvanceBy(absl::Milliseconds(50));
  EXPECT_EQ(d.calls, 0);
}

TEST_F(ConcurrencyLimiterTest, AStandingQueueWaitsAtMostAnEighthOfTheLatency) {
  ConcurrencyLimiter::Options options = AdaptiveOptions(1);
  options.queue_timeout = absl::Seconds(1);
  ConcurrencyLimiter limiter(options, clock_);
  // Teach it an unloaded latency of 16 ms (a window of sixteen samples).
  for (int i = 0; i < 16; ++i) {
    auto p = limiter.Acquire(UnusedWaiter());
    ASSERT_EQ(p.status, AcquireStatus::kGranted);
    clock_.AdvanceBy(absl::Milliseconds(16));
    p.permit.ReleaseSample(false);
  }
  ASSERT_EQ(limiter.LimitApprox(), 1u);  // 2 x the calls seen in flight
  auto held = limiter.Acquire(UnusedWaiter());
  Outcome first, later;
  limiter.Acquire(PriorityWaiter(timers_, first, Priority::kNormal));
  timers_.AdvanceBy(absl::Milliseconds(100));  // standing now
  limiter.Acquire(PriorityWaiter(timers_, later, Priority::kNormal));
  // 16 ms / 8 = 2 ms, below queue_target's 10 ms.
  timers_.AdvanceBy(absl::Milliseconds(1));
  EXPECT_EQ(later.calls, 0);
  timers_.AdvanceBy(absl::Milliseconds(1));
  EXPECT_EQ(later.status, WaitStatus::kQueueTimeout);
  EXPECT_EQ(first.calls, 0);  // parked before the queue stood
}

TEST_F(ConcurrencyLimiterTest, WithoutAdaptiveTheQueueStaysFifo) {
  ConcurrencyLimiter limiter(
      {.max_in_flight = 1, .max_queued = 4, .queue_timeout = absl::Seconds(10)},
      clock_);
  auto held = limiter.Acquire(UnusedWaiter());
  Outcome first, second;
  limiter.Acquire(WaiterInto(first));
  timers_.AdvanceBy(absl::Seconds(1));  // long past any queue_interval
  limiter.Acquire(WaiterInto(second));
  held.permit.Release();
  EXPECT_EQ(first.status, WaitStatus::kGranted);
  EXPECT_EQ(second.calls, 0);
}

}  // namespace
}  // namespace bulwark
