// The Redis store against a real redis-server (started here on a free
// loopback port, stopped by its pid): RedisClient's results, timeouts,
// reconnects and AUTH; the bucket scripts; GlobalLimiter's shared limit across
// replicas, its fallbacks while Redis is down and its return once Redis is
// back. Skipped when /usr/bin/redis-server is missing.
//
// Windows: the SPEC's criterion is 10 s windows; the tests use 4 s (shared
// limit) and 2 s (fallbacks) windows to keep the run short, with the same
// 5 % tolerance on rate x window + burst. Load is an open-loop schedule
// paced in 1 ms steps (the calls due by elapsed time are issued at each step,
// so a late wake-up does not change the rate); conditions are awaited by
// polling against deadlines.
#include "sidecar/store/global_limiter.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policies/clock.h"
#include "policies/global_allowance.h"
#include "sidecar/store/global_bucket_script.h"
#include "sidecar/store/redis_client.h"
#include "sidecar/store/redis_store.h"
#include "tests/integration/process.h"

namespace bulwark::store {
namespace {

using test::ChildProcess;
using ::testing::HasSubstr;

using test::RedisServer;

RedisClientOptions ClientOptions(int port) {
  return {.address = {.host = "127.0.0.1", .port = static_cast<uint16_t>(port)},
          .timeout = absl::Milliseconds(100),
          .reconnect_backoff_base = absl::Milliseconds(20),
          .reconnect_backoff_max = absl::Milliseconds(500)};
}

// Runs one command on the store's thread and waits for its result.
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

RedisResult Command(RedisStore& store, std::vector<std::string> argv) {
  return RunOnStore(store,
                    [argv = std::move(argv)](RedisClient& client,
                                             RedisClient::Callback done) {
                      client.Command(argv, std::move(done));
                    });
}

// Polls `argv` until it answers ok.
bool EventuallyOk(RedisStore& store, std::vector<std::string> argv,
                  absl::Duration timeout = absl::Seconds(10)) {
  return test::PollUntil(
      [&] { return Command(store, argv).kind == RedisResult::Kind::kOk; },
      timeout);
}

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::HaveRedisServer()) {
      GTEST_SKIP() << test::kRedisServerPath << " is not installed";
    }
  }
  MonotonicClock& clock_ = MonotonicClock::Get();
};

TEST_F(RedisStoreTest, RepliesOfEveryShape) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto store = RedisStore::Start(ClientOptions((*redis)->port()), clock_);
  ASSERT_TRUE(EventuallyOk(*store, {"PING"}));

  RedisResult r = Command(*store, {"PING"});
  EXPECT_EQ(r.reply.type, RedisReply::Type::kStatus);
  EXPECT_EQ(r.reply.str, "PONG");
  EXPECT_GT(r.duration, absl::ZeroDuration());
  r = Command(*store, {"GET", "missing"});
  EXPECT_EQ(r.kind, RedisResult::Kind::kOk);
  EXPECT_EQ(r.reply.type, RedisReply::Type::kNil);
  ASSERT_EQ(Command(*store, {"SET", "k", std::string("a\0b", 3)}).kind,
            RedisResult::Kind::kOk);
  r = Command(*store, {"GET", "k"});
  EXPECT_EQ(r.reply.type, RedisReply::Type::kString);
  EXPECT_EQ(r.reply.str, std::string("a\0b", 3));
  // A wrong type is an error result, not a crash.
  r = Command(*store, {"LPUSH", "k", "x"});
  EXPECT_EQ(r.kind, RedisResult::Kind::kError);
  EXPECT_THAT(r.error, HasSubstr("WRONGTYPE"));
  r = Command(*store, {"NOSUCHCOMMAND"});
  EXPECT_EQ(r.kind, RedisResult::Kind::kError);
  r = Command(*store, {"EVAL", "return {1, 'two', {3}, false}", "0"});
  ASSERT_EQ(r.kind, RedisResult::Kind::kOk) << r.error;
  ASSERT_EQ(r.reply.type, RedisReply::Type::kArray);
  ASSERT_EQ(r.reply.elements.size(), 4u);
  EXPECT_EQ(r.reply.elements[0].integer, 1);
  EXPECT_EQ(r.reply.elements[1].str, "two");
  EXPECT_EQ(r.reply.elements[2].elements[0].integer, 3);
  EXPECT_EQ(r.reply.elements[3].type, RedisReply::Type::kNil);
  const RedisStore::Stats stats = store->StatsApprox();
  EXPECT_GE(stats.errors, 2);
  EXPECT_GE(stats.ok, 5);
}

TEST_F(RedisStoreTest, EvalShaLoadsTheScriptOnNoScript) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto store = RedisStore::Start(ClientOptions((*redis)->port()), clock_);
  ASSERT_TRUE(EventuallyOk(*store, {"PING"}));
  static const RedisScript script("return tonumber(ARGV[1]) + 1");

  auto eval = [&] {
    return RunOnStore(*store,
                      [](RedisClient& client, RedisClient::Callback done) {
                        client.EvalSha(script, {}, {"41"}, std::move(done));
                      });
  };
  RedisResult r = eval();  // NOSCRIPT, then EVAL
  ASSERT_EQ(r.kind, RedisResult::Kind::kOk) << r.error;
  EXPECT_EQ(r.reply.integer, 42);
  r = eval();  // cached now
  EXPECT_EQ(r.reply.integer, 42);
  ASSERT_EQ(Command(*store, {"SCRIPT", "FLUSH"}).kind, RedisResult::Kind::kOk);
  r = eval();
  ASSERT_EQ(r.kind, RedisResult::Kind::kOk) << r.error;
  EXPECT_EQ(r.reply.integer, 42);
}

TEST_F(RedisStoreTest, UnansweredCommandTimesOutThenRecovers) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto store = RedisStore::Start(ClientOptions((*redis)->port()), clock_);
  ASSERT_TRUE(EventuallyOk(*store, {"PING"}));

  // A stopped server accepts nothing and answers nothing: slow, not down.
  ASSERT_TRUE((*redis)->process()->Signal(SIGSTOP).ok());
  const absl::Time start = absl::Now();
  const RedisResult r = Command(*store, {"PING"});
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.kind, RedisResult::Kind::kTimeout);
  EXPECT_THAT(r.error, HasSubstr("no answer within 100ms"));
  EXPECT_GE(r.duration, absl::Milliseconds(100));
  EXPECT_LT(took, absl::Milliseconds(600));
  // Two more time out; the third in a row drops the connection
  // (timeouts_before_reconnect), so the next fails at once, not after 100 ms.
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(Command(*store, {"PING"}).kind, RedisResult::Kind::kTimeout);
  }
  const RedisResult after_drop = Command(*store, {"PING"});
  EXPECT_EQ(after_drop.kind, RedisResult::Kind::kError);
  EXPECT_THAT(after_drop.error, HasSubstr("3 commands in a row unanswered"));
  ASSERT_TRUE((*redis)->process()->Signal(SIGCONT).ok());
  EXPECT_TRUE(EventuallyOk(*store, {"PING"}));
  EXPECT_GE(store->StatsApprox().timeouts, 3);
}

TEST_F(RedisStoreTest, RefusedConnectionIsAnErrorThenReconnects) {
  const int port = test::PickFreePort();
  auto store = RedisStore::Start(ClientOptions(port), clock_);

  RedisResult r = Command(*store, {"PING"});
  EXPECT_EQ(r.kind, RedisResult::Kind::kError);
  EXPECT_THAT(r.error, HasSubstr(absl::StrCat("127.0.0.1:", port)));
  EXPECT_TRUE(test::PollUntil(
      [&] {
        return absl::StrContains(Command(*store, {"PING"}).error, "refused");
      },
      absl::Seconds(5)))
      << Command(*store, {"PING"}).error;

  auto redis = RedisServer::Start({.port = port});
  ASSERT_TRUE(redis.ok()) << redis.status();
  EXPECT_TRUE(EventuallyOk(*store, {"PING"}));
}

TEST_F(RedisStoreTest, AuthWithPasswordOrAclUserAndClearErrors) {
  auto redis = RedisServer::Start(
      {.extra_args = {"--requirepass", "secret", "--user", "alice", "on",
                      ">alicepw", "~*", "&*", "+@all"}});
  ASSERT_TRUE(redis.ok()) << redis.status();
  const int port = (*redis)->port();

  RedisClientOptions with_password = ClientOptions(port);
  with_password.password = "secret";
  auto store = RedisStore::Start(std::move(with_password), clock_);
  EXPECT_TRUE(EventuallyOk(*store, {"PING"}));

  RedisClientOptions acl_user = ClientOptions(port);
  acl_user.username = "alice";
  acl_user.password = "alicepw";
  auto alice = RedisStore::Start(std::move(acl_user), clock_);
  ASSERT_TRUE(EventuallyOk(*alice, {"PING"}));
  EXPECT_EQ(Command(*alice, {"ACL", "WHOAMI"}).reply.str, "alice");

  RedisClientOptions wrong = ClientOptions(port);
  wrong.password = "wrong";
  auto bad = RedisStore::Start(std::move(wrong), clock_);
  std::string error;
  EXPECT_TRUE(test::PollUntil(
      [&] {
        error = Command(*bad, {"PING"}).error;
        return absl::StrContains(error, "AUTH failed");
      },
      absl::Seconds(5)))
      << error;
  EXPECT_THAT(error, HasSubstr("WRONGPASS"));

  auto none = RedisStore::Start(ClientOptions(port), clock_);
  EXPECT_TRUE(test::PollUntil(
      [&] {
        error = Command(*none, {"PING"}).error;
        return absl::StrContains(error, "NOAUTH");
      },
      absl::Seconds(5)))
      << error;
}

TEST_F(RedisStoreTest, RefillScriptGrantsWhatTheBucketHolds) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto store = RedisStore::Start(ClientOptions((*redis)->port()), clock_);
  ASSERT_TRUE(EventuallyOk(*store, {"PING"}));
  const std::string key = GlobalBucketKey("shop", "orders", "client-1");
  EXPECT_EQ(key, "bulwark:{shop:orders:client-1}:bucket");

  auto refill = [&](int64_t requested) {
    RedisResult r = RunOnStore(
        *store, [&](RedisClient& client, RedisClient::Callback done) {
          client.EvalSha(GlobalBucketRefillScript(), {key},
                         RefillArgs(/*rate=*/10, /*burst=*/100, requested),
                         std::move(done));
        });
    EXPECT_EQ(r.kind, RedisResult::Kind::kOk) << r.error;
    return ParseRefillReply(r.reply, requested);
  };
  // A new bucket starts full; a request past it gets what is there.
  auto first = refill(60);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->granted, 60);
  auto second = refill(60);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->granted, 40);
  auto third = refill(60);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_LE(third->granted, 1);  // 10 tokens/s: at most one since
  // It expires once it would be full again: 100 / 10 s + 1 s.
  const RedisResult ttl = Command(*store, {"PTTL", key});
  EXPECT_GT(ttl.reply.integer, 10'000);
  EXPECT_LE(ttl.reply.integer, 11'000);

  auto heartbeat = [&](const std::string& id) {
    RedisResult r = RunOnStore(
        *store, [&](RedisClient& client, RedisClient::Callback done) {
          client.EvalSha(ReplicaHeartbeatScript(),
                         {ReplicaSetKey("shop", "orders")},
                         HeartbeatArgs(id, absl::Seconds(5)), std::move(done));
        });
    EXPECT_EQ(r.kind, RedisResult::Kind::kOk) << r.error;
    return ParseHeartbeatReply(r.reply);
  };
  EXPECT_EQ(*heartbeat("a"), 1);
  EXPECT_EQ(*heartbeat("b"), 2);
  EXPECT_EQ(*heartbeat("a"), 2);
  // A replica silent for the window no longer counts: age b's heartbeat.
  ASSERT_EQ(
      Command(*store, {"ZADD", ReplicaSetKey("shop", "orders"), "1", "b"}).kind,
      RedisResult::Kind::kOk);
  EXPECT_EQ(*heartbeat("a"), 1);

  // Long or odd keys are bounded and cannot break the hash tag.
  const std::string odd =
      GlobalBucketKey("shop", "orders", std::string(10'000, '}'));
  EXPECT_LT(odd.size(), 120u);
  EXPECT_EQ(odd.find('}'), odd.rfind('}'));
}

// Calls `limiter` at `rate` per second from a thread of its own until
// destroyed.
class Load {
 public:
  Load(GlobalLimiter& limiter, double rate, std::string key = "")
      : limiter_(limiter), rate_(rate), key_(std::move(key)) {
    thread_ = std::thread([this] { Run(); });
  }
  ~Load() {
    stop_.store(true);
    thread_.join();
  }
  int64_t admitted() const { return admitted_.load(); }
  int64_t offered() const { return offered_.load(); }
  absl::Duration max_take() {
    absl::MutexLock lock(&mu_);
    return max_take_;
  }
  void ResetMaxTake() {
    absl::MutexLock lock(&mu_);
    max_take_ = absl::ZeroDuration();
  }

 private:
  void Run() {
    MonotonicClock& clock = MonotonicClock::Get();
    const absl::Time start = clock.Now();
    int64_t issued = 0;
    while (!stop_.load()) {
      const auto due = static_cast<int64_t>(
          rate_ * absl::ToDoubleSeconds(clock.Now() - start));
      for (; issued < due; ++issued) {
        const absl::Time t0 = clock.Now();
        const TakeResult r = limiter_.TryTake(key_, t0);
        const absl::Duration took = clock.Now() - t0;
        offered_.fetch_add(1);
        if (r.kind == TakeResult::kAdmitted) admitted_.fetch_add(1);
        absl::MutexLock lock(&mu_);
        max_take_ = std::max(max_take_, took);
      }
      absl::SleepFor(absl::Milliseconds(1));  // pacing, see the file comment
    }
  }

  GlobalLimiter& limiter_;
  const double rate_;
  const std::string key_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> admitted_{0};
  std::atomic<int64_t> offered_{0};
  absl::Mutex mu_;
  absl::Duration max_take_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  std::thread thread_;
};

// Admitted calls over `window`, summed over `loads`.
int64_t AdmittedOver(const std::vector<Load*>& loads, absl::Duration window) {
  auto sum = [&] {
    int64_t n = 0;
    for (const Load* l : loads) n += l->admitted();
    return n;
  };
  const int64_t before = sum();
  absl::SleepFor(window);  // the measured window itself
  return sum() - before;
}

GlobalLimiterOptions LimiterOptions(
    std::string route, StoreErrorMode mode = StoreErrorMode::kLocal) {
  return {.domain = "test",
          .route = std::move(route),
          .rate_per_second = 1000,
          .burst = 100,
          .on_store_error = mode};
}

class GlobalLimiterTest : public RedisStoreTest {};

TEST_F(GlobalLimiterTest, ThreeReplicasShareOneLimitUnderUnevenLoad) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  std::vector<std::unique_ptr<RedisStore>> stores;
  std::vector<std::unique_ptr<GlobalLimiter>> limiters;
  for (int i = 0; i < 3; ++i) {
    // One connection each, as three sidecars would have.
    stores.push_back(
        RedisStore::Start(ClientOptions((*redis)->port()), clock_));
    limiters.push_back(std::make_unique<GlobalLimiter>(LimiterOptions("orders"),
                                                       *stores.back(), clock_));
  }
  ASSERT_TRUE(test::PollUntil(
      [&] {
        return std::all_of(limiters.begin(), limiters.end(),
                           [](auto& l) { return l->ReplicasApprox() == 3; });
      },
      absl::Seconds(10)));

  // 2.1x the limit, spread 4:2:1.
  Load a(*limiters[0], 1200), b(*limiters[1], 600), c(*limiters[2], 300);
  absl::SleepFor(absl::Seconds(1));  // the SPEC's windows start 1 s in
  const absl::Duration window = absl::Seconds(4);
  const int64_t admitted = AdmittedOver({&a, &b, &c}, window);

  const double limit = 1000 * absl::ToDoubleSeconds(window) + 100;
  EXPECT_LE(admitted, 1.05 * limit);
  // Every replica's load exceeds an even share, so the whole limit is used.
  EXPECT_GE(admitted, 0.95 * 1000 * absl::ToDoubleSeconds(window));
  for (Load* l : {&a, &b, &c}) {
    EXPECT_LT(l->max_take(), absl::Milliseconds(100));
  }
  const GlobalLimiter::Stats stats = limiters[0]->StatsApprox(clock_.Now());
  EXPECT_EQ(stats.keyless.mode, GlobalAllowance::Mode::kShared);
  EXPECT_EQ(stats.store_errors, 0) << stats.last_error;
  // Batches: far fewer round trips than calls.
  int64_t refills = 0, offered = 0;
  for (auto& l : limiters) refills += l->StatsApprox(clock_.Now()).refills;
  for (Load* l : {&a, &b, &c}) offered += l->offered();
  EXPECT_LT(refills * 5, offered);
  std::cout << "three replicas: admitted " << admitted << " in " << window
            << " (limit " << limit << "), " << refills << " refills for "
            << offered << " calls\n";
}

TEST_F(GlobalLimiterTest, OneReplicaAloneGetsTheWholeLimit) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto store = RedisStore::Start(ClientOptions((*redis)->port()), clock_);
  GlobalLimiter limiter(LimiterOptions("alone"), *store, clock_);
  ASSERT_TRUE(test::PollUntil([&] { return limiter.ReplicasApprox() == 1; },
                              absl::Seconds(10)));

  Load load(limiter, 1500);
  absl::SleepFor(absl::Seconds(1));
  const absl::Duration window = absl::Seconds(3);
  const int64_t admitted = AdmittedOver({&load}, window);
  EXPECT_LE(admitted, 1.05 * (1000 * 3 + 100));
  EXPECT_GE(admitted, 0.95 * 1000 * 3);
}

TEST_F(GlobalLimiterTest, KeysHaveTheirOwnBuckets) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto store = RedisStore::Start(ClientOptions((*redis)->port()), clock_);
  GlobalLimiterOptions options = LimiterOptions("keyed");
  options.rate_per_second = 200;
  options.burst = 20;
  options.max_keys = 2;
  GlobalLimiter limiter(options, *store, clock_);
  ASSERT_TRUE(test::PollUntil([&] { return limiter.ReplicasApprox() == 1; },
                              absl::Seconds(10)));

  Load a(limiter, 400, "tenant-a"), b(limiter, 100, "tenant-b");
  absl::SleepFor(absl::Seconds(1));
  const int64_t a_before = a.admitted(), b_before = b.admitted();
  absl::SleepFor(absl::Seconds(2));
  // a is held to its own 200/s; b, under its limit, is never held back.
  EXPECT_NEAR(a.admitted() - a_before, 400, 0.05 * 420 + 5);
  EXPECT_NEAR(b.admitted() - b_before, 200, 20);
  // A third key evicts the least recently used one: never more than max_keys.
  limiter.TryTake("tenant-c", clock_.Now());
  EXPECT_LE(limiter.StatsApprox(clock_.Now()).keys, 2u);
}

class GlobalLimiterOutageTest
    : public GlobalLimiterTest,
      public ::testing::WithParamInterface<StoreErrorMode> {};

TEST_P(GlobalLimiterOutageTest, RedisKilledThenRestartedEmpty) {
  const StoreErrorMode mode = GetParam();
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  std::vector<std::unique_ptr<RedisStore>> stores;
  std::vector<std::unique_ptr<GlobalLimiter>> limiters;
  for (int i = 0; i < 2; ++i) {
    stores.push_back(
        RedisStore::Start(ClientOptions((*redis)->port()), clock_));
    limiters.push_back(std::make_unique<GlobalLimiter>(
        LimiterOptions("outage", mode), *stores.back(), clock_));
  }
  ASSERT_TRUE(test::PollUntil(
      [&] {
        return limiters[0]->ReplicasApprox() == 2 &&
               limiters[1]->ReplicasApprox() == 2;
      },
      absl::Seconds(10)));
  // 800/s each: 1.6x the limit together, 1.6x a LOCAL share each.
  Load a(*limiters[0], 800), b(*limiters[1], 800);
  absl::SleepFor(absl::Seconds(1));

  (*redis)->Kill();
  ASSERT_TRUE(test::PollUntil(
      [&] {
        return limiters[0]->StatsApprox(clock_.Now()).keyless.mode ==
                   GlobalAllowance::Mode::kFallback &&
               limiters[1]->StatsApprox(clock_.Now()).keyless.mode ==
                   GlobalAllowance::Mode::kFallback;
      },
      absl::Seconds(5)));
  // Tokens granted before the error are still spent: let them go first.
  absl::SleepFor(absl::Milliseconds(300));
  a.ResetMaxTake();
  b.ResetMaxTake();
  const absl::Duration window = absl::Seconds(2);
  const int64_t down = AdmittedOver({&a, &b}, window);
  const double seconds = absl::ToDoubleSeconds(window);
  switch (mode) {
    case StoreErrorMode::kLocal:
      // Each enforces 1000 / 2 replicas last seen (burst 100 / 2).
      EXPECT_GE(down, 0.95 * 1000 * seconds);
      EXPECT_LE(down, 1.05 * (1000 * seconds + 100));
      break;
    case StoreErrorMode::kAllow:
      EXPECT_GE(down, 0.95 * 1600 * seconds);
      break;
    case StoreErrorMode::kDeny:
      EXPECT_EQ(down, 0);
      break;
  }
  // No call waited for Redis.
  EXPECT_LT(a.max_take(), absl::Milliseconds(100));
  EXPECT_LT(b.max_take(), absl::Milliseconds(100));
  EXPECT_THAT(limiters[0]->StatsApprox(clock_.Now()).last_error,
              HasSubstr("redis 127.0.0.1:"));

  ASSERT_TRUE((*redis)->Restart().ok());
  ASSERT_TRUE(test::PollUntil(
      [&] {
        return limiters[0]->StatsApprox(clock_.Now()).keyless.mode ==
                   GlobalAllowance::Mode::kShared &&
               limiters[1]->StatsApprox(clock_.Now()).keyless.mode ==
                   GlobalAllowance::Mode::kShared;
      },
      absl::Seconds(10)));
  // The restarted bucket starts full (burst), then the shared limit again.
  absl::SleepFor(absl::Milliseconds(500));
  const int64_t back = AdmittedOver({&a, &b}, window);
  EXPECT_GE(back, 0.95 * 1000 * seconds);
  EXPECT_LE(back, 1.05 * (1000 * seconds + 100));
  std::cout << StoreErrorModeName(mode) << ": admitted " << down
            << " while Redis was down, " << back << " after, in " << window
            << "; slowest TryTake " << std::max(a.max_take(), b.max_take())
            << "\n";
}

INSTANTIATE_TEST_SUITE_P(
    Modes, GlobalLimiterOutageTest,
    ::testing::Values(StoreErrorMode::kLocal, StoreErrorMode::kAllow,
                      StoreErrorMode::kDeny),
    [](const ::testing::TestParamInfo<StoreErrorMode>& info) {
      return std::string(StoreErrorModeName(info.param));
    });

TEST_F(GlobalLimiterTest, WrongPasswordFallsBackWithAClearError) {
  auto redis = RedisServer::Start({.extra_args = {"--requirepass", "secret"}});
  ASSERT_TRUE(redis.ok()) << redis.status();
  RedisClientOptions wrong = ClientOptions((*redis)->port());
  wrong.password = "not-the-password";
  auto store = RedisStore::Start(std::move(wrong), clock_);
  GlobalLimiter limiter(LimiterOptions("auth", StoreErrorMode::kDeny), *store,
                        clock_);

  GlobalLimiter::Stats stats;
  EXPECT_TRUE(test::PollUntil(
      [&] {
        limiter.TryTake("", clock_.Now());
        stats = limiter.StatsApprox(clock_.Now());
        return stats.keyless.mode == GlobalAllowance::Mode::kFallback &&
               absl::StrContains(stats.last_error, "AUTH failed");
      },
      absl::Seconds(5)))
      << stats.last_error;
  EXPECT_THAT(stats.last_error, HasSubstr("WRONGPASS"));
  EXPECT_EQ(limiter.ReplicasApprox(), 0);

  RedisClientOptions right = ClientOptions((*redis)->port());
  right.password = "secret";
  auto good_store = RedisStore::Start(std::move(right), clock_);
  GlobalLimiter good(LimiterOptions("auth"), *good_store, clock_);
  EXPECT_TRUE(test::PollUntil(
      [&] {
        good.TryTake("", clock_.Now());
        return good.StatsApprox(clock_.Now()).keyless.mode ==
               GlobalAllowance::Mode::kShared;
      },
      absl::Seconds(5)));
}

}  // namespace
}  // namespace bulwark::store
