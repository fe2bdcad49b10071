#include "sidecar/config/summary.h"

#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "sidecar/config/common.h"
#include "sidecar/config_loader.h"

namespace bulwark {
namespace config_internal {
namespace {

std::string Shadow(bool shadow) { return shadow ? " (shadow)" : ""; }

}  // namespace

std::string DescribeMatch(const cfg::RouteMatch& match) {
  if (!match.service().empty()) {
    return absl::StrCat("/", match.service(), "/",
                        match.method().empty() ? "*" : match.method());
  }
  if (!match.prefix().empty()) return absl::StrCat("prefix ", match.prefix());
  return "all calls";
}

std::string DescribePolicies(const cfg::Route& route) {
  std::vector<std::string> parts;
  if (route.has_timeout()) {
    parts.push_back(absl::StrCat(
        "timeout ", FormatDurationForHumans(ToAbslDuration(route.timeout()))));
  }
  if (route.has_rate_limit()) {
    const cfg::RateLimit& rl = route.rate_limit();
    std::string key;
    if (!rl.key_header().empty()) {
      key = absl::StrCat(" per ", rl.key_header());
    } else if (rl.key_headers_size() > 0) {
      key = absl::StrCat(" per (", absl::StrJoin(rl.key_headers(), ", "), ")");
    } else if (rl.key() == cfg::RateLimit::PEER_IDENTITY) {
      key = " per peer identity";
    }
    std::string global;
    if (rl.has_global()) {
      global = absl::StrCat(
          ", global on redis ", rl.global().redis(), " (domain ",
          rl.global().domain(), ", ",
          cfg::GlobalRateLimit::OnRedisError_Name(rl.global().on_redis_error()),
          " on redis errors)");
    }
    parts.push_back(absl::StrCat("rate_limit ", rl.requests_per_second(),
                                 "/s burst ", rl.burst(), key, global,
                                 Shadow(rl.shadow())));
  }
  if (route.has_circuit_breaker()) {
    const cfg::CircuitBreaker& cb = route.circuit_breaker();
    parts.push_back(absl::StrCat(
        "circuit_breaker ", cb.consecutive_failures(), " in a row or ",
        cb.failure_rate(), " of >= ", cb.minimum_requests(), " in ",
        FormatDurationForHumans(ToAbslDuration(cb.window())), ", open ",
        FormatDurationForHumans(ToAbslDuration(cb.open_duration())),
        ", deadline failures after ",
        FormatDurationForHumans(ToAbslDuration(cb.deadline_failure_min())),
        Shadow(cb.shadow())));
  }
  if (route.has_singleflight() && route.singleflight().enabled()) {
    const cfg::Singleflight& sf = route.singleflight();
    parts.push_back(absl::StrCat("singleflight key_headers [",
                                 absl::StrJoin(sf.key_headers(), ", "),
                                 "], requests up to ", sf.max_request_bytes(),
                                 " bytes", Shadow(sf.shadow())));
  }
  if (route.has_concurrency()) {
    const cfg::Concurrency& c = route.concurrency();
    const std::string limit =
        c.has_adaptive() ? absl::StrCat("adaptive ", c.adaptive().min_limit(),
                                        "..", c.max_in_flight(), " (from ",
                                        c.adaptive().initial_limit(), ")")
                         : absl::StrCat(c.max_in_flight());
    parts.push_back(absl::StrCat(
        "concurrency ", limit, " in flight, ", c.max_queued(), " queued for ",
        FormatDurationForHumans(ToAbslDuration(c.queue_timeout())),
        c.priority_header().empty()
            ? ""
            : absl::StrCat(", priority from ", c.priority_header()),
        Shadow(c.shadow())));
  }
  if (route.has_retry()) {
    const cfg::Retry& r = route.retry();
    std::vector<std::string> codes;
    for (int code : r.retry_codes()) {
      codes.push_back(cfg::StatusCode_Name(static_cast<cfg::StatusCode>(code)));
    }
    const absl::Duration hedge = ToAbslDuration(r.hedge_delay());
    parts.push_back(absl::StrCat(
        "retry ", r.max_attempts(), " attempts on [",
        absl::StrJoin(codes, ", "), "], ",
        cfg::Retry::Methods_Name(r.methods()), " methods",
        hedge > absl::ZeroDuration()
            ? absl::StrCat(", hedge after ", FormatDurationForHumans(hedge))
            : "",
        ", budget ", r.budget().ratio(), " of calls or ",
        r.budget().min_per_second(), "/s"));
  }
  if (parts.empty()) return "no policies";
  return absl::StrJoin(parts, "; ");
}

std::string DescribeCluster(const cfg::Cluster& cluster) {
  std::string out = absl::StrCat(
      cluster.name(), ": ", absl::StrJoin(cluster.endpoints(), ", "), "; ",
      cfg::Cluster::LoadBalancing_Name(cluster.load_balancing()));
  if (cluster.has_tls()) absl::StrAppend(&out, "; tls");
  if (cluster.has_health_check()) {
    const cfg::HealthCheck& hc = cluster.health_check();
    absl::StrAppend(
        &out, "; health ", cfg::HealthCheck::Mode_Name(hc.mode()), " every ",
        FormatDurationForHumans(ToAbslDuration(hc.interval())), " (timeout ",
        FormatDurationForHumans(ToAbslDuration(hc.timeout())), ")");
  } else {
    absl::StrAppend(&out, "; no health check");
  }
  if (cluster.has_outlier_detection()) {
    const cfg::OutlierDetection& od = cluster.outlier_detection();
    absl::StrAppend(
        &out, "; outlier detection ", od.consecutive_failures(),
        " in a row or ", od.failure_rate(), " of >= ", od.minimum_requests(),
        ", eject ",
        FormatDurationForHumans(ToAbslDuration(od.base_ejection_time())),
        " x count (max ",
        FormatDurationForHumans(ToAbslDuration(od.max_ejection_time())),
        "), min_available ", od.min_available());
  }
  return out;
}

}  // namespace config_internal

namespace pb = ::google::protobuf;
namespace cfg = ::bulwark::config::v1;
using config_internal::DescribeCluster;
using config_internal::DescribeMatch;
using config_internal::DescribePolicies;
using config_internal::FormatDurationForHumans;

std::string ConfigToJson(const config::v1::Config& config) {
  pb::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  if (auto status = pb::util::MessageToJsonString(config, &json, options);
      !status.ok()) {
    // Cannot happen for a Config (no Any, no unknown enum values from YAML);
    // keep the answer valid JSON anyway.
    return absl::StrCat("{\"error\": \"",
                        absl::CEscape(std::string(status.message())), "\"}\n");
  }
  return json;
}

std::string SummarizeConfig(const LoadedConfig& loaded) {
  const cfg::Config& config = loaded.proto;
  std::vector<std::string> lines;
  if (!loaded.source_path.empty()) {
    lines.push_back(absl::StrCat("config: ", loaded.source_path));
  }
  const cfg::Listener& listener = config.listener();
  lines.push_back(absl::StrCat(
      "listener: ", listener.address(),
      listener.has_tls()
          ? (listener.tls().client_ca_file().empty() ? " (tls)" : " (mtls)")
          : " (h2c)",
      ", max_message_bytes ", listener.max_message_bytes(),
      ", max_concurrent_streams ", listener.max_concurrent_streams(),
      ", handshake_timeout ",
      FormatDurationForHumans(ToAbslDuration(listener.handshake_timeout())),
      ", idle_timeout ",
      FormatDurationForHumans(ToAbslDuration(listener.idle_timeout()))));
  lines.push_back(absl::StrCat("admin: ", config.admin().address()));
  lines.push_back(absl::StrCat(
      "workers: ", config.workers(),
      config.workers() == 0 ? " (one per core)" : "", ", drain_timeout ",
      FormatDurationForHumans(ToAbslDuration(config.drain_timeout()))));
  if (!config.descriptor_sets().empty()) {
    lines.push_back(absl::StrCat(
        "descriptor_sets: ", config.descriptor_sets_size(), " file(s), ",
        loaded.unary_methods.size(), " unary and ",
        loaded.streaming_methods.size(), " streaming methods known (",
        loaded.idempotent_methods.size(), " idempotent)"));
  }
  for (const cfg::Redis& redis : config.redis()) {
    lines.push_back(absl::StrCat(
        "redis ", redis.name(), ": ", redis.address(),
        redis.password_file().empty()
            ? ""
            : absl::StrCat(", AUTH",
                           redis.username().empty()
                               ? ""
                               : absl::StrCat(" as ", redis.username())),
        redis.has_tls()
            ? absl::StrCat(", TLS", redis.tls().cert_file().empty()
                                        ? ""
                                        : " with a client certificate")
            : "",
        ", timeout ",
        FormatDurationForHumans(ToAbslDuration(redis.timeout()))));
  }
  lines.push_back(absl::StrCat("clusters: ", config.clusters_size()));
  for (const cfg::Cluster& cluster : config.clusters()) {
    lines.push_back(absl::StrCat("  ", DescribeCluster(cluster)));
  }
  lines.push_back(
      absl::StrCat("routes: ", config.routes_size(), " (first match wins)"));
  for (const cfg::Route& route : config.routes()) {
    lines.push_back(
        absl::StrCat("  ", route.name(), ": ", DescribeMatch(route.match()),
                     " -> ", route.cluster(), "; ", DescribePolicies(route)));
  }
  return absl::StrCat(absl::StrJoin(lines, "\n"), "\n");
}

}  // namespace bulwark
