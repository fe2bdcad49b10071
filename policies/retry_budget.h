// RetryBudget decides whether a route may send one more extra attempt (a retry
// or a hedge) of a call (SPEC section 9): over the last `window` (10 s), extra
// attempts stay at most the larger of `ratio` x the route's calls in that time
// and `min_per_second` x the window's seconds. A failing upstream therefore
// sees at most about (1 + ratio) times the calls, however many attempts each
// call may make: the budget, not max_attempts, is what stops a retry storm.
//
// Counts are kept in ten slices of window / 10 (a call leaves the window a
// slice at a time), so "the last 10 s" is exact to a second.
//
// RetryBackoff is the pause before retry number `retry` (1 = the first retry):
// gRPC's A6 "full jitter", uniform in [0, min(initial x 2^(retry-1), max)),
// so that many sidecars retrying one failure spread out instead of arriving
// together.
//
// Thread-safety: thread-safe, one short absl::Mutex critical section per call
// (every worker records the route's calls). Cost: O(1), no allocation.
#ifndef BULWARK_POLICIES_RETRY_BUDGET_H_
#define BULWARK_POLICIES_RETRY_BUDGET_H_

#include <array>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace bulwark {

// `random01` is a draw in [0, 1).
absl::Duration RetryBackoff(int retry, absl::Duration initial,
                            absl::Duration max, double random01);

class RetryBudget {
 public:
  struct Options {
    double ratio = 0.2;
    double min_per_second = 10;
    absl::Duration window = absl::Seconds(10);
  };

  explicit RetryBudget(const Options& options);

  RetryBudget(const RetryBudget&) = delete;
  RetryBudget& operator=(const RetryBudget&) = delete;

  // One client call on the route (counted once, whatever its attempts).
  void RecordCall(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Takes one extra attempt from the budget if it has one left (and counts
  // it); false: the attempt must not be sent.
  bool TryTakeExtra(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Extra attempts the budget would still allow now (for /routes); may be
  // stale as soon as it returns.
  double AvailableApprox(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  static constexpr int kSlices = 10;
  struct Slice {
    int64_t index = -1;  // which slice of time it counts (now / slice)
    int64_t calls = 0;
    int64_t extras = 0;
  };
  Slice& SliceAt(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  double AllowedLocked(absl::Time now, int64_t* extras)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const double ratio_;
  const double floor_;  // min_per_second x window seconds
  const absl::Duration slice_;

  absl::Mutex mu_;
  std::array<Slice, kSlices> slices_ ABSL_GUARDED_BY(mu_);
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_RETRY_BUDGET_H_
