// Endpoints given as DNS names, through the real binaries (SPEC section 2:
// "DNS names allowed"; the health-check issue: "re-resolved periodically and
// their address set updated without dropping calls").
//
// The sidecar runs in a private mount namespace (`unshare -m`) whose
// /etc/hosts is a file of the test's, bind-mounted; getaddrinfo reads it on
// every lookup, so the test changes what the name resolves to by rewriting the
// file in place. Two demo upstreams listen on the same port at 127.0.0.2 ("a")
// and 127.0.0.3 ("b"); the cluster's one endpoint is
// "orders.bulwark.test:PORT", refreshed every 200ms. EchoResponse.served_by
// tells which address answered. Where unshare or the bind mount is not
// permitted (a container without CAP_SYS_ADMIN), the tests skip and say so.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/process.h"

namespace bulwark::test {
namespace {

using ::bulwark::demo::v1::Demo;
using ::bulwark::demo::v1::EchoRequest;
using ::bulwark::demo::v1::EchoResponse;

constexpr char kName[] = "orders.bulwark.test";
constexpr char kUnshare[] = "/usr/bin/unshare";
constexpr absl::Duration kRefresh = absl::Milliseconds(200);
constexpr absl::Duration kPollTimeout = absl::Seconds(30);
constexpr absl::Duration kCallTimeout = absl::Seconds(5);

// served_by of one Echo through the sidecar, or "failed: <code> <message>".
std::string Call(Demo::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  EchoRequest request;
  request.set_payload("ping");
  EchoResponse response;
  const grpc::Status status = stub.Echo(&ctx, request, &response);
  if (!status.ok()) {
    return absl::StrCat("failed: ", status.error_code(), " ",
                        status.error_message());
  }
  return response.served_by();
}

// Whether this process may make a private mount namespace and bind-mount a
// file (root with CAP_SYS_ADMIN, as on the CI machine).
bool CanBindMountHosts(const std::string& dir) {
  const std::string file = absl::StrCat(dir, "/probe-hosts");
  if (!WriteFile(file, "127.0.0.1 localhost\n").ok()) return false;
  auto child = ChildProcess::Start(
      kUnshare, {"-m", "--propagation", "private", "sh", "-c",
                 absl::StrCat("mount --bind ", file, " /etc/hosts")});
  if (!child.ok()) return false;
  absl::StatusOr<ExitStatus> exit = (*child)->Wait(absl::Seconds(10));
  return exit.ok() && exit->ExitedWith(0);
}

class DnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir();
    if (!CanBindMountHosts(dir_)) {
      GTEST_SKIP() << "needs `unshare -m` and a bind mount (CAP_SYS_ADMIN) to "
                      "give the sidecar its own /etc/hosts";
    }
    absl::StatusOr<std::unique_ptr<DemoUpstream>> a = DemoUpstream::Start(
        {.name = "a", .extra_args = {"--address=127.0.0.2"}});
    ASSERT_TRUE(a.ok()) << a.status();
    upstream_port_ = (*a)->port();
    absl::StatusOr<std::unique_ptr<DemoUpstream>> b = DemoUpstream::Start(
        {.name = "b",
         .extra_args = {"--address=127.0.0.3",
                        absl::StrCat("--port=", upstream_port_)}});
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_EQ((*b)->port(), upstream_port_);
    upstreams_["a"] = *std::move(a);
    upstreams_["b"] = *std::move(b);
    hosts_path_ = absl::StrCat(dir_, "/hosts");
  }

  void TearDown() override {
    if (sidecar_ == nullptr) return;
    EXPECT_TRUE(sidecar_->Running()) << "the sidecar died; its log:\n"
                                     << sidecar_->Log();
    const ExitStatus exit = sidecar_->Stop(absl::Seconds(20));
    EXPECT_TRUE(exit.ExitedWith(0)) << exit.ToString() << "\n"
                                    << sidecar_->Log();
  }

  // The sidecar's /etc/hosts: `name` resolves to the addresses of these
  // upstreams ("a" -> 127.0.0.2, "b" -> 127.0.0.3). Rewritten in place (the
  // bind mount follows the inode).
  void SetHosts(const std::vector<std::string>& upstreams) {
    std::string text = "127.0.0.1 localhost\n";
    for (const std::string& u : upstreams) {
      absl::StrAppend(&text, IpOf(u), " ", kName, "\n");
    }
    ASSERT_TRUE(WriteFile(hosts_path_, text).ok());
  }

  static std::string IpOf(const std::string& upstream) {
    return upstream == "a" ? "127.0.0.2" : "127.0.0.3";
  }
  std::string Resolved(const std::string& upstream) const {
    return absl::StrCat(IpOf(upstream), ":", upstream_port_);
  }

  void StartSidecar(absl::Duration refresh = kRefresh) {
    std::string last_error;
    for (int attempt = 0; attempt < 3 && sidecar_ == nullptr; ++attempt) {
      port_ = PickFreePort();
      admin_port_ = PickFreePort();
      while (admin_port_ == port_) admin_port_ = PickFreePort();
      config_path_ = absl::StrCat(dir_, "/bulwark-", attempt, ".yaml");
      ASSERT_TRUE(WriteFile(config_path_, ConfigYaml(refresh)).ok());
      // unshare execs sh, which execs the sidecar: one pid throughout, so
      // SIGTERM and the exit status are the sidecar's own.
      absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(
          kUnshare,
          {"-m", "--propagation", "private", "sh", "-c",
           absl::StrCat("mount --bind ", hosts_path_, " /etc/hosts && exec ",
                        BinaryPath("bulwark"), " --config ", config_path_)},
          {.log_path = absl::StrCat(dir_, "/bulwark-", attempt, ".log"),
           .stop_grace = absl::Seconds(20)});
      ASSERT_TRUE(child.ok()) << child.status();
      absl::Status up = WaitForTcpPort(port_, kPollTimeout, child->get());
      if (up.ok()) up = WaitForTcpPort(admin_port_, kPollTimeout, child->get());
      if (up.ok()) {
        sidecar_ = *std::move(child);
        break;
      }
      last_error = up.ToString();
      ASSERT_FALSE((*child)->Running())
          << "the sidecar runs but does not listen: " << last_error;
    }
    ASSERT_NE(sidecar_, nullptr) << "cannot start the sidecar: " << last_error;
    demo_ = Demo::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials()));
  }

  std::string ConfigYaml(absl::Duration refresh) const {
    return absl::StrCat(
        "listener: { address: \"127.0.0.1:", port_, "\" }\n",
        "admin: { address: \"127.0.0.1:", admin_port_, "\" }\n", "workers: 2\n",
        "drain_timeout: 5s\n", "clusters:\n", "  - name: orders\n",
        "    endpoints: [\"", kName, ":", upstream_port_, "\"]\n",
        "    dns_refresh_interval: ", absl::ToInt64Milliseconds(refresh),
        "ms\n", "routes:\n", "  - name: all\n", "    cluster: orders\n");
  }

  // Serving counts of `calls` calls, by upstream ("failed: ..." for errors).
  std::map<std::string, int> Spread(int calls) {
    std::map<std::string, int> by;
    for (int i = 0; i < calls; ++i) ++by[Call(*demo_)];
    return by;
  }

  // Polls until `calls` consecutive calls are served exactly by `expected`
  // (each of them at least once, nothing else); returns how long it took.
  absl::StatusOr<absl::Duration> WaitForServers(
      const std::vector<std::string>& expected, int calls = 20) {
    const absl::Time start = absl::Now();
    std::map<std::string, int> last;
    while (absl::Now() - start < kPollTimeout) {
      last = Spread(calls);
      bool match = last.size() == expected.size();
      for (const std::string& e : expected) match = match && last.count(e) > 0;
      if (match) return absl::Now() - start;
    }
    std::string seen;
    for (const auto& [k, v] : last) absl::StrAppend(&seen, k, "=", v, " ");
    return absl::DeadlineExceededError(absl::StrCat("still served by: ", seen));
  }

  std::string Admin(const std::string& path) {
    int code = 0;
    absl::StatusOr<std::string> body =
        HttpGet("127.0.0.1", admin_port_, path, &code);
    return body.ok() && code == 200 ? *body : "";
  }

  // Established connections from this machine to `upstream`'s address (the
  // sidecar is the only process that connects to the upstreams' port).
  int ConnectionsTo(const std::string& upstream) {
    absl::StatusOr<std::string> tcp = ReadFile("/proc/net/tcp");
    if (!tcp.ok()) return -1;
    // /proc/net/tcp prints 127.0.0.2:PORT as 0200007F:PORT in hex.
    const std::string remote = absl::StrFormat(
        "%s:%04X", upstream == "a" ? "0200007F" : "0300007F", upstream_port_);
    int count = 0;
    for (absl::string_view line : absl::StrSplit(*tcp, '\n')) {
      std::vector<absl::string_view> fields =
          absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (fields.size() > 3 && fields[2] == remote && fields[3] == "01") {
        ++count;
      }
    }
    return count;
  }

  std::string dir_;
  std::string hosts_path_;
  std::string config_path_;
  int upstream_port_ = 0;
  int port_ = 0;
  int admin_port_ = 0;
  std::map<std::string, std::unique_ptr<DemoUpstream>> upstreams_;
  std::unique_ptr<ChildProcess> sidecar_;
  std::unique_ptr<Demo::Stub> demo_;
};

TEST_F(DnsTest, NameStandsForEveryAddressAndFollowsItsChanges) {
  SetHosts({"a"});
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  ASSERT_TRUE(WaitForServers({"a"}).ok());
  EXPECT_THAT(Admin("/routes"),
              ::testing::HasSubstr(
                  absl::StrCat("\"address\": \"", kName, ":", upstream_port_,
                               "\", \"resolved\": \"", Resolved("a"), "\"")));

  // A second address: both serve, both are endpoints with their own series.
  SetHosts({"a", "b"});
  absl::StatusOr<absl::Duration> took = WaitForServers({"a", "b"});
  ASSERT_TRUE(took.ok()) << took.status();
  std::cout << "[ measure ] address added -> traffic reaches it: "
            << absl::FormatDuration(*took) << " (refresh every "
            << absl::FormatDuration(kRefresh) << ")" << std::endl;
  const std::string routes = Admin("/routes");
  EXPECT_THAT(routes, ::testing::HasSubstr(Resolved("a")));
  EXPECT_THAT(routes, ::testing::HasSubstr(Resolved("b")));
  EXPECT_THAT(Admin("/metrics"),
              ::testing::HasSubstr(absl::StrCat(
                  "bulwark_endpoint_healthy{cluster=\"orders\",endpoint=\"",
                  Resolved("b"), "\"} 1")));
  EXPECT_GT(ConnectionsTo("a"), 0);

  // The first address leaves: its traffic, its series and its connections go.
  SetHosts({"b"});
  took = WaitForServers({"b"});
  ASSERT_TRUE(took.ok()) << took.status();
  std::cout << "[ measure ] address removed -> traffic leaves it: "
            << absl::FormatDuration(*took) << std::endl;
  EXPECT_TRUE(PollUntil(
      [&] { return !absl::StrContains(Admin("/metrics"), Resolved("a")); },
      kPollTimeout))
      << "the removed endpoint still has series:\n"
      << Admin("/metrics");
  EXPECT_TRUE(PollUntil([&] { return ConnectionsTo("a") == 0; }, kPollTimeout))
      << ConnectionsTo("a") << " connections to the removed address remain";
  EXPECT_THAT(Admin("/routes"),
              ::testing::Not(::testing::HasSubstr(Resolved("a"))));
  EXPECT_THAT(sidecar_->Log(), ::testing::HasSubstr(absl::StrCat(
                                   "dns: ", kName, ":", upstream_port_,
                                   " now resolves to ", Resolved("b"))));
}

TEST_F(DnsTest, ChangingAnswersUnderLoadFailNoCall) {
  SetHosts({"a"});
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  ASSERT_TRUE(WaitForServers({"a"}).ok());

  std::atomic<bool> stop{false};
  absl::Mutex mu;
  std::map<std::string, int> outcomes;  // guarded by mu
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t) {
    load.emplace_back([&, t] {
      auto stub = Demo::NewStub(
          grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_),
                              grpc::InsecureChannelCredentials()));
      while (!stop.load()) {
        std::string served = Call(*stub);
        absl::MutexLock lock(&mu);
        ++outcomes[served];
      }
    });
  }
  // a -> a+b -> b -> a, each step in force before the next.
  for (const std::vector<std::string>& step :
       std::vector<std::vector<std::string>>{{"a", "b"}, {"b"}, {"a"}}) {
    SetHosts(step);
    absl::StatusOr<absl::Duration> took = WaitForServers(step);
    EXPECT_TRUE(took.ok()) << took.status();
  }
  stop = true;
  for (std::thread& t : load) t.join();

  absl::MutexLock lock(&mu);
  int total = 0;
  for (const auto& [served, count] : outcomes) {
    total += count;
    EXPECT_TRUE(served == "a" || served == "b")
        << count << " calls ended " << served;
  }
  std::cout << "[ measure ] calls during three address changes: " << total
            << std::endl;
  EXPECT_GT(total, 100);
}

TEST_F(DnsTest, FailedLookupKeepsTheEndpoints) {
  SetHosts({"a"});
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  ASSERT_TRUE(WaitForServers({"a"}).ok());

  SetHosts({});  // the name no longer resolves
  ASSERT_TRUE(PollUntil(
      [&] {
        return absl::StrContains(sidecar_->Log(),
                                 absl::StrCat("cannot resolve ", kName));
      },
      kPollTimeout))
      << sidecar_->Log();
  // Lookups keep failing (every 200ms) while these calls run: the last good
  // answer stays in use.
  const std::map<std::string, int> by = Spread(50);
  EXPECT_EQ(by, (std::map<std::string, int>{{"a", 50}}));

  SetHosts({"b"});
  ASSERT_TRUE(WaitForServers({"b"}).ok());
  EXPECT_THAT(sidecar_->Log(),
              ::testing::HasSubstr(
                  absl::StrCat(kName, ":", upstream_port_, " resolves again")));
}

TEST_F(DnsTest, WithoutRefreshNamesAreResolvedAtReload) {
  SetHosts({"a"});
  ASSERT_NO_FATAL_FAILURE(StartSidecar(absl::ZeroDuration()));
  ASSERT_TRUE(WaitForServers({"a"}).ok());

  SetHosts({"b"});
  // Five refreshes' worth of the other tests' interval: nothing looks again.
  const absl::Time until = absl::Now() + 5 * kRefresh;
  int calls = 0;
  while (absl::Now() < until) {
    ASSERT_EQ(Call(*demo_), "a");
    ++calls;
  }
  EXPECT_GT(calls, 0);

  ASSERT_TRUE(sidecar_->Signal(SIGHUP).ok());
  absl::StatusOr<absl::Duration> took = WaitForServers({"b"});
  EXPECT_TRUE(took.ok()) << took.status();
}

}  // namespace
}  // namespace bulwark::test
