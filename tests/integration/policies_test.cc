// The policies through the real binaries: the bulwark sidecar between real gRPC
// C++ clients and bulwark-demo-upstream, each test with its own configuration.
// What the upstream saw is read from its Control service, what the sidecar
// decided from its answers and /metrics.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
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
using ::testing::HasSubstr;

constexpr char kEchoRoute[] = R"(
  - name: echo
    match: { service: bulwark.demo.v1.Demo, method: Echo }
    cluster: demo
)";

// The demo upstream plus a sidecar in front of it, configured with
// `routes_yaml` (the `routes:` entries for Echo) and a Control route.
class Sidecar {
 public:
  static std::unique_ptr<Sidecar> Start(const std::string& routes_yaml) {
    auto s = std::unique_ptr<Sidecar>(new Sidecar());
    auto upstream = DemoUpstream::Start();
    EXPECT_TRUE(upstream.ok()) << upstream.status();
    if (!upstream.ok()) return nullptr;
    s->upstream_ = std::move(*upstream);
    s->port_ = PickFreePort();
    s->admin_port_ = PickFreePort();
    const std::string config = absl::StrCat(
        "listener: { address: \"127.0.0.1:", s->port_, "\" }\n",
        "admin: { address: \"127.0.0.1:", s->admin_port_, "\" }\n",
        "workers: 2\n", "drain_timeout: 2s\n", "clusters:\n",
        "  - name: demo\n", "    endpoints: [\"", s->upstream_->address(),
        "\"]\n", "routes:\n", routes_yaml, "  - name: control\n",
        "    match: { service: bulwark.demo.v1.Control }\n",
        "    cluster: demo\n");
    const std::string path = TempDir() + "/bulwark.yaml";
    EXPECT_TRUE(WriteFile(path, config).ok());
    auto child = ChildProcess::Start(BinaryPath("bulwark"), {"--config", path});
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return nullptr;
    s->process_ = std::move(*child);
    EXPECT_TRUE(
        WaitForTcpPort(s->port_, absl::Seconds(20), s->process_.get()).ok());
    EXPECT_TRUE(
        WaitForTcpPort(s->admin_port_, absl::Seconds(20), s->process_.get())
            .ok());
    s->channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", s->port_),
                                      grpc::InsecureChannelCredentials());
    s->demo_ = Demo::NewStub(s->channel_);
    s->control_ = Control::NewStub(s->channel_);
    return s;
  }

  Demo::Stub& demo() { return *demo_; }

  StatsResponse Stats() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(10));
    StatsResponse stats;
    grpc::Status st = control_->GetStats(&ctx, StatsRequest(), &stats);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return stats;
  }

  std::string Metrics() {
    int code = 0;
    auto body = HttpGet("127.0.0.1", admin_port_, "/metrics", &code);
    return body.ok() ? *body : "";
  }

  // The value of one exposition line (`name{labels}`), or -1 if absent.
  double Metric(const std::string& series) {
    const std::string text = Metrics();
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (absl::StartsWith(line, series + " ")) {
        double v = 0;
        if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
      }
    }
    return -1;
  }

 private:
  Sidecar() = default;
  std::unique_ptr<DemoUpstream> upstream_;
  std::unique_ptr<ChildProcess> process_;
  int port_ = 0;
  int admin_port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Demo::Stub> demo_;
  std::unique_ptr<Control::Stub> control_;
};

struct CallResult {
  grpc::Status status;
  EchoResponse response;
  std::multimap<std::string, std::string> trailers;

  std::string Trailer(const std::string& key) const {
    auto it = trailers.find(key);
    return it == trailers.end() ? "" : it->second;
  }
};

CallResult Echo(
    Demo::Stub& stub, const EchoRequest& request,
    const std::vector<std::pair<std::string, std::string>>& metadata = {},
    absl::Duration deadline = absl::Seconds(10)) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  for (const auto& [k, v] : metadata) ctx.AddMetadata(k, v);
  CallResult result;
  result.status = stub.Echo(&ctx, request, &result.response);
  for (const auto& [k, v] : ctx.GetServerTrailingMetadata()) {
    result.trailers.emplace(std::string(k.data(), k.size()),
                            std::string(v.data(), v.size()));
  }
  return result;
}

EchoRequest Payload(std::string payload) {
  EchoRequest request;
  request.set_payload(std::move(payload));
  return request;
}

// Counts finished calls; Wait blocks until `n` are done.
class Countdown {
 public:
  explicit Countdown(int n) : left_(n) {}
  void Done() {
    absl::MutexLock lock(&mu_);
    --left_;
  }
  void Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int* left) { return *left == 0; }, &left_));
  }

 private:
  absl::Mutex mu_;
  int left_;
};

// Runs `n` Echo calls at once (callback API) and returns their results.
std::vector<CallResult> ConcurrentEchos(
    Demo::Stub& stub, int n,
    const std::function<EchoRequest(int)>& make_request,
    const std::function<std::vector<std::pair<std::string, std::string>>(int)>&
        metadata = nullptr,
    const std::function<void(
        std::vector<std::unique_ptr<grpc::ClientContext>>&)>& while_running =
        nullptr) {
  std::vector<CallResult> results(n);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts(n);
  std::vector<EchoRequest> requests(n);
  Countdown countdown(n);
  for (int i = 0; i < n; ++i) {
    contexts[i] = std::make_unique<grpc::ClientContext>();
    contexts[i]->set_deadline(std::chrono::system_clock::now() +
                              std::chrono::seconds(30));
    if (metadata) {
      for (const auto& [k, v] : metadata(i)) contexts[i]->AddMetadata(k, v);
    }
    requests[i] = make_request(i);
  }
  for (int i = 0; i < n; ++i) {
    stub.async()->Echo(
        contexts[i].get(), &requests[i], &results[i].response,
        [&results, &countdown, &contexts, i](grpc::Status status) {
          results[i].status = std::move(status);
          for (const auto& [k, v] : contexts[i]->GetServerTrailingMetadata()) {
            results[i].trailers.emplace(std::string(k.data(), k.size()),
                                        std::string(v.data(), v.size()));
          }
          countdown.Done();
        });
  }
  if (while_running) while_running(contexts);
  countdown.Wait();
  return results;
}

EchoRequest Delayed(std::string payload, int delay_ms) {
  EchoRequest request = Payload(std::move(payload));
  request.mutable_fault()->set_delay_ms(delay_ms);
  return request;
}

EchoRequest Failing(std::string payload, grpc::StatusCode code) {
  EchoRequest request = Payload(std::move(payload));
  request.mutable_fault()->set_status_code(code);
  request.mutable_fault()->set_status_message("injected");
  return request;
}

TEST(PoliciesTest, RateLimitBurstThenResourceExhaustedWithReasonAndPushback) {
  auto s = Sidecar::Start(absl::StrCat(
      kEchoRoute, "    rate_limit: { requests_per_second: 1, burst: 5 }\n"));
  ASSERT_NE(s, nullptr);
  for (int i = 0; i < 5; ++i) {
    CallResult r = Echo(s->demo(), Payload("p"));
    ASSERT_TRUE(r.status.ok()) << i << ": " << r.status.error_message();
  }
  CallResult rejected = Echo(s->demo(), Payload("p"));
  EXPECT_EQ(rejected.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(rejected.Trailer("x-bulwark-reason"), "rate_limited");
  int pushback = -1;
  ASSERT_TRUE(
      absl::SimpleAtoi(rejected.Trailer("grpc-retry-pushback-ms"), &pushback))
      << rejected.Trailer("grpc-retry-pushback-ms");
  EXPECT_GT(pushback, 0);
  EXPECT_LE(pushback, 1000);
  EXPECT_EQ(s->Stats().calls_total(), 5u);
  EXPECT_EQ(
      s->Metric(
          "bulwark_rejections_total{reason=\"rate_limited\",route=\"echo\"}"),
      1);
  EXPECT_EQ(
      s->Metric(
          "bulwark_requests_total{code=\"RESOURCE_EXHAUSTED\",route=\"echo\"}"),
      1);
  EXPECT_EQ(s->Metric("bulwark_requests_total{code=\"OK\",route=\"echo\"}"), 5);
}

TEST(PoliciesTest, ARejectionCarriesStatusDetailsWithErrorInfoAndRetryInfo) {
  auto s = Sidecar::Start(absl::StrCat(
      kEchoRoute, "    rate_limit: { requests_per_second: 1, burst: 1 }\n"));
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(Echo(s->demo(), Payload("p")).status.ok());
  CallResult rejected = Echo(s->demo(), Payload("p"));
  ASSERT_EQ(rejected.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  int pushback = -1;
  ASSERT_TRUE(
      absl::SimpleAtoi(rejected.Trailer("grpc-retry-pushback-ms"), &pushback));

  // gRPC C++ decoded grpc-status-details-bin into error_details().
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(rejected.status.error_details()))
      << "error_details: " << rejected.status.error_details().size()
      << " bytes";
  EXPECT_EQ(details.code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(details.message(), rejected.status.error_message());
  ASSERT_EQ(details.details_size(), 2) << details.DebugString();
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(details.details(0).UnpackTo(&info)) << details.DebugString();
  EXPECT_EQ(info.reason(), "rate_limited");
  EXPECT_EQ(info.domain(), "bulwark.io");
  EXPECT_EQ(info.metadata().count("route") == 1 ? info.metadata().at("route")
                                                : "<absent>",
            "echo");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(details.details(1).UnpackTo(&retry)) << details.DebugString();
  EXPECT_EQ(retry.retry_delay().seconds() * 1000 +
                retry.retry_delay().nanos() / 1000000,
            pushback);
}

TEST(PoliciesTest, KeyedBucketsAreIndependentPerClient) {
  auto s = Sidecar::Start(
      absl::StrCat(kEchoRoute,
                   "    rate_limit: { requests_per_second: 0.01, burst: 2, "
                   "key_header: x-client-id }\n"));
  ASSERT_NE(s, nullptr);
  auto call = [&](const std::string& client) {
    return Echo(s->demo(), Payload("p"), {{"x-client-id", client}})
        .status.error_code();
  };
  EXPECT_EQ(call("a"), grpc::StatusCode::OK);
  EXPECT_EQ(call("a"), grpc::StatusCode::OK);
  EXPECT_EQ(call("a"), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(call("b"), grpc::StatusCode::OK);
  EXPECT_EQ(call("b"), grpc::StatusCode::OK);
  EXPECT_EQ(call("b"), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s->Stats().calls_total(), 4u);
}

TEST(PoliciesTest,
     BreakerOpensOnUnavailableNotOnInvalidArgumentThenProbesAndCloses) {
  auto s = Sidecar::Start(
      absl::StrCat(kEchoRoute,
                   "    circuit_breaker: { consecutive_failures: 3, "
                   "failure_rate: 1.0, minimum_requests: "
                   "1000, open_duration: 1s, half_open_requests: 1 }\n"));
  ASSERT_NE(s, nullptr);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Echo(s->demo(), Failing("p", grpc::StatusCode::INVALID_ARGUMENT))
                  .status.error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_EQ(
      s->Metric(
          "bulwark_circuit_breaker_state{route=\"echo\",state=\"closed\"}"),
      1);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Echo(s->demo(), Failing("p", grpc::StatusCode::UNAVAILABLE))
                  .status.error_code(),
              grpc::StatusCode::UNAVAILABLE);
  }
  const uint64_t upstream_calls = s->Stats().calls_total();
  EXPECT_EQ(upstream_calls, 8u);
  CallResult open = Echo(s->demo(), Payload("p"));
  EXPECT_EQ(open.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(open.Trailer("x-bulwark-reason"), "circuit_open");
  int pushback = -1;
  ASSERT_TRUE(
      absl::SimpleAtoi(open.Trailer("grpc-retry-pushback-ms"), &pushback));
  EXPECT_GT(pushback, 0);
  EXPECT_LE(pushback, 1000);
  for (int i = 0; i < 10; ++i) Echo(s->demo(), Payload("p"));
  EXPECT_EQ(s->Stats().calls_total(), upstream_calls)
      << "the upstream saw calls while open";
  EXPECT_EQ(
      s->Metric("bulwark_circuit_breaker_state{route=\"echo\",state=\"open\"}"),
      1);

  // After open_duration one probe passes; its success closes the breaker.
  ASSERT_TRUE(
      PollUntil([&] { return Echo(s->demo(), Payload("p")).status.ok(); },
                absl::Seconds(10)));
  EXPECT_EQ(s->Stats().calls_total(), upstream_calls + 1);
  EXPECT_EQ(
      s->Metric(
          "bulwark_circuit_breaker_state{route=\"echo\",state=\"closed\"}"),
      1);
  EXPECT_EQ(s->Metric("bulwark_circuit_breaker_transitions_total{route="
                      "\"echo\",to=\"open\"}"),
            1);
  EXPECT_EQ(s->Metric("bulwark_circuit_breaker_transitions_total{route="
                      "\"echo\",to=\"half_open\"}"),
            1);
  EXPECT_EQ(s->Metric("bulwark_circuit_breaker_transitions_total{route="
                      "\"echo\",to=\"closed\"}"),
            1);
}

TEST(PoliciesTest, FiftyConcurrentIdenticalCallsMakeOneUpstreamCall) {
  auto s = Sidecar::Start(absl::StrCat(kEchoRoute, "    singleflight: {}\n"));
  ASSERT_NE(s, nullptr);
  std::vector<CallResult> results =
      ConcurrentEchos(s->demo(), 50, [](int) { return Delayed("same", 1000); });
  for (const CallResult& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.response.payload(), "same");
    EXPECT_EQ(r.response.SerializeAsString(),
              results[0].response.SerializeAsString());
  }
  EXPECT_EQ(s->Stats().calls_total(), 1u);
  EXPECT_EQ(
      s->Metric(
          "bulwark_singleflight_calls_total{role=\"leader\",route=\"echo\"}"),
      1);
  EXPECT_EQ(
      s->Metric(
          "bulwark_singleflight_calls_total{role=\"follower\",route=\"echo\"}"),
      49);
  EXPECT_EQ(s->Metric("bulwark_requests_total{code=\"OK\",route=\"echo\"}"),
            50);
}

TEST(PoliciesTest, DifferentBodiesOrCredentialsAreNotCoalesced) {
  auto s = Sidecar::Start(absl::StrCat(kEchoRoute, "    singleflight: {}\n"));
  ASSERT_NE(s, nullptr);
  std::vector<CallResult> bodies = ConcurrentEchos(s->demo(), 10, [](int i) {
    return Delayed(absl::StrCat("body-", i), 300);
  });
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(bodies[i].status.ok());
    EXPECT_EQ(bodies[i].response.payload(), absl::StrCat("body-", i));
  }
  EXPECT_EQ(s->Stats().calls_total(), 10u);
  std::vector<CallResult> creds = ConcurrentEchos(
      s->demo(), 10, [](int) { return Delayed("same", 300); },
      [](int i) {
        return std::vector<std::pair<std::string, std::string>>{
            {"authorization", i % 2 == 0 ? "Bearer alice" : "Bearer bob"}};
      });
  for (const CallResult& r : creds) ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(s->Stats().calls_total(), 12u);
}

TEST(PoliciesTest, FollowerCancellingLeavesTheOthersAnswersIntact) {
  auto s = Sidecar::Start(absl::StrCat(kEchoRoute, "    singleflight: {}\n"));
  ASSERT_NE(s, nullptr);
  std::vector<CallResult> results = ConcurrentEchos(
      s->demo(), 3, [](int) { return Delayed("same", 1000); }, nullptr,
      [&](std::vector<std::unique_ptr<grpc::ClientContext>>& contexts) {
        // Once the flight is open upstream, one follower leaves.
        PollUntil([&] { return s->Stats().in_flight() == 1; },
                  absl::Seconds(10));
        contexts[2]->TryCancel();
      });
  EXPECT_TRUE(results[0].status.ok()) << results[0].status.error_message();
  EXPECT_TRUE(results[1].status.ok()) << results[1].status.error_message();
  EXPECT_EQ(results[0].response.payload(), "same");
  EXPECT_EQ(results[2].status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(s->Stats().calls_total(), 1u);
}

TEST(PoliciesTest, LastCallerLeavingCancelsTheUpstreamCall) {
  auto s = Sidecar::Start(absl::StrCat(kEchoRoute, "    singleflight: {}\n"));
  ASSERT_NE(s, nullptr);
  EchoRequest hang = Payload("hang");
  hang.mutable_fault()->set_hang(true);
  ConcurrentEchos(
      s->demo(), 2, [&](int) { return hang; }, nullptr,
      [&](std::vector<std::unique_ptr<grpc::ClientContext>>& contexts) {
        PollUntil([&] { return s->Stats().in_flight() == 1; },
                  absl::Seconds(10));
        contexts[0]->TryCancel();
        contexts[1]->TryCancel();
      });
  EXPECT_TRUE(PollUntil(
      [&] {
        StatsResponse stats = s->Stats();
        return stats.in_flight() == 0 && stats.cancelled_total() == 1;
      },
      absl::Seconds(10)));
}

TEST(PoliciesTest, MaxInFlightTwoHoldsUnderABurstOfHundred) {
  auto s =
      Sidecar::Start(absl::StrCat(kEchoRoute,
                                  "    concurrency: { max_in_flight: 2, "
                                  "max_queued: 200, queue_timeout: 20s }\n"));
  ASSERT_NE(s, nullptr);
  std::vector<CallResult> results = ConcurrentEchos(
      s->demo(), 100, [](int i) { return Delayed(absl::StrCat("p", i), 10); });
  for (const CallResult& r : results)
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  StatsResponse stats = s->Stats();
  EXPECT_EQ(stats.calls_total(), 100u);
  EXPECT_EQ(stats.max_in_flight(), 2u);
}

TEST(PoliciesTest, QueueTimeoutAndFullQueueAnswerWithTheirReasons) {
  auto s =
      Sidecar::Start(absl::StrCat(kEchoRoute,
                                  "    concurrency: { max_in_flight: 1, "
                                  "max_queued: 1, queue_timeout: 100ms }\n"));
  ASSERT_NE(s, nullptr);
  std::vector<CallResult> results = ConcurrentEchos(
      s->demo(), 1, [](int) { return Delayed("slow", 2000); }, nullptr,
      [&](std::vector<std::unique_ptr<grpc::ClientContext>>&) {
        PollUntil([&] { return s->Stats().in_flight() == 1; },
                  absl::Seconds(10));
        // One waits in the queue and times out; meanwhile another finds the
        // queue full.
        std::vector<CallResult> waiting = ConcurrentEchos(
            s->demo(), 1, [](int) { return Payload("queued"); }, nullptr,
            [&](std::vector<std::unique_ptr<grpc::ClientContext>>&) {
              PollUntil(
                  [&] {
                    return s->Metric(
                               "bulwark_concurrency_queued{route=\"echo\"}") ==
                           1;
                  },
                  absl::Seconds(5));
              CallResult full = Echo(s->demo(), Payload("full"));
              EXPECT_EQ(full.status.error_code(),
                        grpc::StatusCode::RESOURCE_EXHAUSTED);
              EXPECT_EQ(full.Trailer("x-bulwark-reason"), "concurrency_limit");
            });
        EXPECT_EQ(waiting[0].status.error_code(),
                  grpc::StatusCode::RESOURCE_EXHAUSTED);
        EXPECT_EQ(waiting[0].Trailer("x-bulwark-reason"), "queue_timeout");
      });
  EXPECT_TRUE(results[0].status.ok());
  EXPECT_EQ(s->Stats().calls_total(), 1u);
}

TEST(PoliciesTest, QueuedCallsProceedAsSlotsFree) {
  auto s =
      Sidecar::Start(absl::StrCat(kEchoRoute,
                                  "    concurrency: { max_in_flight: 1, "
                                  "max_queued: 10, queue_timeout: 10s }\n"));
  ASSERT_NE(s, nullptr);
  std::vector<CallResult> results = ConcurrentEchos(
      s->demo(), 5, [](int i) { return Delayed(absl::StrCat("p", i), 100); });
  for (const CallResult& r : results)
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(s->Stats().max_in_flight(), 1u);
}

TEST(PoliciesTest, ShadowRateLimitCountsButAdmitsEveryCall) {
  auto s = Sidecar::Start(absl::StrCat(kEchoRoute,
                                       "    rate_limit: { requests_per_second: "
                                       "0.01, burst: 1, shadow: true }\n"));
  ASSERT_NE(s, nullptr);
  for (int i = 0; i < 5; ++i)
    EXPECT_TRUE(Echo(s->demo(), Payload("p")).status.ok());
  EXPECT_EQ(s->Stats().calls_total(), 5u);
  EXPECT_EQ(s->Metric("bulwark_shadow_rejections_total{reason=\"rate_limited\","
                      "route=\"echo\"}"),
            4);
  EXPECT_EQ(
      s->Metric(
          "bulwark_rejections_total{reason=\"rate_limited\",route=\"echo\"}"),
      -1);
}

TEST(PoliciesTest, ShadowSingleflightForwardsEachCallAndCountsCoalesced) {
  auto s = Sidecar::Start(
      absl::StrCat(kEchoRoute, "    singleflight: { shadow: true }\n"));
  ASSERT_NE(s, nullptr);
  std::vector<CallResult> results =
      ConcurrentEchos(s->demo(), 10, [](int) { return Delayed("same", 500); });
  for (const CallResult& r : results) ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(s->Stats().calls_total(), 10u);
  EXPECT_EQ(s->Metric("bulwark_shadow_rejections_total{reason=\"coalesced\","
                      "route=\"echo\"}"),
            9);
}

}  // namespace
}  // namespace bulwark::test
