#include "sidecar/route_table.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "policies/clock.h"
#include "sidecar/config_loader.h"
#include "sidecar/log.h"

namespace bulwark {
namespace {

std::string Fingerprint(const config::v1::Route& route) {
  config::v1::Route policies;
  *policies.mutable_rate_limit() = route.rate_limit();
  *policies.mutable_circuit_breaker() = route.circuit_breaker();
  *policies.mutable_concurrency() = route.concurrency();
  *policies.mutable_singleflight() = route.singleflight();
  std::string out;
  policies.SerializeToString(&out);
  return absl::StrCat(route.has_rate_limit(), route.has_circuit_breaker(),
                      route.has_concurrency(), route.has_singleflight(), ":",
                      out);
}

std::shared_ptr<RouteState> NewState(const config::v1::Route& config,
                                     RouteMetrics* metrics,
                                     std::string fingerprint) {
  auto state = std::make_shared<RouteState>();
  state->fingerprint = std::move(fingerprint);
  Clock& clock = RealClock::Get();
  if (config.has_rate_limit()) {
    const auto& rl = config.rate_limit();
    if (rl.key_header().empty()) {
      state->bucket = std::make_unique<TokenBucket>(
          TokenBucketOptions{.rate_per_second = rl.requests_per_second(),
                             .burst = static_cast<int64_t>(rl.burst())},
          clock);
    } else {
      state->keyed = std::make_unique<KeyedRateLimiter>(
          KeyedRateLimiterOptions{.rate_per_second = rl.requests_per_second(),
                                  .burst = static_cast<int64_t>(rl.burst()),
                                  .max_keys = rl.max_keys()},
          clock);
    }
  }
  if (config.has_circuit_breaker()) {
    const auto& cb = config.circuit_breaker();
    const std::string route = config.name();
    metrics->SetBreakerState(RouteMetrics::BreakerState::kClosed);
    state->breaker = std::make_unique<CircuitBreaker>(
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
          metrics->SetBreakerState(ToMetricState(to));
          metrics->BreakerTransitions(ToMetricState(to)).Increment();
          Log(LogLevel::kWarning, "route %s: circuit breaker %s -> %s", route,
              std::string(CircuitBreaker::StateName(from)),
              std::string(CircuitBreaker::StateName(to)));
        });
  }
  if (config.has_concurrency()) {
    const auto& c = config.concurrency();
    state->limiter = std::make_unique<ConcurrencyLimiter>(
        ConcurrencyLimiter::Options{
            .max_in_flight = c.max_in_flight(),
            .max_queued = c.max_queued(),
            .queue_timeout = ToAbslDuration(c.queue_timeout())},
        clock);
  }
  if (config.has_singleflight() && config.singleflight().enabled()) {
    state->flights = std::make_unique<Flights>();
  }
  return state;
}

}  // namespace

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

absl::StatusOr<std::unique_ptr<RouteTable>> RouteTable::Build(
    const config::v1::Config& config,
    const absl::flat_hash_map<std::string, std::shared_ptr<Cluster>>& clusters,
    Metrics& metrics, const RouteTable* previous,
    const absl::flat_hash_set<std::string>* unary_methods) {
  std::unique_ptr<RouteTable> table(new RouteTable());
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
    std::string fingerprint = Fingerprint(rc);
    if (previous != nullptr) {
      for (const auto& old : previous->routes_) {
        if (old->name == rc.name() && old->state->fingerprint == fingerprint) {
          route->state = old->state;
        }
      }
    }
    if (route->state == nullptr) {
      route->state = NewState(rc, route->metrics, std::move(fingerprint));
    }
    if (rc.has_circuit_breaker()) {
      for (int code : rc.circuit_breaker().failure_codes()) {
        if (code >= 0 && code < 17) route->failure_codes.set(code);
      }
      route->breaker_shadow = rc.circuit_breaker().shadow();
    }
    if (rc.has_rate_limit()) {
      route->key_header = rc.rate_limit().key_header();
      route->rate_limit_shadow = rc.rate_limit().shadow();
    }
    if (rc.has_concurrency())
      route->concurrency_shadow = rc.concurrency().shadow();
    if (rc.has_singleflight() && rc.singleflight().enabled()) {
      route->singleflight_shadow = rc.singleflight().shadow();
      route->key_headers.assign(rc.singleflight().key_headers().begin(),
                                rc.singleflight().key_headers().end());
      route->exact_method =
          !rc.match().service().empty() && !rc.match().method().empty();
      route->unary_methods = unary_methods;
    }

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

const Route* RouteTable::Match(std::string_view path) const {
  size_t exact = routes_.size();
  if (auto it = exact_.find(absl::string_view(path.data(), path.size()));
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
