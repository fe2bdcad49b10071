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
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "policies/clock.h"
#include "sidecar/net/header_list.h"

namespace bulwark::net {

class Worker;

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
  // The answer outgrew what the sidecar keeps for sharing: nothing is kept,
  // and each caller sends its call upstream on its own.
  bool too_large_to_share = false;
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
  // The route that answered (ErrorInfo metadata in grpc-status-details-bin);
  // empty = none.
  std::string_view route;
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
    kUpstreamFailed,    // the endpoint could not be reached (refused,
                        // reset, a connect held back by backoff) or the
                        // connection broke
    kUpstreamRefused,   // the upstream refused the stream unseen
                        // (REFUSED_STREAM, or above its GOAWAY's last id)
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
  // The request was one whole message, half-closed before the answer began.
  bool unary_shaped = false;
  // gRPC message bytes (5-byte prefixes included) received from and sent to
  // the client.
  uint64_t request_bytes = 0;
  uint64_t response_bytes = 0;
};

class CallObserver {
 public:
  virtual ~CallObserver() = default;
  // Called exactly once when the downstream stream closes (any reason), on the
  // worker. The observer is destroyed right after.
  virtual void OnClose(const CallResult& result) = 0;
};

class Executor;

class Call {
 public:
  virtual ~Call() = default;

  virtual uint64_t id() const = 0;
  // The worker this call lives on, as the chain sees it.
  virtual Executor& executor() = 0;
  // ":path", e.g. "/pkg.Service/Method".
  virtual std::string_view path() const = 0;
  // The client's address ("ip:port"), "" if unknown; formatted on each call
  // (for the access log).
  virtual std::string peer() const { return ""; }
  // The downstream mTLS client certificate's URI SAN, else its subject CN;
  // empty without TLS or a certificate. Read once per connection; valid while
  // the call lives.
  virtual std::string_view peer_identity() const { return ""; }
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
  // Forwards a request the sidecar holds whole (CollectRequest gave it out):
  // `body` is sent as the request, and the response streams to the client as
  // for Forward.
  virtual void ForwardHeld(const UpstreamAddress& upstream,
                           std::string body) = 0;
  // Answers with a response captured from another call (singleflight).
  virtual void RespondWith(
      std::shared_ptr<const CapturedResponse> response) = 0;
  // Holds the request until the client half-closes, then calls `done` with its
  // body (the framed bytes). Past `limit` bytes before the half-close, stops
  // holding and calls `done(std::nullopt)`: the bytes received so far stay
  // queued and the call may then be Forward()ed as a plain call. Used for
  // unary calls only.
  virtual void CollectRequest(
      uint64_t limit,
      absl::AnyInvocable<void(std::optional<std::string> body)> done) = 0;
  // The request headers (regular ones and :authority), for building a shared
  // upstream call.
  virtual const HeaderList& request_headers() const = 0;
};

// --- Upstream calls owned by the core (singleflight flights, health probes)
// ---

struct UpstreamRequest {
  std::string path;  // "/pkg.Service/Method"
  HeaderList
      headers;       // regular headers (and :authority, if the caller has one)
  std::string body;  // framed gRPC messages
  absl::Time deadline = absl::InfiniteFuture();
};

struct UpstreamCallResult {
  int grpc_code = 2;
  std::string grpc_message;
  // Never reached the upstream, or the connection broke.
  bool transport_failure = false;
  // The upstream refused the stream unseen (REFUSED_STREAM, GOAWAY).
  bool refused = false;
  bool deadline_exceeded = false;
  // The captured response outgrew max_response_bytes (it was not kept).
  bool too_large = false;
  absl::Duration duration = absl::ZeroDuration();
  // Set with `capture`: what to answer every caller of the flight with.
  std::shared_ptr<CapturedResponse> response;
};

class UpstreamCallListener {
 public:
  virtual ~UpstreamCallListener() = default;
  // One whole message payload (without the 5-byte prefix), as it arrives.
  virtual void OnMessage(std::string_view /*payload*/) {}
  virtual void OnFinish(const UpstreamCallResult& result) = 0;
};

// What an upstream connection is for: calls, or the endpoint's health probes
// (a connection of their own, never queued behind calls).
enum class UpstreamUse { kCall, kHealthProbe };

struct UpstreamCallOptions {
  bool capture = false;
  UpstreamUse use = UpstreamUse::kCall;
  // Report each whole message through OnMessage (health probes); off for a
  // capture-only call, which then never splits the body into messages.
  bool deliver_messages = true;
  uint64_t max_response_bytes = 4 * 1024 * 1024;
};

// A started upstream call; destroying it cancels the call (RST_STREAM) and no
// callback runs after that.
class UpstreamCallHandle {
 public:
  virtual ~UpstreamCallHandle() = default;
};

// What the chain needs of the worker a call lives on: post to it, find a call
// by id (a continuation's call may have left), its timers and clock, and
// upstream calls of its own. net::Worker implements it; tests fake it.
// Thread-safety: Post from any thread; the rest on the worker's thread.
class Executor {
 public:
  virtual ~Executor() = default;
  virtual void Post(absl::AnyInvocable<void()> task) = 0;
  virtual Call* FindCall(uint64_t id) = 0;
  virtual TimerQueue& timers() = 0;
  // Monotonic: deadlines, buckets, breakers and timers all read this clock.
  virtual Clock& clock() = 0;
  // Failures (no connection) are reported through OnFinish on a later loop
  // iteration, never from inside the call.
  virtual std::unique_ptr<UpstreamCallHandle> StartUpstreamCall(
      const UpstreamAddress& address, UpstreamRequest request,
      UpstreamCallListener* listener, const UpstreamCallOptions& options) = 0;
};

// Implemented by the core, one per worker; called on the worker's thread.
class CallHandler {
 public:
  virtual ~CallHandler() = default;
  virtual void OnCall(Call& call) = 0;
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_STREAM_HANDLER_H_
