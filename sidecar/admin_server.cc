#include "sidecar/admin_server.h"

#include <utility>

#include "absl/status/status.h"

namespace bulwark {
namespace {

constexpr char kTextContentType[] = "text/plain; charset=utf-8";
constexpr char kJsonContentType[] = "application/json";

HttpServer::Response Text(int status, std::string body) {
  return {.status = status,
          .content_type = kTextContentType,
          .body = std::move(body)};
}

// The routing of SPEC section 4. Known paths answer 405 to anything but a read;
// the providers are not even called then.
HttpServer::Response Route(AdminServer::Providers& providers,
                           std::string_view method, std::string_view path) {
  enum class Endpoint {
    kMetrics,
    kHealthz,
    kReadyz,
    kConfig,
    kRoutes,
    kStatusPage
  };
  Endpoint endpoint;
  if (path == "/" && providers.status_page) {
    endpoint = Endpoint::kStatusPage;
  } else if (path == "/metrics") {
    endpoint = Endpoint::kMetrics;
  } else if (path == "/healthz") {
    endpoint = Endpoint::kHealthz;
  } else if (path == "/readyz") {
    endpoint = Endpoint::kReadyz;
  } else if (path == "/config") {
    endpoint = Endpoint::kConfig;
  } else if (path == "/routes") {
    endpoint = Endpoint::kRoutes;
  } else {
    return Text(404, "not found\n");
  }
  if (method != "GET" && method != "HEAD")
    return Text(405, "method not allowed\n");

  switch (endpoint) {
    case Endpoint::kMetrics:
      return {.status = 200,
              .content_type = AdminServer::kMetricsContentType,
              .body = providers.metrics()};
    case Endpoint::kHealthz:
      // Liveness: answering at all proves the process runs.
      return Text(200, "ok");
    case Endpoint::kReadyz: {
      AdminServer::Readiness readiness = providers.readiness();
      if (readiness.ready) return Text(200, "ready");
      return Text(503, readiness.reason.empty() ? "not ready"
                                                : std::move(readiness.reason));
    }
    case Endpoint::kConfig:
      return {.status = 200,
              .content_type = kJsonContentType,
              .body = providers.config_json()};
    case Endpoint::kRoutes:
      return {.status = 200,
              .content_type = kJsonContentType,
              .body = providers.routes_json()};
    case Endpoint::kStatusPage:
      return {.status = 200,
              .content_type = "text/html; charset=utf-8",
              .body = providers.status_page()};
  }
  return Text(404, "not found\n");
}

}  // namespace

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Create(
    std::string_view address, Providers providers) {
  return Create(address, std::move(providers), HttpServer::Options());
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Create(
    std::string_view address, Providers providers,
    const HttpServer::Options& options) {
  if (!providers.metrics || !providers.readiness || !providers.config_json ||
      !providers.routes_json) {
    return absl::InvalidArgumentError(
        "admin server: every provider (metrics, readiness, config_json, "
        "routes_json) is "
        "required");
  }
  auto handler = [providers = std::move(providers)](
                     std::string_view method, std::string_view path) mutable {
    return Route(providers, method, path);
  };
  if (auto server = HttpServer::Create(address, std::move(handler), options);
      server.ok()) {
    return std::unique_ptr<AdminServer>(new AdminServer(*std::move(server)));
  } else {
    return server.status();
  }
}

}  // namespace bulwark
