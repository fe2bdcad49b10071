// Checks the policy cores against their contracts under input-chosen options
// and event sequences (the first byte picks the policy):
//
// TokenBucketLevel (policies/token_bucket.h): tokens stay within [0, burst]; a
// take is
//   admitted only with >= 1 token and removes exactly one; a rejection leaves
//   the level as it was and its retry_after is exact (a take at now +
//   retry_after succeeds, one nanosecond earlier fails), or infinite exactly
//   when the bucket can never refill to a token; a stale `now` (earlier than
//   the last one) refills nothing.
// CircuitBreakerStateMachine and CircuitBreaker (policies/circuit_breaker.h),
// in
//   lockstep on the same events: state changes only along CLOSED->OPEN,
//   OPEN->HALF_OPEN, HALF_OPEN->CLOSED|OPEN; CLOSED admits everything; OPEN
//   rejects with the time left; HALF_OPEN has at most half_open_requests probes
//   out; outcomes of a default ticket change nothing; window counts are
//   consistent; the thread-safe wrapper (lock-free CLOSED path, transition
//   callback) answers exactly as the machine and reports exactly its
//   transitions, in order.
// ConcurrencyLimiter (policies/concurrency_limiter.h) with FakeClock +
// FakeTimerQueue:
//   permits held never exceed max_in_flight and equal InFlightApprox; waiters
//   never exceed max_queued and equal QueuedApprox; a waiter parks only when
//   every slot is held; a released slot goes to the oldest waiter; timeouts
//   fire at their instant, in deadline order, with kDeadlineExceeded when the
//   call's deadline came first or tied; every waiter's on_done runs exactly
//   once unless Cancel said kCancelled (then never); Cancel answers kCancelled
//   only for a waiter still parked.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "policies/circuit_breaker.h"
#include "policies/clock.h"
#include "policies/concurrency_limiter.h"
#include "policies/token_bucket.h"
#include "tests/fuzz/byte_reader.h"

namespace {

using bulwark::fuzz::ByteReader;

constexpr int kMaxSteps = 1000;
const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);
// Time never moves past this (year ~2190): far beyond any deadline, still well
// inside int64 nanoseconds, which the bucket's arithmetic uses.
const absl::Time kEndOfTime = absl::FromUnixSeconds(7'000'000'000);

// A step of time from the input, from nanoseconds to days.
absl::Duration Step(ByteReader& in) {
  const uint8_t kind = in.Byte();
  const int64_t amount = static_cast<int64_t>(in.Byte());
  switch (kind % 6) {
    case 0:
      return absl::Nanoseconds(amount);
    case 1:
      return absl::Microseconds(amount * 7);
    case 2:
      return absl::Milliseconds(amount);
    case 3:
      return absl::Milliseconds(amount * 97);
    case 4:
      return absl::Seconds(amount);
    default:
      return absl::Hours(amount);
  }
}

absl::Time Advance(absl::Time now, absl::Duration by) {
  return std::min(now + by, kEndOfTime);
}

// ---- Token bucket ----

double ChooseRate(ByteReader& in) {
  static constexpr double kRates[] = {
      0, 0.5, 1, 3, 100, 1.0 / 3, 1e-9, 1e-10, 1e9, 9.2e9, 1e12, -1, 1e-3, 2.5,
  };
  const uint8_t selector = in.Byte();
  constexpr size_t kCount = sizeof(kRates) / sizeof(kRates[0]);
  if (selector < kCount) return kRates[selector];
  if (selector == 255) return std::numeric_limits<double>::quiet_NaN();
  if (selector == 254) return std::numeric_limits<double>::infinity();
  if (selector == 253) {  // any bit pattern
    const uint64_t bits = in.Bits(8);
    double rate;
    std::memcpy(&rate, &bits, sizeof(rate));
    return rate;
  }
  return static_cast<double>(in.Bits(2)) / 16;
}

int64_t ChooseBurst(ByteReader& in) {
  static constexpr int64_t kBursts[] = {
      0,
      1,
      2,
      3,
      50,
      200,
      -1,
      int64_t{1} << 53,
      (int64_t{1} << 53) + 1,
      std::numeric_limits<int64_t>::max(),
  };
  const uint8_t selector = in.Byte();
  constexpr size_t kCount = sizeof(kBursts) / sizeof(kBursts[0]);
  if (selector < kCount) return kBursts[selector];
  return selector % 16;
}

void CheckTokensInRange(double tokens, int64_t burst) {
  const double cap = static_cast<double>(std::max<int64_t>(burst, 0));
  FUZZ_CHECK(tokens >= 0);
  FUZZ_CHECK(tokens <= cap * (1 + 1e-12));
}

void FuzzTokenBucket(ByteReader& in) {
  const double rate = ChooseRate(in);
  const int64_t burst = ChooseBurst(in);
  const bulwark::TokenBucketLimits limits(
      {.rate_per_second = rate, .burst = burst});
  FUZZ_CHECK(limits.units_per_ns >= 0);
  absl::Time now = kStart;
  absl::Time last_take = now;  // the latest `now` the level has seen
  bulwark::TokenBucketLevel level(limits, now);
  CheckTokensInRange(level.TokensAt(limits, now), burst);

  for (int i = 0; i < kMaxSteps && !in.empty(); ++i) {
    const uint8_t op = in.Byte() % 8;
    if (op < 2) {
      now = Advance(now, Step(in));
      continue;
    }
    if (op == 2) {  // a stale reading of the clock
      now -= absl::Nanoseconds(in.Bits(2));
      continue;
    }
    const double before = level.TokensAt(limits, now);
    CheckTokensInRange(before, burst);
    // A stale `now` sees the level as of the latest instant, unrefilled.
    if (now <= last_take) {
      FUZZ_CHECK(before == level.TokensAt(limits, last_take));
    }
    last_take = std::max(last_take, now);
    const bulwark::TakeResult result = level.TryTake(limits, now);
    const double after = level.TokensAt(limits, now);
    CheckTokensInRange(after, burst);
    if (result.kind == bulwark::TakeResult::kAdmitted) {
      FUZZ_CHECK(result.retry_after == absl::ZeroDuration());
      FUZZ_CHECK(before >= 1);
      FUZZ_CHECK(std::fabs(after - (before - 1)) <=
                 1e-9 * std::max(1.0, before));
      continue;
    }
    FUZZ_CHECK(before <= 1);
    FUZZ_CHECK(after == before);
    FUZZ_CHECK(result.retry_after > absl::ZeroDuration());
    const bool never = limits.units_per_ns == 0 || burst < 1;
    FUZZ_CHECK((result.retry_after == absl::InfiniteDuration()) == never);
    if (never) continue;
    bulwark::TokenBucketLevel at_ready = level;
    FUZZ_CHECK(at_ready.TryTake(limits, now + result.retry_after).kind ==
               bulwark::TakeResult::kAdmitted);
    bulwark::TokenBucketLevel just_before = level;
    FUZZ_CHECK(
        just_before
            .TryTake(limits, now + result.retry_after - absl::Nanoseconds(1))
            .kind == bulwark::TakeResult::kRejected);
  }
}

// ---- Circuit breaker ----

using bulwark::CircuitBreakerState;
using State = bulwark::CircuitBreakerState;

bool LegalEdge(State from, State to) {
  if (from == to) return true;
  return (from == State::kClosed && to == State::kOpen) ||
         (from == State::kOpen && to == State::kHalfOpen) ||
         (from == State::kHalfOpen &&
          (to == State::kClosed || to == State::kOpen));
}

absl::Duration ChooseDuration(ByteReader& in) {
  static const absl::Duration kDurations[] = {
      absl::ZeroDuration(),   absl::Nanoseconds(1),    absl::Milliseconds(1),
      absl::Milliseconds(10), absl::Milliseconds(100), absl::Seconds(1),
      absl::Seconds(10),      absl::Seconds(30),       absl::Hours(1),
      absl::Seconds(-1),
  };
  const uint8_t selector = in.Byte();
  constexpr size_t kCount = sizeof(kDurations) / sizeof(kDurations[0]);
  if (selector < kCount) return kDurations[selector];
  return absl::Milliseconds(selector);
}

double ChooseFraction(ByteReader& in) {
  static constexpr double kFractions[] = {0, 0.1, 0.5, 1.0, -1, 1.5, 0.3};
  const uint8_t selector = in.Byte();
  constexpr size_t kCount = sizeof(kFractions) / sizeof(kFractions[0]);
  if (selector < kCount) return kFractions[selector];
  if (selector == 255) return std::numeric_limits<double>::quiet_NaN();
  return selector / 256.0;
}

struct Transition {
  State from;
  State to;
  bool operator==(const Transition&) const = default;
};

bool SameSnapshot(const bulwark::CircuitBreakerSnapshot& a,
                  const bulwark::CircuitBreakerSnapshot& b) {
  return a.state == b.state &&
         a.consecutive_failures == b.consecutive_failures &&
         a.window_requests == b.window_requests &&
         a.window_failures == b.window_failures &&
         a.window_slow_calls == b.window_slow_calls &&
         a.half_open_probes_in_flight == b.half_open_probes_in_flight &&
         a.time_until_half_open == b.time_until_half_open;
}

void FuzzCircuitBreaker(ByteReader& in) {
  bulwark::CircuitBreakerOptions options{
      .consecutive_failures = static_cast<int64_t>(in.Byte() % 10) - 1,
      .failure_rate = ChooseFraction(in),
      .minimum_requests = static_cast<int64_t>(in.Byte() % 30) - 1,
      .window = ChooseDuration(in),
      .open_duration = ChooseDuration(in),
      .half_open_requests = static_cast<int64_t>(in.Byte() % 6) - 1,
      .slow_call_duration = ChooseDuration(in),
      .slow_call_rate = ChooseFraction(in),
  };
  const int64_t probes = std::max<int64_t>(options.half_open_requests, 1);
  const absl::Duration open_duration =
      std::max(options.open_duration, absl::ZeroDuration());

  bulwark::CircuitBreakerStateMachine machine(options);
  bulwark::FakeClock clock(kStart);
  std::vector<Transition> reported;
  bulwark::CircuitBreaker breaker(options, clock, [&](State from, State to) {
    reported.push_back({from, to});
  });
  std::vector<Transition> expected_reported;

  struct Tickets {
    bulwark::CircuitBreakerTicket machine;
    bulwark::CircuitBreakerTicket wrapper;
  };
  std::vector<Tickets> outstanding;
  absl::Time now = kStart;
  absl::Time latest = now;

  for (int i = 0; i < kMaxSteps && !in.empty(); ++i) {
    const State before = machine.state();
    const uint8_t op = in.Byte() % 8;
    if (op < 2) {
      now = Advance(now, Step(in));
      latest = std::max(latest, now);
    } else if (op == 2) {
      now -= absl::Nanoseconds(in.Bits(3));  // a stale clock reading
    } else if (op < 5) {
      const bulwark::CircuitBreakerAdmission m = machine.TryAcquire(now);
      const bulwark::CircuitBreakerAdmission w = breaker.TryAcquire(now);
      FUZZ_CHECK(m.kind == w.kind);
      FUZZ_CHECK(m.retry_after == w.retry_after);
      FUZZ_CHECK(m.ticket.generation == w.ticket.generation);
      FUZZ_CHECK(m.ticket.start == w.ticket.start);
      if (before == State::kClosed) {
        FUZZ_CHECK(m.kind == bulwark::CircuitBreakerAdmission::kAdmitted);
      }
      if (m.kind == bulwark::CircuitBreakerAdmission::kAdmitted) {
        FUZZ_CHECK(m.ticket.generation != 0);
        FUZZ_CHECK(m.retry_after == absl::ZeroDuration());
        outstanding.push_back({m.ticket, w.ticket});
      } else {
        FUZZ_CHECK(machine.state() != State::kClosed);
        // HALF_OPEN with every probe out: min(1s, open_duration), maybe zero.
        FUZZ_CHECK(m.retry_after >= absl::ZeroDuration());
        if (machine.state() == State::kOpen) {
          FUZZ_CHECK(m.retry_after > absl::ZeroDuration());
          FUZZ_CHECK(m.retry_after ==
                     machine.SnapshotAt(now).time_until_half_open);
          if (now >= latest) FUZZ_CHECK(m.retry_after <= open_duration);
        }
      }
    } else if (op < 7) {
      if (outstanding.empty()) continue;
      const size_t index = in.Below(outstanding.size());
      const Tickets t = outstanding[index];
      outstanding.erase(outstanding.begin() + static_cast<ptrdiff_t>(index));
      const auto outcome =
          static_cast<bulwark::CircuitBreakerOutcome>(in.Byte() % 3);
      machine.Record(t.machine, outcome, now);
      breaker.Record(t.wrapper, outcome, now);
    } else {
      // A default ticket is never counted.
      const bulwark::CircuitBreakerSnapshot snapshot = machine.SnapshotAt(now);
      const auto outcome =
          static_cast<bulwark::CircuitBreakerOutcome>(in.Byte() % 3);
      machine.Record({}, outcome, now);
      breaker.Record({}, outcome, now);
      FUZZ_CHECK(SameSnapshot(snapshot, machine.SnapshotAt(now)));
    }

    const State after = machine.state();
    FUZZ_CHECK(LegalEdge(before, after));
    if (after != before) expected_reported.push_back({before, after});
    FUZZ_CHECK(reported == expected_reported);

    clock.SetNow(now);
    const bulwark::CircuitBreakerSnapshot s = machine.SnapshotAt(now);
    FUZZ_CHECK(SameSnapshot(s, breaker.SnapshotApprox()));
    FUZZ_CHECK(s.state == after);
    FUZZ_CHECK(s.consecutive_failures >= 0);
    FUZZ_CHECK(s.window_requests >= 0);
    FUZZ_CHECK(s.window_failures >= 0 &&
               s.window_failures <= s.window_requests);
    FUZZ_CHECK(s.window_slow_calls >= 0 &&
               s.window_slow_calls <= s.window_requests);
    FUZZ_CHECK(s.half_open_probes_in_flight >= 0 &&
               s.half_open_probes_in_flight <= probes);
    FUZZ_CHECK(s.time_until_half_open >= absl::ZeroDuration());
    if (after != State::kOpen) {
      FUZZ_CHECK(s.time_until_half_open == absl::ZeroDuration());
    }
    if (after != State::kHalfOpen)
      FUZZ_CHECK(s.half_open_probes_in_flight == 0);
    FUZZ_CHECK((machine.ClosedGeneration() != 0) == (after == State::kClosed));
  }
}

// ---- Concurrency limiter ----

class LimiterCheck {
 public:
  using Limiter = bulwark::ConcurrencyLimiter;

  explicit LimiterCheck(ByteReader& in)
      : in_(in),
        timers_(clock_),
        options_{.max_in_flight = 1u + in.Byte() % 4,
                 .max_queued = in.Byte() % 5u,
                 .queue_timeout = ChooseQueueTimeout(in)},
        limiter_(options_, clock_) {}

  void Run() {
    for (int i = 0; i < kMaxSteps && !in_.empty(); ++i) {
      switch (in_.Byte() % 6) {
        case 0:
        case 1:
          Acquire();
          break;
        case 2:
          Release();
          break;
        case 3:
          Cancel();
          break;
        default:
          AdvanceBy(Step(in_));
          break;
      }
      CheckCounts();
    }
    TearDown();
  }

 private:
  enum class Fate { kParked, kGranted, kQueueTimeout, kDeadline, kCancelled };
  struct Waiter {
    Limiter::WaitHandle handle;
    absl::Time expiry;  // InfiniteFuture: no timer
    Limiter::WaitStatus timeout_status;
    bool keep_permit;
    Fate fate = Fate::kParked;
    int calls = 0;
  };

  static absl::Duration ChooseQueueTimeout(ByteReader& in) {
    switch (in.Byte() % 6) {
      case 0:
        return absl::ZeroDuration();
      case 1:
        return absl::Milliseconds(1);
      case 2:
        return absl::Milliseconds(50);
      case 3:
        return absl::Seconds(1);
      case 4:
        return absl::InfiniteDuration();
      default:
        return absl::Milliseconds(-1);
    }
  }

  absl::Time ChooseDeadline(absl::Time now) {
    switch (in_.Byte() % 6) {
      case 0:
      case 1:
        return absl::InfiniteFuture();
      case 2:
        return now - absl::Milliseconds(1);  // already past
      case 3:
        return now + options_.queue_timeout;  // a tie
      default:
        return now + Step(in_);
    }
  }

  size_t Parked() const {
    size_t n = 0;
    for (const Waiter& w : waiters_) n += w.fate == Fate::kParked ? 1 : 0;
    return n;
  }

  void Acquire() {
    const absl::Time now = clock_.Now();
    const absl::Time deadline = ChooseDeadline(now);
    const bool keep = in_.Byte() % 4 != 0;
    const size_t parked = Parked();
    const bool free_slot = held_.size() < options_.max_in_flight && parked == 0;
    const bool room = parked < options_.max_queued;

    const size_t index = waiters_.size();
    Limiter::AcquireResult result =
        limiter_.Acquire({.timers = timers_,
                          .call_deadline = deadline,
                          .on_done = [this, index](Limiter::WaitResult r) {
                            OnDone(index, std::move(r));
                          }});
    if (free_slot) {
      FUZZ_CHECK(result.status == Limiter::AcquireStatus::kGranted);
      FUZZ_CHECK(result.permit.Held());
      held_.push_back(std::move(result.permit));
      return;
    }
    FUZZ_CHECK(!result.permit.Held());
    if (!room) {
      FUZZ_CHECK(result.status == Limiter::AcquireStatus::kConcurrencyLimit);
      return;
    }
    FUZZ_CHECK(result.status == Limiter::AcquireStatus::kParked);
    FUZZ_CHECK(held_.size() == options_.max_in_flight);
    const absl::Time queue_expiry = now + options_.queue_timeout;
    waiters_.push_back(
        {.handle = result.wait,
         .expiry = std::max(now, std::min(deadline, queue_expiry)),
         .timeout_status = deadline <= queue_expiry
                               ? Limiter::WaitStatus::kDeadlineExceeded
                               : Limiter::WaitStatus::kQueueTimeout,
         .keep_permit = keep});
  }

  void OnDone(size_t index, Limiter::WaitResult result) {
    FUZZ_CHECK(index < waiters_.size());
    Waiter& w = waiters_[index];
    ++w.calls;
    FUZZ_CHECK(w.calls == 1);
    FUZZ_CHECK(w.fate == Fate::kParked);
    if (result.status == Limiter::WaitStatus::kGranted) {
      FUZZ_CHECK(result.permit.Held());
      // FIFO: the oldest waiter gets the slot.
      for (size_t i = 0; i < index; ++i) {
        FUZZ_CHECK(waiters_[i].fate != Fate::kParked);
      }
      w.fate = Fate::kGranted;
      if (w.keep_permit) held_.push_back(std::move(result.permit));
      // Otherwise the permit dies with `result`, handing the slot on.
      return;
    }
    FUZZ_CHECK(!result.permit.Held());
    FUZZ_CHECK(result.status == w.timeout_status);
    FUZZ_CHECK(w.expiry != absl::InfiniteFuture());
    FUZZ_CHECK(!expected_expiries_.empty() &&
               expected_expiries_.front() == index);
    expected_expiries_.erase(expected_expiries_.begin());
    FUZZ_CHECK(clock_.Now() == std::max(w.expiry, advance_from_));
    w.fate = result.status == Limiter::WaitStatus::kDeadlineExceeded
                 ? Fate::kDeadline
                 : Fate::kQueueTimeout;
  }

  void Release() {
    if (held_.empty()) return;
    const size_t index = in_.Below(held_.size());
    Limiter::Permit permit = std::move(held_[index]);
    held_.erase(held_.begin() + static_cast<ptrdiff_t>(index));
    FUZZ_CHECK(permit.Held());
    if (in_.Bool()) {
      permit.Release();
      FUZZ_CHECK(!permit.Held());
      permit.Release();  // a second release is a no-op
    }
    // Otherwise destruction releases it.
  }

  void Cancel() {
    if (waiters_.empty()) return;
    Waiter& w = waiters_[in_.Below(waiters_.size())];
    const bool parked = w.fate == Fate::kParked;
    const Limiter::CancelStatus status = limiter_.Cancel(w.handle);
    FUZZ_CHECK((status == Limiter::CancelStatus::kCancelled) == parked);
    if (parked) w.fate = Fate::kCancelled;
    FUZZ_CHECK(limiter_.Cancel(w.handle) ==
               Limiter::CancelStatus::kAlreadyResolved);
  }

  void AdvanceBy(absl::Duration d) {
    advance_from_ = clock_.Now();
    const absl::Time end = advance_from_ + d;
    expected_expiries_.clear();
    for (size_t i = 0; i < waiters_.size(); ++i) {
      if (waiters_[i].fate == Fate::kParked && waiters_[i].expiry <= end) {
        expected_expiries_.push_back(i);
      }
    }
    // Deadline order; timers were armed in arrival order, which breaks ties.
    std::stable_sort(expected_expiries_.begin(), expected_expiries_.end(),
                     [this](size_t a, size_t b) {
                       return waiters_[a].expiry < waiters_[b].expiry;
                     });
    timers_.AdvanceBy(d);
    FUZZ_CHECK(expected_expiries_.empty());
    FUZZ_CHECK(clock_.Now() == end);
  }

  void CheckCounts() {
    const size_t parked = Parked();
    FUZZ_CHECK(held_.size() <= options_.max_in_flight);
    FUZZ_CHECK(parked <= options_.max_queued);
    FUZZ_CHECK(limiter_.InFlightApprox() == held_.size());
    FUZZ_CHECK(limiter_.QueuedApprox() == parked);
    if (parked > 0) FUZZ_CHECK(held_.size() == options_.max_in_flight);
  }

  void TearDown() {
    for (Waiter& w : waiters_) {
      if (w.fate == Fate::kParked && in_.Bool()) {
        FUZZ_CHECK(limiter_.Cancel(w.handle) ==
                   Limiter::CancelStatus::kCancelled);
        w.fate = Fate::kCancelled;
      }
    }
    // Releasing hands slots to the remaining waiters, whose permits come back
    // into held_ (or are dropped at once) until nobody waits.
    while (!held_.empty()) {
      Release();
      CheckCounts();
    }
    FUZZ_CHECK(Parked() == 0);
    FUZZ_CHECK(limiter_.InFlightApprox() == 0);
    FUZZ_CHECK(limiter_.QueuedApprox() == 0);
    for (const Waiter& w : waiters_) {
      FUZZ_CHECK(w.calls == (w.fate == Fate::kCancelled ? 0 : 1));
    }
    // Timers of resolved waiters were cancelled (none fire into the limiter
    // later).
    FUZZ_CHECK(timers_.PendingCount() == 0);
  }

  ByteReader& in_;
  bulwark::FakeClock clock_{kStart};
  bulwark::FakeTimerQueue timers_;
  const Limiter::Options options_;
  std::vector<Waiter> waiters_;
  std::vector<size_t> expected_expiries_;
  absl::Time advance_from_;
  // Destroyed before the limiter (members die in reverse order).
  Limiter limiter_;
  std::vector<Limiter::Permit> held_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return -1;
  ByteReader in(data, size);
  switch (in.Byte() % 3) {
    case 0:
      FuzzTokenBucket(in);
      break;
    case 1:
      FuzzCircuitBreaker(in);
      break;
    default:
      LimiterCheck(in).Run();
      break;
  }
  return 0;
}
