// TokenBucket decides whether one call may proceed now under a sustained rate
// with bounded bursts, and when it may not, exactly how long until the next
// token (the rate_limited rejection's grpc-retry-pushback-ms). Thread-safety:
// TokenBucket is thread-safe (one short absl::Mutex critical section per call,
// no call-outs under it); TokenBucketLevel is a plain value whose owner
// serializes access. Cost: O(1), no allocation, a few tens of ns per call
// (numbers in tests/microbench/rate_breaker_bench.cc).
//
// The arithmetic is exact, so nothing drifts however long the bucket runs: time
// is integer nanoseconds and tokens are fixed-point integers with 10^18 units
// per token, so one nanosecond of refill adds exactly `rate_per_second * 10^9`
// units. The rate is resolved to 10^-9 tokens per second once, at construction;
// after that no operation rounds, except retry_after, which rounds up to the
// next whole nanosecond so that a client never comes back too early.
#ifndef BULWARK_POLICIES_TOKEN_BUCKET_H_
#define BULWARK_POLICIES_TOKEN_BUCKET_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/numeric/int128.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "policies/clock.h"

namespace bulwark {

struct TokenBucketOptions {
  // Tokens added per second; may be fractional (0.5 = one token every two
  // seconds). Values <= 0 mean the bucket never refills. Resolution 10^-9
  // tokens per second; at most ~9.2e9.
  double rate_per_second = 0;
  // Capacity in tokens; the bucket starts full. Values < 0 are treated as 0.
  int64_t burst = 0;
};

// The answer to "may this call take a token now?".
struct TakeResult {
  enum Kind { kAdmitted, kRejected };
  Kind kind = kRejected;
  // kRejected: the exact time until the next whole token is available (rounded
  // up to a nanosecond; absl::InfiniteDuration() if the bucket never refills).
  // kAdmitted: zero.
  absl::Duration retry_after = absl::ZeroDuration();
};

// TokenBucketOptions converted once into the integer units of the refill
// arithmetic.
struct TokenBucketLimits {
  static constexpr int64_t kUnitsPerToken = 1'000'000'000'000'000'000;

  explicit TokenBucketLimits(const TokenBucketOptions& options);

  // burst * kUnitsPerToken.
  absl::int128 capacity_units;
  // rate_per_second * 10^9: the refill per elapsed nanosecond.
  int64_t units_per_ns;
};

// How full one bucket is: the pure core of TokenBucket and of
// KeyedRateLimiter's per-key buckets. TryTake's answer and the new level are a
// function of (level, limits, now) alone, with no clock, so it is table-tested
// directly. A `now` earlier than the last one seen (two threads read the clock,
// then lock in the other order) refills nothing and moves nothing back. Not
// thread-safe: 32 bytes of plain state; the owner locks.
class TokenBucketLevel {
 public:
  // A full bucket at `now`.
  TokenBucketLevel(const TokenBucketLimits& limits, absl::Time now);

  TakeResult TryTake(const TokenBucketLimits& limits, absl::Time now);
  // Tokens the bucket would hold at `now`, fractional; does not change the
  // level.
  double TokensAt(const TokenBucketLimits& limits, absl::Time now) const;

 private:
  absl::int128 FilledUnitsAt(const TokenBucketLimits& limits,
                             int64_t now_ns) const;

  absl::int128 units_;  // tokens * kUnitsPerToken as of updated_ns_
  int64_t updated_ns_;  // Unix nanoseconds of the last refill
};

// A thread-safe token bucket shared by every worker, e.g. one route's limit:
//   TokenBucket bucket({.rate_per_second = 100, .burst = 200}, clock);
//   TakeResult r = bucket.TryTake(now);
//   if (r.kind == TakeResult::kRejected) ... r.retry_after ...
class TokenBucket {
 public:
  TokenBucket(const TokenBucketOptions& options, Clock& clock);

  TokenBucket(const TokenBucket&) = delete;
  TokenBucket& operator=(const TokenBucket&) = delete;

  // Takes one token if there is one at `now`.
  TakeResult TryTake(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Same, at the clock's now.
  TakeResult TryTake() ABSL_LOCKS_EXCLUDED(mu_);

  // Tokens left at the clock's now, for metrics and the admin page: stale as
  // soon as it returns, never a basis for a decision.
  double TokensApprox() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const TokenBucketLimits limits_;
  Clock& clock_;
  absl::Mutex mu_;
  TokenBucketLevel level_ ABSL_GUARDED_BY(mu_);
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_TOKEN_BUCKET_H_
