// UpstreamStage: the last step of the chain (SPEC sections 3 and 9): pick a
// healthy, not ejected endpoint of the route's cluster by its balancing (or
// answer `no_healthy_endpoint`), feed outlier detection with each live
// outcome, and hold the route's retry policy: which calls may be retried or
// hedged (unary calls, known as for singleflight; with `methods: IDEMPOTENT`
// only those descriptor_sets mark IDEMPOTENT or NO_SIDE_EFFECTS), which
// answers are retried, the backoff and the budget. The attempts themselves
// run in Attempts (attempts.h).
//
// Thread-safety: const after construction; Cluster::Pick, outlier records and
// the budget are thread-safe. Cost: Cluster::Pick; with outlier detection one
// short lock per upstream outcome.
#ifndef BULWARK_SIDECAR_CHAIN_UPSTREAM_STAGE_H_
#define BULWARK_SIDECAR_CHAIN_UPSTREAM_STAGE_H_

#include <bitset>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_set.h"
#include "absl/types/span.h"
#include "bulwark/config/v1/config.pb.h"
#include "policies/clock.h"
#include "policies/retry_budget.h"
#include "sidecar/chain/outcome_rule.h"
#include "sidecar/chain/verdict.h"
#include "sidecar/cluster.h"
#include "sidecar/metrics.h"

namespace bulwark::chain {

// A route's `retry` block, parsed once.
struct RetryPolicy {
  int max_attempts = 3;
  std::bitset<17> retry_codes;
  absl::Duration initial_backoff = absl::Milliseconds(25);
  absl::Duration max_backoff = absl::Milliseconds(250);
  absl::Duration per_attempt_timeout = absl::ZeroDuration();  // 0: none
  absl::Duration hedge_delay = absl::ZeroDuration();          // 0: off
  uint64_t max_request_bytes = 65536;
};

class UpstreamStage {
 public:
  static std::unique_ptr<RetryBudget> NewBudget(const config::v1::Retry& retry);

  // `budget` (the route's live state) is required when the route has retry.
  // The method sets (from descriptor_sets) may be null.
  UpstreamStage(std::shared_ptr<Cluster> cluster,
                const config::v1::Route& route, RetryBudget* budget,
                RouteMetrics* metrics,
                const absl::flat_hash_set<std::string>* unary_methods,
                const absl::flat_hash_set<std::string>* idempotent_methods);

  // A healthy, not ejected endpoint, or nullptr (then answer
  // NoHealthyEndpoint()). The clock is read only with outlier detection or
  // PEAK_EWMA balancing.
  Endpoint* Pick(Clock& clock) const {
    return cluster_->Pick(cluster_->has_outlier_detection() ||
                                  cluster_->UsesLatency()
                              ? clock.Now()
                              : absl::InfinitePast());
  }
  // Another endpoint than those `tried` when there is one.
  Endpoint* PickOther(absl::Time now, absl::Span<Endpoint* const> tried) const {
    return cluster_->PickOther(now, tried);
  }
  Rejection NoHealthyEndpoint() const;
  // PEAK_EWMA: a hedge that lost, cancelled after `elapsed` upstream: the
  // endpoint took at least that long.
  void RecordCancelledAttempt(Endpoint& endpoint, absl::Duration elapsed,
                              absl::Time now) const {
    if (cluster_->UsesLatency()) {
      ObserveLatencyAtLeast(endpoint.load, elapsed, now);
    }
  }
  Cluster& cluster() const { return *cluster_; }

  // One live outcome (a call, a flight or an attempt) of `endpoint`: for
  // outlier detection, by the breaker's rule; for PEAK_EWMA, when
  // `latency_sample` (a unary-shaped call: its upstream time is a latency),
  // the upstream time: a latency when answered, a lower bound when the call
  // failed, timed out or was cancelled first.
  void RecordOutcome(Endpoint& endpoint, const UpstreamOutcome& outcome,
                     absl::Time now, bool latency_sample) const {
    if (latency_sample && cluster_->UsesLatency()) {
      RecordLatency(endpoint, outcome, now);
    }
    if (!cluster_->has_outlier_detection()) return;
    const OutcomeRule::Verdict verdict = rule_.Classify(outcome);
    if (verdict == OutcomeRule::Verdict::kNeither) return;
    RecordLiveOutcome(cluster_->endpoints(), endpoint,
                      verdict == OutcomeRule::Verdict::kFailure, now);
  }

  // The route's retry policy, or null without `retry`.
  const RetryPolicy* retry() const {
    return retry_.has_value() ? &*retry_ : nullptr;
  }
  // Whether calls of `path` may be retried and hedged (retry configured, the
  // method unary and, with IDEMPOTENT, marked safe to repeat).
  bool Retries(std::string_view path) const;
  // The most a held request may weigh, 5-byte prefix included, to be retried
  // (retry's max_request_bytes of message). Requires retry().
  uint64_t MaxRetriedRequestBytes() const {
    return retry_->max_request_bytes + 5;
  }
  // Whether a held request of `held_bytes` (prefix included) to `path` is
  // retried and hedged: Retries(path) and within MaxRetriedRequestBytes().
  bool RetriesHeld(std::string_view path, size_t held_bytes) const {
    return Retries(path) && held_bytes <= MaxRetriedRequestBytes();
  }
  RetryBudget* budget() const { return budget_; }
  RouteMetrics* metrics() const { return metrics_; }
  // The `retry` object of /routes.
  std::string DescribeRetryJson(absl::Time now) const;

 private:
  void RecordLatency(Endpoint& endpoint, const UpstreamOutcome& outcome,
                     absl::Time now) const;

  std::shared_ptr<Cluster> cluster_;
  const OutcomeRule rule_;
  std::optional<RetryPolicy> retry_;
  bool all_methods_ = false;
  bool exact_method_ = false;
  RetryBudget* budget_ = nullptr;
  RouteMetrics* metrics_ = nullptr;
  const absl::flat_hash_set<std::string>* unary_methods_;
  const absl::flat_hash_set<std::string>* idempotent_methods_;
};

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_UPSTREAM_STAGE_H_
