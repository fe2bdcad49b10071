#include "sidecar/store/global_limiter.h"

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "sidecar/store/global_bucket_script.h"

namespace bulwark::store {
namespace {

// SPEC section 11: a key is held in at most 256 bytes.
constexpr size_t kMaxHeldKeyBytes = 256;

std::string DefaultReplicaId() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  absl::BitGen rng;
  return absl::StrCat(host[0] != '\0' ? host : "bulwark", "-", getpid(), "-",
                      absl::Hex(absl::Uniform<uint64_t>(rng)));
}

// One key's allowance and its Redis key, shared by the key map and the
// refills in flight.
struct KeyState {
  KeyState(const GlobalAllowanceOptions& options, int replicas, absl::Time now,
           std::string redis_key)
      : allowance(options, replicas, now), redis_key(std::move(redis_key)) {}
  GlobalAllowance allowance;
  const std::string redis_key;
};

}  // namespace

class GlobalLimiter::Core : public std::enable_shared_from_this<Core> {
 public:
  Core(GlobalLimiterOptions options, RedisStore& store, Clock& clock)
      : options_(std::move(options)),
        allowance_options_{
            .rate_per_second = options_.rate_per_second,
            .burst = options_.burst,
            .refill_horizon = options_.refill_horizon,
            .store_retry_interval = options_.store_retry_interval},
        max_keys_(static_cast<size_t>(std::max<int64_t>(1, options_.max_keys))),
        store_(store),
        clock_(clock),
        replica_id_(options_.replica_id.empty() ? DefaultReplicaId()
                                                : options_.replica_id),
        replica_key_(ReplicaSetKey(options_.domain, options_.route)),
        keyless_(std::make_shared<KeyState>(
            allowance_options_, 0, clock.Now(),
            GlobalBucketKey(options_.domain, options_.route, ""))) {}

  void StartHeartbeat() {
    std::weak_ptr<Core> weak = weak_from_this();
    store_.Post([weak](RedisClient& client) { Heartbeat(weak, client); });
  }

  TakeResult TryTake(std::string_view key, absl::Time now)
      ABSL_LOCKS_EXCLUDED(keys_mu_, queue_mu_) {
    std::shared_ptr<KeyState> state =
        key.empty() ? keyless_ : FindOrAdd(key, now);
    const GlobalTake taken = state->allowance.TryTake(now);
    if (taken.refill_tokens > 0) {
      RequestRefill(std::move(state), taken.refill_tokens);
    }
    return taken.take;
  }

  int Replicas() const { return replicas_.load(std::memory_order_relaxed); }

  Stats StatsNow(absl::Time now) ABSL_LOCKS_EXCLUDED(keys_mu_, error_mu_) {
    Stats s{.replicas = Replicas(),
            .refills = refills_.load(std::memory_order_relaxed),
            .tokens_granted = tokens_granted_.load(std::memory_order_relaxed),
            .store_errors = store_errors_.load(std::memory_order_relaxed),
            .heartbeats = heartbeats_.load(std::memory_order_relaxed),
            .store_failing = failing_.load(std::memory_order_relaxed),
            .keyless = keyless_->allowance.StatsApprox(now)};
    {
      absl::MutexLock lock(&keys_mu_);
      s.keys = keys_.size();
    }
    absl::MutexLock lock(&error_mu_);
    s.last_error = last_error_;
    return s;
  }

  std::optional<GlobalAllowance::Stats> KeyStats(std::string_view key,
                                                 absl::Time now)
      ABSL_LOCKS_EXCLUDED(keys_mu_) {
    if (key.empty()) return keyless_->allowance.StatsApprox(now);
    std::shared_ptr<KeyState> state;
    {
      const std::string digest = NeedsDigest(key) ? KeyNamePart(key) : "";
      absl::MutexLock lock(&keys_mu_);
      auto it =
          keys_.find(digest.empty() ? absl::string_view(key.data(), key.size())
                                    : absl::string_view(digest));
      if (it == keys_.end()) return std::nullopt;
      state = it->second.state;
    }
    return state->allowance.StatsApprox(now);
  }

 private:
  struct Slot {
    std::shared_ptr<KeyState> state;
    std::list<std::string>::iterator lru;
  };

  static bool NeedsDigest(std::string_view key) {
    return key.size() > kMaxHeldKeyBytes || key.front() == '#';
  }

  std::shared_ptr<KeyState> FindOrAdd(std::string_view key, absl::Time now)
      ABSL_LOCKS_EXCLUDED(keys_mu_) {
    // A held key starting with '#' is always a digest ('#' + hex SHA-256).
    const std::string digest = NeedsDigest(key) ? KeyNamePart(key) : "";
    const absl::string_view held =
        digest.empty() ? absl::string_view(key.data(), key.size())
                       : absl::string_view(digest);
    absl::MutexLock lock(&keys_mu_);
    if (auto it = keys_.find(held); it != keys_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      return it->second.state;
    }
    if (keys_.size() >= max_keys_) {
      keys_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.emplace_front(held);
    // A new key: its Redis name costs a SHA-256 only for a key that is not
    // plain (global_bucket_script.h), once.
    auto state = std::make_shared<KeyState>(
        allowance_options_, Replicas(), now,
        GlobalBucketKey(options_.domain, options_.route, key));
    keys_.emplace(lru_.front(), Slot{state, lru_.begin()});
    return state;
  }

  void RequestRefill(std::shared_ptr<KeyState> state, int64_t tokens)
      ABSL_LOCKS_EXCLUDED(queue_mu_) {
    bool wake;
    {
      absl::MutexLock lock(&queue_mu_);
      wake = queue_.empty();
      queue_.emplace_back(std::move(state), tokens);
    }
    if (wake) {
      store_.Post([self = shared_from_this()](RedisClient& client) {
        self->SendRefills(client);
      });
    }
  }

  // On the store's thread.
  void SendRefills(RedisClient& client) ABSL_LOCKS_EXCLUDED(queue_mu_) {
    std::vector<std::pair<std::shared_ptr<KeyState>, int64_t>> batch;
    {
      absl::MutexLock lock(&queue_mu_);
      batch.swap(queue_);
    }
    for (auto& [state, tokens] : batch) {
      refills_.fetch_add(1, std::memory_order_relaxed);
      const std::string& redis_key = state->redis_key;
      client.EvalSha(
          GlobalBucketRefillScript(), {redis_key},
          RefillArgs(options_.rate_per_second, options_.burst, tokens),
          [self = shared_from_this(), state = std::move(state),
           tokens = tokens](RedisResult result) {
            self->OnRefillDone(*state, tokens, result);
          });
    }
  }

  void OnRefillDone(KeyState& state, int64_t requested,
                    const RedisResult& result) {
    const absl::Time now = clock_.Now();
    std::string error;
    if (result.kind == RedisResult::Kind::kOk) {
      absl::StatusOr<RefillReply> reply =
          ParseRefillReply(result.reply, requested);
      if (reply.ok()) {
        tokens_granted_.fetch_add(reply->granted, std::memory_order_relaxed);
        failing_.store(false, std::memory_order_relaxed);
        state.allowance.OnGrant(reply->granted, now, Replicas());
        return;
      }
      error = std::string(reply.status().message());
    } else {
      error = result.error;
    }
    store_errors_.fetch_add(1, std::memory_order_relaxed);
    failing_.store(true, std::memory_order_relaxed);
    SetLastError(std::move(error));
    state.allowance.OnStoreError(now, options_.on_store_error);
  }

  // On the store's thread; re-arms itself while the limiter lives.
  static void Heartbeat(std::weak_ptr<Core> weak, RedisClient& client) {
    std::shared_ptr<Core> self = weak.lock();
    if (self == nullptr) return;
    client.EvalSha(
        ReplicaHeartbeatScript(), {self->replica_key_},
        HeartbeatArgs(self->replica_id_, self->options_.replica_window),
        [weak](RedisResult result) {
          std::shared_ptr<Core> self = weak.lock();
          if (self == nullptr) return;
          self->OnHeartbeatDone(result);
          self->store_.PostAfter(
              self->options_.heartbeat_interval,
              [weak](RedisClient& client) { Heartbeat(weak, client); });
        });
  }

  void OnHeartbeatDone(const RedisResult& result) {
    if (result.kind != RedisResult::Kind::kOk) {
      failing_.store(true, std::memory_order_relaxed);
      SetLastError(result.error);
      return;
    }
    absl::StatusOr<int64_t> replicas = ParseHeartbeatReply(result.reply);
    if (!replicas.ok()) {
      failing_.store(true, std::memory_order_relaxed);
      SetLastError(std::string(replicas.status().message()));
      return;
    }
    heartbeats_.fetch_add(1, std::memory_order_relaxed);
    failing_.store(false, std::memory_order_relaxed);
    // At least this replica: its own heartbeat was just recorded.
    replicas_.store(
        static_cast<int>(std::clamp<int64_t>(*replicas, 1, 1 << 20)),
        std::memory_order_relaxed);
  }

  void SetLastError(std::string error) ABSL_LOCKS_EXCLUDED(error_mu_) {
    absl::MutexLock lock(&error_mu_);
    last_error_ = std::move(error);
  }

  const GlobalLimiterOptions options_;
  const GlobalAllowanceOptions allowance_options_;
  const size_t max_keys_;
  RedisStore& store_;
  Clock& clock_;
  const std::string replica_id_;
  const std::string replica_key_;
  const std::shared_ptr<KeyState> keyless_;

  // Read by every call, written by the heartbeat: a count, no ordering needed.
  std::atomic<int> replicas_{0};
  std::atomic<int64_t> refills_{0};
  std::atomic<int64_t> tokens_granted_{0};
  std::atomic<int64_t> store_errors_{0};
  std::atomic<int64_t> heartbeats_{0};
  // For /routes only: a flag, no ordering with anything else.
  std::atomic<bool> failing_{false};

  absl::Mutex keys_mu_;
  absl::flat_hash_map<std::string, Slot> keys_ ABSL_GUARDED_BY(keys_mu_);
  std::list<std::string> lru_ ABSL_GUARDED_BY(keys_mu_);  // front: newest

  absl::Mutex queue_mu_;
  std::vector<std::pair<std::shared_ptr<KeyState>, int64_t>> queue_
      ABSL_GUARDED_BY(queue_mu_);

  absl::Mutex error_mu_;
  std::string last_error_ ABSL_GUARDED_BY(error_mu_);
};

GlobalLimiter::GlobalLimiter(GlobalLimiterOptions options, RedisStore& store,
                             Clock& clock)
    : core_(std::make_shared<Core>(std::move(options), store, clock)) {
  core_->StartHeartbeat();
}

GlobalLimiter::~GlobalLimiter() = default;

TakeResult GlobalLimiter::TryTake(std::string_view key, absl::Time now) {
  return core_->TryTake(key, now);
}

int GlobalLimiter::ReplicasApprox() const { return core_->Replicas(); }

GlobalLimiter::Stats GlobalLimiter::StatsApprox(absl::Time now) {
  return core_->StatsNow(now);
}

std::optional<GlobalAllowance::Stats> GlobalLimiter::KeyStatsApprox(
    std::string_view key, absl::Time now) {
  return core_->KeyStats(key, now);
}

}  // namespace bulwark::store
