#include "sidecar/config/validator.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/descriptor_database.h"
#include "google/protobuf/message.h"
#include "sidecar/config/common.h"
#include "sidecar/config_loader.h"
#include "sidecar/file_util.h"
#include "sidecar/host_port.h"
#include "sidecar/validation_errors.h"

namespace bulwark::config_internal {
namespace {

using Field = ValidationErrors::ScopedField;

bool IsHeaderNameChar(char c) {
  // RFC 9110 tchar, lower case only (HTTP/2 forbids upper-case field names).
  if (absl::ascii_islower(static_cast<unsigned char>(c)) ||
      absl::ascii_isdigit(static_cast<unsigned char>(c))) {
    return true;
  }
  return absl::string_view("!#$%&'*+-.^_`|~").find(c) !=
         absl::string_view::npos;
}

// Ranges (SPEC section 2: every number has a maximum as well as a minimum).
// The maximums sit far above any real use (the benchmark configs' 1e9 rates
// and 100 000 slots among them); they exist so that no value a file may hold
// makes the sidecar abort, reject every call, or hold memory out of
// proportion to its traffic. config.proto documents each one.
constexpr uint64_t kMaxConcurrentStreams = 1'000'000;
constexpr uint64_t kMaxHealthThreshold = 1'000;
constexpr absl::Duration kMaxRouteTimeout = absl::Hours(24);
constexpr double kMaxRequestsPerSecond = 1e9;
constexpr uint64_t kMaxBurst = 1'000'000'000'000;
constexpr uint64_t kMaxKeys = 10'000'000;
constexpr uint64_t kMaxBreakerCount = 1'000'000;
constexpr uint64_t kMaxHalfOpenRequests = 10'000;
constexpr absl::Duration kMaxBreakerDuration = absl::Hours(1);
constexpr uint64_t kMaxInFlight = 1'000'000;
constexpr uint64_t kMaxQueued = 1'000'000;
constexpr absl::Duration kMaxQueueTimeout = absl::Hours(1);
constexpr uint64_t kMaxMessageBytes = std::numeric_limits<int32_t>::max();
constexpr uint64_t kMaxMinAvailable = 100'000;
constexpr double kMaxRetryRatio = 10;
constexpr double kMaxRetryMinPerSecond = 1e6;
constexpr int kMaxKeyHeaders = 8;
constexpr size_t kMaxDomainBytes = 64;

void CheckAtLeast(ValidationErrors& errors, absl::string_view field,
                  uint64_t value, uint64_t min) {
  if (value >= min) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(absl::StrCat("must be >= ", min, " (got ", value, ")"));
}

void CheckAtMost(ValidationErrors& errors, absl::string_view field,
                 uint64_t value, uint64_t max) {
  if (value <= max) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(absl::StrCat("must be <= ", max, " (got ", value, ")"));
}

// [min, max], reported as whichever side is crossed.
void CheckBetween(ValidationErrors& errors, absl::string_view field,
                  uint64_t value, uint64_t min, uint64_t max) {
  CheckAtLeast(errors, field, value, min);
  CheckAtMost(errors, field, value, max);
}

// (0, 1] when `zero_allowed` is false, [0, 1] otherwise. Written so that NaN
// fails.
void CheckRatio(ValidationErrors& errors, absl::string_view field, double value,
                bool zero_allowed) {
  const bool ok = (zero_allowed ? value >= 0 : value > 0) && value <= 1;
  if (ok) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(absl::StrCat(
      "must be in ", zero_allowed ? "[0, 1]" : "(0, 1]", " (got ", value, ")"));
}

void CheckDurationBetween(ValidationErrors& errors, absl::string_view field,
                          const pb::Duration& value, absl::Duration min,
                          absl::Duration max) {
  const absl::Duration d = ToAbslDuration(value);
  if (d >= min && d <= max) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(absl::StrCat("must be between ", FormatDurationForHumans(min),
                               " and ", FormatDurationForHumans(max), " (got ",
                               FormatDurationForHumans(d), ")"));
}

void CheckDurationPositive(ValidationErrors& errors, absl::string_view field,
                           const pb::Duration& value) {
  const absl::Duration d = ToAbslDuration(value);
  if (d > absl::ZeroDuration()) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(
      absl::StrCat("must be > 0 (got ", FormatDurationForHumans(d), ")"));
}

void CheckDurationAtMost(ValidationErrors& errors, absl::string_view field,
                         const pb::Duration& value, absl::Duration max) {
  const absl::Duration d = ToAbslDuration(value);
  if (d <= max) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(absl::StrCat("must be <= ", FormatDurationForHumans(max),
                               " (got ", FormatDurationForHumans(d), ")"));
}

// (0, max]: the existing "> 0" message for zero, "<= max" above.
void CheckDurationPositiveAtMost(ValidationErrors& errors,
                                 absl::string_view field,
                                 const pb::Duration& value,
                                 absl::Duration max) {
  CheckDurationPositive(errors, field, value);
  CheckDurationAtMost(errors, field, value, max);
}

// "at least one cluster is required" under `field` when its list is empty.
void CheckNotEmpty(ValidationErrors& errors, absl::string_view field, int size,
                   absl::string_view what) {
  if (size > 0) return;
  Field f(&errors, std::string(field));
  errors.AddError(absl::StrCat("at least one ", what, " is required"));
}

// A cluster's or route's `name`: not empty, and not that of an earlier entry
// ("also clusters[0]"); `seen` maps the names so far to their index.
void CheckName(ValidationErrors& errors, absl::string_view kind,
               const std::string& name, int index,
               absl::flat_hash_map<std::string, int>& seen) {
  Field n(&errors, ".name");
  if (name.empty()) {
    errors.AddError("must not be empty");
  } else if (auto [it, inserted] = seen.emplace(name, index); !inserted) {
    errors.AddError(absl::StrCat("duplicate ", kind, " name ", Quote(name),
                                 " (also ", kind, "s[", it->second, "])"));
  }
}

// -----------------------------------------------------------------------------
// Files. Every file the config names is read through ReadConfigFile
// (sidecar/file_util.h): regular files of at most 16 MiB only.

std::string ResolvePath(absl::string_view base_dir, const std::string& path) {
  const std::filesystem::path p(path);
  if (base_dir.empty() || p.is_absolute()) return path;
  return (std::filesystem::path(std::string(base_dir)) / p)
      .lexically_normal()
      .string();
}

// Keeps the first error of building descriptors (a missing import, say):
// the one that explains the others.
class DescriptorErrors : public pb::DescriptorPool::ErrorCollector {
 public:
  void AddError(const std::string& filename,
                const std::string& /*element_name*/,
                const pb::Message* /*descriptor*/, ErrorLocation /*location*/,
                const std::string& message) override {
    if (first_.empty()) first_ = absl::StrCat(filename, ": ", message);
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

}  // namespace

void CheckHeaderName(ValidationErrors& errors, const std::string& name) {
  if (name.empty()) {
    errors.AddError("must not be empty");
  } else if (name.front() == ':') {
    errors.AddError(
        absl::StrCat("must not be a pseudo-header (got ", Quote(name), ")"));
  } else if (!std::all_of(name.begin(), name.end(), IsHeaderNameChar)) {
    errors.AddError(absl::StrCat(
        "must be a lower-case HTTP/2 header name (got ", Quote(name), ")"));
  }
}

bool RouteMatchesPath(const cfg::RouteMatch& match, absl::string_view path) {
  if (!match.service().empty()) {
    const std::string service_prefix = absl::StrCat("/", match.service(), "/");
    if (!match.method().empty()) {
      return path == absl::StrCat(service_prefix, match.method());
    }
    return absl::StartsWith(path, service_prefix);
  }
  if (!match.prefix().empty()) return absl::StartsWith(path, match.prefix());
  return true;
}

void ConfigValidator::Validate() {
  if (config_.workers() > 256) {
    Field f(&errors_, "workers");
    errors_.AddError(
        absl::StrCat("must be <= 256 (got ", config_.workers(), ")"));
  }
  CheckDurationBetween(errors_, "drain_timeout", config_.drain_timeout(),
                       absl::ZeroDuration(), absl::Hours(1));
  ValidateListenerAndAdmin();
  LoadDescriptorSets();
  ValidateClusters();
  ValidateRedis();
  ValidateRoutes();
  if (config_.has_access_log()) {
    Field f(&errors_, "access_log");
    cfg::AccessLog& log = *config_.mutable_access_log();
    CheckRatio(errors_, "sample", log.sample(), /*zero_allowed=*/true);
    if (!log.path().empty() && log.path() != "/dev/stdout") {
      log.set_path(ResolvePath(base_dir_, log.path()));
    }
  }
}

void ConfigValidator::ResolveAndCheckFile(absl::string_view field,
                                          std::string* path) {
  if (path->empty()) return;
  Field f(&errors_, absl::StrCat(".", field));
  const std::string original = *path;
  *path = ResolvePath(base_dir_, original);
  if (auto content = ReadConfigFile(*path); !content.ok()) {
    errors_.AddError(absl::StrCat("cannot read ", DescribePath(original, *path),
                                  ": ", content.status().message()));
  } else if (content->empty()) {
    errors_.AddError(absl::StrCat(DescribePath(original, *path), " is empty"));
  }
}

void ConfigValidator::CheckClientTls(std::string* ca_file,
                                     std::string* cert_file,
                                     std::string* key_file) {
  if (cert_file->empty() != key_file->empty()) {
    const bool cert_missing = cert_file->empty();
    Field m(&errors_, cert_missing ? ".cert_file" : ".key_file");
    errors_.AddError(cert_missing ? "required when key_file is set"
                                  : "required when cert_file is set");
  }
  ResolveAndCheckFile("ca_file", ca_file);
  ResolveAndCheckFile("cert_file", cert_file);
  ResolveAndCheckFile("key_file", key_file);
}

std::string ConfigValidator::DescribePath(const std::string& original,
                                          const std::string& resolved) {
  if (original == resolved) return Quote(original);
  return absl::StrCat(Quote(original), " (resolved to ", resolved, ")");
}

std::optional<HostPort> ConfigValidator::CheckAddress(
    absl::string_view field, const std::string& address, PortZero port_zero) {
  if (auto parsed = ParseHostPort(address, port_zero); parsed.ok()) {
    return *std::move(parsed);
  } else {
    Field f(&errors_, absl::StrCat(".", field));
    errors_.AddError(std::string(parsed.status().message()));
    return std::nullopt;
  }
}

void ConfigValidator::ValidateListenerAndAdmin() {
  std::optional<HostPort> listener_address;
  {
    Field f(&errors_, "listener");
    cfg::Listener& listener = *config_.mutable_listener();
    // Port 0 = ephemeral: what tests use to run many sidecars side by side.
    listener_address =
        CheckAddress("address", listener.address(), PortZero::kAllow);
    if (listener.max_message_bytes() < 1 ||
        listener.max_message_bytes() > kMaxMessageBytes) {
      Field m(&errors_, ".max_message_bytes");
      errors_.AddError(absl::StrCat("must be between 1 and ", kMaxMessageBytes,
                                    " (got ", listener.max_message_bytes(),
                                    ")"));
    }
    CheckBetween(errors_, "max_concurrent_streams",
                 listener.max_concurrent_streams(), 1, kMaxConcurrentStreams);
    CheckDurationBetween(errors_, "handshake_timeout",
                         listener.handshake_timeout(), absl::Milliseconds(100),
                         absl::Hours(1));
    CheckDurationBetween(errors_, "idle_timeout", listener.idle_timeout(),
                         absl::Seconds(1), absl::Hours(24));
    if (listener.has_tls()) {
      Field t(&errors_, ".tls");
      cfg::ListenerTls& tls = *listener.mutable_tls();
      if (tls.cert_file().empty()) {
        Field r(&errors_, ".cert_file");
        errors_.AddError("required when tls is set");
      }
      if (tls.key_file().empty()) {
        Field r(&errors_, ".key_file");
        errors_.AddError("required when tls is set");
      }
      ResolveAndCheckFile("cert_file", tls.mutable_cert_file());
      ResolveAndCheckFile("key_file", tls.mutable_key_file());
      ResolveAndCheckFile("client_ca_file", tls.mutable_client_ca_file());
    }
  }
  Field f(&errors_, "admin");
  std::optional<HostPort> admin_address =
      CheckAddress("address", config_.admin().address(), PortZero::kAllow);
  if (listener_address.has_value() && admin_address.has_value() &&
      Overlap(*listener_address, *admin_address)) {
    Field a(&errors_, ".address");
    errors_.AddError(absl::StrCat("conflicts with listener.address ",
                                  Quote(config_.listener().address()),
                                  " (same port)"));
  }
}

bool ConfigValidator::Overlap(const HostPort& a, const HostPort& b) {
  if (a.port == 0 || a.port != b.port) return false;
  auto wildcard = [](const HostPort& x) {
    return x.host == "0.0.0.0" || x.host == "::";
  };
  return a.host == b.host || wildcard(a) || wildcard(b);
}

void ConfigValidator::LoadDescriptorSets() {
  auto& paths = *config_.mutable_descriptor_sets();
  for (int i = 0; i < paths.size(); ++i) {
    Field f(&errors_, absl::StrCat("descriptor_sets[", i, "]"));
    const std::string original = paths[i];
    if (original.empty()) {
      errors_.AddError("must not be empty");
      continue;
    }
    paths[i] = ResolvePath(base_dir_, original);
    if (auto content = ReadConfigFile(paths[i]); content.ok()) {
      LoadDescriptorSet(*content, DescribePath(original, paths[i]));
    } else {
      errors_.AddError(absl::StrCat("cannot read ",
                                    DescribePath(original, paths[i]), ": ",
                                    content.status().message()));
    }
  }
}

void ConfigValidator::LoadDescriptorSet(const std::string& content,
                                        const std::string& described) {
  pb::FileDescriptorSet set;
  if (!set.ParseFromString(content)) {
    errors_.AddError(absl::StrCat(described, " is not a FileDescriptorSet"));
    return;
  }
  if (set.file_size() == 0) {
    errors_.AddError(
        absl::StrCat(described,
                     " holds no files (build it with protoc --include_imports "
                     "--descriptor_set_out)"));
    return;
  }
  // A pool over a database builds files on demand with their imports,
  // whatever the order of the set; a missing import (no --include_imports)
  // fails the lookup.
  pb::SimpleDescriptorDatabase database;
  for (const pb::FileDescriptorProto& file : set.file()) {
    pb::FileDescriptorProto existing;
    if (database.FindFileByName(file.name(), &existing)) continue;
    database.Add(file);
  }
  DescriptorErrors build_errors;
  pb::DescriptorPool pool(&database, &build_errors);
  for (const pb::FileDescriptorProto& file_proto : set.file()) {
    const pb::FileDescriptor* file = pool.FindFileByName(file_proto.name());
    if (file == nullptr) {
      errors_.AddError(
          absl::StrCat(described, " is invalid: ", build_errors.first()));
      return;
    }
    for (int s = 0; s < file->service_count(); ++s) {
      const pb::ServiceDescriptor* service = file->service(s);
      for (int m = 0; m < service->method_count(); ++m) {
        const pb::MethodDescriptor* method = service->method(m);
        std::string path =
            absl::StrCat("/", service->full_name(), "/", method->name());
        if (method->client_streaming() || method->server_streaming()) {
          out_.streaming_methods.insert(std::move(path));
        } else {
          const auto level = method->options().idempotency_level();
          if (level == pb::MethodOptions::IDEMPOTENT ||
              level == pb::MethodOptions::NO_SIDE_EFFECTS) {
            out_.idempotent_methods.insert(path);
          }
          out_.unary_methods.insert(std::move(path));
        }
      }
    }
  }
}

void ConfigValidator::ValidateClusters() {
  CheckNotEmpty(errors_, "clusters", config_.clusters_size(), "cluster");
  for (int i = 0; i < config_.clusters_size(); ++i) {
    Field f(&errors_, absl::StrCat("clusters[", i, "]"));
    ValidateCluster(i, *config_.mutable_clusters(i));
  }
}

void ConfigValidator::ValidateCluster(int index, cfg::Cluster& cluster) {
  CheckName(errors_, "cluster", cluster.name(), index, cluster_index_);
  CheckNotEmpty(errors_, ".endpoints", cluster.endpoints_size(), "endpoint");
  absl::flat_hash_map<std::string, int> seen;
  for (int i = 0; i < cluster.endpoints_size(); ++i) {
    Field e(&errors_, absl::StrCat(".endpoints[", i, "]"));
    if (auto parsed = ParseHostPort(cluster.endpoints(i), PortZero::kReject);
        !parsed.ok()) {
      errors_.AddError(std::string(parsed.status().message()));
    } else if (auto [it, inserted] = seen.emplace(parsed->ToString(), i);
               !inserted) {
      // Endpoint health and load are kept per address: two entries would be
      // one.
      errors_.AddError(absl::StrCat("duplicate endpoint ",
                                    Quote(cluster.endpoints(i)),
                                    " (also endpoints[", it->second, "])"));
    }
  }
  if (cluster.has_tls()) {
    Field t(&errors_, ".tls");
    cfg::UpstreamTls& tls = *cluster.mutable_tls();
    CheckClientTls(tls.mutable_ca_file(), tls.mutable_cert_file(),
                   tls.mutable_key_file());
  }
  if (const absl::Duration refresh =
          ToAbslDuration(cluster.dns_refresh_interval());
      refresh != absl::ZeroDuration()) {
    CheckDurationBetween(errors_, "dns_refresh_interval",
                         cluster.dns_refresh_interval(),
                         absl::Milliseconds(100), absl::Hours(1));
  }
  if (cluster.has_outlier_detection()) {
    ValidateOutlierDetection(cluster.outlier_detection());
  }
  if (cluster.has_health_check()) {
    Field h(&errors_, ".health_check");
    const cfg::HealthCheck& hc = cluster.health_check();
    CheckDurationBetween(errors_, "interval", hc.interval(),
                         absl::Milliseconds(10), absl::Hours(1));
    CheckDurationBetween(errors_, "timeout", hc.timeout(),
                         absl::Milliseconds(1), absl::Hours(1));
    CheckRatio(errors_, "jitter", hc.jitter(), /*zero_allowed=*/true);
    CheckBetween(errors_, "unhealthy_threshold", hc.unhealthy_threshold(), 1,
                 kMaxHealthThreshold);
    CheckBetween(errors_, "healthy_threshold", hc.healthy_threshold(), 1,
                 kMaxHealthThreshold);
  }
}

void ConfigValidator::ValidateRedis() {
  for (int i = 0; i < config_.redis_size(); ++i) {
    Field f(&errors_, absl::StrCat("redis[", i, "]"));
    cfg::Redis& redis = *config_.mutable_redis(i);
    {
      Field n(&errors_, ".name");
      if (redis.name().empty()) {
        errors_.AddError("must not be empty");
      } else if (auto [it, inserted] = redis_index_.emplace(redis.name(), i);
                 !inserted) {
        errors_.AddError(absl::StrCat("duplicate redis name ",
                                      Quote(redis.name()), " (also redis[",
                                      it->second, "])"));
      }
    }
    ValidateRedisEntry(redis);
  }
}

void ConfigValidator::ValidateRedisEntry(cfg::Redis& redis) {
  if (redis.address().empty()) {
    Field a(&errors_, ".address");
    errors_.AddError("must not be empty");
  } else {
    CheckAddress("address", redis.address(), PortZero::kReject);
  }
  if (!redis.username().empty() && redis.password_file().empty()) {
    Field u(&errors_, ".username");
    errors_.AddError("needs password_file (AUTH username password)");
  }
  if (!redis.password_file().empty()) {
    Field p(&errors_, ".password_file");
    const std::string original = redis.password_file();
    redis.set_password_file(ResolvePath(base_dir_, original));
    if (auto content = ReadConfigFile(redis.password_file()); !content.ok()) {
      errors_.AddError(absl::StrCat(
          "cannot read ", DescribePath(original, redis.password_file()), ": ",
          content.status().message()));
    } else {
      std::string password = *std::move(content);
      if (absl::EndsWith(password, "\n")) {
        password.pop_back();
        if (absl::EndsWith(password, "\r")) password.pop_back();
      }
      if (password.empty()) {
        errors_.AddError(absl::StrCat(
            DescribePath(original, redis.password_file()), " is empty"));
      } else if (password.find_first_of("\r\n") != std::string::npos) {
        errors_.AddError(absl::StrCat(
            DescribePath(original, redis.password_file()),
            " holds more than one line (the password is the whole file, one "
            "trailing newline stripped)"));
      } else if (!redis.name().empty()) {
        out_.redis_passwords[redis.name()] = std::move(password);
      }
    }
  }
  if (redis.has_tls()) {
    // Through the store's TLS bridge (hiredis 0.14 has no TLS of its own).
    Field t(&errors_, ".tls");
    cfg::RedisTls& tls = *redis.mutable_tls();
    CheckClientTls(tls.mutable_ca_file(), tls.mutable_cert_file(),
                   tls.mutable_key_file());
  }
  CheckDurationBetween(errors_, "timeout", redis.timeout(),
                       absl::Milliseconds(1), absl::Seconds(10));
}

void ConfigValidator::ValidateRoutes() {
  CheckNotEmpty(errors_, "routes", config_.routes_size(), "route");
  absl::flat_hash_map<std::string, int> names;
  for (int i = 0; i < config_.routes_size(); ++i) {
    Field f(&errors_, absl::StrCat("routes[", i, "]"));
    const cfg::Route& route = config_.routes(i);
    CheckName(errors_, "route", route.name(), i, names);
    ValidateRouteCluster(route);
    const size_t errors_before = errors_.size();
    ValidateMatch(route.match());
    const bool match_ok = errors_.size() == errors_before;
    if (route.has_timeout()) {
      CheckDurationPositiveAtMost(errors_, "timeout", route.timeout(),
                                  kMaxRouteTimeout);
    }
    if (route.has_rate_limit()) ValidateRateLimit(route.rate_limit());
    if (route.has_circuit_breaker()) {
      ValidateCircuitBreaker(route.circuit_breaker());
    }
    if (route.has_concurrency()) ValidateConcurrency(route.concurrency());
    if (route.has_singleflight()) ValidateSingleflight(route, match_ok);
    if (route.has_retry()) ValidateRetry(route, match_ok);
  }
}

void ConfigValidator::ValidateOutlierDetection(
    const cfg::OutlierDetection& od) {
  Field f(&errors_, ".outlier_detection");
  CheckAtMost(errors_, "consecutive_failures", od.consecutive_failures(),
              kMaxBreakerCount);
  CheckRatio(errors_, "failure_rate", od.failure_rate(),
             /*zero_allowed=*/false);
  CheckBetween(errors_, "minimum_requests", od.minimum_requests(), 1,
               kMaxBreakerCount);
  CheckDurationBetween(errors_, "window", od.window(), absl::Seconds(1),
                       absl::Hours(1));
  CheckDurationPositiveAtMost(errors_, "base_ejection_time",
                              od.base_ejection_time(), absl::Hours(1));
  CheckDurationBetween(
      errors_, "max_ejection_time", od.max_ejection_time(),
      std::max(absl::Nanoseconds(1), ToAbslDuration(od.base_ejection_time())),
      absl::Hours(24));
  CheckAtMost(errors_, "min_available", od.min_available(), kMaxMinAvailable);
}

void ConfigValidator::ValidateRetry(const cfg::Route& route, bool match_ok) {
  Field f(&errors_, ".retry");
  const cfg::Retry& r = route.retry();
  CheckBetween(errors_, "max_attempts", r.max_attempts(), 2, 5);
  for (int i = 0; i < r.retry_codes_size(); ++i) {
    Field c(&errors_, absl::StrCat(".retry_codes[", i, "]"));
    if (r.retry_codes(i) == cfg::OK) {
      errors_.AddError("OK cannot be retried");
    } else if (r.retry_codes(i) == cfg::RESOURCE_EXHAUSTED) {
      // Retrying what an overloaded upstream (or a limit) refused is what
      // turns overload into a retry storm.
      errors_.AddError("RESOURCE_EXHAUSTED is never retried");
    }
  }
  CheckDurationBetween(errors_, "initial_backoff", r.initial_backoff(),
                       absl::Milliseconds(1), absl::Minutes(1));
  CheckDurationBetween(
      errors_, "max_backoff", r.max_backoff(),
      std::max(absl::Milliseconds(1), ToAbslDuration(r.initial_backoff())),
      absl::Hours(1));
  CheckDurationAtMost(errors_, "per_attempt_timeout", r.per_attempt_timeout(),
                      kMaxRouteTimeout);
  CheckDurationAtMost(errors_, "hedge_delay", r.hedge_delay(), absl::Hours(1));
  {
    Field b(&errors_, ".budget");
    const cfg::RetryBudget& budget = r.budget();
    if (!(budget.ratio() >= 0 && budget.ratio() <= kMaxRetryRatio)) {
      Field x(&errors_, ".ratio");
      errors_.AddError(absl::StrCat("must be in [0, ", kMaxRetryRatio,
                                    "] (got ", budget.ratio(), ")"));
    }
    if (!(budget.min_per_second() >= 0 &&
          budget.min_per_second() <= kMaxRetryMinPerSecond)) {
      Field x(&errors_, ".min_per_second");
      errors_.AddError(absl::StrCat("must be in [0, ", kMaxRetryMinPerSecond,
                                    "] (got ", budget.min_per_second(), ")"));
    }
  }
  ValidateMaxRequestBytes(r.max_request_bytes());
  if (!match_ok) return;
  // Which calls a retry may apply to: unary ones (known as for singleflight),
  // and with IDEMPOTENT only those descriptor_sets mark safe to repeat.
  const cfg::RouteMatch& match = route.match();
  const bool exact = !match.service().empty() && !match.method().empty();
  const std::string exact_path =
      exact ? absl::StrCat("/", match.service(), "/", match.method()) : "";
  Field m(&errors_, ".methods");
  if (exact && out_.streaming_methods.contains(exact_path)) {
    errors_.AddError(absl::StrCat(exact_path,
                                  " is a streaming method (per "
                                  "descriptor_sets); retries are for unary "
                                  "calls only"));
    return;
  }
  if (r.methods() == cfg::Retry::ALL) {
    if (exact) return;
    for (const std::string& path : out_.unary_methods) {
      if (RouteMatchesPath(match, path)) return;
    }
    errors_.AddError(
        "retry needs a route that matches one exact method (service + "
        "method) or methods known unary from descriptor_sets");
    return;
  }
  for (const std::string& path : out_.idempotent_methods) {
    if (RouteMatchesPath(match, path)) return;
  }
  errors_.AddError(
      "IDEMPOTENT: no method of this route is marked idempotency_level "
      "IDEMPOTENT or NO_SIDE_EFFECTS in descriptor_sets (mark them, or set "
      "methods: ALL to retry every unary method)");
}

void ConfigValidator::ValidateRouteCluster(const cfg::Route& route) {
  Field c(&errors_, ".cluster");
  if (route.cluster().empty()) {
    errors_.AddError("must not be empty");
  } else if (!cluster_index_.contains(route.cluster())) {
    std::vector<absl::string_view> known;
    for (const cfg::Cluster& cluster : config_.clusters()) {
      if (!cluster.name().empty()) known.push_back(cluster.name());
    }
    errors_.AddError(absl::StrCat("unknown cluster ", Quote(route.cluster()),
                                  " (clusters: ", absl::StrJoin(known, ", "),
                                  ")"));
  }
}

void ConfigValidator::ValidateMatch(const cfg::RouteMatch& match) {
  Field m(&errors_, ".match");
  if (match.service().find('/') != std::string::npos) {
    Field s(&errors_, ".service");
    errors_.AddError(
        absl::StrCat("must be a fully qualified service name without '/' (got ",
                     Quote(match.service()), ")"));
  }
  if (!match.method().empty()) {
    Field s(&errors_, ".method");
    if (match.service().empty()) {
      errors_.AddError("requires service");
    } else if (match.method().find('/') != std::string::npos) {
      errors_.AddError(absl::StrCat("must be a method name without '/' (got ",
                                    Quote(match.method()), ")"));
    }
  }
  if (!match.prefix().empty()) {
    Field p(&errors_, ".prefix");
    if (!match.service().empty()) {
      errors_.AddError("cannot be combined with service");
    } else if (match.prefix().front() != '/') {
      errors_.AddError(absl::StrCat("must start with '/' (got ",
                                    Quote(match.prefix()), ")"));
    }
  }
}

void ConfigValidator::ValidateRateLimit(const cfg::RateLimit& rl) {
  Field f(&errors_, ".rate_limit");
  if (!(rl.requests_per_second() > 0 &&
        std::isfinite(rl.requests_per_second()))) {
    Field r(&errors_, ".requests_per_second");
    errors_.AddError(absl::StrCat("must be > 0 and finite (got ",
                                  rl.requests_per_second(), ")"));
  } else if (rl.requests_per_second() > kMaxRequestsPerSecond) {
    Field r(&errors_, ".requests_per_second");
    errors_.AddError(
        absl::StrCat("must be <= ", static_cast<int64_t>(kMaxRequestsPerSecond),
                     " (got ", rl.requests_per_second(), ")"));
  }
  CheckBetween(errors_, "burst", rl.burst(), 1, kMaxBurst);
  CheckBetween(errors_, "max_keys", rl.max_keys(), 1, kMaxKeys);
  ValidateRateLimitKey(rl);
  if (rl.has_global()) ValidateGlobalRateLimit(rl.global());
}

void ConfigValidator::ValidateRateLimitKey(const cfg::RateLimit& rl) {
  if (!rl.key_header().empty()) {
    Field k(&errors_, ".key_header");
    CheckHeaderName(errors_, rl.key_header());
  }
  if (rl.key_headers_size() > 0) {
    Field k(&errors_, ".key_headers");
    if (!rl.key_header().empty()) {
      errors_.AddError("cannot be combined with key_header (list it here)");
    }
    if (rl.key_headers_size() > kMaxKeyHeaders) {
      errors_.AddError(absl::StrCat("at most ", kMaxKeyHeaders,
                                    " headers (got ", rl.key_headers_size(),
                                    ")"));
    }
    absl::flat_hash_map<std::string, int> seen;
    for (int i = 0; i < rl.key_headers_size(); ++i) {
      Field h(&errors_, absl::StrCat("[", i, "]"));
      CheckHeaderName(errors_, rl.key_headers(i));
      if (auto [it, inserted] = seen.emplace(rl.key_headers(i), i);
          !inserted && !rl.key_headers(i).empty()) {
        errors_.AddError(absl::StrCat("duplicate header ",
                                      Quote(rl.key_headers(i)),
                                      " (also key_headers[", it->second, "])"));
      }
    }
  }
  if (rl.key() == cfg::RateLimit::PEER_IDENTITY) {
    Field k(&errors_, ".key");
    if (!rl.key_header().empty() || rl.key_headers_size() > 0) {
      errors_.AddError(
          "PEER_IDENTITY cannot be combined with key_header or key_headers");
    }
    const cfg::Listener& listener = config_.listener();
    if (!listener.has_tls() || listener.tls().client_ca_file().empty()) {
      errors_.AddError(
          "PEER_IDENTITY needs listener.tls with client_ca_file (mTLS: the "
          "identity is the client certificate's URI SAN or subject CN)");
    }
  }
}

void ConfigValidator::ValidateGlobalRateLimit(
    const cfg::GlobalRateLimit& global) {
  Field g(&errors_, ".global");
  {
    Field r(&errors_, ".redis");
    if (global.redis().empty()) {
      errors_.AddError("must name a redis entry");
    } else if (!redis_index_.contains(global.redis())) {
      std::vector<absl::string_view> known;
      for (const cfg::Redis& redis : config_.redis()) {
        if (!redis.name().empty()) known.push_back(redis.name());
      }
      errors_.AddError(absl::StrCat(
          "unknown redis ", Quote(global.redis()), " (redis: ",
          known.empty() ? "none configured" : absl::StrJoin(known, ", "), ")"));
    }
  }
  const std::string& domain = global.domain();
  const bool plain = std::all_of(domain.begin(), domain.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
           c == '_' || c == '-';
  });
  if (domain.empty() || domain.size() > kMaxDomainBytes || !plain) {
    Field d(&errors_, ".domain");
    errors_.AddError(absl::StrCat("must be 1..", kMaxDomainBytes,
                                  " bytes of [A-Za-z0-9._-] (got ",
                                  Quote(domain), ")"));
  }
}

void ConfigValidator::ValidateCircuitBreaker(const cfg::CircuitBreaker& cb) {
  Field f(&errors_, ".circuit_breaker");
  CheckAtMost(errors_, "consecutive_failures", cb.consecutive_failures(),
              kMaxBreakerCount);
  CheckRatio(errors_, "failure_rate", cb.failure_rate(),
             /*zero_allowed=*/false);
  CheckBetween(errors_, "minimum_requests", cb.minimum_requests(), 1,
               kMaxBreakerCount);
  CheckDurationBetween(errors_, "window", cb.window(), absl::Seconds(1),
                       absl::Hours(1));
  CheckDurationPositiveAtMost(errors_, "open_duration", cb.open_duration(),
                              kMaxBreakerDuration);
  CheckBetween(errors_, "half_open_requests", cb.half_open_requests(), 1,
               kMaxHalfOpenRequests);
  for (int i = 0; i < cb.failure_codes_size(); ++i) {
    if (cb.failure_codes(i) == cfg::OK) {
      Field c(&errors_, absl::StrCat(".failure_codes[", i, "]"));
      errors_.AddError("OK cannot be a failure code");
    }
  }
  CheckDurationAtMost(errors_, "slow_call_duration", cb.slow_call_duration(),
                      kMaxBreakerDuration);
  CheckRatio(errors_, "slow_call_rate", cb.slow_call_rate(),
             /*zero_allowed=*/false);
  CheckDurationAtMost(errors_, "deadline_failure_min",
                      cb.deadline_failure_min(), kMaxBreakerDuration);
}

void ConfigValidator::ValidateConcurrency(const cfg::Concurrency& c) {
  Field f(&errors_, ".concurrency");
  CheckBetween(errors_, "max_in_flight", c.max_in_flight(), 1, kMaxInFlight);
  CheckAtMost(errors_, "max_queued", c.max_queued(), kMaxQueued);
  // queue_timeout >= 0 holds already: the parser refuses negative durations.
  CheckDurationAtMost(errors_, "queue_timeout", c.queue_timeout(),
                      kMaxQueueTimeout);
  if (!c.priority_header().empty()) {
    Field h(&errors_, ".priority_header");
    CheckHeaderName(errors_, c.priority_header());
  }
  if (c.has_adaptive()) {
    Field a(&errors_, ".adaptive");
    const cfg::AdaptiveConcurrency& ad = c.adaptive();
    const uint32_t ceiling = std::max<uint32_t>(1, c.max_in_flight());
    CheckBetween(errors_, "min_limit", ad.min_limit(), 1, ceiling);
    CheckBetween(errors_, "initial_limit", ad.initial_limit(),
                 std::max<uint32_t>(1, ad.min_limit()), ceiling);
    CheckDurationPositiveAtMost(
        errors_, "queue_target", ad.queue_target(),
        std::max(absl::Nanoseconds(1), ToAbslDuration(c.queue_timeout())));
    CheckDurationPositiveAtMost(errors_, "queue_interval", ad.queue_interval(),
                                kMaxQueueTimeout);
  }
}

void ConfigValidator::ValidateSingleflight(const cfg::Route& route,
                                           bool match_ok) {
  Field f(&errors_, ".singleflight");
  const cfg::Singleflight& sf = route.singleflight();
  for (int i = 0; i < sf.key_headers_size(); ++i) {
    Field k(&errors_, absl::StrCat(".key_headers[", i, "]"));
    CheckHeaderName(errors_, sf.key_headers(i));
  }
  ValidateMaxRequestBytes(sf.max_request_bytes());
  // A broken match already has its error; judging what it matches would only
  // add noise.
  if (!sf.enabled() || !match_ok) return;
  Field e(&errors_, ".enabled");
  const cfg::RouteMatch& match = route.match();
  if (!match.service().empty() && !match.method().empty()) {
    const std::string path =
        absl::StrCat("/", match.service(), "/", match.method());
    if (out_.streaming_methods.contains(path)) {
      errors_.AddError(
          absl::StrCat(path,
                       " is a streaming method (per descriptor_sets); "
                       "singleflight coalesces unary calls only"));
    }
    return;
  }
  // A broad route coalesces the unary methods descriptor_sets know; its
  // streaming and unknown methods pass untouched (SPEC section 2).
  bool matches_unary = false;
  for (const std::string& path : out_.unary_methods) {
    matches_unary = matches_unary || RouteMatchesPath(match, path);
  }
  if (!matches_unary) {
    errors_.AddError(
        "singleflight needs a route that matches one exact method "
        "(service + method) or methods known unary from descriptor_sets");
  }
}

void ConfigValidator::ValidateMaxRequestBytes(uint64_t value) {
  CheckAtLeast(errors_, "max_request_bytes", value, 1);
  const uint64_t listener_max = config_.listener().max_message_bytes();
  if (listener_max < 1 || listener_max > kMaxMessageBytes) {
    CheckAtMost(errors_, "max_request_bytes", value, kMaxMessageBytes);
  } else if (value > listener_max) {
    Field f(&errors_, ".max_request_bytes");
    errors_.AddError(absl::StrCat("must be <= listener.max_message_bytes (",
                                  listener_max, ") (got ", value, ")"));
  }
}

}  // namespace bulwark::config_internal
