#include "sidecar/chain/outcome_rule.h"

#include "absl/status/status.h"
#include "sidecar/config_loader.h"

namespace bulwark::chain {

OutcomeRule::OutcomeRule() {
  for (absl::StatusCode code :
       {absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded,
        absl::StatusCode::kInternal, absl::StatusCode::kUnknown,
        absl::StatusCode::kDataLoss}) {
    failure_codes_.set(static_cast<size_t>(code));
  }
}

OutcomeRule::OutcomeRule(const config::v1::CircuitBreaker& config)
    : deadline_failure_min_(config.has_deadline_failure_min()
                                ? ToAbslDuration(config.deadline_failure_min())
                                : kDefaultDeadlineFailureMin) {
  for (int code : config.failure_codes()) {
    if (code >= 0 && code < 17) failure_codes_.set(code);
  }
}

OutcomeRule::Verdict OutcomeRule::Classify(
    const UpstreamOutcome& outcome) const {
  using Kind = UpstreamOutcome::Kind;
  switch (outcome.kind) {
    case Kind::kNotSent:
    case Kind::kRefused:
    case Kind::kClientCancelled:
      return Verdict::kNeither;
    case Kind::kTransportFailure:
      return Verdict::kFailure;
    case Kind::kDeadline:
      return outcome.upstream_time >= deadline_failure_min_ ? Verdict::kFailure
                                                            : Verdict::kNeither;
    case Kind::kAnswered:
      break;
  }
  const int code = outcome.grpc_code;
  if (code == static_cast<int>(absl::StatusCode::kCancelled)) {
    return Verdict::kNeither;
  }
  if (code == static_cast<int>(absl::StatusCode::kDeadlineExceeded) &&
      failure_codes_.test(code)) {
    // The upstream's own deadline answer: the same rule as ours.
    return outcome.upstream_time >= deadline_failure_min_ ? Verdict::kFailure
                                                          : Verdict::kNeither;
  }
  return code >= 0 && code < 17 && failure_codes_.test(code)
             ? Verdict::kFailure
             : Verdict::kSuccess;
}

}  // namespace bulwark::chain
