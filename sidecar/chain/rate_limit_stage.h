// RateLimitStage: the first policy of the chain (SPEC section 3). It takes a
// token for every caller (coalesced or not: it enforces client quotas) from
// the route's bucket, or from the bucket of the caller's key header; a call
// without the key header shares one bucket. Answers `rate_limited` with the
// time until a token is due as the pushback; in shadow it only counts.
//
// Thread-safety: const after Create; the buckets are thread-safe. Cost: one
// bucket take (a keyed one adds a hash lookup).
#ifndef BULWARK_SIDECAR_CHAIN_RATE_LIMIT_STAGE_H_
#define BULWARK_SIDECAR_CHAIN_RATE_LIMIT_STAGE_H_

#include <memory>
#include <string>

#include "bulwark/config/v1/config.pb.h"
#include "policies/clock.h"
#include "policies/keyed_rate_limiter.h"
#include "policies/token_bucket.h"
#include "sidecar/chain/verdict.h"
#include "sidecar/metrics.h"
#include "sidecar/net/stream_handler.h"

namespace bulwark::chain {

// The live state of a rate limit, kept across reloads that leave the block
// unchanged.
struct RateLimitState {
  std::unique_ptr<TokenBucket> bucket;      // without key_header
  std::unique_ptr<KeyedRateLimiter> keyed;  // with key_header
};

class RateLimitStage {
 public:
  static std::unique_ptr<RateLimitState> NewState(
      const config::v1::RateLimit& config, Clock& clock);
  RateLimitStage(const config::v1::RateLimit& config, std::string route,
                 RateLimitState& state, RouteMetrics& metrics);

  Verdict Decide(const net::Call& call, absl::Time now) const;
  // The `rate_limit` object of /routes.
  std::string DescribeJson() const;
  // bulwark_rate_limit_tokens.
  double TokensApprox() const;

 private:
  const std::string route_;
  const std::string key_header_;
  const bool shadow_;
  RateLimitState& state_;
  RouteMetrics& metrics_;
};

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_RATE_LIMIT_STAGE_H_
