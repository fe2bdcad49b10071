// The Redis stores of a configuration snapshot (SPEC sections 6 and 8): one
// store per redis entry, kept by a reload while the entry and its password
// are unchanged, replaced otherwise; a route's global limit keeps its state
// only while its store is kept. No Redis is needed: the stores point at a
// closed port and just keep failing to connect in the background.
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "policies/clock.h"
#include "sidecar/config_loader.h"
#include "sidecar/dns.h"
#include "sidecar/metrics.h"
#include "sidecar/snapshot.h"

namespace bulwark {
namespace {

class NoResolver final : public Resolver {
 public:
  absl::StatusOr<std::vector<ResolvedAddress>> Resolve(
      const HostPort& address) override {
    return absl::NotFoundError(address.ToString());
  }
};

std::string Config(const std::string& redis_address, double rate,
                   const std::string& route_redis = "main") {
  return absl::StrCat(R"(
redis:
  - { name: main, address: ")",
                      redis_address, R"(" }
  - { name: spare, address: "127.0.0.1:2" }
clusters:
  - { name: demo, endpoints: ["127.0.0.1:50051"] }
routes:
  - name: global
    cluster: demo
    match: { service: a.B }
    rate_limit:
      requests_per_second: )",
                      rate, R"(
      global: { redis: )",
                      route_redis, R"( }
  - name: local
    cluster: demo
    rate_limit: { requests_per_second: 5 }
)");
}

class RedisSnapshotTest : public ::testing::Test {
 protected:
  std::shared_ptr<const Snapshot> Build(const std::string& yaml,
                                        const Snapshot* previous,
                                        std::string password = "") {
    auto loaded = ParseConfigText(yaml, "test.yaml", "");
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (!loaded.ok()) return nullptr;
    if (!password.empty()) loaded->redis_passwords["main"] = password;
    auto snapshot = BuildSnapshot(
        *std::move(loaded), previous,
        {.metrics = metrics_, .dns = dns_, .clock = MonotonicClock::Get()});
    EXPECT_TRUE(snapshot.ok()) << snapshot.status();
    return snapshot.ok() ? *snapshot : nullptr;
  }

  static const RouteState& StateOf(const Snapshot& snapshot, int route) {
    return *snapshot.routes->routes()[route]->state;
  }

  Metrics metrics_{"test"};
  NoResolver resolver_;
  DnsCache dns_{resolver_};
};

TEST_F(RedisSnapshotTest, OneStorePerRedisEntryAndTheRouteHoldsItsOwn) {
  auto snapshot = Build(Config("127.0.0.1:1", 10), nullptr);
  ASSERT_NE(snapshot, nullptr);
  ASSERT_EQ(snapshot->redis.size(), 2u);
  const auto& rate_limit = *StateOf(*snapshot, 0).rate_limit;
  ASSERT_NE(rate_limit.global, nullptr);
  EXPECT_EQ(rate_limit.store, snapshot->redis.at("main"));
  EXPECT_EQ(StateOf(*snapshot, 1).rate_limit->global, nullptr);
  EXPECT_TRUE(snapshot->routes->routes()[0]->rate_limit->is_global());
}

TEST_F(RedisSnapshotTest, AnUnchangedEntryKeepsItsStoreAndTheRouteItsState) {
  auto first = Build(Config("127.0.0.1:1", 10), nullptr);
  ASSERT_NE(first, nullptr);
  auto second = Build(Config("127.0.0.1:1", 10), first.get());
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->redis.at("main"), first->redis.at("main"));
  EXPECT_EQ(second->redis.at("spare"), first->redis.at("spare"));
  EXPECT_EQ(second->routes->routes()[0]->state,
            first->routes->routes()[0]->state);
}

TEST_F(RedisSnapshotTest, AChangedLimitKeepsTheStoreButNotTheLimiter) {
  auto first = Build(Config("127.0.0.1:1", 10), nullptr);
  ASSERT_NE(first, nullptr);
  auto second = Build(Config("127.0.0.1:1", 20), first.get());
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->redis.at("main"), first->redis.at("main"));
  EXPECT_NE(second->routes->routes()[0]->state,
            first->routes->routes()[0]->state);
  // The local route is untouched.
  EXPECT_EQ(second->routes->routes()[1]->state,
            first->routes->routes()[1]->state);
}

TEST_F(RedisSnapshotTest, AChangedAddressOrPasswordReplacesStoreAndLimiter) {
  auto first = Build(Config("127.0.0.1:1", 10), nullptr);
  ASSERT_NE(first, nullptr);
  auto moved = Build(Config("127.0.0.1:3", 10), first.get());
  ASSERT_NE(moved, nullptr);
  EXPECT_NE(moved->redis.at("main"), first->redis.at("main"));
  EXPECT_EQ(moved->redis.at("spare"), first->redis.at("spare"));
  EXPECT_NE(moved->routes->routes()[0]->state,
            first->routes->routes()[0]->state);
  EXPECT_EQ(StateOf(*moved, 0).rate_limit->store, moved->redis.at("main"));

  auto rotated = Build(Config("127.0.0.1:3", 10), moved.get(), "new-secret");
  ASSERT_NE(rotated, nullptr);
  EXPECT_NE(rotated->redis.at("main"), moved->redis.at("main"));
  EXPECT_NE(rotated->routes->routes()[0]->state,
            moved->routes->routes()[0]->state);
}

TEST_F(RedisSnapshotTest, ARouteMovedToAnotherRedisGetsANewLimiter) {
  auto first = Build(Config("127.0.0.1:1", 10), nullptr);
  ASSERT_NE(first, nullptr);
  auto second = Build(Config("127.0.0.1:1", 10, "spare"), first.get());
  ASSERT_NE(second, nullptr);
  EXPECT_NE(second->routes->routes()[0]->state,
            first->routes->routes()[0]->state);
  EXPECT_EQ(StateOf(*second, 0).rate_limit->store, second->redis.at("spare"));
}

}  // namespace
}  // namespace bulwark
