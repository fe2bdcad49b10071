// Snapshot: one immutable configuration in force, what a call keeps for its
// whole life (DESIGN "Rules of the data path"): the loaded config, the
// clusters and the route table with its stages. Built by the sidecar on start,
// reload and DNS change; swapped atomically; never modified.
#ifndef BULWARK_SIDECAR_SNAPSHOT_H_
#define BULWARK_SIDECAR_SNAPSHOT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "policies/clock.h"
#include "sidecar/access_log.h"
#include "sidecar/cluster.h"
#include "sidecar/config_loader.h"
#include "sidecar/dns.h"
#include "sidecar/metrics.h"
#include "sidecar/route_table.h"

namespace bulwark {

struct Snapshot {
  LoadedConfig config;
  absl::flat_hash_map<std::string, std::shared_ptr<Cluster>> clusters;
  std::vector<std::shared_ptr<Cluster>> cluster_list;  // file order
  std::unique_ptr<RouteTable> routes;
  std::string config_json;
  // The access log (null: off). Kept across reloads while its path stays.
  std::shared_ptr<AccessLogWriter> access_log;
  // One store (a connection on a thread of its own) per configured redis
  // (SPEC section 8), by name; kept from the previous snapshot while the
  // entry and its password are unchanged. The global rate limits that use a
  // store hold it too, so it lives as long as the last of them: whoever
  // drops the last reference joins its thread (Sidecar keeps one itself so
  // that happens on the main thread, never a worker's).
  RedisStores redis;
  // What each store was built from (the entry and its password), by name.
  absl::flat_hash_map<std::string, std::string> redis_fingerprints;
};

struct SnapshotDeps {
  Metrics& metrics;
  DnsCache& dns;  // answers the clusters' DNS names (may block on a miss)
  Clock& clock;   // the policies' clock: the workers' monotonic one
  // Read the clusters' TLS files again (start, reload) or keep `previous`'s
  // contexts (a DNS refresh).
  bool reread_tls = true;
};

// Builds clusters, routes and their stages from `config`. What `previous`
// has for an unchanged route or endpoint is kept (SPEC section 6). Errors
// name the cluster or route. Main thread (DNS lookups may block).
absl::StatusOr<std::shared_ptr<const Snapshot>> BuildSnapshot(
    LoadedConfig config, const Snapshot* previous, const SnapshotDeps& deps);

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_SNAPSHOT_H_
