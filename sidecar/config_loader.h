// The configuration loader: reads the YAML file of SPEC section 2 into the
// bulwark.config.v1.Config message, fills in the documented defaults, checks
// everything that can be checked before a port is opened, and reports every
// problem at once, each with the file, the field path and the offending value:
//
//   bulwark.yaml: routes[2].rate_limit.burst: must be >= 1 (got 0)
//   bulwark.yaml: routes[0].rate_limt: unknown field (did you mean rate_limit?)
//
// All functions are thread-safe (no shared state) and run at startup and on
// reload, off the data path; their cost is linear in the size of the file plus
// reading the descriptor_sets files it names. Bounded whatever the file holds
// (SPEC section 11): every file read is a regular file of at most 16 MiB
// (sidecar/file_util.h), a document holds at most 1 000 000 YAML nodes, and
// YAML aliases expand to at most 1 000 000 nodes and 64 MiB of scalars; past
// any of these, and on any exception (std::bad_alloc included), the answer is
// a config error, never an abort.
//
// The work is split by job in sidecar/config/: yaml_to_proto (YAML -> the
// proto, strictly), defaults, validator; config_loader.cc runs them in that
// order, and summary.cc defines ConfigToJson and SummarizeConfig.
#ifndef BULWARK_SIDECAR_CONFIG_LOADER_H_
#define BULWARK_SIDECAR_CONFIG_LOADER_H_

#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bulwark/config/v1/config.pb.h"
#include "google/protobuf/duration.pb.h"

namespace bulwark {

// A configuration that loaded and validated. `proto` has every default filled
// in (an absent policy block stays absent: that policy is off) and every file
// path (descriptor_sets, tls files) resolved against the config file's
// directory. The method sets hold full gRPC paths ("/pkg.Service/Method") found
// in descriptor_sets; both are empty when no descriptor set is configured. A
// plain value.
struct LoadedConfig {
  config::v1::Config proto;
  absl::flat_hash_set<std::string> unary_methods;
  absl::flat_hash_set<std::string> streaming_methods;
  // Unary methods marked idempotency_level IDEMPOTENT or NO_SIDE_EFFECTS
  // (retry's `methods: IDEMPOTENT`).
  absl::flat_hash_set<std::string> idempotent_methods;
  // By redis name: the content of its password_file, one trailing newline
  // stripped (absent: no password_file). Read at every load, so a reload
  // picks up a rotated password; never in `proto`, so never in /config.
  absl::flat_hash_map<std::string, std::string> redis_passwords;
  std::string source_path;  // the file it came from ("" for ParseConfigText)
};

// Reads, parses and validates the file at `path`. Errors are InvalidArgument
// (content) or NotFound / PermissionDenied / FailedPrecondition /
// ResourceExhausted (the file itself: missing, unreadable, not a regular file,
// over 16 MiB), and every line of the message starts with `path`. Relative
// paths inside the file are resolved against the directory of `path`.
absl::StatusOr<LoadedConfig> LoadConfigFile(const std::string& path);

// As LoadConfigFile, for text already in memory: `display_name` prefixes the
// error lines, `base_dir` resolves relative paths ("" = the working directory).
absl::StatusOr<LoadedConfig> ParseConfigText(std::string_view yaml,
                                             std::string_view display_name,
                                             std::string_view base_dir);

// The configuration as pretty-printed JSON with proto field names and every
// scalar printed, defaults included: what GET /config answers.
std::string ConfigToJson(const config::v1::Config& config);

// A few lines for `bulwark --validate`: listener, admin, workers, each cluster
// (endpoints, balancing, health check) and each route (match, cluster, policies
// on).
std::string SummarizeConfig(const LoadedConfig& config);

// google.protobuf.Duration -> absl::Duration. Exact for every value the loader
// accepts.
absl::Duration ToAbslDuration(const google::protobuf::Duration& duration);

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_CONFIG_LOADER_H_
