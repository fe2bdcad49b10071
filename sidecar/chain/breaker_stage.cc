#include "sidecar/chain/breaker_stage.h"

#include "absl/strings/str_cat.h"
#include "sidecar/config_loader.h"
#include "sidecar/log.h"

namespace bulwark::chain {

RouteMetrics::BreakerState ToMetricState(CircuitBreaker::State state) {
  switch (state) {
    case CircuitBreaker::State::kOpen:
      return RouteMetrics::BreakerState::kOpen;
    case CircuitBreaker::State::kHalfOpen:
      return RouteMetrics::BreakerState::kHalfOpen;
    default:
      return RouteMetrics::BreakerState::kClosed;
  }
}

std::unique_ptr<CircuitBreaker> BreakerStage::NewState(
    const config::v1::CircuitBreaker& cb, const std::string& route,
    Clock& clock, RouteMetrics* metrics) {
  if (metrics != nullptr) {
    metrics->SetBreakerState(RouteMetrics::BreakerState::kClosed);
  }
  return std::make_unique<CircuitBreaker>(
      CircuitBreakerOptions{
          .consecutive_failures = cb.consecutive_failures(),
          .failure_rate = cb.failure_rate(),
          .minimum_requests = cb.minimum_requests(),
          .window = ToAbslDuration(cb.window()),
          .open_duration = ToAbslDuration(cb.open_duration()),
          .half_open_requests = cb.half_open_requests(),
          .slow_call_duration = ToAbslDuration(cb.slow_call_duration()),
          .slow_call_rate = cb.slow_call_rate(),
      },
      clock,
      [metrics, route](CircuitBreaker::State from, CircuitBreaker::State to) {
        if (metrics != nullptr) {
          metrics->SetBreakerState(ToMetricState(to));
          metrics->BreakerTransitions(ToMetricState(to)).Increment();
        }
        Log(LogLevel::kWarning, "route %s: circuit breaker %s -> %s", route,
            std::string(CircuitBreaker::StateName(from)),
            std::string(CircuitBreaker::StateName(to)));
      });
}

BreakerStage::BreakerStage(const config::v1::CircuitBreaker& config,
                           std::string route, CircuitBreaker& breaker,
                           RouteMetrics& metrics)
    : route_(std::move(route)),
      rule_(config),
      shadow_(config.shadow()),
      breaker_(breaker),
      metrics_(metrics) {}

Verdict BreakerStage::Admit(absl::Time now,
                            std::optional<Ticket>& ticket) const {
  CircuitBreaker::Admission admission = breaker_.TryAcquire(now);
  if (admission.kind == CircuitBreaker::Admission::kAdmitted) {
    ticket = admission.ticket;
    return Verdict::Continue();
  }
  if (shadow_) {
    metrics_.ShadowRejections(RejectReason::kCircuitOpen).Increment();
    return Verdict::Continue();
  }
  return Verdict::Answer(
      {.code = absl::StatusCode::kUnavailable,
       .reason = RejectReason::kCircuitOpen,
       .message = absl::StrCat("circuit breaker of route ", route_, " is open"),
       .pushback = admission.retry_after});
}

CircuitBreaker::Outcome BreakerStage::Classify(
    const UpstreamOutcome& outcome) const {
  switch (rule_.Classify(outcome)) {
    case OutcomeRule::Verdict::kSuccess:
      return CircuitBreaker::Outcome::kSuccess;
    case OutcomeRule::Verdict::kFailure:
      return CircuitBreaker::Outcome::kFailure;
    case OutcomeRule::Verdict::kNeither:
      break;
  }
  return CircuitBreaker::Outcome::kIgnored;
}

void BreakerStage::Settle(std::optional<Ticket>& ticket,
                          const UpstreamOutcome& outcome,
                          absl::Time now) const {
  if (!ticket.has_value()) return;
  breaker_.Record(*ticket, Classify(outcome), now);
  ticket.reset();
}

void BreakerStage::Forget(std::optional<Ticket>& ticket) const {
  if (!ticket.has_value()) return;
  breaker_.Record(*ticket, CircuitBreaker::Outcome::kIgnored);
  ticket.reset();
}

std::string BreakerStage::DescribeJson() const {
  const CircuitBreaker::Snapshot b = breaker_.SnapshotApprox();
  return absl::StrCat(
      "{\"state\": \"", std::string(CircuitBreaker::StateName(b.state)),
      "\", \"consecutive_failures\": ", b.consecutive_failures,
      ", \"window_requests\": ", b.window_requests,
      ", \"window_failures\": ", b.window_failures,
      ", \"window_slow_calls\": ", b.window_slow_calls,
      ", \"half_open_probes_in_flight\": ", b.half_open_probes_in_flight,
      ", \"seconds_until_half_open\": ",
      absl::ToDoubleSeconds(b.time_until_half_open),
      ", \"shadow\": ", shadow_ ? "true" : "false", "}");
}

}  // namespace bulwark::chain
