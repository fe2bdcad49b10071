// HealthState decides whether one endpoint is healthy from its stream of probe
// results: `unhealthy_threshold` consecutive failed probes (failure or timeout)
// mark a healthy endpoint unhealthy, `healthy_threshold` consecutive successful
// probes mark an unhealthy one healthy again. A single probe against the
// current state only moves its counter, which is what keeps one flaky probe
// from flapping traffic.
//
// Initial state: healthy, before any probe. A freshly started sidecar (or an
// endpoint added by a reload) then serves at once instead of answering
// no_healthy_endpoint for healthy_threshold probe intervals; an endpoint that
// is in fact down is found out by the same thresholds as at any other time, and
// meanwhile its calls fail as transport errors, which the circuit breaker sees.
// This also matches a cluster without health_check, whose endpoints are assumed
// healthy. GetSnapshot().last_result is empty until the first probe, so the
// admin page can tell "healthy, not yet probed" from "healthy, probed".
//
// Thread-safety: thread-safe (one short absl::Mutex critical section per call,
// nothing called under it): the health checker records from its worker while
// the admin thread reads. The data path does not read this class; it reads the
// endpoint's atomic flag, which the checker updates when Record reports a
// transition. Cost: O(1), no allocation.
#ifndef BULWARK_POLICIES_HEALTH_STATE_H_
#define BULWARK_POLICIES_HEALTH_STATE_H_

#include <cstdint>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace bulwark {

enum class ProbeResult : uint8_t { kSuccess, kFailure, kTimeout };

class HealthState {
 public:
  struct Options {
    // Consecutive failed probes (kFailure or kTimeout) that make a healthy
    // endpoint unhealthy; values below 1 act as 1.
    uint32_t unhealthy_threshold = 3;
    // Consecutive successful probes that make an unhealthy endpoint healthy;
    // below 1 acts as 1.
    uint32_t healthy_threshold = 2;
  };

  // What one recorded probe did to the healthy flag.
  enum class Transition : uint8_t {
    kUnchanged,
    kBecameHealthy,
    kBecameUnhealthy
  };

  // A consistent copy for the admin page and metrics.
  struct Snapshot {
    bool healthy;
    // Empty until the first probe.
    std::optional<ProbeResult> last_result;
    // absl::InfinitePast() until the first probe.
    absl::Time last_probe_time;
    // The run of equal verdicts that ends with the last probe (the other count
    // is 0).
    uint32_t consecutive_successes;
    uint32_t consecutive_failures;
  };

  explicit HealthState(const Options& options);

  HealthState(const HealthState&) = delete;
  HealthState& operator=(const HealthState&) = delete;

  // Counts one probe that ended at `now`.
  Transition Record(ProbeResult result, absl::Time now)
      ABSL_LOCKS_EXCLUDED(mu_);

  bool Healthy() const ABSL_LOCKS_EXCLUDED(mu_);
  Snapshot GetSnapshot() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const uint32_t unhealthy_threshold_;
  const uint32_t healthy_threshold_;

  mutable absl::Mutex mu_;
  bool healthy_ ABSL_GUARDED_BY(mu_) = true;
  std::optional<ProbeResult> last_result_ ABSL_GUARDED_BY(mu_);
  absl::Time last_probe_time_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint32_t consecutive_successes_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t consecutive_failures_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_HEALTH_STATE_H_
