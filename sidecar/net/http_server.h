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
// (headers, body, idle time), so a slow or hostile client costs a socket for at
// most the timeout.
#ifndef BULWARK_SIDECAR_NET_HTTP_SERVER_H_
#define BULWARK_SIDECAR_NET_HTTP_SERVER_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

struct event_base;
struct event;
struct evhttp;
struct evhttp_request;

namespace bulwark {

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
    // Longest a connection may take to send a request or stay idle between
    // requests.
    absl::Duration timeout = absl::Seconds(10);
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

  // Stops the loop, joins the thread and closes the listener and every open
  // connection. Prompt whatever clients do: a request in progress is abandoned.
  // Idempotent.
  void Stop();

 private:
  HttpServer(Handler handler, uint16_t port, event_base* base, evhttp* http,
             event* stop_event);

  static void OnRequest(evhttp_request* request, void* self);
  static void OnStop(int fd, short events, void* self);
  void Serve(evhttp_request* request);

  Handler handler_;
  const uint16_t port_;
  // Owned; freed by Stop() after the thread is joined, so only one thread ever
  // uses them at a time (the loop thread, then the stopping one).
  event_base* base_;
  evhttp* http_;
  event* stop_event_;
  std::thread thread_;
  std::once_flag stop_once_;
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_NET_HTTP_SERVER_H_
