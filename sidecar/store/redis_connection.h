// RedisConnection: one asynchronous connection to one Redis node (SPEC
// section 8), on hiredis's libevent adapter and a loop the caller owns. It
// decides nothing about rate limits or Redis Cluster slots (RedisClient, over
// one RedisConnection per node, does); it decides how each command ends:
// every command completes exactly once, on the loop thread, as ok (a reply),
// error (a refused or broken connection, a failed AUTH, an error reply, a
// reply it cannot read) or timeout (no answer within `timeout`), with its
// round-trip duration.
//
// Connection life: connect (within connect_timeout, AUTH included), AUTH
// [username] password on every (re)connect when a password is set, then
// commands are pipelined on the one connection, in issue order. Commands
// issued while connecting wait for it (their timeout runs); commands issued
// while disconnected fail at once (on the next loop turn, never inside the
// call), so a caller falls back without waiting. A refused or broken
// connection, a failed AUTH, a connect timeout or `timeouts_before_reconnect`
// timeouts in a row with no reply in between drop the connection (and call
// on_connection_lost) and reconnect after an exponential backoff with jitter
// (uniform in [d/2, d], d doubling from reconnect_backoff_base up to
// reconnect_backoff_max; reset by the first reply on a connection). A late
// reply to a command that already timed out is read and dropped.
//
// TLS: Debian 12's hiredis 0.14.1 has none (no hiredis_ssl); RedisClient
// points the connection (connect_to) at a TlsBridge on the loopback, and the
// bridge explains (transport_error) the connections it closes.
//
// Not supported: RESP3.
//
// Thread-safety: not thread-safe: create, use and destroy it on the loop's
// thread only, and never from inside one of its own callbacks. Callbacks run
// on that thread; never after the connection is destroyed (pending callbacks
// are dropped uncalled by the destructor). The loop must outlive it. hiredis
// 0.14 resolves a host name with a blocking getaddrinfo and writes with
// write(2): run it on a loop of its own (RedisStore does), not a worker's, and
// with SIGPIPE blocked or ignored on that thread. Cost: a command is one
// hash-map entry, a copy of its arguments until it is sent, and one pipelined
// write; one timer serves every deadline (all commands share one timeout, so
// deadlines come in order).
#ifndef BULWARK_SIDECAR_STORE_REDIS_CONNECTION_H_
#define BULWARK_SIDECAR_STORE_REDIS_CONNECTION_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/random/random.h"
#include "absl/time/time.h"
#include "policies/clock.h"
#include "sidecar/host_port.h"

struct redisAsyncContext;

namespace bulwark::net {
class EventLoop;
}  // namespace bulwark::net

namespace bulwark::store {

// One reply, copied out of hiredis so no hiredis type leaks. A plain value.
struct RedisReply {
  enum class Type { kNil, kInteger, kString, kStatus, kError, kArray };
  Type type = Type::kNil;
  int64_t integer = 0;               // kInteger
  std::string str;                   // kString, kStatus, kError
  std::vector<RedisReply> elements;  // kArray
};

struct RedisResult {
  enum class Kind { kOk, kError, kTimeout };
  Kind kind = Kind::kError;
  // kOk: the reply (never of Type::kError: an error reply is Kind::kError).
  RedisReply reply;
  // kError, kTimeout: what happened, e.g. "redis 127.0.0.1:6379: AUTH failed:
  // WRONGPASS invalid username-password pair or user is disabled."
  std::string error;
  // From the call that issued the command to its completion.
  absl::Duration duration = absl::ZeroDuration();
};

// "ok", "error", "timeout": the `result` label.
std::string_view RedisResultKindName(RedisResult::Kind kind);

// A Lua script and its SHA-1 (hex), computed once.
class RedisScript {
 public:
  explicit RedisScript(std::string body);
  const std::string& body() const { return body_; }
  const std::string& sha1() const { return sha1_; }

 private:
  std::string body_;
  std::string sha1_;
};

struct RedisConnectionOptions {
  HostPort address;
  // Set: connect here instead (a TlsBridge); errors still name `address`.
  std::optional<HostPort> connect_to;
  // Called with each new connection's socket, right after the connect
  // starts (the bridge admits only that one).
  absl::AnyInvocable<void(int fd)> on_socket;
  // Called when a connection is lost: a non-empty answer (why a TLS bridge
  // closed it) replaces hiredis's own reason.
  absl::AnyInvocable<std::string()> transport_error;
  // ACL user for AUTH; empty: AUTH with the password alone (the default user).
  std::string username;
  // Empty: no AUTH.
  std::string password;
  // Per round trip: a command unanswered this long completes as kTimeout.
  absl::Duration timeout = absl::Milliseconds(50);
  // TCP connect plus AUTH.
  absl::Duration connect_timeout = absl::Seconds(1);
  absl::Duration reconnect_backoff_base = absl::Milliseconds(50);
  absl::Duration reconnect_backoff_max = absl::Seconds(2);
  // This many timeouts in a row, with no reply in between, drop the
  // connection (a half-open TCP connection would otherwise never recover).
  int timeouts_before_reconnect = 3;
  // Called on the loop thread as each command completes (metrics), before
  // the command's own callback.
  absl::AnyInvocable<void(const RedisResult&)> on_result;
  // Called on the loop thread when a connection is lost or a connect fails
  // (with the error its commands fail with), before they fail. It must not
  // destroy the connection.
  absl::AnyInvocable<void(const std::string& error)> on_connection_lost;
};

class RedisConnection {
 public:
  enum class State { kDisconnected, kConnecting, kReady };
  using Callback = absl::AnyInvocable<void(RedisResult)>;

  struct Stats {
    State state = State::kDisconnected;
    int64_t connects = 0;  // attempts
    int64_t ready = 0;     // connections that became ready
    int64_t ok = 0, errors = 0, timeouts = 0;
    std::string last_error;  // of the latest failed connection
    size_t pending = 0;      // commands not yet completed
  };

  // Call on the loop thread; connects on the next loop turn.
  RedisConnection(RedisConnectionOptions options, net::EventLoop& loop,
                  Clock& clock);
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  // Sends `argv` (a command and its arguments); `done` runs exactly once, on
  // the loop thread, never inside this call.
  void Command(std::vector<std::string> argv, Callback done);

  State state() const { return state_; }
  Stats stats() const;
  // Commands not yet completed.
  size_t pending() const { return pending_.size(); }

 private:
  struct Pending;

  static void OnConnect(const redisAsyncContext* ac, int status);
  static void OnDisconnect(const redisAsyncContext* ac, int status);
  static void OnReply(redisAsyncContext* ac, void* reply, void* privdata);

  void Connect();
  void SendAuth();
  void BecomeReady();
  void Send(Pending& pending);
  // Stops this client's callbacks for `ac` and forgets it.
  void Detach(const redisAsyncContext* ac);
  // Ends the current connection (if any) and frees it, then LoseConnection.
  void DropConnection(std::string error);
  // The connection is gone (already detached): fail every command sent on it
  // or waiting for it with `error`, reconnect after the backoff.
  void LoseConnection(std::string error);
  void ScheduleReconnect();
  void HandleReply(redisAsyncContext* ac, uint64_t id, const void* reply);
  void HandleAuthReply(const void* reply);
  void FailSoon(uint64_t id, std::string error);
  void Complete(uint64_t id, RedisResult result);
  void ArmDeadlineTimer();
  void OnDeadlines();
  std::string Prefixed(std::string_view what) const;

  RedisConnectionOptions options_;
  net::EventLoop& loop_;
  Clock& clock_;
  const std::string name_;  // "redis host:port"

  redisAsyncContext* ac_ = nullptr;
  State state_ = State::kDisconnected;
  bool authenticating_ = false;
  uint64_t next_id_ = 0;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Pending>> pending_;
  std::deque<uint64_t> unsent_;  // waiting for the connection, in order
  // (deadline, id) in issue order, hence in deadline order.
  std::deque<std::pair<absl::Time, uint64_t>> deadlines_;
  std::vector<std::pair<uint64_t, std::string>> to_fail_;
  uint64_t deadline_timer_ = 0;
  uint64_t connect_timer_ = 0;
  uint64_t reconnect_timer_ = 0;
  uint64_t fail_timer_ = 0;
  int attempt_ = 0;
  int consecutive_timeouts_ = 0;
  Stats stats_;
  absl::BitGen rng_;
};

}  // namespace bulwark::store

#endif  // BULWARK_SIDECAR_STORE_REDIS_CONNECTION_H_
