// KeyedRateLimiter decides whether a call may proceed under a per-client quota:
// one token bucket (same rate and burst for all) per value of the route's key
// header, e.g. x-client-id. Memory is bounded and follows the traffic: at most
// max_keys buckets are kept, the least recently used one is forgotten (and so
// starts full again if that client comes back), and nothing is sized by
// max_keys up front: buckets, and the index over them, grow as keys appear.
//
// Each key is held in at most 256 bytes (SPEC section 11): a longer value is
// replaced by its SHA-256 digest (OpenSSL libcrypto), marked as a digest so
// that no value a client may send as itself can ever equal another's digest.
// A digest is collision-safe where a prefix or a fast hash is not: two values
// share a bucket only if they are equal, whatever an attacker chooses.
//
// Calls without the key header (or with an empty value) share one bucket: pass
// an empty key, or call TryTakeShared. That shared bucket is held apart from
// the keyed ones, so it is never evicted (a flood of distinct keys cannot
// refill it) and KeyCount does not count it.
//
// Thread-safety: thread-safe. Keys are spread by hash over up to 16 shards,
// each with its own absl::Mutex, slots and LRU list, so workers rarely contend;
// each shard holds at most max_keys / shards keys (shards are only used when
// each holds at least 256 keys, so small limits keep one exact LRU), which
// bounds the total by max_keys, and LRU order is kept per shard. Cost: O(1) per
// call (one hash, one index probe, a few list links; a key over 256 bytes adds
// one SHA-256 of it, outside any lock). Memory: about 100 bytes per key seen
// plus the key's own bytes past the 15 kept inline, never more than max_keys
// keys. A call for a known key never allocates; a new key allocates while the
// shard grows (a slot now and then, the index as it doubles) and, once the
// shard is full, only to copy a key longer than the string of the slot it takes
// over.
#ifndef BULWARK_POLICIES_KEYED_RATE_LIMITER_H_
#define BULWARK_POLICIES_KEYED_RATE_LIMITER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/time/time.h"
#include "policies/clock.h"
#include "policies/token_bucket.h"

namespace bulwark {

struct KeyedRateLimiterOptions {
  // Per key, as in TokenBucketOptions.
  double rate_per_second = 0;
  int64_t burst = 0;
  // Most keyed buckets kept at once (the shared bucket aside); values < 1 are
  // treated as 1, values above 2^31 as 2^31.
  int64_t max_keys = 10000;
};

class KeyedRateLimiter {
 public:
  // Keys longer than this are held as their digest.
  static constexpr size_t kMaxInlineKeyBytes = 256;

  KeyedRateLimiter(const KeyedRateLimiterOptions& options, Clock& clock);
  ~KeyedRateLimiter();

  KeyedRateLimiter(const KeyedRateLimiter&) = delete;
  KeyedRateLimiter& operator=(const KeyedRateLimiter&) = delete;

  // Takes one token from `key`'s bucket (created full if unknown), or from the
  // shared bucket when `key` is empty.
  TakeResult TryTake(std::string_view key, absl::Time now);
  TakeResult TryTake(std::string_view key);

  // Takes one token from the bucket shared by calls without a key.
  TakeResult TryTakeShared(absl::Time now);
  TakeResult TryTakeShared();

  // Keyed buckets held now (at most MaxKeys()); shards are counted one after
  // the other, so under concurrent calls this is a snapshot, exact only when
  // the limiter is quiet.
  size_t KeyCount();
  // Heap bytes the held keys' strings own (0 for keys short enough to sit
  // inside their std::string), summed shard by shard like KeyCount: what the
  // keys themselves cost on top of the fixed size of a slot.
  size_t KeyBytesApprox();
  // The bound KeyCount never exceeds: max_keys rounded down to a multiple of
  // the shard count.
  size_t MaxKeys() const;
  // Tokens left in the shared bucket, for metrics and the admin page.
  double SharedTokensApprox();

 private:
  class Shard;

  Shard& ShardFor(size_t key_hash);

  const TokenBucketLimits limits_;
  Clock& clock_;
  TokenBucket shared_bucket_;
  const int shard_bits_;
  const size_t max_keys_;  // over all shards
  std::unique_ptr<Shard[]> shards_;
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_KEYED_RATE_LIMITER_H_
