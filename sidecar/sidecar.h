// Sidecar: the process. Builds configuration snapshots (clusters, routes,
// policy state), starts the workers and the admin server, and runs the main
// thread's loop: signals (SIGTERM/SIGINT drain and exit, SIGHUP reload) and the
// config file watch (a change of the file's content, e.g. a Kubernetes
// ConfigMap symlink swap, reloads it).
//
// Thread-safety: Create and Run on the main thread; the admin providers it
// installs are called on the admin thread and read the current snapshot under a
// mutex.
#ifndef BULWARK_SIDECAR_SIDECAR_H_
#define BULWARK_SIDECAR_SIDECAR_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "sidecar/admin_server.h"
#include "sidecar/chain/chain.h"
#include "sidecar/config_loader.h"
#include "sidecar/dns.h"
#include "sidecar/health_checker.h"
#include "sidecar/health_checks.h"
#include "sidecar/metrics.h"
#include "sidecar/net/worker.h"
#include "sidecar/snapshot.h"

namespace bulwark {

class Sidecar {
 public:
  // Builds everything and binds the listener and admin ports; errors name what
  // failed.
  static absl::StatusOr<std::unique_ptr<Sidecar>> Create(LoadedConfig config);
  ~Sidecar();

  // Blocks SIGTERM, SIGINT, SIGHUP and the DNS wake-up signal (SIGRTMIN+1)
  // in the calling thread; call before Create
  // so every thread inherits the mask and the main thread alone receives them
  // (sigtimedwait).
  static void BlockSignals();

  // Serves until SIGTERM/SIGINT, then drains. Returns the process exit code.
  // `on_tick`, if set, runs on this (the main) thread about once a second.
  int Run(absl::AnyInvocable<void()> on_tick = nullptr);

 private:
  Sidecar() = default;
  static absl::StatusOr<std::shared_ptr<const net::TlsContext>> ListenerTls(
      const config::v1::Config& config);
  // `reread_tls`: read the clusters' TLS files again (reload) or keep the
  // previous contexts (DNS refresh).
  absl::StatusOr<std::shared_ptr<const Snapshot>> BuildSnapshot(
      LoadedConfig config, const Snapshot* previous, bool reread_tls = true);
  // Makes `snapshot` current: workers, upstream connections, health checks
  // and the names the DNS refresher keeps fresh follow it.
  void Install(std::shared_ptr<const Snapshot> snapshot);
  void Reload(std::string_view why);
  // A DNS answer changed: rebuilds the clusters from the cached answers
  // (same configuration, same TLS contexts).
  void RefreshEndpoints();
  void Drain();
  std::shared_ptr<const Snapshot> current() ABSL_LOCKS_EXCLUDED(mu_);
  AdminServer::Readiness Readiness();
  std::string RoutesJson();
  void RefreshGauges();
  // Posts to worker 0: keeps the checkers of clusters whose endpoints and
  // health_check are unchanged, stops the others and starts ones for the
  // remaining clusters of `snapshot` that have a health_check (endpoints kept
  // by a reload keep their health).
  void StartHealthChecks(std::shared_ptr<const Snapshot> snapshot);
  // Posts to worker 0: stops and destroys the health checkers. Called right
  // before the workers' ForceCloseAndStop, whose task then runs after it (posts
  // run in order).
  void StopHealthChecks();
  // Keeps a reference to each of `snapshot`'s Redis stores, then lets go of
  // those nothing else holds any more (no snapshot, no rate limit state): the
  // last reference is always this one, so a store's thread is stopped and
  // joined here, on the main thread, never on a worker.
  void KeepRedisStores(const Snapshot& snapshot);
  void ReleaseUnusedRedisStores();

  Metrics metrics_{BULWARK_VERSION};
  // Declared after metrics_ (their hooks feed it) and before everything that
  // holds snapshots, so the stores stop last, at shutdown, once the workers
  // and the snapshots are gone.
  std::vector<std::shared_ptr<store::RedisStore>> redis_stores_;
  absl::Mutex mu_;
  std::shared_ptr<const Snapshot> snapshot_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<net::Worker>> workers_;
  std::vector<std::unique_ptr<chain::ProxyHandler>> handlers_;
  std::unique_ptr<AdminServer> admin_;
  // Health checks run on worker 0 over its upstream connections.
  std::unique_ptr<HealthChecks> health_checks_;
  std::atomic<bool> draining_{false};
  // Endpoint names: looked up on the main thread when a snapshot is built,
  // refreshed on the refresher's thread, which wakes the main thread's loop
  // with a signal when an answer changed (all snapshot building stays on the
  // main thread).
  SystemResolver resolver_;
  DnsCache dns_{resolver_};
  std::unique_ptr<DnsRefresher> dns_refresher_;
  std::string config_path_;
  std::string config_text_;  // content last loaded, to notice changes
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_SIDECAR_H_
