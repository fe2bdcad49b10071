#include "policies/token_bucket.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <thread>
#include <vector>

#include "absl/base/config.h"
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

bool Admitted(const TakeResult& result) {
  return result.kind == TakeResult::kAdmitted;
}

TEST(TokenBucketTest, StartsFullAndRejectsAfterBurst) {
  FakeClock clock;
  TokenBucket bucket({.rate_per_second = 100, .burst = 200}, clock);

  EXPECT_EQ(bucket.TokensApprox(), 200.0);
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(Admitted(bucket.TryTake())) << "take " << i;
  }
  const TakeResult rejected = bucket.TryTake();
  EXPECT_EQ(rejected.kind, TakeResult::kRejected);
  EXPECT_EQ(rejected.retry_after, absl::Milliseconds(10));
}

TEST(TokenBucketTest, AdmittedTakeHasNoRetryAfter) {
  FakeClock clock;
  TokenBucket bucket({.rate_per_second = 1, .burst = 1}, clock);

  EXPECT_EQ(bucket.TryTake().retry_after, absl::ZeroDuration());
}

TEST(TokenBucketTest, RefillIsExactAfterOneHour) {
  FakeClock clock;
  TokenBucket bucket({.rate_per_second = 100, .burst = 200}, clock);
  for (int i = 0; i < 200; ++i) bucket.TryTake();
  ASSERT_EQ(bucket.TokensApprox(), 0.0);

  clock.AdvanceBy(absl::Hours(1));

  EXPECT_EQ(bucket.TokensApprox(), 200.0);
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(Admitted(bucket.TryTake())) << "take " << i;
  }
  EXPECT_FALSE(Admitted(bucket.TryTake()));
}

TEST(TokenBucketTest, FractionalRateRefillsOneTokenEveryTwoSeconds) {
  FakeClock clock;
  TokenBucket bucket({.rate_per_second = 0.5, .burst = 1}, clock);
  ASSERT_TRUE(Admitted(bucket.TryTake()));

  EXPECT_EQ(bucket.TryTake().retry_after, absl::Seconds(2));
  clock.AdvanceBy(absl::Milliseconds(1999));
  EXPECT_EQ(bucket.TryTake().retry_after, absl::Milliseconds(1));
  EXPECT_DOUBLE_EQ(bucket.TokensApprox(), 0.9995);
  clock.AdvanceBy(absl::Milliseconds(1));
  EXPECT_TRUE(Admitted(bucket.TryTake()));
  EXPECT_EQ(bucket.TryTake().retry_after, absl::Seconds(2));
}

TEST(TokenBucketTest, RetryAfterIsTimeToNextToken) {
  FakeClock clock;
  // A token every 333,333,333.3 ns: the wait is rounded up to the next
  // nanosecond.
  TokenBucket bucket({.rate_per_second = 3, .burst = 1}, clock);
  ASSERT_TRUE(Admitted(bucket.TryTake()));

  EXPECT_EQ(bucket.TryTake().retry_after, absl::Nanoseconds(333'333'334));
  clock.AdvanceBy(absl::Milliseconds(100));
  EXPECT_EQ(bucket.TryTake().retry_after, absl::Nanoseconds(233'333'334));
  clock.AdvanceBy(absl::Nanoseconds(233'333'333));
  EXPECT_EQ(bucket.TryTake().retry_after, absl::Nanoseconds(1));
  clock.AdvanceBy(absl::Nanoseconds(1));
  EXPECT_TRUE(Admitted(bucket.TryTake()));
}

TEST(TokenBucketTest, NoDriftOverMillionTakes) {
  // One attempt every millisecond at 333.3 tokens/s (a token every 3,000,300.03
  // ns): each step adds a third of a token, so once the initial burst is spent
  // the admitted count after the attempt at t must be exactly floor(2 + 333.3 *
  // t), at every step, for 3000 s.
  FakeClock clock;
  const absl::Time start = clock.Now();
  TokenBucket bucket({.rate_per_second = 333.3, .burst = 2}, clock);

  int64_t admitted = 0;
  int64_t mismatches = 0;
  constexpr int64_t kSteps = 3'000'000;
  for (int64_t step = 0; step < kSteps; ++step) {
    if (Admitted(bucket.TryTake(start + absl::Milliseconds(step)))) ++admitted;
    // floor(2 + 333.3 * step / 1000) in integers.
    const int64_t expected = step == 0 ? 1 : 2 + (3333 * step) / 10000;
    if (admitted != expected) ++mismatches;
  }

  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(admitted, 999'901);
}

TEST(TokenBucketTest, StaleNowRefillsNothingAndMeasuresRetryFromLatest) {
  FakeClock clock;
  const absl::Time t0 = clock.Now();
  TokenBucket bucket({.rate_per_second = 1, .burst = 1}, clock);
  ASSERT_TRUE(Admitted(bucket.TryTake(t0 + absl::Seconds(5))));

  // A thread that read the clock earlier and locked later: the bucket has not
  // gone back.
  const TakeResult late = bucket.TryTake(t0 + absl::Seconds(4));

  EXPECT_EQ(late.kind, TakeResult::kRejected);
  EXPECT_EQ(late.retry_after, absl::Seconds(2));
  EXPECT_TRUE(Admitted(bucket.TryTake(t0 + absl::Seconds(6))));
}

TEST(TokenBucketTest, ZeroRateNeverRefills) {
  FakeClock clock;
  TokenBucket bucket({.rate_per_second = 0, .burst = 1}, clock);
  ASSERT_TRUE(Admitted(bucket.TryTake()));

  clock.AdvanceBy(absl::Hours(24));
  const TakeResult result = bucket.TryTake();

  EXPECT_EQ(result.kind, TakeResult::kRejected);
  EXPECT_EQ(result.retry_after, absl::InfiniteDuration());
}

TEST(TokenBucketTest, ZeroBurstAdmitsNothing) {
  FakeClock clock;
  TokenBucket bucket({.rate_per_second = 100, .burst = 0}, clock);

  clock.AdvanceBy(absl::Seconds(10));
  const TakeResult result = bucket.TryTake();

  EXPECT_EQ(result.kind, TakeResult::kRejected);
  EXPECT_EQ(result.retry_after, absl::InfiniteDuration());
}

TEST(TokenBucketTest, LevelIsAPureFunctionOfNow) {
  const TokenBucketLimits limits({.rate_per_second = 10, .burst = 5});
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  TokenBucketLevel level(limits, t0);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Admitted(level.TryTake(limits, t0)));

  // Two copies fed the same instants answer the same, whatever happened in
  // between.
  TokenBucketLevel copy = level;
  EXPECT_EQ(level.TryTake(limits, t0 + absl::Milliseconds(250)).kind,
            TakeResult::kAdmitted);
  EXPECT_EQ(copy.TryTake(limits, t0 + absl::Milliseconds(250)).kind,
            TakeResult::kAdmitted);
  EXPECT_EQ(level.TokensAt(limits, t0 + absl::Milliseconds(250)), 1.5);
  EXPECT_EQ(copy.TokensAt(limits, t0 + absl::Milliseconds(250)), 1.5);
}

TEST(TokenBucketTest, ConcurrentTakesAdmitExactlyTheTokensThereAre) {
  FakeClock clock;
  TokenBucket bucket({.rate_per_second = 1, .burst = 10'000}, clock);
  std::atomic<int64_t> admitted{0};

  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5'000; ++i) {
        if (Admitted(bucket.TryTake())) admitted.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  EXPECT_EQ(admitted.load(), 10'000);
}

TEST(TokenBucketTest, TakeDoesNotAllocate) {
  if (!kCountsAllocations) GTEST_SKIP() << "no allocation counting under TSan";
  FakeClock clock;
  const absl::Time now = clock.Now();
  TokenBucket bucket({.rate_per_second = 1000, .burst = 10}, clock);

  const int64_t before = g_allocations.load();
  for (int i = 0; i < 1000; ++i) bucket.TryTake(now + absl::Microseconds(i));
  bucket.TokensApprox();

  EXPECT_EQ(g_allocations.load() - before, 0);
}

}  // namespace
}  // namespace bulwark
