#include "sidecar/admin_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sidecar/metrics.h"
#include "sidecar/net/http_server.h"

namespace bulwark {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// --- a tiny blocking HTTP/1.1 client: enough to read one answer per connection
// ---

// Closes the socket on every path out of a test.
class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&&) = delete;
  ~Socket() {
    if (fd_ >= 0) close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

// A blocking TCP connection to 127.0.0.1:port whose reads give up after 5 s, so
// a server that never answers fails the test instead of hanging it. fd -1 when
// refused.
Socket Connect(uint16_t port) {
  Socket socket(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  timeval timeout = {.tv_sec = 5, .tv_usec = 0};
  setsockopt(socket.fd(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(socket.fd(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(socket.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) !=
      0) {
    return Socket();
  }
  return socket;
}

bool SendAll(const Socket& socket, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = send(socket.fd(), data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Everything the peer sends until it closes (or the read timeout passes).
std::string ReadToEnd(const Socket& socket) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = recv(socket.fd(), buf, sizeof(buf), 0)) > 0) out.append(buf, n);
  return out;
}

struct Reply {
  int status = 0;                              // 0: no parsable answer
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

Reply Parse(absl::string_view raw) {
  Reply reply;
  const size_t end_of_headers = raw.find("\r\n\r\n");
  if (end_of_headers == absl::string_view::npos) return reply;
  reply.body = std::string(raw.substr(end_of_headers + 4));
  absl::string_view head = raw.substr(0, end_of_headers);
  bool status_line = true;
  while (!head.empty()) {
    size_t eol = head.find("\r\n");
    absl::string_view line = head.substr(0, eol);
    head = eol == absl::string_view::npos ? absl::string_view()
                                          : head.substr(eol + 2);
    if (status_line) {
      // "HTTP/1.1 200 OK"
      status_line = false;
      if (line.size() < 12 ||
          !absl::SimpleAtoi(line.substr(9, 3), &reply.status)) {
        return Reply();
      }
      continue;
    }
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    reply.headers[absl::AsciiStrToLower(line.substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return reply;
}

Reply Fetch(uint16_t port, absl::string_view method, absl::string_view path) {
  Socket socket = Connect(port);
  if (socket.fd() < 0) return Reply();
  if (!SendAll(socket, absl::StrCat(method, " ", path,
                                    " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    "Connection: close\r\n\r\n"))) {
    return Reply();
  }
  return Parse(ReadToEnd(socket));
}

// --- fixtures ---

// Live state the providers read; tests flip it while the server runs.
struct FakeSidecar {
  absl::Mutex mu;
  bool ready ABSL_GUARDED_BY(mu) = true;
  std::string reason ABSL_GUARDED_BY(mu);
  std::atomic<int> provider_calls{0};
  Metrics metrics{"9.9.9"};

  void SetNotReady(std::string why) {
    absl::MutexLock lock(&mu);
    ready = false;
    reason = std::move(why);
  }

  AdminServer::Providers Providers() {
    return {
        .metrics =
            [this] {
              ++provider_calls;
              return metrics.Serialize();
            },
        .readiness =
            [this] {
              ++provider_calls;
              absl::MutexLock lock(&mu);
              return AdminServer::Readiness{.ready = ready, .reason = reason};
            },
        .config_json =
            [this] {
              ++provider_calls;
              return std::string(R"({"listener":{"address":"0.0.0.0:15000"}})");
            },
        .routes_json =
            [this] {
              ++provider_calls;
              return std::string(R"({"routes":[{"name":"orders-get"}]})");
            },
    };
  }
};

class AdminServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = AdminServer::Create("127.0.0.1:0", sidecar_.Providers());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_NE(server_->port(), 0);
  }

  Reply Get(absl::string_view path) {
    return Fetch(server_->port(), "GET", path);
  }

  FakeSidecar sidecar_;
  std::unique_ptr<AdminServer> server_;
};

// --- endpoints ---

TEST_F(AdminServerTest, HealthzAnswersOk) {
  Reply reply = Get("/healthz");
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.body, "ok");
  EXPECT_THAT(reply.headers["content-type"], StartsWith("text/plain"));
}

TEST_F(AdminServerTest, ReadyzTurns503WithTheReasonWhenTheProviderFlips) {
  Reply reply = Get("/readyz");
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.body, "ready");

  sidecar_.SetNotReady("draining");
  reply = Get("/readyz");
  EXPECT_EQ(reply.status, 503);
  EXPECT_EQ(reply.body, "draining");
}

TEST_F(AdminServerTest, MetricsServesTheExpositionWithPrometheusContentType) {
  sidecar_.metrics.ForRoute("orders-get")->Requests(0).Increment();
  Reply reply = Get("/metrics");
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.headers["content-type"],
            "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_THAT(reply.body, HasSubstr("# TYPE bulwark_build_info gauge\n"));
  EXPECT_THAT(reply.body,
              HasSubstr(R"(bulwark_build_info{version="9.9.9"} 1)"));
  EXPECT_THAT(
      reply.body,
      HasSubstr(R"(bulwark_requests_total{code="OK",route="orders-get"} 1)"));
  EXPECT_EQ(reply.headers["content-length"], std::to_string(reply.body.size()));
}

TEST_F(AdminServerTest, ConfigAndRoutesPassTheProvidersJsonThrough) {
  Reply reply = Get("/config");
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.headers["content-type"], "application/json");
  EXPECT_EQ(reply.body, R"({"listener":{"address":"0.0.0.0:15000"}})");

  reply = Get("/routes");
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.headers["content-type"], "application/json");
  EXPECT_EQ(reply.body, R"({"routes":[{"name":"orders-get"}]})");
}

TEST_F(AdminServerTest, QueryStringIsIgnored) {
  EXPECT_EQ(Get("/healthz?verbose=1").status, 200);
}

TEST_F(AdminServerTest, UnknownPathIs404WhateverTheMethod) {
  EXPECT_EQ(Get("/").status, 404);
  EXPECT_EQ(Get("/metricsx").status, 404);
  EXPECT_EQ(Fetch(server_->port(), "POST", "/nope").status, 404);
}

TEST_F(AdminServerTest,
       WriteMethodsOnKnownPathsAre405WithAllowAndCallNoProvider) {
  for (absl::string_view method : {"POST", "PUT", "DELETE", "PATCH"}) {
    SCOPED_TRACE(method);
    Reply reply = Fetch(server_->port(), method, "/metrics");
    EXPECT_EQ(reply.status, 405);
    EXPECT_EQ(reply.headers["allow"], "GET, HEAD");
  }
  EXPECT_EQ(sidecar_.provider_calls.load(), 0);
}

TEST_F(AdminServerTest, HeadSendsTheHeadersOfGetWithoutTheBody) {
  Reply get = Get("/config");
  Reply head = Fetch(server_->port(), "HEAD", "/config");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.headers.at("content-type"), "application/json");
  EXPECT_EQ(head.headers["content-length"], std::to_string(get.body.size()));
  EXPECT_EQ(head.body, "");
}

TEST_F(AdminServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  Socket socket = Connect(server_->port());
  ASSERT_GE(socket.fd(), 0);
  ASSERT_TRUE(
      SendAll(socket,
              "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
              "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  const std::string raw = ReadToEnd(socket);
  EXPECT_THAT(raw, HasSubstr("\r\n\r\nok"));
  EXPECT_THAT(raw, HasSubstr("\r\n\r\nready"));
}

TEST_F(AdminServerTest, OversizedHeadersAreRefused) {
  Socket socket = Connect(server_->port());
  ASSERT_GE(socket.fd(), 0);
  SendAll(socket, absl::StrCat("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ",
                               std::string(64 * 1024, 'a'), "\r\n\r\n"));
  Reply reply = Parse(ReadToEnd(socket));
  EXPECT_NE(reply.status, 200);
}

TEST_F(AdminServerTest, StopIsPromptWithAnIdleClientConnected) {
  // A client that started a request and went silent must not hold the shutdown.
  Socket idle = Connect(server_->port());
  ASSERT_GE(idle.fd(), 0);
  ASSERT_TRUE(SendAll(idle, "GET /healthz HTTP/1.1\r\n"));
  ASSERT_EQ(Get("/healthz").status, 200);  // the loop is surely running

  const auto start = std::chrono::steady_clock::now();
  server_->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start,
            std::chrono::milliseconds(500));

  EXPECT_EQ(ReadToEnd(idle), "");  // closed, not answered
  EXPECT_LT(Connect(server_->port()).fd(), 0) << "still listening after Stop()";
  server_->Stop();  // idempotent
}

// --- creation errors ---

TEST(AdminServerCreateTest, PortInUseIsAnErrorNamingTheAddress) {
  Socket holder(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(holder.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)),
            0);
  ASSERT_EQ(listen(holder.fd(), 1), 0);
  socklen_t length = sizeof(addr);
  ASSERT_EQ(
      getsockname(holder.fd(), reinterpret_cast<sockaddr*>(&addr), &length), 0);
  const std::string address = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));

  FakeSidecar sidecar;
  auto server = AdminServer::Create(address, sidecar.Providers());
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(server.status().message(),
              HasSubstr(absl::StrCat("\"", address, "\"")));
  EXPECT_THAT(server.status().message(), HasSubstr("Address already in use"));
}

TEST(AdminServerCreateTest, MalformedAddressIsInvalidArgument) {
  for (const char* address :
       {"localhost", "127.0.0.1:70000", "127.0.0.1:http", ""}) {
    SCOPED_TRACE(address);
    FakeSidecar sidecar;
    auto server = AdminServer::Create(address, sidecar.Providers());
    ASSERT_FALSE(server.ok());
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(server.status().message(),
                HasSubstr(absl::StrCat("\"", address, "\"")));
  }
}

TEST(AdminServerCreateTest, AddressThatIsNotLocalCannotBeBound) {
  FakeSidecar sidecar;
  // TEST-NET-1 (RFC 5737): never assigned to this machine.
  auto server = AdminServer::Create("192.0.2.1:0", sidecar.Providers());
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(server.status().message(), HasSubstr("\"192.0.2.1:0\""));
  EXPECT_THAT(server.status().message(), HasSubstr("bind"));
}

TEST(AdminServerCreateTest, MissingProviderIsInvalidArgument) {
  FakeSidecar sidecar;
  AdminServer::Providers providers = sidecar.Providers();
  providers.routes_json = nullptr;
  auto server = AdminServer::Create("127.0.0.1:0", std::move(providers));
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
}

// --- HttpServer limits ---

TEST(HttpServerTest, IdleClientIsDisconnectedAfterTheTimeout) {
  auto server = HttpServer::Create("127.0.0.1:0",
                                   [](std::string_view, std::string_view) {
                                     return HttpServer::Response{.body = "x"};
                                   },
                                   {.timeout = absl::Milliseconds(200)});
  ASSERT_TRUE(server.ok()) << server.status();
  Socket idle = Connect((*server)->port());
  ASSERT_GE(idle.fd(), 0);
  ASSERT_TRUE(SendAll(idle, "GET / HTTP/1.1\r\n"));  // and nothing more

  const auto start = std::chrono::steady_clock::now();
  ReadToEnd(
      idle);  // returns at the server's close, or after the 5 s read timeout
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
}

TEST(HttpServerTest, HandlerSeesMethodAndPathWithoutQuery) {
  absl::Mutex mu;
  std::string seen;
  auto server = HttpServer::Create(
      "127.0.0.1:0", [&](std::string_view method, std::string_view path) {
        absl::MutexLock lock(&mu);
        seen = std::string(method) + " " + std::string(path);
        return HttpServer::Response{.status = 404, .body = "no"};
      });
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(Fetch((*server)->port(), "OPTIONS", "/a/b?c=d").status, 404);
  absl::MutexLock lock(&mu);
  EXPECT_EQ(seen, "OPTIONS /a/b");
}

TEST(HttpServerTest, SuccessToAWriteMethodBecomes405) {
  auto server =
      HttpServer::Create("127.0.0.1:0", [](std::string_view, std::string_view) {
        return HttpServer::Response{.body = "x"};
      });
  ASSERT_TRUE(server.ok()) << server.status();
  Reply reply = Fetch((*server)->port(), "POST", "/");
  EXPECT_EQ(reply.status, 405);
  EXPECT_EQ(reply.headers.count("allow"), 1u);
}

// --- admin port bounds: whole requests in time, connections capped ---

TEST(HttpServerTest, TheDefaultsAreTenSecondsAndTwoHundredFiftySixConnections) {
  const HttpServer::Options defaults;
  EXPECT_EQ(defaults.request_timeout, absl::Seconds(10));
  EXPECT_EQ(defaults.max_connections, 256);
}

// Sends one byte of an endless request line every 100ms until the server
// closes; returns how long that took from the connect (or 10 s if it never
// did), and how many bytes went out.
std::pair<absl::Duration, int> TrickleUntilClosed(uint16_t port) {
  const absl::Time start = absl::Now();
  Socket socket = Connect(port);
  if (socket.fd() < 0) return {absl::ZeroDuration(), 0};
  const std::string request = absl::StrCat("GET /", std::string(4000, 'a'));
  int sent = 0;
  while (absl::Now() - start < absl::Seconds(10)) {
    pollfd p = {socket.fd(), POLLIN, 0};
    // The pacing of the trickle; a close wakes it at once.
    if (poll(&p, 1, 100) > 0) {
      char buf[512];
      if (recv(socket.fd(), buf, sizeof(buf), MSG_DONTWAIT) <= 0) break;
      continue;
    }
    if (send(socket.fd(), &request[sent % request.size()], 1, MSG_NOSIGNAL) !=
        1) {
      break;
    }
    ++sent;
  }
  return {absl::Now() - start, sent};
}

TEST(HttpServerTest, ARequestTricklingInIsCutAtTheRequestTimeout) {
  // The idle timeout alone never fires: a byte arrives every 100ms.
  auto server =
      HttpServer::Create("127.0.0.1:0",
                         [](std::string_view, std::string_view) {
                           return HttpServer::Response{.body = "x"};
                         },
                         {.timeout = absl::Seconds(5),
                          .request_timeout = absl::Milliseconds(500)});
  ASSERT_TRUE(server.ok()) << server.status();
  const auto [took, sent] = TrickleUntilClosed((*server)->port());
  EXPECT_GE(took, absl::Milliseconds(450));
  EXPECT_LT(took, absl::Milliseconds(1500)) << "after " << sent << " bytes";
  EXPECT_GE(sent, 3) << "the client was cut before it trickled";
}

TEST(HttpServerTest, EachRequestOnAKeepAliveConnectionGetsTheWholeTimeout) {
  // Four requests 300ms apart on one connection: 1.2 s in all, more than the
  // 500ms timeout, which starts again after each answer.
  auto server =
      HttpServer::Create("127.0.0.1:0",
                         [](std::string_view, std::string_view) {
                           return HttpServer::Response{.body = "x"};
                         },
                         {.request_timeout = absl::Milliseconds(500)});
  ASSERT_TRUE(server.ok()) << server.status();
  Socket socket = Connect((*server)->port());
  ASSERT_GE(socket.fd(), 0);
  for (int i = 0; i < 4; ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(300));  // the client's pace
    ASSERT_TRUE(SendAll(socket, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")) << i;
    std::string raw;
    char buf[512];
    while (raw.find("\r\n\r\nx") == std::string::npos) {
      const ssize_t n = recv(socket.fd(), buf, sizeof(buf), 0);
      ASSERT_GT(n, 0) << "request " << i << " not answered: " << raw;
      raw.append(buf, static_cast<size_t>(n));
    }
    EXPECT_THAT(raw, StartsWith("HTTP/1.1 200")) << i;
  }
}

TEST(HttpServerTest, ConnectionsPastTheCapAreClosedAtAccept) {
  auto server = HttpServer::Create("127.0.0.1:0",
                                   [](std::string_view, std::string_view) {
                                     return HttpServer::Response{.body = "x"};
                                   },
                                   {.max_connections = 4});
  ASSERT_TRUE(server.ok()) << server.status();
  const uint16_t port = (*server)->port();
  std::vector<std::unique_ptr<Socket>> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(std::make_unique<Socket>(Connect(port)));
    ASSERT_GE(held.back()->fd(), 0);
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while ((*server)->ConnectionsApprox() < 4 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));  // polling
  }
  ASSERT_EQ((*server)->ConnectionsApprox(), 4);

  // The fifth is closed unanswered, at once (well before the 5 s read timeout
  // of ReadToEnd, and before the server's 10 s timeouts).
  const absl::Time start = absl::Now();
  Socket extra = Connect(port);
  ASSERT_GE(extra.fd(), 0);  // the kernel accepted it into the backlog
  SendAll(extra, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(ReadToEnd(extra), "");
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_EQ((*server)->ConnectionsApprox(), 4);

  // The four held ones are served.
  for (auto& socket : held) {
    ASSERT_TRUE(
        SendAll(*socket, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
    EXPECT_EQ(Parse(ReadToEnd(*socket)).status, 200);
  }
  // Those gone, a new connection is served again.
  held.clear();
  Reply reply;
  const absl::Time again = absl::Now() + absl::Seconds(5);
  while (reply.status != 200 && absl::Now() < again) {
    reply = Fetch(port, "GET", "/");
  }
  EXPECT_EQ(reply.status, 200);
}

TEST(AdminServerCreateTest, TakesTheHttpServerLimits) {
  FakeSidecar sidecar;
  auto server = AdminServer::Create(
      "127.0.0.1:0", sidecar.Providers(),
      {.request_timeout = absl::Milliseconds(500), .max_connections = 2});
  ASSERT_TRUE(server.ok()) << server.status();
  const auto [took, sent] = TrickleUntilClosed((*server)->port());
  EXPECT_GE(took, absl::Milliseconds(450));
  EXPECT_LT(took, absl::Milliseconds(1500)) << "after " << sent << " bytes";
  EXPECT_EQ(Fetch((*server)->port(), "GET", "/healthz").status, 200);
}

}  // namespace
}  // namespace bulwark
