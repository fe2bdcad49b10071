// An upstream's own SETTINGS_MAX_CONCURRENT_STREAMS, through the real binaries
// (SPEC section 11, issue 15 item 7): the sidecar opens further connections
// to that endpoint instead of queueing every route behind one, and health
// probes (a connection of their own) are never starved by traffic.
//
// bulwark-demo-upstream runs with --max_concurrent_streams=10; the sidecar
// (workers: 1, so one worker's pool holds every call) health-checks it every
// 250 ms with a 1 s timeout (a probe queued behind the 2 s calls would time
// out). Forty slow calls (2 s each) on one route then must all be in progress
// at the upstream at once (Control.GetStats), while quick calls on another
// route answer at once and every health check passes. Waiting polls against
// deadlines; nothing sleeps.
#include <algorithm>
#include <atomic>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
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
using ::bulwark::demo::v1::StatsRequest;
using ::bulwark::demo::v1::StatsResponse;
using ::bulwark::demo::v1::StreamRequest;

constexpr int kUpstreamStreamLimit = 10;
constexpr int kSlowCalls = 40;
constexpr absl::Duration kSlowCallDelay = absl::Seconds(2);
constexpr absl::Duration kPollTimeout = absl::Seconds(30);

// The sum over every series of `name` in a Prometheus exposition whose labels
// contain `label` ("" for any), or -1 if there is none.
double SumOfSeries(absl::string_view exposition, absl::string_view name,
                   absl::string_view label = "") {
  double sum = -1;
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (!absl::StartsWith(line, absl::StrCat(name, "{"))) continue;
    const size_t close = line.rfind('}');
    if (close == absl::string_view::npos) continue;
    if (!label.empty() && !absl::StrContains(line.substr(0, close), label)) {
      continue;
    }
    double value = 0;
    if (!absl::SimpleAtod(absl::StripAsciiWhitespace(line.substr(close + 1)),
                          &value)) {
      continue;
    }
    sum = (sum < 0 ? 0 : sum) + value;
  }
  return sum;
}

class UpstreamLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<DemoUpstream>> upstream =
        DemoUpstream::Start(
            {.extra_args = {absl::StrCat("--max_concurrent_streams=",
                                         kUpstreamStreamLimit)}});
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = *std::move(upstream);
    control_ = Control::NewStub(grpc::CreateChannel(
        upstream_->address(), grpc::InsecureChannelCredentials()));

    const std::string dir = TempDir();
    const std::string config = absl::StrCat(dir, "/bulwark.yaml");
    ASSERT_TRUE(WriteFile(config, absl::StrCat(R"(
listener: { address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
workers: 1
clusters:
  - name: demo
    endpoints: [")",
                                               upstream_->address(), R"("]
    health_check:
      mode: CHECK
      interval: 250ms
      timeout: 1s
      jitter: 0
      unhealthy_threshold: 1
      healthy_threshold: 1
routes:
  - name: slow
    match: { service: bulwark.demo.v1.Demo, method: Echo }
    cluster: demo
    timeout: 20s
  - name: quick
    match: { service: bulwark.demo.v1.Demo, method: ServerStream }
    cluster: demo
    timeout: 1s
)"))
                    .ok());
    absl::StatusOr<StartedSidecar> started =
        StartSidecar(config, absl::StrCat(dir, "/bulwark.log"), kPollTimeout);
    ASSERT_TRUE(started.ok()) << started.status();
    sidecar_ = std::move(started->process);
    port_ = started->port;
    admin_port_ = started->admin_port;
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);
    demo_ = Demo::NewStub(
        grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                  grpc::InsecureChannelCredentials(), args));
  }

  void TearDown() override {
    if (sidecar_ == nullptr) return;
    EXPECT_TRUE(sidecar_->Running()) << sidecar_->Log();
    const ExitStatus exit = sidecar_->Stop(absl::Seconds(20));
    EXPECT_TRUE(exit.ExitedWith(0)) << exit.ToString() << "\n"
                                    << sidecar_->Log();
  }

  std::string Metrics() {
    int code = 0;
    absl::StatusOr<std::string> body =
        HttpGet("127.0.0.1", admin_port_, "/metrics", &code);
    return body.ok() && code == 200 ? *body : "";
  }

  StatsResponse Stats() {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    StatsResponse stats;
    EXPECT_TRUE(control_->GetStats(&ctx, StatsRequest(), &stats).ok());
    return stats;
  }

  std::unique_ptr<DemoUpstream> upstream_;
  std::unique_ptr<Control::Stub> control_;
  std::unique_ptr<ChildProcess> sidecar_;
  std::unique_ptr<Demo::Stub> demo_;
  int port_ = 0;
  int admin_port_ = 0;
};

TEST_F(UpstreamLimitsTest, FurtherConnectionsCarryCallsPastTheUpstreamLimit) {
  // Healthy first (the first probes passed).
  ASSERT_TRUE(PollUntil(
      [&] {
        return SumOfSeries(Metrics(), "bulwark_health_checks_total",
                           "result=\"success\"") >= 2;
      },
      kPollTimeout))
      << Metrics();
  const double timeouts_before = SumOfSeries(
      Metrics(), "bulwark_health_checks_total", "result=\"timeout\"");
  const double failures_before = SumOfSeries(
      Metrics(), "bulwark_health_checks_total", "result=\"failure\"");

  // One call first, so the calls' connection is up and has the upstream's
  // SETTINGS (until they arrive, one round trip after connecting, the
  // sidecar assumes a limit of 100).
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    EchoRequest request;
    request.set_payload("first");
    EchoResponse response;
    ASSERT_TRUE(demo_->Echo(&ctx, request, &response).ok());
  }

  std::atomic<int> slow_ok{0};
  std::vector<std::thread> slow;
  for (int i = 0; i < kSlowCalls; ++i) {
    slow.emplace_back([&] {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(15)));
      EchoRequest request;
      request.set_payload("slow");
      request.mutable_fault()->set_delay_ms(
          static_cast<uint32_t>(absl::ToInt64Milliseconds(kSlowCallDelay)));
      EchoResponse response;
      if (demo_->Echo(&ctx, request, &response).ok()) ++slow_ok;
    });
  }

  // Every slow call is at the upstream at once: past its limit of 10 on one
  // connection, so on several.
  uint32_t in_flight = 0;
  EXPECT_TRUE(PollUntil(
      [&] {
        in_flight = Stats().in_flight();
        return in_flight >= static_cast<uint32_t>(kSlowCalls);
      },
      kSlowCallDelay))
      << "upstream in flight: " << in_flight;

  // Calls on the other route answer at once meanwhile.
  int quick_ok = 0;
  absl::Duration slowest;
  for (int i = 0; i < 10; ++i) {
    const absl::Time start = absl::Now();
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(start + absl::Seconds(5)));
    StreamRequest request;
    request.set_payload("quick");
    request.set_count(1);
    auto reader = demo_->ServerStream(&ctx, request);
    EchoResponse response;
    int messages = 0;
    while (reader->Read(&response)) ++messages;
    const grpc::Status status = reader->Finish();
    slowest = std::max(slowest, absl::Now() - start);
    if (status.ok() && messages == 1) ++quick_ok;
  }
  EXPECT_EQ(quick_ok, 10);
  EXPECT_LT(slowest, absl::Milliseconds(900));

  for (std::thread& t : slow) t.join();
  EXPECT_EQ(slow_ok.load(), kSlowCalls);
  EXPECT_GE(Stats().max_in_flight(), static_cast<uint32_t>(kSlowCalls));

  // No health check timed out or failed while the calls filled the
  // connections, and the endpoint stayed in.
  const std::string metrics = Metrics();
  EXPECT_EQ(
      SumOfSeries(metrics, "bulwark_health_checks_total", "result=\"timeout\""),
      timeouts_before)
      << metrics;
  EXPECT_EQ(
      SumOfSeries(metrics, "bulwark_health_checks_total", "result=\"failure\""),
      failures_before)
      << metrics;
  EXPECT_EQ(SumOfSeries(metrics, "bulwark_endpoint_healthy"), 1) << metrics;
  std::cout << "[ measure ] " << in_flight << " of " << kSlowCalls
            << " slow calls in flight at the upstream at once (limit "
            << kUpstreamStreamLimit << " per connection); slowest quick call "
            << absl::FormatDuration(slowest) << "\n";
}

}  // namespace
}  // namespace bulwark::test
