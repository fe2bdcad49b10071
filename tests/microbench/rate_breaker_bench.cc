// Per-call cost of the rate limiter and the circuit breaker: every call on a
// route with these policies pays it. Threads(2) shares one policy object
// between two threads, as workers share a route's state. Benchmarks taking
// `now` as an argument leave the clock out; the ...Clock ones include
// RealClock::Now (one vDSO clock_gettime).
#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "benchmark/benchmark.h"
#include "policies/circuit_breaker.h"
#include "policies/clock.h"
#include "policies/keyed_rate_limiter.h"
#include "policies/token_bucket.h"

namespace bulwark {
namespace {

// Each thread's own stream of instants, 1 µs apart. Threads are not in step
// with each other, which is what real workers look like to the bucket.
absl::Time StartTime(const benchmark::State& state) {
  return absl::FromUnixSeconds(1'700'000'000) +
         absl::Nanoseconds(state.thread_index());
}

// Refills a token every microsecond and is asked once per microsecond per
// thread: with one thread every call is admitted, with two about half are.
TokenBucketOptions BusyBucket() {
  return {.rate_per_second = 1'000'000, .burst = 100};
}

// The arithmetic alone, no lock: what the mutex adds is the difference.
void BM_TokenBucketLevelTryTake(benchmark::State& state) {
  const TokenBucketLimits limits(BusyBucket());
  absl::Time now = StartTime(state);
  TokenBucketLevel level(limits, now);
  for (auto _ : state) {
    now += absl::Microseconds(1);
    benchmark::DoNotOptimize(level.TryTake(limits, now));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_TokenBucketLevelTryTake);

void BM_TokenBucketTryTake(benchmark::State& state) {
  static TokenBucket* bucket = new TokenBucket(BusyBucket(), RealClock::Get());
  absl::Time now = StartTime(state);
  for (auto _ : state) {
    now += absl::Microseconds(1);
    benchmark::DoNotOptimize(bucket->TryTake(now));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_TokenBucketTryTake)->Threads(1)->Threads(2);

void BM_TokenBucketTryTakeClock(benchmark::State& state) {
  static TokenBucket* bucket = new TokenBucket(BusyBucket(), RealClock::Get());
  for (auto _ : state) {
    benchmark::DoNotOptimize(bucket->TryTake());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_TokenBucketTryTakeClock)->Threads(1)->Threads(2);

std::vector<std::string> ClientKeys(int count) {
  std::vector<std::string> keys;
  keys.reserve(count);
  for (int i = 0; i < count; ++i) keys.push_back("client-" + std::to_string(i));
  return keys;
}

// 10k clients cycling through a limiter with room for all of them: every call
// finds its key.
void BM_KeyedRateLimiterTryTake10kKeys(benchmark::State& state) {
  static KeyedRateLimiter* limiter = new KeyedRateLimiter(
      {.rate_per_second = 100, .burst = 200, .max_keys = 20'000},
      RealClock::Get());
  static const std::vector<std::string>* keys =
      new std::vector<std::string>(ClientKeys(10'000));
  absl::Time now = StartTime(state);
  size_t i = static_cast<size_t>(state.thread_index()) * 5'000;
  for (auto _ : state) {
    now += absl::Microseconds(1);
    if (++i == keys->size()) i = 0;
    benchmark::DoNotOptimize(limiter->TryTake((*keys)[i], now));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_KeyedRateLimiterTryTake10kKeys)->Threads(1)->Threads(2);

// Every call brings a key never seen: each one evicts the least recently used
// bucket.
void BM_KeyedRateLimiterTryTakeNewKeys(benchmark::State& state) {
  static KeyedRateLimiter* limiter = new KeyedRateLimiter(
      {.rate_per_second = 100, .burst = 200, .max_keys = 10'000},
      RealClock::Get());
  static const std::vector<std::string>* keys =
      new std::vector<std::string>(ClientKeys(1'000'000));
  absl::Time now = StartTime(state);
  size_t i = 0;
  for (auto _ : state) {
    now += absl::Microseconds(1);
    if (++i == keys->size()) i = 0;
    benchmark::DoNotOptimize(limiter->TryTake((*keys)[i], now));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_KeyedRateLimiterTryTakeNewKeys);

// The SPEC's default breaker, kept CLOSED by successes: the state every healthy
// route is in.
CircuitBreakerOptions DefaultBreaker() { return CircuitBreakerOptions{}; }

void BM_CircuitBreakerAcquire(benchmark::State& state) {
  static CircuitBreaker* breaker =
      new CircuitBreaker(DefaultBreaker(), RealClock::Get());
  absl::Time now = StartTime(state);
  for (auto _ : state) {
    now += absl::Microseconds(1);
    benchmark::DoNotOptimize(breaker->TryAcquire(now));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CircuitBreakerAcquire)->Threads(1)->Threads(2);

void BM_CircuitBreakerAcquireRecord(benchmark::State& state) {
  static CircuitBreaker* breaker =
      new CircuitBreaker(DefaultBreaker(), RealClock::Get(),
                         [](CircuitBreaker::State, CircuitBreaker::State) {});
  absl::Time now = StartTime(state);
  for (auto _ : state) {
    now += absl::Microseconds(1);
    const CircuitBreaker::Admission admission = breaker->TryAcquire(now);
    breaker->Record(admission.ticket, CircuitBreaker::Outcome::kSuccess, now);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CircuitBreakerAcquireRecord)->Threads(1)->Threads(2);

void BM_CircuitBreakerAcquireRecordClock(benchmark::State& state) {
  static CircuitBreaker* breaker =
      new CircuitBreaker(DefaultBreaker(), RealClock::Get());
  for (auto _ : state) {
    const CircuitBreaker::Admission admission = breaker->TryAcquire();
    breaker->Record(admission.ticket, CircuitBreaker::Outcome::kSuccess);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CircuitBreakerAcquireRecordClock)->Threads(1)->Threads(2);

// A breaker held OPEN: the rejection path every call takes during an outage.
void BM_CircuitBreakerRejectWhileOpen(benchmark::State& state) {
  static FakeClock* clock = new FakeClock();
  static CircuitBreaker* breaker = [] {
    auto* b = new CircuitBreaker(
        {.consecutive_failures = 1, .open_duration = absl::Hours(24 * 365)},
        *clock);
    b->Record(b->TryAcquire().ticket, CircuitBreaker::Outcome::kFailure);
    return b;
  }();
  const absl::Time now = clock->Now();
  for (auto _ : state) {
    benchmark::DoNotOptimize(breaker->TryAcquire(now));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CircuitBreakerRejectWhileOpen)->Threads(1)->Threads(2);

}  // namespace
}  // namespace bulwark
