#include "sidecar/store/redis_connection.h"

// hiredis 0.14.1 (Debian 12). The libevent adapter is header-only.
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "sidecar/net/event_loop.h"

namespace bulwark::store {
namespace {

// The request id reserved for the AUTH of the current connection.
constexpr uint64_t kAuthId = 0;

// hiredis 0.14 refuses arrays nested deeper than 7; this is a second fence.
constexpr int kMaxReplyDepth = 16;

void* IdToPrivdata(uint64_t id) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>(id));
}
uint64_t PrivdataToId(void* privdata) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(privdata));
}

RedisReply Convert(const redisReply* r, int depth) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::kError;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_NIL:
      out.type = RedisReply::Type::kNil;
      break;
    case REDIS_REPLY_ARRAY:
      if (depth >= kMaxReplyDepth) {
        out.type = RedisReply::Type::kError;
        out.str = "reply nested too deeply";
        break;
      }
      out.type = RedisReply::Type::kArray;
      out.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i) {
        if (r->element[i] == nullptr) {
          out.elements.emplace_back();  // nil
        } else {
          out.elements.push_back(Convert(r->element[i], depth + 1));
        }
      }
      break;
    default:
      out.type = RedisReply::Type::kError;
      out.str = absl::StrCat("unsupported reply type ", r->type);
      break;
  }
  return out;
}

std::string HexSha1(absl::string_view data) {
  unsigned char digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(data.data()), data.size(),
       digest);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * SHA_DIGEST_LENGTH);
  for (unsigned char c : digest) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 0xf]);
  }
  return out;
}

std::string ContextError(const redisAsyncContext* ac, std::string_view dflt) {
  if (ac != nullptr && ac->errstr != nullptr && ac->errstr[0] != '\0') {
    return ac->errstr;
  }
  return std::string(dflt);
}

}  // namespace

std::string_view RedisResultKindName(RedisResult::Kind kind) {
  switch (kind) {
    case RedisResult::Kind::kOk:
      return "ok";
    case RedisResult::Kind::kError:
      return "error";
    case RedisResult::Kind::kTimeout:
      return "timeout";
  }
  return "error";
}

RedisScript::RedisScript(std::string body)
    : body_(std::move(body)), sha1_(HexSha1(body_)) {}

struct RedisConnection::Pending {
  uint64_t id = 0;
  std::vector<std::string> argv;  // until sent
  Callback done;
  absl::Time started;
  bool sent = false;
};

RedisConnection::RedisConnection(RedisConnectionOptions options,
                                 net::EventLoop& loop, Clock& clock)
    : options_(std::move(options)),
      loop_(loop),
      clock_(clock),
      name_(absl::StrCat("redis ", options_.address.ToString())) {
  // Commands issued before the first connect starts wait for it.
  state_ = State::kConnecting;
  // Not inside the constructor: a failure there would call back at once.
  reconnect_timer_ = loop_.AddTimer(absl::ZeroDuration(), [this] {
    reconnect_timer_ = 0;
    Connect();
  });
}

RedisConnection::~RedisConnection() {
  for (uint64_t* timer :
       {&deadline_timer_, &connect_timer_, &reconnect_timer_, &fail_timer_}) {
    if (*timer != 0) loop_.CancelTimer(*timer);
    *timer = 0;
  }
  if (redisAsyncContext* ac = ac_; ac != nullptr) {
    // Callbacks hiredis runs while freeing (NULL replies, the disconnect) see
    // no client and return; if this runs inside a hiredis callback, hiredis
    // frees the context once that callback returns.
    Detach(ac);
    redisAsyncFree(ac);
  }
  // Pending callbacks are dropped uncalled.
}

RedisConnection::Stats RedisConnection::stats() const {
  Stats s = stats_;
  s.state = state_;
  s.pending = pending_.size();
  return s;
}

std::string RedisConnection::Prefixed(std::string_view what) const {
  return absl::StrCat(name_, ": ", absl::string_view(what.data(), what.size()));
}

void RedisConnection::Connect() {
  state_ = State::kConnecting;
  authenticating_ = false;
  ++stats_.connects;
  const HostPort& to = options_.connect_to.value_or(options_.address);
  redisAsyncContext* ac = redisAsyncConnect(to.host.c_str(), to.port);
  if (ac == nullptr) {
    DropConnection(Prefixed("cannot allocate a connection"));
    return;
  }
  if (ac->err != 0) {
    std::string error = Prefixed(ContextError(ac, "cannot connect"));
    redisAsyncFree(ac);
    DropConnection(std::move(error));
    return;
  }
  ac->data = this;
  if (options_.on_socket) options_.on_socket(ac->c.fd);
  if (redisLibeventAttach(ac, loop_.base()) != REDIS_OK) {
    redisAsyncFree(ac);
    DropConnection(Prefixed("cannot attach to the event loop"));
    return;
  }
  redisAsyncSetConnectCallback(ac, &RedisConnection::OnConnect);
  redisAsyncSetDisconnectCallback(ac, &RedisConnection::OnDisconnect);
  ac_ = ac;
  connect_timer_ = loop_.AddTimer(options_.connect_timeout, [this] {
    connect_timer_ = 0;
    DropConnection(Prefixed(
        absl::StrCat(authenticating_ ? "AUTH" : "connect", " not done within ",
                     absl::FormatDuration(options_.connect_timeout))));
  });
}

void RedisConnection::Detach(const redisAsyncContext* ac) {
  // hiredis's own struct; it only carries our pointer.
  const_cast<redisAsyncContext*>(ac)->data = nullptr;
  if (ac_ == ac) ac_ = nullptr;
}

void RedisConnection::OnConnect(const redisAsyncContext* ac, int status) {
  auto* self = static_cast<RedisConnection*>(ac->data);
  if (self == nullptr) return;
  if (status != REDIS_OK) {
    // hiredis frees the context when this returns: forget it, never free it.
    std::string error = self->Prefixed(ContextError(ac, "connect failed"));
    self->Detach(ac);
    self->LoseConnection(std::move(error));
    return;
  }
  if (self->options_.password.empty()) {
    self->BecomeReady();
  } else {
    self->SendAuth();
  }
}

void RedisConnection::SendAuth() {
  authenticating_ = true;
  std::vector<const char*> argv = {"AUTH"};
  std::vector<size_t> lens = {4};
  if (!options_.username.empty()) {
    argv.push_back(options_.username.data());
    lens.push_back(options_.username.size());
  }
  argv.push_back(options_.password.data());
  lens.push_back(options_.password.size());
  if (redisAsyncCommandArgv(ac_, &RedisConnection::OnReply,
                            IdToPrivdata(kAuthId),
                            static_cast<int>(argv.size()), argv.data(),
                            lens.data()) != REDIS_OK) {
    DropConnection(Prefixed("cannot send AUTH"));
  }
}

void RedisConnection::HandleAuthReply(const void* reply) {
  if (!authenticating_) return;
  authenticating_ = false;
  const auto* r = static_cast<const redisReply*>(reply);
  if (r->type == REDIS_REPLY_ERROR) {
    DropConnection(Prefixed(
        absl::StrCat("AUTH failed: ", absl::string_view(r->str, r->len))));
    return;
  }
  BecomeReady();
}

void RedisConnection::BecomeReady() {
  if (connect_timer_ != 0) loop_.CancelTimer(connect_timer_);
  connect_timer_ = 0;
  state_ = State::kReady;
  consecutive_timeouts_ = 0;
  ++stats_.ready;
  std::deque<uint64_t> unsent;
  unsent.swap(unsent_);
  for (uint64_t id : unsent) {
    if (auto it = pending_.find(id); it != pending_.end()) Send(*it->second);
    // A send may drop the connection; the rest then fail with it.
    if (state_ != State::kReady) break;
  }
}

void RedisConnection::OnDisconnect(const redisAsyncContext* ac,
                                   int /*status*/) {
  // Only a connection that hiredis closed itself still has our pointer (one
  // we drop is detached first).
  auto* self = static_cast<RedisConnection*>(ac->data);
  if (self == nullptr) return;
  std::string error =
      self->Prefixed(ContextError(ac, "connection closed by the server"));
  self->Detach(ac);
  self->LoseConnection(std::move(error));
}

void RedisConnection::DropConnection(std::string error) {
  redisAsyncContext* ac = ac_;
  if (ac != nullptr) Detach(ac);
  LoseConnection(std::move(error));
  // At once, or (inside a hiredis callback) when that callback returns.
  if (ac != nullptr) redisAsyncFree(ac);
}

void RedisConnection::LoseConnection(std::string error) {
  if (connect_timer_ != 0) loop_.CancelTimer(connect_timer_);
  connect_timer_ = 0;
  state_ = State::kDisconnected;
  authenticating_ = false;
  if (options_.transport_error) {
    if (std::string why = options_.transport_error(); !why.empty()) {
      error = Prefixed(why);
    }
  }
  stats_.last_error = error;
  ScheduleReconnect();
  if (options_.on_connection_lost) options_.on_connection_lost(error);
  // What was sent on the connection, in issue order, then what waited for it.
  std::vector<uint64_t> ids;
  for (const auto& [id, pending] : pending_) {
    if (pending->sent) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  for (uint64_t id : ids) pending_[id]->sent = false;
  ids.insert(ids.end(), unsent_.begin(), unsent_.end());
  unsent_.clear();
  // A callback may issue commands: they fail soon (disconnected).
  for (uint64_t id : ids) {
    Complete(id, {.kind = RedisResult::Kind::kError, .error = error});
  }
}

void RedisConnection::ScheduleReconnect() {
  if (reconnect_timer_ != 0) return;
  const absl::Duration cap =
      std::max(options_.reconnect_backoff_max, absl::Milliseconds(1));
  absl::Duration delay =
      std::max(options_.reconnect_backoff_base, absl::Milliseconds(1));
  for (int i = 0; i < attempt_ && delay < cap; ++i) delay *= 2;
  delay = std::min(delay, cap);
  ++attempt_;
  const absl::Duration jittered =
      delay / 2 + absl::Nanoseconds(absl::Uniform<int64_t>(
                      rng_, 0, absl::ToInt64Nanoseconds(delay / 2) + 1));
  reconnect_timer_ = loop_.AddTimer(jittered, [this] {
    reconnect_timer_ = 0;
    Connect();
  });
}

void RedisConnection::Command(std::vector<std::string> argv, Callback done) {
  const uint64_t id = ++next_id_;
  auto pending = std::make_unique<Pending>();
  pending->id = id;
  pending->argv = std::move(argv);
  pending->done = std::move(done);
  pending->started = clock_.Now();
  Pending& p = *pending;
  pending_.emplace(id, std::move(pending));
  deadlines_.emplace_back(p.started + options_.timeout, id);
  ArmDeadlineTimer();
  if (p.argv.empty()) {
    FailSoon(id, Prefixed("empty command"));
    return;
  }
  switch (state_) {
    case State::kReady:
      Send(p);
      if (!p.sent) FailSoon(id, Prefixed("cannot send: connection closing"));
      break;
    case State::kConnecting:
      unsent_.push_back(id);
      break;
    case State::kDisconnected:
      FailSoon(id, stats_.last_error.empty()
                       ? Prefixed("not connected")
                       : absl::StrCat("not connected: ", stats_.last_error));
      break;
  }
}

void RedisConnection::Send(Pending& pending) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  argv.reserve(pending.argv.size());
  lens.reserve(pending.argv.size());
  for (const std::string& a : pending.argv) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  if (ac_ == nullptr ||
      redisAsyncCommandArgv(ac_, &RedisConnection::OnReply,
                            IdToPrivdata(pending.id),
                            static_cast<int>(argv.size()), argv.data(),
                            lens.data()) != REDIS_OK) {
    return;
  }
  pending.sent = true;
  pending.argv = {};
}

void RedisConnection::OnReply(redisAsyncContext* ac, void* reply,
                              void* privdata) {
  auto* self = static_cast<RedisConnection*>(ac->data);
  if (self == nullptr) return;
  self->HandleReply(ac, PrivdataToId(privdata), reply);
}

void RedisConnection::HandleReply(redisAsyncContext* ac, uint64_t id,
                                  const void* reply) {
  if (reply == nullptr) {
    // hiredis is closing this connection: it hands back every command sent
    // on it, then calls OnDisconnect. Fail them all now, detached, so that
    // nothing reaches the dying context (a callback that issues a command
    // gets a clean failure).
    std::string error = Prefixed(ContextError(ac, "connection lost"));
    Detach(ac);
    LoseConnection(std::move(error));
    return;
  }
  consecutive_timeouts_ = 0;
  // The backoff restarts once Redis answers, not when the TCP connect ends:
  // through a TLS bridge every connect to the loopback succeeds, even when
  // the handshake behind it fails.
  attempt_ = 0;
  if (id == kAuthId) {
    HandleAuthReply(reply);
    return;
  }
  if (!pending_.contains(id)) return;  // timed out already: a late reply
  RedisResult result;
  {
    result.reply = Convert(static_cast<const redisReply*>(reply), 0);
    if (result.reply.type == RedisReply::Type::kError) {
      result.kind = RedisResult::Kind::kError;
      result.error = std::move(result.reply.str);
      result.reply = {};
    } else {
      result.kind = RedisResult::Kind::kOk;
    }
  }
  Complete(id, std::move(result));
}

void RedisConnection::FailSoon(uint64_t id, std::string error) {
  to_fail_.emplace_back(id, std::move(error));
  if (fail_timer_ != 0) return;
  fail_timer_ = loop_.AddTimer(absl::ZeroDuration(), [this] {
    fail_timer_ = 0;
    std::vector<std::pair<uint64_t, std::string>> batch;
    batch.swap(to_fail_);
    for (auto& [id, error] : batch) {
      Complete(id,
               {.kind = RedisResult::Kind::kError, .error = std::move(error)});
    }
  });
}

void RedisConnection::Complete(uint64_t id, RedisResult result) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  std::unique_ptr<Pending> pending = std::move(it->second);
  pending_.erase(it);
  result.duration = clock_.Now() - pending->started;
  switch (result.kind) {
    case RedisResult::Kind::kOk:
      ++stats_.ok;
      break;
    case RedisResult::Kind::kError:
      ++stats_.errors;
      break;
    case RedisResult::Kind::kTimeout:
      ++stats_.timeouts;
      break;
  }
  if (options_.on_result) options_.on_result(result);
  pending->done(std::move(result));
}

void RedisConnection::ArmDeadlineTimer() {
  if (deadline_timer_ != 0 || deadlines_.empty()) return;
  deadline_timer_ =
      loop_.AddTimer(deadlines_.front().first - clock_.Now(), [this] {
        deadline_timer_ = 0;
        OnDeadlines();
      });
}

void RedisConnection::OnDeadlines() {
  const absl::Time now = clock_.Now();
  while (!deadlines_.empty() && deadlines_.front().first <= now) {
    const uint64_t id = deadlines_.front().second;
    deadlines_.pop_front();
    auto it = pending_.find(id);
    if (it == pending_.end()) continue;
    const bool sent = it->second->sent;
    Complete(
        id,
        {.kind = RedisResult::Kind::kTimeout,
         .error = Prefixed(absl::StrCat(
             "no answer within ", absl::FormatDuration(options_.timeout)))});
    if (sent && state_ == State::kReady &&
        ++consecutive_timeouts_ >= options_.timeouts_before_reconnect) {
      DropConnection(Prefixed(absl::StrCat(
          consecutive_timeouts_, " commands in a row unanswered within ",
          absl::FormatDuration(options_.timeout))));
    }
  }
  ArmDeadlineTimer();
}

}  // namespace bulwark::store
