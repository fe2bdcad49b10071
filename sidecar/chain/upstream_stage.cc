#include "sidecar/chain/upstream_stage.h"

#include "absl/strings/str_cat.h"
#include "sidecar/config_loader.h"

namespace bulwark::chain {

std::unique_ptr<RetryBudget> UpstreamStage::NewBudget(
    const config::v1::Retry& retry) {
  return std::make_unique<RetryBudget>(RetryBudget::Options{
      .ratio = retry.budget().has_ratio() ? retry.budget().ratio() : 0.2,
      .min_per_second = retry.budget().has_min_per_second()
                            ? retry.budget().min_per_second()
                            : 10});
}

UpstreamStage::UpstreamStage(
    std::shared_ptr<Cluster> cluster, const config::v1::Route& route,
    RetryBudget* budget, RouteMetrics* metrics,
    const absl::flat_hash_set<std::string>* unary_methods,
    const absl::flat_hash_set<std::string>* idempotent_methods)
    : cluster_(std::move(cluster)),
      rule_(route.has_circuit_breaker() ? OutcomeRule(route.circuit_breaker())
                                        : OutcomeRule()),
      budget_(budget),
      metrics_(metrics),
      unary_methods_(unary_methods),
      idempotent_methods_(idempotent_methods) {
  exact_method_ =
      !route.match().service().empty() && !route.match().method().empty();
  if (!route.has_retry() || budget_ == nullptr) return;
  const config::v1::Retry& r = route.retry();
  RetryPolicy policy{
      .max_attempts = static_cast<int>(r.max_attempts()),
      .initial_backoff = ToAbslDuration(r.initial_backoff()),
      .max_backoff = ToAbslDuration(r.max_backoff()),
      .per_attempt_timeout = ToAbslDuration(r.per_attempt_timeout()),
      .hedge_delay = ToAbslDuration(r.hedge_delay()),
      .max_request_bytes = r.max_request_bytes()};
  for (int code : r.retry_codes()) {
    // RESOURCE_EXHAUSTED is never retried (the validator refuses it too).
    if (code > 0 && code < 17 &&
        code != static_cast<int>(absl::StatusCode::kResourceExhausted)) {
      policy.retry_codes.set(code);
    }
  }
  retry_ = policy;
  all_methods_ = r.methods() == config::v1::Retry::ALL;
}

bool UpstreamStage::Retries(std::string_view path) const {
  if (!retry_.has_value()) return false;
  const absl::string_view key(path.data(), path.size());
  if (!all_methods_) {
    return idempotent_methods_ != nullptr && idempotent_methods_->contains(key);
  }
  return exact_method_ ||
         (unary_methods_ != nullptr && unary_methods_->contains(key));
}

void UpstreamStage::RecordLatency(Endpoint& endpoint,
                                  const UpstreamOutcome& outcome,
                                  absl::Time now) const {
  using Kind = UpstreamOutcome::Kind;
  switch (outcome.kind) {
    case Kind::kNotSent:
    case Kind::kRefused:
      return;  // the upstream never had it
    case Kind::kAnswered:
      // A quick failure must not make an endpoint look fast (it would draw
      // the calls it fails): only an answer that is not a failure lowers the
      // estimate.
      if (rule_.Classify(outcome) != OutcomeRule::Verdict::kFailure) {
        ObserveLatency(endpoint.load, outcome.upstream_time, now);
        return;
      }
      break;
    case Kind::kTransportFailure:
    case Kind::kDeadline:
    case Kind::kClientCancelled:
      break;
  }
  ObserveLatencyAtLeast(endpoint.load, outcome.upstream_time, now);
}

Rejection UpstreamStage::NoHealthyEndpoint() const {
  return {.code = absl::StatusCode::kUnavailable,
          .reason = RejectReason::kNoHealthyEndpoint,
          .message = absl::StrCat("cluster ", cluster_->name(),
                                  " has no healthy endpoint")};
}

std::string UpstreamStage::DescribeRetryJson(absl::Time now) const {
  if (!retry_.has_value()) return "null";
  return absl::StrCat(
      "{\"max_attempts\": ", retry_->max_attempts,
      ", \"hedge_delay_seconds\": ", absl::ToDoubleSeconds(retry_->hedge_delay),
      ", \"budget_left\": ", budget_->AvailableApprox(now), "}");
}

}  // namespace bulwark::chain
