#include "sidecar/net/worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/algorithm/container.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "sidecar/net/accept_pause.h"
#include "sidecar/net/downstream_session.h"
#include "sidecar/net/h2_connection.h"
#include "sidecar/net/tls.h"
#include "sidecar/net/upstream_call.h"
#include "sidecar/net/upstream_session.h"

namespace bulwark::net {
namespace {

constexpr absl::Duration kInitialBackoff = absl::Milliseconds(100);
constexpr absl::Duration kMaxBackoff = absl::Seconds(5);

absl::StatusOr<int> BindListener(const std::string& host, uint16_t port,
                                 bool exclusive, uint16_t* bound) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port);
  if (int rc = getaddrinfo(host.c_str(), port_str.c_str(), &hints, &res);
      rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("listener ", host, ":", port, ": ", gai_strerror(rc)));
  }
  const int one = 1;
  if (exclusive && port != 0) {
    // SO_REUSEPORT would let this process share a port another process (an old
    // Bulwark, any gRPC server) already listens on, silently splitting its
    // connections. A plain bind first proves the port is free; the workers then
    // share it among themselves.
    const int probe = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0) {
      setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      const bool taken = bind(probe, res->ai_addr, res->ai_addrlen) != 0 &&
                         errno == EADDRINUSE;
      close(probe);
      if (taken) {
        freeaddrinfo(res);
        return absl::UnavailableError(absl::StrCat(
            "cannot listen on ", host, ":", port, ": ", strerror(EADDRINUSE)));
      }
    }
  }
  const int fd =
      socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(res);
    return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  }
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
    const int err = errno;
    freeaddrinfo(res);
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":",
                                               port, ": ", strerror(err)));
  }
  freeaddrinfo(res);
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  *bound = ntohs(ss.ss_family == AF_INET6
                     ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                     : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return fd;
}

}  // namespace

Worker::Worker(const WorkerOptions& options)
    : options_(options),
      clock_(options.clock != nullptr ? *options.clock : MonotonicClock::Get()),
      scratch_(64 * 1024) {
  loop_.SetFlushHook([this] { FlushDirty(); });
}

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(
    const WorkerOptions& options) {
  std::unique_ptr<Worker> worker(new Worker(options));
  auto fd =
      BindListener(options.listen_host, options.listen_port,
                   /*exclusive=*/options.index == 0, &worker->listen_port_);
  if (!fd.ok()) return fd.status();
  worker->listen_fd_ = *fd;
  worker->listener_ =
      evconnlistener_new(worker->loop_.base(), &Worker::OnAccept, worker.get(),
                         LEV_OPT_CLOSE_ON_FREE, -1, worker->listen_fd_);
  if (worker->listener_ == nullptr)
    return absl::InternalError("evconnlistener_new failed");
  worker->accept_pause_ = std::make_unique<AcceptPause>(
      worker->loop_.base(), worker->listener_,
      absl::StrCat("listener (worker ", options.index, ")"));
  return worker;
}

Worker::~Worker() {
  Join();
  // Connections left (the loop was stopped) are torn down without callbacks
  // into the core.
  for (DownstreamSession* s : downstream_) delete s;
  for (UpstreamConnection* c : all_upstream_) delete c;
  for (H2Connection* c : to_delete_) delete c;
  accept_pause_.reset();
  if (listener_ != nullptr) evconnlistener_free(listener_);
}

void Worker::Start() {
  thread_ = std::thread([this] { loop_.Run(); });
}

void Worker::Join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::OnAccept(evconnlistener*, int fd, sockaddr* addr, int addr_len,
                      void* arg) {
  auto* self = static_cast<Worker*>(arg);
  if (self->draining_) {
    close(fd);
    return;
  }
  if (self->downstream_.size() >= self->options_.max_connections) {
    close(fd);
    self->accept_pause_->NoteRefused([self] {
      return absl::StrCat(
          "connection closed at accept: this worker holds its cap of ",
          self->options_.max_connections, " client connections");
    });
    return;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  evutil_make_socket_nonblocking(fd);
  auto* session = new DownstreamSession(*self, fd);
  session->SetPeer(addr, addr_len);
  if (self->options_.tls != nullptr) {
    SSL* ssl = self->options_.tls->NewConnection(fd, "");
    if (ssl == nullptr) {
      delete session;  // closes fd
      return;
    }
    session->SetTls(ssl);
  }
  self->downstream_.insert(session);
  session->Start();
}

void Worker::SetListenerTls(std::shared_ptr<const TlsContext> tls) {
  Post([this, tls = std::move(tls)]() mutable {
    options_.tls = std::move(tls);
  });
}

void Worker::BeginDrain() {
  Post([this] {
    draining_ = true;
    if (listener_ != nullptr) {
      accept_pause_.reset();
      evconnlistener_free(listener_);
      listener_ = nullptr;
    }
    for (DownstreamSession* s : downstream_) s->Drain();
  });
}

void Worker::ForceCloseAndStop() {
  Post([this] {
    std::vector<DownstreamSession*> sessions(downstream_.begin(),
                                             downstream_.end());
    for (DownstreamSession* s : sessions) s->Close("shutting down");
    std::vector<UpstreamConnection*> ups(all_upstream_.begin(),
                                         all_upstream_.end());
    for (UpstreamConnection* c : ups) c->Close("shutting down");
    FlushDirty();
    loop_.Stop();
  });
}

std::unique_ptr<UpstreamCallHandle> Worker::StartUpstreamCall(
    const UpstreamAddress& address, UpstreamRequest request,
    UpstreamCallListener* listener, const UpstreamCallOptions& options) {
  return UpstreamCall::Start(*this, address, std::move(request), listener,
                             options);
}

Call* Worker::FindCall(uint64_t id) {
  auto it = calls_.find(id);
  return it == calls_.end() ? nullptr : it->second;
}

void Worker::RegisterCall(uint64_t id, DownstreamStream* stream) {
  calls_[id] = stream;
}

void Worker::UnregisterCall(uint64_t id) { calls_.erase(id); }

UpstreamConnection* Worker::UpstreamFor(const UpstreamAddress& address,
                                        std::string* error, UpstreamUse use) {
  UpstreamSlot& slot = SlotsFor(use)[address.key];
  // Those that took a GOAWAY (or were retired) drain and take no new streams.
  std::erase_if(slot.conns, [](UpstreamConnection* c) {
    return c->closed() || !c->accepting_streams();
  });
  UpstreamConnection* least_busy = nullptr;
  for (UpstreamConnection* conn : slot.conns) {
    if (conn->settings_received())
      slot.learned_max_streams = conn->max_streams();
    if (conn->HasRoom()) return conn;
    if (least_busy == nullptr ||
        conn->open_streams() < least_busy->open_streams()) {
      least_busy = conn;
    }
  }
  const size_t cap =
      use == UpstreamUse::kHealthProbe ? 1 : kMaxConnectionsPerEndpoint;
  if (least_busy != nullptr && slot.conns.size() >= cap) return least_busy;
  const absl::Time now = clock_.Now();
  if (now < slot.retry_after) {
    // Connecting failed a moment ago; a connection that is full still takes
    // the call (it waits for a stream to end).
    if (least_busy != nullptr) return least_busy;
    *error = absl::StrCat("upstream ", address.key,
                          " is unreachable (next connect attempt in ",
                          absl::FormatDuration(absl::Ceil(
                              slot.retry_after - now, absl::Milliseconds(1))),
                          ")");
    return nullptr;
  }
  auto conn = UpstreamConnection::Connect(
      *this, address, use, ++last_upstream_id_,
      slot.learned_max_streams > 0
          ? slot.learned_max_streams
          : UpstreamConnection::kDefaultAssumedMaxStreams,
      error);
  if (conn == nullptr) {
    slot.backoff =
        std::min(kMaxBackoff, std::max(kInitialBackoff, slot.backoff * 2));
    slot.retry_after = now + slot.backoff;
    if (least_busy != nullptr) {
      error->clear();
      return least_busy;
    }
    return nullptr;
  }
  conn->spare_ = !slot.conns.empty();
  slot.conns.push_back(conn);
  all_upstream_.insert(conn);
  if (retained_.has_value() && !retained_->contains(address.key)) {
    // A call still holding an older snapshot reached an endpoint that has left
    // since: serve it, then let the connections go once their streams are
    // done (the task runs after the caller has submitted its stream).
    Post([this, key = address.key, use] {
      if (retained_.has_value() && retained_->contains(key)) return;
      auto& slots = SlotsFor(use);
      auto it = slots.find(key);
      if (it == slots.end()) return;
      for (UpstreamConnection* c : it->second.conns) c->Retire();
      slots.erase(it);
    });
  }
  return conn;
}

void Worker::OnUpstreamClosed(UpstreamConnection* conn, bool connect_failed) {
  all_upstream_.erase(conn);
  ScheduleMemoryTrim();
  auto& slots = SlotsFor(conn->use());
  auto it = slots.find(conn->key());
  if (it == slots.end()) return;
  UpstreamSlot& slot = it->second;
  // A connection that left the slot (drained after GOAWAY, or retired before
  // its key came back) says nothing about the current ones.
  auto pos = std::find(slot.conns.begin(), slot.conns.end(), conn);
  if (pos == slot.conns.end()) return;
  slot.conns.erase(pos);
  if (connect_failed) {
    slot.backoff =
        std::min(kMaxBackoff, std::max(kInitialBackoff, slot.backoff * 2));
    slot.retry_after = clock_.Now() + slot.backoff;
  } else {
    slot.backoff = absl::ZeroDuration();
    slot.retry_after = absl::InfinitePast();
  }
}

void Worker::OnUpstreamIdle(UpstreamConnection* conn) {
  // An endpoint's first connection stays; a further one goes after
  // kSpareConnectionIdle without streams. One timer per connection at a time.
  if (!conn->spare_ || conn->spare_timer_armed_ || !conn->accepting_streams()) {
    return;
  }
  auto& slots = SlotsFor(conn->use());
  auto it = slots.find(conn->key());
  if (it == slots.end() || it->second.conns.empty() ||
      it->second.conns.front() == conn) {
    return;
  }
  conn->spare_timer_armed_ = true;
  ArmSpareTimer(conn->use(), conn->key(), conn->id(),
                conn->idle_since() + kSpareConnectionIdle);
}

void Worker::ArmSpareTimer(UpstreamUse use, std::string key, uint64_t id,
                           absl::Time when) {
  timers_.Schedule(when, [this, use, key = std::move(key), id]() mutable {
    auto& slots = SlotsFor(use);
    auto it = slots.find(key);
    if (it == slots.end()) return;
    auto& conns = it->second.conns;
    auto pos = absl::c_find_if(
        conns, [id](UpstreamConnection* c) { return c->id() == id; });
    if (pos == conns.end()) return;
    UpstreamConnection* conn = *pos;
    conn->spare_timer_armed_ = false;
    // Busy again: the next time it empties arms a new timer.
    if (conn->open_streams() > 0 || pos == conns.begin()) return;
    const absl::Time due = conn->idle_since() + kSpareConnectionIdle;
    if (clock_.Now() < due) {
      conn->spare_timer_armed_ = true;
      ArmSpareTimer(use, std::move(key), id, due);
      return;
    }
    conns.erase(pos);
    conn->Retire();
  });
}

void Worker::RetainUpstreams(absl::flat_hash_set<std::string> keys) {
  Post([this, keys = std::move(keys)]() mutable {
    for (auto* slots : {&upstream_, &probe_upstream_}) {
      absl::erase_if(*slots, [&](const auto& entry) {
        if (keys.contains(entry.first)) return false;
        for (UpstreamConnection* c : entry.second.conns) c->Retire();
        return true;
      });
    }
    retained_ = std::move(keys);
  });
}

void Worker::OnDownstreamClosed(DownstreamSession* session) {
  downstream_.erase(session);
  ScheduleMemoryTrim();
}

void Worker::ScheduleMemoryTrim() {
  if (trim_scheduled_) return;
  trim_scheduled_ = true;
  // A closed connection may have freed megabytes of queued stream data (a
  // client that stopped reading holds up to a stream window per stream) in
  // chunks spread over glibc's heap, which keeps such memory mapped. One
  // malloc_trim per second at most, off the I/O path, hands the free pages
  // back to the kernel (madvise), so RSS follows the load back down.
  // malloc_trim walks every arena, so one per second for the whole process:
  // whichever worker's timer fires first does it for all.
  timers_.Schedule(clock_.Now() + kMemoryTrimDelay, [this] {
    trim_scheduled_ = false;
    h2_pool_.ReleaseFree();  // this worker's, before the process-wide trim
    static std::atomic<int64_t> last_trim_ns{0};
    const int64_t now = absl::GetCurrentTimeNanos();
    int64_t last = last_trim_ns.load(std::memory_order_relaxed);
    if (now - last < absl::ToInt64Nanoseconds(kMemoryTrimDelay)) return;
    if (!last_trim_ns.compare_exchange_strong(last, now)) return;
    malloc_trim(0);
  });
}

void Worker::AddDirty(H2Connection* conn) {
  dirty_.push_back(conn);
  loop_.RequestFlush();
}

void Worker::DeleteLater(H2Connection* conn) {
  to_delete_.push_back(conn);
  loop_.RequestFlush();
}

void Worker::FlushDirty() {
  // Flushing one connection can dirty another (a WINDOW_UPDATE for the peer of
  // a stream whose bytes just left), so loop until nothing is dirty.
  while (!dirty_.empty()) {
    std::vector<H2Connection*> batch;
    batch.swap(dirty_);
    for (H2Connection* conn : batch) {
      if (!conn->closed()) conn->Flush();
    }
  }
  std::vector<H2Connection*> doomed;
  doomed.swap(to_delete_);
  for (H2Connection* conn : doomed) delete conn;
}

}  // namespace bulwark::net
