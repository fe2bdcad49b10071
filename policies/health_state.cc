#include "policies/health_state.h"

#include <algorithm>

namespace bulwark {

HealthState::HealthState(const Options& options)
    : unhealthy_threshold_(std::max<uint32_t>(options.unhealthy_threshold, 1)),
      healthy_threshold_(std::max<uint32_t>(options.healthy_threshold, 1)) {}

HealthState::Transition HealthState::Record(ProbeResult result,
                                            absl::Time now) {
  absl::MutexLock lock(&mu_);
  last_result_ = result;
  last_probe_time_ = now;
  if (result == ProbeResult::kSuccess) {
    consecutive_failures_ = 0;
    ++consecutive_successes_;
    if (!healthy_ && consecutive_successes_ >= healthy_threshold_) {
      healthy_ = true;
      return Transition::kBecameHealthy;
    }
  } else {
    consecutive_successes_ = 0;
    ++consecutive_failures_;
    if (healthy_ && consecutive_failures_ >= unhealthy_threshold_) {
      healthy_ = false;
      return Transition::kBecameUnhealthy;
    }
  }
  return Transition::kUnchanged;
}

bool HealthState::Healthy() const {
  absl::MutexLock lock(&mu_);
  return healthy_;
}

HealthState::Snapshot HealthState::GetSnapshot() const {
  absl::MutexLock lock(&mu_);
  return Snapshot{.healthy = healthy_,
                  .last_result = last_result_,
                  .last_probe_time = last_probe_time_,
                  .consecutive_successes = consecutive_successes_,
                  .consecutive_failures = consecutive_failures_};
}

}  // namespace bulwark
