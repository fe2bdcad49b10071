// The `bulwark` binary as operators meet it (SPEC sections 1, 2, 4, 5, 6): its
// command line, exit codes and error messages, the admin endpoints of a running
// sidecar, draining on SIGTERM / SIGINT, start-up failures, and reloads on
// SIGHUP and on a change of the config file.
//
// Every wait polls against a generous deadline: the machine may be loaded.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/process.h"

namespace bulwark::test {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Generous deadlines: no test waits this long when the code is right.
constexpr absl::Duration kStartTimeout = absl::Seconds(60);
constexpr absl::Duration kPollTimeout = absl::Seconds(30);
constexpr absl::Duration kExitTimeout = absl::Seconds(60);
// The drain_timeout of the running sidecars; SIGTERM must end the process
// within it plus kExitSlack.
constexpr absl::Duration kDrainTimeout = absl::Seconds(3);
constexpr absl::Duration kExitSlack = absl::Seconds(15);

constexpr char kPromtool[] = "/usr/bin/promtool";
constexpr char kJq[] = "/usr/bin/jq";

// ---------------------------------------------------------------------------
// Helpers.

// Writes `content` to a temporary file next to `path`, then renames it over
// `path`: the sidecar's file watcher never sees a half-written file.
absl::Status WriteFileAtomically(const std::string& path,
                                 std::string_view content) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  if (absl::Status st = WriteFile(tmp, content); !st.ok()) return st;
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("rename ", tmp, " -> ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

struct CliResult {
  ExitStatus exit;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs `bulwark args...` to completion, with stdout and stderr kept apart (a
// shell redirects stderr to a file of its own).
CliResult RunBulwark(std::vector<std::string> args) {
  CliResult result;
  const std::string dir = TempDir();
  const std::string out_path = absl::StrCat(dir, "/stdout");
  const std::string err_path = absl::StrCat(dir, "/stderr");
  std::vector<std::string> sh_args = {
      "-c", "exec \"$0\" \"$@\" 2>\"$BULWARK_TEST_STDERR\"",
      BinaryPath("bulwark")};
  sh_args.insert(sh_args.end(), args.begin(), args.end());
  auto child = ChildProcess::Start(
      "/bin/sh", std::move(sh_args),
      {.env = {absl::StrCat("BULWARK_TEST_STDERR=", err_path)},
       .log_path = out_path});
  if (!child.ok()) {
    ADD_FAILURE() << "cannot start bulwark: " << child.status();
    return result;
  }
  absl::StatusOr<ExitStatus> exit = (*child)->Wait(kExitTimeout);
  if (!exit.ok()) {
    ADD_FAILURE() << exit.status();
    result.exit = (*child)->Stop(absl::ZeroDuration());
  } else {
    result.exit = *exit;
  }
  result.out = ReadFile(out_path).value_or("<no stdout>");
  result.err = ReadFile(err_path).value_or("<no stderr>");
  return result;
}

// The HTTP status of a raw request to 127.0.0.1:`port` (for methods HttpFetch
// does not send).
absl::StatusOr<int> RawHttpStatus(int port, std::string_view request) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect: ", strerror(errno)));
  }
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n =
        send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      close(fd);
      return absl::UnavailableError(absl::StrCat("send: ", strerror(errno)));
    }
    sent += static_cast<size_t>(n);
  }
  std::string raw;
  const absl::Time deadline = absl::Now() + kPollTimeout;
  char buffer[4096];
  while (raw.find("\r\n") == std::string::npos && absl::Now() < deadline) {
    pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 1000) <= 0) continue;
    const ssize_t n = recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) break;
    raw.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  // "HTTP/1.1 405 Method Not Allowed"
  std::vector<std::string> parts =
      absl::StrSplit(raw.substr(0, raw.find("\r\n")), ' ');
  int status = 0;
  if (parts.size() < 2 || !absl::StartsWith(parts[0], "HTTP/") ||
      !absl::SimpleAtoi(parts[1], &status)) {
    return absl::DataLossError(absl::StrCat("bad HTTP response: ", raw));
  }
  return status;
}

// Runs `command` through the shell with `input` on its stdin; returns its exit
// code and combined output.
struct ShellResult {
  int exit_code = -1;
  std::string output;
};
ShellResult RunWithInput(const std::string& command, std::string_view input) {
  ShellResult result;
  const std::string input_path = absl::StrCat(TempDir(), "/input");
  if (absl::Status st = WriteFile(input_path, input); !st.ok()) {
    result.output = st.ToString();
    return result;
  }
  const std::string full = absl::StrCat(command, " < '", input_path, "' 2>&1");
  FILE* pipe = popen(full.c_str(), "r");
  if (pipe == nullptr) {
    result.output = absl::StrCat("popen: ", strerror(errno));
    return result;
  }
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) {
    result.output.append(buffer, n);
  }
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

bool IsExecutable(const char* path) { return access(path, X_OK) == 0; }

// Checks that `body` is one valid JSON document, when jq is installed.
void ExpectValidJson(std::string_view body, std::string_view what) {
  if (!IsExecutable(kJq)) {
    std::cerr << "note: " << kJq << " missing; not checking that " << what
              << " is valid JSON\n";
    return;
  }
  ShellResult jq = RunWithInput(absl::StrCat(kJq, " -e type"), body);
  EXPECT_EQ(jq.exit_code, 0)
      << what << " is not valid JSON: " << jq.output << "\n"
      << body;
}

// The value of the series spelled exactly `series` (name and labels) in a
// Prometheus text exposition.
std::optional<double> MetricValue(std::string_view exposition,
                                  std::string_view series) {
  const absl::string_view text(exposition.data(), exposition.size());
  const std::string prefix =
      absl::StrCat(absl::string_view(series.data(), series.size()), " ");
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, prefix)) continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    double value;
    if (!fields.empty() && absl::SimpleAtod(fields[0], &value)) return value;
  }
  return std::nullopt;
}

// A port that accepts no connection: bound and listening, owned by the test.
class BusyPort {
 public:
  BusyPort() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd_ < 0 ||
        bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        listen(fd_, 1) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "BusyPort: " << strerror(errno);
      return;
    }
    port_ = ntohs(addr.sin_port);
  }
  ~BusyPort() {
    if (fd_ >= 0) close(fd_);
  }
  BusyPort(const BusyPort&) = delete;
  BusyPort& operator=(const BusyPort&) = delete;
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// ---------------------------------------------------------------------------
// Configurations.

struct ConfigParams {
  int listen_port = 0;
  int admin_port = 0;
  std::string upstream = "127.0.0.1:50051";
  std::string burst = "10";
  std::string extra_top_level;  // YAML lines inserted at the top level
};

std::string MakeConfig(const ConfigParams& p) {
  return absl::StrCat(R"(# written by cli_test
listener:
  address: "127.0.0.1:)",
                      p.listen_port, R"("
admin:
  address: "127.0.0.1:)",
                      p.admin_port, R"("
drain_timeout: )",
                      absl::FormatDuration(kDrainTimeout), R"(
workers: 1
)",
                      p.extra_top_level, R"(
clusters:
  - name: demo
    endpoints: [")",
                      p.upstream, R"("]
routes:
  - name: echo
    match:
      service: bulwark.demo.v1.Demo
      method: Echo
    cluster: demo
    rate_limit:
      requests_per_second: 50
      burst: )",
                      p.burst, R"(
  - name: all
    match: {}
    cluster: demo
)");
}

// Writes a config for --validate into a fresh directory; returns its path.
std::string WriteTempConfig(std::string_view content) {
  const std::string path = absl::StrCat(TempDir(), "/bulwark.yaml");
  EXPECT_TRUE(WriteFile(path, content).ok());
  return path;
}

// ---------------------------------------------------------------------------
// Command line.

TEST(CliTest, VersionPrintsNameAndVersion) {
  CliResult r = RunBulwark({"--version"});
  EXPECT_TRUE(r.exit.ExitedWith(0)) << r.exit.ToString();
  EXPECT_EQ(r.out, absl::StrCat("bulwark ", BULWARK_VERSION, "\n"));
  EXPECT_EQ(r.err, "");
}

TEST(CliTest, HelpPrintsUsageAndExitsZero) {
  CliResult r = RunBulwark({"--help"});
  EXPECT_TRUE(r.exit.ExitedWith(0)) << r.exit.ToString();
  EXPECT_THAT(r.out, StartsWith("usage: bulwark --config PATH"));
  EXPECT_THAT(r.out, HasSubstr("--validate"));
  EXPECT_THAT(r.out, HasSubstr("--version"));
  EXPECT_EQ(r.err, "");
}

TEST(CliTest, NoArgumentsIsAUsageErrorNamingConfig) {
  CliResult r = RunBulwark({});
  EXPECT_TRUE(r.exit.ExitedWith(1)) << r.exit.ToString();
  EXPECT_THAT(r.err, HasSubstr("--config"));
  EXPECT_EQ(r.out, "");
}

TEST(CliTest, UnknownFlagIsAUsageError) {
  CliResult r = RunBulwark({"--no-such-flag"});
  EXPECT_TRUE(r.exit.ExitedWith(1)) << r.exit.ToString();
  EXPECT_THAT(r.err, HasSubstr("--no-such-flag"));
  EXPECT_EQ(r.out, "");
}

TEST(CliTest, ConfigWithoutAPathIsAUsageError) {
  CliResult r = RunBulwark({"--config"});
  EXPECT_TRUE(r.exit.ExitedWith(1)) << r.exit.ToString();
  EXPECT_THAT(r.err, HasSubstr("--config"));
}

TEST(CliTest, ValidateAcceptsAValidFileAndPrintsASummary) {
  const std::string path =
      WriteTempConfig(MakeConfig({.listen_port = 15000, .admin_port = 15001}));
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--config", path, "--validate"},
        std::vector<std::string>{"--validate",
                                 absl::StrCat("--config=", path)}}) {
    CliResult r = RunBulwark(args);
    EXPECT_TRUE(r.exit.ExitedWith(0)) << r.exit.ToString() << "\n" << r.err;
    EXPECT_THAT(r.out, StartsWith(absl::StrCat(path, ": valid\n")));
    EXPECT_THAT(r.out, HasSubstr("127.0.0.1:15000"));
    EXPECT_THAT(r.out, HasSubstr("clusters: 1"));
    EXPECT_THAT(r.out, HasSubstr("demo: 127.0.0.1:50051"));
    EXPECT_THAT(r.out, HasSubstr("routes: 2"));
    EXPECT_THAT(r.out, HasSubstr("echo: /bulwark.demo.v1.Demo/Echo -> demo"));
    EXPECT_EQ(r.err, "");
  }
}

TEST(CliTest, ValidateRejectsAnInvalidFileNamingFileAndFieldPath) {
  const std::string path = WriteTempConfig(
      MakeConfig({.listen_port = 15000, .admin_port = 15001, .burst = "0"}));
  CliResult r = RunBulwark({"--config", path, "--validate"});
  EXPECT_TRUE(r.exit.ExitedWith(1)) << r.exit.ToString();
  EXPECT_EQ(r.err,
            absl::StrCat(
                path, ": routes[0].rate_limit.burst: must be >= 1 (got 0)\n"));
  EXPECT_EQ(r.out, "");
}

TEST(CliTest, RunningWithAnInvalidFileExitsOneWithTheSameMessage) {
  const std::string path =
      WriteTempConfig(MakeConfig({.listen_port = PickFreePort(),
                                  .admin_port = PickFreePort(),
                                  .burst = "0"}));
  CliResult r = RunBulwark({"--config", path});
  EXPECT_TRUE(r.exit.ExitedWith(1)) << r.exit.ToString();
  EXPECT_THAT(r.err,
              HasSubstr(absl::StrCat(
                  path, ": routes[0].rate_limit.burst: must be >= 1 (got 0)")));
}

TEST(CliTest, ValidateReportsEveryErrorOfTheFile) {
  std::string config =
      MakeConfig({.listen_port = 15000, .admin_port = 15001, .burst = "0"});
  absl::StrReplaceAll({{"requests_per_second: 50", "requests_per_second: -1"}},
                      &config);
  const std::string path = WriteTempConfig(config);
  CliResult r = RunBulwark({"--config", path, "--validate"});
  EXPECT_TRUE(r.exit.ExitedWith(1)) << r.exit.ToString();
  EXPECT_THAT(r.err,
              HasSubstr(absl::StrCat(
                  path, ": routes[0].rate_limit.requests_per_second: ")));
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat(
                         path, ": routes[0].rate_limit.burst: must be >= 1")));
}

TEST(CliTest, ValidateRejectsAMissingFileNamingIt) {
  const std::string path = absl::StrCat(TempDir(), "/does-not-exist.yaml");
  CliResult r = RunBulwark({"--config", path, "--validate"});
  EXPECT_TRUE(r.exit.ExitedWith(1)) << r.exit.ToString();
  EXPECT_THAT(r.err, StartsWith(absl::StrCat(path, ": ")));
  EXPECT_THAT(r.err, HasSubstr("No such file or directory"));
  EXPECT_EQ(r.out, "");
}

TEST(CliTest, ValidateRejectsAnUnknownField) {
  std::string config = MakeConfig({.listen_port = 15000, .admin_port = 15001});
  absl::StrReplaceAll({{"    rate_limit:", "    rate_limt:"}}, &config);
  const std::string path = WriteTempConfig(config);
  CliResult r = RunBulwark({"--config", path, "--validate"});
  EXPECT_TRUE(r.exit.ExitedWith(1)) << r.exit.ToString();
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat(
                         path, ": routes[0].rate_limt: unknown field")));
  EXPECT_EQ(r.out, "");
}

// ---------------------------------------------------------------------------
// A running sidecar.

class RunningSidecarTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto upstream = DemoUpstream::Start();
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = *std::move(upstream);
    dir_ = TempDir();
    config_path_ = absl::StrCat(dir_, "/bulwark.yaml");
  }

  // Starts the sidecar on fresh ports with `params` (ports and upstream filled
  // in here) and waits until /healthz answers. A port taken by someone else
  // between PickFreePort and the bind is retried with new ports.
  void StartSidecar(ConfigParams params = {}) {
    params.upstream = upstream_->address();
    for (int attempt = 1;; ++attempt) {
      params.listen_port = PickFreePort();
      do {
        params.admin_port = PickFreePort();
      } while (params.admin_port == params.listen_port);
      params_ = params;
      ASSERT_TRUE(WriteFileAtomically(config_path_, MakeConfig(params)).ok());
      auto child = ChildProcess::Start(
          BinaryPath("bulwark"), {"--config", config_path_},
          {.log_path = absl::StrCat(dir_, "/bulwark-", attempt, ".log")});
      ASSERT_TRUE(child.ok()) << child.status();
      sidecar_ = *std::move(child);
      absl::Status up =
          WaitForTcpPort(params.admin_port, kStartTimeout, sidecar_.get());
      // Someone else may have answered on the admin port: ours must be up.
      if (up.ok() && sidecar_->Running()) break;
      if (up.ok()) {
        up = absl::FailedPreconditionError(absl::StrCat(
            "bulwark ended while starting; its log:\n", sidecar_->Log()));
      }
      const bool port_race =
          !sidecar_->Running() &&
          absl::StrContains(sidecar_->Log(), "Address already in use");
      if (!port_race || attempt == 3) {
        FAIL() << up;
      }
    }
    ASSERT_TRUE(PollUntil(
        [&] {
          int code = 0;
          auto body =
              HttpGet("127.0.0.1", params_.admin_port, "/healthz", &code);
          return body.ok() && code == 200;
        },
        kPollTimeout))
        << "no /healthz 200";
  }

  // GET `path` on the admin port; fails the test if the request fails.
  HttpResponse Get(std::string_view path) {
    auto response = HttpFetch("127.0.0.1", params_.admin_port, path);
    EXPECT_TRUE(response.ok()) << path << ": " << response.status();
    return response.ok() ? *std::move(response) : HttpResponse{};
  }

  std::optional<double> Metric(std::string_view series) {
    auto response = HttpFetch("127.0.0.1", params_.admin_port, "/metrics");
    if (!response.ok() || response->status_code != 200) return std::nullopt;
    return MetricValue(response->body, series);
  }

  // Polls /metrics until `series` has `value`; fails the test otherwise.
  void ExpectMetricEventually(std::string_view series, double value) {
    std::optional<double> last;
    EXPECT_TRUE(PollUntil(
        [&] {
          last = Metric(series);
          return last == value;
        },
        kPollTimeout))
        << series << " is " << (last ? absl::StrCat(*last) : "absent")
        << ", want " << value;
  }

  // Sends `signal` and expects /readyz to turn 503 (or the admin port to
  // close), then the process to exit 0 within drain_timeout plus slack.
  void ExpectDrainAndCleanExit(int signal) {
    ASSERT_EQ(Get("/readyz").status_code, 200);
    const absl::Time signalled = absl::Now();
    ASSERT_TRUE(sidecar_->Signal(signal).ok());
    EXPECT_TRUE(PollUntil(
        [&] {
          auto response = HttpFetch("127.0.0.1", params_.admin_port, "/readyz",
                                    absl::Seconds(5));
          return !response.ok() || response->status_code == 503;
        },
        kPollTimeout))
        << "/readyz still 200 after the signal";
    absl::StatusOr<ExitStatus> exit =
        sidecar_->Wait(kDrainTimeout + kExitSlack - (absl::Now() - signalled));
    ASSERT_TRUE(exit.ok()) << exit.status();
    EXPECT_TRUE(exit->ExitedWith(0)) << exit->ToString();
    EXPECT_THAT(sidecar_->Log(), HasSubstr("draining"));
  }

  std::unique_ptr<DemoUpstream> upstream_;
  std::string dir_;
  std::string config_path_;
  ConfigParams params_;
  std::unique_ptr<ChildProcess> sidecar_;
};

TEST_F(RunningSidecarTest, HealthzAnswersOk) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  HttpResponse r = Get("/healthz");
  EXPECT_EQ(r.status_code, 200);
  EXPECT_EQ(r.body, "ok");
}

TEST_F(RunningSidecarTest, ReadyzIsReadyWhenEveryClusterHasAnEndpoint) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  EXPECT_EQ(Get("/readyz").status_code, 200);
}

TEST_F(RunningSidecarTest, ConfigIsTheEffectiveConfigWithDefaultsAsJson) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  HttpResponse r = Get("/config");
  EXPECT_EQ(r.status_code, 200);
  EXPECT_THAT(r.Header("content-type"), HasSubstr("application/json"));
  EXPECT_THAT(r.body, HasSubstr("\"max_concurrent_streams\": 1000"));
  EXPECT_THAT(r.body, HasSubstr("\"max_message_bytes\": \"4194304\""));
  EXPECT_THAT(r.body, HasSubstr("\"drain_timeout\": \"3s\""));
  EXPECT_THAT(r.body, HasSubstr("\"workers\": 1"));
  EXPECT_THAT(r.body, HasSubstr("\"burst\": \"10\""));
  EXPECT_THAT(r.body, HasSubstr("\"max_keys\": 10000"));  // a route default
  EXPECT_THAT(r.body, HasSubstr(upstream_->address()));
  ExpectValidJson(r.body, "/config");
}

TEST_F(RunningSidecarTest, RoutesListsEveryRouteAndEndpointAsJson) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  HttpResponse r = Get("/routes");
  EXPECT_EQ(r.status_code, 200);
  EXPECT_THAT(r.Header("content-type"), HasSubstr("application/json"));
  EXPECT_THAT(r.body, HasSubstr("\"name\": \"echo\""));
  EXPECT_THAT(r.body, HasSubstr("\"name\": \"all\""));
  EXPECT_THAT(r.body, HasSubstr("\"name\": \"demo\""));
  EXPECT_THAT(r.body, HasSubstr("\"tokens\": 10"));
  EXPECT_THAT(r.body, HasSubstr(absl::StrCat(
                          "\"address\": \"", upstream_->address(),
                          "\", \"resolved\": \"", upstream_->address(),
                          "\", \"healthy\": true")));
  ExpectValidJson(r.body, "/routes");
}

TEST_F(RunningSidecarTest, MetricsHasBuildInfoAndPassesPromtool) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  HttpResponse r = Get("/metrics");
  ASSERT_EQ(r.status_code, 200);
  EXPECT_THAT(r.body, HasSubstr("bulwark_build_info{version="));
  EXPECT_EQ(MetricValue(r.body, absl::StrCat("bulwark_build_info{version=\"",
                                             BULWARK_VERSION, "\"}")),
            1.0)
      << r.body;
  EXPECT_EQ(
      MetricValue(r.body, "bulwark_config_reloads_total{result=\"success\"}"),
      0.0);
  EXPECT_EQ(
      MetricValue(r.body, "bulwark_config_reloads_total{result=\"failure\"}"),
      0.0);

  ASSERT_TRUE(IsExecutable(kPromtool))
      << kPromtool
      << " is missing: install the prometheus package (Debian: "
         "apt-get install prometheus) to check the exposition format";
  ShellResult promtool =
      RunWithInput(absl::StrCat(kPromtool, " check metrics"), r.body);
  EXPECT_EQ(promtool.exit_code, 0) << "promtool check metrics:\n"
                                   << promtool.output << "\n/metrics:\n"
                                   << r.body;
}

TEST_F(RunningSidecarTest, UnknownPathIsNotFound) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  EXPECT_EQ(Get("/nope").status_code, 404);
  EXPECT_EQ(Get("/metrics/extra").status_code, 404);
}

TEST_F(RunningSidecarTest, PostToMetricsIsMethodNotAllowed) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  absl::StatusOr<int> status = RawHttpStatus(
      params_.admin_port,
      "POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
      "Content-Type: text/plain\r\nConnection: close\r\n\r\nhi");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, 405);
  // The server is still fine afterwards.
  EXPECT_EQ(Get("/healthz").status_code, 200);
}

TEST_F(RunningSidecarTest, SigtermDrainsAndExitsZero) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  ExpectDrainAndCleanExit(SIGTERM);
}

TEST_F(RunningSidecarTest, SigintDrainsAndExitsZero) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar());
  ExpectDrainAndCleanExit(SIGINT);
}

TEST_F(RunningSidecarTest, ReloadsOnSighupAndOnFileChangeKeepingTheOldOnError) {
  // A descriptor set the config names: corrupting it makes the configuration
  // invalid while the config file's content stays the same, so only SIGHUP
  // can trigger that reload. A FileDescriptorSet holding one empty
  // "x.proto": field 1 (file) { field 1 (name) "x.proto" }.
  const std::string descriptors = absl::StrCat(dir_, "/x.pb");
  const std::string valid_descriptors("\x0a\x09\x0a\x07x.proto", 11);
  ASSERT_TRUE(WriteFileAtomically(descriptors, valid_descriptors).ok());
  ConfigParams params = {.burst = "10",
                         .extra_top_level = "descriptor_sets: [\"x.pb\"]\n"};
  ASSERT_NO_FATAL_FAILURE(StartSidecar(params));
  params = params_;  // with the ports and upstream filled in
  const std::string failure =
      "bulwark_config_reloads_total{result=\"failure\"}";
  const std::string success =
      "bulwark_config_reloads_total{result=\"success\"}";

  // 1. SIGHUP with an invalid descriptor set: rejected, the old config stays.
  ASSERT_TRUE(WriteFileAtomically(descriptors, "\xff\xff not protobuf").ok());
  ASSERT_TRUE(sidecar_->Signal(SIGHUP).ok());
  ExpectMetricEventually(failure, 1);
  EXPECT_EQ(Metric(success), 0.0);
  EXPECT_TRUE(sidecar_->Running());
  EXPECT_EQ(Get("/healthz").status_code, 200);
  EXPECT_EQ(Get("/readyz").status_code, 200);
  EXPECT_THAT(Get("/config").body, HasSubstr("\"burst\": \"10\""));
  EXPECT_TRUE(
      WaitForTcpPort(params.listen_port, kPollTimeout, sidecar_.get()).ok());
  EXPECT_THAT(sidecar_->Log(), HasSubstr("descriptor_sets[0]"));

  // 2. An invalid edit of the config file, no signal: the file watcher
  // reloads, rejects it, and the old config stays.
  ASSERT_TRUE(WriteFileAtomically(descriptors, valid_descriptors).ok());
  ConfigParams invalid = params;
  invalid.burst = "0";
  ASSERT_TRUE(WriteFileAtomically(config_path_, MakeConfig(invalid)).ok());
  ExpectMetricEventually(failure, 2);
  EXPECT_EQ(Metric(success), 0.0);
  EXPECT_THAT(Get("/config").body, HasSubstr("\"burst\": \"10\""));
  EXPECT_THAT(sidecar_->Log(),
              HasSubstr("routes[0].rate_limit.burst: must be >= 1 (got 0)"));

  // 3. A valid edit (a new rate limit), no signal: swapped in.
  ConfigParams valid = params;
  valid.burst = "20";
  ASSERT_TRUE(WriteFileAtomically(config_path_, MakeConfig(valid)).ok());
  ExpectMetricEventually(success, 1);
  EXPECT_EQ(Metric(failure), 2.0);
  EXPECT_THAT(Get("/config").body, HasSubstr("\"burst\": \"20\""));
  // A changed rate limit is a new bucket, starting full at the new burst.
  EXPECT_THAT(Get("/routes").body, HasSubstr("\"tokens\": 20"));

  // 4. SIGHUP on an unchanged valid file reloads it too.
  ASSERT_TRUE(sidecar_->Signal(SIGHUP).ok());
  ExpectMetricEventually(success, 2);
  EXPECT_EQ(Metric(failure), 2.0);
  EXPECT_EQ(Get("/healthz").status_code, 200);
}

TEST_F(RunningSidecarTest, ListenerPortInUseExitsTwoNamingTheAddress) {
  BusyPort busy;
  ConfigParams params = {.listen_port = busy.port(),
                         .admin_port = PickFreePort(),
                         .upstream = upstream_->address()};
  ASSERT_TRUE(WriteFileAtomically(config_path_, MakeConfig(params)).ok());
  auto child =
      ChildProcess::Start(BinaryPath("bulwark"), {"--config", config_path_});
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<ExitStatus> exit = (*child)->Wait(kExitTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->ExitedWith(2)) << exit->ToString();
  EXPECT_THAT((*child)->Log(),
              HasSubstr(absl::StrCat("127.0.0.1:", busy.port())));
  EXPECT_THAT((*child)->Log(), HasSubstr("Address already in use"));
}

TEST_F(RunningSidecarTest, AdminPortInUseExitsTwoNamingTheAddress) {
  BusyPort busy;
  ConfigParams params = {.listen_port = PickFreePort(),
                         .admin_port = busy.port(),
                         .upstream = upstream_->address()};
  ASSERT_TRUE(WriteFileAtomically(config_path_, MakeConfig(params)).ok());
  auto child =
      ChildProcess::Start(BinaryPath("bulwark"), {"--config", config_path_});
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<ExitStatus> exit = (*child)->Wait(kExitTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->ExitedWith(2)) << exit->ToString();
  EXPECT_THAT((*child)->Log(),
              HasSubstr(absl::StrCat("127.0.0.1:", busy.port())));
}

}  // namespace
}  // namespace bulwark::test
