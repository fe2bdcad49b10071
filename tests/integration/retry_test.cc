// Retries, hedging and outlier detection through the real binaries (SPEC
// section 9, issue 18): three bulwark-demo-upstreams on loopback behind one
// sidecar, one of them failing every call (--fail_code=14, its health checks
// still passing) or ten times slower (--delay), and a route on
// bulwark.demo.v1.Demo with the demo descriptor set (Echo is marked
// NO_SIDE_EFFECTS, Write is not). What each upstream saw is read from its own
// Control.GetStats, so "sent twice" is counted where it happens.
// Waiting polls against deadlines.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
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

constexpr absl::Duration kPollTimeout = absl::Seconds(30);

std::string DescriptorSet() {
  return (std::filesystem::path(BinaryPath("bulwark-demo-upstream"))
              .parent_path()
              .parent_path() /
          "proto" / "demo_descriptor_set.pb")
      .string();
}

class RetryTest : public ::testing::Test {
 protected:
  // Three upstreams, the last started with `bad_args`; a sidecar with
  // `cluster_extra` (YAML lines of the cluster) and `routes` (the routes:
  // block).
  void Start(std::vector<std::string> bad_args, const std::string& cluster,
             const std::string& routes,
             std::vector<std::string> good_args = {}) {
    for (int i = 0; i < 3; ++i) {
      absl::StatusOr<std::unique_ptr<DemoUpstream>> upstream =
          DemoUpstream::Start({.extra_args = i == 2 ? bad_args : good_args});
      ASSERT_TRUE(upstream.ok()) << upstream.status();
      upstreams_.push_back(*std::move(upstream));
    }
    const std::string dir = TempDir();
    const std::string config = absl::StrCat(dir, "/bulwark.yaml");
    ASSERT_TRUE(
        WriteFile(config, absl::StrCat(R"(
listener: { address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
workers: 2
descriptor_sets: [")",
                                       DescriptorSet(), R"("]
clusters:
  - name: demo
    endpoints: [")",
                                       upstreams_[0]->address(), "\", \"",
                                       upstreams_[1]->address(), "\", \"",
                                       upstreams_[2]->address(), R"("]
)",
                                       cluster, "routes:\n", routes))
            .ok());
    absl::StatusOr<StartedSidecar> started =
        StartSidecar(config, absl::StrCat(dir, "/bulwark.log"), kPollTimeout);
    ASSERT_TRUE(started.ok()) << started.status();
    sidecar_ = std::move(started->process);
    admin_port_ = started->admin_port;
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", started->port),
                                   grpc::InsecureChannelCredentials());
    stub_ = Demo::NewStub(channel_);
  }

  void TearDown() override {
    if (sidecar_ != nullptr) {
      if (HasFailure()) std::cerr << "sidecar log:\n" << sidecar_->Log();
      sidecar_->Stop(absl::Seconds(10));
    }
    for (auto& upstream : upstreams_) (void)upstream->Stop();
  }

  grpc::Status Call(bool write, absl::Duration* took = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    EchoRequest request;
    request.set_payload("x");
    EchoResponse response;
    const absl::Time start = absl::Now();
    grpc::Status status = write ? stub_->Write(&ctx, request, &response)
                                : stub_->Echo(&ctx, request, &response);
    if (took != nullptr) *took = absl::Now() - start;
    return status;
  }

  // Demo calls each upstream has seen (Control.GetStats).
  std::vector<uint64_t> UpstreamCalls() {
    std::vector<uint64_t> calls;
    for (auto& upstream : upstreams_) {
      auto control = Control::NewStub(grpc::CreateChannel(
          upstream->address(), grpc::InsecureChannelCredentials()));
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      demo::v1::StatsRequest request;
      demo::v1::StatsResponse stats;
      EXPECT_TRUE(control->GetStats(&ctx, request, &stats).ok());
      calls.push_back(stats.calls_total());
    }
    return calls;
  }
  uint64_t TotalUpstreamCalls() {
    uint64_t total = 0;
    for (uint64_t n : UpstreamCalls()) total += n;
    return total;
  }

  void SetServing(DemoUpstream& upstream, bool serving) {
    auto control = Control::NewStub(grpc::CreateChannel(
        upstream.address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    demo::v1::SetServingRequest request;
    request.set_serving(serving);
    demo::v1::Empty empty;
    ASSERT_TRUE(control->SetServing(&ctx, request, &empty).ok());
  }

  std::string Admin(const std::string& path) {
    absl::StatusOr<std::string> body =
        HttpGet("127.0.0.1", admin_port_, path, nullptr);
    return body.ok() ? *body : "";
  }
  double Metric(std::string_view name, std::string_view label) {
    return MetricValue(Admin("/metrics"), name, label);
  }
  // The endpoint object of `upstream` in /routes.
  std::string EndpointJson(const DemoUpstream& upstream) {
    const std::string routes = Admin("/routes");
    const size_t at =
        routes.find(absl::StrCat("\"resolved\": \"", upstream.address()));
    if (at == std::string::npos) return "";
    return routes.substr(at, routes.find('}', at) - at);
  }
  bool Ejected(const DemoUpstream& upstream) {
    return absl::StrContains(EndpointJson(upstream), "\"ejected\": true");
  }

  std::vector<std::unique_ptr<DemoUpstream>> upstreams_;
  std::unique_ptr<ChildProcess> sidecar_;
  int admin_port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Demo::Stub> stub_;
};

constexpr char kRetryRoute[] = R"(  - name: demo
    match: { service: bulwark.demo.v1.Demo }
    cluster: demo
    retry: { max_attempts: 3 }
)";

TEST_F(RetryTest, RetriesTurnOneFailingEndpointsErrorsIntoOk) {
  Start({"--fail_code=14"}, "", kRetryRoute);
  int ok = 0;
  for (int i = 0; i < 150; ++i) ok += Call(/*write=*/false).ok() ? 1 : 0;
  EXPECT_EQ(ok, 150);
  const std::vector<uint64_t> calls = UpstreamCalls();
  EXPECT_GT(calls[2], 20u) << "the failing endpoint took its share";
  EXPECT_GT(Metric("bulwark_upstream_attempts_total", "kind=\"retry\""), 20);
  EXPECT_EQ(Metric("bulwark_requests_total", "code=\"OK\""), 150);
}

TEST_F(RetryTest, AMethodNotMarkedIdempotentIsNeverSentTwice) {
  Start({"--fail_code=14"}, "", kRetryRoute);
  int failed = 0;
  for (int i = 0; i < 90; ++i) failed += Call(/*write=*/true).ok() ? 0 : 1;
  EXPECT_EQ(TotalUpstreamCalls(), 90u);
  EXPECT_GT(failed, 15);  // round robin: about a third failed
  EXPECT_EQ(Metric("bulwark_upstream_attempts_total", "kind=\"retry\""), -1);
}

TEST_F(RetryTest, ResourceExhaustedAndANegativePushbackAreNeverRetried) {
  Start({"--fail_code=8"}, "", R"(  - name: demo
    match: { service: bulwark.demo.v1.Demo }
    cluster: demo
    retry: { max_attempts: 3, retry_codes: [UNAVAILABLE] }
)",
        {"--fail_code=14", "--fail_pushback_ms=-1"});
  int failed = 0;
  for (int i = 0; i < 60; ++i) failed += Call(false).ok() ? 0 : 1;
  EXPECT_EQ(failed, 60);
  EXPECT_EQ(TotalUpstreamCalls(), 60u);  // each call was sent once
}

TEST_F(RetryTest, APositivePushbackIsTheDelayBeforeTheRetry) {
  Start({"--fail_code=14", "--fail_pushback_ms=300"}, "", kRetryRoute);
  int slow = 0;
  int ok = 0;
  for (int i = 0; i < 12; ++i) {
    absl::Duration took;
    ok += Call(false, &took).ok() ? 1 : 0;
    // 300 ms less the worker timer's millisecond rounding; a backoff would
    // be under 25 ms.
    slow += took >= absl::Milliseconds(250) ? 1 : 0;
  }
  EXPECT_EQ(ok, 12);
  // Every call that went first to the failing endpoint (its retry goes to
  // another) waited its 300 ms pushback, not the 25 ms backoff; no other did.
  const uint64_t to_failing = UpstreamCalls()[2];
  EXPECT_GE(to_failing, 2u);
  EXPECT_EQ(static_cast<uint64_t>(slow), to_failing);
}

TEST_F(RetryTest, TheBudgetHoldsUpstreamCallsWhileEveryEndpointFails) {
  Start({"--fail_code=14"}, "", R"(  - name: demo
    match: { service: bulwark.demo.v1.Demo }
    cluster: demo
    retry: { max_attempts: 5, budget: { ratio: 0.2, min_per_second: 1 } }
)",
        {"--fail_code=14"});
  constexpr int kCalls = 400;
  for (int i = 0; i < kCalls; ++i) EXPECT_FALSE(Call(false).ok());
  const uint64_t upstream = TotalUpstreamCalls();
  std::cout << "upstream calls for " << kCalls << " client calls: " << upstream
            << "\n";
  // ratio x calls, or min_per_second x 10 s, whichever is larger.
  EXPECT_LE(upstream, kCalls * 1.2 + 10);
  EXPECT_GE(upstream, kCalls * 1.1);  // the budget was spent, not left idle
  // Most calls found the budget spent (each counts once, when it stops).
  EXPECT_GT(Metric("bulwark_retry_budget_exhausted_total", "route=\"demo\""),
            kCalls * 0.7);
}

TEST_F(RetryTest, HedgingCutsTheP99WhenOneEndpointIsTenTimesSlower) {
  // Echo hedged after 15 ms; Write (not idempotent) unhedged, as the control.
  Start({"--delay=60ms"}, "    load_balancing: LEAST_REQUEST\n",
        R"(  - name: hedged
    match: { service: bulwark.demo.v1.Demo, method: Echo }
    cluster: demo
    retry: { max_attempts: 2, hedge_delay: 15ms,
             budget: { ratio: 0.5, min_per_second: 50 } }
  - name: plain
    match: { service: bulwark.demo.v1.Demo, method: Write }
    cluster: demo
)",
        {"--delay=6ms"});
  auto p99 = [&](bool write) {
    std::vector<absl::Duration> took(4 * 60);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 60; ++i) {
          EXPECT_TRUE(Call(write, &took[t * 60 + i]).ok());
        }
      });
    }
    for (auto& thread : threads) thread.join();
    std::sort(took.begin(), took.end());
    return took[took.size() * 99 / 100];
  };
  const absl::Duration plain = p99(/*write=*/true);
  const absl::Duration hedged = p99(/*write=*/false);
  const double hedges =
      Metric("bulwark_upstream_attempts_total", "kind=\"hedge\"");
  std::cout << "p99 without hedging " << plain << ", with hedging " << hedged
            << " (" << hedges << " hedges for 240 calls)\n";
  EXPECT_GE(plain, absl::Milliseconds(55));  // the slow endpoint shows
  EXPECT_LE(hedged, plain * 0.6);
  EXPECT_GT(hedges, 0);
  // The losing attempts were cancelled: the slow upstream saw the cancels.
  auto control = Control::NewStub(grpc::CreateChannel(
      upstreams_[2]->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  demo::v1::StatsRequest request;
  demo::v1::StatsResponse stats;
  ASSERT_TRUE(control->GetStats(&ctx, request, &stats).ok());
  EXPECT_GT(stats.cancelled_total(), 0u);
}

constexpr char kOutlierCluster[] = R"(    outlier_detection:
      consecutive_failures: 3
      base_ejection_time: 2s
      min_available: 1
)";
constexpr char kPlainRoute[] = R"(  - name: demo
    match: { service: bulwark.demo.v1.Demo }
    cluster: demo
)";

TEST_F(RetryTest, PeakEwmaSendsATenTimesSlowerEndpointAlmostNoCalls) {
  // LEAST_REQUEST would send the slow endpoint about 1 call in 21 here (as
  // many in flight on each, each call there 10x as long): some 28 of 600.
  Start({"--delay=60ms"}, "    load_balancing: PEAK_EWMA\n", kPlainRoute,
        {"--delay=6ms"});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 150; ++i) EXPECT_TRUE(Call(false).ok());
    });
  }
  for (auto& thread : threads) thread.join();
  const std::vector<uint64_t> calls = UpstreamCalls();
  std::cout << "calls per upstream (the last 10x slower): " << calls[0] << ", "
            << calls[1] << ", " << calls[2] << "\n";
  EXPECT_EQ(calls[0] + calls[1] + calls[2], 600u);
  // Its first answer (60 ms) prices it out for seconds: the calls sent before
  // that answer came back (one or two), and a few more if a fast endpoint's
  // answer is held up (a scheduling stall on a loaded machine) long enough to
  // price it above 60 ms.
  EXPECT_LE(calls[2], 10u);
  EXPECT_GE(calls[2], 1u);  // tried once: a new endpoint costs nothing
  // /routes shows the estimate it was priced by.
  const std::string slow = EndpointJson(*upstreams_[2]);
  constexpr std::string_view kField = "\"latency_estimate_ms\": ";
  const size_t at = slow.find(kField);
  ASSERT_NE(at, std::string::npos) << slow;
  const double estimate_ms =
      std::strtod(slow.c_str() + at + kField.size(), nullptr);
  EXPECT_GE(estimate_ms, 50) << slow;
  EXPECT_LE(estimate_ms, 1000) << slow;
}

TEST_F(RetryTest, OutlierDetectionEjectsAFailingEndpointAndReturnsIt) {
  Start({"--fail_code=14"}, kOutlierCluster, kPlainRoute);
  DemoUpstream& bad = *upstreams_[2];
  ASSERT_TRUE(PollUntil(
      [&] {
        Call(false);
        return Ejected(bad);
      },
      kPollTimeout))
      << EndpointJson(bad);
  EXPECT_TRUE(absl::StrContains(EndpointJson(bad), "\"ejections\": 1"))
      << EndpointJson(bad);
  // While it is ejected, every call goes to the good endpoints.
  const uint64_t bad_before = UpstreamCalls()[2];
  int ok = 0;
  for (int i = 0; i < 30 && Ejected(bad); ++i) ok += Call(false).ok() ? 1 : 0;
  if (Ejected(bad)) {
    EXPECT_EQ(UpstreamCalls()[2], bad_before);
    EXPECT_EQ(ok, 30);
  }
  EXPECT_EQ(Metric("bulwark_outlier_ejections_total", bad.address()), 1);
  // base_ejection_time later it takes calls again.
  ASSERT_TRUE(PollUntil(
      [&] {
        Call(false);
        return !Ejected(bad) && UpstreamCalls()[2] > bad_before;
      },
      kPollTimeout))
      << EndpointJson(bad);
}

TEST_F(RetryTest, OutlierDetectionNeverEjectsBelowMinAvailable) {
  Start({"--fail_code=14"}, R"(    outlier_detection:
      consecutive_failures: 2
      min_available: 2
)",
        kPlainRoute, {"--fail_code=14"});
  for (int i = 0; i < 60; ++i) Call(false);
  int ejected = 0;
  for (auto& upstream : upstreams_) ejected += Ejected(*upstream) ? 1 : 0;
  EXPECT_EQ(ejected, 1);
}

TEST_F(RetryTest, WatchNotServingEjectsAtOnceAndServingEndsIt) {
  Start({}, absl::StrCat(kOutlierCluster, R"(    health_check:
      mode: WATCH
      interval: 5s
      unhealthy_threshold: 3
)"),
        kPlainRoute);
  DemoUpstream& upstream = *upstreams_[1];
  const absl::Time start = absl::Now();
  SetServing(upstream, false);
  ASSERT_TRUE(PollUntil([&] { return Ejected(upstream); }, kPollTimeout));
  // At once: long before three 5 s heartbeats could mark it unhealthy.
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  EXPECT_TRUE(absl::StrContains(EndpointJson(upstream), "\"healthy\": true"))
      << EndpointJson(upstream);
  EXPECT_TRUE(absl::StrContains(EndpointJson(upstream),
                                "\"ejected_until_serving\": true"));
  SetServing(upstream, true);
  ASSERT_TRUE(PollUntil([&] { return !Ejected(upstream); }, kPollTimeout));
}

}  // namespace
}  // namespace bulwark::test
