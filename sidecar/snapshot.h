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
#include "sidecar/cluster.h"
#include "sidecar/config_loader.h"
#include "sidecar/route_table.h"

namespace bulwark {

struct Snapshot {
  LoadedConfig config;
  absl::flat_hash_map<std::string, std::shared_ptr<Cluster>> clusters;
  std::vector<std::shared_ptr<Cluster>> cluster_list;  // file order
  std::unique_ptr<RouteTable> routes;
  std::string config_json;
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_SNAPSHOT_H_
