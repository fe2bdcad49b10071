// OutlierState decides whether one endpoint should be ejected from balancing
// because live calls to it fail (SPEC section 9), and for how long:
//   - `consecutive_failures` failures in a row, or a failure share of at least
//     `failure_rate` once the last `window` holds `minimum_requests` calls,
//     ask for an ejection (Record returns kEject);
//   - an ejection lasts base_ejection_time x the ejections so far (this one
//     included), at most max_ejection_time; the count drops by one for each
//     base_ejection_time spent since the last ejection ended, so an endpoint
//     that recovered for good is soon treated as new again;
//   - a Watch stream's NOT_SERVING ejects until the stream says SERVING
//     (EjectUntilServing / Serving), whatever the counts.
// Whether an ejection asked for may happen (min_available: never fewer than
// that many endpoints healthy and not ejected) is the cluster's decision, which
// sees every endpoint; this class only keeps one endpoint's record. After an
// ejection the counts start afresh, so a returning endpoint is judged on calls
// made after its return.
//
// Failures are what the circuit breaker counts (the caller classifies them):
// this class takes a verdict per call, success or failure.
//
// Thread-safety: thread-safe; one short absl::Mutex critical section per
// call (workers record live calls, the admin thread reads). Cost: O(1), no
// allocation.
#ifndef BULWARK_POLICIES_OUTLIER_STATE_H_
#define BULWARK_POLICIES_OUTLIER_STATE_H_

#include <array>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace bulwark {

class OutlierState {
 public:
  struct Options {
    uint32_t consecutive_failures = 5;  // 0 = off
    double failure_rate = 0.5;          // > 1 = off
    uint32_t minimum_requests = 20;
    absl::Duration window = absl::Seconds(10);
    absl::Duration base_ejection_time = absl::Seconds(30);
    absl::Duration max_ejection_time = absl::Seconds(300);
    uint32_t min_available = 1;  // kept here for the cluster's check
  };

  enum class Verdict : uint8_t { kKeep, kEject };

  struct Snapshot {
    bool ejected = false;
    bool until_serving = false;  // ejected by a Watch NOT_SERVING
    absl::Duration time_left = absl::ZeroDuration();  // timed ejections
    uint32_t ejections = 0;  // the count behind base x ejections, decayed
    uint32_t consecutive_failures = 0;
  };

  explicit OutlierState(const Options& options);

  OutlierState(const OutlierState&) = delete;
  OutlierState& operator=(const OutlierState&) = delete;

  // One live call's verdict. kEject: the thresholds are crossed and the
  // endpoint is not ejected (the caller decides whether to Eject).
  Verdict Record(bool failure, absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Ejects for base x ejections (capped); returns when it ends.
  absl::Time Eject(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // A Watch stream said NOT_SERVING: ejected until Serving().
  void EjectUntilServing() ABSL_LOCKS_EXCLUDED(mu_);
  // The Watch stream said SERVING (ends an ejection it started).
  void Serving() ABSL_LOCKS_EXCLUDED(mu_);
  // Ends a timed ejection that is due; true exactly once per ejection ended.
  bool EndIfDue(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  bool Ejected(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  Snapshot GetSnapshot(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

  const Options& options() const { return options_; }

 private:
  static constexpr int kSlices = 10;
  struct Slice {
    int64_t index = -1;
    uint32_t calls = 0;
    uint32_t failures = 0;
  };
  uint32_t DecayedEjectionsLocked(absl::Time now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ResetCountsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const absl::Duration slice_;

  absl::Mutex mu_;
  std::array<Slice, kSlices> slices_ ABSL_GUARDED_BY(mu_);
  uint32_t consecutive_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t ejections_ ABSL_GUARDED_BY(mu_) = 0;
  // When the last timed ejection ended (the decay runs from there).
  absl::Time decay_from_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool timed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool until_serving_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_OUTLIER_STATE_H_
