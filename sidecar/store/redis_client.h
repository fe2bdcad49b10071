// RedisClient: the configured Redis (SPEC section 8), a single server or a
// Redis Cluster, as one asynchronous client on a loop the caller owns. It
// decides where each command goes and how it ends; it decides nothing about
// rate limits.
//
// Routing: a command names its key (EvalSha: its first key; CommandOnKey: the
// argument given); it goes to the node the slot map names for that key's
// slot (cluster_slots.h), else to the seed node (`address`). A command
// without a key goes to the seed. Redirections are followed: MOVED <slot>
// <node> records the slot's new node and resends there; ASK <slot> <node>
// (a slot being migrated) sends ASKING and then the command once to that node
// and records nothing; NOSCRIPT (a node that restarted, was flushed or never
// ran the script) resends that EVALSHA as EVAL, which caches the script, on
// the same node. After `max_redirections` redirections the next one ends the
// command as an error. A single non-cluster Redis never redirects: every
// command then goes to the seed, one connection, as before Redis Cluster
// support.
//
// Results: every command completes exactly once, on the loop thread, as ok
// (a reply), error (a refused or broken connection, a failed AUTH, an error
// reply, a malformed or one-too-many redirection) or timeout (no answer
// within `timeout` on one round trip), with its whole duration, every round
// trip and redirection included; on_result runs once per command, before its
// callback: what bulwark_redis_requests_total{result} and
// bulwark_redis_request_duration_seconds count.
//
// Nodes: one RedisConnection per node (same AUTH, timeouts and backoff; with
// `tls`, a TlsBridge per node whose certificate check uses the configured
// server_name, else the node's announced host). A node whose connection is
// lost or cannot connect has its slots forgotten, so its keys go back to the
// seed, which redirects them again once the cluster knows where they live;
// meanwhile commands to an unreachable node fail fast (it is reconnecting).
// A non-seed connection unused for `idle_timeout` is closed; at most
// `max_connections` are open (the least recently used idle one is closed to
// make room; when every one is busy the command fails). The seed's connection
// is never closed. The slot map learns slot by slot (no CLUSTER SLOTS
// refresh): a key's first command after a resharding costs one redirection.
//
// Thread-safety: not thread-safe: create, use and destroy it on the loop's
// thread only. Callbacks run on that thread, never inside the call that
// issued the command, never after the client is destroyed (pending callbacks
// are dropped uncalled by the destructor). The loop must outlive the client.
// hiredis 0.14 resolves host names with a blocking getaddrinfo and writes with
// write(2) (so do the bridges): run it on a loop of its own (RedisStore does),
// not a worker's, with SIGPIPE blocked or ignored on that thread. Cost: a
// command is a heap entry carrying its arguments until it completes (they are
// kept for a resend), one slot hash of its key and one map lookup, plus what
// RedisConnection costs per round trip; per node, one connection (and one
// bridge); the slot map is 32 KiB. Closed connections are freed by a sweep
// once a second.
#ifndef BULWARK_SIDECAR_STORE_REDIS_CLIENT_H_
#define BULWARK_SIDECAR_STORE_REDIS_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "policies/clock.h"
#include "sidecar/host_port.h"
#include "sidecar/net/tls.h"
#include "sidecar/store/cluster_slots.h"
#include "sidecar/store/redis_connection.h"
#include "sidecar/store/tls_bridge.h"

namespace bulwark::net {
class EventLoop;
}  // namespace bulwark::net

namespace bulwark::store {

struct RedisClientOptions {
  // The seed node: a single Redis, or any node of a Redis Cluster.
  HostPort address;
  // ACL user for AUTH; empty: AUTH with the password alone (the default user).
  std::string username;
  // Empty: no AUTH. The same on every node.
  std::string password;
  // Per round trip: a command unanswered this long completes as kTimeout.
  absl::Duration timeout = absl::Milliseconds(50);
  // TCP connect plus AUTH (plus the TLS handshake).
  absl::Duration connect_timeout = absl::Seconds(1);
  absl::Duration reconnect_backoff_base = absl::Milliseconds(50);
  absl::Duration reconnect_backoff_max = absl::Seconds(2);
  // This many timeouts in a row on one connection, with no reply in between,
  // drop it (a half-open TCP connection would otherwise never recover).
  int timeouts_before_reconnect = 3;
  // Called on the loop thread as each command completes (metrics), before
  // the command's own callback.
  absl::AnyInvocable<void(const RedisResult&)> on_result;
  // Set: TLS to every node (a client context, TlsContext::Client).
  std::shared_ptr<const net::TlsContext> tls;
  // Redirections followed per command (MOVED and ASK alike).
  int max_redirections = 5;
  // A non-seed node's connection unused this long is closed.
  absl::Duration idle_timeout = absl::Seconds(10);
  // Node connections open at most, the seed's included (values < 1: 1).
  int max_connections = 32;
};

class RedisClient {
 public:
  using State = RedisConnection::State;
  using Callback = absl::AnyInvocable<void(RedisResult)>;

  struct Stats {
    State state = State::kDisconnected;        // the seed's connection
    int64_t ok = 0, errors = 0, timeouts = 0;  // completed commands
    int64_t moved = 0, asked = 0;              // redirections followed
    std::string last_error;  // the seed's latest failed connection
    size_t pending = 0;      // commands not yet completed
    size_t connections = 0;  // node connections open (the seed's included)
  };

  // Call on the loop thread (or before any thread runs the loop); the seed
  // connects on the next loop turn. Fails only if `tls` is set and the seed's
  // bridge cannot listen on the loopback.
  static absl::StatusOr<std::unique_ptr<RedisClient>> Create(
      RedisClientOptions options, net::EventLoop& loop, Clock& clock);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Sends `argv` (a command without a key: PING, INFO, FLUSHALL...) to the
  // seed; a redirection is followed all the same. `done` runs exactly once,
  // on the loop thread, never inside this call.
  void Command(std::vector<std::string> argv, Callback done);

  // The same, routed by the slot of argv[key_arg] (e.g. 1 for GET key).
  void CommandOnKey(size_t key_arg, std::vector<std::string> argv,
                    Callback done);

  // EVALSHA script.sha1 numkeys keys... args..., routed by keys[0] (to the
  // seed without keys), resent as EVAL on NOSCRIPT. `script` must outlive
  // the call (scripts are constants).
  void EvalSha(const RedisScript& script, std::vector<std::string> keys,
               std::vector<std::string> args, Callback done);

  State state() const;
  Stats stats() const;

 private:
  struct Node;
  struct Op;

  RedisClient(RedisClientOptions options, net::EventLoop& loop, Clock& clock);

  void Start(std::unique_ptr<Op> op);
  // Sends `op` to `node` (looked up or opened), after ASKING when `asking`.
  void SendTo(const HostPort& node, std::unique_ptr<Op> op, bool asking);
  void OnAttempt(const HostPort& node, std::unique_ptr<Op> op,
                 RedisResult result);
  void Finish(std::unique_ptr<Op> op, RedisResult result);
  // Finish with `error` on the next loop turn (never inside the issuing call).
  void FailSoon(std::unique_ptr<Op> op, std::string error);
  // The node's connection, opened if needed; nullptr with `error` set when it
  // cannot be (a bridge that cannot listen, every connection busy).
  Node* NodeFor(const HostPort& address, std::string& error);
  absl::StatusOr<std::unique_ptr<Node>> OpenNode(const HostPort& address);
  void Touch(Node& node);
  // Moves `node` out of the routing table; it is freed by the sweep once its
  // last command completed (never inside one of its callbacks).
  void Retire(const std::string& name);
  void ArmSweep();
  void Sweep();

  RedisClientOptions options_;
  net::EventLoop& loop_;
  Clock& clock_;
  const std::string seed_name_;  // address.ToString()

  SlotMap slots_;
  absl::flat_hash_map<std::string, std::unique_ptr<Node>> nodes_;
  std::list<std::string> lru_;  // node names, most recently used first
  std::vector<std::unique_ptr<Node>> retired_;
  std::vector<std::pair<std::unique_ptr<Op>, std::string>> to_fail_;
  uint64_t fail_timer_ = 0;
  uint64_t sweep_timer_ = 0;
  size_t in_flight_ = 0;
  Stats stats_;
};

}  // namespace bulwark::store

#endif  // BULWARK_SIDECAR_STORE_REDIS_CLIENT_H_
