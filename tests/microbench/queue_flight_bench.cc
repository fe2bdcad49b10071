// Per-call cost of the concurrency limiter and singleflight on their fast
// paths: the price every call pays when nobody waits and nothing coalesces.
// Threads(2) shares one policy object between two threads, as workers share a
// route's state.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "benchmark/benchmark.h"
#include "policies/clock.h"
#include "policies/concurrency_limiter.h"
#include "policies/singleflight.h"

namespace bulwark {
namespace {

// Uncontended in the sense that a slot is always free: Acquire grants at once,
// then the Permit's destructor releases. With 2 threads both hammer the same
// slot counter, so its cache line moves between the cores.
void BM_ConcurrencyLimiterAcquireRelease(benchmark::State& state) {
  static FakeClock* clock = new FakeClock();
  static FakeTimerQueue* timers = new FakeTimerQueue(*clock);
  static ConcurrencyLimiter* limiter =
      new ConcurrencyLimiter({.max_in_flight = 64,
                              .max_queued = 0,
                              .queue_timeout = absl::Milliseconds(50)},
                             RealClock::Get());
  for (auto _ : state) {
    ConcurrencyLimiter::AcquireResult result = limiter->Acquire(
        {.timers = *timers, .on_done = [](ConcurrencyLimiter::WaitResult) {}});
    benchmark::DoNotOptimize(result.status);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ConcurrencyLimiterAcquireRelease)->Threads(1)->Threads(2);

// The overload path: every slot held and the queue full, so each call is
// rejected (concurrency_limit), as happens to most calls of a saturated route.
void BM_ConcurrencyLimiterRejectWhenFull(benchmark::State& state) {
  static FakeClock* clock = new FakeClock();
  static FakeTimerQueue* timers = new FakeTimerQueue(*clock);
  static ConcurrencyLimiter* limiter = new ConcurrencyLimiter(
      {.max_in_flight = 1, .max_queued = 0, .queue_timeout = absl::Seconds(1)},
      *clock);
  static ConcurrencyLimiter::AcquireResult* held =
      new ConcurrencyLimiter::AcquireResult(
          limiter->Acquire({.timers = *timers,
                            .on_done = [](ConcurrencyLimiter::WaitResult) {}}));
  benchmark::DoNotOptimize(held);
  for (auto _ : state) {
    ConcurrencyLimiter::AcquireResult result = limiter->Acquire(
        {.timers = *timers, .on_done = [](ConcurrencyLimiter::WaitResult) {}});
    benchmark::DoNotOptimize(result.status);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ConcurrencyLimiterRejectWhenFull)->Threads(1)->Threads(2);

struct Response {
  std::string body;
};

// The leader path with a key no other call shares: Join opens a flight,
// Complete ends it (delivering to the leader's own subscriber), the Membership
// leaves as a no-op. The key is built the way the sidecar builds it, from a
// small message unique to the iteration.
void BM_SingleflightJoinCompleteUniqueKey(benchmark::State& state) {
  static Singleflight<Response>* flights = new Singleflight<Response>();
  const auto result = std::make_shared<const Response>(Response{"answer"});
  char message[16] = "order-";
  uint64_t n = static_cast<uint64_t>(state.thread_index()) << 48;
  const SingleflightKeyHeader headers[] = {
      {.name = "authorization", .value = "Bearer t"}};
  for (auto _ : state) {
    ++n;
    std::memcpy(message + 6, &n, sizeof(n));
    auto joined = flights->Join(
        EncodeSingleflightKey("/shop.v1.Orders/GetOrder",
                              absl::string_view(message, sizeof(message)),
                              headers),
        [](Singleflight<Response>::Outcome outcome) {
          benchmark::DoNotOptimize(outcome.result);
        },
        [](bool) {});
    benchmark::DoNotOptimize(joined.leadership.Complete(result));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SingleflightJoinCompleteUniqueKey)->Threads(1)->Threads(2);

}  // namespace
}  // namespace bulwark
