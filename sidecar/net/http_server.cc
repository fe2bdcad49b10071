#include "sidecar/net/http_server.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "sidecar/host_port.h"
#include "sidecar/net/accept_pause.h"

namespace bulwark {
namespace {

constexpr char kAllowedMethods[] = "GET, HEAD";

// Locking must be on before the first event_base exists, or loop exits
// requested from another thread (Stop) would race the loop. Process-wide and
// idempotent.
void EnableLibeventThreads() {
  static std::once_flag once;
  std::call_once(once, [] { evthread_use_pthreads(); });
}

std::string_view MethodName(evhttp_cmd_type command) {
  switch (command) {
    case EVHTTP_REQ_GET:
      return "GET";
    case EVHTTP_REQ_HEAD:
      return "HEAD";
    case EVHTTP_REQ_POST:
      return "POST";
    case EVHTTP_REQ_PUT:
      return "PUT";
    case EVHTTP_REQ_DELETE:
      return "DELETE";
    case EVHTTP_REQ_OPTIONS:
      return "OPTIONS";
    case EVHTTP_REQ_TRACE:
      return "TRACE";
    case EVHTTP_REQ_CONNECT:
      return "CONNECT";
    case EVHTTP_REQ_PATCH:
      return "PATCH";
  }
  return "UNKNOWN";
}

// The address as the user wrote it, quoted, for error messages. (Our Abseil's
// StrCat takes absl::string_view, a distinct type from std::string_view here.)
std::string Quoted(std::string_view address) {
  std::string quoted = "\"";
  quoted.append(address);
  quoted += '"';
  return quoted;
}

// A listening socket on `address`, non-blocking and close-on-exec. Bound here
// rather than by evhttp_bind_socket so that errors carry errno ("Address
// already in use") instead of a bare failure.
absl::StatusOr<int> Listen(std::string_view address) {
  HostPort host_port;
  if (auto parsed = ParseHostPort(address, PortZero::kAllow); parsed.ok()) {
    host_port = *std::move(parsed);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot listen on ", Quoted(address), ": ", parsed.status().message()));
  }
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* resolved = nullptr;
  const std::string port = std::to_string(host_port.port);
  if (int rc =
          getaddrinfo(host_port.host.c_str(), port.c_str(), &hints, &resolved);
      rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot listen on ", Quoted(address), ": ", gai_strerror(rc)));
  }
  std::string error = "no address";
  int fd = -1;
  for (addrinfo* ai = resolved; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                ai->ai_protocol);
    if (fd < 0) {
      error = absl::StrCat("socket: ", std::strerror(errno));
      continue;
    }
    // Lets a restarted sidecar rebind while old connections sit in TIME_WAIT;
    // it does not let two live listeners share the port.
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      error = absl::StrCat("bind: ", std::strerror(errno));
    } else if (listen(fd, SOMAXCONN) != 0) {
      error = absl::StrCat("listen: ", std::strerror(errno));
    } else {
      break;
    }
    close(fd);
    fd = -1;
  }
  freeaddrinfo(resolved);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", Quoted(address), ": ", error));
  }
  return fd;
}

absl::StatusOr<uint16_t> BoundPort(int fd, std::string_view address) {
  sockaddr_storage bound = {};
  socklen_t length = sizeof(bound);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot listen on ", Quoted(address),
                     ": getsockname: ", std::strerror(errno)));
  }
  if (bound.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Create(
    std::string_view address, Handler handler) {
  return Create(address, std::move(handler), Options());
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Create(
    std::string_view address, Handler handler, const Options& options) {
  int fd = -1;
  if (auto listening = Listen(address); listening.ok()) {
    fd = *listening;
  } else {
    return listening.status();
  }
  uint16_t port = 0;
  if (auto bound = BoundPort(fd, address); bound.ok()) {
    port = *bound;
  } else {
    close(fd);
    return bound.status();
  }

  EnableLibeventThreads();
  event_base* base = event_base_new();
  evhttp* http = base != nullptr ? evhttp_new(base) : nullptr;
  if (http == nullptr) {
    if (base != nullptr) event_base_free(base);
    close(fd);
    return absl::InternalError(absl::StrCat("cannot listen on ",
                                            Quoted(address),
                                            ": cannot create the event loop"));
  }
  // From here the server owns base and http; its destructor frees them.
  std::unique_ptr<HttpServer> server(
      new HttpServer(std::move(handler), port, options, base, http, nullptr));
  server->stop_event_ =
      event_new(base, -1, 0, &HttpServer::OnStop, server.get());

  // Every method reaches the handler so that the answer to, say, a POST is 405
  // on a known path and 404 on an unknown one, not evhttp's blanket 501.
  evhttp_set_allowed_methods(
      http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
  evhttp_set_max_headers_size(http, options.max_headers_bytes);
  evhttp_set_max_body_size(http, options.max_body_bytes);
  const timeval timeout = absl::ToTimeval(options.timeout);
  evhttp_set_timeout_tv(http, &timeout);
  evhttp_set_gencb(http, &HttpServer::OnRequest, server.get());
  evhttp_set_bevcb(http, &HttpServer::OnNewConnection, server.get());
  // On success evhttp owns the socket (closed by evhttp_free); on failure it is
  // still ours.
  evhttp_bound_socket* bound = server->stop_event_ == nullptr
                                   ? nullptr
                                   : evhttp_accept_socket_with_handle(http, fd);
  if (bound == nullptr) {
    close(fd);
    return absl::InternalError(
        absl::StrCat("cannot listen on ", Quoted(address),
                     ": cannot attach the socket to the loop"));
  }
  server->accept_pause_ = std::make_unique<net::AcceptPause>(
      base, evhttp_bound_socket_get_listener(bound), "admin");

  // The admin thread must not take process signals (SIGTERM, SIGHUP, SIGPIPE on
  // a write to a gone client): those belong to the main thread's handling. A
  // new thread inherits the creator's mask, so block everything just around the
  // spawn.
  sigset_t all;
  sigset_t previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  server->thread_ = std::thread([base] { event_base_dispatch(base); });
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  return server;
}

// A client connection's deadline: the timer first runs at once (set up), then
// fires when the request it waits for has not arrived whole in time.
struct HttpServer::Connection {
  HttpServer* server;
  event* timer;
  // Until set up: the bufferevent given to evhttp, with a reference of ours.
  bufferevent* bev;
  evhttp_connection* evcon = nullptr;
};

HttpServer::HttpServer(Handler handler, uint16_t port, const Options& options,
                       event_base* base, evhttp* http, event* stop_event)
    : handler_(std::move(handler)),
      port_(port),
      options_(options),
      base_(base),
      http_(http),
      stop_event_(stop_event) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Stop() {
  std::call_once(stop_once_, [this] {
    if (thread_.joinable()) {
      // An activated event stays pending until the loop runs it, so this works
      // even if the thread has not entered the loop yet; a bare
      // event_base_loopbreak would be lost then, because entering the loop
      // clears the break flag.
      event_active(stop_event_, EV_READ, 0);
      thread_.join();
    }
    // The loop is gone: freeing on this thread races nothing. evhttp_free
    // closes the listener and every client connection (OnConnectionClosed
    // forgets the tracked ones).
    accept_pause_.reset();
    evhttp_free(http_);
    for (Connection* c : pending_) {
      event_free(c->timer);
      bufferevent_decref(c->bev);
      delete c;
    }
    pending_.clear();
    for (auto& [evcon, c] : connections_) {
      event_free(c->timer);
      delete c;
    }
    connections_.clear();
    if (stop_event_ != nullptr) event_free(stop_event_);
    event_base_free(base_);
  });
}

bufferevent* HttpServer::OnNewConnection(event_base* base, void* arg) {
  auto* self = static_cast<HttpServer*>(arg);
  // What evhttp would make itself, except that the bufferevent, not evhttp,
  // closes the socket. evhttp frees a connection from inside the bufferevent's
  // own callbacks (the reply's last byte written), where libevent still holds
  // a reference: left to evhttp, the socket is closed first and the
  // bufferevent's events leave epoll only when that reference goes, by then
  // under a number another thread (a worker's accept) may have been given. The
  // bufferevent closes it after its events are gone.
  bufferevent* bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (bev == nullptr) return nullptr;
  auto* connection =
      new Connection{.server = self, .timer = nullptr, .bev = bev};
  connection->timer =
      evtimer_new(base, &HttpServer::OnConnectionTimer, connection);
  if (connection->timer == nullptr) {
    delete connection;
    return bev;
  }
  // evhttp makes its connection object around `bev` only after this returns,
  // and may free both if that fails: the extra reference keeps `bev` readable
  // until the timer, activated now, runs (before any I/O on the connection,
  // whose events only become active at the next poll) and finds out.
  bufferevent_incref(bev);
  self->pending_.insert(connection);
  event_active(connection->timer, EV_TIMEOUT, 0);
  return bev;
}

void HttpServer::OnConnectionTimer(int, short, void* arg) {
  auto* connection = static_cast<Connection*>(arg);
  if (connection->evcon == nullptr) {
    connection->server->Track(connection);
    return;
  }
  // The request did not arrive whole in time. OnConnectionClosed deletes
  // `connection`.
  evhttp_connection_free(connection->evcon);
}

void HttpServer::Track(Connection* connection) {
  pending_.erase(connection);
  bufferevent* bev = std::exchange(connection->bev, nullptr);
  bufferevent_event_cb eventcb = nullptr;
  void* cbarg = nullptr;
  bufferevent_getcb(bev, nullptr, nullptr, &eventcb, &cbarg);
  // evhttp sets its callbacks, with the connection as their argument, when it
  // makes the connection, and clears them when it frees it.
  auto* evcon = static_cast<evhttp_connection*>(cbarg);
  if (eventcb == nullptr || evcon == nullptr) {
    // evhttp gave up while setting the connection up (out of memory, epoll
    // full) and, on its usual way out, closed the socket itself: the
    // bufferevent freed with our reference must not close that number again,
    // by now perhaps another thread's. (Where that way does not close it, one
    // socket leaks under memory exhaustion: the lesser harm.)
    bufferevent_setfd(bev, -1);
    bufferevent_decref(bev);
    event_free(connection->timer);
    delete connection;
    return;
  }
  bufferevent_decref(bev);  // evhttp's own reference remains
  if (connections_.size() >= static_cast<size_t>(options_.max_connections)) {
    event_free(connection->timer);
    delete connection;
    accept_pause_->NoteRefused([this] {
      return absl::StrCat(
          "connection closed at accept: ", options_.max_connections,
          " admin connections are open");
    });
    evhttp_connection_free(evcon);
    return;
  }
  connection->evcon = evcon;
  connections_.emplace(evcon, connection);
  open_connections_.store(static_cast<int>(connections_.size()),
                          std::memory_order_relaxed);
  evhttp_connection_set_closecb(evcon, &HttpServer::OnConnectionClosed,
                                connection);
  const timeval deadline = absl::ToTimeval(options_.request_timeout);
  evtimer_add(connection->timer, &deadline);
}

void HttpServer::OnConnectionClosed(evhttp_connection* evcon, void* arg) {
  auto* connection = static_cast<Connection*>(arg);
  HttpServer* self = connection->server;
  self->connections_.erase(evcon);
  self->open_connections_.store(static_cast<int>(self->connections_.size()),
                                std::memory_order_relaxed);
  event_free(connection->timer);
  delete connection;
}

void HttpServer::OnAnswerSent(evhttp_request*, void* arg) {
  // The next request on this connection gets the same time to arrive whole.
  auto* connection = static_cast<Connection*>(arg);
  const timeval deadline =
      absl::ToTimeval(connection->server->options_.request_timeout);
  evtimer_add(connection->timer, &deadline);
}

void HttpServer::OnStop(int /*fd*/, short /*events*/, void* self) {
  event_base_loopbreak(static_cast<HttpServer*>(self)->base_);
}

void HttpServer::OnRequest(evhttp_request* request, void* self) {
  static_cast<HttpServer*>(self)->Serve(request);
}

void HttpServer::Serve(evhttp_request* request) {
  // The request is whole: its deadline is met, and the next one's starts once
  // this answer is sent.
  if (auto it = connections_.find(evhttp_request_get_connection(request));
      it != connections_.end()) {
    evtimer_del(it->second->timer);
    evhttp_request_set_on_complete_cb(request, &HttpServer::OnAnswerSent,
                                      it->second);
  }
  const evhttp_cmd_type command = evhttp_request_get_command(request);
  const std::string_view method = MethodName(command);
  const evhttp_uri* uri = evhttp_request_get_evhttp_uri(request);
  const char* path = uri != nullptr ? evhttp_uri_get_path(uri) : nullptr;

  Response response = handler_(method, path != nullptr ? path : "");
  const bool read = command == EVHTTP_REQ_GET || command == EVHTTP_REQ_HEAD;
  if (!read && response.status >= 200 && response.status < 300) {
    response = {.status = 405, .body = "method not allowed\n"};
  }

  evkeyvalq* headers = evhttp_request_get_output_headers(request);
  evhttp_add_header(headers, "Content-Type", response.content_type.c_str());
  // Scrapes and probes must see the live state, never a cached copy.
  evhttp_add_header(headers, "Cache-Control", "no-store");
  if (response.status == 405)
    evhttp_add_header(headers, "Allow", kAllowedMethods);

  evbuffer* body = evbuffer_new();
  if (body == nullptr) {
    evhttp_send_error(request, 500, "out of memory");
    return;
  }
  if (command == EVHTTP_REQ_HEAD) {
    // HTTP wants the headers a GET would get, Content-Length included, and no
    // body: state the length ourselves and hand evhttp nothing to send.
    evhttp_add_header(headers, "Content-Length",
                      std::to_string(response.body.size()).c_str());
  } else {
    evbuffer_add(body, response.body.data(), response.body.size());
  }
  evhttp_send_reply(request, response.status, nullptr, body);
  evbuffer_free(body);
}

}  // namespace bulwark
