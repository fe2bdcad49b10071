// GlobalAllowance decides, for one key of a global rate limit (SPEC section
// 8), whether a call may proceed now without waiting for the shared store, and
// when this sidecar should ask the store for more tokens and how many. It is
// the local half of a local-first global bucket: the call path spends a local
// allowance that a background refiller (sidecar/store/global_limiter) tops up
// from the shared bucket in Redis, so a global limit adds no round trip to a
// call.
//
// The life of a key:
//   - Starting: no grant has arrived yet. Calls spend a start allowance of
//     burst / replicas (at least 1) while the first refill is under way. It
//     is lent, never given: what is spent from it is owed, asked for on top
//     of the next batches and repaid out of their grants, so the shared
//     bucket is charged for every call this sidecar admits. What is left of
//     it stays a one-time reserve for a call that finds the allowance empty
//     while a refill is under way (it is never replenished, so a key lends at
//     most burst / replicas in its life; an evicted and re-created key can
//     leak that much while the shared bucket is dry).
//   - Shared: calls spend granted tokens. When the allowance falls to the low
//     water mark (a fraction of the batch) the next call is told to ask for a
//     refill (exactly one at a time, until OnGrant or OnStoreError answers
//     it). A batch is this sidecar's recent share of the traffic: the calls
//     it saw over the last rate_window, as a rate, times refill_horizon,
//     clamped to [1, burst / replicas]. When a grant comes back short (the
//     shared bucket ran dry) the next request waits about as long as the
//     bucket needs to make a batch for this sidecar's share, at most
//     refill_horizon and at most 3/4 of the bucket's time to fill its burst;
//     calls rejected meanwhile get that wait as pushback.
//   - Fallback (OnStoreError): granted tokens are still spent first (the
//     start reserve is not); then
//     LOCAL enforces rate / replicas and burst / replicas with a local token
//     bucket (replicas as last seen, 1 if never seen), ALLOW admits, DENY
//     rejects. Every store_retry_interval a call asks for a refill again; the
//     first OnGrant returns the key to the shared bucket.
// The LOCAL bucket follows this sidecar's admitted calls in every mode (each
// admitted call also takes from it, when it can), so switching to LOCAL after
// a burst, or flapping between the store and LOCAL, never hands out a fresh
// full bucket on top of what was just admitted.
//
// Thread-safety: thread-safe; every method takes one absl::Mutex for a few
// dozen instructions and calls nothing out under it, so workers may share a
// key. Cost: O(1), no allocation, about the cost of a TokenBucket take. Memory:
// about 150 bytes per key; bounding how many keys exist is the owner's job
// (GlobalLimiter keeps at most max_keys, least recently used evicted).
#ifndef BULWARK_POLICIES_GLOBAL_ALLOWANCE_H_
#define BULWARK_POLICIES_GLOBAL_ALLOWANCE_H_

#include <cstdint>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "policies/token_bucket.h"

namespace bulwark {

// What a key does while the shared store cannot be used (SPEC on_redis_error).
enum class StoreErrorMode {
  kLocal,  // enforce rate / replicas and burst / replicas locally
  kAllow,  // admit every call
  kDeny,   // reject every call (rate_limited)
};

std::string_view StoreErrorModeName(StoreErrorMode mode);  // "LOCAL", ...

struct GlobalAllowanceOptions {
  // The limit for all replicas together, as in TokenBucketOptions.
  double rate_per_second = 0;
  int64_t burst = 0;
  // A batch lasts about this long at this sidecar's recent rate.
  absl::Duration refill_horizon = absl::Milliseconds(100);
  // Ask for the next batch when the allowance falls to this fraction of the
  // batch (0..1).
  double low_water_fraction = 0.5;
  // The recent rate is measured over this window (two half-overlapping
  // windows, weighted).
  absl::Duration rate_window = absl::Seconds(1);
  // In fallback, how often a call asks the store again.
  absl::Duration store_retry_interval = absl::Milliseconds(250);
};

// The answer to one call.
struct GlobalTake {
  TakeResult take;
  // > 0: this call claimed the key's one outstanding refill: the caller asks
  // the store for this many tokens and answers with OnGrant or OnStoreError.
  // 0: nothing to ask.
  int64_t refill_tokens = 0;
};

class GlobalAllowance {
 public:
  enum class Mode {
    kStarting,  // no grant yet: spending the start allowance
    kShared,    // spending grants from the shared bucket
    kFallback,  // the store failed: fallback_mode decides past the allowance
  };

  // Live state for /routes and tests.
  struct Stats {
    Mode mode = Mode::kStarting;
    StoreErrorMode fallback_mode = StoreErrorMode::kLocal;  // kFallback only
    int64_t tokens = 0;      // granted, not yet spent
    int64_t start_left = 0;  // start allowance not yet lent
    int64_t debt = 0;        // start allowance spent, not yet repaid
    bool refill_in_flight = false;
    int64_t last_batch = 0;  // the batch size of the latest request
    int replicas = 1;        // as last seen
    double local_rate = 0;   // calls per second seen here recently
  };

  // A key first seen at `now`; `replicas` as last seen (values < 1 count as
  // 1).
  GlobalAllowance(const GlobalAllowanceOptions& options, int replicas,
                  absl::Time now);

  GlobalAllowance(const GlobalAllowance&) = delete;
  GlobalAllowance& operator=(const GlobalAllowance&) = delete;

  // Decides one call at `now`; never waits.
  GlobalTake TryTake(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

  // The store granted `tokens` (0 up to what was asked) for the outstanding
  // request; `replicas` is the replica count as last seen (values < 1 keep
  // the previous one). Returns the key to the shared bucket.
  void OnGrant(int64_t tokens, absl::Time now, int replicas = 0)
      ABSL_LOCKS_EXCLUDED(mu_);

  // The outstanding request failed (error or timeout): switch to `mode`
  // (tokens granted earlier are still spent first).
  void OnStoreError(absl::Time now, StoreErrorMode mode)
      ABSL_LOCKS_EXCLUDED(mu_);

  // A snapshot; stale as soon as it returns.
  Stats StatsApprox(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Starts a new rate window when `now` is past the current one.
  void Roll(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  double LocalRate(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t BatchSize(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool RefillDue(absl::Time now, int64_t batch) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetReplicas(int replicas) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  TakeResult Admit(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  TakeResult Reject(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a short grant: how long the shared bucket needs to make one batch
  // for this sidecar's share, at most three quarters of the time it takes to
  // fill its whole burst (so no token is lost to the bucket's cap while this
  // sidecar waits), within [1 ms, refill_horizon].
  absl::Duration DryWait() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const GlobalAllowanceOptions options_;

  absl::Mutex mu_;
  Mode mode_ ABSL_GUARDED_BY(mu_) = Mode::kStarting;
  StoreErrorMode fallback_mode_ ABSL_GUARDED_BY(mu_) = StoreErrorMode::kLocal;
  int replicas_ ABSL_GUARDED_BY(mu_);
  int64_t tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t start_left_ ABSL_GUARDED_BY(mu_);
  int64_t debt_ ABSL_GUARDED_BY(mu_) = 0;
  bool in_flight_ ABSL_GUARDED_BY(mu_) = false;
  int64_t requested_ ABSL_GUARDED_BY(mu_) = 0;  // of the outstanding request
  int64_t last_batch_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time next_request_at_ ABSL_GUARDED_BY(mu_);  // earliest next request
  // Calls seen in the current and the previous rate window.
  absl::Time window_start_ ABSL_GUARDED_BY(mu_);
  int64_t calls_current_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t calls_previous_ ABSL_GUARDED_BY(mu_) = 0;
  const absl::Time created_;
  // The LOCAL fallback bucket: rate / replicas, burst / replicas.
  TokenBucketLimits local_limits_ ABSL_GUARDED_BY(mu_);
  TokenBucketLevel local_level_ ABSL_GUARDED_BY(mu_);
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_GLOBAL_ALLOWANCE_H_
