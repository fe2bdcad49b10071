#include "policies/concurrency_limiter.h"

#include <algorithm>
#include <cassert>
#include <utility>

namespace bulwark {

ConcurrencyLimiter::Permit::Permit(Permit&& other) noexcept
    : limiter_(std::exchange(other.limiter_, nullptr)) {}

ConcurrencyLimiter::Permit& ConcurrencyLimiter::Permit::operator=(
    Permit&& other) noexcept {
  if (this != &other) {
    Release();
    limiter_ = std::exchange(other.limiter_, nullptr);
  }
  return *this;
}

void ConcurrencyLimiter::Permit::Release() {
  // Clearing first makes a second Release (or the destructor after Release) a
  // no-op, even if ReleaseSlot re-enters through a waiter's on_done.
  if (ConcurrencyLimiter* limiter = std::exchange(limiter_, nullptr)) {
    limiter->ReleaseSlot();
  }
}

ConcurrencyLimiter::ConcurrencyLimiter(const Options& options, Clock& clock)
    : options_(options), clock_(clock) {
  assert(options_.max_in_flight >= 1);
}

ConcurrencyLimiter::~ConcurrencyLimiter() {
  assert(InFlightOf(slots_.load()) == 0 &&
         "a Permit outlives its ConcurrencyLimiter");
  assert(QueuedOf(slots_.load()) == 0 &&
         "a waiter is parked on a dying ConcurrencyLimiter");
}

ConcurrencyLimiter::LockFreeAnswer ConcurrencyLimiter::TryWithoutLock() {
  uint64_t slots = slots_.load(std::memory_order_relaxed);
  while (QueuedOf(slots) == 0 && InFlightOf(slots) < options_.max_in_flight) {
    if (slots_.compare_exchange_weak(slots, slots + 1,
                                     std::memory_order_relaxed)) {
      return LockFreeAnswer::kTookSlot;
    }
  }
  // Every slot is held (queued > 0 implies it). A full queue only empties under
  // mu_, so at the instant of this load the answer was "reject".
  if (QueuedOf(slots) >= options_.max_queued) return LockFreeAnswer::kQueueFull;
  return LockFreeAnswer::kNeedsLock;
}

ConcurrencyLimiter::AcquireResult ConcurrencyLimiter::Acquire(Waiter waiter) {
  switch (TryWithoutLock()) {
    case LockFreeAnswer::kTookSlot:
      return {.status = AcquireStatus::kGranted,
              .permit = Permit(this),
              .wait = WaitHandle{}};
    case LockFreeAnswer::kQueueFull:
      return {.status = AcquireStatus::kConcurrencyLimit,
              .permit = Permit(),
              .wait = WaitHandle{}};
    case LockFreeAnswer::kNeedsLock:
      break;
  }
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    // Under mu_ the queued half cannot change, but the in-flight half can (a
    // lock-free release while nobody is queued): retry until a CAS sticks.
    uint64_t slots = slots_.load(std::memory_order_relaxed);
    while (true) {
      if (InFlightOf(slots) < options_.max_in_flight) {
        assert(QueuedOf(slots) == 0);
        if (slots_.compare_exchange_weak(slots, slots + 1,
                                         std::memory_order_relaxed)) {
          return {.status = AcquireStatus::kGranted,
                  .permit = Permit(this),
                  .wait = WaitHandle{}};
        }
        continue;
      }
      if (QueuedOf(slots) >= options_.max_queued) {
        return {.status = AcquireStatus::kConcurrencyLimit,
                .permit = Permit(),
                .wait = WaitHandle{}};
      }
      if (slots_.compare_exchange_weak(slots, slots + kOneQueued,
                                       std::memory_order_relaxed)) {
        break;
      }
    }
    id = next_waiter_id_++;
    waiters_.emplace(id, ParkedWaiter{.timers = &waiter.timers,
                                      .timer = std::nullopt,
                                      .on_done = std::move(waiter.on_done)});
  }

  // The clock is read and the timer armed outside the lock (both are calls
  // out), and only here, so a call that gets a slot at once pays for neither.
  // Until the timer's id is recorded, a grant on another thread cannot cancel
  // it, so if the waiter is gone by then, this thread cancels it.
  const absl::Time now = clock_.Now();
  const absl::Time queue_expiry = now + options_.queue_timeout;
  // A deadline already past is due now, not at some instant timers may not
  // represent (InfinitePast).
  const absl::Time expiry =
      std::max(now, std::min(waiter.call_deadline, queue_expiry));
  if (expiry != absl::InfiniteFuture()) {
    // On a tie the deadline has passed too, and it is the caller's own limit.
    const WaitStatus status = waiter.call_deadline <= queue_expiry
                                  ? WaitStatus::kDeadlineExceeded
                                  : WaitStatus::kQueueTimeout;
    const TimerQueue::TimerId timer = waiter.timers.Schedule(
        expiry, [this, id, status] { OnWaitExpired(id, status); });
    bool still_parked;
    {
      absl::MutexLock lock(&mu_);
      auto it = waiters_.find(id);
      still_parked = it != waiters_.end();
      if (still_parked) it->second.timer = timer;
    }
    if (!still_parked) waiter.timers.Cancel(timer);
  }
  return {.status = AcquireStatus::kParked,
          .permit = Permit(),
          .wait = WaitHandle{.id = id}};
}

void ConcurrencyLimiter::ReleaseSlot() {
  uint64_t slots = slots_.load(std::memory_order_relaxed);
  while (QueuedOf(slots) == 0) {
    assert(InFlightOf(slots) > 0);
    if (slots_.compare_exchange_weak(slots, slots - 1,
                                     std::memory_order_relaxed)) {
      return;
    }
  }
  // Someone is queued (a waiter parks only under mu_, so taking mu_ here also
  // waits for it to be in the map).
  WaiterMap::node_type next;
  {
    absl::MutexLock lock(&mu_);
    if (waiters_.empty()) {
      // They all left meanwhile, and no one can queue while mu_ is held.
      slots_.fetch_sub(1, std::memory_order_relaxed);
      return;
    }
    // Hand the slot over: the in-flight half stays as it is, so no newcomer can
    // slip in between.
    next = waiters_.extract(waiters_.begin());
    slots_.fetch_sub(kOneQueued, std::memory_order_relaxed);
  }
  ParkedWaiter& waiter = next.mapped();
  if (waiter.timer.has_value()) waiter.timers->Cancel(*waiter.timer);
  waiter.on_done(
      WaitResult{.status = WaitStatus::kGranted, .permit = Permit(this)});
}

void ConcurrencyLimiter::OnWaitExpired(uint64_t id, WaitStatus status) {
  WaiterMap::node_type expired;
  {
    absl::MutexLock lock(&mu_);
    auto it = waiters_.find(id);
    if (it == waiters_.end())
      return;  // granted or cancelled while the timer fired
    expired = waiters_.extract(it);
    slots_.fetch_sub(kOneQueued, std::memory_order_relaxed);
  }
  ParkedWaiter& waiter = expired.mapped();
  waiter.on_done(WaitResult{.status = status, .permit = Permit()});
}

ConcurrencyLimiter::CancelStatus ConcurrencyLimiter::Cancel(WaitHandle wait) {
  WaiterMap::node_type cancelled;
  {
    absl::MutexLock lock(&mu_);
    auto it = waiters_.find(wait.id);
    if (it == waiters_.end()) return CancelStatus::kAlreadyResolved;
    cancelled = waiters_.extract(it);
    slots_.fetch_sub(kOneQueued, std::memory_order_relaxed);
  }
  // `cancelled` (and the on_done it owns) is destroyed here, outside the lock.
  ParkedWaiter& waiter = cancelled.mapped();
  if (waiter.timer.has_value()) waiter.timers->Cancel(*waiter.timer);
  return CancelStatus::kCancelled;
}

}  // namespace bulwark
