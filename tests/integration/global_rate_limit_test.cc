// Global rate limits end to end (SPEC section 8, issue 17): real bulwark
// sidecars in front of bulwark-demo-upstream, sharing one redis-server that
// the test starts on a free loopback port (with an ACL user, so every test
// also runs through AUTH with a password_file) and stops, freezes (SIGSTOP)
// and kills by its pid. Skipped when /usr/bin/redis-server is missing.
//
// PacedLoad is open loop: each caller thread issues its calls at fixed times
// (call i at start + i / rate; a caller that falls behind catches up at
// once), blocking gRPC calls with a 2 s deadline, and records each call's
// start, duration, status and x-bulwark-reason. Admitted calls are counted by
// their start time, in windows that begin at least 1 s after the sidecars
// started.
//
// Windows and tolerances: the three-sidecar test uses the SPEC's 10 s window
// with its 5 % tolerance on rate x window + burst (and admits at least 95 %
// of rate x window, since the offered load is twice the limit); the other
// tests use 2-4 s windows with the same 5 % tolerance, to keep the whole file
// near a minute of wall time.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/paced_load.h"
#include "tests/integration/process.h"

namespace bulwark::test {
namespace {

using ::bulwark::demo::v1::Demo;
using ::bulwark::demo::v1::EchoRequest;
using ::bulwark::demo::v1::EchoResponse;

constexpr char kPassword[] = "s3cret-for-tests";
constexpr absl::Duration kStartTimeout = absl::Seconds(30);

// The ACL user "bulwark" (the default user off).
std::vector<std::string> AclArgs() {
  return {"--user",  "bulwark", "on",    absl::StrCat(">", kPassword),
          "~*",      "&*",      "+@all", "--user",
          "default", "off"};
}

struct SidecarSpec {
  double rate = 200;
  int64_t burst = 50;
  std::string domain = "shop";
  std::string on_redis_error = "LOCAL";
  std::string redis_timeout = "200ms";
  std::string password_file = "redis.password";
  // The keyed route (Write, per x-tenant) has these numbers.
  double keyed_rate = 50;
  int64_t keyed_burst = 10;
  bool shadow = false;  // the echo route's limit
};

class GlobalRateLimitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveRedisServer()) {
      GTEST_SKIP() << kRedisServerPath << " is not installed";
    }
    auto redis = RedisServer::Start({.extra_args = AclArgs()});
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    auto upstream = DemoUpstream::Start();
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = *std::move(upstream);
    dir_ = TempDir();
    ASSERT_TRUE(WriteFile(absl::StrCat(dir_, "/redis.password"),
                          absl::StrCat(kPassword, "\n"))
                    .ok());
    ASSERT_TRUE(
        WriteFile(absl::StrCat(dir_, "/wrong.password"), "not-it\n").ok());
  }

  void TearDown() override {
    for (auto& sidecar : sidecars_) {
      EXPECT_TRUE(sidecar.process->Running()) << sidecar.process->Log();
      const ExitStatus exit = sidecar.process->Stop(absl::Seconds(20));
      EXPECT_TRUE(exit.ExitedWith(0)) << exit.ToString() << "\n"
                                      << sidecar.process->Log();
    }
  }

  std::string ConfigText(const SidecarSpec& spec) {
    return absl::StrCat(R"(
listener: { address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
workers: 1
redis:
  - name: main
    address: ")",
                        redis_->address(), R"("
    username: bulwark
    password_file: )",
                        spec.password_file, R"(
    timeout: )",
                        spec.redis_timeout, R"(
clusters:
  - name: demo
    endpoints: [")",
                        upstream_->address(), R"("]
routes:
  - name: echo
    match: { service: bulwark.demo.v1.Demo, method: Echo }
    cluster: demo
    rate_limit:
      requests_per_second: )",
                        spec.rate, R"(
      burst: )",
                        spec.burst, spec.shadow ? "\n      shadow: true" : "",
                        R"(
      global: { redis: main, domain: )",
                        spec.domain, ", on_redis_error: ", spec.on_redis_error,
                        R"( }
  - name: keyed
    match: { service: bulwark.demo.v1.Demo, method: Write }
    cluster: demo
    rate_limit:
      requests_per_second: )",
                        spec.keyed_rate, R"(
      burst: )",
                        spec.keyed_burst, R"(
      key_header: x-tenant
      global: { redis: main, domain: )",
                        spec.domain, R"( }
)");
  }

  // Starts a sidecar with `spec`; returns its index in sidecars_.
  int StartOne(const SidecarSpec& spec) {
    const int index = static_cast<int>(sidecars_.size());
    const std::string config = absl::StrCat(dir_, "/bulwark", index, ".yaml");
    EXPECT_TRUE(WriteFile(config, ConfigText(spec)).ok());
    auto started = StartSidecar(
        config, absl::StrCat(dir_, "/bulwark", index, ".log"), kStartTimeout);
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return -1;
    sidecars_.push_back(*std::move(started));
    configs_.push_back(config);
    return index;
  }

  std::string Admin(int index, const std::string& path) {
    int code = 0;
    auto body = HttpGet("127.0.0.1", sidecars_[index].admin_port, path, &code);
    return body.ok() && code == 200 ? *body : "";
  }

  // Whether sidecar `index`'s /routes shows `needle` (e.g. "\"mode\":
  // \"shared\"") within the echo route's rate_limit object.
  bool RoutesShow(int index, absl::string_view needle) {
    return absl::StrContains(Admin(index, "/routes"), needle);
  }

  // Waits until every sidecar's global limits are on the shared bucket with
  // `replicas` replicas seen.
  void AwaitShared(const std::vector<int>& indexes, int replicas) {
    for (int i : indexes) {
      EXPECT_TRUE(PollUntil(
          [&] {
            const std::string routes = Admin(i, "/routes");
            return absl::StrContains(routes, "\"mode\": \"shared\"") &&
                   absl::StrContains(routes,
                                     absl::StrCat("\"replicas\": ", replicas));
          },
          absl::Seconds(15)))
          << "sidecar " << i << ": " << Admin(i, "/routes");
    }
  }

  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<DemoUpstream> upstream_;
  std::string dir_;
  std::vector<StartedSidecar> sidecars_;
  std::vector<std::string> configs_;
};

TEST_F(GlobalRateLimitTest, ThreeSidecarsShareOneLimitAndOneAloneGetsAllOfIt) {
  const SidecarSpec spec;  // 200/s, burst 50, LOCAL
  std::vector<int> all;
  for (int i = 0; i < 3; ++i) all.push_back(StartOne(spec));
  ASSERT_EQ(sidecars_.size(), 3u);
  AwaitShared(all, 3);

  // Uneven: 240, 120 and 40 calls/s offered (twice the limit together).
  PacedLoad a({.port = sidecars_[0].port, .rate = 240, .threads = 3});
  PacedLoad b({.port = sidecars_[1].port, .rate = 120, .threads = 2});
  PacedLoad c({.port = sidecars_[2].port, .rate = 40, .threads = 1});
  const absl::Time from = absl::Now() + absl::Seconds(1);
  const absl::Duration window = absl::Seconds(10);
  absl::SleepFor(absl::Seconds(1) + window + absl::Milliseconds(300));
  a.Stop();
  b.Stop();
  c.Stop();
  const Counts ca = a.Between(from, from + window);
  const Counts cb = b.Between(from, from + window);
  const Counts cc = c.Between(from, from + window);
  const int admitted = ca.ok + cb.ok + cc.ok;
  const double limit = spec.rate * absl::ToDoubleSeconds(window) + spec.burst;
  std::cout << "three sidecars, 10 s window, limit 200/s burst 50: admitted "
            << admitted << " (bound " << 1.05 * limit << ", rate x window "
            << spec.rate * 10 << ")\n  a: " << ToString(ca)
            << "\n  b: " << ToString(cb) << "\n  c: " << ToString(cc) << "\n";
  EXPECT_LE(admitted, 1.05 * limit);
  EXPECT_GE(admitted, 0.95 * spec.rate * absl::ToDoubleSeconds(window));
  EXPECT_EQ(ca.other + cb.other + cc.other, 0);
  // Every sidecar got some of it, and the busiest the most.
  EXPECT_GT(cc.ok, 0);
  EXPECT_GT(ca.ok, cb.ok);

  // The metrics of SPEC section 5.
  const std::string metrics = Admin(0, "/metrics");
  EXPECT_EQ(MetricValue(metrics, "bulwark_rate_limit_global_replicas",
                        "route=\"echo\""),
            3)
      << metrics;
  EXPECT_GT(
      MetricValue(metrics, "bulwark_redis_requests_total", "result=\"ok\""), 0);
  EXPECT_EQ(MetricValue(metrics, "bulwark_redis_requests_total",
                        "result=\"timeout\""),
            0);
  EXPECT_GT(MetricValue(metrics, "bulwark_redis_request_duration_seconds_count",
                        "redis=\"main\""),
            0);

  // One sidecar alone (the other two idle, still counted as replicas) gets
  // the whole limit.
  PacedLoad alone({.port = sidecars_[1].port, .rate = 400, .threads = 4});
  const absl::Time alone_from = absl::Now() + absl::Seconds(1);
  const absl::Duration alone_window = absl::Seconds(4);
  absl::SleepFor(absl::Seconds(1) + alone_window + absl::Milliseconds(300));
  alone.Stop();
  const Counts cl = alone.Between(alone_from, alone_from + alone_window);
  const double alone_rate = spec.rate * absl::ToDoubleSeconds(alone_window);
  std::cout << "one sidecar alone, 4 s window: " << ToString(cl) << " (rate x "
            << "window " << alone_rate << ")\n";
  EXPECT_LE(cl.ok, 1.05 * (alone_rate + spec.burst));
  EXPECT_GE(cl.ok, 0.95 * alone_rate);
}

TEST_F(GlobalRateLimitTest, KeyedGlobalLimitsHoldPerKeyAcrossSidecars) {
  const SidecarSpec spec;  // keyed: 50/s, burst 10 per x-tenant
  const int s0 = StartOne(spec);
  const int s1 = StartOne(spec);
  ASSERT_EQ(sidecars_.size(), 2u);
  AwaitShared({s0, s1}, 2);
  // Tenant "big" offers 3x its limit through both sidecars; tenant "small"
  // stays within its own (30/s of 50/s) and must never be limited.
  PacedLoad big0({.port = sidecars_[s0].port,
                  .rate = 100,
                  .threads = 2,
                  .method = "Write",
                  .metadata = {{"x-tenant", "big"}}});
  PacedLoad big1({.port = sidecars_[s1].port,
                  .rate = 50,
                  .threads = 1,
                  .method = "Write",
                  .metadata = {{"x-tenant", "big"}}});
  PacedLoad small({.port = sidecars_[s1].port,
                   .rate = 30,
                   .threads = 1,
                   .method = "Write",
                   .metadata = {{"x-tenant", "small"}}});
  const absl::Time from = absl::Now() + absl::Seconds(1);
  const absl::Duration window = absl::Seconds(4);
  absl::SleepFor(absl::Seconds(1) + window + absl::Milliseconds(300));
  big0.Stop();
  big1.Stop();
  small.Stop();
  const Counts b0 = big0.Between(from, from + window);
  const Counts b1 = big1.Between(from, from + window);
  const Counts sm = small.Between(from, from + window);
  const double rate_window = spec.keyed_rate * absl::ToDoubleSeconds(window);
  std::cout << "keyed, 4 s window, 50/s burst 10 per tenant: big "
            << b0.ok + b1.ok << " admitted (" << ToString(b0) << " / "
            << ToString(b1) << "), small " << ToString(sm) << "\n";
  EXPECT_LE(b0.ok + b1.ok, 1.05 * (rate_window + spec.keyed_burst));
  EXPECT_GE(b0.ok + b1.ok, 0.95 * rate_window);
  EXPECT_EQ(sm.rate_limited, 0);
  EXPECT_EQ(sm.other, 0);
  EXPECT_GT(sm.ok, 0);
}

// Redis frozen (no answers: every round trip times out), then killed (every
// connection refused), then restarted empty: LOCAL enforces the limit
// locally, ALLOW admits, DENY rejects, no call waits for Redis, and all three
// go back to the shared bucket.
TEST_F(GlobalRateLimitTest,
       RedisFrozenKilledAndRestartedEachModeDoesWhatItSays) {
  const std::vector<std::string> modes = {"LOCAL", "ALLOW", "DENY"};
  std::vector<int> indexes;
  for (const std::string& mode : modes) {
    // Each in its own domain: one replica per limit, so LOCAL is the limit.
    indexes.push_back(StartOne({.rate = 100,
                                .burst = 20,
                                .domain = absl::StrCat("mode-", mode),
                                .on_redis_error = mode,
                                .redis_timeout = "100ms"}));
  }
  ASSERT_EQ(sidecars_.size(), 3u);
  AwaitShared(indexes, 1);
  std::vector<std::unique_ptr<PacedLoad>> loads;
  for (int i : indexes) {
    loads.push_back(std::make_unique<PacedLoad>(PacedLoad::Options{
        .port = sidecars_[i].port, .rate = 200, .threads = 2}));
  }
  absl::SleepFor(absl::Seconds(1));

  const absl::Duration phase = absl::Seconds(3);
  // The first 500 ms of a phase belong to the switch (granted tokens are
  // spent first, the first round trips time out): judged is the rest.
  const absl::Duration settle = absl::Milliseconds(500);
  redis_->Freeze();
  const absl::Time frozen = absl::Now();
  absl::SleepFor(phase);
  redis_->Kill();
  const absl::Time killed = absl::Now();
  absl::SleepFor(phase);
  ASSERT_TRUE(redis_->Restart().ok());
  const absl::Time restarted = absl::Now();
  // Back on the shared bucket (an empty Redis: buckets start full).
  for (int i : indexes) {
    EXPECT_TRUE(PollUntil([&] { return RoutesShow(i, "\"mode\": \"shared\""); },
                          absl::Seconds(10)))
        << Admin(i, "/routes");
  }
  const absl::Time recovered = absl::Now() + absl::Milliseconds(500);
  absl::SleepFor(absl::Milliseconds(500) + phase);
  for (auto& load : loads) load->Stop();

  const double judged = absl::ToDoubleSeconds(phase - settle);
  for (size_t m = 0; m < modes.size(); ++m) {
    PacedLoad& load = *loads[m];
    for (const auto& [name, from, to] :
         {std::tuple{"frozen", frozen + settle, frozen + phase},
          std::tuple{"down", killed + settle, killed + phase}}) {
      const Counts c = load.Between(from, to);
      std::cout << modes[m] << ", redis " << name << ": " << ToString(c)
                << "\n";
      EXPECT_EQ(c.other, 0) << modes[m] << " " << name;
      // No call waits for Redis: every answer comes well within the round
      // trip timeout (100 ms), on a loaded machine too.
      EXPECT_LT(c.max_latency, absl::Milliseconds(100))
          << modes[m] << " " << name;
      if (modes[m] == "LOCAL") {
        // One replica: the local share is the whole limit, and the local
        // bucket has followed the admitted calls (no fresh burst).
        EXPECT_LE(c.ok, 1.05 * (100 * judged + 20)) << name;
        EXPECT_GE(c.ok, 0.9 * 100 * judged) << name;
        EXPECT_GT(c.rate_limited, 0) << name;
      } else if (modes[m] == "ALLOW") {
        EXPECT_EQ(c.rate_limited, 0) << name;
        EXPECT_GE(c.ok, 0.9 * 200 * judged) << name;
      } else {
        EXPECT_EQ(c.ok, 0) << name;
        EXPECT_GE(c.rate_limited, 0.9 * 200 * judged) << name;
      }
    }
    // Counts recover: the shared bucket's limit again.
    const Counts after = load.Between(recovered, recovered + phase);
    std::cout << modes[m] << ", redis back: " << ToString(after) << "\n";
    const double rate_window = 100 * absl::ToDoubleSeconds(phase);
    EXPECT_LE(after.ok, 1.05 * (rate_window + 20)) << modes[m];
    EXPECT_GE(after.ok, 0.9 * rate_window) << modes[m];
    EXPECT_EQ(after.other, 0) << modes[m];
  }
  (void)restarted;
  const std::string metrics = Admin(indexes[0], "/metrics");
  EXPECT_GT(MetricValue(metrics, "bulwark_redis_requests_total",
                        "result=\"timeout\""),
            0)
      << metrics;
  EXPECT_GT(
      MetricValue(metrics, "bulwark_redis_requests_total", "result=\"error\""),
      0);
}

TEST_F(GlobalRateLimitTest, AReloadThatChangesTheLimitTakesEffect) {
  SidecarSpec spec{.rate = 200, .burst = 20, .domain = "reload"};
  const int s = StartOne(spec);
  ASSERT_EQ(s, 0);
  AwaitShared({s}, 1);
  PacedLoad load({.port = sidecars_[s].port, .rate = 300, .threads = 3});
  const absl::Time from = absl::Now() + absl::Seconds(1);
  const absl::Duration window = absl::Seconds(2);
  absl::SleepFor(absl::Seconds(1) + window);
  spec.rate = 50;
  ASSERT_TRUE(WriteFile(configs_[s], ConfigText(spec)).ok());
  ASSERT_TRUE(sidecars_[s].process->Signal(SIGHUP).ok());
  ASSERT_TRUE(PollUntil(
      [&] {
        return MetricValue(Admin(s, "/metrics"), "bulwark_config_reloads_total",
                           "result=\"success\"") >= 1;
      },
      absl::Seconds(10)));
  const absl::Time after = absl::Now() + absl::Milliseconds(500);
  absl::SleepFor(absl::Milliseconds(500) + window);
  load.Stop();
  const Counts before_reload = load.Between(from, from + window);
  const Counts after_reload = load.Between(after, after + window);
  std::cout << "reload 200/s -> 50/s, 2 s windows: before "
            << ToString(before_reload) << "; after " << ToString(after_reload)
            << "\n";
  EXPECT_LE(before_reload.ok, 1.05 * (200 * 2 + 20));
  EXPECT_GE(before_reload.ok, 0.95 * 200 * 2);
  EXPECT_LE(after_reload.ok, 1.05 * (50 * 2 + 20));
  EXPECT_GE(after_reload.ok, 0.9 * 50 * 2);
  EXPECT_TRUE(RoutesShow(s, "\"mode\": \"shared\"")) << Admin(s, "/routes");
}

// Also: a shadow global limit decides (here DENY, Redis refusing the
// password) and counts, but lets every call through.
TEST_F(GlobalRateLimitTest, AuthWithAPasswordFileAndAWrongPasswordFallsBack) {
  const int good = StartOne({.domain = "auth"});
  const int bad = StartOne({.domain = "auth-bad",
                            .on_redis_error = "DENY",
                            .password_file = "wrong.password",
                            .shadow = true});
  ASSERT_EQ(sidecars_.size(), 2u);
  AwaitShared({good}, 1);
  // The wrong password: every round trip fails, the route falls back to
  // on_redis_error and says why.
  PacedLoad load({.port = sidecars_[bad].port, .rate = 50, .threads = 1});
  EXPECT_TRUE(PollUntil(
      [&] {
        const std::string routes = Admin(bad, "/routes");
        return absl::StrContains(routes, "\"mode\": \"DENY\"") &&
               absl::StrContains(routes, "AUTH");
      },
      absl::Seconds(10)))
      << Admin(bad, "/routes");
  const absl::Time from = absl::Now();
  EXPECT_TRUE(PollUntil(
      [&] {
        return MetricValue(Admin(bad, "/metrics"),
                           "bulwark_shadow_rejections_total",
                           "reason=\"rate_limited\"") >= 20;
      },
      absl::Seconds(10)));
  load.Stop();
  const Counts shadow = load.Between(from, absl::Now());
  std::cout << "shadow DENY, wrong password: " << ToString(shadow) << "\n";
  EXPECT_GT(shadow.ok, 0);
  EXPECT_EQ(shadow.rate_limited, 0);
  EXPECT_EQ(shadow.other, 0);
  EXPECT_GT(MetricValue(Admin(bad, "/metrics"), "bulwark_redis_requests_total",
                        "result=\"error\""),
            0);
  EXPECT_EQ(MetricValue(Admin(bad, "/metrics"), "bulwark_redis_requests_total",
                        "result=\"ok\""),
            0);
  // --validate names the password file; the password itself is never shown.
  EXPECT_FALSE(absl::StrContains(Admin(good, "/config"), kPassword));
}

// Runs a shell command in `dir`; true if it exited 0.
bool Sh(const std::string& dir, const std::string& command) {
  const std::string full =
      absl::StrCat("cd '", dir, "' && (", command, ") >>openssl.log 2>&1");
  return std::system(full.c_str()) == 0;
}

// A CA, a server certificate for 127.0.0.1, and client certificates: alice
// (subject CN only), bob (a URI SAN and the CN not-bob: the URI wins), carol
// (the CN not-bob alone: not bob's key).
bool MakeCertificates(const std::string& dir) {
  auto client = [&](const std::string& name, const std::string& subject,
                    const std::string& san) {
    return Sh(dir, absl::StrCat(
                       "openssl req -newkey rsa:2048 -nodes -keyout ", name,
                       ".key -out ", name, ".csr -subj ", subject,
                       san.empty() ? "" : absl::StrCat(" -addext ", san))) &&
           Sh(dir, absl::StrCat("openssl x509 -req -in ", name,
                                ".csr -CA ca.crt -CAkey ca.key "
                                "-CAcreateserial -days 2 -copy_extensions "
                                "copy -out ",
                                name, ".crt"));
  };
  return Sh(dir,
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out "
            "ca.crt -days 2 -subj /CN=bulwark-test-ca") &&
         client("server", "/CN=localhost",
                "subjectAltName=IP:127.0.0.1,DNS:localhost") &&
         client("alice", "/CN=alice", "") &&
         client("bob", "/CN=not-bob", "subjectAltName=URI:spiffe://shop/bob") &&
         client("carol", "/CN=not-bob", "");
}

// Two sidecars with an mTLS listener share a global limit keyed by the
// client certificate: each identity has its own shared bucket.
TEST_F(GlobalRateLimitTest, PeerIdentityKeysAGlobalLimitPerClientCertificate) {
  ASSERT_TRUE(MakeCertificates(dir_))
      << ReadFile(absl::StrCat(dir_, "/openssl.log")).value_or("");
  std::vector<int> indexes;
  for (int i = 0; i < 2; ++i) {
    const std::string config = absl::StrCat(dir_, "/peer", i, ".yaml");
    ASSERT_TRUE(WriteFile(config, absl::StrCat(R"(
listener:
  address: "127.0.0.1:0"
  tls: { cert_file: server.crt, key_file: server.key, client_ca_file: ca.crt }
admin: { address: "127.0.0.1:0" }
workers: 1
redis:
  - { name: main, address: ")",
                                               redis_->address(), R"(",
      username: bulwark, password_file: redis.password }
clusters:
  - name: demo
    endpoints: [")",
                                               upstream_->address(), R"("]
routes:
  - name: echo
    match: { service: bulwark.demo.v1.Demo, method: Echo }
    cluster: demo
    rate_limit:
      requests_per_second: 1
      burst: 3
      key: PEER_IDENTITY
      global: { redis: main, domain: peer }
)"))
                    .ok());
    auto started = StartSidecar(config, absl::StrCat(dir_, "/peer", i, ".log"),
                                kStartTimeout);
    ASSERT_TRUE(started.ok()) << started.status();
    indexes.push_back(static_cast<int>(sidecars_.size()));
    sidecars_.push_back(*std::move(started));
  }
  AwaitShared(indexes, 2);

  auto stub = [&](int sidecar, const std::string& client) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs =
        ReadFile(absl::StrCat(dir_, "/ca.crt")).value_or("");
    options.pem_cert_chain =
        ReadFile(absl::StrCat(dir_, "/", client, ".crt")).value_or("");
    options.pem_private_key =
        ReadFile(absl::StrCat(dir_, "/", client, ".key")).value_or("");
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return Demo::NewStub(grpc::CreateCustomChannel(
        absl::StrCat("127.0.0.1:", sidecars_[sidecar].port),
        grpc::SslCredentials(options), args));
  };
  // Six calls per identity, alternating between the sidecars, 20 ms apart:
  // at most burst + rate x 0.24 s of them pass, whichever sidecar they hit.
  auto admitted = [&](const std::string& client) {
    std::vector<std::unique_ptr<Demo::Stub>> stubs;
    for (int i : indexes) stubs.push_back(stub(i, client));
    int ok = 0;
    for (int call = 0; call < 6; ++call) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      EchoRequest request;
      EchoResponse response;
      const grpc::Status status =
          stubs[call % stubs.size()]->Echo(&ctx, request, &response);
      EXPECT_TRUE(status.ok() ||
                  status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED)
          << status.error_message();
      ok += status.ok() ? 1 : 0;
      absl::SleepFor(absl::Milliseconds(20));  // pacing
    }
    return ok;
  };
  const int alice = admitted("alice");
  const int bob = admitted("bob");
  const int carol = admitted("carol");
  std::cout << "PEER_IDENTITY, burst 3: alice " << alice << " of 6, bob " << bob
            << " of 6, carol " << carol << " of 6\n";
  EXPECT_GE(alice, 3);
  EXPECT_LE(alice, 4);
  EXPECT_GE(bob, 3);
  EXPECT_LE(bob, 4);
  EXPECT_GE(carol, 3);
  EXPECT_LE(carol, 4);
  // Three identities (the URI SAN for bob), one key each, on both sidecars.
  for (int i : indexes) {
    EXPECT_TRUE(RoutesShow(i, "\"keys\": 3")) << Admin(i, "/routes");
  }
}

}  // namespace
}  // namespace bulwark::test
