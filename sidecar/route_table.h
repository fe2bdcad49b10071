// RouteTable: the routes of one configuration snapshot, with everything a call
// needs resolved when the configuration loads (SPEC section 2): the matcher,
// the cluster, the parsed failure-code set, the metric handles and the live
// policy state. Matching is first match in file order: exact service+method
// routes come from a hash map, then the other routes (service, prefix,
// catch-all) that precede the exact hit are scanned in order.
//
// Live state (RouteState: token buckets, breaker, semaphore, flights) is shared
// with the previous snapshot when a route's name and policy settings are
// unchanged (SPEC section 6).
//
// Thread-safety: immutable after Build; the policy objects it points to are
// thread-safe. Cost of Match: one hash lookup plus a scan of the non-exact
// routes before the hit.
#ifndef BULWARK_SIDECAR_ROUTE_TABLE_H_
#define BULWARK_SIDECAR_ROUTE_TABLE_H_

#include <atomic>
#include <bitset>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "bulwark/config/v1/config.pb.h"
#include "policies/circuit_breaker.h"
#include "policies/concurrency_limiter.h"
#include "policies/keyed_rate_limiter.h"
#include "policies/retry_budget.h"
#include "policies/singleflight.h"
#include "policies/token_bucket.h"
#include "sidecar/chain/breaker_stage.h"
#include "sidecar/chain/concurrency_stage.h"
#include "sidecar/chain/rate_limit_stage.h"
#include "sidecar/chain/singleflight_stage.h"
#include "sidecar/chain/upstream_stage.h"
#include "sidecar/cluster.h"
#include "sidecar/metrics.h"
#include "sidecar/net/stream_handler.h"
#include "sidecar/recent_activity.h"
#include "sidecar/store/redis_store.h"

namespace bulwark {

using Flights = chain::Flights;

// Policy state of one route that outlives a snapshot (SPEC section 6): kept
// by the next snapshot when the route's name and policy settings are
// unchanged. Everything posted across workers that holds a token of these
// (a permit, a membership) also holds a shared_ptr to this state, so a
// reload can never free it under them.
struct RouteState {
  std::string fingerprint;  // the policy settings it was built from
  std::unique_ptr<chain::RateLimitState> rate_limit;
  std::unique_ptr<CircuitBreaker> breaker;
  std::unique_ptr<ConcurrencyLimiter> limiter;
  std::unique_ptr<Flights> flights;  // singleflight enabled
  // Retries and hedges of the last 10 s against the route's calls (retry).
  std::unique_ptr<RetryBudget> retry_budget;
  // Downstream calls on this route right now (any stage), for /routes. Relaxed:
  // a count.
  std::atomic<int64_t> active_calls{0};
  // Calls, rejections and coalesced calls over the last minute (/routes).
  RecentActivity recent;
};

// The hash the path-keyed maps (RouteTable's exact routes, a route's
// method_metrics) use: a call computes it once for both lookups.
inline size_t HashPath(std::string_view path) {
  return absl::flat_hash_map<std::string, size_t>::hasher{}(
      absl::string_view(path.data(), path.size()));
}

// One route of a snapshot: immutable config plus the stages of its chain, in
// SPEC order; an unconfigured policy has no stage.
struct Route {
  std::string name;
  config::v1::Route config;
  std::shared_ptr<Cluster> cluster;
  absl::Duration timeout = absl::InfiniteDuration();
  RouteMetrics* metrics = nullptr;
  std::shared_ptr<RouteState> state;
  std::unique_ptr<chain::RateLimitStage> rate_limit;
  std::unique_ptr<chain::BreakerStage> breaker;
  std::unique_ptr<chain::SingleflightStage> singleflight;
  std::unique_ptr<chain::ConcurrencyStage> concurrency;
  std::unique_ptr<chain::UpstreamStage> upstream;
  // Per-method series (SPEC section 5), by path ("/pkg.Service/Method"): the
  // methods an exact-method route or descriptor_sets name that this route
  // matches; every other call counts under `other_method` ("_OTHER").
  absl::flat_hash_map<std::string, MethodMetrics*> method_metrics;
  MethodMetrics* other_method = nullptr;
  MethodMetrics& MethodMetricsFor(std::string_view path) const {
    return MethodMetricsFor(path, HashPath(path));
  }
  // The same, with `path_hash` = HashPath(path) (computed once per call).
  MethodMetrics& MethodMetricsFor(std::string_view path,
                                  size_t path_hash) const {
    auto it = method_metrics.find(absl::string_view(path.data(), path.size()),
                                  path_hash);
    return it != method_metrics.end() ? *it->second : *other_method;
  }
};

// The Redis stores of a snapshot by redis name (SPEC section 8).
using RedisStores =
    absl::flat_hash_map<std::string, std::shared_ptr<store::RedisStore>>;

class RouteTable {
 public:
  // `clusters` by name must hold every cluster the routes name, and
  // `redis_stores` every redis a global rate limit names. A route's state is
  // kept from `previous` when its name and policy settings are unchanged and,
  // for a global rate limit, its store is the same object.
  static absl::StatusOr<std::unique_ptr<RouteTable>> Build(
      const config::v1::Config& config,
      const absl::flat_hash_map<std::string, std::shared_ptr<Cluster>>&
          clusters,
      Metrics& metrics, const RouteTable* previous,
      const absl::flat_hash_set<std::string>* unary_methods = nullptr,
      Clock& clock = MonotonicClock::Get(),
      const absl::flat_hash_set<std::string>* streaming_methods = nullptr,
      const absl::flat_hash_set<std::string>* idempotent_methods = nullptr,
      const RedisStores* redis_stores = nullptr);

  // The first route matching `path` ("/pkg.Service/Method"), or nullptr.
  const Route* Match(std::string_view path) const {
    return Match(path, HashPath(path));
  }
  // The same, with `path_hash` = HashPath(path).
  const Route* Match(std::string_view path, size_t path_hash) const;
  const std::vector<std::unique_ptr<Route>>& routes() const { return routes_; }

 private:
  RouteTable() = default;
  bool Matches(const Route& route, std::string_view path) const;

  std::vector<std::unique_ptr<Route>> routes_;
  absl::flat_hash_map<std::string, size_t>
      exact_;                   // "/svc/method" -> first exact route
  std::vector<size_t> others_;  // non-exact routes, in file order
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_ROUTE_TABLE_H_
