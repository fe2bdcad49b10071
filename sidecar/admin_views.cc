#include "sidecar/admin_views.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sidecar/json_string.h"

namespace bulwark {
namespace {

std::string HealthResultJson(const std::optional<ProbeResult>& result) {
  if (!result.has_value()) return "null";
  switch (*result) {
    case ProbeResult::kSuccess:
      return "\"success\"";
    case ProbeResult::kFailure:
      return "\"failure\"";
    case ProbeResult::kTimeout:
      return "\"timeout\"";
  }
  return "null";
}

}  // namespace

AdminServer::Readiness ReadinessOf(const Snapshot& snapshot, bool draining) {
  if (draining) return {.ready = false, .reason = "draining"};
  for (const auto& cluster : snapshot.cluster_list) {
    if (!cluster->AnyHealthy()) {
      return {.ready = false,
              .reason = absl::StrCat("cluster ", cluster->name(),
                                     " has no healthy endpoint")};
    }
  }
  return {.ready = true, .reason = ""};
}

void RefreshGauges(const Snapshot& snapshot) {
  for (const auto& route : snapshot.routes->routes()) {
    if (route->rate_limit != nullptr) {
      route->metrics->Tokens().Set(route->rate_limit->TokensApprox());
      if (route->rate_limit->is_global()) {
        route->metrics->GlobalReplicas().Set(
            route->rate_limit->GlobalReplicasApprox());
      }
    }
    if (route->breaker != nullptr) {
      route->metrics->SetBreakerState(chain::ToMetricState(
          route->breaker->breaker().SnapshotApprox().state));
    }
    if (route->concurrency != nullptr) {
      const ConcurrencyLimiter& limiter = route->concurrency->limiter();
      route->metrics->InFlight().Set(limiter.InFlightApprox());
      route->metrics->Queued().Set(limiter.QueuedApprox());
      route->metrics->Limit().Set(limiter.LimitApprox());
    }
  }
  for (const auto& cluster : snapshot.cluster_list) {
    for (const auto& endpoint : cluster->endpoints()) {
      endpoint->metrics->SetHealthy(
          endpoint->load.healthy.load(std::memory_order_relaxed));
      if (endpoint->outlier != nullptr) {
        endpoint->metrics->SetEjected(
            endpoint->load.ejected.load(std::memory_order_relaxed));
      }
    }
  }
}

std::string RoutesJson(const Snapshot& snapshot, absl::Time now,
                       int64_t open_streams) {
  std::string out = "{\n  \"routes\": [";
  bool first = true;
  for (const auto& route : snapshot.routes->routes()) {
    absl::StrAppend(&out, first ? "\n" : ",\n",
                    "    {\"name\": ", JsonString(route->name),
                    ", \"cluster\": ", JsonString(route->cluster->name()));
    first = false;
    // One object per configured policy, named as its config block (SPEC
    // section 4).
    if (route->rate_limit != nullptr) {
      absl::StrAppend(&out,
                      ", \"rate_limit\": ", route->rate_limit->DescribeJson());
    }
    if (route->breaker != nullptr) {
      absl::StrAppend(
          &out, ", \"circuit_breaker\": ", route->breaker->DescribeJson());
    }
    if (route->concurrency != nullptr) {
      absl::StrAppend(
          &out, ", \"concurrency\": ", route->concurrency->DescribeJson());
    }
    if (route->singleflight != nullptr) {
      absl::StrAppend(
          &out, ", \"singleflight\": ", route->singleflight->DescribeJson());
    }
    if (route->upstream->retry() != nullptr) {
      absl::StrAppend(&out,
                      ", \"retry\": ", route->upstream->DescribeRetryJson(now));
    }
    absl::StrAppend(
        &out, ", \"active_calls\": ",
        route->state->active_calls.load(std::memory_order_relaxed),
        ", \"last_minute\": ", route->state->recent.LastMinuteJson(now));
    out += "}";
  }
  out += "\n  ],\n  \"clusters\": [";
  first = true;
  for (const auto& cluster : snapshot.cluster_list) {
    absl::StrAppend(&out, first ? "\n" : ",\n",
                    "    {\"name\": ", JsonString(cluster->name()),
                    ", \"endpoints\": [");
    first = false;
    bool first_ep = true;
    for (const auto& endpoint : cluster->endpoints()) {
      absl::StrAppend(
          &out, first_ep ? "" : ", ",
          "{\"address\": ", JsonString(endpoint->address.ToString()),
          ", \"resolved\": ", JsonString(endpoint->resolved),
          ", \"healthy\": ", endpoint->load.healthy.load() ? "true" : "false",
          ", \"in_flight\": ", endpoint->load.in_flight.load(),
          ", \"ejected\": ", endpoint->load.ejected.load() ? "true" : "false");
      if (cluster->UsesLatency()) {
        // PEAK_EWMA (SPEC section 3): the latency estimate the balancer
        // weighs calls in flight by; null before the first sample.
        const std::optional<absl::Duration> estimate =
            LatencyEstimate(endpoint->load, now);
        absl::StrAppend(
            &out, ", \"latency_estimate_ms\": ",
            estimate.has_value()
                ? absl::StrCat(absl::ToDoubleMilliseconds(*estimate))
                : "null");
      }
      if (endpoint->outlier != nullptr) {
        // Outlier detection (SPEC section 9): time left of a timed ejection
        // (null while ejected until a Watch stream says SERVING).
        const OutlierState::Snapshot o = endpoint->outlier->GetSnapshot(now);
        absl::StrAppend(
            &out, ", \"ejection_seconds_left\": ",
            o.until_serving ? "null"
                            : absl::StrCat(absl::ToDoubleSeconds(o.time_left)),
            ", \"ejections\": ", o.ejections, ", \"ejected_until_serving\": ",
            o.until_serving ? "true" : "false");
      }
      if (endpoint->health != nullptr) {
        // The heartbeat as the checker last saw it; null before the first
        // probe.
        const HealthState::Snapshot h = endpoint->health->GetSnapshot();
        absl::StrAppend(
            &out, ", \"last_probe_result\": ", HealthResultJson(h.last_result),
            ", \"seconds_since_last_probe\": ",
            h.last_result.has_value()
                ? absl::StrCat(absl::ToDoubleSeconds(now - h.last_probe_time))
                : "null");
      }
      out += "}";
      first_ep = false;
    }
    out += "]}";
  }
  absl::StrAppend(&out, "\n  ],\n  \"open_streams\": ", open_streams, "\n}\n");
  return out;
}

}  // namespace bulwark
