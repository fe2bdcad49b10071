#include "policies/circuit_breaker.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <ostream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/config.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policies/clock.h"

// Counts every allocation in this test binary, so a test can assert that a hot
// path makes none. Not under ThreadSanitizer: its runtime, linked statically,
// defines operator new and delete itself, so the allocation tests skip there
// (every other build runs them).
namespace {
std::atomic<int64_t> g_allocations{0};
#ifdef ABSL_HAVE_THREAD_SANITIZER
constexpr bool kCountsAllocations = false;
#else
constexpr bool kCountsAllocations = true;
#endif
}  // namespace

#ifndef ABSL_HAVE_THREAD_SANITIZER
[[gnu::noinline]] void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
#endif  // ABSL_HAVE_THREAD_SANITIZER

namespace bulwark {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;
using State = CircuitBreaker::State;
using Outcome = CircuitBreaker::Outcome;
using Admission = CircuitBreaker::Admission;

// Only consecutive failures trip, after 3, unless a test says otherwise.
CircuitBreakerOptions ConsecutiveOnly() {
  return {.consecutive_failures = 3,
          .failure_rate = 0,
          .minimum_requests = 1,
          .window = absl::Seconds(10),
          .open_duration = absl::Seconds(30),
          .half_open_requests = 3,
          .slow_call_duration = absl::ZeroDuration(),
          .slow_call_rate = 0};
}

// Never trips: for tests about counting.
CircuitBreakerOptions NeverTrips() {
  CircuitBreakerOptions options = ConsecutiveOnly();
  options.consecutive_failures = 0;
  return options;
}

// Acquires (which must be admitted) and records `outcome` at the clock's now.
void Call(CircuitBreaker& breaker, Outcome outcome) {
  const Admission admission = breaker.TryAcquire();
  ASSERT_EQ(admission.kind, Admission::kAdmitted);
  breaker.Record(admission.ticket, outcome);
}

void Trip(CircuitBreaker& breaker) {
  for (int i = 0; i < 3; ++i) Call(breaker, Outcome::kFailure);
  ASSERT_EQ(breaker.SnapshotApprox().state, State::kOpen);
}

TEST(CircuitBreakerTest, StartsClosedAndAdmits) {
  FakeClock clock;
  CircuitBreaker breaker(ConsecutiveOnly(), clock);

  const Admission admission = breaker.TryAcquire();

  EXPECT_EQ(admission.kind, Admission::kAdmitted);
  EXPECT_EQ(admission.ticket.start, clock.Now());
  EXPECT_EQ(breaker.SnapshotApprox().state, State::kClosed);
}

TEST(CircuitBreakerTest, OpensAfterConsecutiveFailures) {
  FakeClock clock;
  CircuitBreaker breaker(ConsecutiveOnly(), clock);

  Call(breaker, Outcome::kFailure);
  Call(breaker, Outcome::kFailure);
  Call(breaker, Outcome::kSuccess);  // breaks the run
  Call(breaker, Outcome::kFailure);
  Call(breaker, Outcome::kFailure);
  EXPECT_EQ(breaker.SnapshotApprox().state, State::kClosed);
  EXPECT_EQ(breaker.SnapshotApprox().consecutive_failures, 2);

  Call(breaker, Outcome::kFailure);

  EXPECT_EQ(breaker.SnapshotApprox().state, State::kOpen);
  EXPECT_EQ(breaker.TryAcquire().kind, Admission::kRejected);
}

TEST(CircuitBreakerTest, OpensOnFailureRateOnlyAfterMinimumRequests) {
  FakeClock clock;
  CircuitBreakerOptions options = NeverTrips();
  options.failure_rate = 0.5;
  options.minimum_requests = 10;
  CircuitBreaker breaker(options, clock);

  // 5 failures in 9 calls: over the rate, but too few calls to judge.
  for (int i = 0; i < 9; ++i) {
    Call(breaker, i % 2 == 0 ? Outcome::kFailure : Outcome::kSuccess);
  }
  EXPECT_EQ(breaker.SnapshotApprox().state, State::kClosed);
  EXPECT_EQ(breaker.SnapshotApprox().window_failures, 5);

  Call(breaker, Outcome::kSuccess);  // 5 / 10 reaches 0.5

  EXPECT_EQ(breaker.SnapshotApprox().state, State::kOpen);
}

TEST(CircuitBreakerTest, FailureRateIsComparedExactly) {
  FakeClock clock;
  CircuitBreakerOptions options = NeverTrips();
  options.failure_rate = 0.1;
  options.minimum_requests = 30;
  CircuitBreaker breaker(options, clock);

  for (int i = 0; i < 28; ++i) Call(breaker, Outcome::kSuccess);
  Call(breaker, Outcome::kFailure);
  Call(breaker, Outcome::kFailure);
  EXPECT_EQ(breaker.SnapshotApprox().state, State::kClosed);  // 2 / 30 < 0.1

  // 3 / 30 is exactly 0.1, although 0.1 * 30 > 3 in floating point.
  CircuitBreaker exact(options, clock);
  for (int i = 0; i < 27; ++i) Call(exact, Outcome::kSuccess);
  for (int i = 0; i < 3; ++i) Call(exact, Outcome::kFailure);
  EXPECT_EQ(exact.SnapshotApprox().state, State::kOpen);
}

TEST(CircuitBreakerTest, WindowRollsOverOldFailures) {
  FakeClock clock;
  CircuitBreakerOptions options = NeverTrips();
  options.failure_rate = 0.5;
  options.minimum_requests = 4;
  options.window = absl::Seconds(10);
  CircuitBreaker breaker(options, clock);

  for (int i = 0; i < 3; ++i) Call(breaker, Outcome::kFailure);
  EXPECT_EQ(breaker.SnapshotApprox().window_failures, 3);

  clock.AdvanceBy(absl::Seconds(11));
  EXPECT_EQ(breaker.SnapshotApprox().window_requests, 0);
  // Counting the old failures this would be 4 / 7; within the window it is 1
  // / 4.
  Call(breaker, Outcome::kFailure);
  for (int i = 0; i < 3; ++i) Call(breaker, Outcome::kSuccess);

  const CircuitBreaker::Snapshot snapshot = breaker.SnapshotApprox();
  EXPECT_EQ(snapshot.state, State::kClosed);
  EXPECT_EQ(snapshot.window_requests, 4);
  EXPECT_EQ(snapshot.window_failures, 1);
}

TEST(CircuitBreakerTest, WindowForgetsBucketByBucket) {
  FakeClock clock;
  CircuitBreakerOptions options = NeverTrips();
  options.window = absl::Seconds(10);  // buckets of 1 s
  CircuitBreaker breaker(options, clock);

  Call(breaker, Outcome::kFailure);
  clock.AdvanceBy(absl::Seconds(5));
  Call(breaker, Outcome::kSuccess);
  clock.AdvanceBy(absl::Seconds(5));
  EXPECT_EQ(breaker.SnapshotApprox().window_requests,
            1);  // the first bucket left

  Call(breaker, Outcome::kSuccess);
  EXPECT_EQ(breaker.SnapshotApprox().window_requests, 2);
  EXPECT_EQ(breaker.SnapshotApprox().window_failures, 0);
}

TEST(CircuitBreakerTest, OpenRejectsWithTimeLeftUntilHalfOpen) {
  FakeClock clock;
  CircuitBreaker breaker(ConsecutiveOnly(), clock);
  Trip(breaker);

  clock.AdvanceBy(absl::Seconds(10));
  const Admission admission = breaker.TryAcquire();

  EXPECT_EQ(admission.kind, Admission::kRejected);
  EXPECT_EQ(admission.retry_after, absl::Seconds(20));
  EXPECT_EQ(breaker.SnapshotApprox().time_until_half_open, absl::Seconds(20));
  clock.AdvanceBy(absl::Seconds(20) - absl::Nanoseconds(1));
  EXPECT_EQ(breaker.TryAcquire().retry_after, absl::Nanoseconds(1));
}

TEST(CircuitBreakerTest, HalfOpenAdmitsAtMostNProbes) {
  FakeClock clock;
  CircuitBreaker breaker(ConsecutiveOnly(), clock);
  Trip(breaker);
  clock.AdvanceBy(absl::Seconds(30));

  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(breaker.TryAcquire().kind, Admission::kAdmitted) << "probe " << i;
  }
  const Admission fourth = breaker.TryAcquire();

  EXPECT_EQ(fourth.kind, Admission::kRejected);
  EXPECT_EQ(fourth.retry_after, absl::Seconds(1));
  EXPECT_EQ(breaker.SnapshotApprox().state, State::kHalfOpen);
  EXPECT_EQ(breaker.SnapshotApprox().half_open_probes_in_flight, 3);
}

TEST(CircuitBreakerTest, BusyProbeRetryAfterIsCappedByOpenDuration) {
  FakeClock clock;
  CircuitBreakerOptions options = ConsecutiveOnly();
  options.open_duration = absl::Milliseconds(200);
  options.half_open_requests = 1;
  CircuitBreaker breaker(options, clock);
  Trip(breaker);
  clock.AdvanceBy(absl::Milliseconds(200));
  ASSERT_EQ(breaker.TryAcquire().kind, Admission::kAdmitted);

  EXPECT_EQ(breaker.TryAcquire().retry_after, absl::Milliseconds(200));
}

TEST(CircuitBreakerTest, AllProbesSucceedCloses) {
  FakeClock clock;
  CircuitBreaker breaker(ConsecutiveOnly(), clock);
  Trip(breaker);
  clock.AdvanceBy(absl::Seconds(30));
  std::vector<Admission> probes;
  probes.reserve(3);
  for (int i = 0; i < 3; ++i) probes.push_back(breaker.TryAcquire());

  breaker.Record(probes[0].ticket, Outcome::kSuccess);
  breaker.Record(probes[1].ticket, Outcome::kSuccess);
  EXPECT_EQ(breaker.SnapshotApprox().state, State::kHalfOpen);
  breaker.Record(probes[2].ticket, Outcome::kSuccess);

  const CircuitBreaker::Snapshot snapshot = breaker.SnapshotApprox();
  EXPECT_EQ(snapshot.state, State::kClosed);
  EXPECT_EQ(snapshot.consecutive_failures, 0);
  EXPECT_EQ(snapshot.window_requests, 0);  // a fresh window
  // The old run of failures is forgotten: it takes three new ones to open
  // again.
  Call(breaker, Outcome::kFailure);
  Call(breaker, Outcome::kFailure);
  EXPECT_EQ(breaker.SnapshotApprox().state, State::kClosed);
}

TEST(CircuitBreakerTest, AnyProbeFailureReopens) {
  FakeClock clock;
  CircuitBreaker breaker(ConsecutiveOnly(), clock);
  Trip(breaker);
  clock.AdvanceBy(absl::Seconds(30));
  const Admission first = breaker.TryAcquire();
  const Admission second = breaker.TryAcquire();

  breaker.Record(first.ticket, Outcome::kSuccess);
  breaker.Record(second.ticket, Outcome::kFailure);

  EXPECT_EQ(breaker.SnapshotApprox().state, State::kOpen);
  const Admission after = breaker.TryAcquire();
  EXPECT_EQ(after.kind, Admission::kRejected);
  EXPECT_EQ(after.retry_after, absl::Seconds(30));
}

TEST(CircuitBreakerTest, StaleGenerationOutcomeIsIgnored) {
  FakeClock clock;
  CircuitBreaker breaker(ConsecutiveOnly(), clock);
  // Admitted while CLOSED, finishing long after the breaker moved on.
  const Admission slow_success = breaker.TryAcquire();
  const Admission slow_failure = breaker.TryAcquire();
  Trip(breaker);
  clock.AdvanceBy(absl::Seconds(30));
  const Admission probe = breaker.TryAcquire();
  ASSERT_EQ(breaker.SnapshotApprox().state, State::kHalfOpen);

  breaker.Record(slow_failure.ticket, Outcome::kFailure);
  EXPECT_EQ(breaker.SnapshotApprox().state, State::kHalfOpen);  // no reopen
  breaker.Record(slow_success.ticket, Outcome::kSuccess);
  breaker.Record(slow_success.ticket, Outcome::kSuccess);
  breaker.Record(slow_success.ticket, Outcome::kSuccess);
  EXPECT_EQ(breaker.SnapshotApprox().state,
            State::kHalfOpen);  // not probe successes
  EXPECT_EQ(breaker.SnapshotApprox().half_open_probes_in_flight, 1);

  breaker.Record(probe.ticket, Outcome::kFailure);
  EXPECT_EQ(breaker.SnapshotApprox().state, State::kOpen);
}

TEST(CircuitBreakerTest, DefaultTicketIsIgnored) {
  FakeClock clock;
  CircuitBreaker breaker(ConsecutiveOnly(), clock);

  for (int i = 0; i < 5; ++i) {
    breaker.Record(CircuitBreaker::Ticket{}, Outcome::kFailure);
  }

  EXPECT_EQ(breaker.SnapshotApprox().state, State::kClosed);
  EXPECT_EQ(breaker.SnapshotApprox().window_requests, 0);
}

TEST(CircuitBreakerTest, CancelledCallIsNeitherSuccessNorFailure) {
  FakeClock clock;
  CircuitBreaker breaker(ConsecutiveOnly(), clock);

  // Does not break a run of failures, and is not counted in the window.
  Call(breaker, Outcome::kFailure);
  Call(breaker, Outcome::kFailure);
  Call(breaker, Outcome::kIgnored);
  EXPECT_EQ(breaker.SnapshotApprox().window_requests, 2);
  EXPECT_EQ(breaker.SnapshotApprox().consecutive_failures, 2);
  Call(breaker, Outcome::kFailure);
  ASSERT_EQ(breaker.SnapshotApprox().state, State::kOpen);

  // In HALF_OPEN it frees the probe slot without counting as a passed probe.
  clock.AdvanceBy(absl::Seconds(30));
  std::vector<Admission> probes;
  probes.reserve(3);
  for (int i = 0; i < 3; ++i) probes.push_back(breaker.TryAcquire());
  ASSERT_EQ(breaker.TryAcquire().kind, Admission::kRejected);
  breaker.Record(probes[0].ticket, Outcome::kIgnored);
  const Admission replacement = breaker.TryAcquire();
  EXPECT_EQ(replacement.kind, Admission::kAdmitted);
  breaker.Record(probes[1].ticket, Outcome::kSuccess);
  breaker.Record(probes[2].ticket, Outcome::kSuccess);
  EXPECT_EQ(breaker.SnapshotApprox().state, State::kHalfOpen);
  breaker.Record(replacement.ticket, Outcome::kSuccess);
  EXPECT_EQ(breaker.SnapshotApprox().state, State::kClosed);
}

TEST(CircuitBreakerTest, SlowCallsOpenTheBreaker) {
  FakeClock clock;
  CircuitBreakerOptions options = NeverTrips();
  options.minimum_requests = 4;
  options.slow_call_duration = absl::Seconds(1);
  options.slow_call_rate = 0.5;
  CircuitBreaker breaker(options, clock);

  Call(breaker, Outcome::kSuccess);
  Call(breaker, Outcome::kSuccess);
  for (int i = 0; i < 2; ++i) {
    const Admission admission = breaker.TryAcquire();
    clock.AdvanceBy(absl::Milliseconds(1001));  // slower than 1 s
    breaker.Record(admission.ticket, Outcome::kSuccess);
  }

  const CircuitBreaker::Snapshot snapshot = breaker.SnapshotApprox();
  EXPECT_EQ(snapshot.state, State::kOpen);
  EXPECT_EQ(snapshot.window_slow_calls, 2);
  EXPECT_EQ(snapshot.window_failures, 0);
}

TEST(CircuitBreakerTest, CallOfExactlySlowCallDurationIsNotSlow) {
  FakeClock clock;
  CircuitBreakerOptions options = NeverTrips();
  options.minimum_requests = 1;
  options.slow_call_duration = absl::Seconds(1);
  options.slow_call_rate = 1.0;
  CircuitBreaker breaker(options, clock);

  const Admission admission = breaker.TryAcquire();
  clock.AdvanceBy(absl::Seconds(1));
  breaker.Record(admission.ticket, Outcome::kSuccess);

  EXPECT_EQ(breaker.SnapshotApprox().state, State::kClosed);
  EXPECT_EQ(breaker.SnapshotApprox().window_slow_calls, 0);
}

TEST(CircuitBreakerTest, SlowProbeReopens) {
  FakeClock clock;
  CircuitBreakerOptions options = ConsecutiveOnly();
  options.slow_call_duration = absl::Seconds(1);
  options.slow_call_rate = 1.0;
  options.minimum_requests = 100;  // the rate never judges here
  CircuitBreaker breaker(options, clock);
  Trip(breaker);
  clock.AdvanceBy(absl::Seconds(30));

  const Admission probe = breaker.TryAcquire();
  clock.AdvanceBy(absl::Seconds(2));
  breaker.Record(probe.ticket, Outcome::kSuccess);

  EXPECT_EQ(breaker.SnapshotApprox().state, State::kOpen);
}

TEST(CircuitBreakerTest, TransitionCallbackSeesEveryChange) {
  FakeClock clock;
  std::vector<std::pair<State, State>> transitions;
  CircuitBreakerOptions options = ConsecutiveOnly();
  options.half_open_requests = 1;
  CircuitBreaker breaker(options, clock, [&](State from, State to) {
    transitions.emplace_back(from, to);
  });

  Trip(breaker);
  clock.AdvanceBy(absl::Seconds(30));
  Call(breaker, Outcome::kFailure);  // probe fails
  clock.AdvanceBy(absl::Seconds(30));
  Call(breaker, Outcome::kSuccess);  // probe passes

  EXPECT_THAT(transitions, ElementsAre(Pair(State::kClosed, State::kOpen),
                                       Pair(State::kOpen, State::kHalfOpen),
                                       Pair(State::kHalfOpen, State::kOpen),
                                       Pair(State::kOpen, State::kHalfOpen),
                                       Pair(State::kHalfOpen, State::kClosed)));
}

TEST(CircuitBreakerTest, TransitionCallbackMayCallTheBreaker) {
  FakeClock clock;
  CircuitBreaker* self = nullptr;
  std::vector<State> seen;
  CircuitBreaker breaker(ConsecutiveOnly(), clock, [&](State, State) {
    seen.push_back(self->SnapshotApprox().state);  // no lock held: no deadlock
  });
  self = &breaker;

  Trip(breaker);

  EXPECT_THAT(seen, ElementsAre(State::kOpen));
}

TEST(CircuitBreakerTest, StateNamesAreTheMetricLabels) {
  EXPECT_EQ(CircuitBreaker::StateName(State::kClosed), "closed");
  EXPECT_EQ(CircuitBreaker::StateName(State::kOpen), "open");
  EXPECT_EQ(CircuitBreaker::StateName(State::kHalfOpen), "half_open");
}

TEST(CircuitBreakerTest,
     ConcurrentAcquireAndRecordFromManyThreadsKeepExactCounts) {
  FakeClock clock;  // time stands still: nothing leaves the window
  CircuitBreaker breaker(NeverTrips(), clock);
  constexpr int kThreads = 4;
  constexpr int kCallsPerThread = 20'000;

  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        const Admission admission = breaker.TryAcquire();
        const Outcome outcome = i % 4 == 0   ? Outcome::kFailure
                                : i % 4 == 1 ? Outcome::kIgnored
                                             : Outcome::kSuccess;
        breaker.Record(admission.ticket, outcome);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  const CircuitBreaker::Snapshot snapshot = breaker.SnapshotApprox();
  EXPECT_EQ(snapshot.state, State::kClosed);
  EXPECT_EQ(snapshot.window_requests, kThreads * kCallsPerThread * 3 / 4);
  EXPECT_EQ(snapshot.window_failures, kThreads * kCallsPerThread / 4);
}

TEST(CircuitBreakerTest, ConcurrentProbesNeverExceedHalfOpenRequests) {
  FakeClock clock;
  CircuitBreakerOptions options = ConsecutiveOnly();
  options.half_open_requests = 5;
  CircuitBreaker breaker(options, clock);
  Trip(breaker);
  clock.AdvanceBy(absl::Seconds(30));
  std::atomic<int> admitted{0};

  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1'000; ++i) {
        if (breaker.TryAcquire().kind == Admission::kAdmitted)
          admitted.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  EXPECT_EQ(admitted.load(), 5);
  EXPECT_EQ(breaker.SnapshotApprox().half_open_probes_in_flight, 5);
}

TEST(CircuitBreakerTest, ConcurrentTransitionsAreDeliveredInOrder) {
  FakeClock clock;
  CircuitBreakerOptions options = ConsecutiveOnly();
  options.consecutive_failures = 1;
  options.open_duration =
      absl::ZeroDuration();  // OPEN half-opens on the next call
  options.half_open_requests = 1;
  absl::Mutex mu;
  State last = State::kClosed;
  int64_t delivered = 0;
  int64_t out_of_order = 0;
  CircuitBreaker breaker(options, clock, [&](State from, State to) {
    absl::MutexLock lock(&mu);  // only to publish to the test thread
    if (from != last) ++out_of_order;
    last = to;
    ++delivered;
  });

  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20'000; ++i) {
        const Admission admission = breaker.TryAcquire();
        if (admission.kind != Admission::kAdmitted) continue;
        breaker.Record(admission.ticket, (i + t) % 3 == 0 ? Outcome::kFailure
                                                          : Outcome::kSuccess);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  absl::MutexLock lock(&mu);
  EXPECT_GT(delivered, 0);
  EXPECT_EQ(out_of_order, 0);
  EXPECT_EQ(last, breaker.SnapshotApprox().state);
}

TEST(CircuitBreakerTest, AcquireAndRecordDoNotAllocate) {
  if (!kCountsAllocations) GTEST_SKIP() << "no allocation counting under TSan";
  FakeClock clock;
  CircuitBreaker breaker(ConsecutiveOnly(), clock, [](State, State) {});
  const absl::Time now = clock.Now();

  const int64_t before = g_allocations.load();
  for (int i = 0; i < 1'000; ++i) {
    const absl::Time at = now + absl::Milliseconds(i * 100);
    const Admission admission = breaker.TryAcquire(at);
    if (admission.kind == Admission::kAdmitted) {
      breaker.Record(admission.ticket,
                     i % 2 == 0 ? Outcome::kFailure : Outcome::kSuccess, at);
    }
  }
  breaker.SnapshotApprox();

  EXPECT_EQ(g_allocations.load() - before, 0);
}

// ---- The transition function, table-tested on CircuitBreakerStateMachine ----

enum class Event {
  kAcquire,
  kCallFails,  // a call admitted now fails now
  kProbeSuccess,
  kProbeFailure,
  kProbeIgnored,
  kStaleFailure,  // the call admitted before the start state was entered fails
};

struct TransitionCase {
  const char* name;
  State start;
  Event event;
  absl::Duration at;  // after the start state was entered
  State expected;
  CircuitBreakerAdmission::Kind expected_admission;  // for kAcquire only
};

// A machine in `state` at time `t0`, plus a probe ticket (in HALF_OPEN) and a
// ticket from an older generation. Opens after one failure, stays open 30 s,
// one probe.
struct Machine {
  static constexpr absl::Duration kOpenDuration = absl::Seconds(30);

  Machine(State state, absl::Time t0)
      : machine({.consecutive_failures = 1,
                 .failure_rate = 0,
                 .minimum_requests = 1,
                 .window = absl::Seconds(10),
                 .open_duration = kOpenDuration,
                 .half_open_requests = 1,
                 .slow_call_duration = absl::ZeroDuration(),
                 .slow_call_rate = 0}) {
    const absl::Time opened =
        t0 - (state == State::kOpen ? absl::ZeroDuration() : kOpenDuration);
    stale = machine.TryAcquire(opened).ticket;
    if (state == State::kClosed) return;
    machine.Record(machine.TryAcquire(opened).ticket, Outcome::kFailure,
                   opened);
    if (state == State::kOpen) return;
    probe = machine.TryAcquire(t0).ticket;
  }

  CircuitBreakerStateMachine machine;
  CircuitBreakerTicket stale;
  CircuitBreakerTicket probe;
};

void PrintTo(const TransitionCase& c, std::ostream* os) { *os << c.name; }

class TransitionTableTest : public ::testing::TestWithParam<TransitionCase> {};

TEST_P(TransitionTableTest, NextStateDependsOnlyOnStateEventAndNow) {
  const TransitionCase& c = GetParam();
  const absl::Time t0 = absl::FromUnixSeconds(1'700'000'000);
  Machine m(c.start, t0);
  ASSERT_EQ(m.machine.state(), c.start);
  const absl::Time now = t0 + c.at;

  switch (c.event) {
    case Event::kAcquire:
      EXPECT_EQ(m.machine.TryAcquire(now).kind, c.expected_admission);
      break;
    case Event::kCallFails:
      m.machine.Record(m.machine.TryAcquire(now).ticket, Outcome::kFailure,
                       now);
      break;
    case Event::kProbeSuccess:
      m.machine.Record(m.probe, Outcome::kSuccess, now);
      break;
    case Event::kProbeFailure:
      m.machine.Record(m.probe, Outcome::kFailure, now);
      break;
    case Event::kProbeIgnored:
      m.machine.Record(m.probe, Outcome::kIgnored, now);
      break;
    case Event::kStaleFailure:
      m.machine.Record(m.stale, Outcome::kFailure, now);
      break;
  }

  EXPECT_EQ(m.machine.state(), c.expected);
}

constexpr auto kAdmitted = CircuitBreakerAdmission::kAdmitted;
constexpr auto kRejected = CircuitBreakerAdmission::kRejected;

INSTANTIATE_TEST_SUITE_P(
    Rules, TransitionTableTest,
    ::testing::Values(
        TransitionCase{"ClosedAdmits", State::kClosed, Event::kAcquire,
                       absl::ZeroDuration(), State::kClosed, kAdmitted},
        TransitionCase{"OpenRejectsBeforeOpenDuration", State::kOpen,
                       Event::kAcquire, absl::Seconds(29), State::kOpen,
                       kRejected},
        TransitionCase{"OpenHalfOpensAtOpenDuration", State::kOpen,
                       Event::kAcquire, absl::Seconds(30), State::kHalfOpen,
                       kAdmitted},
        TransitionCase{"OpenIgnoresStaleFailure", State::kOpen,
                       Event::kStaleFailure, absl::Seconds(1), State::kOpen,
                       kAdmitted},
        TransitionCase{"HalfOpenRejectsBeyondProbes", State::kHalfOpen,
                       Event::kAcquire, absl::ZeroDuration(), State::kHalfOpen,
                       kRejected},
        TransitionCase{"ProbeSuccessCloses", State::kHalfOpen,
                       Event::kProbeSuccess, absl::Seconds(1), State::kClosed,
                       kAdmitted},
        TransitionCase{"ProbeFailureReopens", State::kHalfOpen,
                       Event::kProbeFailure, absl::Seconds(1), State::kOpen,
                       kAdmitted},
        TransitionCase{"IgnoredProbeStaysHalfOpen", State::kHalfOpen,
                       Event::kProbeIgnored, absl::Seconds(1), State::kHalfOpen,
                       kAdmitted},
        TransitionCase{"HalfOpenIgnoresStaleFailure", State::kHalfOpen,
                       Event::kStaleFailure, absl::Seconds(1), State::kHalfOpen,
                       kAdmitted},
        TransitionCase{"ClosedFailureOpens", State::kClosed, Event::kCallFails,
                       absl::Seconds(1), State::kOpen, kAdmitted}),
    [](const ::testing::TestParamInfo<TransitionCase>& info) {
      return std::string(info.param.name);
    });

}  // namespace
}  // namespace bulwark
