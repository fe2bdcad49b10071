#include "policies/keyed_rate_limiter.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/synchronization/mutex.h"

namespace bulwark {
namespace {

// 16 shards: more than the cores a sidecar gets.
constexpr int kMaxShardBits = 4;
// Sharding splits one exact LRU into per-shard ones; below this many keys per
// shard the approximation is not worth the saved contention.
constexpr int64_t kMinKeysPerShard = 256;
// Indices in a shard are uint32_t; the cap is far above any sane configuration.
constexpr int64_t kMaxKeys = int64_t{1} << 31;

int64_t ClampMaxKeys(int64_t max_keys) {
  return std::clamp<int64_t>(max_keys, 1, kMaxKeys);
}

int ShardBitsFor(int64_t max_keys) {
  int bits = 0;
  while (bits < kMaxShardBits && (max_keys >> (bits + 1)) >= kMinKeysPerShard) {
    ++bits;
  }
  return bits;
}

static_assert(sizeof(size_t) == 8,
              "shards are picked by the top bits of a 64-bit hash");

// A key with its hash, computed once outside the shard's lock: the top bits
// pick the shard, and the shard's map reuses the whole value instead of hashing
// the string again.
struct HashedKey {
  std::string_view key;
  size_t hash;
};

struct HashedKeyHash {
  size_t operator()(const HashedKey& k) const { return k.hash; }
};

struct HashedKeyEq {
  bool operator()(const HashedKey& a, const HashedKey& b) const {
    return a.key == b.key;
  }
};

}  // namespace

// One shard: a map from key to slot and an LRU list threaded through the slots
// by index. Slots live in a vector reserved once and never reallocated, which
// is what lets the map's string_view keys point into the slots' own strings; an
// evicted slot is reused in place.
class KeyedRateLimiter::Shard {
 public:
  // Called once, before the shard is shared.
  void Reserve(size_t capacity) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    capacity_ = capacity;
    slots_.reserve(capacity);
    // Evictions leave tombstones in the map; it squashes them in place (no
    // allocation) only while it is at most 25/32 full, so leave it that much
    // headroom up front.
    index_.reserve(capacity + capacity / 2);
  }

  TakeResult TryTake(const HashedKey& key, const TokenBucketLimits& limits,
                     absl::Time now) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return slots_[FindOrAdd(key, limits, now)].level.TryTake(limits, now);
  }

  size_t KeyCount() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return slots_.size();
  }

 private:
  static constexpr uint32_t kNone = UINT32_MAX;

  struct Slot {
    std::string key;
    size_t hash;
    TokenBucketLevel level;
    uint32_t newer;  // toward newest_
    uint32_t older;  // toward oldest_
  };

  uint32_t FindOrAdd(const HashedKey& key, const TokenBucketLimits& limits,
                     absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (auto it = index_.find(key); it != index_.end()) {
      const uint32_t i = it->second;
      if (i != newest_) {
        Unlink(i);
        LinkAsNewest(i);
      }
      return i;
    }
    uint32_t i;
    if (slots_.size() < capacity_) {
      i = static_cast<uint32_t>(slots_.size());
      slots_.push_back(Slot{.key = std::string(key.key),
                            .hash = key.hash,
                            .level = TokenBucketLevel(limits, now),
                            .newer = kNone,
                            .older = kNone});
    } else {
      i = oldest_;
      Slot& evicted = slots_[i];
      // Erase before the string changes under the map's view of it.
      index_.erase(HashedKey{evicted.key, evicted.hash});
      evicted.key.assign(key.key.data(), key.key.size());
      evicted.hash = key.hash;
      evicted.level = TokenBucketLevel(limits, now);
      Unlink(i);
    }
    index_.emplace(HashedKey{slots_[i].key, key.hash}, i);
    LinkAsNewest(i);
    return i;
  }

  void Unlink(uint32_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Slot& slot = slots_[i];
    (slot.newer == kNone ? newest_ : slots_[slot.newer].older) = slot.older;
    (slot.older == kNone ? oldest_ : slots_[slot.older].newer) = slot.newer;
  }

  void LinkAsNewest(uint32_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Slot& slot = slots_[i];
    slot.newer = kNone;
    slot.older = newest_;
    (newest_ == kNone ? oldest_ : slots_[newest_].newer) = i;
    newest_ = i;
  }

  absl::Mutex mu_;
  size_t capacity_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<HashedKey, uint32_t, HashedKeyHash, HashedKeyEq> index_
      ABSL_GUARDED_BY(mu_);
  uint32_t newest_ ABSL_GUARDED_BY(mu_) = kNone;
  uint32_t oldest_ ABSL_GUARDED_BY(mu_) = kNone;
};

KeyedRateLimiter::KeyedRateLimiter(const KeyedRateLimiterOptions& options,
                                   Clock& clock)
    : limits_(TokenBucketOptions{.rate_per_second = options.rate_per_second,
                                 .burst = options.burst}),
      clock_(clock),
      shared_bucket_(
          {.rate_per_second = options.rate_per_second, .burst = options.burst},
          clock),
      shard_bits_(ShardBitsFor(ClampMaxKeys(options.max_keys))),
      max_keys_(
          static_cast<size_t>(ClampMaxKeys(options.max_keys) >> shard_bits_)
          << shard_bits_),
      shards_(new Shard[size_t{1} << shard_bits_]) {
  for (size_t i = 0; i < (size_t{1} << shard_bits_); ++i) {
    shards_[i].Reserve(max_keys_ >> shard_bits_);
  }
}

KeyedRateLimiter::~KeyedRateLimiter() = default;

KeyedRateLimiter::Shard& KeyedRateLimiter::ShardFor(size_t hash) {
  if (shard_bits_ == 0) return shards_[0];
  // The top bits: the shard's map probes with the low ones.
  return shards_[static_cast<uint64_t>(hash) >> (64 - shard_bits_)];
}

TakeResult KeyedRateLimiter::TryTake(std::string_view key, absl::Time now) {
  if (key.empty()) return shared_bucket_.TryTake(now);
  const HashedKey hashed{key, absl::Hash<std::string_view>{}(key)};
  return ShardFor(hashed.hash).TryTake(hashed, limits_, now);
}

TakeResult KeyedRateLimiter::TryTake(std::string_view key) {
  return TryTake(key, clock_.Now());
}

TakeResult KeyedRateLimiter::TryTakeShared(absl::Time now) {
  return shared_bucket_.TryTake(now);
}

TakeResult KeyedRateLimiter::TryTakeShared() {
  return shared_bucket_.TryTake(clock_.Now());
}

size_t KeyedRateLimiter::KeyCount() {
  size_t count = 0;
  for (size_t i = 0; i < (size_t{1} << shard_bits_); ++i) {
    count += shards_[i].KeyCount();
  }
  return count;
}

size_t KeyedRateLimiter::MaxKeys() const { return max_keys_; }

double KeyedRateLimiter::SharedTokensApprox() {
  return shared_bucket_.TokensApprox();
}

}  // namespace bulwark
