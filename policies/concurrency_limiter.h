// ConcurrencyLimiter decides whether a call may go upstream now (it gets a
// Permit, one of `max_in_flight` slots), must wait for a slot in a bounded FIFO
// queue (it is parked: a stored continuation, never a blocked thread), or is
// rejected at once (concurrency_limit). A parked waiter ends exactly one way:
// it is handed a Permit by the release of an earlier one, or its queue_timeout
// or its own call deadline comes first, or its owner cancels it.
//
// Thread-safety: thread-safe; one limiter is shared by every worker of a route.
// Slots are handed straight from the releasing Permit to the oldest waiter
// (FIFO across all threads), so the number of held permits never exceeds
// max_in_flight, not even for an instant. Callbacks are never invoked while the
// limiter's lock is held, nor from inside Acquire.
//
// Cost: while nobody waits, Acquire and Permit release are one
// compare-and-swap each: no lock, no allocation, no clock read; a rejection
// for a full queue is one atomic load. Parking and the releases that hand a
// slot to a waiter go through one absl::Mutex; parking costs one map node, one
// clock read, one timer and two short critical sections (numbers in
// tests/microbench/queue_flight_bench.cc).
//
// Priorities (SPEC section 7): each waiter has one (critical, high, normal,
// sheddable); the queue serves higher priorities first, and a full queue that
// a higher-priority call reaches sheds its lowest-priority, newest waiter
// (kLoadShed) instead of refusing the arrival.
//
// Adaptive (Options::adaptive): the limit moves by itself (AdaptiveLimit, fed
// by Permit::ReleaseSample from the calls' latencies and outcomes) between
// min_limit and max_in_flight, and the queue sheds early: a waiter whose
// remaining deadline is below the expected wait (waiters ahead x the mean
// latency / the limit) is shed at once; once the queue has not been empty for
// queue_interval (a standing queue, not a burst), new waiters wait at most
// queue_target and the newest is served first; every refusal is kLoadShed.
// The lock-free paths stay as they are (they read the moving limit); a sample
// takes the lock once per sampled call.
//
// Lifetime: the limiter must outlive every Permit it granted and every waiter
// still parked (the route's policy state is held by the config snapshot that
// those calls keep alive).
#ifndef BULWARK_POLICIES_CONCURRENCY_LIMITER_H_
#define BULWARK_POLICIES_CONCURRENCY_LIMITER_H_

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "policies/adaptive_limit.h"
#include "policies/clock.h"

namespace bulwark {

// A call's priority (SPEC section 7), most important first.
enum class Priority : uint8_t { kCritical = 0, kHigh, kNormal, kSheddable };
inline constexpr int kPriorityCount = 4;

class ConcurrencyLimiter {
 public:
  struct AdaptiveOptions {
    uint32_t min_limit = 4;
    uint32_t initial_limit = 20;
    absl::Duration queue_target = absl::Milliseconds(10);
    absl::Duration queue_interval = absl::Milliseconds(100);
  };
  struct Options {
    // Slots: calls allowed upstream at once. Must be >= 1 (config validation
    // checks).
    uint32_t max_in_flight = 64;
    // Callers allowed to wait for a slot; 0 rejects at once when no slot is
    // free.
    uint32_t max_queued = 128;
    // Longest wait for a slot; absl::InfiniteDuration() waits until the call
    // deadline.
    absl::Duration queue_timeout = absl::Milliseconds(50);
    // Whether callers carry priorities other than kNormal (a priority_header
    // is configured): only then can an arrival displace a waiter, so without
    // it a full queue refuses without the lock.
    bool priorities = false;
    // Set: the limit adapts, max_in_flight is its ceiling.
    std::optional<AdaptiveOptions> adaptive;
  };

  // One held slot. Move-only; releases its slot exactly once, on Release() or
  // destruction, whichever comes first (a moved-from or default-constructed
  // Permit holds nothing). Releasing hands the slot to the oldest waiter, whose
  // on_done then runs on the releasing thread (after the limiter's lock is
  // dropped).
  class Permit {
   public:
    Permit() = default;
    Permit(Permit&& other) noexcept;
    Permit& operator=(Permit&& other) noexcept;
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit() { Release(); }

    void Release();
    // Releases after a call that is a latency sample of an adaptive limit (a
    // unary call; SPEC section 7): the time since the grant, and whether it
    // ended in overload (deadline, RESOURCE_EXHAUSTED, UNAVAILABLE), move the
    // limit. Same as Release() on a fixed limiter.
    void ReleaseSample(bool overloaded);
    bool Held() const { return limiter_ != nullptr; }

   private:
    friend class ConcurrencyLimiter;
    explicit Permit(ConcurrencyLimiter* limiter) : limiter_(limiter) {}
    Permit(ConcurrencyLimiter* limiter, absl::Time granted_at,
           uint32_t in_flight)
        : limiter_(limiter), granted_at_(granted_at), in_flight_(in_flight) {}
    ConcurrencyLimiter* limiter_ = nullptr;
    // Adaptive only: when it was granted, and the calls in flight then.
    absl::Time granted_at_;
    uint32_t in_flight_ = 0;
  };

  enum class AcquireStatus : uint8_t {
    // `permit` holds a slot: go upstream.
    kGranted,
    // Queued: `wait` names the waiter; its on_done will report how it ended.
    kParked,
    // No free slot and the queue is full (or max_queued == 0): reject now.
    kConcurrencyLimit,
    // Adaptive: refused (full queue, or a deadline shorter than the expected
    // wait): reject with load_shed.
    kLoadShed,
  };
  enum class WaitStatus : uint8_t {
    // `permit` holds a slot: go upstream.
    kGranted,
    // queue_timeout elapsed first: reject with queue_timeout.
    kQueueTimeout,
    // The call's own deadline came first, or at the same instant.
    kDeadlineExceeded,
    // Displaced from a full queue by a higher-priority arrival.
    kLoadShed,
  };
  enum class CancelStatus : uint8_t {
    // The waiter was still queued: removed; its on_done will never run.
    kCancelled,
    // A grant or a timeout came first: on_done has run, or is running now on
    // another thread (see Cancel).
    kAlreadyResolved,
  };

  struct WaitResult {
    WaitStatus status;
    Permit permit;  // Held() iff status == kGranted
  };

  // Names one parked waiter for Cancel. A plain value; stale handles are
  // harmless.
  struct WaitHandle {
    uint64_t id = 0;
    Priority priority = Priority::kNormal;
  };

  // What a caller supplies in case it has to wait; used only when Acquire parks
  // it.
  struct Waiter {
    // The calling worker's timer queue: the waiter's timeout is scheduled on it
    // from inside Acquire (so Acquire runs on that queue's thread), and
    // cancelled from whichever thread resolves the waiter.
    TimerQueue& timers;
    // The call's own deadline; absl::InfiniteFuture() if it has none.
    absl::Time call_deadline = absl::InfiniteFuture();
    Priority priority = Priority::kNormal;
    // Invoked exactly once with the waiter's end unless Cancel returns
    // kCancelled first. Runs on the thread that resolved the wait (a releasing
    // worker, or the thread running `timers`), possibly before Acquire has
    // returned to the waiter's own thread, and never under the limiter's lock.
    // It should be cheap, e.g. post the result to the waiter's worker. Dropping
    // the permit releases it (handing it to the next waiter), so a callback
    // whose call has gone away may simply let the WaitResult die; if on_done
    // itself drops it, the next waiter's on_done runs nested in this one (at
    // most max_queued deep).
    absl::AnyInvocable<void(WaitResult)> on_done;
  };

  struct AcquireResult {
    AcquireStatus status;
    Permit permit;    // Held() iff status == kGranted
    WaitHandle wait;  // meaningful iff status == kParked
  };

  ConcurrencyLimiter(const Options& options, Clock& clock);
  // Precondition: no Permit outstanding and no waiter parked.
  ~ConcurrencyLimiter();

  ConcurrencyLimiter(const ConcurrencyLimiter&) = delete;
  ConcurrencyLimiter& operator=(const ConcurrencyLimiter&) = delete;

  // Takes a free slot, or parks `waiter` if the queue has room, or rejects.
  // Never blocks and never invokes waiter.on_done itself; when not parked,
  // `waiter` is simply dropped.
  AcquireResult Acquire(Waiter waiter) ABSL_LOCKS_EXCLUDED(mu_);
  // Acquire's lock-free part, which needs no Waiter: kGranted when a slot is
  // free and nobody queues, the refusal when the queue is full (and no
  // priority could displace a waiter); std::nullopt when only Acquire can
  // answer (it may park). A caller whose Waiter costs something to build (its
  // on_done allocates) tries this first.
  std::optional<AcquireResult> TryAcquire();

  // For a caller that went away while parked. kCancelled: the waiter is removed
  // at once, its timer cancelled and its on_done destroyed (on this thread)
  // without being invoked. kAlreadyResolved: the grant or the timeout won the
  // race; on_done has been or is being invoked exactly once, and if it carries
  // a Permit, whoever ends up holding the WaitResult releases that Permit by
  // dropping it. Safe to call from any thread, any number of times.
  CancelStatus Cancel(WaitHandle wait) ABSL_LOCKS_EXCLUDED(mu_);

  // Racy snapshots for metrics and the admin page, never a basis for a
  // decision.
  uint32_t InFlightApprox() const {
    return InFlightOf(slots_.load(std::memory_order_relaxed));
  }
  uint32_t QueuedApprox() const {
    return QueuedOf(slots_.load(std::memory_order_relaxed));
  }
  // The limit now (max_in_flight when not adaptive).
  uint32_t LimitApprox() const {
    return limit_.load(std::memory_order_relaxed);
  }
  bool adaptive() const { return adaptive_ != nullptr; }
  // Adaptive: how long a new waiter would wait (the waiters x the mean
  // latency / the limit); ZeroDuration before any sample or when not adaptive.
  absl::Duration ExpectedWaitApprox() const {
    const uint32_t limit = std::max<uint32_t>(1, LimitApprox());
    return absl::Nanoseconds(mean_latency_ns_.load(std::memory_order_relaxed) *
                             (QueuedApprox() + 1) / limit);
  }

  const Options& options() const { return options_; }

 private:
  struct ParkedWaiter {
    TimerQueue* timers;
    absl::Time parked_at;
    // Unset until armed, and for good if neither a queue timeout nor a
    // deadline applies.
    std::optional<TimerQueue::TimerId> timer;
    absl::AnyInvocable<void(WaitResult)> on_done;
  };
  // Keyed by (priority, arrival number): begin() is the oldest waiter of the
  // highest priority, prev(end()) the newest of the lowest.
  using WaiterKey = std::pair<Priority, uint64_t>;
  using WaiterMap = std::map<WaiterKey, ParkedWaiter>;

  // The slot accounting is one atomic word, so that the paths every call
  // takes when nobody waits (a free slot; a release with no waiter) are one
  // compare-and-swap each and take no lock. Low half: permits held; high
  // half: waiters parked. Invariants: the high half changes only under mu_,
  // where it equals waiters_.size(); the low half rises only by a CAS that saw
  // it below max_in_flight with nobody queued (so newcomers never overtake
  // waiters); a waiter is parked only by a CAS that saw every slot held, and a
  // release hands its slot to a waiter without touching the low half, so
  // "queued > 0" implies "in flight == max_in_flight".
  static constexpr uint64_t kOneQueued = uint64_t{1} << 32;
  static uint32_t InFlightOf(uint64_t slots) {
    return static_cast<uint32_t>(slots);
  }
  static uint32_t QueuedOf(uint64_t slots) {
    return static_cast<uint32_t>(slots >> 32);
  }

  // What Acquire can decide without the lock: take a free slot when nobody is
  // queued, or reject when the queue is full (so an overloaded route rejects
  // without contending for mu_).
  enum class LockFreeAnswer : uint8_t { kTookSlot, kQueueFull, kNeedsLock };
  // On kTookSlot, `in_flight` is the count with the new permit.
  LockFreeAnswer TryWithoutLock(uint32_t* in_flight);
  // How a call without a slot is refused: shed by an adaptive limit, else at
  // the fixed limit.
  AcquireStatus Refused() const {
    return adaptive_ != nullptr ? AcquireStatus::kLoadShed
                                : AcquireStatus::kConcurrencyLimit;
  }
  void ReleaseSlot() ABSL_LOCKS_EXCLUDED(mu_);
  void OnSample(absl::Time granted_at, uint32_t in_flight, bool overloaded)
      ABSL_LOCKS_EXCLUDED(mu_);
  void OnWaitExpired(WaiterKey key, WaitStatus status) ABSL_LOCKS_EXCLUDED(mu_);
  // The waiter a freed slot goes to: the highest priority's oldest, or its
  // newest while the queue stands (adaptive).
  WaiterMap::iterator NextWaiter(absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Standing(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  WaiterMap::node_type Extract(WaiterMap::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Permit Grant(uint32_t in_flight);

  const Options options_;
  Clock& clock_;

  // No memory is published through a slot (a Permit guards no data), so the
  // CASes need no ordering beyond their own atomicity; relaxed throughout.
  std::atomic<uint64_t> slots_{0};

  // max_in_flight, or the adaptive limit's current value.
  std::atomic<uint32_t> limit_;
  // The adaptive limit's mean latency, for ExpectedWaitApprox.
  std::atomic<int64_t> mean_latency_ns_{0};

  absl::Mutex mu_;
  uint64_t next_waiter_id_ ABSL_GUARDED_BY(mu_) = 1;
  WaiterMap waiters_ ABSL_GUARDED_BY(mu_);
  std::array<uint32_t, kPriorityCount> waiting_ ABSL_GUARDED_BY(mu_) = {};
  // When the queue's current episode began (it went from empty to not empty
  // after being empty at least queue_interval), and when it was last seen
  // holding a waiter.
  absl::Time nonempty_since_ ABSL_GUARDED_BY(mu_);
  absl::Time queue_seen_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  const std::unique_ptr<AdaptiveLimit> adaptive_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_CONCURRENCY_LIMITER_H_
