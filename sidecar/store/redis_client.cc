#include "sidecar/store/redis_client.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "sidecar/net/event_loop.h"

namespace bulwark::store {

struct RedisClient::Node {
  HostPort address;
  std::string name;  // address.ToString()
  bool seed = false;
  absl::Time last_used;
  std::list<std::string>::iterator lru;  // in lru_ while routable
  // The bridge before the connection: the connection, destroyed first, holds
  // hooks into it.
  std::unique_ptr<TlsBridge> bridge;
  std::unique_ptr<RedisConnection> conn;
};

struct RedisClient::Op {
  std::vector<std::string> argv;  // kept whole for a resend
  Callback done;
  absl::Time started;
  int slot = -1;  // -1: no key
  int redirections = 0;
  bool asking = false;                  // the latest attempt went after ASKING
  const RedisScript* script = nullptr;  // EvalSha: resent as EVAL once
  bool eval_sent = false;
};

absl::StatusOr<std::unique_ptr<RedisClient>> RedisClient::Create(
    RedisClientOptions options, net::EventLoop& loop, Clock& clock) {
  auto client = std::unique_ptr<RedisClient>(
      new RedisClient(std::move(options), loop, clock));
  auto seed = client->OpenNode(client->options_.address);
  if (!seed.ok()) return seed.status();
  Node& node = **seed;
  node.seed = true;
  client->lru_.push_front(node.name);
  node.lru = client->lru_.begin();
  client->nodes_.emplace(node.name, *std::move(seed));
  return client;
}

RedisClient::RedisClient(RedisClientOptions options, net::EventLoop& loop,
                         Clock& clock)
    : options_(std::move(options)),
      loop_(loop),
      clock_(clock),
      seed_name_(options_.address.ToString()) {}

RedisClient::~RedisClient() {
  for (uint64_t* timer : {&sweep_timer_, &fail_timer_}) {
    if (*timer != 0) loop_.CancelTimer(*timer);
    *timer = 0;
  }
  // Connections drop their pending callbacks (and the commands they carry)
  // uncalled; so are the commands still waiting to fail.
  retired_.clear();
  nodes_.clear();
  to_fail_.clear();
}

RedisClient::State RedisClient::state() const {
  auto it = nodes_.find(seed_name_);
  return it == nodes_.end() ? State::kDisconnected : it->second->conn->state();
}

RedisClient::Stats RedisClient::stats() const {
  Stats s = stats_;
  s.pending = in_flight_;
  s.connections = nodes_.size() + retired_.size();
  if (auto it = nodes_.find(seed_name_); it != nodes_.end()) {
    const RedisConnection::Stats seed = it->second->conn->stats();
    s.state = seed.state;
    s.last_error = seed.last_error;
  }
  return s;
}

void RedisClient::Command(std::vector<std::string> argv, Callback done) {
  auto op = std::make_unique<Op>();
  op->argv = std::move(argv);
  op->done = std::move(done);
  Start(std::move(op));
}

void RedisClient::CommandOnKey(size_t key_arg, std::vector<std::string> argv,
                               Callback done) {
  auto op = std::make_unique<Op>();
  if (key_arg < argv.size()) op->slot = KeySlot(argv[key_arg]);
  op->argv = std::move(argv);
  op->done = std::move(done);
  Start(std::move(op));
}

void RedisClient::EvalSha(const RedisScript& script,
                          std::vector<std::string> keys,
                          std::vector<std::string> args, Callback done) {
  auto op = std::make_unique<Op>();
  if (!keys.empty()) op->slot = KeySlot(keys.front());
  op->argv.reserve(3 + keys.size() + args.size());
  op->argv.push_back("EVALSHA");
  op->argv.push_back(script.sha1());
  op->argv.push_back(absl::StrCat(keys.size()));
  for (std::string& k : keys) op->argv.push_back(std::move(k));
  for (std::string& a : args) op->argv.push_back(std::move(a));
  op->script = &script;
  op->done = std::move(done);
  Start(std::move(op));
}

void RedisClient::Start(std::unique_ptr<Op> op) {
  op->started = clock_.Now();
  ++in_flight_;
  if (op->argv.empty()) {
    FailSoon(std::move(op),
             absl::StrCat("redis ", seed_name_, ": empty command"));
    return;
  }
  HostPort target = options_.address;
  if (const HostPort* mapped = slots_.NodeFor(op->slot); mapped != nullptr) {
    target = *mapped;
  }
  SendTo(target, std::move(op), /*asking=*/false);
}

void RedisClient::SendTo(const HostPort& address, std::unique_ptr<Op> op,
                         bool asking) {
  std::string error;
  Node* node = NodeFor(address, error);
  if (node == nullptr) {
    FailSoon(std::move(op), std::move(error));
    return;
  }
  Touch(*node);
  op->asking = asking;
  // Pipelined on the one connection: ASKING is answered first, and only the
  // next command on that connection may use the slot being imported.
  if (asking) node->conn->Command({"ASKING"}, [](RedisResult) {});
  std::vector<std::string> argv = op->argv;
  node->conn->Command(std::move(argv),
                      [this, where = node->address,
                       op = std::move(op)](RedisResult result) mutable {
                        OnAttempt(where, std::move(op), std::move(result));
                      });
}

void RedisClient::OnAttempt(const HostPort& node, std::unique_ptr<Op> op,
                            RedisResult result) {
  if (result.kind != RedisResult::Kind::kError) {
    Finish(std::move(op), std::move(result));
    return;
  }
  if (LooksLikeRedirection(result.error)) {
    absl::StatusOr<Redirection> redirect = ParseRedirection(result.error);
    if (!redirect.ok()) {
      result.error = absl::StrCat("redis ", node.ToString(), ": ",
                                  redirect.status().message());
      Finish(std::move(op), std::move(result));
      return;
    }
    if (op->redirections >= options_.max_redirections) {
      result.error = absl::StrCat(
          "redis ", node.ToString(), ": more than ", options_.max_redirections,
          " redirections (the last: ", result.error, ")");
      Finish(std::move(op), std::move(result));
      return;
    }
    ++op->redirections;
    if (redirect->node.host.empty()) redirect->node.host = node.host;
    if (redirect->kind == Redirection::Kind::kMoved) {
      ++stats_.moved;
      slots_.Assign(redirect->slot, redirect->node);
      SendTo(redirect->node, std::move(op), /*asking=*/false);
    } else {
      ++stats_.asked;
      SendTo(redirect->node, std::move(op), /*asking=*/true);
    }
    return;
  }
  if (op->script != nullptr && !op->eval_sent &&
      absl::StartsWith(result.error, "NOSCRIPT")) {
    // That node lost its script cache (restarted, flushed) or never had the
    // script: EVAL caches it there.
    op->eval_sent = true;
    op->argv[0] = "EVAL";
    op->argv[1] = op->script->body();
    const bool asking = op->asking;
    SendTo(node, std::move(op), asking);
    return;
  }
  Finish(std::move(op), std::move(result));
}

void RedisClient::Finish(std::unique_ptr<Op> op, RedisResult result) {
  --in_flight_;
  result.duration = clock_.Now() - op->started;
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
  op->done(std::move(result));
}

void RedisClient::FailSoon(std::unique_ptr<Op> op, std::string error) {
  to_fail_.emplace_back(std::move(op), std::move(error));
  if (fail_timer_ != 0) return;
  fail_timer_ = loop_.AddTimer(absl::ZeroDuration(), [this] {
    fail_timer_ = 0;
    std::vector<std::pair<std::unique_ptr<Op>, std::string>> batch;
    batch.swap(to_fail_);
    for (auto& [op, error] : batch) {
      Finish(std::move(op),
             {.kind = RedisResult::Kind::kError, .error = std::move(error)});
    }
  });
}

RedisClient::Node* RedisClient::NodeFor(const HostPort& address,
                                        std::string& error) {
  std::string name = address.ToString();
  if (auto it = nodes_.find(name); it != nodes_.end()) return it->second.get();
  const size_t cap = static_cast<size_t>(std::max(options_.max_connections, 1));
  if (nodes_.size() >= cap) {
    // The least recently used idle connection makes room.
    std::string victim;
    for (auto it = lru_.rbegin(); it != lru_.rend(); ++it) {
      const Node& n = *nodes_.at(*it);
      if (!n.seed && n.conn->pending() == 0) {
        victim = *it;
        break;
      }
    }
    if (victim.empty()) {
      error = absl::StrCat("redis ", name, ": not connected: all ", cap,
                           " node connections are busy");
      return nullptr;
    }
    Retire(victim);
  }
  absl::StatusOr<std::unique_ptr<Node>> node = OpenNode(address);
  if (!node.ok()) {
    error = absl::StrCat("redis ", name, ": ", node.status().message());
    return nullptr;
  }
  Node* n = node->get();
  lru_.push_front(name);
  n->lru = lru_.begin();
  nodes_.emplace(std::move(name), *std::move(node));
  ArmSweep();
  return n;
}

absl::StatusOr<std::unique_ptr<RedisClient::Node>> RedisClient::OpenNode(
    const HostPort& address) {
  auto node = std::make_unique<Node>();
  node->address = address;
  node->name = address.ToString();
  node->last_used = clock_.Now();
  RedisConnectionOptions options{
      .address = address,
      .username = options_.username,
      .password = options_.password,
      .timeout = options_.timeout,
      .connect_timeout = options_.connect_timeout,
      .reconnect_backoff_base = options_.reconnect_backoff_base,
      .reconnect_backoff_max = options_.reconnect_backoff_max,
      .timeouts_before_reconnect = options_.timeouts_before_reconnect,
      // A node that cannot be reached serves nothing: its keys go back to
      // the seed (SlotMap calls nothing back).
      .on_connection_lost =
          [this, address](const std::string&) { slots_.Forget(address); },
  };
  if (options_.tls != nullptr) {
    // SNI and the certificate check: the configured server_name, else this
    // node's host (TlsBridge).
    auto bridge =
        TlsBridge::Start({.target = address,
                          .tls = options_.tls,
                          .handshake_timeout = std::max(
                              options_.connect_timeout, absl::Milliseconds(1))},
                         loop_);
    if (!bridge.ok()) return bridge.status();
    node->bridge = *std::move(bridge);
    TlsBridge* b = node->bridge.get();
    options.connect_to = b->local_address();
    options.on_socket = [b](int fd) { b->Expect(fd); };
    options.transport_error = [b] { return b->TakeLastError(); };
  }
  node->conn =
      std::make_unique<RedisConnection>(std::move(options), loop_, clock_);
  return node;
}

void RedisClient::Touch(Node& node) {
  node.last_used = clock_.Now();
  lru_.splice(lru_.begin(), lru_, node.lru);
}

void RedisClient::Retire(const std::string& name) {
  auto it = nodes_.find(name);
  if (it == nodes_.end() || it->second->seed) return;
  lru_.erase(it->second->lru);
  retired_.push_back(std::move(it->second));
  nodes_.erase(it);
  ArmSweep();
}

void RedisClient::ArmSweep() {
  if (sweep_timer_ != 0 || (nodes_.size() <= 1 && retired_.empty())) return;
  const absl::Duration every = std::clamp(
      options_.idle_timeout / 2, absl::Milliseconds(10), absl::Seconds(1));
  sweep_timer_ = loop_.AddTimer(every, [this] {
    sweep_timer_ = 0;
    Sweep();
  });
}

void RedisClient::Sweep() {
  // On a timer, never inside a connection's callback: freeing is safe here.
  const absl::Time now = clock_.Now();
  std::vector<std::string> idle;
  for (const auto& [name, node] : nodes_) {
    if (!node->seed && node->conn->pending() == 0 &&
        now - node->last_used >= options_.idle_timeout) {
      idle.push_back(name);
    }
  }
  for (const std::string& name : idle) Retire(name);
  std::erase_if(retired_, [](const std::unique_ptr<Node>& node) {
    return node->conn->pending() == 0;
  });
  ArmSweep();
}

}  // namespace bulwark::store
