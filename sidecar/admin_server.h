// AdminServer: the admin HTTP endpoints of SPEC section 4 (/metrics, /healthz,
// /readyz, /config, /routes) on an HttpServer of their own, so scrapes and
// probes run on the admin thread and never on a worker's loop.
//
// The server holds no state of the sidecar: it asks providers, given at
// construction, for each answer. Thread-safety: providers are called on the
// admin thread, one request at a time, while workers run; each must be
// thread-safe with respect to what it reads and cheap (a snapshot copy, a
// serialization), never waiting on a worker. Stop() and the destructor may be
// called from any other thread.
//
// Cost: one thread; per request, one provider call plus one copy of its answer.
// Bounds (HttpServer::Options): a request must arrive whole within 10 s, at
// most 256 admin connections at once.
#ifndef BULWARK_SIDECAR_ADMIN_SERVER_H_
#define BULWARK_SIDECAR_ADMIN_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "sidecar/net/http_server.h"

namespace bulwark {

class AdminServer {
 public:
  struct Readiness {
    bool ready = false;
    // Why not ready ("draining", "cluster orders has no healthy endpoint"); the
    // body of the 503.
    std::string reason;
  };

  struct Providers {
    // The Prometheus text exposition (e.g. Metrics::Serialize).
    absl::AnyInvocable<std::string()> metrics;
    // Serving and every cluster has a healthy endpoint; false during drain.
    absl::AnyInvocable<Readiness()> readiness;
    // The effective configuration as JSON, defaults filled in.
    absl::AnyInvocable<std::string()> config_json;
    // Live per-route and per-endpoint state as JSON.
    absl::AnyInvocable<std::string()> routes_json;
    // The status page (GET /), HTML; optional (404 without it).
    absl::AnyInvocable<std::string()> status_page;
  };

  static constexpr char kMetricsContentType[] =
      "text/plain; version=0.0.4; charset=utf-8";

  // Binds `address` (admin.address; port 0 = ephemeral) and starts serving.
  // Fails with InvalidArgument if a provider is missing, or with
  // HttpServer::Create's error (which names the address) if the address cannot
  // be bound.
  static absl::StatusOr<std::unique_ptr<AdminServer>> Create(
      std::string_view address, Providers providers);
  // The same with the HTTP server's limits (request timeout, connection cap)
  // given, e.g. shorter ones in tests.
  static absl::StatusOr<std::unique_ptr<AdminServer>> Create(
      std::string_view address, Providers providers,
      const HttpServer::Options& options);

  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // The port actually bound.
  uint16_t port() const { return server_->port(); }
  // Admin connections open now (a racy snapshot).
  int ConnectionsApprox() const { return server_->ConnectionsApprox(); }

  // Stops serving and joins the admin thread; prompt, idempotent. Providers are
  // not called after it returns.
  void Stop() { server_->Stop(); }

 private:
  explicit AdminServer(std::unique_ptr<HttpServer> server)
      : server_(std::move(server)) {}

  std::unique_ptr<HttpServer> server_;
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_ADMIN_SERVER_H_
