#include "policies/concurrency_limiter.h"

#include <algorithm>
#include <cassert>
#include <limits>
#include <utility>
#include <vector>

namespace bulwark {
namespace {

std::unique_ptr<AdaptiveLimit> NewAdaptive(
    const ConcurrencyLimiter::Options& options) {
  if (!options.adaptive.has_value()) return nullptr;
  return std::make_unique<AdaptiveLimit>(AdaptiveLimit::Options{
      .min_limit = std::max<uint32_t>(1, options.adaptive->min_limit),
      .max_limit = options.max_in_flight,
      .initial_limit = options.adaptive->initial_limit});
}

}  // namespace

ConcurrencyLimiter::Permit::Permit(Permit&& other) noexcept
    : limiter_(std::exchange(other.limiter_, nullptr)),
      granted_at_(other.granted_at_),
      in_flight_(other.in_flight_) {}

ConcurrencyLimiter::Permit& ConcurrencyLimiter::Permit::operator=(
    Permit&& other) noexcept {
  if (this != &other) {
    Release();
    limiter_ = std::exchange(other.limiter_, nullptr);
    granted_at_ = other.granted_at_;
    in_flight_ = other.in_flight_;
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

void ConcurrencyLimiter::Permit::ReleaseSample(bool overloaded) {
  ConcurrencyLimiter* limiter = std::exchange(limiter_, nullptr);
  if (limiter == nullptr) return;
  // The sample first, so that a changed limit applies to this slot's handover.
  if (limiter->adaptive())
    limiter->OnSample(granted_at_, in_flight_, overloaded);
  limiter->ReleaseSlot();
}

ConcurrencyLimiter::ConcurrencyLimiter(const Options& options, Clock& clock)
    : options_(options),
      clock_(clock),
      limit_(options.adaptive.has_value() ? NewAdaptive(options)->limit()
                                          : options.max_in_flight),
      adaptive_(NewAdaptive(options)) {
  assert(options_.max_in_flight >= 1);
}

ConcurrencyLimiter::~ConcurrencyLimiter() {
  assert(InFlightOf(slots_.load()) == 0 &&
         "a Permit outlives its ConcurrencyLimiter");
  assert(QueuedOf(slots_.load()) == 0 &&
         "a waiter is parked on a dying ConcurrencyLimiter");
}

ConcurrencyLimiter::Permit ConcurrencyLimiter::Grant(uint32_t in_flight) {
  // Only an adaptive limit needs to know when and at what load (one clock
  // read per grant); a fixed one pays nothing.
  if (adaptive_ == nullptr) return Permit(this);
  return Permit(this, clock_.Now(), in_flight);
}

ConcurrencyLimiter::LockFreeAnswer ConcurrencyLimiter::TryWithoutLock(
    uint32_t* in_flight) {
  uint64_t slots = slots_.load(std::memory_order_relaxed);
  while (QueuedOf(slots) == 0 &&
         InFlightOf(slots) < limit_.load(std::memory_order_relaxed)) {
    if (slots_.compare_exchange_weak(slots, slots + 1,
                                     std::memory_order_relaxed)) {
      *in_flight = InFlightOf(slots) + 1;
      return LockFreeAnswer::kTookSlot;
    }
  }
  // Every slot is held (queued > 0 implies it). A full queue only empties under
  // mu_, so at the instant of this load the answer was "reject", unless the
  // arrival could displace a lower-priority waiter (decided under mu_).
  if (QueuedOf(slots) >= options_.max_queued && !options_.priorities) {
    return LockFreeAnswer::kQueueFull;
  }
  return LockFreeAnswer::kNeedsLock;
}

bool ConcurrencyLimiter::Standing(absl::Time now) const {
  return adaptive_ != nullptr && !waiters_.empty() &&
         now - nonempty_since_ >= options_.adaptive->queue_interval;
}

ConcurrencyLimiter::WaiterMap::iterator ConcurrencyLimiter::NextWaiter(
    absl::Time now) {
  auto first = waiters_.begin();
  if (!Standing(now)) return first;
  // Newest of the highest priority waiting.
  auto end_of_priority = waiters_.lower_bound(WaiterKey(
      static_cast<Priority>(static_cast<int>(first->first.first) + 1), 0));
  return std::prev(end_of_priority);
}

ConcurrencyLimiter::WaiterMap::node_type ConcurrencyLimiter::Extract(
    WaiterMap::iterator it) {
  --waiting_[static_cast<int>(it->first.first)];
  return waiters_.extract(it);
}

std::optional<ConcurrencyLimiter::AcquireResult>
ConcurrencyLimiter::TryAcquire() {
  uint32_t in_flight = 0;
  switch (TryWithoutLock(&in_flight)) {
    case LockFreeAnswer::kTookSlot:
      return AcquireResult{.status = AcquireStatus::kGranted,
                           .permit = Grant(in_flight),
                           .wait = WaitHandle{}};
    case LockFreeAnswer::kQueueFull:
      return AcquireResult{
          .status = Refused(), .permit = Permit(), .wait = WaitHandle{}};
    case LockFreeAnswer::kNeedsLock:
      break;
  }
  return std::nullopt;
}

ConcurrencyLimiter::AcquireResult ConcurrencyLimiter::Acquire(Waiter waiter) {
  if (std::optional<AcquireResult> quick = TryAcquire()) {
    return *std::move(quick);
  }
  uint32_t in_flight = 0;
  const AcquireStatus refused = Refused();
  // Adaptive shedding needs the time; a fixed limiter reads it only once it
  // parks (below).
  const absl::Time now = adaptive_ != nullptr ? clock_.Now() : absl::Time();
  const Priority priority = waiter.priority;
  WaiterKey key;
  bool standing = false;
  absl::Duration standing_wait = absl::InfiniteDuration();
  WaiterMap::node_type displaced;
  {
    absl::MutexLock lock(&mu_);
    // Under mu_ the queued half cannot change, but the in-flight half can (a
    // lock-free release while nobody is queued): retry until a CAS sticks.
    uint64_t slots = slots_.load(std::memory_order_relaxed);
    bool swap = false;  // park in a displaced waiter's place
    while (true) {
      if (InFlightOf(slots) < limit_.load(std::memory_order_relaxed)) {
        assert(QueuedOf(slots) == 0);
        if (slots_.compare_exchange_weak(slots, slots + 1,
                                         std::memory_order_relaxed)) {
          in_flight = InFlightOf(slots) + 1;
          break;
        }
        continue;
      }
      if (QueuedOf(slots) >= options_.max_queued) {
        // Full: a lower-priority waiter gives its place up, else refuse.
        if (options_.max_queued > 0 && !waiters_.empty() &&
            std::prev(waiters_.end())->first.first > priority) {
          swap = true;
          break;
        }
        return {.status = refused, .permit = Permit(), .wait = WaitHandle{}};
      }
      if (adaptive_ != nullptr &&
          waiter.call_deadline != absl::InfiniteFuture()) {
        // Shed at once a waiter that would not get a slot before its deadline.
        uint32_t ahead = 0;
        for (int p = 0; p <= static_cast<int>(priority); ++p)
          ahead += waiting_[p];
        const absl::Duration expected =
            adaptive_->mean_latency() * ahead /
            std::max<uint32_t>(1, limit_.load(std::memory_order_relaxed));
        if (waiter.call_deadline - now < expected) {
          return {.status = AcquireStatus::kLoadShed,
                  .permit = Permit(),
                  .wait = WaitHandle{}};
        }
      }
      if (slots_.compare_exchange_weak(slots, slots + kOneQueued,
                                       std::memory_order_relaxed)) {
        break;
      }
    }
    if (in_flight > 0) {
      // Took a slot under the lock (a release came meanwhile).
      return {.status = AcquireStatus::kGranted,
              .permit = Grant(in_flight),
              .wait = WaitHandle{}};
    }
    if (swap) displaced = Extract(std::prev(waiters_.end()));
    // A queue that was empty for less than queue_interval keeps its episode
    // (bursty releases, e.g. an upstream finishing calls in batches, drain a
    // short standing queue for an instant without ending it).
    if (waiters_.empty() &&
        (adaptive_ == nullptr ||
         now - queue_seen_at_ >= options_.adaptive->queue_interval)) {
      nonempty_since_ = now;
    }
    queue_seen_at_ = now;
    key = WaiterKey(priority, next_waiter_id_++);
    ++waiting_[static_cast<int>(priority)];
    waiters_.emplace(key, ParkedWaiter{.timers = &waiter.timers,
                                       .parked_at = now,
                                       .timer = std::nullopt,
                                       .on_done = std::move(waiter.on_done)});
    standing = Standing(now);  // with this waiter in
    if (standing) {
      // In a standing queue the upstream is full anyway: waiting longer than
      // a fraction of its own latency adds latency, not throughput. So a
      // waiter waits at most queue_target, and at most an eighth of the
      // learned unloaded latency (1 ms at least).
      const absl::Duration baseline = adaptive_->baseline();
      standing_wait = options_.adaptive->queue_target;
      if (baseline > absl::ZeroDuration()) {
        standing_wait = std::min(standing_wait,
                                 std::max(absl::Milliseconds(1), baseline / 8));
      }
    }
  }
  if (!displaced.empty()) {
    ParkedWaiter& out = displaced.mapped();
    if (out.timer.has_value()) out.timers->Cancel(*out.timer);
    out.on_done(
        WaitResult{.status = WaitStatus::kLoadShed, .permit = Permit()});
  }

  // The clock is read and the timer armed outside the lock (both are calls
  // out), and only here, so a call that gets a slot at once pays for neither.
  // Until the timer's id is recorded, a grant on another thread cannot cancel
  // it, so if the waiter is gone by then, this thread cancels it.
  const absl::Time parked = adaptive_ != nullptr ? now : clock_.Now();
  // A standing queue (adaptive) holds a waiter at most `standing_wait`; a
  // critical one keeps queue_timeout (critical calls are shed only when
  // nothing else is left to shed, and the queue serves them first anyway).
  const absl::Duration timeout =
      standing && priority != Priority::kCritical
          ? std::min(options_.queue_timeout, standing_wait)
          : options_.queue_timeout;
  const absl::Time queue_expiry = parked + timeout;
  // A deadline already past is due now, not at some instant timers may not
  // represent (InfinitePast).
  const absl::Time expiry =
      std::max(parked, std::min(waiter.call_deadline, queue_expiry));
  if (expiry != absl::InfiniteFuture()) {
    // On a tie the deadline has passed too, and it is the caller's own limit.
    const WaitStatus status = waiter.call_deadline <= queue_expiry
                                  ? WaitStatus::kDeadlineExceeded
                                  : WaitStatus::kQueueTimeout;
    const TimerQueue::TimerId timer = waiter.timers.Schedule(
        expiry, [this, key, status] { OnWaitExpired(key, status); });
    bool still_parked;
    {
      absl::MutexLock lock(&mu_);
      auto it = waiters_.find(key);
      still_parked = it != waiters_.end();
      if (still_parked) it->second.timer = timer;
    }
    if (!still_parked) waiter.timers.Cancel(timer);
  }
  return {.status = AcquireStatus::kParked,
          .permit = Permit(),
          .wait = WaitHandle{.id = key.second, .priority = key.first}};
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
  const absl::Time now = adaptive_ != nullptr ? clock_.Now() : absl::Time();
  WaiterMap::node_type next;
  uint32_t in_flight = 0;
  {
    absl::MutexLock lock(&mu_);
    slots = slots_.load(std::memory_order_relaxed);
    if (waiters_.empty() ||
        InFlightOf(slots) > limit_.load(std::memory_order_relaxed)) {
      // They all left meanwhile (and no one can queue while mu_ is held), or
      // an adaptive limit fell below the calls in flight: the slot goes.
      slots_.fetch_sub(1, std::memory_order_relaxed);
      return;
    }
    // Hand the slot over: the in-flight half stays as it is, so no newcomer can
    // slip in between.
    if (adaptive_ != nullptr) queue_seen_at_ = now;
    next = Extract(NextWaiter(now));
    slots_.fetch_sub(kOneQueued, std::memory_order_relaxed);
    in_flight = InFlightOf(slots);
  }
  ParkedWaiter& waiter = next.mapped();
  if (waiter.timer.has_value()) waiter.timers->Cancel(*waiter.timer);
  waiter.on_done(
      WaitResult{.status = WaitStatus::kGranted, .permit = Grant(in_flight)});
}

void ConcurrencyLimiter::OnSample(absl::Time granted_at, uint32_t in_flight,
                                  bool overloaded) {
  const absl::Time now = clock_.Now();
  std::vector<WaiterMap::node_type> granted;
  uint32_t in_flight_now = 0;
  {
    absl::MutexLock lock(&mu_);
    const bool changed =
        adaptive_->OnSample(now, now - granted_at, in_flight, overloaded);
    mean_latency_ns_.store(absl::ToInt64Nanoseconds(adaptive_->mean_latency()),
                           std::memory_order_relaxed);
    if (!changed) return;
    const uint32_t limit = adaptive_->limit();
    limit_.store(limit, std::memory_order_relaxed);
    // A higher limit frees slots for those waiting (the in-flight and queued
    // halves move together, so newcomers still cannot overtake them).
    uint64_t slots = slots_.load(std::memory_order_relaxed);
    while (!waiters_.empty() && InFlightOf(slots) < limit) {
      if (!slots_.compare_exchange_weak(slots, slots + 1 - kOneQueued,
                                        std::memory_order_relaxed)) {
        continue;
      }
      slots = slots + 1 - kOneQueued;
      granted.push_back(Extract(NextWaiter(now)));
      in_flight_now = InFlightOf(slots);
    }
  }
  for (WaiterMap::node_type& node : granted) {
    ParkedWaiter& waiter = node.mapped();
    if (waiter.timer.has_value()) waiter.timers->Cancel(*waiter.timer);
    waiter.on_done(WaitResult{.status = WaitStatus::kGranted,
                              .permit = Grant(in_flight_now)});
  }
}

void ConcurrencyLimiter::OnWaitExpired(WaiterKey key, WaitStatus status) {
  WaiterMap::node_type expired;
  {
    absl::MutexLock lock(&mu_);
    auto it = waiters_.find(key);
    if (it == waiters_.end())
      return;  // granted or cancelled while the timer fired
    expired = Extract(it);
    slots_.fetch_sub(kOneQueued, std::memory_order_relaxed);
  }
  ParkedWaiter& waiter = expired.mapped();
  waiter.on_done(WaitResult{.status = status, .permit = Permit()});
}

ConcurrencyLimiter::CancelStatus ConcurrencyLimiter::Cancel(WaitHandle wait) {
  WaiterMap::node_type cancelled;
  {
    absl::MutexLock lock(&mu_);
    auto it = waiters_.find(WaiterKey(wait.priority, wait.id));
    if (it == waiters_.end()) return CancelStatus::kAlreadyResolved;
    cancelled = Extract(it);
    slots_.fetch_sub(kOneQueued, std::memory_order_relaxed);
  }
  // `cancelled` (and the on_done it owns) is destroyed here, outside the lock.
  ParkedWaiter& waiter = cancelled.mapped();
  if (waiter.timer.has_value()) waiter.timers->Cancel(*waiter.timer);
  return CancelStatus::kCancelled;
}

}  // namespace bulwark
