// Semantic validation of a configuration whose YAML converted and whose
// defaults are filled in: every number within its range (SPEC section 2: each
// has a maximum as well as a minimum), names unique, each route's cluster
// known, route matches well formed, header names lower-case HTTP/2 names,
// listener and admin addresses parseable and not on the same port, every file
// the config names (TLS files, descriptor_sets, redis password files)
// readable, global rate limits naming a known redis, and singleflight
// only where it can coalesce unary calls. File paths are resolved against the
// config file's directory in place, and the descriptor_sets' methods fill
// LoadedConfig's unary and streaming method sets. Every problem goes to
// ValidationErrors under its field path; nothing stops at the first.
//
// Thread-safety: a ConfigValidator belongs to one load; CheckHeaderName and
// RouteMatchesPath are pure. Cost: linear in the configuration, plus reading
// each file it names (at most 16 MiB each, sidecar/file_util.h) and building
// the descriptor pools of descriptor_sets.
#ifndef BULWARK_SIDECAR_CONFIG_VALIDATOR_H_
#define BULWARK_SIDECAR_CONFIG_VALIDATOR_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "sidecar/config/common.h"
#include "sidecar/config_loader.h"
#include "sidecar/host_port.h"
#include "sidecar/validation_errors.h"

namespace bulwark::config_internal {

// Adds an error unless `name` is a lower-case HTTP/2 header name (RFC 9110
// tchar), not empty and not a pseudo-header.
void CheckHeaderName(ValidationErrors& errors, const std::string& name);

// Does a route with this match take calls to `path` ("/pkg.Service/Method")?
bool RouteMatchesPath(const cfg::RouteMatch& match, absl::string_view path);

class ConfigValidator {
 public:
  // Checks (and completes) `out->proto`; relative paths resolve against
  // `base_dir` ("" = the working directory).
  ConfigValidator(ValidationErrors* errors, std::string base_dir,
                  LoadedConfig* out)
      : errors_(*errors),
        base_dir_(std::move(base_dir)),
        out_(*out),
        config_(out->proto) {}

  void Validate();

 private:
  // Resolves `*path` against the config's directory in place (what the rest of
  // the sidecar and /config then see) and checks that the file can be read.
  void ResolveAndCheckFile(absl::string_view field, std::string* path);
  // A client side's TLS files (a cluster's or a Redis's `tls`): cert_file and
  // key_file together or neither, each file resolved and readable.
  void CheckClientTls(std::string* ca_file, std::string* cert_file,
                      std::string* key_file);
  static std::string DescribePath(const std::string& original,
                                  const std::string& resolved);
  std::optional<HostPort> CheckAddress(absl::string_view field,
                                       const std::string& address,
                                       PortZero port_zero);
  void ValidateListenerAndAdmin();
  // Two listening addresses collide when they share a (fixed) port and either
  // is the wildcard or both name the same host.
  static bool Overlap(const HostPort& a, const HostPort& b);
  void LoadDescriptorSets();
  void LoadDescriptorSet(const std::string& content,
                         const std::string& described);
  void ValidateClusters();
  void ValidateCluster(int index, cfg::Cluster& cluster);
  // The redis entries; fills out_.redis_passwords from their password files.
  void ValidateRedis();
  void ValidateRedisEntry(cfg::Redis& redis);
  void ValidateRoutes();
  void ValidateRouteCluster(const cfg::Route& route);
  void ValidateMatch(const cfg::RouteMatch& match);
  void ValidateRateLimit(const cfg::RateLimit& rl);
  void ValidateRateLimitKey(const cfg::RateLimit& rl);
  void ValidateGlobalRateLimit(const cfg::GlobalRateLimit& global);
  void ValidateCircuitBreaker(const cfg::CircuitBreaker& cb);
  void ValidateConcurrency(const cfg::Concurrency& c);
  void ValidateSingleflight(const cfg::Route& route, bool match_ok);
  void ValidateOutlierDetection(const cfg::OutlierDetection& od);
  void ValidateRetry(const cfg::Route& route, bool match_ok);
  // 1..listener.max_message_bytes: a request the listener refuses can never be
  // held anyway. Against a broken listener limit (its own error) only the
  // absolute maximum is checked.
  void ValidateMaxRequestBytes(uint64_t value);

  ValidationErrors& errors_;
  std::string base_dir_;
  LoadedConfig& out_;
  cfg::Config& config_;
  absl::flat_hash_map<std::string, int> cluster_index_;
  absl::flat_hash_map<std::string, int> redis_index_;
};

}  // namespace bulwark::config_internal

#endif  // BULWARK_SIDECAR_CONFIG_VALIDATOR_H_
