// RedisClient against a real 3-node Redis Cluster (RedisCluster, started here
// on free loopback ports and stopped by pid) and a single redis-server:
// routing by slot from one seed, MOVED learnt once per slot, ASK followed
// without being learnt, NOSCRIPT answered with EVAL on the node that lacked
// the script, a redirection loop cut after max_redirections, a killed node's
// keys failing fast while the others still answer, idle connections closed
// and the connection cap held. Skipped when /usr/bin/redis-server is missing.
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policies/clock.h"
#include "sidecar/store/cluster_slots.h"
#include "sidecar/store/redis_client.h"
#include "sidecar/store/redis_store.h"
#include "tests/integration/process.h"

namespace bulwark::store {
namespace {

using test::RedisCluster;
using test::RedisServer;
using ::testing::HasSubstr;

RedisClientOptions ClientOptions(int port) {
  return {.address = {.host = "127.0.0.1", .port = static_cast<uint16_t>(port)},
          .timeout = absl::Milliseconds(500),
          .reconnect_backoff_base = absl::Milliseconds(20),
          .reconnect_backoff_max = absl::Milliseconds(500)};
}

// Runs `issue` on the store's thread and waits for the command's result.
RedisResult RunOnStore(
    RedisStore& store,
    absl::AnyInvocable<void(RedisClient&, RedisClient::Callback)> issue) {
  struct Shared {
    absl::Notification done;
    RedisResult result;
  };
  auto shared = std::make_shared<Shared>();
  store.Post([shared, issue = std::move(issue)](RedisClient& client) mutable {
    issue(client, [shared](RedisResult r) {
      shared->result = std::move(r);
      shared->done.Notify();
    });
  });
  if (!shared->done.WaitForNotificationWithTimeout(absl::Seconds(10))) {
    return {.kind = RedisResult::Kind::kError, .error = "test: no callback"};
  }
  return shared->result;
}

// `argv` routed by argv[1].
RedisResult OnKey(RedisStore& store, std::vector<std::string> argv) {
  return RunOnStore(store,
                    [argv = std::move(argv)](RedisClient& client,
                                             RedisClient::Callback done) {
                      client.CommandOnKey(1, argv, std::move(done));
                    });
}

RedisClient::Stats StatsOf(RedisStore& store) {
  struct Shared {
    absl::Notification done;
    RedisClient::Stats stats;
  };
  auto shared = std::make_shared<Shared>();
  store.Post([shared](RedisClient& client) {
    shared->stats = client.stats();
    shared->done.Notify();
  });
  shared->done.WaitForNotificationWithTimeout(absl::Seconds(10));
  return shared->stats;
}

class RedisClusterClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::HaveRedisServer()) {
      GTEST_SKIP() << test::kRedisServerPath << " is not installed";
    }
    auto cluster = RedisCluster::Start(3);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
    // One key per node.
    for (int i = 0; keys_.size() < 3 && i < 200; ++i) {
      const std::string key = absl::StrCat("key", i);
      auto node = cluster_->NodeServing(KeySlot(key));
      ASSERT_TRUE(node.ok()) << node.status();
      if (!keys_.contains(*node)) keys_[*node] = key;
    }
    ASSERT_EQ(keys_.size(), 3u);
  }

  std::unique_ptr<RedisStore> StartStore(int seed,
                                         RedisClientOptions options = {}) {
    RedisClientOptions o = ClientOptions(cluster_->node(seed).port());
    o.idle_timeout = options.idle_timeout;
    o.max_connections = options.max_connections;
    return RedisStore::Start(std::move(o), clock_);
  }

  MonotonicClock& clock_ = MonotonicClock::Get();
  std::unique_ptr<RedisCluster> cluster_;
  std::map<int, std::string> keys_;  // node -> a key it serves
};

TEST_F(RedisClusterClientTest, OneSeedReachesEveryNodeAndLearnsEachSlotOnce) {
  auto store = StartStore(/*seed=*/0);
  for (const auto& [node, key] : keys_) {
    RedisResult r = OnKey(*store, {"SET", key, absl::StrCat("v", node)});
    ASSERT_EQ(r.kind, RedisResult::Kind::kOk) << key << ": " << r.error;
  }
  // Nodes 1 and 2 each redirected once; node 0 is the seed.
  EXPECT_EQ(StatsOf(*store).moved, 2);
  for (const auto& [node, key] : keys_) {
    RedisResult r = OnKey(*store, {"GET", key});
    ASSERT_EQ(r.kind, RedisResult::Kind::kOk) << r.error;
    EXPECT_EQ(r.reply.str, absl::StrCat("v", node));
    // Stored where the cluster says.
    auto direct = cluster_->node(node).Cli({"GET", key});
    ASSERT_TRUE(direct.ok()) << direct.status();
    EXPECT_EQ(*direct, absl::StrCat("v", node));
  }
  const RedisClient::Stats stats = StatsOf(*store);
  EXPECT_EQ(stats.moved, 2);  // learnt: no redirection the second time
  EXPECT_EQ(stats.ok, 6);     // one result per command, redirected or not
  EXPECT_EQ(stats.errors, 0);
  EXPECT_EQ(stats.connections, 3u);
}

TEST_F(RedisClusterClientTest, AskIsFollowedOnceAndNotLearntMovedIs) {
  auto store = StartStore(/*seed=*/0);
  const std::string key = keys_[1];
  ASSERT_EQ(OnKey(*store, {"SET", key, "v"}).kind, RedisResult::Kind::kOk);
  const int slot = KeySlot(key);
  ASSERT_TRUE(cluster_->BeginMigration(slot, 1, 2).ok());
  ASSERT_TRUE(cluster_->MigrateKeys(slot, 1, 2).ok());
  const int64_t moved = StatsOf(*store).moved;
  for (int i = 1; i <= 2; ++i) {
    RedisResult r = OnKey(*store, {"GET", key});
    ASSERT_EQ(r.kind, RedisResult::Kind::kOk) << r.error;
    EXPECT_EQ(r.reply.str, "v");
    EXPECT_EQ(StatsOf(*store).asked, i);  // node 1 asked again each time
  }
  EXPECT_EQ(StatsOf(*store).moved, moved);
  ASSERT_TRUE(cluster_->EndMigration(slot, 2).ok());
  ASSERT_EQ(OnKey(*store, {"GET", key}).reply.str, "v");
  EXPECT_EQ(StatsOf(*store).moved, moved + 1);
  ASSERT_EQ(OnKey(*store, {"GET", key}).reply.str, "v");
  EXPECT_EQ(StatsOf(*store).moved, moved + 1);
  EXPECT_EQ(StatsOf(*store).asked, 2);
}

TEST_F(RedisClusterClientTest, EvalShaCachesTheScriptOnEachNodeThatLacksIt) {
  auto store = StartStore(/*seed=*/0);
  static const RedisScript script("return KEYS[1]");
  for (const auto& [node, key] : keys_) {
    RedisResult r = RunOnStore(
        *store, [key = key](RedisClient& client, RedisClient::Callback done) {
          client.EvalSha(script, {key}, {}, std::move(done));
        });
    ASSERT_EQ(r.kind, RedisResult::Kind::kOk) << r.error;
    EXPECT_EQ(r.reply.str, key);
    auto exists = cluster_->node(node).Cli({"SCRIPT", "EXISTS", script.sha1()});
    ASSERT_TRUE(exists.ok()) << exists.status();
    EXPECT_EQ(*exists, "1") << "node " << node;
  }
  EXPECT_EQ(StatsOf(*store).errors, 0);
}

TEST_F(RedisClusterClientTest, ARedirectionLoopEndsAfterFiveAsAnError) {
  auto store = StartStore(/*seed=*/0);
  // Node 0 migrates a slot to node 1, which does not import it: a missing
  // key's command bounces between them (ASK to 1, MOVED back to 0).
  const std::string key = keys_[0];
  const int slot = KeySlot(key);
  auto out = cluster_->node(0).Cli(
      {"CLUSTER", "SETSLOT", absl::StrCat(slot), "MIGRATING", cluster_->id(1)});
  ASSERT_TRUE(out.ok() && *out == "OK") << out.status();
  RedisResult r = OnKey(*store, {"GET", key});
  EXPECT_EQ(r.kind, RedisResult::Kind::kError);
  EXPECT_THAT(r.error, HasSubstr("more than 5 redirections"));
  const RedisClient::Stats stats = StatsOf(*store);
  EXPECT_EQ(stats.moved + stats.asked, 5);
  EXPECT_EQ(stats.errors, 1);  // one command, one result
}

TEST_F(RedisClusterClientTest, AKilledNodesKeysFailFastTheOthersStillAnswer) {
  auto store = StartStore(/*seed=*/0);
  for (const auto& [node, key] : keys_) {
    ASSERT_EQ(OnKey(*store, {"SET", key, "v"}).kind, RedisResult::Kind::kOk);
  }
  cluster_->node(2).Kill();
  RedisResult dead;
  EXPECT_TRUE(test::PollUntil(
      [&] {
        dead = OnKey(*store, {"GET", keys_[2]});
        return dead.kind == RedisResult::Kind::kError;
      },
      absl::Seconds(5)));
  // Refused, not waited for: well within the round-trip timeout.
  for (int i = 0; i < 5; ++i) {
    dead = OnKey(*store, {"GET", keys_[2]});
    EXPECT_EQ(dead.kind, RedisResult::Kind::kError);
    EXPECT_LT(dead.duration, absl::Milliseconds(250)) << dead.error;
  }
  for (int node : {0, 1}) {
    RedisResult r = OnKey(*store, {"GET", keys_[node]});
    EXPECT_EQ(r.kind, RedisResult::Kind::kOk) << r.error;
    EXPECT_EQ(r.reply.str, "v");
  }
}

TEST_F(RedisClusterClientTest, IdleConnectionsCloseAndTheCapHolds) {
  auto store = StartStore(
      /*seed=*/0,
      {.idle_timeout = absl::Milliseconds(200), .max_connections = 2});
  // Three nodes through two connections: the idle non-seed one makes room.
  for (int round = 0; round < 2; ++round) {
    for (const auto& [node, key] : keys_) {
      RedisResult r = OnKey(*store, {"SET", key, "v"});
      ASSERT_EQ(r.kind, RedisResult::Kind::kOk) << r.error;
    }
  }
  // Unused for 200 ms: only the seed's remains.
  EXPECT_TRUE(test::PollUntil([&] { return StatsOf(*store).connections == 1; },
                              absl::Seconds(5)))
      << StatsOf(*store).connections;
  EXPECT_EQ(OnKey(*store, {"GET", keys_[2]}).reply.str, "v");
}

TEST(RedisSingleServerTest, NeverRedirectsAndKeepsOneConnection) {
  if (!test::HaveRedisServer()) {
    GTEST_SKIP() << test::kRedisServerPath << " is not installed";
  }
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto store =
      RedisStore::Start(ClientOptions((*redis)->port()), MonotonicClock::Get());
  for (int i = 0; i < 20; ++i) {
    RedisResult r = OnKey(*store, {"SET", absl::StrCat("key", i), "v"});
    ASSERT_EQ(r.kind, RedisResult::Kind::kOk) << r.error;
  }
  const RedisClient::Stats stats = StatsOf(*store);
  EXPECT_EQ(stats.moved + stats.asked, 0);
  EXPECT_EQ(stats.connections, 1u);
  EXPECT_EQ(stats.ok, 20);
}

}  // namespace
}  // namespace bulwark::store
