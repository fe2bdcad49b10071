// BreakerStage: the route's circuit breaker in the chain (SPEC section 3). It
// admits an upstream call with a ticket or answers `circuit_open` (in shadow:
// counts and admits), and it owns the one rule that turns an upstream outcome
// into the breaker's success / failure / neither, for plain calls, flights and
// shadow flights alike:
//   - failure_codes from the answer are failures, other codes successes;
//   - an unreachable endpoint or a broken connection is a failure;
//   - a deadline expiry is a failure only when the upstream had the call at
//     least deadline_failure_min (shorter: neither), so deadlines too short to
//     meet cannot open the breaker for everyone;
//   - a stream refused unseen, a caller's cancellation and the sidecar's own
//     answers are neither.
//
// Thread-safety: const after construction; the breaker is thread-safe. Cost:
// one TryAcquire and one Record per upstream call.
#ifndef BULWARK_SIDECAR_CHAIN_BREAKER_STAGE_H_
#define BULWARK_SIDECAR_CHAIN_BREAKER_STAGE_H_

#include <bitset>
#include <memory>
#include <optional>
#include <string>

#include "bulwark/config/v1/config.pb.h"
#include "policies/circuit_breaker.h"
#include "policies/clock.h"
#include "sidecar/chain/verdict.h"
#include "sidecar/metrics.h"

namespace bulwark::chain {

// The breaker state as the metrics label it.
RouteMetrics::BreakerState ToMetricState(CircuitBreaker::State state);

class BreakerStage {
 public:
  using Ticket = CircuitBreaker::Ticket;

  static std::unique_ptr<CircuitBreaker> NewState(
      const config::v1::CircuitBreaker& config, const std::string& route,
      Clock& clock, RouteMetrics* metrics);
  BreakerStage(const config::v1::CircuitBreaker& config, std::string route,
               CircuitBreaker& breaker, RouteMetrics& metrics);

  // Admits (setting `ticket`, also in shadow when the breaker admits) or
  // answers circuit_open.
  Verdict Admit(absl::Time now, std::optional<Ticket>& ticket) const;
  // The one rule (see above).
  CircuitBreaker::Outcome Classify(const UpstreamOutcome& outcome) const;
  // Records `outcome` for `ticket` (if any) and clears it.
  void Settle(std::optional<Ticket>& ticket, const UpstreamOutcome& outcome,
              absl::Time now) const;
  // The sidecar answered or a flight carries the call: neither outcome.
  void Forget(std::optional<Ticket>& ticket) const;

  std::string DescribeJson() const;
  CircuitBreaker& breaker() const { return breaker_; }

 private:
  const std::string route_;
  std::bitset<17> failure_codes_;
  absl::Duration deadline_failure_min_;
  const bool shadow_;
  CircuitBreaker& breaker_;
  RouteMetrics& metrics_;
};

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_BREAKER_STAGE_H_
