// GlobalLimiter decides whether a call may proceed under one route's global
// rate limit (SPEC section 8): the limit holds across every sidecar that
// uses the same Redis, domain and route, one shared bucket per limit key. The
// call path never waits for Redis: TryTake spends a key's local allowance
// (policies/global_allowance) and, when that allowance asks for a refill,
// queues the request for the store's thread, which runs the refill script
// and hands the grant (or the error) back to the allowance. A heartbeat a
// second (heartbeat_interval) records this replica in Redis and reads back
// the live replica count, which sizes start allowances, batches and the
// LOCAL fallback. What happens while Redis fails is on_store_error
// (LOCAL / ALLOW / DENY), decided per key as soon as its refill fails or
// times out (RedisClientOptions.timeout), and undone by its next grant.
//
// Keys: at most max_keys keyed allowances (least recently used forgotten;
// a forgotten key comes back with a fresh start allowance), plus the one
// for calls without a key, which is never evicted. A key longer than 256
// bytes (or starting with '#') is held as '#' + its hex SHA-256, so a key
// costs at most ~300 bytes here; its Redis key name is bounded likewise
// (global_bucket_script.h).
//
// Thread-safety: TryTake and the *Approx getters are thread-safe and never
// block on I/O: a keyed TryTake takes the key map's absl::Mutex (a lookup and
// an LRU splice), then the key's own; a refill request adds one short queue
// lock and, when the queue was empty, the store's Post (a mutex push and an
// eventfd write). The limiter may be destroyed on any thread while refills
// are in flight: its state lives on in the callbacks that still hold it,
// which then update nothing anyone reads; the heartbeat stops at its next
// tick. The store must outlive the limiter. Cost: O(1) per call (a hash of
// the key, two short critical sections, a SHA-256 only for a new key that
// needs one); about 1 Redis round trip per batch (refill_horizon of this
// sidecar's traffic) per active key, plus one heartbeat a second.
#ifndef BULWARK_SIDECAR_STORE_GLOBAL_LIMITER_H_
#define BULWARK_SIDECAR_STORE_GLOBAL_LIMITER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "policies/clock.h"
#include "policies/global_allowance.h"
#include "policies/token_bucket.h"
#include "sidecar/store/redis_store.h"

namespace bulwark::store {

struct GlobalLimiterOptions {
  // Routes with the same domain and route name share one limit per key
  // across every sidecar that uses the same Redis.
  std::string domain;
  std::string route;
  // The limit for all replicas together.
  double rate_per_second = 0;
  int64_t burst = 0;
  StoreErrorMode on_store_error = StoreErrorMode::kLocal;
  // Most keyed allowances held (the keyless one aside); values < 1 count as 1.
  int64_t max_keys = 10000;
  // This replica's id in the heartbeat set; empty: hostname, pid and a
  // random number.
  std::string replica_id;
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // A replica whose last heartbeat is this old no longer counts.
  absl::Duration replica_window = absl::Seconds(5);
  // As in GlobalAllowanceOptions.
  absl::Duration refill_horizon = absl::Milliseconds(100);
  absl::Duration store_retry_interval = absl::Milliseconds(250);
};

class GlobalLimiter {
 public:
  struct Stats {
    size_t keys = 0;      // keyed allowances held (the keyless one aside)
    int replicas = 0;     // as last seen; 0: never heard back
    int64_t refills = 0;  // refill scripts sent
    int64_t tokens_granted = 0;  // over all grants
    int64_t store_errors = 0;    // refills that failed or timed out
    int64_t heartbeats = 0;      // answered
    std::string last_error;      // of the latest failed refill or heartbeat
    // The latest refill or heartbeat to finish failed (error or timeout): keys
    // that ask the store now fall back to on_store_error.
    bool store_failing = false;
    GlobalAllowance::Stats keyless;  // the allowance of calls without a key
  };

  // Starts the heartbeat at once. `clock` must be the one the callers' `now`
  // is read from (MonotonicClock in production).
  GlobalLimiter(GlobalLimiterOptions options, RedisStore& store, Clock& clock);
  ~GlobalLimiter();
  GlobalLimiter(const GlobalLimiter&) = delete;
  GlobalLimiter& operator=(const GlobalLimiter&) = delete;

  // Takes one call from `key`'s allowance ("" for calls without a key).
  // Rejected: retry_after is the pushback.
  TakeResult TryTake(std::string_view key, absl::Time now);

  int ReplicasApprox() const;
  Stats StatsApprox(absl::Time now);
  // One key's allowance, if held.
  std::optional<GlobalAllowance::Stats> KeyStatsApprox(std::string_view key,
                                                       absl::Time now);

 private:
  class Core;
  std::shared_ptr<Core> core_;
};

}  // namespace bulwark::store

#endif  // BULWARK_SIDECAR_STORE_GLOBAL_LIMITER_H_
