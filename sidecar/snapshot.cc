#include "sidecar/snapshot.h"

#include "absl/strings/str_cat.h"
#include "sidecar/file_util.h"
#include "sidecar/host_port.h"
#include "sidecar/net/tls.h"
#include "sidecar/store/redis_client.h"

namespace bulwark {
namespace {

RedisMetrics::Result ResultOf(store::RedisResult::Kind kind) {
  switch (kind) {
    case store::RedisResult::Kind::kOk:
      return RedisMetrics::Result::kOk;
    case store::RedisResult::Kind::kTimeout:
      return RedisMetrics::Result::kTimeout;
    case store::RedisResult::Kind::kError:
      break;
  }
  return RedisMetrics::Result::kError;
}

// The stores of `config`: those of `previous` whose entry and password are
// unchanged (with TLS: the files' contents too), new ones for the rest.
absl::Status BuildRedisStores(const LoadedConfig& config,
                              const Snapshot* previous,
                              const SnapshotDeps& deps, Snapshot& snapshot) {
  for (const config::v1::Redis& rc : config.proto.redis()) {
    std::string password;
    if (auto it = config.redis_passwords.find(rc.name());
        it != config.redis_passwords.end()) {
      password = it->second;
    }
    std::string fingerprint;
    rc.SerializeToString(&fingerprint);
    absl::StrAppend(&fingerprint, "\n", password);
    if (rc.has_tls()) {
      // Rotated certificates make a new store (a new TLS context); unreadable
      // files fail below, in TlsContext::Client.
      for (const std::string* file :
           {&rc.tls().ca_file(), &rc.tls().cert_file(), &rc.tls().key_file()}) {
        if (file->empty()) continue;
        absl::StrAppend(&fingerprint, "\n", ReadConfigFile(*file).value_or(""));
      }
    }
    if (previous != nullptr) {
      auto fp = previous->redis_fingerprints.find(rc.name());
      auto store = previous->redis.find(rc.name());
      if (fp != previous->redis_fingerprints.end() &&
          store != previous->redis.end() && fp->second == fingerprint) {
        snapshot.redis[rc.name()] = store->second;
        snapshot.redis_fingerprints[rc.name()] = std::move(fingerprint);
        continue;
      }
    }
    auto address = ParseHostPort(rc.address(), PortZero::kReject);
    if (!address.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("redis ", rc.name(), ": ", address.status().message()));
    }
    RedisMetrics* metrics = deps.metrics.ForRedis(rc.name());
    store::RedisClientOptions options{
        .address = *std::move(address),
        .username = rc.username(),
        .password = std::move(password),
        .timeout = ToAbslDuration(rc.timeout()),
        .on_result =
            [metrics](const store::RedisResult& result) {
              metrics->Requests(ResultOf(result.kind)).Increment();
              metrics->Duration().Observe(
                  absl::ToDoubleSeconds(result.duration));
            },
    };
    if (rc.has_tls()) {
      auto tls =
          net::TlsContext::Client({.ca_file = rc.tls().ca_file(),
                                   .cert_file = rc.tls().cert_file(),
                                   .key_file = rc.tls().key_file(),
                                   .server_name = rc.tls().server_name()});
      if (!tls.ok()) {
        return absl::Status(tls.status().code(),
                            absl::StrCat("redis ", rc.name(),
                                         ": tls: ", tls.status().message()));
      }
      auto store = store::RedisStore::StartTls(std::move(options),
                                               *std::move(tls), deps.clock);
      if (!store.ok()) {
        return absl::Status(
            store.status().code(),
            absl::StrCat("redis ", rc.name(), ": ", store.status().message()));
      }
      snapshot.redis[rc.name()] = *std::move(store);
    } else {
      snapshot.redis[rc.name()] =
          store::RedisStore::Start(std::move(options), deps.clock);
    }
    snapshot.redis_fingerprints[rc.name()] = std::move(fingerprint);
  }
  return absl::OkStatus();
}

}  // namespace

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
  if (absl::Status status = BuildRedisStores(config, previous, deps, *snapshot);
      !status.ok()) {
    return status;
  }
  // The routes point into the snapshot's own copy of the method sets.
  snapshot->config = std::move(config);
  auto routes = RouteTable::Build(
      snapshot->config.proto, snapshot->clusters, deps.metrics,
      previous != nullptr ? previous->routes.get() : nullptr,
      &snapshot->config.unary_methods, deps.clock,
      &snapshot->config.streaming_methods, &snapshot->config.idempotent_methods,
      &snapshot->redis);
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
