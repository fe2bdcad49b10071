// RateLimitStage: the first policy of the chain (SPEC section 3). It decides
// whether a caller may go on under the route's rate limit: it takes a token
// for every caller (coalesced or not: it enforces client quotas) from the
// route's bucket, or from the bucket of the caller's key. The key is the value
// of key_header, the tuple of key_headers' values (each value
// length-prefixed, so ("a,b", "c") and ("a", "b,c") differ), or the mTLS
// client certificate's identity (key: PEER_IDENTITY); a call without a key
// shares one bucket. With `global` the buckets are shared by every replica
// through Redis (SPEC section 8): the stage spends the local allowance of
// store::GlobalLimiter and never waits for Redis. Answers `rate_limited` with
// the time until a token is due as the pushback; in shadow it only counts.
//
// Thread-safety: const after construction; the buckets and the limiter are
// thread-safe. Cost: one bucket take (a keyed one adds a hash lookup; a
// key_headers tuple adds one small string built per call; a global one adds
// the allowance's mutex, and a queue push when it asks for a refill).
#ifndef BULWARK_SIDECAR_CHAIN_RATE_LIMIT_STAGE_H_
#define BULWARK_SIDECAR_CHAIN_RATE_LIMIT_STAGE_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "bulwark/config/v1/config.pb.h"
#include "policies/clock.h"
#include "policies/keyed_rate_limiter.h"
#include "policies/token_bucket.h"
#include "sidecar/chain/verdict.h"
#include "sidecar/metrics.h"
#include "sidecar/net/stream_handler.h"
#include "sidecar/store/global_limiter.h"
#include "sidecar/store/redis_store.h"

namespace bulwark::chain {

// The live state of a rate limit, kept across reloads that leave the block
// (and, for a global one, its Redis store) unchanged. Exactly one of bucket,
// keyed and global is set.
struct RateLimitState {
  std::unique_ptr<TokenBucket> bucket;      // local, without a key
  std::unique_ptr<KeyedRateLimiter> keyed;  // local, with a key
  // Global: the store is held here so that it outlives the limiter (members
  // are destroyed in reverse order).
  std::shared_ptr<store::RedisStore> store;
  std::unique_ptr<store::GlobalLimiter> global;
  Clock* clock = nullptr;  // the limiter's, for its stats
};

// The key of one call under `config` ("" = no key: the shared bucket).
// key_header: the header's value as is; key_headers: each value as
// "<length>:<value>", concatenated ("" when every header is absent or empty);
// PEER_IDENTITY: the client certificate's identity. Exposed for tests.
std::string RateLimitKey(const config::v1::RateLimit& config,
                         const net::Call& call);

class RateLimitStage {
 public:
  // `store`: the Redis store the config's global.redis names (required with
  // global, ignored otherwise).
  static std::unique_ptr<RateLimitState> NewState(
      const config::v1::RateLimit& config, std::string_view route, Clock& clock,
      std::shared_ptr<store::RedisStore> store = nullptr);
  RateLimitStage(const config::v1::RateLimit& config, std::string route,
                 RateLimitState& state, RouteMetrics& metrics);

  Verdict Decide(const net::Call& call, absl::Time now) const;
  // The `rate_limit` object of /routes.
  std::string DescribeJson() const;
  // bulwark_rate_limit_tokens (global: the local allowance of calls without a
  // key).
  double TokensApprox() const;
  bool is_global() const { return state_.global != nullptr; }
  // bulwark_rate_limit_global_replicas: as last seen (0: never heard back).
  int GlobalReplicasApprox() const;

 private:
  enum class KeyKind { kNone, kHeader, kHeaders, kPeerIdentity };

  const std::string route_;
  const config::v1::RateLimit config_;
  const KeyKind key_kind_;
  const bool shadow_;
  RateLimitState& state_;
  RouteMetrics& metrics_;
};

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_RATE_LIMIT_STAGE_H_
