#include "sidecar/config/defaults.h"

#include <algorithm>
#include <cstdint>

#include "absl/time/time.h"
#include "sidecar/config/common.h"
#include "sidecar/config/yaml_to_proto.h"

namespace bulwark::config_internal {
namespace {

void FillHealthCheckDefaults(cfg::HealthCheck& hc) {
  if (!hc.has_interval()) {
    *hc.mutable_interval() = ToProtoDuration(absl::Seconds(5));
  }
  if (!hc.has_timeout()) {
    *hc.mutable_timeout() = ToProtoDuration(absl::Seconds(1));
  }
  if (!hc.has_jitter()) hc.set_jitter(0.1);
  if (!hc.has_unhealthy_threshold()) hc.set_unhealthy_threshold(3);
  if (!hc.has_healthy_threshold()) hc.set_healthy_threshold(2);
}

void FillRateLimitDefaults(cfg::RateLimit& rl) {
  if (!rl.has_requests_per_second()) rl.set_requests_per_second(100);
  if (!rl.has_burst()) rl.set_burst(200);
  if (!rl.has_max_keys()) rl.set_max_keys(10000);
}

void FillRedisDefaults(cfg::Redis& redis) {
  if (!redis.has_timeout()) {
    *redis.mutable_timeout() = ToProtoDuration(absl::Milliseconds(50));
  }
}

void FillGlobalRateLimitDefaults(cfg::GlobalRateLimit& global,
                                 const FieldPresence& presence) {
  // An explicit "" is kept (and refused by the validator).
  if (!presence.Has(global, "domain")) global.set_domain("default");
}

void FillCircuitBreakerDefaults(cfg::CircuitBreaker& cb,
                                const FieldPresence& presence) {
  if (!cb.has_consecutive_failures()) cb.set_consecutive_failures(5);
  if (!cb.has_failure_rate()) cb.set_failure_rate(0.5);
  if (!cb.has_minimum_requests()) cb.set_minimum_requests(20);
  if (!cb.has_window()) {
    *cb.mutable_window() = ToProtoDuration(absl::Seconds(10));
  }
  if (!cb.has_open_duration()) {
    *cb.mutable_open_duration() = ToProtoDuration(absl::Seconds(30));
  }
  if (!cb.has_half_open_requests()) cb.set_half_open_requests(3);
  // An explicit [] is kept: then only deadline expiry and transport errors
  // count.
  if (!presence.Has(cb, "failure_codes")) {
    for (cfg::StatusCode code : {cfg::UNAVAILABLE, cfg::DEADLINE_EXCEEDED,
                                 cfg::INTERNAL, cfg::UNKNOWN, cfg::DATA_LOSS}) {
      cb.add_failure_codes(code);
    }
  }
  if (!cb.has_slow_call_duration()) {
    *cb.mutable_slow_call_duration() = ToProtoDuration(absl::ZeroDuration());
  }
  if (!cb.has_slow_call_rate()) cb.set_slow_call_rate(1.0);
  if (!cb.has_deadline_failure_min()) {
    *cb.mutable_deadline_failure_min() =
        ToProtoDuration(absl::Milliseconds(100));
  }
}

void FillConcurrencyDefaults(cfg::Concurrency& c) {
  if (!c.has_max_in_flight()) c.set_max_in_flight(64);
  if (!c.has_max_queued()) c.set_max_queued(128);
  if (!c.has_queue_timeout()) {
    *c.mutable_queue_timeout() = ToProtoDuration(absl::Milliseconds(50));
  }
  if (c.has_adaptive()) {
    cfg::AdaptiveConcurrency& a = *c.mutable_adaptive();
    if (!a.has_min_limit()) {
      a.set_min_limit(std::min<uint32_t>(4, c.max_in_flight()));
    }
    if (!a.has_initial_limit()) {
      a.set_initial_limit(std::clamp<uint32_t>(
          20, a.min_limit(), std::max(a.min_limit(), c.max_in_flight())));
    }
    if (!a.has_queue_target()) {
      const absl::Duration queue_timeout =
          absl::Seconds(c.queue_timeout().seconds()) +
          absl::Nanoseconds(c.queue_timeout().nanos());
      *a.mutable_queue_target() =
          ToProtoDuration(std::min(absl::Milliseconds(10), queue_timeout));
    }
    if (!a.has_queue_interval()) {
      *a.mutable_queue_interval() = ToProtoDuration(absl::Milliseconds(100));
    }
  }
}

void FillSingleflightDefaults(cfg::Singleflight& sf,
                              const FieldPresence& presence,
                              uint64_t max_message_bytes) {
  if (!sf.has_enabled()) sf.set_enabled(true);
  // An explicit [] is kept: the key is then the method and the request bytes
  // alone.
  if (!presence.Has(sf, "key_headers")) sf.add_key_headers("authorization");
  // A listener taking smaller messages lowers the default with it, so that
  // the default is always within range. (A max_message_bytes of 0 is reported
  // on its own field; 1 keeps this one quiet.)
  if (!sf.has_max_request_bytes()) {
    sf.set_max_request_bytes(
        std::max<uint64_t>(1, std::min<uint64_t>(65536, max_message_bytes)));
  }
}

void FillOutlierDetectionDefaults(cfg::OutlierDetection& od) {
  if (!od.has_consecutive_failures()) od.set_consecutive_failures(5);
  if (!od.has_failure_rate()) od.set_failure_rate(0.5);
  if (!od.has_minimum_requests()) od.set_minimum_requests(20);
  if (!od.has_window()) {
    *od.mutable_window() = ToProtoDuration(absl::Seconds(10));
  }
  if (!od.has_base_ejection_time()) {
    *od.mutable_base_ejection_time() = ToProtoDuration(absl::Seconds(30));
  }
  if (!od.has_max_ejection_time()) {
    *od.mutable_max_ejection_time() = ToProtoDuration(absl::Seconds(300));
  }
  if (!od.has_min_available()) od.set_min_available(1);
}

void FillRetryDefaults(cfg::Retry& r, const FieldPresence& presence,
                       uint64_t max_message_bytes) {
  if (!r.has_max_attempts()) r.set_max_attempts(3);
  if (!presence.Has(r, "retry_codes")) r.add_retry_codes(cfg::UNAVAILABLE);
  if (!r.has_initial_backoff()) {
    *r.mutable_initial_backoff() = ToProtoDuration(absl::Milliseconds(25));
  }
  if (!r.has_max_backoff()) {
    *r.mutable_max_backoff() = ToProtoDuration(absl::Milliseconds(250));
  }
  if (!r.has_per_attempt_timeout()) {
    *r.mutable_per_attempt_timeout() = ToProtoDuration(absl::ZeroDuration());
  }
  if (!r.has_hedge_delay()) {
    *r.mutable_hedge_delay() = ToProtoDuration(absl::ZeroDuration());
  }
  cfg::RetryBudget& budget = *r.mutable_budget();
  if (!budget.has_ratio()) budget.set_ratio(0.2);
  if (!budget.has_min_per_second()) budget.set_min_per_second(10);
  if (!r.has_max_request_bytes()) {
    r.set_max_request_bytes(
        std::max<uint64_t>(1, std::min<uint64_t>(65536, max_message_bytes)));
  }
}

}  // namespace

void FillDefaults(cfg::Config& config, const FieldPresence& presence) {
  if (config.has_access_log() && !config.access_log().has_sample()) {
    config.mutable_access_log()->set_sample(1.0);
  }
  cfg::Listener& listener = *config.mutable_listener();
  if (!presence.Has(listener, "address")) listener.set_address("0.0.0.0:15000");
  if (!listener.has_max_message_bytes()) {
    listener.set_max_message_bytes(4194304);
  }
  if (!listener.has_max_concurrent_streams()) {
    listener.set_max_concurrent_streams(1000);
  }
  if (!listener.has_handshake_timeout()) {
    *listener.mutable_handshake_timeout() = ToProtoDuration(absl::Seconds(10));
  }
  if (!listener.has_idle_timeout()) {
    *listener.mutable_idle_timeout() = ToProtoDuration(absl::Hours(1));
  }
  cfg::Admin& admin = *config.mutable_admin();
  if (!presence.Has(admin, "address")) admin.set_address("0.0.0.0:15001");
  if (!config.has_drain_timeout()) {
    *config.mutable_drain_timeout() = ToProtoDuration(absl::Seconds(20));
  }
  if (!config.has_workers()) config.set_workers(0);
  for (cfg::Redis& redis : *config.mutable_redis()) FillRedisDefaults(redis);
  for (cfg::Cluster& cluster : *config.mutable_clusters()) {
    if (cluster.has_health_check()) {
      FillHealthCheckDefaults(*cluster.mutable_health_check());
    }
    if (cluster.has_outlier_detection()) {
      FillOutlierDetectionDefaults(*cluster.mutable_outlier_detection());
    }
    if (!cluster.has_dns_refresh_interval()) {
      *cluster.mutable_dns_refresh_interval() =
          ToProtoDuration(absl::Seconds(5));
    }
  }
  for (cfg::Route& route : *config.mutable_routes()) {
    if (route.has_rate_limit()) {
      FillRateLimitDefaults(*route.mutable_rate_limit());
      if (route.rate_limit().has_global()) {
        FillGlobalRateLimitDefaults(
            *route.mutable_rate_limit()->mutable_global(), presence);
      }
    }
    if (route.has_circuit_breaker()) {
      FillCircuitBreakerDefaults(*route.mutable_circuit_breaker(), presence);
    }
    if (route.has_concurrency()) {
      FillConcurrencyDefaults(*route.mutable_concurrency());
    }
    if (route.has_singleflight()) {
      FillSingleflightDefaults(*route.mutable_singleflight(), presence,
                               listener.max_message_bytes());
    }
    if (route.has_retry()) {
      FillRetryDefaults(*route.mutable_retry(), presence,
                        listener.max_message_bytes());
    }
  }
}

}  // namespace bulwark::config_internal
