#include "sidecar/route_table.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "policies/clock.h"
#include "sidecar/config_loader.h"
#include "sidecar/log.h"

namespace bulwark {
namespace {

// `store`: the Redis store of the route's global rate limit (null: none). Its
// address is part of the fingerprint: a limiter lives on its store, so a
// store replaced by a reload (a changed address or password) replaces the
// limiter too. While a state holds a store, no other store can have its
// address.
std::string Fingerprint(const config::v1::Route& route,
                        const store::RedisStore* store) {
  config::v1::Route policies;
  *policies.mutable_rate_limit() = route.rate_limit();
  *policies.mutable_circuit_breaker() = route.circuit_breaker();
  *policies.mutable_concurrency() = route.concurrency();
  *policies.mutable_singleflight() = route.singleflight();
  *policies.mutable_retry()->mutable_budget() = route.retry().budget();
  std::string out;
  policies.SerializeToString(&out);
  return absl::StrCat(route.has_rate_limit(), route.has_circuit_breaker(),
                      route.has_concurrency(), route.has_singleflight(),
                      route.has_retry(), ":",
                      reinterpret_cast<uintptr_t>(store), ":", out);
}

std::shared_ptr<RouteState> NewState(
    const config::v1::Route& config, RouteMetrics* metrics,
    std::string fingerprint, Clock& clock,
    std::shared_ptr<store::RedisStore> redis_store) {
  auto state = std::make_shared<RouteState>();
  state->fingerprint = std::move(fingerprint);
  if (config.has_rate_limit()) {
    state->rate_limit = chain::RateLimitStage::NewState(
        config.rate_limit(), config.name(), clock, std::move(redis_store));
  }
  if (config.has_circuit_breaker()) {
    state->breaker = chain::BreakerStage::NewState(
        config.circuit_breaker(), config.name(), clock, metrics);
  }
  if (config.has_concurrency()) {
    state->limiter =
        chain::ConcurrencyStage::NewState(config.concurrency(), clock);
  }
  if (config.has_singleflight() && config.singleflight().enabled()) {
    state->flights = std::make_unique<Flights>();
  }
  if (config.has_retry()) {
    state->retry_budget = chain::UpstreamStage::NewBudget(config.retry());
  }
  return state;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RouteTable>> RouteTable::Build(
    const config::v1::Config& config,
    const absl::flat_hash_map<std::string, std::shared_ptr<Cluster>>& clusters,
    Metrics& metrics, const RouteTable* previous,
    const absl::flat_hash_set<std::string>* unary_methods, Clock& clock,
    const absl::flat_hash_set<std::string>* streaming_methods,
    const absl::flat_hash_set<std::string>* idempotent_methods,
    const RedisStores* redis_stores) {
  std::unique_ptr<RouteTable> table(new RouteTable());
  // The methods that get a label of their own in the per-method series.
  absl::flat_hash_set<std::string> known_methods;
  for (const config::v1::Route& rc : config.routes()) {
    if (!rc.match().service().empty() && !rc.match().method().empty()) {
      known_methods.insert(
          absl::StrCat("/", rc.match().service(), "/", rc.match().method()));
    }
  }
  for (const auto* set : {unary_methods, streaming_methods}) {
    if (set != nullptr) known_methods.insert(set->begin(), set->end());
  }
  for (const config::v1::Route& rc : config.routes()) {
    auto route = std::make_unique<Route>();
    route->name = rc.name();
    route->config = rc;
    auto cluster = clusters.find(rc.cluster());
    if (cluster == clusters.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "route ", rc.name(), ": unknown cluster ", rc.cluster()));
    }
    route->cluster = cluster->second;
    if (rc.has_timeout()) route->timeout = ToAbslDuration(rc.timeout());
    route->metrics = metrics.ForRoute(rc.name());
    std::shared_ptr<store::RedisStore> redis_store;
    if (rc.rate_limit().has_global()) {
      const std::string& name = rc.rate_limit().global().redis();
      if (redis_stores != nullptr) {
        if (auto it = redis_stores->find(name); it != redis_stores->end()) {
          redis_store = it->second;
        }
      }
      if (redis_store == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("route ", rc.name(), ": unknown redis ", name));
      }
    }
    std::string fingerprint = Fingerprint(rc, redis_store.get());
    if (previous != nullptr) {
      for (const auto& old : previous->routes_) {
        if (old->name == rc.name() && old->state->fingerprint == fingerprint) {
          route->state = old->state;
        }
      }
    }
    if (route->state == nullptr) {
      route->state = NewState(rc, route->metrics, std::move(fingerprint), clock,
                              std::move(redis_store));
    }
    RouteState& state = *route->state;
    if (state.rate_limit != nullptr) {
      route->rate_limit = std::make_unique<chain::RateLimitStage>(
          rc.rate_limit(), rc.name(), *state.rate_limit, *route->metrics);
    }
    if (state.breaker != nullptr) {
      route->breaker = std::make_unique<chain::BreakerStage>(
          rc.circuit_breaker(), rc.name(), *state.breaker, *route->metrics);
    }
    if (state.flights != nullptr) {
      route->singleflight = std::make_unique<chain::SingleflightStage>(
          rc, *state.flights, *route->metrics, unary_methods);
    }
    if (state.limiter != nullptr) {
      route->concurrency = std::make_unique<chain::ConcurrencyStage>(
          rc.concurrency(), rc.name(), *state.limiter, *route->metrics,
          !rc.match().service().empty() && !rc.match().method().empty(),
          unary_methods);
    }
    route->upstream = std::make_unique<chain::UpstreamStage>(
        route->cluster, rc, state.retry_budget.get(), route->metrics,
        unary_methods, idempotent_methods);
    for (const std::string& path : known_methods) {
      if (table->Matches(*route, path)) {
        route->method_metrics.emplace(
            path, &route->metrics->Method(std::string_view(path).substr(1)));
      }
    }
    route->other_method = &route->metrics->Method("_OTHER");

    const size_t index = table->routes_.size();
    const auto& match = rc.match();
    if (!match.service().empty() && !match.method().empty()) {
      table->exact_.try_emplace(
          absl::StrCat("/", match.service(), "/", match.method()), index);
    } else {
      table->others_.push_back(index);
    }
    table->routes_.push_back(std::move(route));
  }
  return table;
}

bool RouteTable::Matches(const Route& route, std::string_view path) const {
  const auto& match = route.config.match();
  if (!match.prefix().empty()) return path.starts_with(match.prefix());
  if (!match.service().empty()) {
    // "/" + service + "/" + method
    return path.size() > match.service().size() + 2 && path[0] == '/' &&
           path.substr(1, match.service().size()) == match.service() &&
           path[match.service().size() + 1] == '/';
  }
  return true;  // {} matches every call
}

const Route* RouteTable::Match(std::string_view path, size_t path_hash) const {
  size_t exact = routes_.size();
  if (auto it =
          exact_.find(absl::string_view(path.data(), path.size()), path_hash);
      it != exact_.end()) {
    exact = it->second;
  }
  for (size_t index : others_) {
    if (index > exact) break;
    if (Matches(*routes_[index], path)) return routes_[index].get();
  }
  return exact < routes_.size() ? routes_[exact].get() : nullptr;
}

}  // namespace bulwark
