// Transparency of the data plane, through the real binaries: a real gRPC C++
// client talks to `bulwark`, which proxies to `bulwark-demo-upstream`
// (SPEC sections 1-3, PROXY-NOTES "HTTP/2 and gRPC on the wire").
//
// What a transparent proxy must keep: payloads, request and response metadata
// (binary included), trailers, status code, message and details, trailers-only
// answers, the user-agent, deadlines and cancellation in both directions, all
// four RPC kinds, message-size limits, and a listener that survives bad input.
// The demo upstream echoes `x-*` request metadata in its headers and as
// `t-x-*` trailers, reports the user-agent and deadline it saw, and counts
// calls (Control.GetStats, read here directly from the upstream, never through
// the sidecar, so the sidecar cannot hide its own mistakes).
//
// Every wait is a poll against a generous deadline: the machine may be loaded.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
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
using ::testing::HasSubstr;

// Generous: no test waits this long when the code is right.
constexpr absl::Duration kRpcTimeout = absl::Seconds(30);
constexpr absl::Duration kStartTimeout = absl::Seconds(30);
constexpr char kUserAgent[] = "bulwark-proxy-test/1.0";
constexpr char kUpstreamName[] = "demo-a";

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

// A recognisable payload of `bytes` bytes, so truncation or reordering shows.
std::string Pattern(size_t bytes, int seed = 0) {
  std::string payload(bytes, '\0');
  for (size_t i = 0; i < bytes; ++i) {
    payload[i] = static_cast<char>((i * 7 + static_cast<size_t>(seed)) % 251);
  }
  return payload;
}

// One length-prefixed gRPC message (uncompressed).
std::string GrpcFrame(const google::protobuf::MessageLite& message) {
  const std::string body = message.SerializeAsString();
  const uint32_t n = static_cast<uint32_t>(body.size());
  std::string frame(5, '\0');
  frame[1] = static_cast<char>(n >> 24);
  frame[2] = static_cast<char>(n >> 16);
  frame[3] = static_cast<char>(n >> 8);
  frame[4] = static_cast<char>(n);
  return frame + body;
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
  bool Wait(absl::Duration timeout = kRpcTimeout * 2) {
    return done.WaitForNotificationWithTimeout(timeout);
  }
};

// ---------------------------------------------------------------------------
// Raw sockets: bad input on the listener, and a minimal HTTP/2 client
// (nghttp2) for what a gRPC client cannot show (frame shapes, content-type).

bool SendAll(int fd, absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

struct RawExchange {
  std::string received;
  bool closed_by_peer = false;  // EOF or reset before the timeout
};

// Sends `bytes`, then reads until the peer closes or `timeout` passes.
absl::StatusOr<RawExchange> SendRawBytes(int port, const std::string& bytes,
                                         absl::Duration timeout) {
  absl::StatusOr<int> fd = ConnectTo(port);
  if (!fd.ok()) return fd.status();
  RawExchange result;
  if (!SendAll(*fd, bytes)) {  // Already closed on us: that counts.
    result.closed_by_peer = true;
    close(*fd);
    return result;
  }
  const absl::Time deadline = absl::Now() + timeout;
  char buffer[4096];
  while (absl::Now() < deadline) {
    pollfd p = {*fd, POLLIN, 0};
    const int wait_ms = static_cast<int>(std::max<int64_t>(
        1, absl::ToInt64Milliseconds(deadline - absl::Now())));
    const int ready = poll(&p, 1, wait_ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) break;
    const ssize_t n = recv(*fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      result.closed_by_peer = true;
      break;
    }
    result.received.append(buffer, static_cast<size_t>(n));
  }
  close(*fd);
  return result;
}

struct H2HeaderBlock {
  std::vector<std::pair<std::string, std::string>> fields;
  bool end_stream = false;

  std::string Get(const std::string& name) const {
    for (const auto& [n, v] : fields) {
      if (n == name) return v;
    }
    return "<absent>";
  }
};

std::string DescribeBlocks(const std::vector<H2HeaderBlock>& blocks) {
  std::string out;
  for (const H2HeaderBlock& block : blocks) {
    absl::StrAppend(&out, "HEADERS", block.end_stream ? " (END_STREAM)" : "",
                    ":");
    for (const auto& [n, v] : block.fields) {
      absl::StrAppend(&out, " ", n, "=", v, ";");
    }
    out += "\n";
  }
  return out;
}

struct H2Result {
  std::vector<H2HeaderBlock> header_blocks;  // in arrival order
  std::string data;                          // all DATA payload bytes
  int data_frames = 0;
  bool stream_closed = false;
  uint32_t close_error_code = 0;
  bool rst_stream_received = false;
};

// One HTTP/2 request on a fresh connection, driven by nghttp2 (client side),
// blocking until the stream closes or `timeout` passes.
class RawH2Client {
 public:
  static absl::StatusOr<H2Result> Request(
      int port, const std::vector<std::pair<std::string, std::string>>& headers,
      std::string body, absl::Duration timeout = kRpcTimeout) {
    absl::StatusOr<int> fd = ConnectTo(port);
    if (!fd.ok()) return fd.status();
    RawH2Client client(*fd, std::move(body));
    absl::Status st = client.Run(headers, absl::Now() + timeout);
    close(*fd);
    if (!st.ok()) return st;
    return std::move(client.result_);
  }

 private:
  RawH2Client(int fd, std::string body) : fd_(fd), body_(std::move(body)) {}
  ~RawH2Client() {
    if (session_ != nullptr) nghttp2_session_del(session_);
  }

  absl::Status Run(
      const std::vector<std::pair<std::string, std::string>>& headers,
      absl::Time deadline) {
    nghttp2_session_callbacks* cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb,
                                                            &OnBeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(cb, &OnHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &OnFrameRecv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &OnDataChunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, &OnStreamClose);
    // Let this client send header blocks past nghttp2's own 64 KiB default, so
    // a test can see the sidecar's limit rather than the client library's.
    nghttp2_option* option;
    nghttp2_option_new(&option);
    nghttp2_option_set_max_send_header_block_length(option, 1 << 20);
    const int rc = nghttp2_session_client_new2(&session_, cb, this, option);
    nghttp2_option_del(option);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0) return absl::InternalError("nghttp2_session_client_new");
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);

    std::vector<nghttp2_nv> nv;
    for (const auto& [name, value] : headers) {
      nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())),
                    name.size(), value.size(), NGHTTP2_NV_FLAG_NONE});
    }
    nghttp2_data_provider provider{};
    provider.source.ptr = this;
    provider.read_callback = &ReadBody;
    stream_id_ =
        nghttp2_submit_request(session_, nullptr, nv.data(), nv.size(),
                               body_.empty() ? nullptr : &provider, nullptr);
    if (stream_id_ < 0) {
      return absl::InternalError(absl::StrCat("nghttp2_submit_request: ",
                                              nghttp2_strerror(stream_id_)));
    }
    char buffer[16384];
    while (!result_.stream_closed) {
      while (true) {  // Everything nghttp2 wants to send.
        const uint8_t* out = nullptr;
        const ssize_t n = nghttp2_session_mem_send(session_, &out);
        if (n < 0) return absl::InternalError("nghttp2_session_mem_send");
        if (n == 0) break;
        if (!SendAll(fd_, absl::string_view(reinterpret_cast<const char*>(out),
                                            static_cast<size_t>(n)))) {
          return absl::UnavailableError(
              "the server closed the connection while we were sending");
        }
      }
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError(
            absl::StrCat("no end of stream in time; so far:\n",
                         DescribeBlocks(result_.header_blocks)));
      }
      pollfd p = {fd_, POLLIN, 0};
      const int ready = poll(&p, 1,
                             static_cast<int>(std::max<int64_t>(
                                 1, absl::ToInt64Milliseconds(left))));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) continue;  // The deadline check above ends the loop.
      const ssize_t n = recv(fd_, buffer, sizeof buffer, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return absl::UnavailableError(
            absl::StrCat("connection closed before the stream ended; so far:\n",
                         DescribeBlocks(result_.header_blocks)));
      }
      const ssize_t used = nghttp2_session_mem_recv(
          session_, reinterpret_cast<const uint8_t*>(buffer),
          static_cast<size_t>(n));
      if (used < 0) {
        return absl::InternalError(
            absl::StrCat("nghttp2_session_mem_recv: ",
                         nghttp2_strerror(static_cast<int>(used))));
      }
    }
    return absl::OkStatus();
  }

  static RawH2Client* Self(void* user_data) {
    return static_cast<RawH2Client*>(user_data);
  }

  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame,
                            void* user_data) {
    RawH2Client* self = Self(user_data);
    if (frame->hd.type == NGHTTP2_HEADERS &&
        frame->hd.stream_id == self->stream_id_) {
      self->result_.header_blocks.emplace_back();
    }
    return 0;
  }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                      const uint8_t* name, size_t namelen, const uint8_t* value,
                      size_t valuelen, uint8_t, void* user_data) {
    RawH2Client* self = Self(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS ||
        frame->hd.stream_id != self->stream_id_ ||
        self->result_.header_blocks.empty()) {
      return 0;
    }
    self->result_.header_blocks.back().fields.emplace_back(
        std::string(reinterpret_cast<const char*>(name), namelen),
        std::string(reinterpret_cast<const char*>(value), valuelen));
    return 0;
  }

  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame,
                         void* user_data) {
    RawH2Client* self = Self(user_data);
    if (frame->hd.stream_id != self->stream_id_) return 0;
    const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS:
        if (!self->result_.header_blocks.empty()) {
          self->result_.header_blocks.back().end_stream = end_stream;
        }
        break;
      case NGHTTP2_DATA:
        ++self->result_.data_frames;
        break;
      case NGHTTP2_RST_STREAM:
        self->result_.rst_stream_received = true;
        break;
      default:
        break;
    }
    return 0;
  }

  static int OnDataChunk(nghttp2_session*, uint8_t, int32_t stream_id,
                         const uint8_t* data, size_t len, void* user_data) {
    RawH2Client* self = Self(user_data);
    if (stream_id == self->stream_id_) {
      self->result_.data.append(reinterpret_cast<const char*>(data), len);
    }
    return 0;
  }

  static int OnStreamClose(nghttp2_session*, int32_t stream_id,
                           uint32_t error_code, void* user_data) {
    RawH2Client* self = Self(user_data);
    if (stream_id == self->stream_id_) {
      self->result_.stream_closed = true;
      self->result_.close_error_code = error_code;
    }
    return 0;
  }

  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf,
                          size_t length, uint32_t* data_flags,
                          nghttp2_data_source* source, void*) {
    auto* self = static_cast<RawH2Client*>(source->ptr);
    const size_t n = std::min(length, self->body_.size() - self->body_sent_);
    std::memcpy(buf, self->body_.data() + self->body_sent_, n);
    self->body_sent_ += n;
    if (self->body_sent_ == self->body_.size())
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }

  const int fd_;
  const std::string body_;
  size_t body_sent_ = 0;
  nghttp2_session* session_ = nullptr;
  int32_t stream_id_ = -1;
  H2Result result_;
};

std::vector<std::pair<std::string, std::string>> GrpcRequestHeaders(
    int port, const std::string& path, const std::string& content_type) {
  return {{":method", "POST"},
          {":scheme", "http"},
          {":path", path},
          {":authority", absl::StrCat("127.0.0.1:", port)},
          {"content-type", content_type},
          {"te", "trailers"}};
}

// ---------------------------------------------------------------------------
// A misbehaving upstream: an HTTP/2 server (nghttp2, server side) that answers
// a request for ".../BigHeaders" trailers-only and one for ".../BigTrailers"
// with headers, one empty message and trailers, the trailers-only block or the
// trailers carrying `filler_bytes` of x-filler-* fields, whatever header list
// size the sidecar advertised. Serves any number of connections on its own
// thread until destroyed.

class OversizedHeadersUpstream {
 public:
  static absl::StatusOr<std::unique_ptr<OversizedHeadersUpstream>> Start(
      size_t filler_bytes) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::InternalError("socket");
    sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        listen(fd, 16) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      const int err = errno;
      close(fd);
      return absl::InternalError(absl::StrCat("listen: ", std::strerror(err)));
    }
    return std::unique_ptr<OversizedHeadersUpstream>(
        new OversizedHeadersUpstream(fd, ntohs(addr.sin_port), filler_bytes));
  }

  ~OversizedHeadersUpstream() {
    stop_.store(true);
    thread_.join();
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  int answered() const { return answered_.load(); }
  int refused() const { return refused_.load(); }

 private:
  struct Connection {
    OversizedHeadersUpstream* owner;
    int fd;
    nghttp2_session* session = nullptr;
    std::map<int32_t, std::string> paths;
  };

  OversizedHeadersUpstream(int listen_fd, int port, size_t filler_bytes)
      : listen_fd_(listen_fd), port_(port) {
    constexpr size_t kField = 16000;  // each field well under 16 KiB
    for (size_t i = 0; i * kField < filler_bytes; ++i) {
      filler_.emplace_back(absl::StrCat("x-filler-", i),
                           std::string(kField, 'f'));
    }
    thread_ = std::thread([this] { Run(); });
  }

  static nghttp2_nv Nv(const std::string& name, const std::string& value) {
    return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
            reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())),
            name.size(), value.size(), NGHTTP2_NV_FLAG_NONE};
  }

  std::vector<nghttp2_nv> Block(
      const std::vector<std::pair<std::string, std::string>>& head,
      bool with_filler) const {
    std::vector<nghttp2_nv> nv;
    for (const auto& [n, v] : head) nv.push_back(Nv(n, v));
    if (with_filler) {
      for (const auto& [n, v] : filler_) nv.push_back(Nv(n, v));
    }
    return nv;
  }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                      const uint8_t* name, size_t namelen, const uint8_t* value,
                      size_t valuelen, uint8_t, void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    if (frame->hd.type == NGHTTP2_HEADERS &&
        absl::string_view(reinterpret_cast<const char*>(name), namelen) ==
            ":path") {
      conn->paths[frame->hd.stream_id] =
          std::string(reinterpret_cast<const char*>(value), valuelen);
    }
    return 0;
  }

  static int OnFrameRecv(nghttp2_session* session, const nghttp2_frame* frame,
                         void* user_data) {
    auto* conn = static_cast<Connection*>(user_data);
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) {
      return 0;
    }
    const OversizedHeadersUpstream& self = *conn->owner;
    const std::string& path = conn->paths[frame->hd.stream_id];
    static const std::vector<std::pair<std::string, std::string>> kHeaders = {
        {":status", "200"}, {"content-type", "application/grpc"}};
    if (absl::EndsWith(path, "/RefuseOnce") &&
        conn->owner->refused_.fetch_add(1) == 0) {
      // Refused unseen, as a server over its stream limit does.
      nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                NGHTTP2_REFUSED_STREAM);
      return 0;
    }
    if (absl::EndsWith(path, "/RefuseOnce")) {
      const std::vector<nghttp2_nv> nv = self.Block(kHeaders, false);
      nghttp2_data_provider provider{};
      provider.source.ptr = conn;
      provider.read_callback = &ReadSmallBody;
      nghttp2_submit_response(session, frame->hd.stream_id, nv.data(),
                              nv.size(), &provider);
    } else if (absl::EndsWith(path, "/BigTrailers")) {
      const std::vector<nghttp2_nv> nv = self.Block(kHeaders, false);
      nghttp2_data_provider provider{};
      provider.source.ptr = conn;
      provider.read_callback = &ReadBody;
      nghttp2_submit_response(session, frame->hd.stream_id, nv.data(),
                              nv.size(), &provider);
    } else {
      std::vector<std::pair<std::string, std::string>> head = kHeaders;
      head.emplace_back("grpc-status", "0");
      const std::vector<nghttp2_nv> nv = self.Block(head, true);
      nghttp2_submit_response(session, frame->hd.stream_id, nv.data(),
                              nv.size(), nullptr);
    }
    conn->owner->answered_.fetch_add(1);
    return 0;
  }

  // One empty gRPC message, then the oversized trailers.
  static ssize_t ReadBody(nghttp2_session* session, int32_t stream_id,
                          uint8_t* buf, size_t length, uint32_t* data_flags,
                          nghttp2_data_source* source, void*) {
    auto* conn = static_cast<Connection*>(source->ptr);
    if (length < 5) return NGHTTP2_ERR_CALLBACK_FAILURE;
    std::memset(buf, 0, 5);
    *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    const std::vector<std::pair<std::string, std::string>> status = {
        {"grpc-status", "0"}};
    const std::vector<nghttp2_nv> nv = conn->owner->Block(status, true);
    nghttp2_submit_trailer(session, stream_id, nv.data(), nv.size());
    return 5;
  }

  // One empty gRPC message and grpc-status 0.
  static ssize_t ReadSmallBody(nghttp2_session* session, int32_t stream_id,
                               uint8_t* buf, size_t length,
                               uint32_t* data_flags, nghttp2_data_source*,
                               void*) {
    if (length < 5) return NGHTTP2_ERR_CALLBACK_FAILURE;
    std::memset(buf, 0, 5);
    *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    static const std::string kStatus = "grpc-status", kOk = "0";
    const nghttp2_nv nv[] = {Nv(kStatus, kOk)};
    nghttp2_submit_trailer(session, stream_id, nv, 1);
    return 5;
  }

  void Run() {
    nghttp2_session_callbacks* cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, &OnHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &OnFrameRecv);
    nghttp2_option* option;
    nghttp2_option_new(&option);
    // Past nghttp2's own 64 KiB send limit: this peer ignores limits.
    nghttp2_option_set_max_send_header_block_length(option, 1 << 20);
    std::vector<std::unique_ptr<Connection>> conns;
    char buffer[16384];
    while (!stop_.load()) {
      std::vector<pollfd> fds = {{listen_fd_, POLLIN, 0}};
      for (const auto& c : conns) fds.push_back({c->fd, POLLIN, 0});
      if (poll(fds.data(), fds.size(), 20) <= 0) continue;
      if (fds[0].revents != 0) {
        const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
          auto conn = std::make_unique<Connection>(Connection{this, fd});
          nghttp2_session_server_new2(&conn->session, cb, conn.get(), option);
          nghttp2_submit_settings(conn->session, NGHTTP2_FLAG_NONE, nullptr, 0);
          conns.push_back(std::move(conn));
        }
      }
      for (size_t i = 1; i < fds.size(); ++i) {
        Connection& c = *conns[i - 1];
        bool drop = false;
        if (fds[i].revents != 0) {
          const ssize_t n = recv(c.fd, buffer, sizeof buffer, 0);
          drop =
              n <= 0 || nghttp2_session_mem_recv(
                            c.session, reinterpret_cast<const uint8_t*>(buffer),
                            static_cast<size_t>(n)) < 0;
        }
        while (!drop) {
          const uint8_t* out = nullptr;
          const ssize_t n = nghttp2_session_mem_send(c.session, &out);
          if (n <= 0) break;
          drop = !SendAll(c.fd,
                          absl::string_view(reinterpret_cast<const char*>(out),
                                            static_cast<size_t>(n)));
        }
        if (drop) {
          close(c.fd);
          nghttp2_session_del(c.session);
          c.fd = -1;
        }
      }
      conns.erase(std::remove_if(conns.begin(), conns.end(),
                                 [](const auto& c) { return c->fd < 0; }),
                  conns.end());
    }
    for (const auto& c : conns) {
      close(c->fd);
      nghttp2_session_del(c->session);
    }
    nghttp2_option_del(option);
    nghttp2_session_callbacks_del(cb);
    close(listen_fd_);
  }

  const int listen_fd_;
  const int port_;
  std::vector<std::pair<std::string, std::string>> filler_;
  std::atomic<bool> stop_{false};
  std::atomic<int> answered_{0};
  std::atomic<int> refused_{0};
  std::thread thread_;
};

// ---------------------------------------------------------------------------
// The fixture: one demo upstream and one sidecar in front of it.

struct SidecarConfig {
  std::string endpoint;  // default: the fixture's upstream
  int64_t max_message_bytes = 4194304;
  std::string echo_timeout;  // route "echo" timeout; "" = none
  std::string drain_timeout = "5s";
  // If set: a cluster "raw" of this endpoint, for service bulwark.test.Raw.
  std::string raw_endpoint;
};

class ProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<DemoUpstream>> upstream =
        DemoUpstream::Start({.name = kUpstreamName});
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = *std::move(upstream);
    direct_channel_ = grpc::CreateCustomChannel(
        upstream_->address(), grpc::InsecureChannelCredentials(), ClientArgs());
    direct_demo_ = Demo::NewStub(direct_channel_);
    direct_control_ = Control::NewStub(direct_channel_);
    ASSERT_NO_FATAL_FAILURE(StartSidecar({}));
  }

  void TearDown() override {
    if (sidecar_ == nullptr) return;
    if (sidecar_expected_running_) {
      EXPECT_TRUE(sidecar_->Running())
          << "the sidecar died during the test; its log:\n"
          << sidecar_->Log();
      const ExitStatus exit = sidecar_->Stop(absl::Seconds(20));
      EXPECT_TRUE(exit.ExitedWith(0))
          << "the sidecar ended with " << exit.ToString()
          << " after SIGTERM at the end of the test; its log:\n"
          << sidecar_->Log();
    }
  }

  static grpc::ChannelArguments ClientArgs() {
    grpc::ChannelArguments args;
    args.SetString(GRPC_ARG_PRIMARY_USER_AGENT_STRING, kUserAgent);
    return args;
  }

  // A channel to the sidecar on its own TCP connection.
  std::shared_ptr<grpc::Channel> NewSidecarChannel(
      grpc::ChannelArguments args = ClientArgs()) {
    args.SetInt("grpc.use_local_subchannel_pool", 1);
    return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                     grpc::InsecureChannelCredentials(), args);
  }

  std::string ConfigYaml(const SidecarConfig& config) const {
    const std::string endpoint =
        config.endpoint.empty() ? upstream_->address() : config.endpoint;
    std::string yaml = absl::StrCat(
        "listener: { address: \"127.0.0.1:", port_,
        "\", max_message_bytes: ", config.max_message_bytes, " }\n",
        "admin: { address: \"127.0.0.1:", admin_port_, "\" }\n", "workers: 2\n",
        "drain_timeout: ", config.drain_timeout, "\n", "clusters:\n",
        "  - name: demo\n", "    endpoints: [\"", endpoint, "\"]\n");
    if (!config.raw_endpoint.empty()) {
      absl::StrAppend(&yaml, "  - name: raw\n", "    endpoints: [\"",
                      config.raw_endpoint, "\"]\n");
    }
    absl::StrAppend(
        &yaml, "routes:\n", "  - name: echo\n",
        "    match: { service: bulwark.demo.v1.Demo, method: Echo }\n",
        "    cluster: demo\n");
    if (!config.echo_timeout.empty()) {
      absl::StrAppend(&yaml, "    timeout: ", config.echo_timeout, "\n");
    }
    if (!config.raw_endpoint.empty()) {
      absl::StrAppend(&yaml, "  - name: raw\n",
                      "    match: { service: bulwark.test.Raw }\n",
                      "    cluster: raw\n");
    }
    absl::StrAppend(&yaml, "  - name: demo\n",
                    "    match: { service: bulwark.demo.v1.Demo }\n",
                    "    cluster: demo\n", "  - name: control\n",
                    "    match: { service: bulwark.demo.v1.Control }\n",
                    "    cluster: demo\n");
    return yaml;
  }

  // Starts a sidecar with `config`, replacing the running one. PickFreePort is
  // racy (another process may take the port first): a start that fails
  // because the sidecar exited is retried with fresh ports.
  void StartSidecar(const SidecarConfig& config) {
    if (sidecar_ != nullptr && sidecar_expected_running_) {
      const ExitStatus exit = sidecar_->Stop(absl::Seconds(20));
      EXPECT_TRUE(exit.ExitedWith(0)) << exit.ToString() << "\n"
                                      << sidecar_->Log();
    }
    sidecar_.reset();
    sidecar_expected_running_ = false;
    const std::string dir = TempDir();
    std::string last_error;
    for (int attempt = 0; attempt < 3; ++attempt) {
      port_ = PickFreePort();
      admin_port_ = PickFreePort();
      while (admin_port_ == port_) admin_port_ = PickFreePort();
      config_path_ = absl::StrCat(dir, "/bulwark-", attempt, ".yaml");
      ASSERT_TRUE(WriteFile(config_path_, ConfigYaml(config)).ok());
      absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(
          BinaryPath("bulwark"), {"--config", config_path_},
          {.log_path = absl::StrCat(dir, "/bulwark-", attempt, ".log"),
           .stop_grace = absl::Seconds(20)});
      ASSERT_TRUE(child.ok()) << child.status();
      absl::Status up = WaitForTcpPort(port_, kStartTimeout, child->get());
      if (up.ok())
        up = WaitForTcpPort(admin_port_, kStartTimeout, child->get());
      if (up.ok()) {
        sidecar_ = *std::move(child);
        sidecar_expected_running_ = true;
        break;
      }
      last_error = up.ToString();
      if ((*child)->Running()) {
        FAIL() << "the sidecar runs but does not listen: " << last_error;
      }
    }
    ASSERT_NE(sidecar_, nullptr) << "cannot start the sidecar: " << last_error;
    channel_ = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                         grpc::InsecureChannelCredentials(),
                                         ClientArgs());
    demo_ = Demo::NewStub(channel_);
  }

  StatsResponse UpstreamStats() {
    grpc::ClientContext ctx;
    SetTimeout(ctx);
    StatsResponse stats;
    grpc::Status status =
        direct_control_->GetStats(&ctx, StatsRequest(), &stats);
    EXPECT_TRUE(status.ok()) << "GetStats: " << status.error_message();
    return stats;
  }

  void ResetUpstreamStats() {
    grpc::ClientContext ctx;
    SetTimeout(ctx);
    StatsResponse before;
    grpc::Status status =
        direct_control_->ResetStats(&ctx, StatsRequest(), &before);
    ASSERT_TRUE(status.ok()) << "ResetStats: " << status.error_message();
  }

  // A plain unary Echo through the sidecar.
  grpc::Status Echo(const std::string& payload, EchoResponse* response,
                    absl::Duration timeout = kRpcTimeout) {
    grpc::ClientContext ctx;
    SetTimeout(ctx, timeout);
    EchoRequest request;
    request.set_payload(payload);
    return demo_->Echo(&ctx, request, response);
  }

  // Proves the sidecar still serves: one Echo through it succeeds.
  void ExpectServes(const std::string& what) {
    EchoResponse response;
    grpc::Status status = Echo(what, &response);
    EXPECT_TRUE(status.ok()) << what << ": " << status.error_code() << " "
                             << status.error_message() << "\nsidecar log:\n"
                             << sidecar_->Log();
    EXPECT_EQ(response.payload(), what);
    EXPECT_EQ(response.served_by(), kUpstreamName);
  }

  // The value of the sample `series` (name and labels, exactly as exposed) on
  // /metrics, or nullopt if absent.
  std::optional<double> MetricValue(const std::string& series) {
    int code = 0;
    absl::StatusOr<std::string> body =
        HttpGet("127.0.0.1", admin_port_, "/metrics", &code);
    if (!body.ok() || code != 200) return std::nullopt;
    for (absl::string_view line : absl::StrSplit(*body, '\n')) {
      if (!absl::StartsWith(line, series + " ")) continue;
      double value = 0;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &value)) {
        return value;
      }
    }
    return std::nullopt;
  }

  std::unique_ptr<DemoUpstream> upstream_;
  std::shared_ptr<grpc::Channel> direct_channel_;
  std::unique_ptr<Demo::Stub> direct_demo_;
  std::unique_ptr<Control::Stub> direct_control_;

  std::unique_ptr<ChildProcess> sidecar_;
  bool sidecar_expected_running_ = false;
  int port_ = 0;
  int admin_port_ = 0;
  std::string config_path_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Demo::Stub> demo_;
};

// ---------------------------------------------------------------------------
// Unary calls: payload, metadata, trailers, user-agent.

TEST_F(ProxyTest, UnaryEchoPassesPayloadMetadataAndTrailers) {
  const std::string binary("\0\x01\xfe\xff\x80-bin\n", 10);
  const std::string payload = Pattern(1000) + std::string("\0\xff", 2);
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  ctx.AddMetadata("x-a", "1");
  ctx.AddMetadata("x-b-bin", binary);
  EchoRequest request;
  request.set_payload(payload);
  EchoResponse response;
  grpc::Status status = demo_->Echo(&ctx, request, &response);

  ASSERT_TRUE(status.ok()) << status.error_code() << " "
                           << status.error_message();
  EXPECT_TRUE(response.payload() == payload)
      << "payload changed: " << response.payload().size() << " bytes back of "
      << payload.size();
  EXPECT_EQ(response.served_by(), kUpstreamName);
  const auto& headers = ctx.GetServerInitialMetadata();
  EXPECT_EQ(Value(headers, "x-a"), "1");
  EXPECT_EQ(Value(headers, "x-b-bin"), binary);
  const auto& trailers = ctx.GetServerTrailingMetadata();
  EXPECT_EQ(Value(trailers, "t-x-a"), "1");
  EXPECT_EQ(Value(trailers, "t-x-b-bin"), binary);

  // The user-agent the upstream saw is the client's, byte for byte: the same
  // client talking to the upstream directly shows what that is.
  grpc::ClientContext direct_ctx;
  SetTimeout(direct_ctx);
  EchoResponse direct;
  ASSERT_TRUE(direct_demo_->Echo(&direct_ctx, EchoRequest(), &direct).ok());
  EXPECT_THAT(direct.user_agent(), HasSubstr("grpc-c++"));
  EXPECT_THAT(direct.user_agent(), HasSubstr(kUserAgent));
  EXPECT_EQ(response.user_agent(), direct.user_agent());
}

// ---------------------------------------------------------------------------
// Status: code, message, details; trailers-only answers.

TEST_F(ProxyTest, ErrorStatusMessageAndDetailsPassUnchanged) {
  const std::string message = "nö 100% gone";
  const std::string details("\x08\x05\x12\x04gone\0\xff%20", 12);
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  ctx.AddMetadata("x-trace", "t1");
  EchoRequest request;
  request.mutable_fault()->set_status_code(grpc::StatusCode::NOT_FOUND);
  request.mutable_fault()->set_status_message(message);
  request.mutable_fault()->set_status_details(details);
  EchoResponse response;
  grpc::Status status = demo_->Echo(&ctx, request, &response);

  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(status.error_message(), message);
  EXPECT_EQ(status.error_details(), details);
  EXPECT_EQ(Value(ctx.GetServerTrailingMetadata(), "t-x-trace"), "t1");

  // The same after messages: the status comes in trailers after DATA.
  grpc::ClientContext stream_ctx;
  SetTimeout(stream_ctx);
  StreamRequest stream_request;
  stream_request.set_payload("m");
  stream_request.set_count(10);
  stream_request.mutable_fault()->set_fail_after_messages(2);
  stream_request.mutable_fault()->set_status_code(grpc::StatusCode::ABORTED);
  stream_request.mutable_fault()->set_status_message(message);
  stream_request.mutable_fault()->set_status_details(details);
  std::unique_ptr<grpc::ClientReader<EchoResponse>> reader =
      demo_->ServerStream(&stream_ctx, stream_request);
  EchoResponse message_in;
  int received = 0;
  while (reader->Read(&message_in)) ++received;
  grpc::Status stream_status = reader->Finish();

  EXPECT_EQ(received, 2);
  EXPECT_EQ(stream_status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(stream_status.error_message(), message);
  EXPECT_EQ(stream_status.error_details(), details);
}

TEST_F(ProxyTest, TrailersOnlyErrorPassesAsSuch) {
  // Through a gRPC client: code, message and the echoed trailer arrive.
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  ctx.AddMetadata("x-a", "1");
  EchoRequest request;
  request.mutable_fault()->set_status_code(
      grpc::StatusCode::FAILED_PRECONDITION);
  request.mutable_fault()->set_status_message("not now");
  EchoResponse response;
  grpc::Status status = demo_->Echo(&ctx, request, &response);

  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(status.error_message(), "not now");
  EXPECT_EQ(Value(ctx.GetServerTrailingMetadata(), "t-x-a"), "1");

  // On the wire. Without x-* metadata the upstream has no headers of its own
  // to send and answers trailers-only: one HEADERS frame with END_STREAM, no
  // DATA. The sidecar must pass exactly that shape (a gRPC client cannot tell).
  auto raw = [&](int port, bool with_metadata) {
    std::vector<std::pair<std::string, std::string>> headers =
        GrpcRequestHeaders(port, "/bulwark.demo.v1.Demo/Echo",
                           "application/grpc");
    if (with_metadata) headers.emplace_back("x-a", "1");
    return RawH2Client::Request(port, headers, GrpcFrame(request));
  };
  absl::StatusOr<H2Result> direct = raw(upstream_->port(), false);
  ASSERT_TRUE(direct.ok()) << direct.status();
  ASSERT_EQ(direct->header_blocks.size(), 1u)
      << "premise: the demo upstream answers trailers-only\n"
      << DescribeBlocks(direct->header_blocks);
  ASSERT_TRUE(direct->header_blocks[0].end_stream);

  absl::StatusOr<H2Result> proxied = raw(port_, false);
  ASSERT_TRUE(proxied.ok()) << proxied.status();
  ASSERT_EQ(proxied->header_blocks.size(), 1u)
      << DescribeBlocks(proxied->header_blocks);
  const H2HeaderBlock& block = proxied->header_blocks[0];
  EXPECT_TRUE(block.end_stream) << DescribeBlocks(proxied->header_blocks);
  EXPECT_EQ(proxied->data_frames, 0);
  EXPECT_EQ(block.Get(":status"), "200");
  EXPECT_EQ(block.Get("grpc-status"), "9");
  EXPECT_EQ(block.Get("grpc-message"), "not now");
  EXPECT_EQ(DescribeBlocks(proxied->header_blocks),
            DescribeBlocks(direct->header_blocks));
  EXPECT_EQ(proxied->close_error_code, 0u);

  // With x-a the upstream sends headers, then trailers, and no DATA: the same
  // frames again, field for field.
  absl::StatusOr<H2Result> direct_md = raw(upstream_->port(), true);
  ASSERT_TRUE(direct_md.ok()) << direct_md.status();
  absl::StatusOr<H2Result> proxied_md = raw(port_, true);
  ASSERT_TRUE(proxied_md.ok()) << proxied_md.status();
  EXPECT_EQ(DescribeBlocks(proxied_md->header_blocks),
            DescribeBlocks(direct_md->header_blocks));
  EXPECT_EQ(proxied_md->data_frames, direct_md->data_frames);
  EXPECT_EQ(proxied_md->close_error_code, 0u);
}

// ---------------------------------------------------------------------------
// Deadlines and cancellation.

TEST_F(ProxyTest, DeadlineIsPropagatedUpstream) {
  EchoResponse response;
  ASSERT_TRUE(Echo("d", &response, absl::Seconds(3)).ok());
  EXPECT_GT(response.deadline_ms(), 2000);
  // gRPC C++ itself rounds grpc-timeout up to 10ms units between 1s and 10s
  // (a direct call reports up to 3009 too); the sidecar must add nothing.
  EXPECT_LE(response.deadline_ms(), 3010);

  // No client deadline and no route timeout: the sidecar invents none.
  grpc::ClientContext ctx;
  EchoResponse unbounded;
  grpc::Status status = demo_->Echo(&ctx, EchoRequest(), &unbounded);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(unbounded.deadline_ms(), -1);
}

TEST_F(ProxyTest, RouteTimeoutCapsTheDeadline) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar({.echo_timeout = "300ms"}));

  // Without a delay the call succeeds and the upstream sees at most 300ms.
  EchoResponse quick;
  grpc::Status quick_status = Echo("q", &quick, absl::Seconds(10));
  ASSERT_TRUE(quick_status.ok())
      << quick_status.error_code() << " " << quick_status.error_message();
  EXPECT_GT(quick.deadline_ms(), 0);
  EXPECT_LE(quick.deadline_ms(), 300);

  // A client without a deadline gets the route's.
  grpc::ClientContext no_deadline_ctx;
  EchoResponse capped;
  ASSERT_TRUE(demo_->Echo(&no_deadline_ctx, EchoRequest(), &capped).ok());
  EXPECT_GT(capped.deadline_ms(), 0);
  EXPECT_LE(capped.deadline_ms(), 300);

  // A 2s delay under a 10s client deadline ends at the route's 300ms.
  grpc::ClientContext ctx;
  SetTimeout(ctx, absl::Seconds(10));
  EchoRequest request;
  request.mutable_fault()->set_delay_ms(2000);
  EchoResponse response;
  const absl::Time start = absl::Now();
  grpc::Status status = demo_->Echo(&ctx, request, &response);
  const absl::Duration elapsed = absl::Now() - start;

  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << status.error_message();
  EXPECT_GE(elapsed, absl::Milliseconds(280));
  EXPECT_LT(elapsed, absl::Milliseconds(1500));

  // Other routes have no timeout.
  grpc::ClientContext stream_ctx;
  SetTimeout(stream_ctx, absl::Seconds(10));
  StreamRequest stream_request;
  stream_request.set_count(1);
  stream_request.mutable_fault()->set_delay_ms(600);
  std::unique_ptr<grpc::ClientReader<EchoResponse>> reader =
      demo_->ServerStream(&stream_ctx, stream_request);
  EchoResponse streamed;
  EXPECT_TRUE(reader->Read(&streamed));
  EXPECT_GT(streamed.deadline_ms(), 8000);
  while (reader->Read(&streamed)) {
  }
  grpc::Status stream_status = reader->Finish();
  EXPECT_TRUE(stream_status.ok()) << stream_status.error_message();
}

TEST_F(ProxyTest, HangingUpstreamEndsByClientDeadline) {
  ResetUpstreamStats();
  grpc::ClientContext ctx;
  SetTimeout(ctx, absl::Milliseconds(500));
  EchoRequest request;
  request.mutable_fault()->set_hang(true);
  EchoResponse response;
  grpc::Status status = demo_->Echo(&ctx, request, &response);

  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << status.error_message();
  EXPECT_TRUE(PollUntil(
      [&] {
        const StatsResponse stats = UpstreamStats();
        return stats.cancelled_total() == 1 && stats.in_flight() == 0;
      },
      kRpcTimeout))
      << UpstreamStats().DebugString();
  EXPECT_EQ(UpstreamStats().calls_total(), 1u);
  ExpectServes("after a deadline");
}

TEST_F(ProxyTest, ClientCancelPropagatesUpstream) {
  ResetUpstreamStats();
  // A long deadline: only the cancel can end the upstream call within the
  // poll below.
  PendingEcho hanging;
  SetTimeout(hanging.ctx, absl::Minutes(5));
  hanging.request.mutable_fault()->set_hang(true);
  hanging.Start(*demo_);
  ASSERT_TRUE(
      PollUntil([&] { return UpstreamStats().in_flight() == 1; }, kRpcTimeout))
      << UpstreamStats().DebugString();

  hanging.ctx.TryCancel();
  ASSERT_TRUE(hanging.Wait());
  EXPECT_EQ(hanging.status.error_code(), grpc::StatusCode::CANCELLED);

  EXPECT_TRUE(PollUntil(
      [&] {
        const StatsResponse stats = UpstreamStats();
        return stats.cancelled_total() == 1 && stats.in_flight() == 0;
      },
      absl::Seconds(20)))
      << "the upstream never saw the cancel: " << UpstreamStats().DebugString();
  ExpectServes("after a cancel");
}

// ---------------------------------------------------------------------------
// Streaming kinds.

TEST_F(ProxyTest, ServerStreamThousandMessages) {
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

  ASSERT_TRUE(status.ok()) << status.error_code() << " "
                           << status.error_message();
  EXPECT_EQ(received, 1000u);
  EXPECT_EQ(Value(ctx.GetServerInitialMetadata(), "x-s"), "v");
  EXPECT_EQ(Value(ctx.GetServerTrailingMetadata(), "t-x-s"), "v");
}

TEST_F(ProxyTest, ClientStreamAndBidiPingPong) {
  {
    grpc::ClientContext ctx;
    SetTimeout(ctx);
    ctx.AddMetadata("x-c", "cs");
    EchoResponse response;
    std::unique_ptr<grpc::ClientWriter<EchoRequest>> writer =
        demo_->ClientStream(&ctx, &response);
    std::string expected;
    uint64_t bytes = 0;
    for (int i = 0; i < 50; ++i) {
      EchoRequest request;
      request.set_payload(absl::StrCat("part-", i, ";"));
      expected += request.payload();
      bytes += request.payload().size();
      ASSERT_TRUE(writer->Write(request));
    }
    ASSERT_TRUE(writer->WritesDone());
    grpc::Status status = writer->Finish();

    ASSERT_TRUE(status.ok())
        << status.error_code() << " " << status.error_message();
    EXPECT_EQ(response.payload(), expected);
    EXPECT_EQ(response.sequence(), 50u);
    EXPECT_EQ(response.total_bytes(), bytes);
    EXPECT_EQ(Value(ctx.GetServerInitialMetadata(), "x-c"), "cs");
    EXPECT_EQ(Value(ctx.GetServerTrailingMetadata(), "t-x-c"), "cs");
  }
  {
    grpc::ClientContext ctx;
    SetTimeout(ctx, absl::Minutes(2));
    ctx.AddMetadata("x-b", "bidi");
    std::unique_ptr<grpc::ClientReaderWriter<EchoRequest, EchoResponse>>
        stream = demo_->Bidi(&ctx);
    for (int i = 0; i < 100; ++i) {
      EchoRequest request;
      request.set_payload(absl::StrCat("ping ", i));
      ASSERT_TRUE(stream->Write(request)) << "write " << i;
      EchoResponse response;
      ASSERT_TRUE(stream->Read(&response)) << "read " << i;
      ASSERT_EQ(response.payload(), absl::StrCat("ping ", i));
      ASSERT_EQ(response.sequence(), static_cast<uint64_t>(i));
    }
    ASSERT_TRUE(stream->WritesDone());
    EchoResponse extra;
    EXPECT_FALSE(stream->Read(&extra));
    grpc::Status status = stream->Finish();

    ASSERT_TRUE(status.ok())
        << status.error_code() << " " << status.error_message();
    EXPECT_EQ(Value(ctx.GetServerInitialMetadata(), "x-b"), "bidi");
    EXPECT_EQ(Value(ctx.GetServerTrailingMetadata(), "t-x-b"), "bidi");
  }
}

// ---------------------------------------------------------------------------
// Message sizes.

TEST_F(ProxyTest, EightMiBMessageWithRaisedLimit) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar({.max_message_bytes = 10485760}));
  ResetUpstreamStats();
  grpc::ChannelArguments args = ClientArgs();
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  std::unique_ptr<Demo::Stub> stub = Demo::NewStub(NewSidecarChannel(args));
  constexpr size_t kBig = 8 << 20;
  // Each direction alone first, so a failure says which one stalls. 8 MiB
  // crosses loopback in well under a second: 15s means stuck.
  constexpr absl::Duration kBigTimeout = absl::Seconds(15);

  {  // Upstream to client: a small request, an 8 MiB answer.
    grpc::ClientContext ctx;
    SetTimeout(ctx, kBigTimeout);
    EchoRequest small;
    small.set_response_bytes(kBig);
    EchoResponse big;
    grpc::Status status = stub->Echo(&ctx, small, &big);
    EXPECT_TRUE(status.ok()) << "8 MiB response: " << status.error_code() << " "
                             << status.error_message();
    EXPECT_EQ(big.payload().size(), kBig);
  }
  {  // Client to upstream: an 8 MiB request, a small answer.
    grpc::ClientContext ctx;
    SetTimeout(ctx, kBigTimeout);
    EchoRequest big;
    big.set_payload(Pattern(kBig, 1));
    big.set_response_bytes(10);
    EchoResponse small;
    grpc::Status status = stub->Echo(&ctx, big, &small);
    EXPECT_TRUE(status.ok())
        << "8 MiB request: " << status.error_code() << " "
        << status.error_message()
        << "; upstream stats: " << UpstreamStats().ShortDebugString();
    EXPECT_EQ(small.payload().size(), 10u);
  }
  {  // Both ways: an 8 MiB echo, byte-exact.
    const std::string payload = Pattern(kBig, 3);
    grpc::ClientContext ctx;
    SetTimeout(ctx, kBigTimeout);
    EchoRequest request;
    request.set_payload(payload);
    EchoResponse response;
    grpc::Status status = stub->Echo(&ctx, request, &response);
    EXPECT_TRUE(status.ok())
        << "8 MiB echo: " << status.error_code() << " "
        << status.error_message()
        << "; upstream stats: " << UpstreamStats().ShortDebugString();
    EXPECT_EQ(response.payload().size(), payload.size());
    EXPECT_TRUE(response.payload() == payload) << "8 MiB payload changed";
  }
}

TEST_F(ProxyTest, OversizedMessageIsRefusedWithResourceExhausted) {
  ResetUpstreamStats();
  grpc::ChannelArguments args = ClientArgs();
  args.SetMaxSendMessageSize(-1);
  std::unique_ptr<Demo::Stub> stub = Demo::NewStub(NewSidecarChannel(args));

  grpc::ClientContext ctx;
  SetTimeout(ctx, absl::Minutes(1));
  EchoRequest request;
  request.set_payload(Pattern(5 << 20));
  EchoResponse response;
  grpc::Status status = stub->Echo(&ctx, request, &response);

  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_EQ(Value(ctx.GetServerTrailingMetadata(), "x-bulwark-reason"),
            "message_too_large");
  EXPECT_EQ(UpstreamStats().calls_total(), 0u)
      << "the message reached the upstream";

  // The connection and the sidecar still serve; the upstream counts that one.
  grpc::ClientContext ok_ctx;
  SetTimeout(ok_ctx);
  EchoRequest ok_request;
  ok_request.set_payload("small");
  EchoResponse ok_response;
  grpc::Status ok_status = stub->Echo(&ok_ctx, ok_request, &ok_response);
  EXPECT_TRUE(ok_status.ok())
      << ok_status.error_code() << " " << ok_status.error_message();
  EXPECT_EQ(ok_response.payload(), "small");
  EXPECT_EQ(UpstreamStats().calls_total(), 1u);
}

// ---------------------------------------------------------------------------
// Routing and upstream failures.

TEST_F(ProxyTest, UnknownMethodGetsUnimplementedNamingIt) {
  grpc::TemplatedGenericStub<EchoRequest, EchoResponse> generic(channel_);
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  EchoRequest request;
  request.set_payload("nope");
  EchoResponse response;
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(&ctx, "/bulwark.demo.v1.Nope/Thing", grpc::StubOptions(),
                    &request, &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(kRpcTimeout * 2));

  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_THAT(status.error_message(), HasSubstr("/bulwark.demo.v1.Nope/Thing"));
  EXPECT_EQ(UpstreamStats().calls_total(), 0u);
  ExpectServes("after an unknown method");
}

TEST_F(ProxyTest, UpstreamDownGivesUnavailableThenRecovers) {
  ExpectServes("before");
  ASSERT_TRUE(upstream_->Stop().ok());

  for (int i = 0; i < 3; ++i) {
    EchoResponse response;
    grpc::Status status = Echo("down", &response, absl::Seconds(10));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << "call " << i << ": " << status.error_message();
  }

  ASSERT_TRUE(upstream_->Restart().ok());
  // Reconnect backoff is at most 5s.
  grpc::Status last;
  EXPECT_TRUE(PollUntil(
      [&] {
        EchoResponse response;
        last = Echo("up again", &response, absl::Seconds(5));
        return last.ok() && response.payload() == "up again";
      },
      absl::Seconds(30)))
      << "still failing: " << last.error_code() << " " << last.error_message()
      << "\nsidecar log:\n"
      << sidecar_->Log();
}

TEST_F(ProxyTest, UnreachableEndpointGivesUnavailable) {
  // A port nobody listens on (picked free, then closed).
  const int closed_port = PickFreePort();
  ASSERT_NO_FATAL_FAILURE(
      StartSidecar({.endpoint = absl::StrCat("127.0.0.1:", closed_port)}));
  for (int i = 0; i < 3; ++i) {
    EchoResponse response;
    const absl::Time start = absl::Now();
    grpc::Status status = Echo("nowhere", &response, absl::Seconds(10));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << "call " << i << ": " << status.error_message();
    EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "call " << i;
  }
}

// ---------------------------------------------------------------------------
// Concurrency.

TEST_F(ProxyTest, ManyConcurrentStreamsOverFewConnections) {
  constexpr int kCalls = 200;
  ResetUpstreamStats();
  std::unique_ptr<Demo::Stub> stubs[2] = {Demo::NewStub(NewSidecarChannel()),
                                          Demo::NewStub(NewSidecarChannel())};
  std::vector<std::unique_ptr<PendingEcho>> calls;
  for (int i = 0; i < kCalls; ++i) {
    auto call = std::make_unique<PendingEcho>();
    SetTimeout(call->ctx, absl::Minutes(1));
    call->request.set_payload(absl::StrCat("call-", i, "-", Pattern(100, i)));
    call->request.mutable_fault()->set_delay_ms(500);
    call->Start(*stubs[i % 2]);
    calls.push_back(std::move(call));
  }
  int ok = 0;
  for (int i = 0; i < kCalls; ++i) {
    PendingEcho& call = *calls[i];
    ASSERT_TRUE(call.Wait()) << "call " << i << " never ended";
    EXPECT_TRUE(call.status.ok())
        << "call " << i << ": " << call.status.error_code() << " "
        << call.status.error_message();
    EXPECT_TRUE(call.response.payload() == call.request.payload())
        << "call " << i << " got another call's payload";
    if (call.status.ok() && call.response.payload() == call.request.payload()) {
      ++ok;
    }
  }
  EXPECT_EQ(ok, kCalls);
  const StatsResponse stats = UpstreamStats();
  EXPECT_EQ(stats.calls_total(), static_cast<uint64_t>(kCalls));
  EXPECT_EQ(stats.in_flight(), 0u);
  // Multiplexed, not serialised: with a 500ms delay each, many overlapped.
  EXPECT_GE(stats.max_in_flight(), 10u);
}

// ---------------------------------------------------------------------------
// Drain.

TEST_F(ProxyTest, DrainLetsInFlightCallFinish) {
  ASSERT_NO_FATAL_FAILURE(StartSidecar({.drain_timeout = "20s"}));
  int code = 0;
  ASSERT_TRUE(HttpGet("127.0.0.1", admin_port_, "/readyz", &code).ok());
  ASSERT_EQ(code, 200);
  ResetUpstreamStats();

  // Long enough that the sidecar is still draining while we look at /readyz.
  PendingEcho slow;
  SetTimeout(slow.ctx, absl::Minutes(1));
  slow.request.set_payload("slow");
  slow.request.mutable_fault()->set_delay_ms(3000);
  slow.Start(*demo_);
  ASSERT_TRUE(
      PollUntil([&] { return UpstreamStats().in_flight() == 1; }, kRpcTimeout));

  ASSERT_TRUE(sidecar_->Signal(SIGTERM).ok());
  EXPECT_TRUE(PollUntil(
      [&] {
        int status_code = 0;
        return HttpGet("127.0.0.1", admin_port_, "/readyz", &status_code)
                   .ok() &&
               status_code == 503;
      },
      absl::Seconds(10)))
      << "/readyz never turned 503 during the drain";

  // New connections are no longer accepted.
  if (!slow.done.HasBeenNotified()) {
    std::unique_ptr<Demo::Stub> late = Demo::NewStub(NewSidecarChannel());
    grpc::ClientContext late_ctx;
    SetTimeout(late_ctx, absl::Seconds(5));
    EchoRequest late_request;
    EchoResponse late_response;
    grpc::Status late_status =
        late->Echo(&late_ctx, late_request, &late_response);
    EXPECT_EQ(late_status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << "a call on a new connection during the drain: "
        << late_status.error_message();
  }

  ASSERT_TRUE(slow.Wait());
  EXPECT_TRUE(slow.status.ok())
      << slow.status.error_code() << " " << slow.status.error_message();
  EXPECT_EQ(slow.response.payload(), "slow");

  absl::StatusOr<ExitStatus> exit = sidecar_->Wait(absl::Seconds(30));
  sidecar_expected_running_ = false;
  ASSERT_TRUE(exit.ok()) << exit.status() << "\n" << sidecar_->Log();
  EXPECT_TRUE(exit->ExitedWith(0)) << exit->ToString() << "\n"
                                   << sidecar_->Log();
}

// ---------------------------------------------------------------------------
// Metrics.

TEST_F(ProxyTest, MetricsCountCalls) {
  constexpr int kCalls = 7;
  for (int i = 0; i < kCalls; ++i) {
    EchoResponse response;
    grpc::Status status = Echo(absl::StrCat("m", i), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  grpc::ClientContext ctx;
  SetTimeout(ctx);
  EchoRequest failing;
  failing.mutable_fault()->set_status_code(grpc::StatusCode::NOT_FOUND);
  EchoResponse response;
  EXPECT_EQ(demo_->Echo(&ctx, failing, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);

  const std::string ok_series =
      "bulwark_requests_total{code=\"OK\",route=\"echo\"}";
  const std::string not_found_series =
      "bulwark_requests_total{code=\"NOT_FOUND\",route=\"echo\"}";
  // Counted when the stream closes, which may be just after the client has
  // its answer.
  EXPECT_TRUE(PollUntil(
      [&] {
        return MetricValue(ok_series).value_or(0) >= kCalls &&
               MetricValue(not_found_series).value_or(0) >= 1;
      },
      kRpcTimeout));
  EXPECT_EQ(MetricValue(ok_series), std::optional<double>(kCalls));
  EXPECT_EQ(MetricValue(not_found_series), std::optional<double>(1));
}

// ---------------------------------------------------------------------------
// Bad input on the listener.

TEST_F(ProxyTest, GarbageBytesCloseTheConnectionAndTheSidecarStillServes) {
  std::string garbage;
  for (int i = 0; i < 256; ++i) garbage.push_back(static_cast<char>(i * 37));
  absl::StatusOr<RawExchange> exchange =
      SendRawBytes(port_, garbage, absl::Seconds(10));
  ASSERT_TRUE(exchange.ok()) << exchange.status();
  EXPECT_TRUE(exchange->closed_by_peer)
      << "the sidecar kept a connection that sent garbage open";
  ExpectServes("after garbage");
}

TEST_F(ProxyTest, Http1RequestIsRefusedAndTheSidecarStillServes) {
  absl::StatusOr<RawExchange> exchange =
      SendRawBytes(port_,
                   absl::StrCat("GET / HTTP/1.1\r\nHost: 127.0.0.1:", port_,
                                "\r\nConnection: keep-alive\r\n\r\n"),
                   absl::Seconds(10));
  ASSERT_TRUE(exchange.ok()) << exchange.status();
  EXPECT_TRUE(exchange->closed_by_peer)
      << "the sidecar kept an HTTP/1.1 connection open";
  EXPECT_FALSE(absl::StartsWith(exchange->received, "HTTP/1.1 200"))
      << exchange->received;
  ExpectServes("after HTTP/1.1");
}

TEST_F(ProxyTest, NonGrpcContentTypeGets415) {
  ResetUpstreamStats();
  EchoRequest request;
  request.set_payload("plain");
  absl::StatusOr<H2Result> result = RawH2Client::Request(
      port_,
      GrpcRequestHeaders(port_, "/bulwark.demo.v1.Demo/Echo", "text/plain"),
      GrpcFrame(request));

  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_GE(result->header_blocks.size(), 1u);
  EXPECT_EQ(result->header_blocks[0].Get(":status"), "415")
      << DescribeBlocks(result->header_blocks);
  EXPECT_EQ(UpstreamStats().calls_total(), 0u);
  ExpectServes("after text/plain");
}

TEST_F(ProxyTest, TruncatedMessageThenEndStreamGetsAGrpcError) {
  ResetUpstreamStats();
  EchoRequest request;
  request.set_payload("truncated");
  std::string frame = GrpcFrame(request);
  frame.resize(frame.size() - 4);  // the prefix announces more than arrives
  absl::StatusOr<H2Result> result = RawH2Client::Request(
      port_,
      GrpcRequestHeaders(port_, "/bulwark.demo.v1.Demo/Echo",
                         "application/grpc"),
      frame);
  ASSERT_TRUE(result.ok()) << result.status();
  // A clean gRPC error (the upstream's verdict on a truncated message) or a
  // reset: never OK.
  std::string status = "<none>";
  for (const H2HeaderBlock& block : result->header_blocks) {
    if (block.Get("grpc-status") != "<absent>")
      status = block.Get("grpc-status");
  }
  EXPECT_TRUE(result->rst_stream_received ||
              (status != "<none>" && status != "0"))
      << DescribeBlocks(result->header_blocks);
  ExpectServes("after a truncated message");
}

TEST_F(ProxyTest, HeaderBlockOverTheLimitIsResetWithEnhanceYourCalm) {
  // The block is abandoned at the field that passes the limit (SPEC section
  // 11): nghttp2 resets a stream whose header callback gave up, so it can
  // carry no answer, and the reset says ENHANCE_YOUR_CALM, which gRPC
  // clients report as RESOURCE_EXHAUSTED.
  ResetUpstreamStats();
  auto headers = GrpcRequestHeaders(port_, "/bulwark.demo.v1.Demo/Echo",
                                    "application/grpc");
  for (int i = 0; i < 20; ++i) {  // 20 x 4 KiB > the 64 KiB header list limit
    headers.emplace_back(absl::StrCat("x-big-", i),
                         std::string(4096, 'a' + i % 26));
  }
  EchoRequest request;
  request.set_payload("big headers");
  absl::StatusOr<H2Result> result =
      RawH2Client::Request(port_, headers, GrpcFrame(request));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->header_blocks.empty())
      << DescribeBlocks(result->header_blocks);
  EXPECT_TRUE(result->rst_stream_received);
  EXPECT_EQ(result->close_error_code,
            static_cast<uint32_t>(NGHTTP2_ENHANCE_YOUR_CALM));
  EXPECT_EQ(UpstreamStats().calls_total(), 0u);
  ExpectServes("after an oversized header block");
}

// ---------------------------------------------------------------------------
// What gRPC accepts passes; every call ends; header lists are bounded (SPEC
// sections 3 and 11).

TEST_F(ProxyTest, MetadataValuesWithLeadingAndTrailingSpacesPass) {
  const std::string padded = " padded ";
  auto call = [&](Demo::Stub& stub, grpc::ClientContext& ctx) {
    SetTimeout(ctx);
    ctx.AddMetadata("x-padded", padded);
    EchoRequest request;
    request.set_payload("spaces");
    EchoResponse response;
    return stub.Echo(&ctx, request, &response);
  };
  // Premise: a gRPC client and server take such a value between themselves.
  grpc::ClientContext direct_ctx;
  grpc::Status direct = call(*direct_demo_, direct_ctx);
  ASSERT_TRUE(direct.ok()) << direct.error_message();
  ASSERT_EQ(Value(direct_ctx.GetServerInitialMetadata(), "x-padded"), padded);

  grpc::ClientContext ctx;
  grpc::Status status = call(*demo_, ctx);
  ASSERT_TRUE(status.ok()) << status.error_code() << " "
                           << status.error_message();
  EXPECT_EQ(Value(ctx.GetServerInitialMetadata(), "x-padded"), padded);
  EXPECT_EQ(Value(ctx.GetServerTrailingMetadata(), "t-x-padded"), padded);
}

TEST_F(ProxyTest, ALocalAnswerQuotingAHugePathIsCutAndEndsTheCall) {
  // Unknown methods are answered UNIMPLEMENTED quoting the :path. 15000 "é"
  // (30 KB) percent-encode to 90 KB, a header block nghttp2 will not send;
  // 60 KB of ASCII fits its send limit but not most clients' header limits.
  for (const std::string& method : {std::string(60000, 'a'), [] {
                                      std::string s;
                                      for (int i = 0; i < 15000; ++i)
                                        s += "\xc3\xa9";
                                      return s;
                                    }()}) {
    const std::string path = "/bulwark.demo.v1.Nope/" + method;
    const absl::Time start = absl::Now();
    // An immediate answer takes milliseconds, even on a loaded machine.
    absl::StatusOr<H2Result> result = RawH2Client::Request(
        port_, GrpcRequestHeaders(port_, path, "application/grpc"),
        GrpcFrame(EchoRequest()), absl::Seconds(2));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_LT(absl::Now() - start, absl::Seconds(2));
    ASSERT_EQ(result->header_blocks.size(), 1u)
        << DescribeBlocks(result->header_blocks).substr(0, 500);
    const H2HeaderBlock& block = result->header_blocks[0];
    EXPECT_EQ(block.Get("grpc-status"), "12");
    const std::string message = block.Get("grpc-message");
    EXPECT_LE(message.size(), 2048u);
    EXPECT_TRUE(absl::StartsWith(message, "no route for method /bulwark.demo"))
        << message.substr(0, 100);
    EXPECT_TRUE(absl::EndsWith(message, "...")) << message.substr(0, 100);
    // Cut between characters: whole "%C3%A9" groups, then "...".
    if (method[0] != 'a') {
      EXPECT_TRUE(absl::EndsWith(message, "%C3%A9...")) << message;
    }
  }
  ExpectServes("after a huge path");
}

TEST_F(ProxyTest, AnUpstreamHeaderListOverTheLimitEndsTheCallWithInternal) {
  // 80 KB of fields, in the trailers-only answer or in the trailers after a
  // message: over the 64 KiB the sidecar advertises to upstreams.
  absl::StatusOr<std::unique_ptr<OversizedHeadersUpstream>> raw =
      OversizedHeadersUpstream::Start(80000);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_NO_FATAL_FAILURE(StartSidecar({.raw_endpoint = (*raw)->address()}));
  grpc::TemplatedGenericStub<EchoRequest, EchoResponse> generic(channel_);
  for (const std::string method : {"BigHeaders", "BigTrailers"}) {
    grpc::ClientContext ctx;
    SetTimeout(ctx, absl::Seconds(10));
    EchoRequest request;
    request.set_payload(method);
    EchoResponse response;
    absl::Notification done;
    grpc::Status status;
    const absl::Time start = absl::Now();
    generic.UnaryCall(&ctx, "/bulwark.test.Raw/" + method, grpc::StubOptions(),
                      &request, &response, [&](grpc::Status s) {
                        status = std::move(s);
                        done.Notify();
                      });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(kRpcTimeout));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL)
        << method << ": " << status.error_message();
    EXPECT_EQ(status.error_message(),
              "response header list exceeds 65536 bytes")
        << method;
    EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << method;
  }
  EXPECT_EQ((*raw)->answered(), 2);
  ExpectServes("after oversized upstream header lists");
}

TEST_F(ProxyTest, AStreamTheUpstreamRefusedUnseenIsSentAgain) {
  // SPEC section 3: REFUSED_STREAM (or a stream above a GOAWAY's last id) is
  // not a failure; the call is sent once more and answered.
  absl::StatusOr<std::unique_ptr<OversizedHeadersUpstream>> raw =
      OversizedHeadersUpstream::Start(0);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_NO_FATAL_FAILURE(StartSidecar({.raw_endpoint = (*raw)->address()}));
  grpc::TemplatedGenericStub<EchoRequest, EchoResponse> generic(channel_);
  grpc::ClientContext ctx;
  SetTimeout(ctx, absl::Seconds(10));
  EchoRequest request;
  request.set_payload("again");
  EchoResponse response;
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(&ctx, "/bulwark.test.Raw/RefuseOnce", grpc::StubOptions(),
                    &request, &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(kRpcTimeout));
  EXPECT_TRUE(status.ok()) << status.error_code() << ": "
                           << status.error_message();
  EXPECT_EQ((*raw)->refused(), 2);  // the first refused, the second answered
  EXPECT_EQ((*raw)->answered(), 1);
}

// The same for a streaming call (SPEC section 9: every RPC kind, outside any
// retry budget, once): the sidecar keeps the first bytes of a stream until
// the upstream answers, so a refused stream is replayed whole.
TEST_F(ProxyTest, AStreamingCallTheUpstreamRefusedUnseenIsSentAgain) {
  absl::StatusOr<std::unique_ptr<OversizedHeadersUpstream>> raw =
      OversizedHeadersUpstream::Start(0);
  ASSERT_TRUE(raw.ok()) << raw.status();
  ASSERT_NO_FATAL_FAILURE(StartSidecar({.raw_endpoint = (*raw)->address()}));
  class Bidi final : public grpc::ClientBidiReactor<EchoRequest, EchoResponse> {
   public:
    void Go() {
      request_.set_payload("streamed");
      StartWrite(&request_);
      StartRead(&response_);
      StartCall();
    }
    void OnWriteDone(bool ok) override {
      if (ok) StartWritesDone();
    }
    void OnReadDone(bool ok) override {
      if (ok) {
        ++messages;
        StartRead(&response_);
      }
    }
    void OnDone(const grpc::Status& s) override {
      status = s;
      done.Notify();
    }
    EchoRequest request_;
    EchoResponse response_;
    int messages = 0;
    grpc::Status status;
    absl::Notification done;
  };
  grpc::TemplatedGenericStub<EchoRequest, EchoResponse> generic(channel_);
  grpc::ClientContext ctx;
  SetTimeout(ctx, absl::Seconds(10));
  Bidi bidi;
  generic.PrepareBidiStreamingCall(&ctx, "/bulwark.test.Raw/RefuseOnce",
                                   grpc::StubOptions(), &bidi);
  bidi.Go();
  ASSERT_TRUE(bidi.done.WaitForNotificationWithTimeout(kRpcTimeout));
  EXPECT_TRUE(bidi.status.ok())
      << bidi.status.error_code() << ": " << bidi.status.error_message();
  EXPECT_EQ((*raw)->refused(), 2);  // the first refused, the second answered
  EXPECT_EQ((*raw)->answered(), 1);
}

}  // namespace
}  // namespace bulwark::test
