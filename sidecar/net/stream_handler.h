// The narrow interface between the transport (sidecar/net/) and the proxy core
// (sidecar/).
//
// The transport parses HTTP/2, owns sockets, sessions and streams; for every
// downstream gRPC call whose request headers are complete it hands a `Call` to
// the worker's `CallHandler`. The core decides (route, policies, endpoint) and
// answers with exactly one of `Call::RespondLocal` (a trailers-only gRPC answer
// made by the sidecar) or `Call::Forward` (splice the call to an upstream
// endpoint; bytes then move inside the transport without the core seeing them).
// The core may also do neither at once and decide later (a parked call), on the
// same worker thread. The core attaches a `CallObserver` to learn how the call
// ended (exactly one OnClose, on every path), which is where permits, tickets
// and metrics settle.
//
// Thread-safety: a Call belongs to one worker; every method must be called on
// that worker's thread. Use Worker::Post (event_loop.h) from other threads, and
// look the call up again by its id, since the client may have left meanwhile.
#ifndef BULWARK_SIDECAR_NET_STREAM_HANDLER_H_
#define BULWARK_SIDECAR_NET_STREAM_HANDLER_H_

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"

namespace bulwark::net {

class Worker;

using HeaderList = std::vector<std::pair<std::string, std::string>>;

// A whole gRPC response kept in memory, to be given to several callers
// (singleflight): the response headers, the body bytes as framed on the wire,
// and the trailers. A trailers-only response has everything in `headers` and no
// body or trailers.
struct CapturedResponse {
  HeaderList headers;
  std::string body;
  HeaderList trailers;
  bool trailers_only = false;
  int grpc_code = 2;
};

class TlsContext;

// A resolved upstream endpoint. `key` identifies the per-worker connection
// (endpoints with the same key share it, also across reloads).
struct UpstreamAddress {
  std::string key;  // "host:port" as configured (+ the TLS context, if any)
  std::string authority;  // sent as :authority when the client's is not kept
  std::string
      host;  // as configured: the TLS name checked unless server_name is set
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  std::shared_ptr<const TlsContext> tls;  // null: plaintext h2c
};

// A gRPC answer produced by the sidecar itself (SPEC section 3): trailers-only.
struct LocalAnswer {
  int grpc_code = 0;
  std::string message;      // percent-encoded on the wire by the transport
  std::string_view reason;  // x-bulwark-reason; empty = not sent
  int64_t retry_pushback_ms = -1;  // grpc-retry-pushback-ms; < 0 = not sent
  int http_status = 200;           // 415 for a non-gRPC content-type, else 200
};

// How a call ended, as seen by the transport.
struct CallResult {
  enum class Ending {
    kCompleted,    // the response finished (any grpc-status) and was delivered
    kLocalAnswer,  // the sidecar answered (RespondLocal or a transport-made
                   // answer)
    kClientCancelled,   // the client reset the stream or went away
    kDeadlineExceeded,  // the call's deadline fired in the sidecar
    kUpstreamReset,     // the upstream reset the stream
    kUpstreamFailed,    // connection to the upstream failed or broke
  };
  Ending ending = Ending::kCompleted;
  int grpc_code = 2;       // the status the client got (or would have got)
  bool forwarded = false;  // an upstream stream was opened
  int upstream_grpc_code =
      -1;  // grpc-status from upstream trailers; -1 if none
  // For endings the transport decided itself (message_too_large): the SPEC
  // reason.
  std::string_view reason;
  absl::Duration upstream_duration = absl::ZeroDuration();
};

class CallObserver {
 public:
  virtual ~CallObserver() = default;
  // Called exactly once when the downstream stream closes (any reason), on the
  // worker. The observer is destroyed right after.
  virtual void OnClose(const CallResult& result) = 0;
};

class Call {
 public:
  virtual ~Call() = default;

  virtual uint64_t id() const = 0;
  virtual Worker& worker() = 0;
  // ":path", e.g. "/pkg.Service/Method".
  virtual std::string_view path() const = 0;
  // The value of a request header (lower-case name), or empty.
  virtual std::string_view header(std::string_view name) const = 0;
  virtual absl::Time start_time() const = 0;
  // The client's deadline from grpc-timeout, or InfiniteFuture.
  virtual absl::Time client_deadline() const = 0;
  // Sets the effective deadline (client's, capped by the route timeout) and
  // arms the timer.
  virtual void SetDeadline(absl::Time deadline) = 0;
  // The effective deadline (InfiniteFuture until SetDeadline).
  virtual absl::Time deadline() const = 0;

  virtual void SetObserver(std::unique_ptr<CallObserver> observer) = 0;
  virtual CallObserver* observer() const = 0;
  virtual void RespondLocal(const LocalAnswer& answer) = 0;
  virtual void Forward(const UpstreamAddress& upstream) = 0;
  // Answers with a response captured from another call (singleflight).
  virtual void RespondWith(
      std::shared_ptr<const CapturedResponse> response) = 0;
  // Holds the request until the client half-closes, then calls `done` with its
  // body (the framed bytes). The body is bounded by max_message_bytes plus one
  // prefix; a larger one is refused with message_too_large. Used for unary
  // calls only.
  virtual void CollectRequest(
      absl::AnyInvocable<void(std::string body)> done) = 0;
  // The request headers (regular ones and :authority), for building a shared
  // upstream call.
  virtual const HeaderList& request_headers() const = 0;
};

// Implemented by the core, one per worker; called on the worker's thread.
class CallHandler {
 public:
  virtual ~CallHandler() = default;
  virtual void OnCall(Call& call) = 0;
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_STREAM_HANDLER_H_
