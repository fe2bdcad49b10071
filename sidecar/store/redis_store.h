// RedisStore: one configured Redis (SPEC section 8 `redis:` entry: a single
// server or a Redis Cluster reached through a seed node) as the rest of the
// sidecar sees it: a thread of its own running an event loop with one
// RedisClient on it, and a thread-safe way to hand it work. It decides
// nothing; it keeps Redis I/O (and hiredis's blocking DNS lookups) off the
// workers' loops, so a call path that posts work here never waits for Redis.
// Many GlobalLimiters (one per route with a global limit) share one store,
// hence one connection per Redis node.
//
// With a TLS context (a `tls` block), the store's loop also runs a TlsBridge
// per node that the client connects through (hiredis 0.14 has no TLS of its
// own); they live and die with the client, and each connect plus handshake is
// bounded by the client's connect_timeout.
//
// Thread-safety: Post and PostAfter may be called from any thread; tasks run
// on the store's thread, in post order per posting thread. Everything a task
// gets (the RedisClient) is used on that thread only. The destructor stops
// the thread; tasks still queued or timed are dropped uncalled (they are
// destroyed, releasing what they captured), and so are the client's pending
// callbacks. Destroy a store after everything that posts to it. Cost: Post is
// a mutex push plus, when the queue was empty, one eventfd write; one thread
// per configured Redis.
#ifndef BULWARK_SIDECAR_STORE_REDIS_STORE_H_
#define BULWARK_SIDECAR_STORE_REDIS_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "policies/clock.h"
#include "sidecar/net/event_loop.h"
#include "sidecar/net/tls.h"
#include "sidecar/store/redis_client.h"

namespace bulwark::store {

class RedisStore {
 public:
  using Task = absl::AnyInvocable<void(RedisClient&)>;

  struct Stats {
    int64_t ok = 0, errors = 0, timeouts = 0;  // completed commands
    std::string last_error;                    // of the latest failed one
  };

  // Starts the thread; the client connects at once (and keeps reconnecting).
  // `clock` times commands (MonotonicClock in production) and must outlive
  // the store. options.on_result, if set, runs on the store's thread.
  static std::unique_ptr<RedisStore> Start(RedisClientOptions options,
                                           Clock& clock);
  // The same over TLS: `tls` is a client context (TlsContext::Client). Fails
  // only if the bridge cannot listen on the loopback.
  static absl::StatusOr<std::unique_ptr<RedisStore>> StartTls(
      RedisClientOptions options, std::shared_ptr<const net::TlsContext> tls,
      Clock& clock);
  ~RedisStore();
  RedisStore(const RedisStore&) = delete;
  RedisStore& operator=(const RedisStore&) = delete;

  void Post(Task task);
  void PostAfter(absl::Duration delay, Task task);

  // Counters as of now; stale as soon as they return.
  Stats StatsApprox() ABSL_LOCKS_EXCLUDED(mu_);

  const std::string& name() const { return name_; }  // "host:port"

 private:
  RedisStore(RedisClientOptions options, Clock& clock,
             std::shared_ptr<const net::TlsContext> tls);

  const std::string name_;
  net::EventLoop loop_;
  absl::Status client_status_;  // why the seed's bridge could not start
  std::unique_ptr<RedisClient> client_;  // the store's thread only
  std::thread thread_;

  std::atomic<int64_t> ok_{0}, errors_{0}, timeouts_{0};
  absl::Mutex mu_;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace bulwark::store

#endif  // BULWARK_SIDECAR_STORE_REDIS_STORE_H_
