#include "sidecar/metrics.h"

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "prometheus/text_serializer.h"

namespace bulwark {
namespace {

constexpr std::array<std::string_view, kGrpcCodeCount> kGrpcCodeNames = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};
constexpr int kUnknownCode = 2;

constexpr std::array<std::string_view, kRejectReasonCount> kRejectReasonNames =
    {
        "rate_limited",  "circuit_open",        "concurrency_limit",
        "queue_timeout", "no_healthy_endpoint", "message_too_large",
        "coalesced",     "load_shed",
};

constexpr std::array<std::string_view, 3> kBreakerStateNames = {
    "closed", "open", "half_open"};
constexpr std::array<std::string_view, 2> kRoleNames = {"leader", "follower"};
constexpr std::array<std::string_view, 3> kAttemptKindNames = {"first", "retry",
                                                               "hedge"};
constexpr std::array<std::string_view, 3> kHealthCheckResultNames = {
    "success", "failure", "timeout"};
constexpr std::array<std::string_view, 3> kRedisResultNames = {"ok", "error",
                                                               "timeout"};

// An out-of-range code counts as UNKNOWN (as gRPC maps it) rather than indexing
// past the cache: the code comes from an upstream's trailers, which the sidecar
// does not control.
int CodeIndex(int code) {
  return code >= 0 && code < kGrpcCodeCount ? code : kUnknownCode;
}

// Call durations of a sidecar range from ~100 µs (a local rejection) to seconds
// (a slow upstream, a queued call); a 1-2.5-5 series per decade keeps relative
// error near 2.5x with 16 buckets, so one route costs 19 series, not hundreds.
std::vector<double> DurationBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0,  10.0};
}

prometheus::Labels Labels1(std::string_view k, std::string_view v) {
  return {{std::string(k), std::string(v)}};
}

prometheus::Labels AddLabel(prometheus::Labels labels, std::string_view k,
                            std::string_view v) {
  labels.emplace(std::string(k), std::string(v));
  return labels;
}

}  // namespace

std::string_view GrpcCodeName(int code) {
  return kGrpcCodeNames[CodeIndex(code)];
}

std::string_view RejectReasonName(RejectReason reason) {
  return kRejectReasonNames[static_cast<size_t>(reason)];
}

// --- Histogram ---

Histogram::Histogram(const std::vector<double>& bounds)
    : bounds_(bounds), counts_(new std::atomic<uint64_t>[bounds.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    counts_[i].store(0, std::memory_order_relaxed);
  }
}

void Histogram::Observe(double value) {
  // The first bucket whose upper bound is >= value (Prometheus buckets are
  // "less than or equal"); past the last bound, +Inf.
  const size_t i = static_cast<size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) -
      bounds_.begin());
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  double sum = sum_.load(std::memory_order_relaxed);
  while (!sum_.compare_exchange_weak(sum, sum + value,
                                     std::memory_order_relaxed)) {
  }
}

prometheus::ClientMetric Histogram::Collect() const {
  prometheus::ClientMetric metric;
  auto& out = metric.histogram;
  out.bucket.reserve(bounds_.size() + 1);
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    prometheus::ClientMetric::Bucket bucket;
    bucket.cumulative_count = cumulative;
    bucket.upper_bound = i < bounds_.size()
                             ? bounds_[i]
                             : std::numeric_limits<double>::infinity();
    out.bucket.push_back(bucket);
  }
  out.sample_count = cumulative;
  out.sample_sum = sum_.load(std::memory_order_relaxed);
  return metric;
}

namespace metrics_internal {

HistogramFamily::HistogramFamily(std::string name, std::string help,
                                 std::vector<double> bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      bounds_(std::move(bounds)) {}

Histogram& HistogramFamily::Add(const prometheus::Labels& labels) {
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Histogram>& slot = series_[labels];
  if (slot == nullptr) slot = std::make_unique<Histogram>(bounds_);
  return *slot;
}

void HistogramFamily::CollectInto(
    std::vector<prometheus::MetricFamily>& out) const {
  absl::MutexLock lock(&mu_);
  if (series_.empty()) return;
  prometheus::MetricFamily family;
  family.name = name_;
  family.help = help_;
  family.type = prometheus::MetricType::Histogram;
  family.metric.reserve(series_.size());
  for (const auto& [labels, series] : series_) {
    prometheus::ClientMetric metric = series->Collect();
    for (const auto& [key, value] : labels) {
      metric.label.push_back(prometheus::ClientMetric::Label{key, value});
    }
    family.metric.push_back(std::move(metric));
  }
  out.push_back(std::move(family));
}

// Help texts are the "meaning" column of SPEC section 5.
struct Families {
  explicit Families(prometheus::Registry& registry)
      : requests(prometheus::BuildCounter()
                     .Name("bulwark_requests_total")
                     .Help("downstream calls by final status code name (OK, "
                           "UNAVAILABLE, ...)")
                     .Register(registry)),
        request_duration("bulwark_request_duration_seconds",
                         "downstream call time in the sidecar",
                         DurationBuckets()),
        rejections(
            prometheus::BuildCounter()
                .Name("bulwark_rejections_total")
                .Help("calls answered by a policy (reasons of section 3)")
                .Register(registry)),
        shadow_rejections(prometheus::BuildCounter()
                              .Name("bulwark_shadow_rejections_total")
                              .Help("calls a shadow policy would have rejected")
                              .Register(registry)),
        upstream_requests(prometheus::BuildCounter()
                              .Name("bulwark_upstream_requests_total")
                              .Help("calls sent upstream")
                              .Register(registry)),
        upstream_duration("bulwark_upstream_request_duration_seconds",
                          "upstream call time", DurationBuckets()),
        breaker_state(
            prometheus::BuildGauge()
                .Name("bulwark_circuit_breaker_state")
                .Help("1 for the current state, 0 for others (closed, open, "
                      "half_open)")
                .Register(registry)),
        breaker_transitions(
            prometheus::BuildCounter()
                .Name("bulwark_circuit_breaker_transitions_total")
                .Help("state changes")
                .Register(registry)),
        tokens(prometheus::BuildGauge()
                   .Name("bulwark_rate_limit_tokens")
                   .Help("tokens left in the shared bucket")
                   .Register(registry)),
        in_flight(prometheus::BuildGauge()
                      .Name("bulwark_concurrency_in_flight")
                      .Help("calls holding a slot")
                      .Register(registry)),
        queued(prometheus::BuildGauge()
                   .Name("bulwark_concurrency_queued")
                   .Help("calls waiting for a slot")
                   .Register(registry)),
        limit(prometheus::BuildGauge()
                  .Name("bulwark_concurrency_limit")
                  .Help("the limit on calls in flight (adaptive: its current "
                        "value)")
                  .Register(registry)),
        singleflight(prometheus::BuildCounter()
                         .Name("bulwark_singleflight_calls_total")
                         .Help("leader (went upstream) or follower (coalesced)")
                         .Register(registry)),
        endpoint_healthy(prometheus::BuildGauge()
                             .Name("bulwark_endpoint_healthy")
                             .Help("1 healthy, 0 not")
                             .Register(registry)),
        health_checks(prometheus::BuildCounter()
                          .Name("bulwark_health_checks_total")
                          .Help("success, failure, timeout")
                          .Register(registry)),
        config_reloads(prometheus::BuildCounter()
                           .Name("bulwark_config_reloads_total")
                           .Help("success, failure")
                           .Register(registry)),
        method_requests(prometheus::BuildCounter()
                            .Name("bulwark_method_requests_total")
                            .Help("downstream calls per method (pkg.Service/"
                                  "Method; _OTHER for one neither an "
                                  "exact-method route nor descriptor_sets "
                                  "names) by final status")
                            .Register(registry)),
        method_duration("bulwark_method_request_duration_seconds",
                        "downstream call time per method", DurationBuckets()),
        upstream_attempts(prometheus::BuildCounter()
                              .Name("bulwark_upstream_attempts_total")
                              .Help("upstream attempts by kind: first, retry, "
                                    "hedge")
                              .Register(registry)),
        retry_budget_exhausted(
            prometheus::BuildCounter()
                .Name("bulwark_retry_budget_exhausted_total")
                .Help("retries or hedges not sent because the budget was "
                      "spent")
                .Register(registry)),
        endpoint_ejected(prometheus::BuildGauge()
                             .Name("bulwark_endpoint_ejected")
                             .Help("1 while outlier detection ejects the "
                                   "endpoint")
                             .Register(registry)),
        outlier_ejections(prometheus::BuildCounter()
                              .Name("bulwark_outlier_ejections_total")
                              .Help("ejections")
                              .Register(registry)),
        access_log_dropped(prometheus::BuildCounter()
                               .Name("bulwark_access_log_dropped_total")
                               .Help("access log lines dropped under pressure")
                               .Register(registry)),
        global_replicas(
            prometheus::BuildGauge()
                .Name("bulwark_rate_limit_global_replicas")
                .Help("sidecars sharing the route's global limit, as last "
                      "seen")
                .Register(registry)),
        redis_requests(prometheus::BuildCounter()
                           .Name("bulwark_redis_requests_total")
                           .Help("Redis round trips by result: ok, error, "
                                 "timeout")
                           .Register(registry)),
        redis_duration("bulwark_redis_request_duration_seconds",
                       "time per Redis round trip", DurationBuckets()),
        build_info(prometheus::BuildGauge()
                       .Name("bulwark_build_info")
                       .Help("always 1")
                       .Register(registry)) {}

  prometheus::Family<prometheus::Counter>& requests;
  HistogramFamily request_duration;
  prometheus::Family<prometheus::Counter>& rejections;
  prometheus::Family<prometheus::Counter>& shadow_rejections;
  prometheus::Family<prometheus::Counter>& upstream_requests;
  HistogramFamily upstream_duration;
  prometheus::Family<prometheus::Gauge>& breaker_state;
  prometheus::Family<prometheus::Counter>& breaker_transitions;
  prometheus::Family<prometheus::Gauge>& tokens;
  prometheus::Family<prometheus::Gauge>& in_flight;
  prometheus::Family<prometheus::Gauge>& queued;
  prometheus::Family<prometheus::Gauge>& limit;
  prometheus::Family<prometheus::Counter>& singleflight;
  prometheus::Family<prometheus::Gauge>& endpoint_healthy;
  prometheus::Family<prometheus::Counter>& health_checks;
  prometheus::Family<prometheus::Counter>& config_reloads;
  prometheus::Family<prometheus::Counter>& method_requests;
  HistogramFamily method_duration;
  prometheus::Family<prometheus::Counter>& upstream_attempts;
  prometheus::Family<prometheus::Counter>& retry_budget_exhausted;
  prometheus::Family<prometheus::Gauge>& endpoint_ejected;
  prometheus::Family<prometheus::Counter>& outlier_ejections;
  prometheus::Family<prometheus::Counter>& access_log_dropped;
  prometheus::Family<prometheus::Gauge>& global_replicas;
  prometheus::Family<prometheus::Counter>& redis_requests;
  HistogramFamily redis_duration;
  prometheus::Family<prometheus::Gauge>& build_info;
};

}  // namespace metrics_internal

// --- RouteMetrics ---

RouteMetrics::RouteMetrics(std::string name,
                           metrics_internal::Families& families)
    : name_(std::move(name)),
      families_(families),
      route_label_(Labels1("route", name_)) {}

prometheus::Labels RouteMetrics::With(std::string_view key,
                                      std::string_view value) const {
  return AddLabel(route_label_, key, value);
}

prometheus::Counter& RouteMetrics::Requests(int grpc_code) {
  const int i = CodeIndex(grpc_code);
  return requests_[i].Get(families_.requests,
                          [&] { return With("code", kGrpcCodeNames[i]); });
}

Histogram& RouteMetrics::Duration() {
  return duration_.Get(families_.request_duration,
                       [&] { return route_label_; });
}

prometheus::Counter& RouteMetrics::Rejections(RejectReason reason) {
  const auto i = static_cast<size_t>(reason);
  return rejections_[i].Get(families_.rejections, [&] {
    return With("reason", kRejectReasonNames[i]);
  });
}

prometheus::Counter& RouteMetrics::ShadowRejections(RejectReason reason) {
  const auto i = static_cast<size_t>(reason);
  return shadow_rejections_[i].Get(families_.shadow_rejections, [&] {
    return With("reason", kRejectReasonNames[i]);
  });
}

void RouteMetrics::SetBreakerState(BreakerState state) {
  for (size_t i = 0; i < kBreakerStateNames.size(); ++i) {
    prometheus::Gauge& gauge = breaker_state_[i].Get(
        families_.breaker_state,
        [&] { return With("state", kBreakerStateNames[i]); });
    gauge.Set(i == static_cast<size_t>(state) ? 1 : 0);
  }
}

prometheus::Counter& RouteMetrics::BreakerTransitions(BreakerState to) {
  const auto i = static_cast<size_t>(to);
  return transitions_[i].Get(families_.breaker_transitions,
                             [&] { return With("to", kBreakerStateNames[i]); });
}

prometheus::Gauge& RouteMetrics::Tokens() {
  return tokens_.Get(families_.tokens, [&] { return route_label_; });
}

prometheus::Gauge& RouteMetrics::InFlight() {
  return in_flight_.Get(families_.in_flight, [&] { return route_label_; });
}

prometheus::Gauge& RouteMetrics::Queued() {
  return queued_.Get(families_.queued, [&] { return route_label_; });
}

MethodMetrics& RouteMetrics::Method(std::string_view method) {
  absl::MutexLock lock(&mu_);
  std::unique_ptr<MethodMetrics>& slot =
      methods_[absl::string_view(method.data(), method.size())];
  if (slot == nullptr) {
    slot.reset(new MethodMetrics(With("method", method), families_));
  }
  return *slot;
}

prometheus::Counter& MethodMetrics::Requests(int grpc_code) {
  const int i = CodeIndex(grpc_code);
  return requests_[i].Get(families_.method_requests, [&] {
    return AddLabel(labels_, "code", kGrpcCodeNames[i]);
  });
}

Histogram& MethodMetrics::Duration() {
  return duration_.Get(families_.method_duration, [&] { return labels_; });
}

prometheus::Gauge& RouteMetrics::Limit() {
  return limit_.Get(families_.limit, [&] { return route_label_; });
}

prometheus::Counter& RouteMetrics::Singleflight(SingleflightRole role) {
  const auto i = static_cast<size_t>(role);
  return singleflight_[i].Get(families_.singleflight,
                              [&] { return With("role", kRoleNames[i]); });
}

prometheus::Counter& RouteMetrics::UpstreamAttempts(AttemptKind kind) {
  const auto i = static_cast<size_t>(kind);
  return attempts_[i].Get(families_.upstream_attempts,
                          [&] { return With("kind", kAttemptKindNames[i]); });
}

prometheus::Counter& RouteMetrics::RetryBudgetExhausted() {
  return budget_exhausted_.Get(families_.retry_budget_exhausted,
                               [&] { return route_label_; });
}

prometheus::Gauge& RouteMetrics::GlobalReplicas() {
  return global_replicas_.Get(families_.global_replicas,
                              [&] { return route_label_; });
}

// --- RedisMetrics ---

RedisMetrics::RedisMetrics(std::string_view name,
                           metrics_internal::Families& families)
    : duration_(&families.redis_duration.Add(Labels1("redis", name))) {
  for (size_t i = 0; i < requests_.size(); ++i) {
    requests_[i] = &families.redis_requests.Add(
        AddLabel(Labels1("redis", name), "result", kRedisResultNames[i]));
  }
}

// --- EndpointMetrics ---

EndpointMetrics::EndpointMetrics(std::string_view cluster, std::string name,
                                 metrics_internal::Families& families)
    : name_(std::move(name)),
      families_(families),
      labels_(AddLabel(Labels1("cluster", cluster), "endpoint", name_)) {}

EndpointMetrics::~EndpointMetrics() = default;

void EndpointMetrics::RemoveSeries() {
  for (auto& series : upstream_requests_)
    series.Remove(families_.upstream_requests);
  healthy_.Remove(families_.endpoint_healthy);
  ejected_.Remove(families_.endpoint_ejected);
  ejections_.Remove(families_.outlier_ejections);
  for (auto& series : health_checks_) series.Remove(families_.health_checks);
}

prometheus::Labels EndpointMetrics::With(std::string_view key,
                                         std::string_view value) const {
  return AddLabel(labels_, key, value);
}

prometheus::Counter& EndpointMetrics::UpstreamRequests(int grpc_code) {
  const int i = CodeIndex(grpc_code);
  return upstream_requests_[i].Get(families_.upstream_requests, [&] {
    return With("code", kGrpcCodeNames[i]);
  });
}

void EndpointMetrics::SetHealthy(bool healthy) {
  healthy_.Get(families_.endpoint_healthy, [&] { return labels_; })
      .Set(healthy ? 1 : 0);
}

void EndpointMetrics::SetEjected(bool ejected) {
  ejected_.Get(families_.endpoint_ejected, [&] { return labels_; })
      .Set(ejected ? 1 : 0);
}

prometheus::Counter& EndpointMetrics::Ejections() {
  return ejections_.Get(families_.outlier_ejections, [&] { return labels_; });
}

prometheus::Counter& EndpointMetrics::HealthChecks(HealthCheckResult result) {
  const auto i = static_cast<size_t>(result);
  return health_checks_[i].Get(families_.health_checks, [&] {
    return With("result", kHealthCheckResultNames[i]);
  });
}

// --- ClusterMetrics ---

ClusterMetrics::ClusterMetrics(std::string name,
                               metrics_internal::Families& families)
    : name_(std::move(name)),
      families_(families),
      cluster_label_(Labels1("cluster", name_)) {}

Histogram& ClusterMetrics::UpstreamDuration() {
  return duration_.Get(families_.upstream_duration,
                       [&] { return cluster_label_; });
}

std::shared_ptr<EndpointMetrics> ClusterMetrics::ForEndpoint(
    std::string_view endpoint) {
  absl::MutexLock lock(&endpoints_mu_);
  std::weak_ptr<EndpointMetrics>& slot =
      endpoints_[absl::string_view(endpoint.data(), endpoint.size())];
  if (std::shared_ptr<EndpointMetrics> live = slot.lock()) return live;
  // Private constructor: make_shared cannot reach it.
  std::shared_ptr<EndpointMetrics> created(
      new EndpointMetrics(name_, std::string(endpoint), families_),
      [this](EndpointMetrics* m) { Release(m); });
  slot = created;
  return created;
}

void ClusterMetrics::Release(EndpointMetrics* endpoint) {
  {
    absl::MutexLock lock(&endpoints_mu_);
    // Under the same mutex as ForEndpoint, where every live holder of this
    // name is the slot's occupant: if the slot holds a live object, it shares
    // these series (Family::Add returned the same ones) and they stay;
    // otherwise nobody uses them and they go (removing one twice is a no-op).
    auto it = endpoints_.find(endpoint->name());
    if (it == endpoints_.end() || it->second.expired()) {
      endpoint->RemoveSeries();
      if (it != endpoints_.end()) endpoints_.erase(it);
    }
  }
  delete endpoint;
}

// --- Metrics ---

Metrics::Metrics(std::string_view version)
    : registry_(std::make_unique<prometheus::Registry>()),
      families_(std::make_unique<metrics_internal::Families>(*registry_)),
      reload_success_(
          &families_->config_reloads.Add(Labels1("result", "success"))),
      reload_failure_(
          &families_->config_reloads.Add(Labels1("result", "failure"))),
      access_log_dropped_(&families_->access_log_dropped.Add({})) {
  families_->build_info.Add(Labels1("version", version)).Set(1);
}

// Out of line: Families is incomplete in the header.
Metrics::~Metrics() = default;

RouteMetrics* Metrics::ForRoute(std::string_view route) {
  absl::MutexLock lock(&mu_);
  auto [it, inserted] =
      routes_.try_emplace(absl::string_view(route.data(), route.size()));
  if (inserted) {
    it->second.reset(new RouteMetrics(std::string(route), *families_));
  }
  return it->second.get();
}

ClusterMetrics* Metrics::ForCluster(std::string_view cluster) {
  absl::MutexLock lock(&mu_);
  auto [it, inserted] =
      clusters_.try_emplace(absl::string_view(cluster.data(), cluster.size()));
  if (inserted) {
    it->second.reset(new ClusterMetrics(std::string(cluster), *families_));
  }
  return it->second.get();
}

RedisMetrics* Metrics::ForRedis(std::string_view redis) {
  absl::MutexLock lock(&mu_);
  auto [it, inserted] =
      redis_.try_emplace(absl::string_view(redis.data(), redis.size()));
  if (inserted) it->second.reset(new RedisMetrics(redis, *families_));
  return it->second.get();
}

prometheus::Counter& Metrics::Reloads(ReloadResult result) {
  return result == ReloadResult::kSuccess ? *reload_success_ : *reload_failure_;
}

void Metrics::SetCollectHook(std::function<void()> hook) {
  std::shared_ptr<const std::function<void()>> next;
  if (hook)
    next = std::make_shared<const std::function<void()>>(std::move(hook));
  absl::MutexLock lock(&mu_);
  collect_hook_.swap(next);
  // `next` (the old hook) is destroyed after the lock is released.
}

std::string Metrics::Serialize() {
  std::shared_ptr<const std::function<void()>> hook;
  {
    absl::MutexLock lock(&mu_);
    hook = collect_hook_;
  }
  if (hook != nullptr) (*hook)();
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  families_->request_duration.CollectInto(families);
  families_->upstream_duration.CollectInto(families);
  families_->method_duration.CollectInto(families);
  families_->redis_duration.CollectInto(families);
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace bulwark
