#include "policies/circuit_breaker.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

namespace bulwark {
namespace {

// HALF_OPEN with every probe slot taken: see
// CircuitBreakerAdmission::retry_after.
constexpr absl::Duration kProbesBusyRetryAfter = absl::Seconds(1);
// Room for transitions queued while a callback runs; more only if they pile up.
constexpr size_t kTransitionQueueReserve = 8;

CircuitBreakerOptions Normalized(CircuitBreakerOptions options) {
  options.consecutive_failures =
      std::max<int64_t>(options.consecutive_failures, 0);
  options.minimum_requests = std::max<int64_t>(options.minimum_requests, 1);
  options.half_open_requests = std::max<int64_t>(options.half_open_requests, 1);
  options.open_duration = std::max(options.open_duration, absl::ZeroDuration());
  return options;
}

// Whether part / whole has reached `rate`. Dividing, rather than comparing
// `part` with `rate * whole`, keeps decimal rates exact at the boundary:
// 3.0 / 30 == 0.1, but 0.1 * 30 > 3.0 in binary floating point.
bool RateReached(int64_t part, int64_t whole, double rate) {
  return rate > 0 &&
         static_cast<double>(part) / static_cast<double>(whole) >= rate;
}

CircuitBreakerAdmission Rejected(absl::Duration retry_after) {
  return {.kind = CircuitBreakerAdmission::kRejected,
          .ticket = {},
          .retry_after = retry_after};
}

}  // namespace

// ---- SlidingWindow ----

CircuitBreakerStateMachine::SlidingWindow::SlidingWindow(absl::Duration window)
    : bucket_ns_(std::max<int64_t>(
          1, absl::ToInt64Nanoseconds(window) / kWindowBuckets)),
      buckets_{},
      // Far enough back that the first Add clears every bucket.
      newest_index_(std::numeric_limits<int64_t>::min()) {}

int64_t CircuitBreakerStateMachine::SlidingWindow::BucketIndexAt(
    absl::Time now) const {
  return absl::ToUnixNanos(now) / bucket_ns_;
}

CircuitBreakerStateMachine::Counts&
CircuitBreakerStateMachine::SlidingWindow::BucketFor(int64_t index) {
  // Non-negative remainder, so times before 1970 cannot index out of the ring.
  return buckets_[((index % kWindowBuckets) + kWindowBuckets) % kWindowBuckets];
}

const CircuitBreakerStateMachine::Counts&
CircuitBreakerStateMachine::SlidingWindow::BucketFor(int64_t index) const {
  return buckets_[((index % kWindowBuckets) + kWindowBuckets) % kWindowBuckets];
}

void CircuitBreakerStateMachine::SlidingWindow::Add(absl::Time now,
                                                    bool failure, bool slow) {
  const int64_t index = BucketIndexAt(now);
  if (index > newest_index_) {
    if (index - kWindowBuckets >= newest_index_) {
      Clear();
    } else {
      for (int64_t i = newest_index_ + 1; i <= index; ++i) {
        Counts& expired = BucketFor(i);
        totals_.requests -= expired.requests;
        totals_.failures -= expired.failures;
        totals_.slow_calls -= expired.slow_calls;
        expired = {};
      }
    }
    newest_index_ = index;
  }
  // A call recorded with a `now` older than the newest bucket (threads racing
  // between the clock and the lock) lands in the newest bucket.
  Counts& bucket = BucketFor(newest_index_);
  const int64_t failures = failure ? 1 : 0;
  const int64_t slow_calls = slow ? 1 : 0;
  ++bucket.requests;
  bucket.failures += failures;
  bucket.slow_calls += slow_calls;
  ++totals_.requests;
  totals_.failures += failures;
  totals_.slow_calls += slow_calls;
}

CircuitBreakerStateMachine::Counts
CircuitBreakerStateMachine::SlidingWindow::TotalsAt(absl::Time now) const {
  const int64_t index = BucketIndexAt(now);
  if (index <= newest_index_) return totals_;
  Counts counts;
  // Buckets still inside the window that ends at `index`.
  for (int64_t i = index - kWindowBuckets + 1; i <= newest_index_; ++i) {
    const Counts& bucket = BucketFor(i);
    counts.requests += bucket.requests;
    counts.failures += bucket.failures;
    counts.slow_calls += bucket.slow_calls;
  }
  return counts;
}

void CircuitBreakerStateMachine::SlidingWindow::Clear() {
  buckets_.fill({});
  totals_ = {};
}

// ---- CircuitBreakerStateMachine ----

CircuitBreakerStateMachine::CircuitBreakerStateMachine(
    const CircuitBreakerOptions& options)
    : options_(Normalized(options)), window_(options_.window) {}

CircuitBreakerAdmission CircuitBreakerStateMachine::TryAcquire(absl::Time now) {
  if (state_ == CircuitBreakerState::kOpen) {
    if (now < open_until_) return Rejected(open_until_ - now);
    HalfOpen();
  }
  if (state_ == CircuitBreakerState::kHalfOpen) {
    if (probes_in_flight_ + probe_successes_ >= options_.half_open_requests) {
      return Rejected(std::min(kProbesBusyRetryAfter, options_.open_duration));
    }
    ++probes_in_flight_;
  }
  return {.kind = CircuitBreakerAdmission::kAdmitted,
          .ticket = {.generation = generation_, .start = now},
          .retry_after = absl::ZeroDuration()};
}

void CircuitBreakerStateMachine::Record(const CircuitBreakerTicket& ticket,
                                        CircuitBreakerOutcome outcome,
                                        absl::Time now) {
  if (ticket.generation != generation_) return;
  const bool slow = IsSlow(ticket, now);
  switch (state_) {
    case CircuitBreakerState::kClosed:
      if (outcome == CircuitBreakerOutcome::kIgnored) return;
      RecordClosed(outcome == CircuitBreakerOutcome::kFailure, slow, now);
      return;
    case CircuitBreakerState::kHalfOpen:
      RecordHalfOpen(outcome, slow, now);
      return;
    case CircuitBreakerState::kOpen:
      // No ticket is issued while OPEN and opening starts a generation: cannot
      // happen.
      return;
  }
}

bool CircuitBreakerStateMachine::IsSlow(const CircuitBreakerTicket& ticket,
                                        absl::Time now) const {
  return options_.slow_call_duration > absl::ZeroDuration() &&
         now - ticket.start > options_.slow_call_duration;
}

void CircuitBreakerStateMachine::RecordClosed(bool failure, bool slow,
                                              absl::Time now) {
  consecutive_failures_ = failure ? consecutive_failures_ + 1 : 0;
  window_.Add(now, failure, slow);
  const bool too_many_in_a_row =
      options_.consecutive_failures > 0 &&
      consecutive_failures_ >= options_.consecutive_failures;
  if (too_many_in_a_row || RatesSayOpen()) Open(now);
}

// A slow probe fails the probe: slowness is what the breaker was asked to guard
// against.
void CircuitBreakerStateMachine::RecordHalfOpen(CircuitBreakerOutcome outcome,
                                                bool slow, absl::Time now) {
  --probes_in_flight_;
  switch (outcome) {
    case CircuitBreakerOutcome::kIgnored:
      return;
    case CircuitBreakerOutcome::kFailure:
      Open(now);
      return;
    case CircuitBreakerOutcome::kSuccess:
      if (slow) {
        Open(now);
      } else if (++probe_successes_ >= options_.half_open_requests) {
        Close();
      }
      return;
  }
}

bool CircuitBreakerStateMachine::RatesSayOpen() const {
  const Counts& totals = window_.totals();
  if (totals.requests < options_.minimum_requests) return false;
  if (RateReached(totals.failures, totals.requests, options_.failure_rate)) {
    return true;
  }
  return options_.slow_call_duration > absl::ZeroDuration() &&
         RateReached(totals.slow_calls, totals.requests,
                     options_.slow_call_rate);
}

void CircuitBreakerStateMachine::Open(absl::Time now) {
  state_ = CircuitBreakerState::kOpen;
  ++generation_;
  open_until_ = now + options_.open_duration;
  probes_in_flight_ = 0;
  probe_successes_ = 0;
}

void CircuitBreakerStateMachine::HalfOpen() {
  state_ = CircuitBreakerState::kHalfOpen;
  ++generation_;
  probes_in_flight_ = 0;
  probe_successes_ = 0;
}

void CircuitBreakerStateMachine::Close() {
  state_ = CircuitBreakerState::kClosed;
  ++generation_;
  consecutive_failures_ = 0;
  probes_in_flight_ = 0;
  probe_successes_ = 0;
  window_.Clear();
}

CircuitBreakerSnapshot CircuitBreakerStateMachine::SnapshotAt(
    absl::Time now) const {
  const Counts window = window_.TotalsAt(now);
  return {.state = state_,
          .consecutive_failures = consecutive_failures_,
          .window_requests = window.requests,
          .window_failures = window.failures,
          .window_slow_calls = window.slow_calls,
          .half_open_probes_in_flight = probes_in_flight_,
          .time_until_half_open =
              state_ == CircuitBreakerState::kOpen
                  ? std::max(absl::ZeroDuration(), open_until_ - now)
                  : absl::ZeroDuration()};
}

// ---- CircuitBreaker ----

CircuitBreaker::CircuitBreaker(const CircuitBreakerOptions& options,
                               Clock& clock, TransitionCallback on_transition)
    : clock_(clock),
      on_transition_(std::move(on_transition)),
      machine_(options) {
  closed_generation_.store(machine_.ClosedGeneration(),
                           std::memory_order_relaxed);
  transitions_being_delivered_.reserve(kTransitionQueueReserve);
  absl::MutexLock lock(&mu_);
  pending_transitions_.reserve(kTransitionQueueReserve);
}

CircuitBreaker::Admission CircuitBreaker::TryAcquire(absl::Time now) {
  if (const uint64_t generation =
          closed_generation_.load(std::memory_order_relaxed);
      generation != 0) {
    // Exactly what machine_.TryAcquire answers in CLOSED, which changes
    // nothing.
    return {.kind = Admission::kAdmitted,
            .ticket = {.generation = generation, .start = now},
            .retry_after = absl::ZeroDuration()};
  }
  Admission admission;
  bool transitioned;
  {
    absl::MutexLock lock(&mu_);
    const State before = machine_.state();
    admission = machine_.TryAcquire(now);
    transitioned = AfterStep(before);
  }
  if (transitioned) DeliverTransitions();
  return admission;
}

CircuitBreaker::Admission CircuitBreaker::TryAcquire() {
  return TryAcquire(clock_.Now());
}

void CircuitBreaker::Record(const Ticket& ticket, Outcome outcome,
                            absl::Time now) {
  bool transitioned;
  {
    absl::MutexLock lock(&mu_);
    const State before = machine_.state();
    machine_.Record(ticket, outcome, now);
    transitioned = AfterStep(before);
  }
  if (transitioned) DeliverTransitions();
}

void CircuitBreaker::Record(const Ticket& ticket, Outcome outcome) {
  Record(ticket, outcome, clock_.Now());
}

CircuitBreaker::Snapshot CircuitBreaker::SnapshotApprox() {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  return machine_.SnapshotAt(now);
}

std::string_view CircuitBreaker::StateName(State state) {
  switch (state) {
    case State::kClosed:
      return "closed";
    case State::kOpen:
      return "open";
    case State::kHalfOpen:
      return "half_open";
  }
  return "unknown";
}

bool CircuitBreaker::AfterStep(State before) {
  const State after = machine_.state();
  if (after == before) return false;
  closed_generation_.store(machine_.ClosedGeneration(),
                           std::memory_order_relaxed);
  if (!on_transition_) return false;
  pending_transitions_.push_back({.from = before, .to = after});
  return true;
}

void CircuitBreaker::DeliverTransitions() {
  while (!delivering_.exchange(true, std::memory_order_acquire)) {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (pending_transitions_.empty()) break;
        std::swap(pending_transitions_, transitions_being_delivered_);
      }
      for (const Transition& t : transitions_being_delivered_) {
        on_transition_(t.from, t.to);
      }
      transitions_being_delivered_.clear();
    }
    delivering_.store(false, std::memory_order_release);
    // A transition queued after the last look above, by a thread that then saw
    // delivering_ still set, is ours to deliver.
    absl::MutexLock lock(&mu_);
    if (pending_transitions_.empty()) return;
  }
}

}  // namespace bulwark
