// Worker: one event-loop thread of the data plane. It owns its SO_REUSEPORT
// listening socket, the downstream connections it accepted, and the multiplexed
// upstream connections to each endpoint it talks to: one while the endpoint's
// SETTINGS_MAX_CONCURRENT_STREAMS leaves room, more (up to
// kMaxConnectionsPerEndpoint) when it does not, plus one of its own for the
// health probes. A call (stream) lives on one worker for its whole life; other
// threads reach a worker only through Post.
//
// Thread-safety: Create/Start/Join/Post/BeginDrain/ForceClose from any thread;
// the rest only on the worker's own thread. Cost: nothing per call beyond the
// sessions' own work.
#ifndef BULWARK_SIDECAR_NET_WORKER_H_
#define BULWARK_SIDECAR_NET_WORKER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sidecar/net/block_pool.h"
#include "sidecar/net/event_loop.h"
#include "sidecar/net/stream_handler.h"

struct evconnlistener;

namespace bulwark::net {

class AcceptPause;
class H2Connection;
class DownstreamSession;
class DownstreamStream;
class UpstreamConnection;
class TlsContext;

struct WorkerOptions {
  int index = 0;
  std::string listen_host = "0.0.0.0";
  uint16_t listen_port =
      0;  // 0: pick one (the first worker; others reuse its port)
  uint64_t max_message_bytes = 4 * 1024 * 1024;
  uint32_t max_concurrent_streams = 1000;
  uint32_t max_header_list_bytes = 64 * 1024;
  // Client connections this worker keeps at once; past it new ones are closed
  // at accept. The sidecar derives it from the file-descriptor limit.
  uint32_t max_connections = 10000;
  // A client connection whose preface and first SETTINGS (and TLS handshake)
  // have not arrived this long after accept is closed (listener
  // handshake_timeout).
  absl::Duration handshake_timeout = absl::Seconds(10);
  // A client connection without open streams this long gets GOAWAY
  // (listener idle_timeout).
  absl::Duration idle_timeout = absl::Hours(1);
  // HTTP/2 windows the sidecar advertises: they bound what it buffers per
  // stream and per connection, since bytes are consumed only when the other
  // side took them. Per stream and direction; the connection window is given
  // back as bytes arrive, so the stream windows alone bound what the sidecar
  // holds (streams x window).
  uint32_t stream_window_bytes = 256 << 10;
  uint32_t connection_window_bytes = 8 << 20;
  // Listener TLS (null: h2c). Replaced on reload through SetListenerTls.
  std::shared_ptr<const TlsContext> tls;
  // The data plane's clock (null: MonotonicClock); it must be monotonic.
  Clock* clock = nullptr;
};

class Worker final : public Executor {
 public:
  // Binds the listening socket (SO_REUSEPORT) so address errors surface before
  // start.
  static absl::StatusOr<std::unique_ptr<Worker>> Create(
      const WorkerOptions& options);
  ~Worker() override;

  // The handler must be set before Start and outlive the worker's thread.
  void SetHandler(CallHandler* handler) { handler_ = handler; }
  void Start();
  void Join();

  void Post(absl::AnyInvocable<void()> task) override {
    loop_.Post(std::move(task));
  }
  // New client connections use `tls` (re-read certificates after a reload).
  // Thread-safe.
  void SetListenerTls(std::shared_ptr<const TlsContext> tls);
  // Stops accepting and sends GOAWAY on every downstream connection; open
  // streams go on.
  void BeginDrain();
  // Resets every stream and closes every connection, then stops the loop.
  void ForceCloseAndStop();

  uint16_t listen_port() const { return listen_port_; }
  int index() const { return options_.index; }
  const WorkerOptions& options() const { return options_; }
  // What this worker's nghttp2 sessions allocate from (worker thread only).
  nghttp2_mem* h2_mem() { return h2_pool_.mem(); }
  // Streams open on this worker (a racy snapshot, for drain and /routes).
  int64_t OpenStreamsApprox() const {
    return open_streams_.load(std::memory_order_relaxed);
  }

  // --- worker-thread API ---
  EventLoop& loop() { return loop_; }
  TimerQueue& timers() override { return timers_; }
  Clock& clock() override { return clock_; }
  std::unique_ptr<UpstreamCallHandle> StartUpstreamCall(
      const UpstreamAddress& address, UpstreamRequest request,
      UpstreamCallListener* listener,
      const UpstreamCallOptions& options) override;
  CallHandler* handler() { return handler_; }
  uint8_t* scratch() { return scratch_.data(); }
  size_t scratch_size() const { return scratch_.size(); }
  uint64_t NextCallId() { return ++last_call_id_; }
  // The live call with this id, or nullptr if it ended (for continuations).
  Call* FindCall(uint64_t id) override;
  void RegisterCall(uint64_t id, DownstreamStream* stream);
  void UnregisterCall(uint64_t id);
  void StreamOpened() { open_streams_.fetch_add(1, std::memory_order_relaxed); }
  void StreamClosed() { open_streams_.fetch_sub(1, std::memory_order_relaxed); }

  // Connections per endpoint for calls: a further one opens when every one
  // is at the endpoint's SETTINGS_MAX_CONCURRENT_STREAMS; past this many,
  // calls wait on the least busy (nghttp2 holds them back until a stream
  // ends). Health probes have a connection of their own besides.
  static constexpr size_t kMaxConnectionsPerEndpoint = 16;
  // A further connection (not an endpoint's first) without streams this long
  // is closed (GOAWAY).
  static constexpr absl::Duration kSpareConnectionIdle = absl::Seconds(30);

  // The connection for an upstream endpoint: the first in use with room for
  // another stream, else a new one (connecting, or failing fast while it backs
  // off after a failure), else the least busy. Health probes
  // (`UpstreamUse::kHealthProbe`) use their own connection, so traffic held
  // back by the endpoint's stream limit never delays them. nullptr with
  // `error` set when none can be used now.
  UpstreamConnection* UpstreamFor(const UpstreamAddress& address,
                                  std::string* error,
                                  UpstreamUse use = UpstreamUse::kCall);
  void OnUpstreamClosed(UpstreamConnection* conn, bool connect_failed);
  // The connection's last open stream ended.
  void OnUpstreamIdle(UpstreamConnection* conn);
  // Upstream connections open now (for tests and /routes).
  size_t UpstreamConnectionCount() const { return all_upstream_.size(); }
  // Posts: upstream connections whose key is not in `keys` (their endpoint
  // left the configuration or the DNS answer) take no new streams and close
  // once their streams are done; their reconnect state is forgotten.
  void RetainUpstreams(absl::flat_hash_set<std::string> keys);
  void OnDownstreamClosed(DownstreamSession* session);

  void AddDirty(H2Connection* conn);
  void DeleteLater(H2Connection* conn);

 private:
  explicit Worker(const WorkerOptions& options);
  static void OnAccept(evconnlistener* listener, int fd, sockaddr* addr,
                       int len, void* arg);
  void FlushDirty();
  // Retires the spare connection `id` once it has been without streams for
  // kSpareConnectionIdle (checked at `when`).
  void ArmSpareTimer(UpstreamUse use, std::string key, uint64_t id,
                     absl::Time when);
  // After a connection closed: malloc_trim once kMemoryTrimDelay has passed
  // (coalescing closes in between).
  void ScheduleMemoryTrim();
  static constexpr absl::Duration kMemoryTrimDelay = absl::Seconds(1);

  WorkerOptions options_;
  Clock& clock_;
  // nghttp2's memory for this worker's sessions; declared first among the
  // state so it outlives every session (the destructor deletes them).
  BlockPool h2_pool_;
  EventLoop loop_;
  LoopTimerQueue timers_{loop_, clock_};
  CallHandler* handler_ = nullptr;
  std::thread thread_;
  int listen_fd_ = -1;
  uint16_t listen_port_ = 0;
  evconnlistener* listener_ = nullptr;
  // Pauses accepting when accept(2) fails (out of fds); reset before listener_
  // is freed.
  std::unique_ptr<AcceptPause> accept_pause_;
  bool draining_ = false;
  bool trim_scheduled_ = false;
  std::vector<uint8_t> scratch_;
  uint64_t last_call_id_ = 0;
  std::atomic<int64_t> open_streams_{0};

  absl::flat_hash_set<DownstreamSession*> downstream_;
  absl::flat_hash_map<uint64_t, DownstreamStream*> calls_;
  struct UpstreamSlot {
    // The connections taking new streams, oldest first (owned via
    // all_upstream_). Those that stopped taking streams (GOAWAY, retired)
    // leave the list and drain.
    std::vector<UpstreamConnection*> conns;
    absl::Time retry_after = absl::InfinitePast();
    absl::Duration backoff = absl::ZeroDuration();
    // The endpoint's SETTINGS_MAX_CONCURRENT_STREAMS as a connection last
    // learned it (0: not yet): what a new connection assumes until its own
    // SETTINGS arrive.
    uint32_t learned_max_streams = 0;
  };
  absl::flat_hash_map<std::string, UpstreamSlot>& SlotsFor(UpstreamUse use) {
    return use == UpstreamUse::kHealthProbe ? probe_upstream_ : upstream_;
  }
  // Calls' connections and health probes', by endpoint key.
  absl::flat_hash_map<std::string, UpstreamSlot> upstream_;
  absl::flat_hash_map<std::string, UpstreamSlot> probe_upstream_;
  uint64_t last_upstream_id_ = 0;
  absl::flat_hash_set<UpstreamConnection*> all_upstream_;
  // The upstream keys of the current configuration (RetainUpstreams); unset
  // until the first call.
  std::optional<absl::flat_hash_set<std::string>> retained_;
  std::vector<H2Connection*> dirty_;
  std::vector<H2Connection*> to_delete_;
};

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_WORKER_H_
