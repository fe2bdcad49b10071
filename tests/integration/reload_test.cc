// Live reload through the real binary (SPEC section 6): state of unchanged
// routes survives, an invalid file changes nothing, and no call is dropped
// while the configuration is reloaded every 100 ms under load.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/process.h"

namespace bulwark::test {
namespace {

using ::bulwark::demo::v1::Demo;
using ::bulwark::demo::v1::EchoRequest;
using ::bulwark::demo::v1::EchoResponse;

class ReloadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto upstream = DemoUpstream::Start();
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = std::move(*upstream);
    port_ = PickFreePort();
    admin_port_ = PickFreePort();
    path_ = TempDir() + "/bulwark.yaml";
  }

  // A config with a rate-limited `limited` route (burst `burst`) and a free
  // `open` route whose timeout is `open_timeout` (changing it must not touch
  // `limited`'s state).
  std::string Config(int burst, const std::string& open_timeout) {
    return absl::StrCat(
        "listener: { address: \"127.0.0.1:", port_, "\" }\n",
        "admin: { address: \"127.0.0.1:", admin_port_, "\" }\n", "workers: 2\n",
        "clusters:\n  - name: demo\n    endpoints: [\"", upstream_->address(),
        "\"]\n", "routes:\n",
        "  - name: limited\n"
        "    match: { service: bulwark.demo.v1.Demo, method: Echo }\n"
        "    cluster: demo\n"
        "    rate_limit: { requests_per_second: 0.001, burst: ",
        burst, " }\n",
        "  - name: open\n    match: {}\n    cluster: demo\n    timeout: ",
        open_timeout, "\n");
  }

  void StartSidecar(const std::string& config) {
    ASSERT_TRUE(WriteFile(path_, config).ok());
    auto child =
        ChildProcess::Start(BinaryPath("bulwark"), {"--config", path_});
    ASSERT_TRUE(child.ok()) << child.status();
    sidecar_ = std::move(*child);
    ASSERT_TRUE(WaitForTcpPort(port_, absl::Seconds(20), sidecar_.get()).ok());
    ASSERT_TRUE(
        WaitForTcpPort(admin_port_, absl::Seconds(20), sidecar_.get()).ok());
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_),
                                   grpc::InsecureChannelCredentials());
    stub_ = Demo::NewStub(channel_);
  }

  grpc::StatusCode Echo() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(10));
    EchoRequest request;
    request.set_payload("x");
    EchoResponse response;
    return stub_->Echo(&ctx, request, &response).error_code();
  }

  double Metric(const std::string& series) {
    int code = 0;
    auto body = HttpGet("127.0.0.1", admin_port_, "/metrics", &code);
    if (!body.ok()) return -1;
    for (absl::string_view line : absl::StrSplit(*body, '\n')) {
      if (absl::StartsWith(line, series + " ")) {
        double v = 0;
        if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
      }
    }
    return -1;
  }

  // Rewrites the file atomically (as a ConfigMap update does) and sends SIGHUP.
  void Reload(const std::string& config) {
    const std::string tmp = path_ + ".tmp";
    ASSERT_TRUE(WriteFile(tmp, config).ok());
    ASSERT_EQ(rename(tmp.c_str(), path_.c_str()), 0);
    ASSERT_TRUE(sidecar_->Signal(SIGHUP).ok());
  }

  std::unique_ptr<DemoUpstream> upstream_;
  std::unique_ptr<ChildProcess> sidecar_;
  int port_ = 0;
  int admin_port_ = 0;
  std::string path_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Demo::Stub> stub_;
};

TEST_F(ReloadTest, UnchangedRouteKeepsItsTokensAcrossReload) {
  StartSidecar(Config(3, "5s"));
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Echo(), grpc::StatusCode::OK);
  ASSERT_EQ(Echo(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // Another route changes; `limited` keeps its empty bucket.
  Reload(Config(3, "6s"));
  ASSERT_TRUE(PollUntil(
      [&] {
        return Metric("bulwark_config_reloads_total{result=\"success\"}") >= 1;
      },
      absl::Seconds(10)));
  EXPECT_EQ(Echo(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // Its own settings change: a fresh bucket.
  Reload(Config(5, "6s"));
  ASSERT_TRUE(PollUntil(
      [&] {
        return Metric("bulwark_config_reloads_total{result=\"success\"}") >= 2;
      },
      absl::Seconds(10)));
  EXPECT_EQ(Echo(), grpc::StatusCode::OK);
}

TEST_F(ReloadTest, InvalidFileChangesNothing) {
  StartSidecar(Config(2, "5s"));
  ASSERT_EQ(Echo(), grpc::StatusCode::OK);
  Reload("routes: [ this is not a config");
  ASSERT_TRUE(PollUntil(
      [&] {
        return Metric("bulwark_config_reloads_total{result=\"failure\"}") >= 1;
      },
      absl::Seconds(10)));
  EXPECT_EQ(Echo(), grpc::StatusCode::OK);  // second token of the old bucket
  EXPECT_EQ(Echo(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(sidecar_->Running());
  EXPECT_THAT(sidecar_->Log(), ::testing::HasSubstr("reload"));
}

TEST_F(ReloadTest, NoCallIsDroppedWhileReloadingEveryHundredMilliseconds) {
  // Routes: only `open` matters here (no rate limit hit: the catch-all for
  // other methods is not used; Echo goes to `limited` with a large burst).
  StartSidecar(Config(1'000'000, "5s"));
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0};
  absl::Mutex mu;
  std::map<int, int> failures;  // code -> count
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        const grpc::StatusCode code = Echo();
        if (code == grpc::StatusCode::OK) {
          ok.fetch_add(1);
        } else {
          absl::MutexLock lock(&mu);
          ++failures[code];
        }
      }
    });
  }
  const absl::Time end = absl::Now() + absl::Seconds(3);
  int reloads = 0;
  while (absl::Now() < end) {
    Reload(Config(1'000'000 + reloads % 2, reloads % 2 == 0 ? "5s" : "6s"));
    ++reloads;
    absl::SleepFor(
        absl::Milliseconds(100));  // the reload cadence under test, not a wait
  }
  stop = true;
  for (auto& t : clients) t.join();
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(failures.empty())
      << "failed calls: " << failures.size() << " codes, first "
      << (failures.empty() ? 0 : failures.begin()->first);
  EXPECT_GT(ok.load(), 100);
  EXPECT_GE(Metric("bulwark_config_reloads_total{result=\"success\"}"),
            reloads / 2);
  EXPECT_EQ(Metric("bulwark_config_reloads_total{result=\"failure\"}"), 0);
}

// Calls parked for a slot (their permits handed over and posted between the
// two workers) while reloads keep replacing the route's semaphore: every call
// still ends OK, and (under the ThreadSanitizer sidecar of scripts/test.sh) no
// posted permit touches a limiter a reload freed.
TEST_F(ReloadTest, ReloadChangingARouteWhileItsPermitsArePostedLosesNoCall) {
  auto config = [this](int max_in_flight) {
    return absl::StrCat("listener: { address: \"127.0.0.1:", port_, "\" }\n",
                        "admin: { address: \"127.0.0.1:", admin_port_, "\" }\n",
                        "workers: 2\n",
                        "clusters:\n  - name: demo\n    endpoints: [\"",
                        upstream_->address(), "\"]\n", "routes:\n",
                        "  - name: queued\n    match: {}\n    cluster: demo\n",
                        "    concurrency: { max_in_flight: ", max_in_flight,
                        ", max_queued: 64, queue_timeout: 10s }\n");
  };
  StartSidecar(config(2));
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 12; ++t) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(20));
        EchoRequest request;
        request.set_payload("x");
        request.mutable_fault()->set_delay_ms(5);
        EchoResponse response;
        if (stub_->Echo(&ctx, request, &response).ok()) {
          ok.fetch_add(1);
        } else {
          failed.fetch_add(1);
        }
      }
    });
  }
  const absl::Time end = absl::Now() + absl::Seconds(3);
  int reloads = 0;
  while (absl::Now() < end) {
    Reload(config(2 + reloads % 2));  // a new semaphore each time
    ++reloads;
    absl::SleepFor(absl::Milliseconds(50));  // the reload cadence under test
  }
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_GT(ok.load(), 50);
  EXPECT_TRUE(sidecar_->Running());
  EXPECT_GE(Metric("bulwark_config_reloads_total{result=\"success\"}"),
            reloads / 2);
}

TEST_F(ReloadTest, ConfigMapSymlinkSwapIsNoticedWithoutASignal) {
  // The layout the kubelet gives a mounted ConfigMap: the file is a symlink
  // through "..data", itself a symlink to a timestamped directory, and an
  // update swaps "..data" atomically.
  const std::string dir = TempDir();
  ASSERT_EQ(mkdir((dir + "/v1").c_str(), 0755), 0);
  ASSERT_EQ(mkdir((dir + "/v2").c_str(), 0755), 0);
  ASSERT_TRUE(WriteFile(dir + "/v1/bulwark.yaml", Config(2, "5s")).ok());
  ASSERT_TRUE(WriteFile(dir + "/v2/bulwark.yaml", Config(100, "5s")).ok());
  ASSERT_EQ(symlink("v1", (dir + "/..data").c_str()), 0);
  ASSERT_EQ(symlink("..data/bulwark.yaml", (dir + "/bulwark.yaml").c_str()), 0);
  path_ = dir + "/bulwark.yaml";
  auto child = ChildProcess::Start(BinaryPath("bulwark"), {"--config", path_});
  ASSERT_TRUE(child.ok()) << child.status();
  sidecar_ = std::move(*child);
  ASSERT_TRUE(WaitForTcpPort(port_, absl::Seconds(20), sidecar_.get()).ok());
  ASSERT_TRUE(
      WaitForTcpPort(admin_port_, absl::Seconds(20), sidecar_.get()).ok());
  channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_),
                                 grpc::InsecureChannelCredentials());
  stub_ = Demo::NewStub(channel_);
  ASSERT_EQ(Echo(), grpc::StatusCode::OK);
  ASSERT_EQ(Echo(), grpc::StatusCode::OK);
  ASSERT_EQ(Echo(), grpc::StatusCode::RESOURCE_EXHAUSTED);

  ASSERT_EQ(symlink("v2", (dir + "/..data_tmp").c_str()), 0);
  ASSERT_EQ(rename((dir + "/..data_tmp").c_str(), (dir + "/..data").c_str()),
            0);
  ASSERT_TRUE(PollUntil(
      [&] {
        return Metric("bulwark_config_reloads_total{result=\"success\"}") >= 1;
      },
      absl::Seconds(10)))
      << sidecar_->Log();
  EXPECT_EQ(Echo(), grpc::StatusCode::OK);  // the new, larger bucket
}

TEST_F(ReloadTest, ListenerOrWorkerChangesAreRefusedAndNeedARestart) {
  StartSidecar(Config(2, "5s"));
  std::string changed = Config(2, "5s");
  changed.replace(changed.find("workers: 2"), 10, "workers: 3");
  Reload(changed);
  ASSERT_TRUE(PollUntil(
      [&] {
        return Metric("bulwark_config_reloads_total{result=\"failure\"}") >= 1;
      },
      absl::Seconds(10)));
  // The counter grows just before the line is logged: wait for the line too.
  EXPECT_TRUE(PollUntil(
      [&] { return absl::StrContains(sidecar_->Log(), "need a restart"); },
      absl::Seconds(10)))
      << sidecar_->Log();
  EXPECT_EQ(Echo(), grpc::StatusCode::OK);
}

// handshake_timeout and idle_timeout are listener fields like the others:
// connections take them at accept, so a change needs a restart.
TEST_F(ReloadTest, ListenerTimeoutChangesAreRefusedToo) {
  StartSidecar(Config(2, "5s"));
  const std::string listener =
      absl::StrCat("listener: { address: \"127.0.0.1:", port_, "\" }");
  const std::string failure =
      "bulwark_config_reloads_total{result=\"failure\"}";
  for (const char* field : {"idle_timeout: 2m", "handshake_timeout: 3s"}) {
    std::string changed = Config(2, "5s");
    changed.replace(changed.find(listener), listener.size(),
                    absl::StrCat("listener: { address: \"127.0.0.1:", port_,
                                 "\", ", field, " }"));
    const double before = Metric(failure);
    Reload(changed);
    ASSERT_TRUE(
        PollUntil([&] { return Metric(failure) > before; }, absl::Seconds(10)))
        << field << "\n"
        << sidecar_->Log();
  }
  EXPECT_TRUE(PollUntil(
      [&] { return absl::StrContains(sidecar_->Log(), "need a restart"); },
      absl::Seconds(10)))
      << sidecar_->Log();
  EXPECT_LE(Metric("bulwark_config_reloads_total{result=\"success\"}"), 0);
  EXPECT_EQ(Echo(), grpc::StatusCode::OK);
}

}  // namespace
}  // namespace bulwark::test
