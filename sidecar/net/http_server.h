// HttpServer: a tiny read-only HTTP/1.1 server (libevent's evhttp) for the
// admin endpoints, running its own event loop on its own thread, so a scrape or
// a probe never touches a worker's loop and a slow admin client never delays a
// call.
//
// Thread-safety: the handler runs on the server's thread only, one request at a
// time, so it needs no lock of its own for state only it touches; anything it
// reads that workers write must be thread-safe. port() may be called from any
// thread; Stop() and the destructor from any thread except the handler's.
//
// Cost: one thread and one event loop per server. Each request copies the
// handler's body into libevent's output buffer once. Requests are bounded
// (headers, body, the time to arrive whole, idle time) and so are connections
// (at most max_connections; at the file-descriptor limit accepting pauses, see
// net::AcceptPause), so a slow or hostile client costs a socket for at most the
// request timeout.
#ifndef BULWARK_SIDECAR_NET_HTTP_SERVER_H_
#define BULWARK_SIDECAR_NET_HTTP_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

struct bufferevent;
struct event_base;
struct event;
struct evhttp;
struct evhttp_connection;
struct evhttp_request;

namespace bulwark {
namespace net {
class AcceptPause;
}  // namespace net

class HttpServer {
 public:
  struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
  };

  // Called with the request method ("GET", "HEAD", "POST", ...) and the path
  // without the query string. The server only serves reads: a 2xx answer to any
  // method other than GET or HEAD is replaced by 405, and every 405 carries
  // `Allow: GET, HEAD`. So a handler routes on the path first (404 for an
  // unknown one) and need not check the method beyond answering 405. For HEAD
  // the server sends the headers of the answer (with the GET body's
  // Content-Length) and drops the body.
  using Handler = absl::AnyInvocable<Response(std::string_view method,
                                              std::string_view path)>;

  struct Options {
    // Longest a connection may stay silent (idle between requests, or stalled
    // within one) or leave an answer unread.
    absl::Duration timeout = absl::Seconds(10);
    // A request must arrive whole (request line, headers, body) within this
    // long of the connection's accept or of the previous answer's end, however
    // it trickles in (a byte a second keeps `timeout` from firing); otherwise
    // the connection is closed.
    absl::Duration request_timeout = absl::Seconds(10);
    // Client connections at once; further ones are closed as they are
    // accepted.
    int max_connections = 256;
    // Admin requests are a request line and a few headers; nothing has a body.
    int64_t max_headers_bytes = 8 * 1024;
    int64_t max_body_bytes = 4 * 1024;
  };

  // Binds `address` ("host:port"; port 0 picks an ephemeral port, see port())
  // and starts serving on a new thread. Errors name the address:
  // InvalidArgument for an unparsable or unresolvable one, Unavailable when it
  // cannot be bound (in use, not local).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Create(
      std::string_view address, Handler handler);
  static absl::StatusOr<std::unique_ptr<HttpServer>> Create(
      std::string_view address, Handler handler, const Options& options);

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  // Stops (see Stop()).
  ~HttpServer();

  // The port actually bound (the ephemeral one when the address said 0).
  uint16_t port() const { return port_; }
  // Client connections open now (a racy snapshot, for tests).
  int ConnectionsApprox() const {
    return open_connections_.load(std::memory_order_relaxed);
  }

  // Stops the loop, joins the thread and closes the listener and every open
  // connection. Prompt whatever clients do: a request in progress is abandoned.
  // Idempotent.
  void Stop();

 private:
  // One client connection's request deadline (http_server.cc).
  struct Connection;

  HttpServer(Handler handler, uint16_t port, const Options& options,
             event_base* base, evhttp* http, event* stop_event);

  static void OnRequest(evhttp_request* request, void* self);
  static void OnStop(int fd, short events, void* self);
  // evhttp's bufferevent factory, called for every accepted connection: the
  // hook where the connection's deadline starts.
  static bufferevent* OnNewConnection(event_base* base, void* self);
  static void OnConnectionTimer(int fd, short events, void* connection);
  static void OnConnectionClosed(evhttp_connection* evcon, void* connection);
  static void OnAnswerSent(evhttp_request* request, void* connection);
  void Track(Connection* connection);
  void Serve(evhttp_request* request);

  Handler handler_;
  const uint16_t port_;
  const Options options_;
  // Owned; freed by Stop() after the thread is joined, so only one thread ever
  // uses them at a time (the loop thread, then the stopping one).
  event_base* base_;
  evhttp* http_;
  event* stop_event_;
  std::unique_ptr<net::AcceptPause> accept_pause_;
  // Loop thread only (and Stop, once the thread is joined): connections
  // accepted whose evhttp connection is not known yet, and those tracked.
  absl::flat_hash_set<Connection*> pending_;
  absl::flat_hash_map<evhttp_connection*, Connection*> connections_;
  std::atomic<int> open_connections_{0};
  std::thread thread_;
  std::once_flag stop_once_;
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_NET_HTTP_SERVER_H_
