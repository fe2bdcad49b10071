// Checks RouteTable::Match (sidecar/route_table.h) against a naive reference
// matcher: for any byte string as the :path, Match returns the first route in
// file order whose rule matches (exact service + method, service, prefix, or {}
// for everything), or nullptr when none does, on two tables built once through
// the real loader (ParseConfigText + Cluster::Create + RouteTable::Build): one
// whose exact, service and prefix routes shadow and overlap each other and end
// in a catch-all, and one without a catch-all (so "no route" is reachable). The
// path is read straight from libFuzzer's buffer, so an over-read is an ASan
// report.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "sidecar/cluster.h"
#include "sidecar/config_loader.h"
#include "sidecar/metrics.h"
#include "sidecar/route_table.h"
#include "tests/fuzz/byte_reader.h"

namespace {

// One route's match rule; empty strings are absent fields.
struct RouteSpec {
  std::string_view name;
  std::string_view service;
  std::string_view method;
  std::string_view prefix;
};

// Overlaps on purpose: exact routes before and after service and prefix routes
// of the same service, a duplicate exact route, a service that is a prefix of
// another service's name, prefixes with and without a trailing '/'.
constexpr RouteSpec kShadowingRoutes[] = {
    {"get", "shop.v1.Orders", "GetOrder", ""},
    {"orders", "shop.v1.Orders", "", ""},
    {"list", "shop.v1.Orders", "ListOrders", ""},  // shadowed by "orders"
    {"carts-prefix", "", "", "/shop.v1.Carts/"},
    {"get-again", "shop.v1.Orders", "GetOrder", ""},  // shadowed by "get"
    {"short-service", "a", "", ""},
    {"exact-ab", "a.B", "M", ""},
    {"service-ab", "a.B", "", ""},
    {"shop-prefix", "", "", "/shop."},
    {"pay", "shop.v1.Payments", "Pay", ""},  // shadowed by "shop-prefix"
    {"x-prefix", "", "", "/x/"},
    {"health", "grpc.health.v1.Health", "Check", ""},
    {"health-all", "grpc.health.v1.Health", "", ""},
    {"all", "", "", ""},
    {"after-all", "z.Z", "Z", ""},  // unreachable
};

constexpr RouteSpec kPartialRoutes[] = {
    {"exact-first", "p.Q", "R", ""},    {"q-prefix", "", "", "/p.Q"},
    {"exact-second", "p.Q", "S", ""},   {"service-p", "p", "", ""},
    {"exact-p", "p", "x", ""},          {"dup-service", "p.Q", "", ""},
    {"deep-prefix", "", "", "/p.Q/R/"},
};

std::string Quoted(std::string_view s) {
  return absl::StrCat("\"", absl::string_view(s.data(), s.size()), "\"");
}

std::string ConfigYaml(const std::vector<RouteSpec>& routes) {
  std::string yaml = R"(
clusters:
  - name: c
    endpoints: ["127.0.0.1:50051"]
routes:
)";
  for (const RouteSpec& r : routes) {
    absl::StrAppend(&yaml, "  - name: ", Quoted(r.name), "\n    cluster: c\n");
    absl::StrAppend(&yaml, "    match: {");
    std::string sep;
    if (!r.service.empty()) {
      absl::StrAppend(&yaml, "service: ", Quoted(r.service));
      sep = ", ";
    }
    if (!r.method.empty()) {
      absl::StrAppend(&yaml, sep, "method: ", Quoted(r.method));
    }
    if (!r.prefix.empty()) {
      absl::StrAppend(&yaml, "prefix: ", Quoted(r.prefix));
    }
    absl::StrAppend(&yaml, "}\n");
  }
  return yaml;
}

// The rule of SPEC section 2, spelled out naively.
bool ReferenceMatches(const RouteSpec& r, std::string_view path) {
  if (!r.prefix.empty()) return path.starts_with(r.prefix);
  if (!r.service.empty() && !r.method.empty()) {
    return path ==
           absl::StrCat(
               "/", absl::string_view(r.service.data(), r.service.size()), "/",
               absl::string_view(r.method.data(), r.method.size()));
  }
  if (!r.service.empty()) {
    // "/" + service + "/" + a non-empty method.
    const std::string head = absl::StrCat(
        "/", absl::string_view(r.service.data(), r.service.size()), "/");
    return path.size() > head.size() && path.starts_with(head);
  }
  return true;
}

struct Table {
  std::vector<RouteSpec> specs;
  bulwark::LoadedConfig config;
  absl::flat_hash_map<std::string, std::shared_ptr<bulwark::Cluster>> clusters;
  std::unique_ptr<bulwark::RouteTable> routes;
};

std::unique_ptr<Table> BuildTable(std::vector<RouteSpec> specs,
                                  bulwark::Metrics& metrics) {
  auto table = std::make_unique<Table>();
  table->specs = std::move(specs);
  auto loaded = bulwark::ParseConfigText(ConfigYaml(table->specs),
                                         "route_match.yaml", "");
  if (!loaded.ok()) {
    std::fprintf(stderr, "route_match_fuzz: config: %s\n",
                 std::string(loaded.status().message()).c_str());
    std::abort();
  }
  table->config = *std::move(loaded);
  bulwark::SystemResolver resolver;  // the endpoints are IP literals
  bulwark::DnsCache dns(resolver);
  for (const auto& cc : table->config.proto.clusters()) {
    auto cluster = bulwark::Cluster::Create(cc, metrics, dns, nullptr);
    FUZZ_CHECK(cluster.ok());
    table->clusters[cc.name()] = *std::move(cluster);
  }
  auto routes = bulwark::RouteTable::Build(table->config.proto, table->clusters,
                                           metrics, nullptr);
  FUZZ_CHECK(routes.ok());
  table->routes = *std::move(routes);
  FUZZ_CHECK(table->routes->routes().size() == table->specs.size());
  for (size_t i = 0; i < table->specs.size(); ++i) {
    FUZZ_CHECK(table->routes->routes()[i]->name == table->specs[i].name);
  }
  return table;
}

void CheckAgainstReference(const Table& table, std::string_view path) {
  const bulwark::Route* got = table.routes->Match(path);
  const bulwark::Route* expected = nullptr;
  for (size_t i = 0; i < table.specs.size(); ++i) {
    if (ReferenceMatches(table.specs[i], path)) {
      expected = table.routes->routes()[i].get();
      break;
    }
  }
  if (got != expected) {
    std::fprintf(stderr,
                 "route_match_fuzz: path of %zu bytes: got %s, want %s\n",
                 path.size(), got == nullptr ? "<none>" : got->name.c_str(),
                 expected == nullptr ? "<none>" : expected->name.c_str());
  }
  FUZZ_CHECK(got == expected);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bulwark::Metrics* metrics = new bulwark::Metrics("fuzz");
  static Table* shadowing =
      BuildTable({std::begin(kShadowingRoutes), std::end(kShadowingRoutes)},
                 *metrics)
          .release();
  static Table* partial =
      BuildTable({std::begin(kPartialRoutes), std::end(kPartialRoutes)},
                 *metrics)
          .release();

  if (size > 4096) return -1;  // paths are short; long ones add nothing
  const std::string_view path(reinterpret_cast<const char*>(data), size);
  CheckAgainstReference(*shadowing, path);
  CheckAgainstReference(*partial, path);
  return 0;
}
