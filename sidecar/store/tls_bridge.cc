#include "sidecar/store/tls_bridge.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "sidecar/log.h"
#include "sidecar/net/event_loop.h"

namespace bulwark::store {

struct TlsBridge::Connection {
  // What a bufferevent callback gets: its connection and which side it is.
  struct Side {
    Connection* connection = nullptr;
    bool tls = false;
  };
  uint64_t id = 0;
  TlsBridge* bridge = nullptr;
  bufferevent* plain = nullptr;  // from the client
  bufferevent* tls = nullptr;    // to Redis
  SSL* ssl = nullptr;            // owned by `tls`
  Side plain_side, tls_side;
  uint64_t timer = 0;
  bool handshaken = false;
  bool closing = false;       // one side gone; the other flushing
  bool plain_paused = false;  // not read: `tls` has too much unsent
  bool tls_paused = false;    // not read: `plain` has too much unsent

  bufferevent* Of(bool tls_side_wanted) const {
    return tls_side_wanted ? tls : plain;
  }
};

namespace {

std::string SocketError(int err) {
  return err == 0 ? "" : std::string(evutil_socket_error_to_string(err));
}

// Why the TLS side failed, as precisely as OpenSSL and the socket tell.
std::string DescribeTlsFailure(bufferevent* bev, SSL* ssl, short events) {
  std::vector<std::string> parts;
  if (const long verify = SSL_get_verify_result(ssl); verify != X509_V_OK) {
    parts.push_back(absl::StrCat("certificate verify failed: ",
                                 X509_verify_cert_error_string(verify)));
  }
  while (const unsigned long err = bufferevent_get_openssl_error(bev)) {
    // libevent also queues bare codes of its own (library 0): no text.
    if (ERR_GET_LIB(err) == 0) continue;
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    parts.push_back(buf);
  }
  if (parts.empty()) {
    int err = 0;
    socklen_t len = sizeof(err);
    const int fd = bufferevent_getfd(bev);
    if (fd >= 0) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err == 0 && (events & BEV_EVENT_ERROR) != 0) {
      err = EVUTIL_SOCKET_ERROR();
    }
    if (err != 0) parts.push_back(SocketError(err));
  }
  if (parts.empty()) {
    parts.push_back((events & BEV_EVENT_EOF) != 0 ? "connection closed by peer"
                                                  : "connection failed");
  }
  return absl::StrJoin(parts, "; ");
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsBridge>> TlsBridge::Start(
    TlsBridgeOptions options, net::EventLoop& loop) {
  if (options.tls == nullptr || options.tls->is_server()) {
    return absl::InvalidArgumentError("TLS bridge needs a client TLS context");
  }
  std::unique_ptr<TlsBridge> bridge(new TlsBridge(std::move(options), loop));
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sin.sin_port = 0;
  bridge->listener_ = evconnlistener_new_bind(
      loop.base(), &TlsBridge::OnAccept, bridge.get(),
      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE, 16,
      reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
  if (bridge->listener_ == nullptr) {
    return absl::InternalError(absl::StrCat(
        "TLS bridge to ", bridge->target_name_,
        ": cannot listen on 127.0.0.1: ", SocketError(EVUTIL_SOCKET_ERROR())));
  }
  sockaddr_in bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(evconnlistener_get_fd(bridge->listener_),
                  reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    return absl::InternalError(
        absl::StrCat("TLS bridge to ", bridge->target_name_,
                     ": getsockname: ", SocketError(EVUTIL_SOCKET_ERROR())));
  }
  bridge->port_ = ntohs(bound.sin_port);
  return bridge;
}

TlsBridge::TlsBridge(TlsBridgeOptions options, net::EventLoop& loop)
    : options_(std::move(options)),
      loop_(loop),
      target_name_(options_.target.ToString()) {
  if (options_.max_buffered < 2) options_.max_buffered = 2;
}

TlsBridge::~TlsBridge() {
  if (listener_ != nullptr) evconnlistener_free(listener_);
  std::vector<uint64_t> ids;
  for (const auto& [id, c] : connections_) ids.push_back(id);
  for (uint64_t id : ids) Free(id);
}

void TlsBridge::Expect(int client_fd) {
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  if (getsockname(client_fd, reinterpret_cast<sockaddr*>(&local), &len) != 0 ||
      local.sin_family != AF_INET) {
    expected_port_ = -1;
    return;
  }
  expected_port_ = ntohs(local.sin_port);
}

std::string TlsBridge::TakeLastError() {
  std::string out;
  out.swap(last_error_);
  return out;
}

void TlsBridge::OnAccept(evconnlistener*, int fd, sockaddr* addr, int,
                         void* arg) {
  static_cast<TlsBridge*>(arg)->Accept(fd, addr);
}

void TlsBridge::Accept(int fd, const sockaddr* addr) {
  const auto* peer = reinterpret_cast<const sockaddr_in*>(addr);
  if (addr == nullptr || peer->sin_family != AF_INET ||
      peer->sin_addr.s_addr != htonl(INADDR_LOOPBACK) ||
      static_cast<int>(ntohs(peer->sin_port)) != expected_port_) {
    Log(LogLevel::kWarning,
        "TLS bridge to %s: refused a local connection that is not the Redis "
        "client's",
        target_name_);
    evutil_closesocket(fd);
    return;
  }
  expected_port_ = -1;
  event_base* base = loop_.base();
  auto c = std::make_unique<Connection>();
  c->id = ++next_id_;
  c->bridge = this;
  c->plain_side = {c.get(), false};
  c->tls_side = {c.get(), true};
  constexpr int kOptions = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
  c->plain = bufferevent_socket_new(base, fd, kOptions);
  if (c->plain == nullptr) {
    evutil_closesocket(fd);
    return;
  }
  Connection& conn = *c;
  connections_.emplace(c->id, std::move(c));
  bufferevent_setcb(conn.plain, &TlsBridge::OnRead, &TlsBridge::OnWrite,
                    &TlsBridge::OnEvent, &conn.plain_side);
  bufferevent_setwatermark(conn.plain, EV_WRITE, options_.max_buffered / 2, 0);
  bufferevent_enable(conn.plain, EV_READ | EV_WRITE);

  conn.timer = loop_.AddTimer(options_.handshake_timeout, [this, &conn] {
    conn.timer = 0;
    Close(conn, /*dead_is_tls=*/true,
          absl::StrCat(conn.closing ? "close" : "connect and TLS handshake",
                       " not done within ",
                       absl::FormatDuration(options_.handshake_timeout)),
          /*flush=*/false);
  });

  // The target: a blocking lookup (the store's own thread), its first
  // address.
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = absl::StrCat(options_.target.port);
  if (const int rc = getaddrinfo(options_.target.host.c_str(), port.c_str(),
                                 &hints, &found);
      rc != 0 || found == nullptr) {
    Close(conn, true,
          absl::StrCat("cannot resolve ", options_.target.host, ": ",
                       rc != 0 ? gai_strerror(rc) : "no address"),
          false);
    return;
  }
  const int s =
      socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) {
    const int err = errno;
    freeaddrinfo(found);
    Close(conn, true, absl::StrCat("socket: ", SocketError(err)), false);
    return;
  }
  const int connected = connect(s, found->ai_addr, found->ai_addrlen);
  const int connect_errno = errno;
  freeaddrinfo(found);
  if (connected != 0 && connect_errno != EINPROGRESS) {
    close(s);
    Close(conn, true,
          absl::StrCat("cannot connect: ", SocketError(connect_errno)), false);
    return;
  }
  conn.ssl = options_.tls->NewConnection(s, options_.target.host);
  if (conn.ssl == nullptr) {
    close(s);
    Close(conn, true, absl::StrCat("SSL_new: ", net::TlsErrorString()), false);
    return;
  }
  // Redis speaks no ALPN: offer none (the context's default is h2).
  SSL_set_alpn_protos(conn.ssl, nullptr, 0);
  conn.tls = bufferevent_openssl_socket_new(
      base, s, conn.ssl, BUFFEREVENT_SSL_CONNECTING, kOptions);
  if (conn.tls == nullptr) {
    SSL_free(conn.ssl);
    conn.ssl = nullptr;
    close(s);
    Close(conn, true, "cannot create the TLS bufferevent", false);
    return;
  }
  bufferevent_openssl_set_allow_dirty_shutdown(conn.tls, 1);
  bufferevent_setcb(conn.tls, &TlsBridge::OnRead, &TlsBridge::OnWrite,
                    &TlsBridge::OnEvent, &conn.tls_side);
  bufferevent_setwatermark(conn.tls, EV_WRITE, options_.max_buffered / 2, 0);
  bufferevent_enable(conn.tls, EV_READ | EV_WRITE);
}

void TlsBridge::OnRead(bufferevent*, void* arg) {
  auto* side = static_cast<Connection::Side*>(arg);
  side->connection->bridge->Relay(*side->connection, side->tls);
}

void TlsBridge::Relay(Connection& c, bool from_tls) {
  bufferevent* src = c.Of(from_tls);
  bufferevent* dst = c.Of(!from_tls);
  if (src == nullptr) return;
  evbuffer* in = bufferevent_get_input(src);
  if (dst == nullptr) {
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  evbuffer* out = bufferevent_get_output(dst);
  evbuffer_add_buffer(out, in);
  if (evbuffer_get_length(out) >= options_.max_buffered) {
    bufferevent_disable(src, EV_READ);
    (from_tls ? c.tls_paused : c.plain_paused) = true;
  }
}

void TlsBridge::OnWrite(bufferevent* bev, void* arg) {
  auto* side = static_cast<Connection::Side*>(arg);
  Connection& c = *side->connection;
  TlsBridge& self = *c.bridge;
  if (c.closing) {
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) self.Free(c.id);
    return;
  }
  // `bev` drained to half: read its source again.
  bool& paused = side->tls ? c.plain_paused : c.tls_paused;
  if (paused) {
    paused = false;
    if (bufferevent* src = c.Of(!side->tls); src != nullptr) {
      bufferevent_enable(src, EV_READ);
    }
  }
}

void TlsBridge::OnEvent(bufferevent*, short events, void* arg) {
  auto* side = static_cast<Connection::Side*>(arg);
  side->connection->bridge->HandleEvent(*side->connection, side->tls, events);
}

void TlsBridge::HandleEvent(Connection& c, bool tls_side, short events) {
  if (tls_side && (events & BEV_EVENT_CONNECTED) != 0) {
    c.handshaken = true;
    if (c.timer != 0) loop_.CancelTimer(c.timer);
    c.timer = 0;
    Log(LogLevel::kDebug, "TLS bridge: connected to %s (%s)", target_name_,
        SSL_get_version(c.ssl));
    return;
  }
  if ((events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) == 0) return;
  std::string why;
  if (tls_side) {
    if (!c.handshaken) {
      why = absl::StrCat("TLS handshake failed: ",
                         DescribeTlsFailure(c.tls, c.ssl, events));
    } else if ((events & BEV_EVENT_ERROR) != 0) {
      why = absl::StrCat("TLS connection broken: ",
                         DescribeTlsFailure(c.tls, c.ssl, events));
    }
    // A clean close by Redis after the handshake: hiredis reports it.
  }
  // What the closed side still delivered goes on to the other side.
  Relay(c, tls_side);
  Close(c, tls_side, std::move(why), /*flush=*/c.handshaken || !tls_side);
}

void TlsBridge::Close(Connection& c, bool dead_is_tls, std::string why,
                      bool flush) {
  if (!why.empty()) {
    Log(LogLevel::kWarning, "redis %s: %s", target_name_, why);
    last_error_ = std::move(why);
  }
  bufferevent*& dead = dead_is_tls ? c.tls : c.plain;
  bufferevent* other = c.Of(!dead_is_tls);
  if (!flush || c.closing || other == nullptr ||
      evbuffer_get_length(bufferevent_get_output(other)) == 0) {
    Free(c.id);
    return;
  }
  // Flush `other`, then free (OnWrite), within the timeout.
  if (dead != nullptr) {
    bufferevent_free(dead);
    dead = nullptr;
    if (dead_is_tls) c.ssl = nullptr;
  }
  c.closing = true;
  bufferevent_disable(other, EV_READ);
  bufferevent_setwatermark(other, EV_WRITE, 0, 0);
  bufferevent_enable(other, EV_WRITE);
  if (c.timer != 0) loop_.CancelTimer(c.timer);
  c.timer = loop_.AddTimer(options_.handshake_timeout, [this, &c] {
    c.timer = 0;
    Free(c.id);
  });
}

void TlsBridge::Free(uint64_t id) {
  auto it = connections_.find(id);
  if (it == connections_.end()) return;
  std::unique_ptr<Connection> c = std::move(it->second);
  connections_.erase(it);
  if (c->timer != 0) loop_.CancelTimer(c->timer);
  // bufferevent_free drops the callbacks first; deferred ones never run.
  if (c->plain != nullptr) bufferevent_free(c->plain);
  if (c->tls != nullptr) bufferevent_free(c->tls);  // frees the SSL
}

}  // namespace bulwark::store
