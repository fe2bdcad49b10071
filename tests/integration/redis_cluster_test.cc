// Global rate limits on a Redis Cluster end to end (SPEC section 8): real
// bulwark sidecars in front of bulwark-demo-upstream, each seeded at a
// different node of a 3-node cluster (redis-server --cluster-enabled, started
// and formed by the test on free loopback ports, stopped by pid). The limits'
// keys are chosen so that their slots land on every node; the tests check
// that each limit stays shared across the sidecars (admitted calls within
// 5 % of rate x window + burst, no Redis errors, the bucket on the node the
// cluster names), that a limit whose slot is migrated mid-run (ASK, then
// MOVED) keeps holding, and that when a node dies only its limits fall back
// (on_redis_error) while the others stay shared. Skipped when
// /usr/bin/redis-server is missing.
//
// PacedLoad and windows as in global_rate_limit_test.cc: open-loop callers,
// admitted calls counted by start time in windows that begin at least 1 s
// after the load started, 4 s windows; conditions are awaited by polling
// against deadlines, never by fixed sleeps.
#include <algorithm>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/integration/paced_load.h"
#include "tests/integration/process.h"

namespace bulwark::test {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(30);
constexpr double kRate = 20;  // per tenant, for all sidecars together
constexpr int64_t kBurst = 5;

// The bucket key of tenant `tenant` on the "keyed" route of domain "shop"
// (global_bucket_script.h).
std::string BucketKey(const std::string& tenant) {
  return absl::StrCat("bulwark:{shop:keyed:", tenant, "}:bucket");
}

class RedisClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveRedisServer()) {
      GTEST_SKIP() << kRedisServerPath << " is not installed";
    }
    auto cluster = RedisCluster::Start(3);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
    auto upstream = DemoUpstream::Start();
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = *std::move(upstream);
    dir_ = TempDir();
    // One tenant per node: its bucket's slot is served there.
    for (int i = 0; tenants_.size() < 3 && i < 200; ++i) {
      const std::string tenant = absl::StrCat("tenant", i);
      auto slot = cluster_->KeySlot(BucketKey(tenant));
      ASSERT_TRUE(slot.ok()) << slot.status();
      auto node = cluster_->NodeServing(*slot);
      ASSERT_TRUE(node.ok()) << node.status();
      if (!tenants_.contains(*node)) tenants_[*node] = tenant;
    }
    ASSERT_EQ(tenants_.size(), 3u);
  }

  void TearDown() override {
    for (auto& sidecar : sidecars_) {
      EXPECT_TRUE(sidecar.process->Running()) << sidecar.process->Log();
      const ExitStatus exit = sidecar.process->Stop(absl::Seconds(20));
      EXPECT_TRUE(exit.ExitedWith(0)) << exit.ToString() << "\n"
                                      << sidecar.process->Log();
    }
  }

  // A sidecar whose seed is cluster node `seed`; its "keyed" route (Write)
  // has a global limit of kRate/s, burst kBurst, per x-tenant.
  int StartOne(int seed, const std::string& on_redis_error) {
    const int index = static_cast<int>(sidecars_.size());
    const std::string config = absl::StrCat(dir_, "/bulwark", index, ".yaml");
    EXPECT_TRUE(WriteFile(config, absl::StrCat(R"(
listener: { address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
workers: 1
redis:
  - name: main
    address: ")",
                                               cluster_->node(seed).address(),
                                               R"("
    timeout: 200ms
clusters:
  - name: demo
    endpoints: [")",
                                               upstream_->address(), R"("]
routes:
  - name: keyed
    match: { service: bulwark.demo.v1.Demo, method: Write }
    cluster: demo
    rate_limit:
      requests_per_second: )",
                                               kRate, R"(
      burst: )",
                                               kBurst, R"(
      key_header: x-tenant
      global: { redis: main, domain: shop, on_redis_error: )",
                                               on_redis_error, R"( }
)"))
                    .ok());
    auto started = StartSidecar(
        config, absl::StrCat(dir_, "/bulwark", index, ".log"), kStartTimeout);
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return -1;
    sidecars_.push_back(*std::move(started));
    return index;
  }

  std::string Admin(int index, const std::string& path) {
    int code = 0;
    auto body = HttpGet("127.0.0.1", sidecars_[index].admin_port, path, &code);
    return body.ok() && code == 200 ? *body : "";
  }

  double RedisRequests(int index, const std::string& result) {
    return MetricValue(Admin(index, "/metrics"), "bulwark_redis_requests_total",
                       absl::StrCat("result=\"", result, "\""));
  }

  // Waits until both sidecars see 2 replicas on the shared bucket.
  void AwaitShared(const std::vector<int>& indexes) {
    for (int i : indexes) {
      EXPECT_TRUE(PollUntil(
          [&] {
            const std::string routes = Admin(i, "/routes");
            return absl::StrContains(routes, "\"mode\": \"shared\"") &&
                   absl::StrContains(routes, "\"replicas\": 2");
          },
          absl::Seconds(15)))
          << "sidecar " << i << ": " << Admin(i, "/routes") << "\n"
          << sidecars_[i].process->Log();
    }
  }

  // Two callers of kRate/s each (twice the limit together), one per sidecar.
  std::vector<std::unique_ptr<PacedLoad>> LoadTenant(
      const std::string& tenant) {
    std::vector<std::unique_ptr<PacedLoad>> loads;
    for (const StartedSidecar& s : sidecars_) {
      loads.push_back(std::make_unique<PacedLoad>(
          PacedLoad::Options{.port = s.port,
                             .rate = kRate,
                             .threads = 1,
                             .method = "Write",
                             .metadata = {{"x-tenant", tenant}}}));
    }
    return loads;
  }

  static Counts Sum(std::vector<std::unique_ptr<PacedLoad>>& loads,
                    absl::Time from, absl::Time to) {
    Counts total;
    for (auto& load : loads) {
      load->Stop();
      const Counts c = load->Between(from, to);
      total.ok += c.ok;
      total.rate_limited += c.rate_limited;
      total.other += c.other;
      total.max_latency = std::max(total.max_latency, c.max_latency);
    }
    return total;
  }

  // The bucket's refill time stamp on node `node` ("" when it is not there).
  // Read after ASKING: a node importing the slot answers only that way.
  std::string BucketTs(int node, const std::string& tenant) {
    auto sh = ChildProcess::Start(
        "/bin/sh",
        {"-c",
         absl::StrCat("printf 'ASKING\\nHGET %s ts\\n' \"$0\" | ",
                      kRedisCliPath, " -h 127.0.0.1 -p ",
                      cluster_->node(node).port()),
         BucketKey(tenant)},
        {.stop_grace = absl::Seconds(1)});
    if (!sh.ok() || !(*sh)->Wait(absl::Seconds(10)).ok()) return "";
    std::string out = (*sh)->Log();
    while (!out.empty() && out.back() == '\n') out.pop_back();
    const size_t nl = out.rfind('\n');
    std::string ts = nl == std::string::npos ? "" : out.substr(nl + 1);
    // A number, or nothing (no bucket there, or a redirection).
    return !ts.empty() &&
                   ts.find_first_not_of("0123456789") == std::string::npos
               ? ts
               : "";
  }

  // Waits until node `node` holds the bucket with a time stamp other than
  // `previous`: a refill reached it.
  bool AwaitRefillOn(int node, const std::string& tenant,
                     const std::string& previous) {
    return PollUntil(
        [&] {
          const std::string ts = BucketTs(node, tenant);
          return !ts.empty() && ts != previous;
        },
        absl::Seconds(10));
  }

  std::unique_ptr<RedisCluster> cluster_;
  std::unique_ptr<DemoUpstream> upstream_;
  std::string dir_;
  std::map<int, std::string>
      tenants_;  // node -> a tenant whose bucket is there
  std::vector<StartedSidecar> sidecars_;
};

TEST_F(RedisClusterTest, LimitsOnEveryNodeHoldAcrossSidecarsSeededApart) {
  const int s0 = StartOne(/*seed=*/0, "LOCAL");
  const int s1 = StartOne(/*seed=*/1, "LOCAL");
  ASSERT_EQ(sidecars_.size(), 2u);
  AwaitShared({s0, s1});

  std::map<int, std::vector<std::unique_ptr<PacedLoad>>> loads;
  for (const auto& [node, tenant] : tenants_) loads[node] = LoadTenant(tenant);
  const absl::Time from = absl::Now() + absl::Seconds(1);
  const absl::Duration window = absl::Seconds(4);
  absl::SleepFor(absl::Seconds(1) + window + absl::Milliseconds(300));
  const double rate_window = kRate * absl::ToDoubleSeconds(window);
  for (auto& [node, tenant_loads] : loads) {
    const Counts c = Sum(tenant_loads, from, from + window);
    std::cout << "tenant " << tenants_[node] << " (bucket on node " << node
              << "), 4 s window, " << kRate << "/s burst " << kBurst
              << " offered twice over two sidecars: " << ToString(c) << "\n";
    EXPECT_LE(c.ok, 1.05 * (rate_window + kBurst)) << tenants_[node];
    EXPECT_GE(c.ok, 0.95 * rate_window) << tenants_[node];
    EXPECT_EQ(c.other, 0);
    // The bucket lives where the cluster says.
    auto exists =
        cluster_->node(node).Cli({"EXISTS", BucketKey(tenants_[node])});
    EXPECT_TRUE(exists.ok() && *exists == "1")
        << "node " << node << ": " << exists.status();
  }
  // Shared, not LOCAL: no command failed, redirections included (one result
  // per command).
  for (int s : {s0, s1}) {
    EXPECT_GT(RedisRequests(s, "ok"), 0) << s;
    EXPECT_EQ(RedisRequests(s, "error"), 0) << Admin(s, "/metrics");
    EXPECT_EQ(RedisRequests(s, "timeout"), 0) << s;
  }
}

TEST_F(RedisClusterTest, ALimitWhoseSlotMigratesMidRunKeepsItsLimit) {
  const int s0 = StartOne(/*seed=*/0, "LOCAL");
  const int s1 = StartOne(/*seed=*/1, "LOCAL");
  ASSERT_EQ(sidecars_.size(), 2u);
  AwaitShared({s0, s1});

  const int from_node = 2;
  const int to_node = 0;
  const std::string tenant = tenants_[from_node];
  auto slot = cluster_->KeySlot(BucketKey(tenant));
  ASSERT_TRUE(slot.ok()) << slot.status();

  auto loads = LoadTenant(tenant);
  const absl::Time from = absl::Now() + absl::Seconds(1);
  ASSERT_TRUE(AwaitRefillOn(from_node, tenant, ""));
  absl::SleepFor(absl::Seconds(1));  // pacing: the window starts with load

  // IMPORTING / MIGRATING, then the key moves: the old node answers ASK.
  ASSERT_TRUE(cluster_->BeginMigration(*slot, from_node, to_node).ok());
  ASSERT_TRUE(cluster_->MigrateKeys(*slot, from_node, to_node).ok());
  std::string ts = BucketTs(to_node, tenant);
  EXPECT_TRUE(AwaitRefillOn(to_node, tenant, ts))
      << "no refill reached node " << to_node << " through ASK";
  // The slot is the new node's: MOVED from then on.
  ASSERT_TRUE(cluster_->EndMigration(*slot, to_node).ok());
  auto serving = cluster_->NodeServing(*slot);
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_EQ(*serving, to_node);
  ts = BucketTs(to_node, tenant);
  EXPECT_TRUE(AwaitRefillOn(to_node, tenant, ts))
      << "no refill reached node " << to_node << " after MOVED";
  // Pacing: the window ends with load and lasts at least 4 s.
  absl::SleepFor(
      std::max(absl::Seconds(1), from + absl::Seconds(4) - absl::Now()));

  const absl::Time to = absl::Now();
  const Counts c = Sum(loads, from, to);
  const double window = absl::ToDoubleSeconds(to - from);
  std::cout << "tenant " << tenant << ", slot " << *slot << " migrated from "
            << "node " << from_node << " to node " << to_node << " within a "
            << window << " s window: " << ToString(c) << "\n";
  EXPECT_LE(c.ok, 1.05 * (kRate * window + kBurst));
  EXPECT_GE(c.ok, 0.95 * kRate * window);
  EXPECT_EQ(c.other, 0);
  // Nothing left in the slot on the old node, the bucket on the new one.
  auto gone = cluster_->node(from_node).Cli(
      {"CLUSTER", "COUNTKEYSINSLOT", absl::StrCat(*slot)});
  EXPECT_TRUE(gone.ok() && *gone == "0") << gone.status() << " " << *gone;
  EXPECT_NE(BucketTs(to_node, tenant), "");
  for (int s : {s0, s1}) {
    EXPECT_EQ(RedisRequests(s, "error"), 0) << Admin(s, "/metrics");
    EXPECT_EQ(RedisRequests(s, "timeout"), 0) << s;
  }
}

TEST_F(RedisClusterTest, AKilledNodesLimitsFallBackAndTheOthersStayShared) {
  // ALLOW makes the fallback visible: a limit whose node is gone admits
  // everything, while the shared ones still hold.
  const int s0 = StartOne(/*seed=*/0, "ALLOW");
  const int s1 = StartOne(/*seed=*/1, "ALLOW");
  ASSERT_EQ(sidecars_.size(), 2u);
  AwaitShared({s0, s1});

  const int dead = 2;
  std::map<int, std::vector<std::unique_ptr<PacedLoad>>> loads;
  for (const auto& [node, tenant] : tenants_) loads[node] = LoadTenant(tenant);
  ASSERT_TRUE(AwaitRefillOn(dead, tenants_[dead], ""));
  cluster_->node(dead).Kill();
  // Both sidecars see the failure (their refills there fail).
  for (int s : {s0, s1}) {
    EXPECT_TRUE(PollUntil([&] { return RedisRequests(s, "error") > 0; },
                          absl::Seconds(10)))
        << Admin(s, "/metrics");
  }
  const absl::Time from = absl::Now() + absl::Seconds(1);
  const absl::Duration window = absl::Seconds(4);
  absl::SleepFor(absl::Seconds(1) + window + absl::Milliseconds(300));
  const double rate_window = kRate * absl::ToDoubleSeconds(window);
  for (auto& [node, tenant_loads] : loads) {
    const Counts c = Sum(tenant_loads, from, from + window);
    std::cout << "tenant " << tenants_[node] << " (bucket on node " << node
              << (node == dead ? ", killed" : "")
              << "), 4 s window: " << ToString(c) << "\n";
    EXPECT_EQ(c.other, 0);
    if (node == dead) {
      // ALLOW: everything offered (2 x rate) is admitted.
      EXPECT_GE(c.ok, 0.9 * 2 * rate_window) << tenants_[node];
      EXPECT_EQ(c.rate_limited, 0) << tenants_[node];
    } else {
      EXPECT_LE(c.ok, 1.05 * (rate_window + kBurst)) << tenants_[node];
      EXPECT_GE(c.ok, 0.95 * rate_window) << tenants_[node];
    }
  }
}

}  // namespace
}  // namespace bulwark::test
