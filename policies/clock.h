// Time for every time-dependent class: a Clock to read "now" and a TimerQueue
// to be woken. Production code passes RealClock and a per-worker TimerQueue
// backed by the event loop; tests pass FakeClock and FakeTimerQueue, which
// fires due callbacks as the clock advances, so no test sleeps. Thread-safety:
// all classes here are thread-safe. Cost: RealClock::Now is one clock_gettime;
// FakeClock::Now takes a mutex.
#ifndef BULWARK_POLICIES_CLOCK_H_
#define BULWARK_POLICIES_CLOCK_H_

#include <time.h>

#include <cstdint>
#include <map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace bulwark {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
};

class RealClock final : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
  // One process-wide instance; RealClock has no state.
  static RealClock& Get() {
    static RealClock clock;
    return clock;
  }
};

// The data plane's clock: CLOCK_MONOTONIC as an absl::Time (epoch + time since
// boot), so a wall-clock step never refills a bucket, holds a breaker open or
// moves a deadline. Its instants are comparable only with each other, never
// with absl::Now(): wall time is for logs and "seconds since" views only.
class MonotonicClock final : public Clock {
 public:
  absl::Time Now() override {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    // One conversion (absl's Duration additions normalize on every step).
    return absl::FromUnixNanos(int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec);
  }
  static MonotonicClock& Get() {
    static MonotonicClock clock;
    return clock;
  }
};

// A clock that moves only when told to. Starts at an arbitrary fixed instant.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000))
      : now_(start) {}
  absl::Time Now() override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void AdvanceBy(absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  void SetNow(absl::Time t) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

// Schedules callbacks at a point in time. Callbacks run on the queue's own
// thread (a worker's event loop in production, the caller of
// FakeTimerQueue::AdvanceBy in tests). Cancel returns true if the callback had
// not run and now never will.
class TimerQueue {
 public:
  using TimerId = uint64_t;
  virtual ~TimerQueue() = default;
  virtual TimerId Schedule(absl::Time when,
                           absl::AnyInvocable<void()> callback) = 0;
  virtual bool Cancel(TimerId id) = 0;
};

// Test timer queue driven by a FakeClock: AdvanceBy moves the clock and runs,
// in deadline order, every callback that became due (including ones scheduled
// by callbacks it runs).
class FakeTimerQueue final : public TimerQueue {
 public:
  explicit FakeTimerQueue(FakeClock& clock) : clock_(clock) {}

  TimerId Schedule(absl::Time when,
                   absl::AnyInvocable<void()> callback) override
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    TimerId id = ++next_id_;
    timers_.emplace(std::make_pair(when, id), std::move(callback));
    return id;
  }

  bool Cancel(TimerId id) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->first.second == id) {
        timers_.erase(it);
        return true;
      }
    }
    return false;
  }

  // Advances the clock by `d`, firing due timers at their own instants along
  // the way.
  void AdvanceBy(absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_) {
    const absl::Time end = clock_.Now() + d;
    while (true) {
      absl::AnyInvocable<void()> callback;
      {
        absl::MutexLock lock(&mu_);
        if (timers_.empty() || timers_.begin()->first.first > end) break;
        auto it = timers_.begin();
        if (it->first.first > clock_.Now()) clock_.SetNow(it->first.first);
        callback = std::move(it->second);
        timers_.erase(it);
      }
      callback();
    }
    if (clock_.Now() < end) clock_.SetNow(end);
  }

  // When the earliest pending timer is due, if any.
  std::pair<bool, absl::Time> NextDeadline() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (timers_.empty()) return {false, absl::InfiniteFuture()};
    return {true, timers_.begin()->first.first};
  }

  size_t PendingCount() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return timers_.size();
  }

 private:
  FakeClock& clock_;
  absl::Mutex mu_;
  TimerId next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::pair<absl::Time, TimerId>, absl::AnyInvocable<void()>> timers_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_CLOCK_H_
