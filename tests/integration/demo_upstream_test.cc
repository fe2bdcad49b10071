// Tests of bulwark-demo-upstream through a real gRPC client, and of the fixture
// that runs it. The other integration tests rely on both: on the fault
// injection, the metadata echo and the exact statistics of the upstream, and on
// the process helpers.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
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
using ::bulwark::demo::v1::StatsRequest;
using ::bulwark::demo::v1::StatsResponse;
using ::bulwark::demo::v1::StreamRequest;
using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// Generous: the machine running the tests may be loaded; no test waits this
// long when the code is right.
constexpr absl::Duration kRpcTimeout = absl::Seconds(30);
constexpr char kUserAgent[] = "bulwark-test/1.0";

void SetTimeout(grpc::ClientContext& ctx,
                absl::Duration timeout = kRpcTimeout) {
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

std::string Value(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
    const std::string& key) {
  auto it = metadata.find(key);
  if (it == metadata.end()) return "<absent>";
  return std::string(it->second.data(), it->second.size());
}

// A unary call in flight on the callback API, so a test can hold many at once.
struct PendingEcho {
  grpc::ClientContext ctx;
  EchoRequest request;
  EchoResponse response;
  grpc::Status status;
  absl::Notification done;

  void Start(Demo::Stub& stub) {
    stub.async()->Echo(&ctx, &request, &response, [this](grpc::Status s) {
      status = std::move(s);
      done.Notify();
    });
  }
  bool Wait() { return done.WaitForNotificationWithTimeout(kRpcTimeout * 2); }
};

class DemoUpstreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<DemoUpstream>> upstream =
        DemoUpstream::Start({.name = "demo-a"});
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = *std::move(upstream);
    Connect();
  }

  void Connect() {
    grpc::ChannelArguments args;
    args.SetString(GRPC_ARG_PRIMARY_USER_AGENT_STRING, kUserAgent);
    channel_ = grpc::CreateCustomChannel(
        upstream_->address(), grpc::InsecureChannelCredentials(), args);
    demo_ = Demo::NewStub(channel_);
    control_ = Control::NewStub(channel_);
    health_ = Health::NewStub(channel_);
  }

  StatsResponse Stats() {
    grpc::ClientContext ctx;
    SetTimeout(ctx);
    StatsResponse stats;
    grpc::Status status = control_->GetStats(&ctx, StatsRequest(), &stats);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return stats;
  }

  void ResetStats() {
    grpc::ClientContext ctx;
    SetTimeout(ctx);
    StatsResponse before;
    grpc::Status status = control_->ResetStats(&ctx, StatsRequest(), &before);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }

  void SetServing(const std::string& service, bool serving) {
    grpc::ClientContext ctx;
    SetTimeout(ctx);
    SetServingRequest request;
    request.set_service(service);
    request.set_serving(serving);
    Empty empty;
    grpc::Status status = control_->SetServing(&ctx, request, &empty);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }

  // Health.Check's answer, or -(status code) when the RPC itself fails.
  int HealthStatus(const std::string& service) {
    grpc::ClientContext ctx;
    SetTimeout(ctx);
    HealthCheckRequest request;
    request.set_service(service);
    HealthCheckResponse response;
    grpc::Status status = health_->Check(&ctx, request, &response);
    return status.ok() ? response.status() : -status.error_code();
  }

  std::unique_ptr<DemoUpstream> upstream_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Demo::Stub> demo_;
  std::unique_ptr<Control::Stub> control_;
  std::unique_ptr<Health::Stub> health_;
};

TEST_F(DemoUpstreamTest, EchoReturnsPayloadNameUserAgentAndDeadline) {
  grpc::ClientContext ctx;
  SetTimeout(ctx, absl::Seconds(20));
  EchoRequest request;
  request.set_payload("hello");
  EchoResponse response;
  grpc::Status status = demo_->Echo(&ctx, request, &response);

  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.payload(), "hello");
  EXPECT_EQ(response.served_by(), "demo-a");
  // gRPC C++ puts its own token first: "grpc-c++/1.51.1 bulwark-test/1.0
  // grpc-c/...".
  EXPECT_THAT(response.user_agent(), HasSubstr(kUserAgent));
  EXPECT_THAT(response.user_agent(), HasSubstr("grpc-c++"));
  EXPECT_GT(response.deadline_ms(), 0);
  EXPECT_LE(response.deadline_ms(), 20'000);
}

TEST_F(DemoUpstreamTest, EchoWithoutDeadlineReportsMinusOne) {
  grpc::ClientContext ctx;
  EchoResponse response;
  grpc::Status status = demo_->Echo(&ctx, EchoRequest(), &response);

  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.deadline_ms(), -1);
}

TEST_F(DemoUpstreamTest, EchoAnswersWithResponseBytesWhenAsked) {
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  EchoRequest request;
  request.set_payload("ignored");
  request.set_response_bytes(100'000);
  EchoResponse response;
  grpc::Status status = demo_->Echo(&ctx, request, &response);

  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.payload().size(), 100'000u);
  EXPECT_EQ(response.payload().substr(0, 3), "abc");
  EXPECT_EQ(response.payload()[99'999], static_cast<char>('a' + 99'999 % 26));
}

TEST_F(DemoUpstreamTest, EchoReturnsXMetadataInHeadersAndTrailers) {
  const std::string binary("\0\x01\xfe\xff", 4);
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  ctx.AddMetadata("x-a", "1");
  ctx.AddMetadata("x-a-bin", binary);
  ctx.AddMetadata("other", "not echoed");
  EchoResponse response;
  grpc::Status status = demo_->Echo(&ctx, EchoRequest(), &response);

  ASSERT_TRUE(status.ok()) << status.error_message();
  const auto& headers = ctx.GetServerInitialMetadata();
  EXPECT_EQ(Value(headers, "x-a"), "1");
  EXPECT_EQ(Value(headers, "x-a-bin"), binary);
  EXPECT_EQ(Value(headers, "other"), "<absent>");
  const auto& trailers = ctx.GetServerTrailingMetadata();
  EXPECT_EQ(Value(trailers, "t-x-a"), "1");
  EXPECT_EQ(Value(trailers, "t-x-a-bin"), binary);
  EXPECT_EQ(Value(trailers, "t-other"), "<absent>");
}

TEST_F(DemoUpstreamTest, EchoFinishesWithInjectedStatusMessageAndDetails) {
  const std::string details("\x08\x0e\x12\x02no\0\xff", 8);
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  ctx.AddMetadata("x-trace", "t1");
  EchoRequest request;
  request.mutable_fault()->set_status_code(grpc::StatusCode::UNAVAILABLE);
  request.mutable_fault()->set_status_message("upstream says no");
  request.mutable_fault()->set_status_details(details);
  EchoResponse response;
  grpc::Status status = demo_->Echo(&ctx, request, &response);

  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(status.error_message(), "upstream says no");
  EXPECT_EQ(status.error_details(), details);
  EXPECT_EQ(Value(ctx.GetServerTrailingMetadata(), "t-x-trace"), "t1");
}

TEST_F(DemoUpstreamTest, DelayedCallDoesNotBlockOtherCalls) {
  PendingEcho slow;
  SetTimeout(slow.ctx, absl::Minutes(5));
  slow.request.mutable_fault()->set_delay_ms(600'000);
  slow.Start(*demo_);

  for (int i = 0; i < 5; ++i) {
    grpc::ClientContext ctx;
    SetTimeout(ctx);
    EchoResponse response;
    grpc::Status status = demo_->Echo(&ctx, EchoRequest(), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  EXPECT_FALSE(slow.done.HasBeenNotified());

  slow.ctx.TryCancel();
  ASSERT_TRUE(slow.Wait());
  EXPECT_EQ(slow.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(
      PollUntil([&] { return Stats().cancelled_total() == 1; }, kRpcTimeout));
}

TEST_F(DemoUpstreamTest, DelaysOfConcurrentCallsOverlap) {
  constexpr int kCalls = 10;
  constexpr absl::Duration kDelay = absl::Seconds(2);
  std::vector<std::unique_ptr<PendingEcho>> calls;
  const absl::Time start = absl::Now();
  for (int i = 0; i < kCalls; ++i) {
    auto call = std::make_unique<PendingEcho>();
    SetTimeout(call->ctx);
    call->request.set_payload(absl::StrCat(i));
    call->request.mutable_fault()->set_delay_ms(
        absl::ToInt64Milliseconds(kDelay));
    call->Start(*demo_);
    calls.push_back(std::move(call));
  }
  for (auto& call : calls) {
    ASSERT_TRUE(call->Wait());
    EXPECT_TRUE(call->status.ok()) << call->status.error_message();
  }
  const absl::Duration elapsed = absl::Now() - start;

  EXPECT_GE(elapsed, kDelay);
  // One after the other they would take kCalls * kDelay = 20s.
  EXPECT_LT(elapsed, kDelay * kCalls * 3 / 4);
}

TEST_F(DemoUpstreamTest, HangEndsAtDeadlineAndCountsAsCancelled) {
  ResetStats();
  grpc::ClientContext ctx;
  SetTimeout(ctx, absl::Milliseconds(300));
  EchoRequest request;
  request.mutable_fault()->set_hang(true);
  EchoResponse response;
  grpc::Status status = demo_->Echo(&ctx, request, &response);

  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(PollUntil(
      [&] {
        StatsResponse stats = Stats();
        return stats.cancelled_total() == 1 && stats.in_flight() == 0;
      },
      kRpcTimeout))
      << Stats().DebugString();
  EXPECT_EQ(Stats().calls_total(), 1u);
}

TEST_F(DemoUpstreamTest, ServerStreamSendsAThousandMessagesInOrder) {
  grpc::ClientContext ctx;
  SetTimeout(ctx, absl::Minutes(2));
  ctx.AddMetadata("x-s", "v");
  StreamRequest request;
  request.set_payload("0123456789");
  request.set_count(1000);
  std::unique_ptr<grpc::ClientReader<EchoResponse>> reader =
      demo_->ServerStream(&ctx, request);

  EchoResponse message;
  uint64_t received = 0;
  while (reader->Read(&message)) {
    ASSERT_EQ(message.sequence(), received);
    ASSERT_EQ(message.payload(), "0123456789");
    ++received;
  }
  grpc::Status status = reader->Finish();

  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(received, 1000u);
  EXPECT_EQ(Value(ctx.GetServerInitialMetadata(), "x-s"), "v");
  EXPECT_EQ(Value(ctx.GetServerTrailingMetadata(), "t-x-s"), "v");
}

TEST_F(DemoUpstreamTest, ServerStreamSpacesMessagesByInterval) {
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  StreamRequest request;
  request.set_count(3);
  request.set_interval_ms(200);
  const absl::Time start = absl::Now();
  std::unique_ptr<grpc::ClientReader<EchoResponse>> reader =
      demo_->ServerStream(&ctx, request);
  EchoResponse message;
  int received = 0;
  while (reader->Read(&message)) ++received;
  grpc::Status status = reader->Finish();

  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(received, 3);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(400));
}

TEST_F(DemoUpstreamTest, ServerStreamFailsAfterMessages) {
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  StreamRequest request;
  request.set_count(10);
  request.mutable_fault()->set_fail_after_messages(3);
  request.mutable_fault()->set_status_code(grpc::StatusCode::ABORTED);
  request.mutable_fault()->set_status_message("enough");
  std::unique_ptr<grpc::ClientReader<EchoResponse>> reader =
      demo_->ServerStream(&ctx, request);
  EchoResponse message;
  int received = 0;
  while (reader->Read(&message)) ++received;
  grpc::Status status = reader->Finish();

  EXPECT_EQ(received, 3);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(status.error_message(), "enough");
}

TEST_F(DemoUpstreamTest, ServerStreamEndsWhenClientCancels) {
  ResetStats();
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  StreamRequest request;
  request.set_count(1'000'000);
  request.set_interval_ms(1);
  std::unique_ptr<grpc::ClientReader<EchoResponse>> reader =
      demo_->ServerStream(&ctx, request);
  EchoResponse message;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(reader->Read(&message));
  ctx.TryCancel();
  while (reader->Read(&message)) {
  }
  grpc::Status status = reader->Finish();

  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(PollUntil(
      [&] {
        StatsResponse stats = Stats();
        return stats.cancelled_total() == 1 && stats.in_flight() == 0;
      },
      kRpcTimeout))
      << Stats().DebugString();
}

TEST_F(DemoUpstreamTest, ClientStreamReportsMessagesBytesAndConcatenation) {
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  EchoResponse response;
  std::unique_ptr<grpc::ClientWriter<EchoRequest>> writer =
      demo_->ClientStream(&ctx, &response);
  for (const char* payload : {"a", "bb", "ccc"}) {
    EchoRequest request;
    request.set_payload(payload);
    ASSERT_TRUE(writer->Write(request));
  }
  ASSERT_TRUE(writer->WritesDone());
  grpc::Status status = writer->Finish();

  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.payload(), "abbccc");
  EXPECT_EQ(response.sequence(), 3u);
  EXPECT_EQ(response.total_bytes(), 6u);
  EXPECT_EQ(response.served_by(), "demo-a");
}

TEST_F(DemoUpstreamTest, ClientStreamFailsAfterMessages) {
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  EchoResponse response;
  std::unique_ptr<grpc::ClientWriter<EchoRequest>> writer =
      demo_->ClientStream(&ctx, &response);
  EchoRequest first;
  first.mutable_fault()->set_fail_after_messages(2);
  first.mutable_fault()->set_status_code(grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(writer->Write(first));
  ASSERT_TRUE(writer->Write(EchoRequest()));
  // The server may finish before or after this half-close arrives: either is
  // fine.
  writer->WritesDone();
  grpc::Status status = writer->Finish();

  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(DemoUpstreamTest, BidiAnswersEachMessageInTurn) {
  grpc::ClientContext ctx;
  SetTimeout(ctx, absl::Minutes(2));
  ctx.AddMetadata("x-b", "bidi");
  std::unique_ptr<grpc::ClientReaderWriter<EchoRequest, EchoResponse>> stream =
      demo_->Bidi(&ctx);
  for (int i = 0; i < 100; ++i) {
    EchoRequest request;
    request.set_payload(absl::StrCat("ping ", i));
    ASSERT_TRUE(stream->Write(request));
    EchoResponse response;
    ASSERT_TRUE(stream->Read(&response));
    ASSERT_EQ(response.payload(), absl::StrCat("ping ", i));
    ASSERT_EQ(response.sequence(), static_cast<uint64_t>(i));
  }
  ASSERT_TRUE(stream->WritesDone());
  EchoResponse extra;
  EXPECT_FALSE(stream->Read(&extra));
  grpc::Status status = stream->Finish();

  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Value(ctx.GetServerInitialMetadata(), "x-b"), "bidi");
  EXPECT_EQ(Value(ctx.GetServerTrailingMetadata(), "t-x-b"), "bidi");
}

TEST_F(DemoUpstreamTest, BidiFailsAfterMessages) {
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  std::unique_ptr<grpc::ClientReaderWriter<EchoRequest, EchoResponse>> stream =
      demo_->Bidi(&ctx);
  EchoRequest first;
  first.mutable_fault()->set_fail_after_messages(2);
  first.mutable_fault()->set_status_code(grpc::StatusCode::RESOURCE_EXHAUSTED);
  first.mutable_fault()->set_status_message("two is enough");
  EchoResponse response;
  ASSERT_TRUE(stream->Write(first));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_TRUE(stream->Write(EchoRequest()));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_FALSE(stream->Read(&response));
  grpc::Status status = stream->Finish();

  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(status.error_message(), "two is enough");
}

TEST_F(DemoUpstreamTest, HealthCheckFollowsSetServingPerService) {
  const std::string demo_service = Demo::service_full_name();
  EXPECT_EQ(HealthStatus(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(HealthStatus(demo_service), HealthCheckResponse::SERVING);
  EXPECT_EQ(HealthStatus("no.such.Service"), -grpc::StatusCode::NOT_FOUND);

  SetServing(demo_service, false);
  EXPECT_EQ(HealthStatus(demo_service), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(HealthStatus(""), HealthCheckResponse::SERVING);

  SetServing("", false);
  EXPECT_EQ(HealthStatus(""), HealthCheckResponse::NOT_SERVING);
  SetServing(demo_service, true);
  EXPECT_EQ(HealthStatus(demo_service), HealthCheckResponse::SERVING);
}

TEST_F(DemoUpstreamTest, HealthWatchStreamsEveryChange) {
  const std::string demo_service = Demo::service_full_name();
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  HealthCheckRequest request;
  request.set_service(demo_service);
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> watch =
      health_->Watch(&ctx, request);
  HealthCheckResponse update;

  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);
  SetServing(demo_service, false);
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  SetServing(demo_service, true);
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);

  ctx.TryCancel();
  while (watch->Read(&update)) {
  }
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(DemoUpstreamTest, StatsAreExactUnderFiftyConcurrentCalls) {
  constexpr int kCalls = 50;
  ResetStats();
  std::vector<std::unique_ptr<PendingEcho>> hanging;
  for (int i = 0; i < kCalls; ++i) {
    auto call = std::make_unique<PendingEcho>();
    SetTimeout(call->ctx, absl::Minutes(5));
    call->request.mutable_fault()->set_hang(true);
    call->Start(*demo_);
    hanging.push_back(std::move(call));
  }
  ASSERT_TRUE(
      PollUntil([&] { return Stats().in_flight() == kCalls; }, kRpcTimeout))
      << Stats().DebugString();
  StatsResponse stats = Stats();
  EXPECT_EQ(stats.calls_total(), kCalls);
  EXPECT_EQ(stats.max_in_flight(), kCalls);
  EXPECT_EQ(stats.cancelled_total(), 0u);

  for (auto& call : hanging) call->ctx.TryCancel();
  for (auto& call : hanging) {
    ASSERT_TRUE(call->Wait());
    EXPECT_EQ(call->status.error_code(), grpc::StatusCode::CANCELLED);
  }
  ASSERT_TRUE(PollUntil(
      [&] {
        StatsResponse s = Stats();
        return s.in_flight() == 0 && s.cancelled_total() == kCalls;
      },
      kRpcTimeout))
      << Stats().DebugString();
  EXPECT_EQ(Stats().calls_total(), kCalls);

  // Completed calls are counted before their answers leave: exact without
  // polling.
  ResetStats();
  std::vector<std::unique_ptr<PendingEcho>> quick;
  for (int i = 0; i < kCalls; ++i) {
    auto call = std::make_unique<PendingEcho>();
    SetTimeout(call->ctx);
    call->Start(*demo_);
    quick.push_back(std::move(call));
  }
  for (auto& call : quick) {
    ASSERT_TRUE(call->Wait());
    EXPECT_TRUE(call->status.ok()) << call->status.error_message();
  }
  stats = Stats();
  EXPECT_EQ(stats.calls_total(), kCalls);
  EXPECT_EQ(stats.in_flight(), 0u);
  EXPECT_EQ(stats.cancelled_total(), 0u);
  EXPECT_GE(stats.max_in_flight(), 1u);
  EXPECT_LE(stats.max_in_flight(), kCalls);
}

TEST_F(DemoUpstreamTest, SigtermWithACallInFlightExitsZero) {
  PendingEcho hanging;
  SetTimeout(hanging.ctx, absl::Minutes(5));
  hanging.request.mutable_fault()->set_hang(true);
  hanging.Start(*demo_);
  ASSERT_TRUE(PollUntil([&] { return Stats().in_flight() == 1; }, kRpcTimeout));

  absl::Status stopped = upstream_->Stop();

  EXPECT_TRUE(stopped.ok()) << stopped;
  ASSERT_TRUE(hanging.Wait());
  EXPECT_FALSE(hanging.status.ok());
}

TEST_F(DemoUpstreamTest, RestartServesOnTheSamePort) {
  const int port = upstream_->port();

  absl::Status restarted = upstream_->Restart();

  ASSERT_TRUE(restarted.ok()) << restarted;
  EXPECT_EQ(upstream_->port(), port);
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  ctx.set_wait_for_ready(true);
  EchoRequest request;
  request.set_payload("again");
  EchoResponse response;
  grpc::Status status = demo_->Echo(&ctx, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.payload(), "again");
}

// The fixture itself.

TEST(ChildProcessTest, ReportsExitCodeAndCapturesOutput) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(
      "/bin/sh", {"-c", "echo to-stdout; echo to-stderr >&2; exit 3"});
  ASSERT_TRUE(child.ok()) << child.status();

  absl::StatusOr<ExitStatus> exit = (*child)->Wait(kRpcTimeout);

  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->ExitedWith(3)) << exit->ToString();
  EXPECT_THAT((*child)->Log(), HasSubstr("to-stdout"));
  EXPECT_THAT((*child)->Log(), HasSubstr("to-stderr"));
}

TEST(ChildProcessTest, StopKillsAChildThatIgnoresSigterm) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(
      "/bin/sh",
      {"-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"});
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_TRUE(
      PollUntil([&] { return absl::StrContains((*child)->Log(), "ready"); },
                kRpcTimeout));

  ExitStatus exit = (*child)->Stop(absl::Milliseconds(200));

  EXPECT_FALSE(exit.exited);
  EXPECT_EQ(exit.signal, SIGKILL);
}

TEST(ChildProcessTest, StartFailsWhenTheBinaryIsMissing) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child =
      ChildProcess::Start("/nonexistent/bulwark-binary", {});

  ASSERT_FALSE(child.ok());
  EXPECT_THAT(std::string(child.status().message()),
              HasSubstr("/nonexistent/bulwark-binary"));
}

TEST(ChildProcessTest, WaitForPortFileFailsFastWhenTheChildExits) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child =
      ChildProcess::Start("/bin/sh", {"-c", "echo cannot-start; exit 1"});
  ASSERT_TRUE(child.ok()) << child.status();
  const absl::Time start = absl::Now();

  absl::StatusOr<int> port = WaitForPortFile(TempDir() + "/never-written",
                                             absl::Minutes(10), child->get());

  EXPECT_EQ(port.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(port.status().message()), HasSubstr("cannot-start"));
  EXPECT_LT(absl::Now() - start, absl::Minutes(1));
}

TEST(HttpGetTest, ReadsStatusAndChunkedBody) {
  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener, 1), 0);
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::string request;
  std::thread server([&] {
    const int conn = accept(listener, nullptr, nullptr);
    if (conn < 0) return;
    char buffer[4096];
    while (!absl::StrContains(request, "\r\n\r\n")) {
      const ssize_t n = read(conn, buffer, sizeof buffer);
      if (n <= 0) break;
      request.append(buffer, static_cast<size_t>(n));
    }
    const std::string answer =
        "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nnot r\r\n4\r\neady\r\n0\r\n\r\n";
    (void)!write(conn, answer.data(), answer.size());
    close(conn);
  });

  int status_code = 0;
  absl::StatusOr<std::string> body =
      HttpGet("127.0.0.1", ntohs(addr.sin_port), "/readyz", &status_code);
  server.join();
  close(listener);

  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(status_code, 503);
  EXPECT_EQ(*body, "not ready");
  EXPECT_THAT(request, StartsWith("GET /readyz HTTP/1.1\r\n"));
}

TEST(PickFreePortTest, ReturnsABindablePort) {
  const int port = PickFreePort();
  ASSERT_GT(port, 0);
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  close(fd);
}

}  // namespace
}  // namespace bulwark::test
