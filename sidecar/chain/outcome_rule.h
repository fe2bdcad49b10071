// OutcomeRule: the one rule that turns an upstream outcome into a success, a
// failure or neither (SPEC section 3), shared by the circuit breaker, outlier
// detection and the retry decision, for plain calls, flights and attempts:
//   - failure_codes from the answer are failures, other codes successes
//     (CANCELLED is neither);
//   - an unreachable endpoint or a broken connection is a failure;
//   - a deadline expiry (ours, or the upstream's DEADLINE_EXCEEDED when it is
//     a failure code) is a failure only when the upstream had the call at
//     least deadline_failure_min (shorter: neither), so deadlines too short to
//     meet cannot open a breaker or eject an endpoint for everyone;
//   - a stream refused unseen, a caller's cancellation and the sidecar's own
//     answers are neither.
// Without a circuit_breaker block the SPEC defaults apply (failure codes
// UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, DATA_LOSS; 100 ms).
//
// Thread-safety: immutable. Cost: a switch and a bit test.
#ifndef BULWARK_SIDECAR_CHAIN_OUTCOME_RULE_H_
#define BULWARK_SIDECAR_CHAIN_OUTCOME_RULE_H_

#include <bitset>
#include <cstdint>

#include "absl/time/time.h"
#include "bulwark/config/v1/config.pb.h"
#include "sidecar/chain/verdict.h"

namespace bulwark::chain {

class OutcomeRule {
 public:
  enum class Verdict : uint8_t { kSuccess, kFailure, kNeither };

  static constexpr absl::Duration kDefaultDeadlineFailureMin =
      absl::Milliseconds(100);

  // The SPEC defaults.
  OutcomeRule();
  // The route's breaker settings (failure_codes, deadline_failure_min).
  explicit OutcomeRule(const config::v1::CircuitBreaker& config);

  Verdict Classify(const UpstreamOutcome& outcome) const;

 private:
  std::bitset<17> failure_codes_;
  absl::Duration deadline_failure_min_ = kDefaultDeadlineFailureMin;
};

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_OUTCOME_RULE_H_
