// TlsBridge: TLS to Redis for a hiredis that has none (Debian 12's 0.14.1, no
// hiredis_ssl). It listens on 127.0.0.1 (an ephemeral port) on the store's
// loop; the RedisClient's connection to one Redis node (a bridge per node)
// connects there instead of the node's address, and for each accepted
// connection the bridge opens a TLS connection to that node (SNI and host-name
// check: the TlsContext's server_name, else the address's host) and relays
// bytes both ways. It decides three things: which local connection it admits
// (only the socket the client announced through Expect, so no other local
// process gets a tunnel, client certificate included), how long a connect plus
// TLS handshake may take
// (`handshake_timeout`; hiredis's own timeout covers each round trip
// afterwards), and when a connection ends: both sides close when either
// closes, fails, or the handshake fails or times out, after what one side
// had sent is flushed to the other (bounded by the same timeout). hiredis
// then sees a closed connection: `error` results and its usual reconnect
// with backoff; TakeLastError tells the client why (e.g. "TLS handshake failed:
// certificate verify failed: unable to get local issuer certificate"), and the
// same line is logged as a warning.
//
// Buffers are bounded: a side whose peer has `max_buffered` bytes unsent stops
// being read until half of them are gone.
//
// Thread-safety: not thread-safe: create (before or on the loop's thread,
// never while another thread runs the loop), use and destroy it on the
// loop's thread only; the loop must outlive it. Destroying it closes every
// relayed connection. The host name is looked up with a blocking getaddrinfo
// on that loop (as hiredis does): a store's own loop, never a worker's. Cost:
// per connection two sockets, two bufferevents and one TLS handshake; per
// byte one copy between buffers.
#ifndef BULWARK_SIDECAR_STORE_TLS_BRIDGE_H_
#define BULWARK_SIDECAR_STORE_TLS_BRIDGE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sidecar/host_port.h"
#include "sidecar/net/tls.h"

struct bufferevent;
struct evconnlistener;
struct sockaddr;

namespace bulwark::net {
class EventLoop;
}  // namespace bulwark::net

namespace bulwark::store {

struct TlsBridgeOptions {
  HostPort target;                             // the real Redis
  std::shared_ptr<const net::TlsContext> tls;  // a client context
  absl::Duration handshake_timeout = absl::Seconds(1);
  size_t max_buffered = size_t{1} << 20;
};

class TlsBridge {
 public:
  static absl::StatusOr<std::unique_ptr<TlsBridge>> Start(
      TlsBridgeOptions options, net::EventLoop& loop);
  ~TlsBridge();
  TlsBridge(const TlsBridge&) = delete;
  TlsBridge& operator=(const TlsBridge&) = delete;

  // Where to connect instead of the target: 127.0.0.1 and the bridge's port.
  HostPort local_address() const { return {"127.0.0.1", port_}; }

  // The connection the client just opened to local_address() (its socket):
  // the next one the bridge admits. Others are refused (closed) and logged.
  void Expect(int client_fd);

  // Why the bridge last closed a connection on its own ("" if it did not
  // since the last call); clears it.
  std::string TakeLastError();

  // Relayed connections open now.
  size_t connections() const { return connections_.size(); }

 private:
  struct Connection;

  TlsBridge(TlsBridgeOptions options, net::EventLoop& loop);
  static void OnAccept(evconnlistener* listener, int fd, sockaddr* addr,
                       int len, void* arg);
  static void OnRead(bufferevent* bev, void* arg);
  static void OnWrite(bufferevent* bev, void* arg);
  static void OnEvent(bufferevent* bev, short events, void* arg);

  void Accept(int fd, const sockaddr* addr);
  void Relay(Connection& c, bool from_tls);
  void HandleEvent(Connection& c, bool tls_side, short events);
  // `c` lost its `dead_is_tls` side (or gives up on it): logs and keeps `why`
  // if not empty, then frees `c`, or with `flush` first lets the other side
  // write what it still holds (within the timeout).
  void Close(Connection& c, bool dead_is_tls, std::string why, bool flush);
  void Free(uint64_t id);

  TlsBridgeOptions options_;
  net::EventLoop& loop_;
  const std::string target_name_;  // "host:port"
  evconnlistener* listener_ = nullptr;
  uint16_t port_ = 0;
  int expected_port_ = -1;  // the local port of the socket Expect announced
  uint64_t next_id_ = 0;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Connection>> connections_;
  std::string last_error_;
};

}  // namespace bulwark::store

#endif  // BULWARK_SIDECAR_STORE_TLS_BRIDGE_H_
