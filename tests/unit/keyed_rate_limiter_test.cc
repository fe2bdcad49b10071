#include "policies/keyed_rate_limiter.h"

#include <openssl/evp.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/config.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policies/clock.h"

// Counts every allocation (and its bytes) in this test binary, so a test can
// assert that a hot path makes none, or what a limiter takes. Not under
// ThreadSanitizer: its runtime, linked statically, defines operator new and
// delete itself, so the allocation tests skip there (every other build runs
// them).
namespace {
std::atomic<int64_t> g_allocations{0};
std::atomic<int64_t> g_allocated_bytes{0};
#ifdef ABSL_HAVE_THREAD_SANITIZER
constexpr bool kCountsAllocations = false;
#else
constexpr bool kCountsAllocations = true;
#endif
}  // namespace

#ifndef ABSL_HAVE_THREAD_SANITIZER
[[gnu::noinline]] void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  g_allocated_bytes.fetch_add(static_cast<int64_t>(size),
                              std::memory_order_relaxed);
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

TEST(KeyedRateLimiterTest, KeyedBucketsAreIndependent) {
  FakeClock clock;
  KeyedRateLimiter limiter({.rate_per_second = 1, .burst = 2, .max_keys = 100},
                           clock);

  EXPECT_TRUE(Admitted(limiter.TryTake("alice")));
  EXPECT_TRUE(Admitted(limiter.TryTake("alice")));
  const TakeResult alice = limiter.TryTake("alice");
  EXPECT_EQ(alice.kind, TakeResult::kRejected);
  EXPECT_EQ(alice.retry_after, absl::Seconds(1));

  EXPECT_TRUE(Admitted(limiter.TryTake("bob")));
  EXPECT_TRUE(Admitted(limiter.TryTake("bob")));
  EXPECT_EQ(limiter.KeyCount(), 2u);
}

TEST(KeyedRateLimiterTest, KeyedBucketRefillsAtTheConfiguredRate) {
  FakeClock clock;
  KeyedRateLimiter limiter({.rate_per_second = 0.5, .burst = 1, .max_keys = 10},
                           clock);
  ASSERT_TRUE(Admitted(limiter.TryTake("alice")));

  clock.AdvanceBy(absl::Milliseconds(1500));
  EXPECT_EQ(limiter.TryTake("alice").retry_after, absl::Milliseconds(500));
  clock.AdvanceBy(absl::Milliseconds(500));
  EXPECT_TRUE(Admitted(limiter.TryTake("alice")));
}

TEST(KeyedRateLimiterTest, CallsWithoutKeyShareOneBucket) {
  FakeClock clock;
  KeyedRateLimiter limiter({.rate_per_second = 1, .burst = 2, .max_keys = 100},
                           clock);

  EXPECT_TRUE(Admitted(limiter.TryTake("")));
  EXPECT_TRUE(Admitted(limiter.TryTakeShared()));
  EXPECT_FALSE(Admitted(limiter.TryTake("")));
  EXPECT_FALSE(Admitted(limiter.TryTakeShared()));
  EXPECT_EQ(limiter.SharedTokensApprox(), 0.0);

  // The shared bucket is not a key, and keyed callers do not draw from it.
  EXPECT_EQ(limiter.KeyCount(), 0u);
  EXPECT_TRUE(Admitted(limiter.TryTake("alice")));
}

TEST(KeyedRateLimiterTest, LeastRecentlyUsedKeyIsEvicted) {
  FakeClock clock;
  // A bucket never refills here, so an admitted call proves the key was
  // forgotten.
  KeyedRateLimiter limiter({.rate_per_second = 0, .burst = 1, .max_keys = 3},
                           clock);
  ASSERT_EQ(limiter.MaxKeys(), 3u);
  ASSERT_TRUE(Admitted(limiter.TryTake("a")));
  ASSERT_TRUE(Admitted(limiter.TryTake("b")));
  ASSERT_TRUE(Admitted(limiter.TryTake("c")));
  // Using "a" again (even rejected) makes "b" the least recently used.
  ASSERT_FALSE(Admitted(limiter.TryTake("a")));

  ASSERT_TRUE(Admitted(limiter.TryTake("d")));

  EXPECT_EQ(limiter.KeyCount(), 3u);
  EXPECT_FALSE(Admitted(limiter.TryTake("a")));  // remembered, still empty
  EXPECT_FALSE(Admitted(limiter.TryTake("d")));  // remembered, still empty
  EXPECT_TRUE(Admitted(limiter.TryTake("b")));   // forgotten: starts full again
  // "b" coming back evicted "c", the least recently used by then.
  EXPECT_TRUE(Admitted(limiter.TryTake("c")));
}

TEST(KeyedRateLimiterTest, EvictionNeverTouchesTheSharedBucket) {
  FakeClock clock;
  KeyedRateLimiter limiter({.rate_per_second = 0, .burst = 1, .max_keys = 2},
                           clock);
  ASSERT_TRUE(Admitted(limiter.TryTakeShared()));

  for (int i = 0; i < 100; ++i) limiter.TryTake(absl::StrCat("key-", i));

  EXPECT_FALSE(Admitted(limiter.TryTakeShared()));
}

TEST(KeyedRateLimiterTest, FloodOfKeysStaysBounded) {
  FakeClock clock;
  KeyedRateLimiter limiter(
      {.rate_per_second = 10, .burst = 20, .max_keys = 10'000}, clock);
  ASSERT_EQ(limiter.MaxKeys(), 10'000u);
  std::vector<std::string> keys;
  keys.reserve(200'000);
  for (int i = 0; i < 200'000; ++i) keys.push_back(absl::StrCat("client-", i));

  for (int i = 0; i < 100'000; ++i) {
    ASSERT_TRUE(Admitted(limiter.TryTake(keys[i])));
  }
  EXPECT_EQ(limiter.KeyCount(), 10'000u);

  // Once full, new keys reuse evicted slots in place: memory stops growing
  // entirely.
  const int64_t before = g_allocations.load();
  for (int i = 100'000; i < 200'000; ++i) {
    ASSERT_TRUE(Admitted(limiter.TryTake(keys[i])));
  }
  if (kCountsAllocations) {
    EXPECT_EQ(g_allocations.load() - before, 0);
  }
  EXPECT_EQ(limiter.KeyCount(), 10'000u);
}

TEST(KeyedRateLimiterTest, KnownKeyTakeDoesNotAllocate) {
  if (!kCountsAllocations) GTEST_SKIP() << "no allocation counting under TSan";
  FakeClock clock;
  KeyedRateLimiter limiter(
      {.rate_per_second = 10, .burst = 20, .max_keys = 1000}, clock);
  const std::string key = "a-client-id-longer-than-the-small-string-buffer";
  limiter.TryTake(key);

  const int64_t before = g_allocations.load();
  for (int i = 0; i < 1000; ++i) limiter.TryTake(key);
  limiter.TryTakeShared();

  EXPECT_EQ(g_allocations.load() - before, 0);
}

TEST(KeyedRateLimiterTest, MaxKeysIsRoundedDownToWholeShards) {
  FakeClock clock;
  KeyedRateLimiter large({.rate_per_second = 1, .burst = 1, .max_keys = 10'007},
                         clock);
  KeyedRateLimiter small({.rate_per_second = 1, .burst = 1, .max_keys = 300},
                         clock);
  KeyedRateLimiter zero({.rate_per_second = 1, .burst = 1, .max_keys = 0},
                        clock);

  EXPECT_EQ(large.MaxKeys(), 10'000u);  // 16 shards of 625
  EXPECT_EQ(small.MaxKeys(), 300u);     // one shard: exact LRU
  EXPECT_EQ(zero.MaxKeys(), 1u);
}

TEST(KeyedRateLimiterTest, NothingIsSizedByMaxKeysUpFront) {
  if (!kCountsAllocations) GTEST_SKIP() << "no allocation counting under TSan";
  FakeClock clock;
  const int64_t before = g_allocated_bytes.load();
  KeyedRateLimiter limiter(
      {.rate_per_second = 1, .burst = 1, .max_keys = 10'000'000}, clock);
  ASSERT_EQ(limiter.MaxKeys(), 10'000'000u);
  // 16 empty shards: a few KiB, whatever max_keys says.
  EXPECT_LT(g_allocated_bytes.load() - before, 64 << 10);

  // Memory follows the keys seen: well under 1 KiB each, index growth
  // included.
  for (int i = 0; i < 1'000; ++i) limiter.TryTake(absl::StrCat("client-", i));
  EXPECT_EQ(limiter.KeyCount(), 1'000u);
  EXPECT_LT(g_allocated_bytes.load() - before, 1'000 * 1'024);
}

// Writes into `key` (60 000 bytes) a value that differs for each `i` only in
// its last bytes.
std::string_view LongKey(std::string& key, int i) {
  key.assign(60'000, 'k');
  const std::string tail = absl::StrCat("#", i);
  key.replace(key.size() - tail.size(), tail.size(), tail);
  return key;
}

TEST(KeyedRateLimiterTest, LongKeysAreHeldInAFewBytesEach) {
  FakeClock clock;
  KeyedRateLimiter limiter(
      {.rate_per_second = 0, .burst = 1, .max_keys = 20'000}, clock);
  std::string key;
  for (int i = 0; i < 10'000; ++i) {
    ASSERT_TRUE(Admitted(limiter.TryTake(LongKey(key, i))));
  }
  ASSERT_EQ(limiter.KeyCount(), 10'000u);
  // Each held as a 32-byte digest (plus its string's terminator and rounding),
  // not 60 000 bytes: under a MiB for all of them, not 600 MB.
  EXPECT_LE(limiter.KeyBytesApprox(), 10'000u * 64);
  // Held, and found again: those buckets are empty now.
  for (int i = 0; i < 10'000; i += 97) {
    ASSERT_FALSE(Admitted(limiter.TryTake(LongKey(key, i)))) << i;
  }
}

TEST(KeyedRateLimiterTest, KeysUpTo256BytesAreHeldAsThemselves) {
  FakeClock clock;
  KeyedRateLimiter limiter({.rate_per_second = 0, .burst = 1, .max_keys = 10},
                           clock);
  const std::string at_limit(KeyedRateLimiter::kMaxInlineKeyBytes, 'a');
  ASSERT_TRUE(Admitted(limiter.TryTake(at_limit)));
  EXPECT_GE(limiter.KeyBytesApprox(), KeyedRateLimiter::kMaxInlineKeyBytes);

  KeyedRateLimiter digests({.rate_per_second = 0, .burst = 1, .max_keys = 10},
                           clock);
  ASSERT_TRUE(Admitted(digests.TryTake(at_limit + "a")));
  EXPECT_LE(digests.KeyBytesApprox(), 64u);
}

TEST(KeyedRateLimiterTest,
     LongKeysSharingTheirFirst256BytesAreDifferentBuckets) {
  FakeClock clock;
  // Never refills: an admitted call proves a bucket of its own.
  KeyedRateLimiter limiter({.rate_per_second = 0, .burst = 1, .max_keys = 100},
                           clock);
  const std::string prefix(KeyedRateLimiter::kMaxInlineKeyBytes, 'p');
  const std::string a = prefix + "-alice";
  const std::string b = prefix + "-bobby";  // same length, too

  ASSERT_TRUE(Admitted(limiter.TryTake(a)));
  EXPECT_TRUE(Admitted(limiter.TryTake(b)));
  EXPECT_TRUE(Admitted(limiter.TryTake(prefix)));  // the prefix alone
  EXPECT_FALSE(Admitted(limiter.TryTake(a)));
  EXPECT_FALSE(Admitted(limiter.TryTake(b)));
  EXPECT_EQ(limiter.KeyCount(), 3u);
}

TEST(KeyedRateLimiterTest, AValueSpellingAnotherKeysDigestIsADifferentBucket) {
  FakeClock clock;
  KeyedRateLimiter limiter({.rate_per_second = 0, .burst = 1, .max_keys = 100},
                           clock);
  const std::string victim(1'000, 'v');
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  ASSERT_EQ(EVP_Digest(victim.data(), victim.size(), digest, &size,
                       EVP_sha256(), nullptr),
            1);
  const std::string forged(reinterpret_cast<const char*>(digest), size);

  ASSERT_TRUE(Admitted(limiter.TryTake(victim)));
  // A client sending the victim's digest as its own key cannot drain (or
  // share) the victim's bucket.
  EXPECT_TRUE(Admitted(limiter.TryTake(forged)));
  EXPECT_FALSE(Admitted(limiter.TryTake(victim)));
  EXPECT_EQ(limiter.KeyCount(), 2u);
}

TEST(KeyedRateLimiterTest, ConcurrentTakesOnSharedKeysAdmitExactlyBurstEach) {
  FakeClock clock;
  KeyedRateLimiter limiter(
      {.rate_per_second = 1, .burst = 1'000, .max_keys = 1'000}, clock);
  std::atomic<int64_t> admitted{0};

  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2'000; ++i) {
        const std::string key = absl::StrCat("k", i % 4);
        if (Admitted(limiter.TryTake(key))) admitted.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  // 4 keys x 1000 tokens each, 8000 attempts.
  EXPECT_EQ(admitted.load(), 4'000);
  EXPECT_EQ(limiter.KeyCount(), 4u);
}

}  // namespace
}  // namespace bulwark
