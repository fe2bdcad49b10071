// TLS to Redis end to end (SPEC section 8, a redis entry's `tls` block):
// real bulwark sidecars in front of bulwark-demo-upstream and a redis-server
// that listens with TLS only (--port 0 --tls-port P), with a CA and a server
// certificate (IP SAN 127.0.0.1) that the openssl command makes at test
// time. hiredis 0.14 has no TLS: the sidecar's store runs a TLS bridge on the
// loopback, so what this checks is that bridge: a shared global limit through
// it, a wrong CA failing cleanly into on_redis_error with the certificate
// named, and a client certificate for --tls-auth-clients yes. Skipped when
// /usr/bin/redis-server or /usr/bin/openssl is missing.
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/process.h"

namespace bulwark::test {
namespace {

using ::bulwark::demo::v1::Demo;
using ::bulwark::demo::v1::EchoRequest;
using ::bulwark::demo::v1::EchoResponse;

constexpr char kOpenssl[] = "/usr/bin/openssl";
constexpr absl::Duration kStartTimeout = absl::Seconds(30);

bool Sh(const std::string& dir, const std::string& command) {
  const std::string full =
      absl::StrCat("cd '", dir, "' && (", command, ") >>openssl.log 2>&1");
  return std::system(full.c_str()) == 0;
}

// ca.crt, an unrelated other-ca.crt, server.{crt,key} for 127.0.0.1 and
// client.{crt,key}, both signed by ca.
bool MakeCertificates(const std::string& dir) {
  return Sh(dir,
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out "
            "ca.crt -days 2 -subj /CN=redis-test-ca") &&
         Sh(dir,
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key "
            "-out other-ca.crt -days 2 -subj /CN=other-ca") &&
         Sh(dir,
            "openssl req -newkey rsa:2048 -nodes -keyout server.key -out "
            "server.csr -subj /CN=redis -addext "
            "subjectAltName=IP:127.0.0.1,DNS:redis.test") &&
         Sh(dir,
            "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key "
            "-CAcreateserial -out server.crt -days 2 -copy_extensions copy") &&
         Sh(dir,
            "openssl req -newkey rsa:2048 -nodes -keyout client.key -out "
            "client.csr -subj /CN=bulwark") &&
         Sh(dir,
            "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key "
            "-CAcreateserial -out client.crt -days 2");
}

struct Tally {
  int ok = 0, rate_limited = 0, other = 0;
};

// `n` calls one after another, as fast as they go.
Tally Burst(int port, int n) {
  auto stub = Demo::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  Tally t;
  for (int i = 0; i < n; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    EchoRequest request;
    request.set_payload("x");
    EchoResponse response;
    const grpc::Status status = stub->Echo(&ctx, request, &response);
    const auto& trailers = ctx.GetServerTrailingMetadata();
    auto it = trailers.find("x-bulwark-reason");
    if (status.ok()) {
      ++t.ok;
    } else if (it != trailers.end() &&
               std::string(it->second.data(), it->second.size()) ==
                   "rate_limited") {
      ++t.rate_limited;
    } else {
      ++t.other;
    }
  }
  return t;
}

class RedisTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveRedisServer() || access(kOpenssl, X_OK) != 0) {
      GTEST_SKIP() << kRedisServerPath << " or " << kOpenssl << " missing";
    }
    dir_ = TempDir();
    ASSERT_TRUE(MakeCertificates(dir_))
        << ReadFile(dir_ + "/openssl.log").value_or("");
    auto upstream = DemoUpstream::Start();
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = *std::move(upstream);
  }

  void TearDown() override {
    for (auto& sidecar : sidecars_) {
      EXPECT_TRUE(sidecar.process->Running()) << sidecar.process->Log();
      const ExitStatus exit = sidecar.process->Stop(absl::Seconds(20));
      EXPECT_TRUE(exit.ExitedWith(0)) << exit.ToString() << "\n"
                                      << sidecar.process->Log();
    }
    sidecars_.clear();
    redis_.reset();
  }

  // redis-server with TLS only on a free port.
  void StartRedis(bool auth_clients) {
    auto redis = RedisServer::Start(
        {.tls_only = true,
         .extra_args = {"--tls-cert-file", dir_ + "/server.crt",
                        "--tls-key-file", dir_ + "/server.key",
                        "--tls-ca-cert-file", dir_ + "/ca.crt",
                        "--tls-auth-clients", auth_clients ? "yes" : "no"}});
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    port_ = redis_->port();
  }

  // A sidecar whose echo route has a global limit of 5/s, burst 5, through
  // `tls` (the inside of the tls block).
  int StartOne(const std::string& tls, const std::string& on_redis_error) {
    const int index = static_cast<int>(sidecars_.size());
    const std::string config = absl::StrCat(dir_, "/bulwark", index, ".yaml");
    EXPECT_TRUE(WriteFile(config, absl::StrCat(R"(
listener: { address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
workers: 1
redis:
  - name: main
    address: "127.0.0.1:)",
                                               port_, R"("
    timeout: 200ms
    tls: { )",
                                               tls, R"( }
clusters:
  - name: demo
    endpoints: [")",
                                               upstream_->address(), R"("]
routes:
  - name: echo
    match: { service: bulwark.demo.v1.Demo, method: Echo }
    cluster: demo
    rate_limit:
      requests_per_second: 5
      burst: 5
      global: { redis: main, domain: tls, on_redis_error: )",
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

  void AwaitShared(int index, int replicas) {
    EXPECT_TRUE(PollUntil(
        [&] {
          const std::string routes = Admin(index, "/routes");
          return absl::StrContains(routes, "\"mode\": \"shared\"") &&
                 absl::StrContains(routes,
                                   absl::StrCat("\"replicas\": ", replicas));
        },
        absl::Seconds(15)))
        << "sidecar " << index << ": " << Admin(index, "/routes") << "\n"
        << sidecars_[index].process->Log();
  }

  std::string dir_;
  int port_ = 0;
  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<DemoUpstream> upstream_;
  std::vector<StartedSidecar> sidecars_;
};

TEST_F(RedisTlsTest, TwoSidecarsShareOneLimitOverTls) {
  StartRedis(/*auth_clients=*/false);
  const std::string tls = absl::StrCat("ca_file: ", dir_, "/ca.crt");
  const int a = StartOne(tls, "ALLOW");
  const int b = StartOne(tls, "ALLOW");
  ASSERT_EQ(sidecars_.size(), 2u);
  // Both heartbeat through their bridges into the one TLS-only Redis.
  AwaitShared(a, 2);
  AwaitShared(b, 2);
  // 5/s and burst 5 for both together: 60 calls in about a second admit
  // about burst + rate x duration; on ALLOW a broken Redis would admit all.
  const absl::Time start = absl::Now();
  const Tally ta = Burst(sidecars_[a].port, 30);
  const Tally tb = Burst(sidecars_[b].port, 30);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::cout << "over TLS in " << seconds << " s: a ok " << ta.ok
            << " rate_limited " << ta.rate_limited << ", b ok " << tb.ok
            << " rate_limited " << tb.rate_limited << "\n";
  EXPECT_EQ(ta.other + tb.other, 0);
  EXPECT_GT(ta.rate_limited + tb.rate_limited, 30);
  // burst + rate x duration, plus each sidecar's start allowance and its
  // first batch (at most a burst each, SPEC section 8).
  EXPECT_LE(ta.ok + tb.ok, 5 + 5 * seconds + 2 * 5);
  EXPECT_GT(ta.ok + tb.ok, 0);
  const std::string metrics = Admin(a, "/metrics");
  EXPECT_GT(
      MetricValue(metrics, "bulwark_redis_requests_total", "result=\"ok\""), 0);
  AwaitShared(a, 2);  // still shared: nothing fell back
}

TEST_F(RedisTlsTest, AWrongCaFailsIntoOnRedisErrorNamingTheCertificate) {
  StartRedis(/*auth_clients=*/false);
  const int bad =
      StartOne(absl::StrCat("ca_file: ", dir_, "/other-ca.crt"), "DENY");
  ASSERT_GE(bad, 0);
  EXPECT_TRUE(PollUntil(
      [&] {
        const std::string routes = Admin(bad, "/routes");
        return absl::StrContains(routes, "\"mode\": \"DENY\"") &&
               absl::StrContains(routes, "certificate verify failed");
      },
      absl::Seconds(10)))
      << Admin(bad, "/routes") << "\n"
      << sidecars_[bad].process->Log();
  const Tally t = Burst(sidecars_[bad].port, 10);
  // DENY, but for the key's start allowance (at most burst 5).
  EXPECT_EQ(t.other, 0);
  EXPECT_LE(t.ok, 5);
  EXPECT_GE(t.rate_limited, 5);
  EXPECT_GT(MetricValue(Admin(bad, "/metrics"), "bulwark_redis_requests_total",
                        "result=\"error\""),
            0);
  EXPECT_EQ(MetricValue(Admin(bad, "/metrics"), "bulwark_redis_requests_total",
                        "result=\"ok\""),
            0);
  // It keeps reconnecting, with backoff (up to 2 s), and stays up; the log
  // names why.
  absl::SleepFor(absl::Seconds(3));
  EXPECT_TRUE(sidecars_[bad].process->Running());
  const std::string log = sidecars_[bad].process->Log();
  int failures = 0;
  for (size_t at = log.find("TLS handshake failed"); at != std::string::npos;
       at = log.find("TLS handshake failed", at + 1)) {
    ++failures;
  }
  EXPECT_LT(failures, 20) << log;
  EXPECT_TRUE(absl::StrContains(sidecars_[bad].process->Log(),
                                "certificate verify failed"))
      << sidecars_[bad].process->Log();
}

TEST_F(RedisTlsTest, AClientCertificateWhenRedisAsksForOne) {
  StartRedis(/*auth_clients=*/true);
  const int with =
      StartOne(absl::StrCat("ca_file: ", dir_, "/ca.crt, cert_file: ", dir_,
                            "/client.crt, key_file: ", dir_,
                            "/client.key, server_name: 127.0.0.1"),
               "DENY");
  const int without =
      StartOne(absl::StrCat("ca_file: ", dir_, "/ca.crt"), "DENY");
  ASSERT_EQ(sidecars_.size(), 2u);
  AwaitShared(with, 1);
  EXPECT_TRUE(PollUntil(
      [&] {
        return absl::StrContains(Admin(without, "/routes"),
                                 "\"mode\": \"DENY\"");
      },
      absl::Seconds(10)))
      << Admin(without, "/routes");
  std::cout << "without a client certificate: " << Admin(without, "/routes")
            << "\n";
}

}  // namespace
}  // namespace bulwark::test
