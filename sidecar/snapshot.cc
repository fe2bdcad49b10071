#include "sidecar/snapshot.h"

#include "absl/strings/str_cat.h"

namespace bulwark {

absl::StatusOr<std::shared_ptr<const Snapshot>> BuildSnapshot(
    LoadedConfig config, const Snapshot* previous, const SnapshotDeps& deps) {
  auto snapshot = std::make_shared<Snapshot>();
  for (const auto& cc : config.proto.clusters()) {
    const Cluster* old = nullptr;
    if (previous != nullptr) {
      if (auto it = previous->clusters.find(cc.name());
          it != previous->clusters.end()) {
        old = it->second.get();
      }
    }
    auto cluster =
        Cluster::Create(cc, deps.metrics, deps.dns, old, deps.reread_tls);
    if (!cluster.ok()) {
      return absl::Status(cluster.status().code(),
                          absl::StrCat("clusters ", cc.name(), ": ",
                                       cluster.status().message()));
    }
    snapshot->clusters[cc.name()] = *cluster;
    snapshot->cluster_list.push_back(*cluster);
  }
  // The routes point into the snapshot's own copy of the method sets.
  snapshot->config = std::move(config);
  auto routes = RouteTable::Build(
      snapshot->config.proto, snapshot->clusters, deps.metrics,
      previous != nullptr ? previous->routes.get() : nullptr,
      &snapshot->config.unary_methods, deps.clock,
      &snapshot->config.streaming_methods,
      &snapshot->config.idempotent_methods);
  if (!routes.ok()) return routes.status();
  snapshot->routes = std::move(*routes);
  snapshot->config_json = ConfigToJson(snapshot->config.proto);
  if (const std::string& path = snapshot->config.proto.access_log().path();
      !path.empty()) {
    if (previous != nullptr && previous->access_log != nullptr &&
        previous->access_log->path() == path) {
      snapshot->access_log = previous->access_log;
    } else {
      auto writer =
          AccessLogWriter::Open(path, &deps.metrics.AccessLogDropped());
      if (!writer.ok()) return writer.status();
      snapshot->access_log = *std::move(writer);
    }
  }
  return snapshot;
}

}  // namespace bulwark
