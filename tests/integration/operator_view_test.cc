// What an operator sees, through the real binaries (SPEC section 10): the
// access log (one JSON line per finished call, with the answering endpoint,
// the reason of a local answer and the trace id from traceparent; reopened on
// SIGHUP for rotation) and the per-method series.
//
// The sidecar runs in front of bulwark-demo-upstream; a gRPC client calls it.
// Waiting polls against deadlines; nothing sleeps.
#include <signal.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
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
using ::testing::HasSubstr;

constexpr absl::Duration kPollTimeout = absl::Seconds(30);
constexpr char kTraceparent[] =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

std::vector<std::string> Lines(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return {};
  return absl::StrSplit(*text, '\n', absl::SkipEmpty());
}

class OperatorViewTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<DemoUpstream>> upstream =
        DemoUpstream::Start();
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = *std::move(upstream);
    dir_ = TempDir();
    log_path_ = absl::StrCat(dir_, "/access.log");
    const std::string config = absl::StrCat(dir_, "/bulwark.yaml");
    ASSERT_TRUE(WriteFile(config, absl::StrCat(R"(
listener: { address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
workers: 1
access_log: { path: ")",
                                               log_path_, R"(" }
clusters:
  - name: demo
    endpoints: [")",
                                               upstream_->address(), R"("]
routes:
  - name: limited
    match: { service: bulwark.demo.v1.Demo, method: Echo }
    cluster: demo
    rate_limit: { requests_per_second: 0.001, burst: 1 }
  - name: rest
    match: { prefix: /bulwark.demo.v1. }
    cluster: demo
)"))
                    .ok());
    absl::StatusOr<StartedSidecar> started =
        StartSidecar(config, absl::StrCat(dir_, "/bulwark.log"), kPollTimeout);
    ASSERT_TRUE(started.ok()) << started.status();
    sidecar_ = std::move(started->process);
    port_ = started->port;
    admin_port_ = started->admin_port;
    demo_ = Demo::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (sidecar_ == nullptr) return;
    EXPECT_TRUE(sidecar_->Running()) << sidecar_->Log();
    const ExitStatus exit = sidecar_->Stop(absl::Seconds(20));
    EXPECT_TRUE(exit.ExitedWith(0)) << exit.ToString() << "\n"
                                    << sidecar_->Log();
  }

  grpc::Status Echo(bool traced) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    if (traced) ctx.AddMetadata("traceparent", kTraceparent);
    EchoRequest request;
    request.set_payload("hello");
    EchoResponse response;
    return demo_->Echo(&ctx, request, &response);
  }

  grpc::Status Stream() {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    bulwark::demo::v1::StreamRequest request;
    request.set_count(2);
    auto reader = demo_->ServerStream(&ctx, request);
    EchoResponse response;
    while (reader->Read(&response)) {
    }
    return reader->Finish();
  }

  std::unique_ptr<DemoUpstream> upstream_;
  std::unique_ptr<ChildProcess> sidecar_;
  std::unique_ptr<Demo::Stub> demo_;
  std::string dir_;
  std::string log_path_;
  int port_ = 0;
  int admin_port_ = 0;
};

TEST_F(OperatorViewTest, EachCallIsOneJsonLineAndSighupReopensTheFile) {
  ASSERT_TRUE(Echo(/*traced=*/true).ok());
  const grpc::Status limited = Echo(/*traced=*/false);
  ASSERT_EQ(limited.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  std::vector<std::string> lines;
  ASSERT_TRUE(PollUntil(
      [&] {
        lines = Lines(log_path_);
        return lines.size() >= 2;
      },
      kPollTimeout));
  ASSERT_EQ(lines.size(), 2u);
  // The forwarded call: its endpoint, upstream time, one attempt, bytes, and
  // the trace id.
  EXPECT_THAT(lines[0], HasSubstr("\"route\": \"limited\", \"method\": "
                                  "\"bulwark.demo.v1.Demo/Echo\", \"peer\": "
                                  "\"127.0.0.1:"));
  EXPECT_THAT(lines[0],
              HasSubstr(absl::StrCat("\"endpoint\": \"", upstream_->address(),
                                     "\", \"code\": \"OK\", "
                                     "\"reason\": null")));
  EXPECT_THAT(lines[0], HasSubstr("\"attempts\": 1, \"singleflight\": null"));
  EXPECT_THAT(lines[0], HasSubstr("\"trace_id\": "
                                  "\"4bf92f3577b34da6a3ce929d0e0e4736\""));
  EXPECT_THAT(lines[0], ::testing::Not(HasSubstr("\"upstream_ms\": null")));
  // Request: a 5-byte prefix and the 7-byte message.
  EXPECT_THAT(lines[0], HasSubstr("\"request_bytes\": 12"));
  EXPECT_TRUE(absl::StartsWith(lines[0], "{\"time\": \"20")) << lines[0];
  // The local answer: its reason, no endpoint, no attempt.
  EXPECT_THAT(lines[1], HasSubstr("\"endpoint\": null, \"code\": "
                                  "\"RESOURCE_EXHAUSTED\", \"reason\": "
                                  "\"rate_limited\""));
  EXPECT_THAT(lines[1], HasSubstr("\"upstream_ms\": null, \"attempts\": 0"));
  EXPECT_THAT(lines[1], ::testing::Not(HasSubstr("trace_id")));

  // Rotation: the file is moved away and SIGHUP sent; the next call's line is
  // in a new file at the path.
  const std::string rotated = log_path_ + ".1";
  ASSERT_EQ(std::rename(log_path_.c_str(), rotated.c_str()), 0);
  ASSERT_TRUE(sidecar_->Signal(SIGHUP).ok());
  ASSERT_TRUE(PollUntil(
      [&] {
        // Calls until one lands in the new file (the reopen happens on the
        // writer's thread, just after the signal).
        EXPECT_TRUE(Stream().ok());
        return !Lines(log_path_).empty();
      },
      kPollTimeout));
  const std::vector<std::string> after = Lines(log_path_);
  EXPECT_THAT(after.back(), HasSubstr("\"route\": \"rest\", \"method\": "
                                      "\"bulwark.demo.v1.Demo/ServerStream\""));
  EXPECT_GE(Lines(rotated).size(), 2u);

  // The per-method series name the exact-method route's method; the broad
  // route's method, which no descriptor set names, is _OTHER.
  int code = 0;
  absl::StatusOr<std::string> metrics =
      HttpGet("127.0.0.1", admin_port_, "/metrics", &code);
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(*metrics, HasSubstr("bulwark_method_requests_total{code=\"OK\","
                                  "method=\"bulwark.demo.v1.Demo/Echo\","
                                  "route=\"limited\"} 1"));
  EXPECT_THAT(*metrics, HasSubstr("bulwark_method_requests_total{code=\"OK\","
                                  "method=\"_OTHER\",route=\"rest\"}"));
  EXPECT_THAT(*metrics, HasSubstr("bulwark_access_log_dropped_total 0"));
}

}  // namespace
}  // namespace bulwark::test
