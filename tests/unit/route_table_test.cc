#include "sidecar/route_table.h"

#include <memory>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "sidecar/cluster.h"
#include "sidecar/config_loader.h"
#include "sidecar/metrics.h"

namespace bulwark {
namespace {

// One cluster "c" that every route uses; `routes` is the YAML of the routes
// list, indented as a top-level key's items.
std::string ConfigWithRoutes(std::string_view routes) {
  return absl::StrCat(R"(
clusters:
  - name: c
    endpoints: ["127.0.0.1:50051"]
routes:
)",
                      absl::string_view(routes.data(), routes.size()));
}

// A configuration built the way the sidecar builds a snapshot: clusters first
// (reusing the previous ones' endpoints), then the route table.
struct BuiltConfig {
  LoadedConfig config;
  absl::flat_hash_map<std::string, std::shared_ptr<Cluster>> clusters;
  std::unique_ptr<RouteTable> table;
};

class RouteTableTest : public ::testing::Test {
 protected:
  // Fails the test (and returns an empty snapshot) if the YAML does not load.
  BuiltConfig Build(std::string_view yaml,
                    const BuiltConfig* previous = nullptr) {
    BuiltConfig snapshot;
    auto loaded = ParseConfigText(yaml, "test.yaml", "");
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (!loaded.ok()) return snapshot;
    snapshot.config = *std::move(loaded);
    for (const auto& cc : snapshot.config.proto.clusters()) {
      const Cluster* old = nullptr;
      if (previous != nullptr) {
        if (auto it = previous->clusters.find(cc.name());
            it != previous->clusters.end()) {
          old = it->second.get();
        }
      }
      auto cluster = Cluster::Create(cc, metrics_, dns_, old);
      EXPECT_TRUE(cluster.ok()) << cluster.status();
      if (!cluster.ok()) return snapshot;
      snapshot.clusters[cc.name()] = *std::move(cluster);
    }
    auto table = RouteTable::Build(
        snapshot.config.proto, snapshot.clusters, metrics_,
        previous != nullptr ? previous->table.get() : nullptr);
    EXPECT_TRUE(table.ok()) << table.status();
    if (table.ok()) snapshot.table = *std::move(table);
    return snapshot;
  }

  // The name of the route `path` goes to, or "<none>".
  static std::string MatchName(const BuiltConfig& snapshot,
                               std::string_view path) {
    if (snapshot.table == nullptr) return "<no table>";
    const Route* route = snapshot.table->Match(path);
    return route == nullptr ? "<none>" : route->name;
  }

  static const Route* Named(const BuiltConfig& snapshot,
                            std::string_view name) {
    if (snapshot.table == nullptr) return nullptr;
    for (const auto& route : snapshot.table->routes()) {
      if (route->name == name) return route.get();
    }
    return nullptr;
  }

  Metrics metrics_{"test"};
  SystemResolver resolver_;
  DnsCache dns_{resolver_};
};

TEST_F(RouteTableTest, ExactRouteMatchesOnlyItsServiceAndMethod) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: get
    match: {service: shop.v1.Orders, method: GetOrder}
    cluster: c
)"));
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/GetOrder"), "get");
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/ListOrders"), "<none>");
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/GetOrderX"), "<none>");
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/GetOrder/"), "<none>");
  EXPECT_EQ(MatchName(s, "/shop.v1.OrdersX/GetOrder"), "<none>");
  EXPECT_EQ(MatchName(s, "/shop.v2.Orders/GetOrder"), "<none>");
  EXPECT_EQ(MatchName(s, "shop.v1.Orders/GetOrder"), "<none>");
}

TEST_F(RouteTableTest, ServiceRouteMatchesEveryMethodOfThatService) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: orders
    match: {service: shop.v1.Orders}
    cluster: c
)"));
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/GetOrder"), "orders");
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/ListOrders"), "orders");
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/X"), "orders");
  EXPECT_EQ(MatchName(s, "/shop.v1.Carts/GetCart"), "<none>");
}

TEST_F(RouteTableTest, ServiceRouteDoesNotMatchALongerServiceOrAPathWithout) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: ab
    match: {service: a.B}
    cluster: c
)"));
  EXPECT_EQ(MatchName(s, "/a.B/M"), "ab");
  EXPECT_EQ(MatchName(s, "/a.Bc/M"), "<none>");
  EXPECT_EQ(MatchName(s, "/a.B"), "<none>");
  EXPECT_EQ(MatchName(s, "/a.B/"), "<none>");
  EXPECT_EQ(MatchName(s, "/x.a.B/M"), "<none>");
  EXPECT_EQ(MatchName(s, "a.B/M"), "<none>");
  EXPECT_EQ(MatchName(s, ""), "<none>");
}

TEST_F(RouteTableTest, PrefixRouteComparesTheWholePathFromItsSlash) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: shop-v1
    match: {prefix: /shop.v1.}
    cluster: c
)"));
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/GetOrder"), "shop-v1");
  EXPECT_EQ(MatchName(s, "/shop.v1.Carts/AddItem"), "shop-v1");
  EXPECT_EQ(MatchName(s, "/shop.v2.Orders/GetOrder"), "<none>");
  EXPECT_EQ(MatchName(s, "/shop.v1"), "<none>");
  EXPECT_EQ(MatchName(s, "shop.v1.Orders/GetOrder"), "<none>");
}

TEST_F(RouteTableTest, EmptyOrAbsentMatchTakesEveryCall) {
  BuiltConfig braces = Build(ConfigWithRoutes(R"(
  - name: all
    match: {}
    cluster: c
)"));
  BuiltConfig absent = Build(ConfigWithRoutes(R"(
  - name: all
    cluster: c
)"));
  for (std::string_view path :
       {"/shop.v1.Orders/GetOrder", "/grpc.health.v1.Health/Check", "/x/y"}) {
    EXPECT_EQ(MatchName(braces, path), "all") << path;
    EXPECT_EQ(MatchName(absent, path), "all") << path;
  }
}

TEST_F(RouteTableTest, NoMatchingRouteGivesNull) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: get
    match: {service: shop.v1.Orders, method: GetOrder}
    cluster: c
  - name: carts
    match: {service: shop.v1.Carts}
    cluster: c
  - name: admin
    match: {prefix: /shop.admin.}
    cluster: c
)"));
  ASSERT_NE(s.table, nullptr);
  EXPECT_EQ(s.table->Match("/shop.v1.Payments/Pay"), nullptr);
  EXPECT_EQ(s.table->Match("/"), nullptr);
  EXPECT_EQ(s.table->Match(""), nullptr);
}

TEST_F(RouteTableTest, PrefixRouteBeforeAnExactRouteWins) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: by-prefix
    match: {prefix: /shop.}
    cluster: c
  - name: exact
    match: {service: shop.v1.Orders, method: GetOrder}
    cluster: c
)"));
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/GetOrder"), "by-prefix");
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/ListOrders"), "by-prefix");
}

TEST_F(RouteTableTest, ExactRouteBeforeAPrefixRouteWins) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: exact
    match: {service: shop.v1.Orders, method: GetOrder}
    cluster: c
  - name: by-prefix
    match: {prefix: /shop.}
    cluster: c
)"));
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/GetOrder"), "exact");
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/ListOrders"), "by-prefix");
}

TEST_F(RouteTableTest, ServiceOrCatchAllRouteBeforeAnExactRouteWins) {
  BuiltConfig service_first = Build(ConfigWithRoutes(R"(
  - name: orders
    match: {service: shop.v1.Orders}
    cluster: c
  - name: exact
    match: {service: shop.v1.Orders, method: GetOrder}
    cluster: c
)"));
  EXPECT_EQ(MatchName(service_first, "/shop.v1.Orders/GetOrder"), "orders");

  BuiltConfig catch_all_first = Build(ConfigWithRoutes(R"(
  - name: all
    match: {}
    cluster: c
  - name: exact
    match: {service: shop.v1.Orders, method: GetOrder}
    cluster: c
)"));
  EXPECT_EQ(MatchName(catch_all_first, "/shop.v1.Orders/GetOrder"), "all");
}

TEST_F(RouteTableTest, RoutesAreTriedInFileOrderAroundExactRoutes) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: get
    match: {service: shop.v1.Orders, method: GetOrder}
    cluster: c
  - name: orders
    match: {service: shop.v1.Orders}
    cluster: c
  - name: list
    match: {service: shop.v1.Orders, method: ListOrders}
    cluster: c
  - name: carts-prefix
    match: {prefix: /shop.v1.Carts/}
    cluster: c
  - name: all
    match: {}
    cluster: c
)"));
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/GetOrder"), "get");
  // "orders" precedes the exact "list" route.
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/ListOrders"), "orders");
  EXPECT_EQ(MatchName(s, "/shop.v1.Carts/GetCart"), "carts-prefix");
  EXPECT_EQ(MatchName(s, "/other.Svc/Method"), "all");
}

TEST_F(RouteTableTest, FirstOfTwoIdenticalExactRoutesWins) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: first
    match: {service: shop.v1.Orders, method: GetOrder}
    cluster: c
  - name: second
    match: {service: shop.v1.Orders, method: GetOrder}
    cluster: c
)"));
  EXPECT_EQ(MatchName(s, "/shop.v1.Orders/GetOrder"), "first");
}

TEST_F(RouteTableTest, ResolvesTheRoutesCluster) {
  BuiltConfig s = Build(R"(
clusters:
  - name: orders
    endpoints: ["127.0.0.1:50051"]
  - name: carts
    endpoints: ["127.0.0.1:50052"]
routes:
  - name: o
    match: {service: shop.v1.Orders}
    cluster: orders
  - name: k
    match: {service: shop.v1.Carts}
    cluster: carts
)");
  const Route* o = Named(s, "o");
  const Route* k = Named(s, "k");
  ASSERT_NE(o, nullptr);
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(o->cluster, s.clusters.at("orders"));
  EXPECT_EQ(k->cluster, s.clusters.at("carts"));
  EXPECT_EQ(o->metrics->name(), "o");
}

TEST_F(RouteTableTest, ParsesTheRouteTimeout) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: capped
    match: {service: a.B, method: M}
    timeout: 1.5s
    cluster: c
  - name: uncapped
    match: {}
    cluster: c
)"));
  ASSERT_NE(Named(s, "capped"), nullptr);
  ASSERT_NE(Named(s, "uncapped"), nullptr);
  EXPECT_EQ(Named(s, "capped")->timeout, absl::Milliseconds(1500));
  EXPECT_EQ(Named(s, "uncapped")->timeout, absl::InfiniteDuration());
}

TEST_F(RouteTableTest, ParsesFailureCodesIntoTheBitset) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: listed
    match: {service: a.B}
    cluster: c
    circuit_breaker:
      failure_codes: [UNAVAILABLE, RESOURCE_EXHAUSTED, UNAUTHENTICATED]
  - name: defaults
    match: {service: a.C}
    cluster: c
    circuit_breaker: {}
  - name: no-breaker
    match: {}
    cluster: c
)"));
  const Route* listed = Named(s, "listed");
  const Route* defaults = Named(s, "defaults");
  const Route* no_breaker = Named(s, "no-breaker");
  ASSERT_NE(listed, nullptr);
  ASSERT_NE(defaults, nullptr);
  ASSERT_NE(no_breaker, nullptr);

  // Which codes of an upstream answer the breaker stage counts as failures
  // (an upstream DEADLINE_EXCEEDED held past deadline_failure_min).
  auto failures = [](const Route& route) {
    std::bitset<17> codes;
    for (int code = 0; code < 17; ++code) {
      const chain::UpstreamOutcome answered{
          .kind = chain::UpstreamOutcome::Kind::kAnswered,
          .grpc_code = code,
          .upstream_time = absl::Seconds(1)};
      if (route.breaker->Classify(answered) ==
          CircuitBreaker::Outcome::kFailure) {
        codes.set(code);
      }
    }
    return codes;
  };
  ASSERT_NE(listed->breaker, nullptr);
  std::bitset<17> expected;
  expected.set(14).set(8).set(16);
  EXPECT_EQ(failures(*listed), expected);
  ASSERT_NE(listed->state->breaker, nullptr);

  // SPEC default: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, DATA_LOSS.
  std::bitset<17> spec_default;
  spec_default.set(14).set(4).set(13).set(2).set(15);
  ASSERT_NE(defaults->breaker, nullptr);
  EXPECT_EQ(failures(*defaults), spec_default);

  EXPECT_EQ(no_breaker->breaker, nullptr);
  EXPECT_EQ(no_breaker->state->breaker, nullptr);
}

TEST_F(RouteTableTest, BuildsOnlyThePoliciesTheRouteConfigures) {
  BuiltConfig s = Build(ConfigWithRoutes(R"(
  - name: shared-bucket
    match: {service: a.B}
    cluster: c
    rate_limit: {requests_per_second: 10, burst: 5, shadow: true}
    concurrency: {max_in_flight: 2}
  - name: keyed
    match: {service: a.C}
    cluster: c
    rate_limit: {key_header: x-client-id}
  - name: bare
    match: {}
    cluster: c
)"));
  const Route* shared = Named(s, "shared-bucket");
  const Route* keyed = Named(s, "keyed");
  const Route* bare = Named(s, "bare");
  ASSERT_NE(shared, nullptr);
  ASSERT_NE(keyed, nullptr);
  ASSERT_NE(bare, nullptr);
  ASSERT_NE(shared->state->rate_limit, nullptr);
  EXPECT_NE(shared->state->rate_limit->bucket, nullptr);
  EXPECT_EQ(shared->state->rate_limit->keyed, nullptr);
  EXPECT_NE(shared->state->limiter, nullptr);
  EXPECT_NE(shared->rate_limit, nullptr);
  ASSERT_NE(shared->concurrency, nullptr);
  EXPECT_FALSE(shared->concurrency->shadow());
  EXPECT_EQ(shared->breaker, nullptr);
  ASSERT_NE(keyed->state->rate_limit, nullptr);
  EXPECT_EQ(keyed->state->rate_limit->bucket, nullptr);
  EXPECT_NE(keyed->state->rate_limit->keyed, nullptr);
  EXPECT_EQ(bare->state->rate_limit, nullptr);
  EXPECT_EQ(bare->state->breaker, nullptr);
  EXPECT_EQ(bare->state->limiter, nullptr);
  EXPECT_EQ(bare->rate_limit, nullptr);
  EXPECT_EQ(bare->breaker, nullptr);
  EXPECT_EQ(bare->concurrency, nullptr);
  EXPECT_EQ(bare->singleflight, nullptr);
  EXPECT_NE(bare->upstream, nullptr);
}

constexpr char kLimitedRoute[] = R"(
  - name: limited
    match: {service: a.B}
    cluster: c
    timeout: TIMEOUT
    rate_limit: {requests_per_second: 10, burst: BURST}
    circuit_breaker: {consecutive_failures: 3}
    concurrency: {max_in_flight: 4}
)";

std::string LimitedRoute(std::string_view burst,
                         std::string_view timeout = "1s") {
  return ConfigWithRoutes(absl::StrReplaceAll(
      kLimitedRoute,
      {{"BURST", absl::string_view(burst.data(), burst.size())},
       {"TIMEOUT", absl::string_view(timeout.data(), timeout.size())}}));
}

TEST_F(RouteTableTest, RebuiltTableKeepsTheStateOfAnUnchangedRoute) {
  BuiltConfig first = Build(LimitedRoute("5"));
  ASSERT_NE(Named(first, "limited"), nullptr);
  // Spend a token: the live state, not just the settings, must carry over.
  ASSERT_EQ(Named(first, "limited")->state->rate_limit->bucket->TryTake().kind,
            TakeResult::kAdmitted);

  BuiltConfig second = Build(LimitedRoute("5"), &first);
  ASSERT_NE(Named(second, "limited"), nullptr);
  EXPECT_EQ(Named(second, "limited")->state, Named(first, "limited")->state);
  EXPECT_EQ(Named(second, "limited")->metrics,
            Named(first, "limited")->metrics);
}

TEST_F(RouteTableTest, RebuiltTableKeepsStateWhenOnlyTheTimeoutChanged) {
  BuiltConfig first = Build(LimitedRoute("5", "1s"));
  BuiltConfig second = Build(LimitedRoute("5", "3s"), &first);
  ASSERT_NE(Named(first, "limited"), nullptr);
  ASSERT_NE(Named(second, "limited"), nullptr);
  EXPECT_EQ(Named(second, "limited")->state, Named(first, "limited")->state);
  EXPECT_EQ(Named(second, "limited")->timeout, absl::Seconds(3));
}

TEST_F(RouteTableTest, RebuiltTableGivesAChangedBurstNewState) {
  BuiltConfig first = Build(LimitedRoute("5"));
  BuiltConfig second = Build(LimitedRoute("6"), &first);
  ASSERT_NE(Named(first, "limited"), nullptr);
  ASSERT_NE(Named(second, "limited"), nullptr);
  EXPECT_NE(Named(second, "limited")->state, Named(first, "limited")->state);
  EXPECT_NE(Named(second, "limited")->state->rate_limit, nullptr);
  // The old table still holds its own state for the calls it started.
  EXPECT_NE(Named(first, "limited")->state->rate_limit, nullptr);
}

TEST_F(RouteTableTest, RebuiltTableGivesARenamedRouteNewState) {
  BuiltConfig first = Build(LimitedRoute("5"));
  std::string renamed = LimitedRoute("5");
  absl::StrReplaceAll({{"name: limited", "name: renamed"}}, &renamed);
  BuiltConfig second = Build(renamed, &first);
  ASSERT_NE(Named(first, "limited"), nullptr);
  ASSERT_NE(Named(second, "renamed"), nullptr);
  EXPECT_NE(Named(second, "renamed")->state, Named(first, "limited")->state);
}

TEST_F(RouteTableTest, RebuiltTableGivesAnAddedPolicyNewState) {
  BuiltConfig first = Build(ConfigWithRoutes(R"(
  - name: r
    match: {}
    cluster: c
)"));
  BuiltConfig second = Build(ConfigWithRoutes(R"(
  - name: r
    match: {}
    cluster: c
    rate_limit: {}
)"),
                             &first);
  ASSERT_NE(Named(first, "r"), nullptr);
  ASSERT_NE(Named(second, "r"), nullptr);
  EXPECT_NE(Named(second, "r")->state, Named(first, "r")->state);
  EXPECT_NE(Named(second, "r")->state->rate_limit, nullptr);
}

// ---------------------------------------------------------------------------
// Cluster

class ClusterTest : public ::testing::Test {
 protected:
  std::shared_ptr<Cluster> Create(std::string_view yaml,
                                  const Cluster* previous = nullptr) {
    auto loaded = ParseConfigText(
        absl::StrCat(absl::string_view(yaml.data(), yaml.size()), R"(
routes:
  - name: r
    cluster: c
)"),
        "test.yaml", "");
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (!loaded.ok()) return nullptr;
    auto cluster =
        Cluster::Create(loaded->proto.clusters(0), metrics_, dns_, previous);
    EXPECT_TRUE(cluster.ok()) << cluster.status();
    return cluster.ok() ? *std::move(cluster) : nullptr;
  }

  static std::string Address(const Endpoint* endpoint) {
    return endpoint == nullptr ? "<none>" : endpoint->address.ToString();
  }

  Metrics metrics_{"test"};
  SystemResolver resolver_;
  DnsCache dns_{resolver_};
};

constexpr char kTwoEndpoints[] = R"(
clusters:
  - name: c
    endpoints: ["127.0.0.1:1001", "127.0.0.1:1002"]
)";

TEST_F(ClusterTest, RoundRobinAlternatesBetweenTwoEndpoints) {
  std::shared_ptr<Cluster> cluster = Create(kTwoEndpoints);
  ASSERT_NE(cluster, nullptr);
  ASSERT_EQ(cluster->endpoints().size(), 2u);
  std::string previous = Address(cluster->Pick(absl::Now()));
  int first = previous == "127.0.0.1:1001" ? 1 : 0;
  for (int i = 0; i < 9; ++i) {
    const std::string next = Address(cluster->Pick(absl::Now()));
    EXPECT_NE(next, previous) << "pick " << i + 1;
    EXPECT_TRUE(next == "127.0.0.1:1001" || next == "127.0.0.1:1002") << next;
    first += next == "127.0.0.1:1001" ? 1 : 0;
    previous = next;
  }
  EXPECT_EQ(first, 5);
}

TEST_F(ClusterTest, SkipsAnUnhealthyEndpoint) {
  std::shared_ptr<Cluster> cluster = Create(kTwoEndpoints);
  ASSERT_NE(cluster, nullptr);
  cluster->endpoints()[0]->load.healthy.store(false);
  EXPECT_TRUE(cluster->AnyHealthy());
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(Address(cluster->Pick(absl::Now())), "127.0.0.1:1002")
        << "pick " << i;
  }
  // Healthy again: back in the rotation.
  cluster->endpoints()[0]->load.healthy.store(true);
  const std::string a = Address(cluster->Pick(absl::Now()));
  const std::string b = Address(cluster->Pick(absl::Now()));
  EXPECT_NE(a, b);
}

TEST_F(ClusterTest, PicksNothingWhenNoEndpointIsHealthy) {
  std::shared_ptr<Cluster> cluster = Create(kTwoEndpoints);
  ASSERT_NE(cluster, nullptr);
  for (const auto& endpoint : cluster->endpoints()) {
    endpoint->load.healthy.store(false);
  }
  EXPECT_FALSE(cluster->AnyHealthy());
  EXPECT_EQ(cluster->Pick(absl::Now()), nullptr);
}

TEST_F(ClusterTest, LeastRequestPicksTheLeastLoadedEndpoint) {
  std::shared_ptr<Cluster> cluster = Create(R"(
clusters:
  - name: c
    endpoints: ["127.0.0.1:1001", "127.0.0.1:1002"]
    load_balancing: LEAST_REQUEST
)");
  ASSERT_NE(cluster, nullptr);
  cluster->endpoints()[0]->load.in_flight.store(5);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(Address(cluster->Pick(absl::Now())), "127.0.0.1:1002")
        << "pick " << i;
  }
}

TEST_F(ClusterTest, RebuiltClusterKeepsTheEndpointOfAnUnchangedAddress) {
  std::shared_ptr<Cluster> first = Create(kTwoEndpoints);
  ASSERT_NE(first, nullptr);
  Endpoint* kept = first->endpoints()[1].get();
  kept->load.healthy.store(false);  // health must survive the reload

  std::shared_ptr<Cluster> second = Create(R"(
clusters:
  - name: c
    endpoints: ["127.0.0.1:1002", "127.0.0.1:1003"]
)",
                                           first.get());
  ASSERT_NE(second, nullptr);
  ASSERT_EQ(second->endpoints().size(), 2u);
  EXPECT_EQ(second->endpoints()[0].get(), kept);
  EXPECT_FALSE(second->endpoints()[0]->load.healthy.load());
  EXPECT_EQ(Address(second->endpoints()[1].get()), "127.0.0.1:1003");
  EXPECT_TRUE(second->endpoints()[1]->load.healthy.load());
  // The unhealthy kept endpoint is still skipped by the new cluster.
  EXPECT_EQ(Address(second->Pick(absl::Now())), "127.0.0.1:1003");
}

}  // namespace
}  // namespace bulwark
