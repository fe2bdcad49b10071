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
// Lifetime: the limiter must outlive every Permit it granted and every waiter
// still parked (the route's policy state is held by the config snapshot that
// those calls keep alive).
#ifndef BULWARK_POLICIES_CONCURRENCY_LIMITER_H_
#define BULWARK_POLICIES_CONCURRENCY_LIMITER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "policies/clock.h"

namespace bulwark {

class ConcurrencyLimiter {
 public:
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
    bool Held() const { return limiter_ != nullptr; }

   private:
    friend class ConcurrencyLimiter;
    explicit Permit(ConcurrencyLimiter* limiter) : limiter_(limiter) {}
    ConcurrencyLimiter* limiter_ = nullptr;
  };

  enum class AcquireStatus : uint8_t {
    // `permit` holds a slot: go upstream.
    kGranted,
    // Queued: `wait` names the waiter; its on_done will report how it ended.
    kParked,
    // No free slot and the queue is full (or max_queued == 0): reject now.
    kConcurrencyLimit,
  };
  enum class WaitStatus : uint8_t {
    // `permit` holds a slot: go upstream.
    kGranted,
    // queue_timeout elapsed first: reject with queue_timeout.
    kQueueTimeout,
    // The call's own deadline came first, or at the same instant.
    kDeadlineExceeded,
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

  const Options& options() const { return options_; }

 private:
  struct ParkedWaiter {
    TimerQueue* timers;
    // Unset until armed, and for good if neither a queue timeout nor a
    // deadline applies.
    std::optional<TimerQueue::TimerId> timer;
    absl::AnyInvocable<void(WaitResult)> on_done;
  };
  // Keyed by arrival number, so begin() is the oldest waiter.
  using WaiterMap = std::map<uint64_t, ParkedWaiter>;

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
  LockFreeAnswer TryWithoutLock();
  void ReleaseSlot() ABSL_LOCKS_EXCLUDED(mu_);
  void OnWaitExpired(uint64_t id, WaitStatus status) ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  Clock& clock_;

  // No memory is published through a slot (a Permit guards no data), so the
  // CASes need no ordering beyond their own atomicity; relaxed throughout.
  std::atomic<uint64_t> slots_{0};

  absl::Mutex mu_;
  uint64_t next_waiter_id_ ABSL_GUARDED_BY(mu_) = 1;
  WaiterMap waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_CONCURRENCY_LIMITER_H_
