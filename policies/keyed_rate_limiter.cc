#include "policies/keyed_rate_limiter.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/synchronization/mutex.h"

namespace bulwark {
namespace {

// 16 shards: more than the cores a sidecar gets.
constexpr int kMaxShardBits = 4;
// Sharding splits one exact LRU into per-shard ones; below this many keys per
// shard the approximation is not worth the saved contention.
constexpr int64_t kMinKeysPerShard = 256;
// Indices in a shard are uint32_t; the cap is far above any sane configuration
// (the loader allows 10 000 000).
constexpr int64_t kMaxKeys = int64_t{1} << 31;

constexpr size_t kDigestBytes = 32;  // SHA-256

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

// A key as a shard holds it: the header value itself, or the digest of a value
// longer than kMaxInlineKeyBytes. `hash` covers both the bytes and which form
// they are: a digest's hash is its bytes' hash XOR kDigestSalt. Keys compare
// equal only when their hashes and bytes both do, so a value a client sends
// that spells another value's digest is still a different key, and the form
// costs no byte of the slot.
struct HeldKey {
  std::string_view bytes;
  size_t hash;
};

constexpr size_t kDigestSalt = 0x9e3779b97f4a7c15;

size_t HashOf(std::string_view bytes, bool digest) {
  return absl::Hash<std::string_view>{}(bytes) ^ (digest ? kDigestSalt : 0);
}

// SHA-256 of `value` into `out`. Computed outside every lock.
void Sha256(std::string_view value, unsigned char (&out)[kDigestBytes]) {
  unsigned int size = 0;
  [[maybe_unused]] const int ok =
      EVP_Digest(value.data(), value.size(), out, &size, EVP_sha256(), nullptr);
  // Cannot fail for SHA-256 short of memory exhaustion inside libcrypto.
  assert(ok == 1 && size == kDigestBytes);
}

// Heap bytes a string owns: none while it fits its inline buffer.
size_t HeapBytes(const std::string& s) {
  static const size_t kInline = std::string().capacity();
  return s.capacity() > kInline ? s.capacity() + 1 : 0;
}

}  // namespace

// One shard: slots in a deque (which never moves an element as it grows), an
// LRU list threaded through them by index, and an index from key to slot that
// stores only the slot's number: it hashes and compares through the slots, so
// an entry costs 4 bytes and a slot's string is never viewed from outside. An
// evicted slot is reused in place. Nothing is reserved before keys arrive.
class KeyedRateLimiter::Shard {
 public:
  Shard() : index_(0, SlotHash{&slots_}, SlotEq{&slots_}) {}

  // Called once, before the shard is shared.
  void SetCapacity(size_t capacity) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    capacity_ = capacity;
  }

  TakeResult TryTake(const HeldKey& key, const TokenBucketLimits& limits,
                     absl::Time now) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return slots_[FindOrAdd(key, limits, now)].level.TryTake(limits, now);
  }

  size_t KeyCount() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return slots_.size();
  }

  size_t KeyBytes() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return key_bytes_;
  }

 private:
  static constexpr uint32_t kNone = UINT32_MAX;

  struct Slot {
    TokenBucketLevel level;
    std::string key;  // HeldKey::bytes
    size_t hash;      // HeldKey::hash
    uint32_t newer;   // toward newest_
    uint32_t older;   // toward oldest_
  };

  // The index's hash and equality see a slot number through the slots, and
  // accept a HeldKey for lookups (heterogeneous lookup). Both read slots_
  // under mu_: the index is only touched with mu_ held.
  struct SlotHash {
    using is_transparent = void;
    const std::deque<Slot>* slots;
    size_t operator()(uint32_t i) const { return (*slots)[i].hash; }
    size_t operator()(const HeldKey& key) const { return key.hash; }
  };
  struct SlotEq {
    using is_transparent = void;
    const std::deque<Slot>* slots;
    bool operator()(uint32_t a, uint32_t b) const { return a == b; }
    bool operator()(const HeldKey& key, uint32_t i) const {
      const Slot& slot = (*slots)[i];
      return slot.hash == key.hash && slot.key == key.bytes;
    }
    bool operator()(uint32_t i, const HeldKey& key) const {
      return (*this)(key, i);
    }
  };

  uint32_t FindOrAdd(const HeldKey& key, const TokenBucketLimits& limits,
                     absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (auto it = index_.find(key); it != index_.end()) {
      const uint32_t i = *it;
      if (i != newest_) {
        Unlink(i);
        LinkAsNewest(i);
      }
      return i;
    }
    uint32_t i;
    if (slots_.size() < capacity_) {
      i = static_cast<uint32_t>(slots_.size());
      slots_.push_back(Slot{.level = TokenBucketLevel(limits, now),
                            .key = std::string(key.bytes),
                            .hash = key.hash,
                            .newer = kNone,
                            .older = kNone});
      key_bytes_ += HeapBytes(slots_.back().key);
      if (slots_.size() == capacity_) {
        // Full: from now on every new key replaces the oldest, an erase and an
        // insert in the index. With this headroom the index squashes the
        // tombstones that leaves in place (it does while at most 25/32 full)
        // instead of growing: past this point it never allocates again.
        index_.reserve(capacity_ + capacity_ / 2);
      }
    } else {
      i = oldest_;
      Slot& evicted = slots_[i];
      // Erased while the slot still hashes and compares as the old key.
      index_.erase(i);
      key_bytes_ -= HeapBytes(evicted.key);
      evicted.key.assign(key.bytes.data(), key.bytes.size());
      key_bytes_ += HeapBytes(evicted.key);
      evicted.hash = key.hash;
      evicted.level = TokenBucketLevel(limits, now);
      Unlink(i);
    }
    index_.insert(i);
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
  size_t key_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Slot> slots_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<uint32_t, SlotHash, SlotEq> index_ ABSL_GUARDED_BY(mu_);
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
    shards_[i].SetCapacity(max_keys_ >> shard_bits_);
  }
}

KeyedRateLimiter::~KeyedRateLimiter() = default;

KeyedRateLimiter::Shard& KeyedRateLimiter::ShardFor(size_t hash) {
  if (shard_bits_ == 0) return shards_[0];
  // The top bits: the shard's index probes with the low ones.
  return shards_[static_cast<uint64_t>(hash) >> (64 - shard_bits_)];
}

TakeResult KeyedRateLimiter::TryTake(std::string_view key, absl::Time now) {
  if (key.empty()) return shared_bucket_.TryTake(now);
  if (key.size() <= kMaxInlineKeyBytes) {
    const HeldKey held{key, HashOf(key, /*digest=*/false)};
    return ShardFor(held.hash).TryTake(held, limits_, now);
  }
  unsigned char digest[kDigestBytes];
  Sha256(key, digest);
  const std::string_view bytes(reinterpret_cast<const char*>(digest),
                               sizeof(digest));
  const HeldKey held{bytes, HashOf(bytes, /*digest=*/true)};
  return ShardFor(held.hash).TryTake(held, limits_, now);
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

size_t KeyedRateLimiter::KeyBytesApprox() {
  size_t bytes = 0;
  for (size_t i = 0; i < (size_t{1} << shard_bits_); ++i) {
    bytes += shards_[i].KeyBytes();
  }
  return bytes;
}

size_t KeyedRateLimiter::MaxKeys() const { return max_keys_; }

double KeyedRateLimiter::SharedTokensApprox() {
  return shared_bucket_.TokensApprox();
}

}  // namespace bulwark
