// Checks the downstream HTTP/2 session (sidecar/net/downstream_session.h)
// against arbitrary client bytes, through the real accept path: one net::Worker
// listens on 127.0.0.1 (port 0) on its own thread, and each input is one TCP
// connection that sends the HTTP/2 client preface followed by the input (the
// preface is left out when the input's first byte is odd, so raw garbage
// reaches the preface check too), half-closes, and reads until the server
// closes. Nothing may crash or trip ASan/UBSan; and once the connection is
// gone, every call the handler saw has had exactly one CallObserver::OnClose
// and the worker has no stream left open (no leaked stream, permit owner or
// observer).
//
// The handler answers by the method name, so the fuzzer reaches each way the
// core can answer: .../Collect collects the request body and then answers
// (unary path),
// .../Shared answers with a captured response (singleflight path), .../Later
// answers from a posted task (a parked call, which the client may have left by
// then),
// .../Forward forwards to an address that refuses connections (upstream failure
// path), anything else gets RespondLocal(UNIMPLEMENTED). Every call's deadline
// is its grpc-timeout, as the core sets it. The worker uses small limits (1 KiB
// messages, 4 KiB header lists, 16 streams, 64 KiB stream windows) so that
// inputs reach them.
//
// Speed: each input costs a TCP connect, two thread hand-offs and a few loop
// iterations; see scripts/fuzz.sh for the exec/s this gives.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "sidecar/net/stream_handler.h"
#include "sidecar/net/worker.h"
#include "tests/fuzz/byte_reader.h"

namespace {

namespace net = bulwark::net;

constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr size_t kMaxInputBytes = 64 * 1024;
// A half-closed connection the server has not closed by then is abandoned (and
// counted): the server closes on EOF, so this only trips on a badly loaded
// machine or a server that stopped reading.
constexpr absl::Duration kPatience = absl::Seconds(2);

constexpr int kUnimplemented = 12;

class CountingObserver final : public net::CallObserver {
 public:
  explicit CountingObserver(std::atomic<int64_t>* closed) : closed_(closed) {}
  ~CountingObserver() override {
    // Destroyed without OnClose: a call ended without telling the core.
    FUZZ_CHECK(seen_close_);
  }
  void OnClose(const net::CallResult&) override {
    FUZZ_CHECK(!seen_close_);
    seen_close_ = true;
    closed_->fetch_add(1, std::memory_order_relaxed);
  }

 private:
  std::atomic<int64_t>* closed_;
  bool seen_close_ = false;
};

class FuzzHandler final : public net::CallHandler {
 public:
  explicit FuzzHandler(net::UpstreamAddress dead_upstream)
      : dead_upstream_(std::move(dead_upstream)) {
    shared_ = std::make_shared<net::CapturedResponse>();
    shared_->headers = {{":status", "200"},
                        {"content-type", "application/grpc"}};
    shared_->body = std::string("\0\0\0\0\3abc", 8);
    shared_->trailers = {{"grpc-status", "0"}};
    shared_->grpc_code = 0;
  }

  void OnCall(net::Call& call) override {
    started_.fetch_add(1, std::memory_order_relaxed);
    call.SetObserver(std::make_unique<CountingObserver>(&closed_));
    call.SetDeadline(call.client_deadline());
    const std::string_view path = call.path();
    net::Executor* worker = &call.executor();
    const uint64_t id = call.id();
    if (path.ends_with("/Collect")) {
      call.CollectRequest(1024, [worker, id](std::optional<std::string> body) {
        if (net::Call* c = worker->FindCall(id)) {
          if (!body.has_value()) {
            c->RespondLocal({.grpc_code = 8, .message = "too large to hold"});
            return;
          }
          c->RespondLocal({.grpc_code = static_cast<int>(body->size() % 17),
                           .message = std::move(*body),
                           .reason = "collected"});
        }
      });
    } else if (path.ends_with("/Shared")) {
      call.RespondWith(shared_);
    } else if (path.ends_with("/Later")) {
      worker->Post([worker, id] {
        if (net::Call* c = worker->FindCall(id)) {
          c->RespondLocal({.grpc_code = kUnimplemented,
                           .message = "later",
                           .retry_pushback_ms = 5});
        }
      });
    } else if (path.ends_with("/Forward")) {
      call.Forward(dead_upstream_);
    } else {
      call.RespondLocal(
          {.grpc_code = kUnimplemented,
           .message = std::string("no route for ") + std::string(path)});
    }
  }

  int64_t started() const { return started_.load(std::memory_order_relaxed); }
  int64_t closed() const { return closed_.load(std::memory_order_relaxed); }

 private:
  const net::UpstreamAddress dead_upstream_;
  std::shared_ptr<net::CapturedResponse> shared_;
  std::atomic<int64_t> started_{0};
  std::atomic<int64_t> closed_{0};
};

// 127.0.0.1 on a port bound but never listened on: connects are refused.
net::UpstreamAddress DeadUpstream() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  FUZZ_CHECK(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  FUZZ_CHECK(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  FUZZ_CHECK(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  // `fd` stays open (and unlistened) for the life of the process.
  net::UpstreamAddress upstream;
  upstream.key = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  upstream.authority = upstream.key;
  upstream.host = "127.0.0.1";
  std::memcpy(&upstream.addr, &addr, sizeof(addr));
  upstream.addr_len = sizeof(addr);
  return upstream;
}

struct Server {
  std::unique_ptr<FuzzHandler> handler;
  std::unique_ptr<net::Worker> worker;
  int64_t abandoned = 0;  // connections the server kept open past kPatience
};

Server* server = nullptr;

void StopServer() {
  if (server == nullptr) return;
  server->worker->ForceCloseAndStop();
  server->worker->Join();
  if (server->abandoned > 0) {
    std::fprintf(stderr,
                 "h2_session_fuzz: %lld connection(s) not closed by the server "
                 "within %s of the client's half-close\n",
                 static_cast<long long>(server->abandoned),
                 absl::FormatDuration(kPatience).c_str());
  }
  server->worker.reset();
  delete server;
  server = nullptr;
}

Server& GetServer() {
  if (server != nullptr) return *server;
  // The worker writes to sockets whose peer may be gone, as the sidecar does.
  signal(SIGPIPE, SIG_IGN);
  server = new Server;
  server->handler = std::make_unique<FuzzHandler>(DeadUpstream());
  auto worker = net::Worker::Create({.index = 0,
                                     .listen_host = "127.0.0.1",
                                     .listen_port = 0,
                                     .max_message_bytes = 1024,
                                     .max_concurrent_streams = 16,
                                     .max_header_list_bytes = 4096,
                                     .max_connections = 16,
                                     .stream_window_bytes = 64 * 1024,
                                     .connection_window_bytes = 256 * 1024});
  if (!worker.ok()) {
    std::fprintf(stderr, "h2_session_fuzz: %s\n",
                 std::string(worker.status().message()).c_str());
    std::abort();
  }
  server->worker = *std::move(worker);
  server->worker->SetHandler(server->handler.get());
  server->worker->Start();
  std::atexit(StopServer);
  return *server;
}

int Connect(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  FUZZ_CHECK(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // Non-blocking, so that libFuzzer's SIGALRM (EINTR) cannot cut a connect
  // short.
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    FUZZ_CHECK(errno == EINPROGRESS || errno == EINTR);
    pollfd p{.fd = fd, .events = POLLOUT, .revents = 0};
    const absl::Time give_up = absl::Now() + kPatience;
    while (poll(&p, 1, 10) <= 0) FUZZ_CHECK(absl::Now() < give_up);
    int error = 0;
    socklen_t len = sizeof(error);
    FUZZ_CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) == 0);
    if (error != 0) {
      std::fprintf(stderr, "h2_session_fuzz: connect: %s\n",
                   std::strerror(error));
      std::abort();
    }
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

// Reads whatever is there; false once the server closed (EOF or reset).
bool Drain(int fd) {
  char buf[16 * 1024];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0) continue;
    if (n == 0) return false;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
    return false;  // ECONNRESET: the server closed with our bytes unread
  }
}

// Sends `bytes` then half-closes, reading meanwhile; then reads until the
// server closes. False if the server did not close in time.
bool Exchange(int fd, std::string_view bytes) {
  const absl::Time give_up = absl::Now() + kPatience;
  bool open = true;
  bool half_closed = false;
  while (open) {
    while (!bytes.empty()) {
      const ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n > 0) {
        bytes.remove_prefix(static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      bytes = {};  // the server closed already: nothing more to say
    }
    if (bytes.empty() && !half_closed) {
      shutdown(fd, SHUT_WR);
      half_closed = true;
    }
    open = Drain(fd);
    if (!open) break;
    const absl::Duration left = give_up - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    pollfd p{
        .fd = fd,
        .events = static_cast<short>(POLLIN | (bytes.empty() ? 0 : POLLOUT)),
        .revents = 0};
    poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
  }
  return true;
}

// Returns once everything queued on the worker so far has run.
void OnWorker(net::Worker& worker) {
  absl::Notification done;
  worker.Post([&done] { done.Notify(); });
  done.WaitForNotification();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > kMaxInputBytes) return -1;
  Server& s = GetServer();
  std::string bytes;
  if (size == 0 || data[0] % 2 == 0) bytes.append(kPreface);
  bytes.append(reinterpret_cast<const char*>(data), size);

  const int fd = Connect(s.worker->listen_port());
  const bool closed_by_server = Exchange(fd, bytes);
  close(fd);
  if (!closed_by_server) {
    ++s.abandoned;
    // Our close ends it; wait for the worker to notice before the next input.
    const absl::Time give_up = absl::Now() + kPatience;
    while (s.worker->OpenStreamsApprox() != 0 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    OnWorker(*s.worker);
    return 0;
  }
  // The server closed the socket (and so ran the session's close path) before
  // we saw EOF; a task posted now runs after that.
  OnWorker(*s.worker);
  FUZZ_CHECK(s.worker->OpenStreamsApprox() == 0);
  FUZZ_CHECK(s.handler->closed() == s.handler->started());
  return 0;
}
