// The Prometheus metrics of SPEC section 5: one registry holding every
// `bulwark_` family, and per-route / per-cluster / per-endpoint handle objects
// that the config loader resolves once, so the call path never builds a label
// set or looks one up.
//
// Thread-safety: every method is thread-safe. Handles (RouteMetrics,
// ClusterMetrics) live as long as the Metrics object and are stable across
// reloads: asking again for the same name returns the same object, so a route
// that survives a reload keeps its series. EndpointMetrics are shared by the
// endpoints that use them and their series leave the exposition with the last
// one (endpoints come and go with reloads and DNS answers: a removed endpoint
// must not report a stale health forever). Serialize() runs
// on the admin thread while workers update the handles.
//
// Cost: a handle accessor is one acquire load of a cached pointer; the first
// use of a label combination (e.g. the first call on a route ending with a
// given code) creates its series under the family's mutex. Counter/Gauge
// updates are a lock-free atomic add; a histogram observation (Histogram
// below, not prometheus-cpp's, which takes a mutex per observation) is a
// binary search over the buckets and two atomic adds.
// ForRoute/ForCluster/ForEndpoint take a mutex and a hash lookup: call them
// when a config loads, never per call.
#ifndef BULWARK_SIDECAR_METRICS_H_
#define BULWARK_SIDECAR_METRICS_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/client_metric.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/labels.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace bulwark {

// Number of gRPC status codes (OK = 0 .. UNAUTHENTICATED = 16).
inline constexpr int kGrpcCodeCount = 17;

// "OK", "CANCELLED", ..., "UNAUTHENTICATED"; a code outside 0..16 is "UNKNOWN",
// as gRPC itself treats an unrecognised status.
std::string_view GrpcCodeName(int code);

// Why a call was (or, in shadow mode, would have been) answered by the sidecar
// itself. The label strings are the `x-bulwark-reason` values of SPEC
// section 3.
enum class RejectReason {
  kRateLimited,
  kCircuitOpen,
  kConcurrencyLimit,
  kQueueTimeout,
  kNoHealthyEndpoint,
  kMessageTooLarge,
  kCoalesced,  // shadow singleflight only: the call would have joined a flight
  kLoadShed,   // adaptive concurrency, or displaced by a higher priority
};
inline constexpr int kRejectReasonCount = 8;
std::string_view RejectReasonName(RejectReason reason);

// One histogram series: per bucket an atomic count, and the sum. Observe is
// lock-free (workers of every thread feed the same series), and what Collect
// reads is the prometheus-cpp histogram model, so the exposition is the same.
// A scrape racing observations may see a count that includes an observation
// whose sum it does not yet include (or the reverse); each figure on its own
// is exact.
class Histogram {
 public:
  // `bounds`: ascending upper bounds, outliving the series (its family's).
  explicit Histogram(const std::vector<double>& bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  void Observe(double value);
  prometheus::ClientMetric Collect() const;

 private:
  const std::vector<double>& bounds_;
  // bounds_.size() + 1 counts; the last is the +Inf bucket.
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<double> sum_{0};
};

namespace metrics_internal {

// Every family of SPEC section 5, owned by Metrics and shared by the handles.
struct Families;

// A family of Histogram series (label sets to series), collected next to the
// registry's families. Series are never removed (routes and clusters keep
// theirs until restart, as Metrics says). Thread-safe.
class HistogramFamily {
 public:
  HistogramFamily(std::string name, std::string help,
                  std::vector<double> bounds);
  HistogramFamily(const HistogramFamily&) = delete;
  HistogramFamily& operator=(const HistogramFamily&) = delete;

  // The series for `labels`, created on first use (the same one after).
  Histogram& Add(const prometheus::Labels& labels) ABSL_LOCKS_EXCLUDED(mu_);
  // Appends this family to `out` if it has a series.
  void CollectInto(std::vector<prometheus::MetricFamily>& out) const
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::map<prometheus::Labels, std::unique_ptr<Histogram>> series_
      ABSL_GUARDED_BY(mu_);
};

// One series of `family` with fixed labels, created on first Get() and cached,
// so a series appears in the exposition only once something used it. The labels
// are built by `make_labels` on that first use only. Racing first uses are
// harmless: Family::Add returns the existing series for equal labels.
template <typename T>
class LazySeries {
 public:
  LazySeries() = default;
  LazySeries(const LazySeries&) = delete;
  LazySeries& operator=(const LazySeries&) = delete;

  template <typename Family, typename MakeLabels>
  T& Get(Family& family, MakeLabels make_labels) {
    // Acquire pairs with the release below: a thread that sees the pointer sees
    // the fully constructed series.
    if (T* cached = series_.load(std::memory_order_acquire);
        cached != nullptr) {
      return *cached;
    }
    T& created = family.Add(make_labels());
    series_.store(&created, std::memory_order_release);
    return created;
  }

  // Removes the series from `family` if it was created (its owner is going
  // away and nobody may use the series again).
  void Remove(prometheus::Family<T>& family) {
    if (T* cached = series_.exchange(nullptr, std::memory_order_acq_rel);
        cached != nullptr) {
      family.Remove(cached);
    }
  }

 private:
  std::atomic<T*> series_{nullptr};
};

}  // namespace metrics_internal

// The per-method series of one route (labels `route`, `method`; SPEC section
// 5): bulwark_method_requests_total{route, method, code} and
// bulwark_method_request_duration_seconds{route, method}. `method` is
// "pkg.Service/Method" for a method an exact-method route or descriptor_sets
// names, "_OTHER" otherwise, so requests cannot create series. Obtained from
// RouteMetrics::Method; lives as long as its RouteMetrics.
class MethodMetrics {
 public:
  MethodMetrics(const MethodMetrics&) = delete;
  MethodMetrics& operator=(const MethodMetrics&) = delete;

  prometheus::Counter& Requests(int grpc_code);
  Histogram& Duration();

 private:
  friend class RouteMetrics;
  MethodMetrics(prometheus::Labels labels, metrics_internal::Families& families)
      : labels_(std::move(labels)), families_(families) {}

  const prometheus::Labels labels_;
  metrics_internal::Families& families_;
  std::array<metrics_internal::LazySeries<prometheus::Counter>, kGrpcCodeCount>
      requests_;
  metrics_internal::LazySeries<Histogram> duration_;
};

// The series of one route (label `route`). Obtained from Metrics::ForRoute.
class RouteMetrics {
 public:
  enum class BreakerState { kClosed, kOpen, kHalfOpen };
  enum class SingleflightRole { kLeader, kFollower };
  enum class AttemptKind { kFirst, kRetry, kHedge };

  RouteMetrics(const RouteMetrics&) = delete;
  RouteMetrics& operator=(const RouteMetrics&) = delete;

  // bulwark_requests_total{route, code}: every downstream call, by final
  // status.
  prometheus::Counter& Requests(int grpc_code);
  // bulwark_request_duration_seconds{route}.
  Histogram& Duration();
  // bulwark_rejections_total{route, reason}.
  prometheus::Counter& Rejections(RejectReason reason);
  // bulwark_shadow_rejections_total{route, reason}.
  prometheus::Counter& ShadowRejections(RejectReason reason);
  // bulwark_circuit_breaker_state{route, state}: 1 on `state`, 0 on the other
  // two. The three stores are not one atomic step; a scrape racing a transition
  // may see two states at 1 or none for that instant, which the next scrape
  // corrects.
  void SetBreakerState(BreakerState state);
  // bulwark_circuit_breaker_transitions_total{route, to}.
  prometheus::Counter& BreakerTransitions(BreakerState to);
  // bulwark_rate_limit_tokens{route}.
  prometheus::Gauge& Tokens();
  // bulwark_concurrency_in_flight{route}.
  prometheus::Gauge& InFlight();
  // bulwark_concurrency_queued{route}.
  prometheus::Gauge& Queued();
  // bulwark_concurrency_limit{route}: the adaptive limit (or max_in_flight).
  prometheus::Gauge& Limit();
  // bulwark_singleflight_calls_total{route, role}.
  prometheus::Counter& Singleflight(SingleflightRole role);
  // bulwark_upstream_attempts_total{route, kind}.
  prometheus::Counter& UpstreamAttempts(AttemptKind kind);
  // bulwark_retry_budget_exhausted_total{route}.
  prometheus::Counter& RetryBudgetExhausted();
  // bulwark_rate_limit_global_replicas{route}: sidecars sharing the route's
  // global limit, as last seen.
  prometheus::Gauge& GlobalReplicas();
  // The series of `method` ("pkg.Service/Method" or "_OTHER") on this route,
  // created on first use and kept. Thread-safe; takes a lock (call it when a
  // route table is built, not per call).
  MethodMetrics& Method(std::string_view method) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string& name() const { return name_; }

 private:
  friend class Metrics;
  RouteMetrics(std::string name, metrics_internal::Families& families);

  prometheus::Labels With(std::string_view key, std::string_view value) const;

  const std::string name_;
  metrics_internal::Families& families_;
  const prometheus::Labels route_label_;
  std::array<metrics_internal::LazySeries<prometheus::Counter>, kGrpcCodeCount>
      requests_;
  metrics_internal::LazySeries<Histogram> duration_;
  std::array<metrics_internal::LazySeries<prometheus::Counter>,
             kRejectReasonCount>
      rejections_;
  std::array<metrics_internal::LazySeries<prometheus::Counter>,
             kRejectReasonCount>
      shadow_rejections_;
  std::array<metrics_internal::LazySeries<prometheus::Gauge>, 3> breaker_state_;
  std::array<metrics_internal::LazySeries<prometheus::Counter>, 3> transitions_;
  metrics_internal::LazySeries<prometheus::Gauge> tokens_;
  metrics_internal::LazySeries<prometheus::Gauge> in_flight_;
  metrics_internal::LazySeries<prometheus::Gauge> queued_;
  metrics_internal::LazySeries<prometheus::Gauge> limit_;
  std::array<metrics_internal::LazySeries<prometheus::Counter>, 2>
      singleflight_;
  std::array<metrics_internal::LazySeries<prometheus::Counter>, 3> attempts_;
  metrics_internal::LazySeries<prometheus::Counter> budget_exhausted_;
  metrics_internal::LazySeries<prometheus::Gauge> global_replicas_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<MethodMetrics>> methods_
      ABSL_GUARDED_BY(mu_);
};

// The series of one upstream endpoint (labels `cluster`, `endpoint`).
class EndpointMetrics {
 public:
  enum class HealthCheckResult { kSuccess, kFailure, kTimeout };

  EndpointMetrics(const EndpointMetrics&) = delete;
  EndpointMetrics& operator=(const EndpointMetrics&) = delete;

  // bulwark_upstream_requests_total{cluster, endpoint, code}.
  prometheus::Counter& UpstreamRequests(int grpc_code);
  // bulwark_endpoint_healthy{cluster, endpoint}: 1 healthy, 0 not. The series
  // appears on the first call, so the cluster sets it when it loads (healthy
  // when unchecked).
  void SetHealthy(bool healthy);
  // bulwark_health_checks_total{cluster, endpoint, result}.
  prometheus::Counter& HealthChecks(HealthCheckResult result);
  // bulwark_endpoint_ejected{cluster, endpoint} (set when the cluster has
  // outlier_detection).
  void SetEjected(bool ejected);
  // bulwark_outlier_ejections_total{cluster, endpoint}.
  prometheus::Counter& Ejections();

  const std::string& name() const { return name_; }

 private:
  friend class ClusterMetrics;
  EndpointMetrics(std::string_view cluster, std::string name,
                  metrics_internal::Families& families);
  ~EndpointMetrics();
  // Takes every series of this endpoint out of the exposition.
  void RemoveSeries();

  prometheus::Labels With(std::string_view key, std::string_view value) const;

  const std::string name_;
  metrics_internal::Families& families_;
  const prometheus::Labels labels_;
  std::array<metrics_internal::LazySeries<prometheus::Counter>, kGrpcCodeCount>
      upstream_requests_;
  metrics_internal::LazySeries<prometheus::Gauge> healthy_;
  metrics_internal::LazySeries<prometheus::Gauge> ejected_;
  metrics_internal::LazySeries<prometheus::Counter> ejections_;
  std::array<metrics_internal::LazySeries<prometheus::Counter>, 3>
      health_checks_;
};

// The series of one configured Redis (label `redis`, SPEC section 8),
// obtained from Metrics::ForRedis: what RedisClient's on_result hook feeds,
// on the store's thread. The three result series exist from the first
// ForRedis, so rate() over them works from the first scrape.
class RedisMetrics {
 public:
  enum class Result { kOk, kError, kTimeout };

  RedisMetrics(const RedisMetrics&) = delete;
  RedisMetrics& operator=(const RedisMetrics&) = delete;

  // bulwark_redis_requests_total{redis, result}.
  prometheus::Counter& Requests(Result result) {
    return *requests_[static_cast<size_t>(result)];
  }
  // bulwark_redis_request_duration_seconds{redis}.
  Histogram& Duration() { return *duration_; }

 private:
  friend class Metrics;
  RedisMetrics(std::string_view name, metrics_internal::Families& families);

  std::array<prometheus::Counter*, 3> requests_;
  Histogram* duration_;
};

// The series of one upstream cluster (label `cluster`) and its endpoints.
class ClusterMetrics {
 public:
  ClusterMetrics(const ClusterMetrics&) = delete;
  ClusterMetrics& operator=(const ClusterMetrics&) = delete;

  // bulwark_upstream_request_duration_seconds{cluster}.
  Histogram& UpstreamDuration();
  // The endpoint's handles, the same object for the same address while any
  // endpoint holds it; when the last holder lets go, the endpoint's series are
  // removed. Mutex + hash lookup: call when the config loads.
  std::shared_ptr<EndpointMetrics> ForEndpoint(std::string_view endpoint)
      ABSL_LOCKS_EXCLUDED(endpoints_mu_);

  const std::string& name() const { return name_; }

 private:
  friend class Metrics;
  ClusterMetrics(std::string name, metrics_internal::Families& families);

  const std::string name_;
  metrics_internal::Families& families_;
  const prometheus::Labels cluster_label_;
  metrics_internal::LazySeries<Histogram> duration_;
  // Deleter of the handles given out by ForEndpoint.
  void Release(EndpointMetrics* endpoint) ABSL_LOCKS_EXCLUDED(endpoints_mu_);

  absl::Mutex endpoints_mu_;
  absl::flat_hash_map<std::string, std::weak_ptr<EndpointMetrics>> endpoints_
      ABSL_GUARDED_BY(endpoints_mu_);
};

class Metrics {
 public:
  enum class ReloadResult { kSuccess, kFailure };

  // Declares every family of SPEC section 5 and sets
  // bulwark_build_info{version} to 1.
  explicit Metrics(std::string_view version);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Handles for a route / cluster by name; the same object for the same name
  // for the life of this Metrics. Label values come from the configuration only
  // (SPEC section 5). Handles are never removed: calls still running under an
  // old config snapshot may hold them, so the series of a route or endpoint
  // that a reload dropped stay, frozen, until restart. Their number is bounded
  // by the names ever configured.
  RouteMetrics* ForRoute(std::string_view route) ABSL_LOCKS_EXCLUDED(mu_);
  ClusterMetrics* ForCluster(std::string_view cluster) ABSL_LOCKS_EXCLUDED(mu_);
  // Handles for a configured redis by name; kept like routes'.
  RedisMetrics* ForRedis(std::string_view redis) ABSL_LOCKS_EXCLUDED(mu_);

  // bulwark_config_reloads_total{result}; both series exist from construction
  // so that increase() over them works from the first scrape.
  prometheus::Counter& Reloads(ReloadResult result);
  // bulwark_access_log_dropped_total (no labels); exists from construction.
  prometheus::Counter& AccessLogDropped() { return *access_log_dropped_; }

  // Runs before every Serialize() collects, on the scraping thread, so gauges
  // that mirror live policy state (tokens, breaker state, in flight, queued)
  // are refreshed only when someone looks. The hook must be thread-safe and
  // cheap; it is called without any lock of this class held. Replaces any
  // previous hook; an empty function removes it.
  void SetCollectHook(std::function<void()> hook) ABSL_LOCKS_EXCLUDED(mu_);

  // The Prometheus text exposition format (version 0.0.4) of every series.
  std::string Serialize() ABSL_LOCKS_EXCLUDED(mu_);

  // For code that wants to register families of its own next to ours.
  prometheus::Registry& registry() { return *registry_; }

 private:
  std::unique_ptr<prometheus::Registry> registry_;
  std::unique_ptr<metrics_internal::Families> families_;
  prometheus::Counter* reload_success_;
  prometheus::Counter* reload_failure_;
  prometheus::Counter* access_log_dropped_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<RouteMetrics>> routes_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<ClusterMetrics>> clusters_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<RedisMetrics>> redis_
      ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const std::function<void()>> collect_hook_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_METRICS_H_
