// BreakerStage: the route's circuit breaker in the chain (SPEC section 3). It
// admits an upstream call (or attempt) with a ticket or answers
// `circuit_open` (in shadow: counts and admits), and settles each ticket by
// the one rule of OutcomeRule (outcome_rule.h) for plain calls, flights,
// attempts and shadow flights alike.
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
#include "sidecar/chain/outcome_rule.h"
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
  // The one rule (OutcomeRule), as the breaker counts it.
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
  const OutcomeRule rule_;
  const bool shadow_;
  CircuitBreaker& breaker_;
  RouteMetrics& metrics_;
};

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_BREAKER_STAGE_H_
