// CircuitBreaker decides whether a call may go upstream given how upstream
// calls have been ending: CLOSED admits everything and watches outcomes; too
// many failures (or slow calls) make it OPEN, which rejects everything for
// open_duration with the time left; then HALF_OPEN lets half_open_requests
// probes through: all succeed => CLOSED with a fresh window, any fails => OPEN
// again. Which gRPC statuses are failures is the caller's business: it reports
// each admitted call once as an Outcome.
//
// Thread-safety: CircuitBreaker is thread-safe. In CLOSED, TryAcquire reads one
// atomic and takes no lock; Record, and TryAcquire in the other states, hold
// one absl::Mutex for a few dozen instructions. The transition callback runs
// outside the lock, in transition order, never concurrently with itself, on
// whichever thread is delivering transitions at the time.
// CircuitBreakerStateMachine is the plain-value core (no clock, no lock); its
// owner serializes calls. Cost: O(1) per call, no allocation (the transition
// queue's storage is reserved up front for 8 undelivered transitions); numbers
// in tests/microbench/rate_breaker_bench.cc.
//
// Generations: every state change starts a new generation, and a Ticket
// remembers the one that admitted it. An outcome from an older generation (a
// call admitted before the breaker opened, finishing after it half-opened) says
// nothing about the new state and is ignored.
#ifndef BULWARK_POLICIES_CIRCUIT_BREAKER_H_
#define BULWARK_POLICIES_CIRCUIT_BREAKER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "policies/clock.h"

namespace bulwark {

enum class CircuitBreakerState { kClosed, kOpen, kHalfOpen };

// How an admitted upstream call ended, as the caller classifies it. kIgnored
// (e.g. the client cancelled) is neither: it counts nowhere but still frees a
// HALF_OPEN probe slot.
enum class CircuitBreakerOutcome { kSuccess, kFailure, kIgnored };

struct CircuitBreakerOptions {
  // Open after this many failures in a row; 0 = off.
  int64_t consecutive_failures = 5;
  // Open when failures / requests over `window` reaches this; <= 0 = off.
  double failure_rate = 0.5;
  // The rates are judged only once the window holds at least this many calls
  // (min 1).
  int64_t minimum_requests = 20;
  // Sliding window for the rates, kept in 10 buckets of window / 10.
  absl::Duration window = absl::Seconds(10);
  // How long OPEN rejects before HALF_OPEN.
  absl::Duration open_duration = absl::Seconds(30);
  // Probes admitted in HALF_OPEN (min 1).
  int64_t half_open_requests = 3;
  // When > 0, a call that took longer than this is slow, success or failure
  // alike; a slow probe in HALF_OPEN counts as a failed probe.
  absl::Duration slow_call_duration = absl::ZeroDuration();
  // Open when slow / requests over `window` reaches this (with
  // slow_call_duration > 0); <= 0 = off.
  double slow_call_rate = 1.0;
};

// What an admitted call carries until its outcome is recorded: the generation
// that admitted it and when (slow-call detection measures from `start`).
struct CircuitBreakerTicket {
  // Generations start at 1: a default Ticket is always ignored.
  uint64_t generation = 0;
  absl::Time start;
};

struct CircuitBreakerAdmission {
  enum Kind { kAdmitted, kRejected };
  Kind kind = kRejected;
  CircuitBreakerTicket ticket;  // kAdmitted: hand back to Record exactly once
  // kRejected: OPEN => time left until HALF_OPEN. HALF_OPEN with every probe
  // slot taken => when the probes will be done is unknown, so min(1s,
  // open_duration): long enough not to spin, short enough that a closed breaker
  // is noticed soon.
  absl::Duration retry_after = absl::ZeroDuration();
};

// The breaker's state for the admin page and metrics.
struct CircuitBreakerSnapshot {
  CircuitBreakerState state = CircuitBreakerState::kClosed;
  int64_t consecutive_failures = 0;
  // Calls recorded over the last `window` (bucket granularity).
  int64_t window_requests = 0;
  int64_t window_failures = 0;
  int64_t window_slow_calls = 0;
  int64_t half_open_probes_in_flight = 0;
  // OPEN: time left until the next TryAcquire half-opens it (zero once due: the
  // change is made lazily by that call); other states: zero.
  absl::Duration time_until_half_open = absl::ZeroDuration();
};

// The transition function as a value: each call's result and the next state
// depend only on (this state, the event, now), never on a clock or another
// thread, so the rules are table-tested with plain copies. Not thread-safe.
class CircuitBreakerStateMachine {
 public:
  static constexpr int kWindowBuckets = 10;

  explicit CircuitBreakerStateMachine(const CircuitBreakerOptions& options);

  // OPEN whose open_duration has passed becomes HALF_OPEN first.
  CircuitBreakerAdmission TryAcquire(absl::Time now);
  // Ignored unless `ticket` is from the current generation.
  void Record(const CircuitBreakerTicket& ticket, CircuitBreakerOutcome outcome,
              absl::Time now);

  CircuitBreakerState state() const { return state_; }
  // Current generation while CLOSED, else 0 (what CircuitBreaker's lock-free
  // path reads).
  uint64_t ClosedGeneration() const {
    return state_ == CircuitBreakerState::kClosed ? generation_ : 0;
  }
  CircuitBreakerSnapshot SnapshotAt(absl::Time now) const;

 private:
  struct Counts {
    int64_t requests = 0;
    int64_t failures = 0;
    int64_t slow_calls = 0;
  };

  // Calls per bucket of window / kWindowBuckets, as a ring; running totals make
  // both Add and the rate check O(1) (rolling over touches at most
  // kWindowBuckets buckets).
  class SlidingWindow {
   public:
    explicit SlidingWindow(absl::Duration window);
    void Add(absl::Time now, bool failure, bool slow);
    // Totals as of the last Add.
    const Counts& totals() const { return totals_; }
    Counts TotalsAt(absl::Time now) const;
    void Clear();

   private:
    int64_t BucketIndexAt(absl::Time now) const;
    Counts& BucketFor(int64_t index);
    const Counts& BucketFor(int64_t index) const;

    int64_t bucket_ns_;
    // For every i in (newest_index_ - kWindowBuckets, newest_index_], slot
    // i % kWindowBuckets holds the counts of bucket i.
    std::array<Counts, kWindowBuckets> buckets_;
    int64_t newest_index_;
    Counts totals_;
  };

  bool IsSlow(const CircuitBreakerTicket& ticket, absl::Time now) const;
  void RecordClosed(bool failure, bool slow, absl::Time now);
  void RecordHalfOpen(CircuitBreakerOutcome outcome, bool slow, absl::Time now);
  bool RatesSayOpen() const;
  void Open(absl::Time now);
  void HalfOpen();
  void Close();

  CircuitBreakerOptions options_;  // normalized
  CircuitBreakerState state_ = CircuitBreakerState::kClosed;
  uint64_t generation_ = 1;
  int64_t consecutive_failures_ = 0;
  absl::Time open_until_;
  int64_t probes_in_flight_ = 0;
  int64_t probe_successes_ = 0;
  SlidingWindow window_;
};

// A thread-safe breaker shared by every worker, e.g. one route's:
//   CircuitBreaker breaker(options, clock, [](State from, State to) { ... });
//   CircuitBreaker::Admission a = breaker.TryAcquire();
//   if (a.kind == CircuitBreaker::Admission::kRejected) ... else later
//   breaker.Record(a.ticket, CircuitBreaker::Outcome::kSuccess);
class CircuitBreaker {
 public:
  using State = CircuitBreakerState;
  using Outcome = CircuitBreakerOutcome;
  using Ticket = CircuitBreakerTicket;
  using Admission = CircuitBreakerAdmission;
  using Snapshot = CircuitBreakerSnapshot;
  using TransitionCallback = absl::AnyInvocable<void(State from, State to)>;

  CircuitBreaker(const CircuitBreakerOptions& options, Clock& clock,
                 TransitionCallback on_transition = nullptr);

  CircuitBreaker(const CircuitBreaker&) = delete;
  CircuitBreaker& operator=(const CircuitBreaker&) = delete;

  Admission TryAcquire(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  Admission TryAcquire() ABSL_LOCKS_EXCLUDED(mu_);
  void Record(const Ticket& ticket, Outcome outcome, absl::Time now)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Record(const Ticket& ticket, Outcome outcome) ABSL_LOCKS_EXCLUDED(mu_);

  // At the clock's now; stale as soon as it returns.
  Snapshot SnapshotApprox() ABSL_LOCKS_EXCLUDED(mu_);

  // "closed", "open", "half_open": the metric label values of SPEC section 5.
  static std::string_view StateName(State state);

 private:
  struct Transition {
    State from;
    State to;
  };

  // After each step of machine_: queues the step's transition, if any, and
  // republishes closed_generation_. Returns whether there is something to
  // deliver.
  bool AfterStep(State before) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DeliverTransitions() ABSL_LOCKS_EXCLUDED(mu_);

  Clock& clock_;
  // Called only by the thread that set delivering_.
  TransitionCallback on_transition_;
  // machine_.ClosedGeneration(), written under mu_, read without it by
  // TryAcquire. Relaxed loads suffice: the value is the whole message (no other
  // data is published through it), and an admission that reads a generation
  // just retired is one that happened before the change, whose outcome the
  // machine then ignores.
  std::atomic<uint64_t> closed_generation_;
  // Whoever flips this to true delivers every pending transition, in order,
  // then clears it and looks again (so a transition queued meanwhile is never
  // stranded).
  std::atomic<bool> delivering_{false};
  // Owned by the thread that set delivering_.
  std::vector<Transition> transitions_being_delivered_;
  absl::Mutex mu_;
  CircuitBreakerStateMachine machine_ ABSL_GUARDED_BY(mu_);
  std::vector<Transition> pending_transitions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_CIRCUIT_BREAKER_H_
