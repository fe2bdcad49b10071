// The status page (GET / on the admin port, SPEC section 10) in a real
// browser: Debian's chromium, headless, loads the page (its script fetches
// /routes and renders the tables) and dumps the DOM. While the sidecar runs
// in front of bulwark-demo-upstream, the test opens the route's breaker
// (failing calls) and turns the endpoint unhealthy (Control.SetServing), and
// the page must show both, from /routes; the same page without JavaScript
// (the server's own rendering) must show them too. Skips, saying why, where
// chromium is missing or cannot start.
#include <stdio.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
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

using ::bulwark::demo::v1::Control;
using ::bulwark::demo::v1::Demo;
using ::bulwark::demo::v1::EchoRequest;
using ::bulwark::demo::v1::EchoResponse;
using ::bulwark::demo::v1::Empty;
using ::bulwark::demo::v1::SetServingRequest;
using ::testing::HasSubstr;

constexpr absl::Duration kPollTimeout = absl::Seconds(30);
constexpr char kChromium[] = "/usr/bin/chromium";

// The DOM chromium renders for `url` after the page's scripts ran (its
// virtual time budget lets the first /routes fetch land), or the reason it
// could not.
absl::StatusOr<std::string> DumpDom(const std::string& url,
                                    const std::string& profile_dir) {
  const std::string command = absl::StrCat(
      "timeout 60 ", kChromium,
      " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage"
      " --no-first-run --user-data-dir='",
      profile_dir, "' --virtual-time-budget=3000 --dump-dom '", url,
      "' 2>/dev/null");
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::UnavailableError("popen failed");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  const int status = pclose(pipe);
  if (status != 0 || out.empty()) {
    return absl::UnavailableError(absl::StrCat("chromium exited with status ",
                                               status, " and ", out.size(),
                                               " bytes of output"));
  }
  return out;
}

class StatusPageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kChromium)) {
      GTEST_SKIP() << "chromium is not installed (apt-get install chromium)";
    }
    absl::StatusOr<std::unique_ptr<DemoUpstream>> upstream =
        DemoUpstream::Start({.name = "a"});
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = *std::move(upstream);
    control_ = Control::NewStub(grpc::CreateChannel(
        upstream_->address(), grpc::InsecureChannelCredentials()));
    dir_ = TempDir();
    const std::string config = absl::StrCat(dir_, "/bulwark.yaml");
    ASSERT_TRUE(WriteFile(config, absl::StrCat(R"(
listener: { address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
workers: 1
clusters:
  - name: demo
    endpoints: [")",
                                               upstream_->address(), R"("]
    health_check: { mode: CHECK, interval: 200ms, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 1 }
routes:
  - name: orders<&>
    match: { service: bulwark.demo.v1.Demo, method: Echo }
    cluster: demo
    circuit_breaker: { consecutive_failures: 3, open_duration: 60s }
    concurrency: { max_in_flight: 8 }
)"))
                    .ok());
    absl::StatusOr<StartedSidecar> started =
        StartSidecar(config, absl::StrCat(dir_, "/bulwark.log"), kPollTimeout);
    ASSERT_TRUE(started.ok()) << started.status();
    sidecar_ = std::move(started->process);
    port_ = started->port;
    admin_port_ = started->admin_port;
    url_ = absl::StrCat("http://127.0.0.1:", admin_port_, "/");
  }

  void TearDown() override {
    if (sidecar_ == nullptr) return;
    EXPECT_TRUE(sidecar_->Running()) << sidecar_->Log();
    const ExitStatus exit = sidecar_->Stop(absl::Seconds(20));
    EXPECT_TRUE(exit.ExitedWith(0)) << exit.ToString() << "\n"
                                    << sidecar_->Log();
  }

  std::string Routes() {
    int code = 0;
    absl::StatusOr<std::string> body =
        HttpGet("127.0.0.1", admin_port_, "/routes", &code);
    return body.ok() ? *body : "";
  }

  std::unique_ptr<DemoUpstream> upstream_;
  std::unique_ptr<Control::Stub> control_;
  std::unique_ptr<ChildProcess> sidecar_;
  std::string dir_;
  std::string url_;
  int port_ = 0;
  int admin_port_ = 0;
};

TEST_F(StatusPageTest, ShowsABreakerOpeningAndAnEndpointGoingUnhealthy) {
  // Healthy and closed first, as rendered by the page's script from /routes.
  ASSERT_TRUE(PollUntil(
      [&] { return absl::StrContains(Routes(), "\"healthy\": true"); },
      kPollTimeout));
  absl::StatusOr<std::string> before =
      DumpDom(url_, absl::StrCat(dir_, "/chromium"));
  if (!before.ok())
    GTEST_SKIP() << "chromium cannot start: " << before.status();
  EXPECT_THAT(*before, HasSubstr("live, updated"));
  EXPECT_THAT(*before,
              HasSubstr("data-route=\"orders&lt;&amp;&gt;\" "
                        "data-breaker=\"closed\" data-source=\"routes\""));
  EXPECT_THAT(*before,
              HasSubstr(absl::StrCat(
                  "data-endpoint=\"", upstream_->address(),
                  "\" data-health=\"healthy\" data-source=\"routes\"")));

  // Three failing calls open the breaker.
  auto demo = Demo::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials()));
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    EchoRequest request;
    request.mutable_fault()->set_status_code(
        static_cast<int>(grpc::StatusCode::UNAVAILABLE));
    EchoResponse response;
    demo->Echo(&ctx, request, &response);
  }
  ASSERT_TRUE(PollUntil(
      [&] { return absl::StrContains(Routes(), "\"state\": \"open\""); },
      kPollTimeout))
      << Routes();
  // The endpoint turns NOT_SERVING: the health check marks it unhealthy.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    SetServingRequest request;
    request.set_serving(false);
    Empty response;
    ASSERT_TRUE(control_->SetServing(&ctx, request, &response).ok());
  }
  ASSERT_TRUE(PollUntil(
      [&] { return absl::StrContains(Routes(), "\"healthy\": false"); },
      kPollTimeout))
      << Routes();

  absl::StatusOr<std::string> after =
      DumpDom(url_, absl::StrCat(dir_, "/chromium"));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_THAT(*after,
              HasSubstr("data-route=\"orders&lt;&amp;&gt;\" "
                        "data-breaker=\"open\" data-source=\"routes\""));
  EXPECT_THAT(*after, HasSubstr("<span class=\"state open\">open</span>"));
  EXPECT_THAT(*after,
              HasSubstr(absl::StrCat("data-endpoint=\"", upstream_->address(),
                                     "\" data-health=\"unhealthy\" "
                                     "data-source=\"routes\"")));
  EXPECT_THAT(*after, HasSubstr("rejections (1 min)"));
  EXPECT_THAT(*after, HasSubstr("live, updated"));

  // Without JavaScript: the server's own rendering says the same.
  int code = 0;
  absl::StatusOr<std::string> page =
      HttpGet("127.0.0.1", admin_port_, "/", &code);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(code, 200);
  EXPECT_THAT(*page, HasSubstr("data-route=\"orders&lt;&amp;&gt;\" "
                               "data-breaker=\"open\" data-source=\"server\""));
  EXPECT_THAT(*page, HasSubstr("data-health=\"unhealthy\" "
                               "data-source=\"server\""));
  // Nothing is fetched from elsewhere.
  EXPECT_THAT(*page, ::testing::Not(HasSubstr("src=")));
  EXPECT_THAT(*page, ::testing::Not(HasSubstr("href=")));
}

}  // namespace
}  // namespace bulwark::test
