// Heartbeat health checks through the real binaries (SPEC sections 2-5): a
// real gRPC client calls `bulwark`, which balances over two
// `bulwark-demo-upstream` processes ("a" and "b") and health-checks them with
// grpc.health.v1, in CHECK mode and in WATCH mode (the test is parameterized
// by mode). The upstreams' health is flipped directly with Control.SetServing
// (never through the sidecar), and EchoResponse.served_by tells which endpoint
// answered each call.
//
// Health checks run every 200ms with a 200ms timeout and thresholds of 2, so
// an endpoint leaves within about (unhealthy_threshold + 1) x interval. Every
// wait is a poll against a generous deadline (the machine may be loaded), and
// the bounds asserted add a generous slack to the nominal time. The measured
// times (flip -> traffic leaves, recovery -> traffic returns) are printed on
// stdout, prefixed "[ measure ]".
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/process.h"

namespace bulwark::test {
namespace {

using ::bulwark::demo::v1::Control;
using ::bulwark::demo::v1::Demo;
using ::bulwark::demo::v1::EchoRequest;
using ::bulwark::demo::v1::EchoResponse;
using ::bulwark::demo::v1::Empty;
using ::bulwark::demo::v1::SetServingRequest;

constexpr absl::Duration kInterval = absl::Milliseconds(200);
constexpr int kUnhealthyThreshold = 2;
constexpr int kHealthyThreshold = 2;
// Added to every nominal bound: two shared cores, other builds running.
constexpr absl::Duration kSlack = absl::Seconds(3);
// The sidecar's upstream connect backoff (sidecar/net/worker.cc) caps at 5s:
// after a restart, worker 0 may wait that long before it connects again.
constexpr absl::Duration kMaxConnectBackoff = absl::Seconds(5);
constexpr absl::Duration kPollTimeout = absl::Seconds(30);
constexpr absl::Duration kCallTimeout = absl::Seconds(5);
// Consecutive calls all served by one endpoint that show the other is out
// (round robin alternates while both are in).
constexpr int kRun = 20;

// The outcome of one Echo through the sidecar.
struct CallOutcome {
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  std::string served_by;
  std::string reason;  // x-bulwark-reason trailer, if any
  absl::Time started;
  absl::Time ended;
  bool ok() const { return code == grpc::StatusCode::OK; }
};

CallOutcome Call(Demo::Stub& stub) {
  CallOutcome outcome;
  outcome.started = absl::Now();
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  EchoRequest request;
  request.set_payload("ping");
  EchoResponse response;
  const grpc::Status status = stub.Echo(&ctx, request, &response);
  outcome.code = status.error_code();
  outcome.served_by = response.served_by();
  const auto& trailers = ctx.GetServerTrailingMetadata();
  if (auto it = trailers.find("x-bulwark-reason"); it != trailers.end()) {
    outcome.reason = std::string(it->second.data(), it->second.size());
  }
  outcome.ended = absl::Now();
  return outcome;
}

// Every call made by any thread of a test, in the order they ended. The
// balancer's round robin is shared by all callers, so only the calls of all
// threads together show whether an endpoint still gets traffic.
class TrafficLog {
 public:
  CallOutcome Call(Demo::Stub& stub) ABSL_LOCKS_EXCLUDED(mu_) {
    CallOutcome outcome = bulwark::test::Call(stub);
    absl::MutexLock lock(&mu_);
    calls_.push_back(outcome);
    return outcome;
  }

  // If the last kRun calls that started after `since` were all served by
  // `name`: when the first call of that run (back to the last call that was
  // not) started.
  std::optional<absl::Time> OnlyServedBySince(const std::string& name,
                                              absl::Time since)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    int run = 0;
    absl::Time first = absl::InfiniteFuture();
    for (auto it = calls_.rbegin(); it != calls_.rend(); ++it) {
      if (it->started < since) continue;
      if (!it->ok() || it->served_by != name) break;
      ++run;
      first = std::min(first, it->started);
    }
    if (run < kRun) return std::nullopt;
    return first;
  }

  // When the first call that started after `since` and was served by `name`
  // ended.
  std::optional<absl::Time> FirstServedBySince(const std::string& name,
                                               absl::Time since)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    std::optional<absl::Time> first;
    for (const CallOutcome& call : calls_) {
      if (call.started >= since && call.ok() && call.served_by == name &&
          (!first.has_value() || call.ended < *first)) {
        first = call.ended;
      }
    }
    return first;
  }

  // Calls that started after `since`, and the failures among them.
  std::pair<int, std::vector<std::string>> FailuresSince(absl::Time since)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    std::pair<int, std::vector<std::string>> result;
    for (const CallOutcome& call : calls_) {
      if (call.started < since) continue;
      ++result.first;
      if (!call.ok()) {
        result.second.push_back(
            absl::StrCat("code ", call.code, " reason '", call.reason, "'"));
      }
    }
    return result;
  }

 private:
  absl::Mutex mu_;
  std::vector<CallOutcome> calls_ ABSL_GUARDED_BY(mu_);
};

std::string Ms(absl::Duration d) {
  return absl::StrCat(absl::ToInt64Milliseconds(d), " ms");
}

class HealthTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    for (const char* name : {"a", "b"}) {
      absl::StatusOr<std::unique_ptr<DemoUpstream>> upstream =
          DemoUpstream::Start({.name = name});
      ASSERT_TRUE(upstream.ok()) << upstream.status();
      auto channel = grpc::CreateChannel((*upstream)->address(),
                                         grpc::InsecureChannelCredentials());
      control_[name] = Control::NewStub(channel);
      upstreams_[name] = *std::move(upstream);
    }
    ASSERT_NO_FATAL_FAILURE(StartSidecar());
  }

  void TearDown() override {
    if (sidecar_ == nullptr) return;
    EXPECT_TRUE(sidecar_->Running()) << "the sidecar died; its log:\n"
                                     << sidecar_->Log();
    const ExitStatus exit = sidecar_->Stop(absl::Seconds(20));
    EXPECT_TRUE(exit.ExitedWith(0)) << exit.ToString() << "\n"
                                    << sidecar_->Log();
  }

  const std::string& mode() const { return GetParam(); }

  // `extra` is appended (more routes), to make a reload change something.
  std::string ConfigYaml(const std::string& extra = "") const {
    std::string yaml;
    absl::StrAppend(&yaml, "listener: { address: \"127.0.0.1:", port_,
                    "\" }\n");
    absl::StrAppend(&yaml, "admin: { address: \"127.0.0.1:", admin_port_,
                    "\" }\n");
    absl::StrAppend(&yaml, "workers: 2\n");
    absl::StrAppend(&yaml, "drain_timeout: 5s\n");
    absl::StrAppend(&yaml, "clusters:\n");
    absl::StrAppend(&yaml, "  - name: demo\n");
    absl::StrAppend(&yaml, "    endpoints: [\"", upstreams_.at("a")->address(),
                    "\", \"", upstreams_.at("b")->address(), "\"]\n");
    absl::StrAppend(&yaml, "    load_balancing: ROUND_ROBIN\n");
    absl::StrAppend(&yaml, "    health_check:\n");
    absl::StrAppend(&yaml, "      mode: ", mode(), "\n");
    absl::StrAppend(&yaml,
                    "      interval: ", absl::ToInt64Milliseconds(kInterval),
                    "ms\n");
    absl::StrAppend(&yaml, "      timeout: 200ms\n");
    absl::StrAppend(&yaml, "      jitter: 0.1\n");
    absl::StrAppend(&yaml, "      unhealthy_threshold: ", kUnhealthyThreshold,
                    "\n");
    absl::StrAppend(&yaml, "      healthy_threshold: ", kHealthyThreshold,
                    "\n");
    absl::StrAppend(&yaml, "routes:\n");
    absl::StrAppend(&yaml, "  - name: demo\n");
    absl::StrAppend(&yaml, "    match: { service: bulwark.demo.v1.Demo }\n");
    absl::StrAppend(&yaml, "    cluster: demo\n");
    absl::StrAppend(&yaml, extra);
    return yaml;
  }

  // PickFreePort is racy: a start that fails because the sidecar exited is
  // retried with fresh ports.
  void StartSidecar() {
    const std::string dir = TempDir();
    std::string last_error;
    for (int attempt = 0; attempt < 3 && sidecar_ == nullptr; ++attempt) {
      port_ = PickFreePort();
      admin_port_ = PickFreePort();
      while (admin_port_ == port_) admin_port_ = PickFreePort();
      config_path_ = absl::StrCat(dir, "/bulwark-", attempt, ".yaml");
      ASSERT_TRUE(WriteFile(config_path_, ConfigYaml()).ok());
      absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(
          BinaryPath("bulwark"), {"--config", config_path_},
          {.log_path = absl::StrCat(dir, "/bulwark-", attempt, ".log"),
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
    demo_ = NewStub();
  }

  std::unique_ptr<Demo::Stub> NewStub() {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // its own connection
    return Demo::NewStub(
        grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                  grpc::InsecureChannelCredentials(), args));
  }

  void SetServing(const std::string& name, bool serving) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + kPollTimeout));
    ctx.set_wait_for_ready(true);  // the channel may be reconnecting
    SetServingRequest request;
    request.set_service("");  // the overall status, which the sidecar checks
    request.set_serving(serving);
    Empty response;
    const grpc::Status status =
        control_.at(name)->SetServing(&ctx, request, &response);
    ASSERT_TRUE(status.ok())
        << "SetServing(" << name << "): " << status.error_message();
  }

  // Calls until `name` alone serves kRun calls in a row. Returns how long
  // after `since` the first call of that run started (the traffic left the
  // other endpoint by then), or nullopt after kPollTimeout.
  // (Calls of every thread count, see TrafficLog.)
  std::optional<absl::Duration> WaitUntilOnly(const std::string& name,
                                              absl::Time since) {
    while (absl::Now() - since < kPollTimeout) {
      traffic_.Call(*demo_);
      if (auto first = traffic_.OnlyServedBySince(name, since)) {
        return *first - since;
      }
    }
    return std::nullopt;
  }

  // Calls until one is served by `name`; how long after `since` it ended.
  std::optional<absl::Duration> WaitUntilServedBy(const std::string& name,
                                                  absl::Time since) {
    while (absl::Now() - since < kPollTimeout) {
      traffic_.Call(*demo_);
      if (auto first = traffic_.FirstServedBySince(name, since)) {
        return *first - since;
      }
    }
    return std::nullopt;
  }

  // Serving counts of `calls` calls, by endpoint ("failed" for errors).
  std::map<std::string, int> Spread(int calls) {
    std::map<std::string, int> by;
    for (int i = 0; i < calls; ++i) {
      const CallOutcome outcome = Call(*demo_);
      ++by[outcome.ok() ? outcome.served_by : "failed"];
    }
    return by;
  }

  void ExpectBothServe() {
    const std::map<std::string, int> by = Spread(20);
    EXPECT_EQ(by.count("failed"), 0u);
    EXPECT_GT(by.count("a") ? by.at("a") : 0, 0);
    EXPECT_GT(by.count("b") ? by.at("b") : 0, 0);
  }

  // The /routes JSON object of endpoint `name`, e.g. {"address": ...}.
  std::string RoutesEndpoint(const std::string& name) {
    int code = 0;
    absl::StatusOr<std::string> body =
        HttpGet("127.0.0.1", admin_port_, "/routes", &code);
    if (!body.ok() || code != 200) return "";
    const std::string key =
        absl::StrCat("\"address\": \"", upstreams_.at(name)->address(), "\"");
    const size_t at = body->find(key);
    if (at == std::string::npos) return "";
    return body->substr(at, body->find('}', at) - at);
  }

  // The value of the sample `series` (name and labels as exposed), or -1.
  double MetricValue(const std::string& series) {
    int code = 0;
    absl::StatusOr<std::string> body =
        HttpGet("127.0.0.1", admin_port_, "/metrics", &code);
    if (!body.ok() || code != 200) return -1;
    for (absl::string_view line : absl::StrSplit(*body, '\n')) {
      double value = 0;
      if (absl::StartsWith(line, series + " ") &&
          absl::SimpleAtod(line.substr(series.size() + 1), &value)) {
        return value;
      }
    }
    return -1;
  }

  void Report(const std::string& what, absl::Duration measured,
              absl::Duration bound) {
    std::cout << "[ measure ] " << mode() << ": " << what << ": "
              << Ms(measured) << " (nominal bound " << Ms(bound - kSlack)
              << ", asserted " << Ms(bound) << ")" << std::endl;
    EXPECT_LE(measured, bound) << what;
  }

  std::map<std::string, std::unique_ptr<DemoUpstream>> upstreams_;
  std::map<std::string, std::unique_ptr<Control::Stub>> control_;
  std::unique_ptr<ChildProcess> sidecar_;
  int port_ = 0;
  int admin_port_ = 0;
  std::string config_path_;
  std::unique_ptr<Demo::Stub> demo_;
  TrafficLog traffic_;
};

const absl::Duration kLeaveBound =
    (kUnhealthyThreshold + 1) * kInterval + kSlack;
const absl::Duration kReturnBound =
    (kHealthyThreshold + 1) * kInterval + kSlack;

TEST_P(HealthTest, NotServingEndpointLosesItsTrafficAndGetsItBack) {
  ExpectBothServe();

  const absl::Time flipped = absl::Now();
  ASSERT_NO_FATAL_FAILURE(SetServing("b", false));
  const std::optional<absl::Duration> left = WaitUntilOnly("a", flipped);
  ASSERT_TRUE(left.has_value()) << "b kept traffic; sidecar log:\n"
                                << sidecar_->Log();
  Report("NOT_SERVING -> traffic left", *left, kLeaveBound);

  // The admin page and the metrics tell the same story.
  const std::string b = RoutesEndpoint("b");
  EXPECT_TRUE(absl::StrContains(b, "\"healthy\": false")) << b;
  EXPECT_TRUE(absl::StrContains(b, "\"last_probe_result\": \"failure\"")) << b;
  EXPECT_TRUE(absl::StrContains(b, "\"seconds_since_last_probe\": ")) << b;
  int code = 0;
  absl::StatusOr<std::string> metrics =
      HttpGet("127.0.0.1", admin_port_, "/metrics", &code);
  ASSERT_TRUE(metrics.ok());
  bool failure_counted = false, gauge_zero = false;
  for (absl::string_view line : absl::StrSplit(*metrics, '\n')) {
    if (!absl::StrContains(line, upstreams_.at("b")->address())) continue;
    failure_counted |= absl::StartsWith(line, "bulwark_health_checks_total{") &&
                       absl::StrContains(line, "result=\"failure\"");
    gauge_zero |= absl::StartsWith(line, "bulwark_endpoint_healthy{") &&
                  absl::EndsWith(line, " 0");
  }
  EXPECT_TRUE(failure_counted) << *metrics;
  EXPECT_TRUE(gauge_zero) << *metrics;

  const absl::Time recovered = absl::Now();
  ASSERT_NO_FATAL_FAILURE(SetServing("b", true));
  const std::optional<absl::Duration> back = WaitUntilServedBy("b", recovered);
  ASSERT_TRUE(back.has_value()) << "b never came back; sidecar log:\n"
                                << sidecar_->Log();
  Report("SERVING again -> traffic returned", *back, kReturnBound);
  ExpectBothServe();
  EXPECT_TRUE(absl::StrContains(RoutesEndpoint("b"), "\"healthy\": true"));
}

TEST_P(HealthTest, KilledEndpointLosesItsTrafficAndRestartedGetsItBack) {
  ExpectBothServe();

  DemoUpstream& b = *upstreams_.at("b");
  const absl::Time killed = absl::Now();
  ASSERT_TRUE(b.process()->Signal(SIGKILL).ok());
  ASSERT_TRUE(b.process()->Wait(absl::Seconds(10)).ok());
  // Calls in flight to b when it died fail; that is the breaker's business.
  const std::optional<absl::Duration> left = WaitUntilOnly("a", killed);
  ASSERT_TRUE(left.has_value()) << "b kept traffic; sidecar log:\n"
                                << sidecar_->Log();
  Report("killed -> traffic left", *left, kLeaveBound);

  // Stop reaps the killed process (and says it died of SIGKILL).
  EXPECT_FALSE(b.Stop().ok());
  const absl::Time restarting = absl::Now();
  ASSERT_TRUE(b.Restart().ok()) << "cannot restart b";
  const absl::Duration start_time = absl::Now() - restarting;
  const absl::Time restarted = absl::Now();
  const std::optional<absl::Duration> back = WaitUntilServedBy("b", restarted);
  ASSERT_TRUE(back.has_value()) << "b never came back; sidecar log:\n"
                                << sidecar_->Log();
  std::cout << "[ measure ] " << mode() << ": (b took " << Ms(start_time)
            << " to start again)" << std::endl;
  // The connect backoff of the data plane's connection is part of it.
  Report("restarted -> traffic returned", *back,
         kReturnBound + kMaxConnectBackoff);
  ExpectBothServe();
}

TEST_P(HealthTest, NoHealthyEndpointFailsCallsAndReadiness) {
  int code = 0;
  ASSERT_TRUE(HttpGet("127.0.0.1", admin_port_, "/readyz", &code).ok());
  EXPECT_EQ(code, 200);

  ASSERT_NO_FATAL_FAILURE(SetServing("a", false));
  ASSERT_NO_FATAL_FAILURE(SetServing("b", false));
  CallOutcome rejected;
  const bool all_out = PollUntil(
      [&] {
        rejected = Call(*demo_);
        return rejected.code == grpc::StatusCode::UNAVAILABLE;
      },
      kPollTimeout);
  ASSERT_TRUE(all_out) << "calls still served; sidecar log:\n"
                       << sidecar_->Log();
  EXPECT_EQ(rejected.reason, "no_healthy_endpoint");
  absl::StatusOr<std::string> ready =
      HttpGet("127.0.0.1", admin_port_, "/readyz", &code);
  ASSERT_TRUE(ready.ok());
  EXPECT_EQ(code, 503);
  EXPECT_TRUE(absl::StrContains(*ready, "demo")) << *ready;

  ASSERT_NO_FATAL_FAILURE(SetServing("a", true));
  ASSERT_NO_FATAL_FAILURE(SetServing("b", true));
  const bool ready_again = PollUntil(
      [&] {
        return HttpGet("127.0.0.1", admin_port_, "/readyz", &code).ok() &&
               code == 200;
      },
      kPollTimeout);
  EXPECT_TRUE(ready_again);
  const bool serving_again =
      PollUntil([&] { return Call(*demo_).ok(); }, kPollTimeout);
  EXPECT_TRUE(serving_again);
  const bool both_back = PollUntil(
      [&] {
        const std::map<std::string, int> by = Spread(4);
        return by.count("a") > 0 && by.count("b") > 0;
      },
      kPollTimeout);
  EXPECT_TRUE(both_back);
}

TEST_P(HealthTest, FlippingAnEndpointUnderLoadFailsNoCall) {
  const absl::Time start = absl::Now();
  std::atomic<bool> stop{false};
  std::thread load([&, stub = NewStub()] {
    while (!stop.load()) traffic_.Call(*stub);
  });

  // The main thread's own calls add to the load.
  const absl::Time flipped = absl::Now();
  SetServing("b", false);
  const std::optional<absl::Duration> left = WaitUntilOnly("a", flipped);
  const absl::Time recovered = absl::Now();
  SetServing("b", true);
  const std::optional<absl::Duration> back = WaitUntilServedBy("b", recovered);
  stop = true;
  load.join();

  ASSERT_TRUE(left.has_value());
  ASSERT_TRUE(back.has_value());
  Report("under load: NOT_SERVING -> traffic left", *left, kLeaveBound);
  Report("under load: SERVING again -> traffic returned", *back, kReturnBound);
  const auto [calls, failures] = traffic_.FailuresSince(start);
  EXPECT_GT(calls, 2 * kRun);
  EXPECT_TRUE(failures.empty()) << failures.size() << " of " << calls
                                << " calls failed, first: " << failures.front();
  std::cout << "[ measure ] " << mode() << ": under load, " << calls
            << " calls, " << failures.size() << " failed" << std::endl;
}

TEST_P(HealthTest, ReloadKeepsHealthOfUnchangedEndpointsAndKeepsChecking) {
  ASSERT_NO_FATAL_FAILURE(SetServing("b", false));
  ASSERT_TRUE(WaitUntilOnly("a", absl::Now()).has_value());

  // A reload that changes something else: b's Endpoint, and its health, carry
  // over; the new snapshot's checker takes over the probing.
  ASSERT_TRUE(
      WriteFile(config_path_, ConfigYaml("  - name: other\n"
                                         "    match: { prefix: /other. }\n"
                                         "    cluster: demo\n"))
          .ok());
  ASSERT_TRUE(sidecar_->Signal(SIGHUP).ok());
  const std::string reloads =
      "bulwark_config_reloads_total{result=\"success\"}";
  ASSERT_TRUE(
      PollUntil([&] { return MetricValue(reloads) >= 1; }, kPollTimeout))
      << sidecar_->Log();
  EXPECT_TRUE(absl::StrContains(RoutesEndpoint("b"), "\"healthy\": false"))
      << "b came back healthy from the reload: " << RoutesEndpoint("b");
  // The old checker stopped: a is checked once per interval, not twice (at
  // most 1s / (interval * (1 - jitter)) + 1 = 6.6 verdicts a second).
  const std::string a_checks =
      absl::StrCat("bulwark_health_checks_total{cluster=\"demo\",endpoint=\"",
                   upstreams_.at("a")->address(), "\",result=\"success\"}");
  const double before = MetricValue(a_checks);
  absl::SleepFor(absl::Seconds(1));
  const double checks_per_second = MetricValue(a_checks) - before;
  EXPECT_GT(before, 0);
  EXPECT_LE(checks_per_second, 7) << "more than one checker after the reload";
  std::cout << "[ measure ] " << mode() << ": after a reload, "
            << checks_per_second << " checks of a in 1s" << std::endl;

  const std::optional<absl::Duration> still_out =
      WaitUntilOnly("a", absl::Now());
  ASSERT_TRUE(still_out.has_value());
  EXPECT_LT(*still_out, absl::Seconds(1)) << "b served after the reload";

  const absl::Time recovered = absl::Now();
  ASSERT_NO_FATAL_FAILURE(SetServing("b", true));
  const std::optional<absl::Duration> back = WaitUntilServedBy("b", recovered);
  ASSERT_TRUE(back.has_value()) << "no checker after the reload; log:\n"
                                << sidecar_->Log();
  Report("after a reload: SERVING again -> traffic returned", *back,
         kReturnBound);
}

INSTANTIATE_TEST_SUITE_P(Modes, HealthTest, ::testing::Values("CHECK", "WATCH"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace bulwark::test
