#include "sidecar/store/redis_store.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <utility>

namespace bulwark::store {

std::unique_ptr<RedisStore> RedisStore::Start(RedisClientOptions options,
                                              Clock& clock) {
  return std::unique_ptr<RedisStore>(
      new RedisStore(std::move(options), clock, nullptr));
}

absl::StatusOr<std::unique_ptr<RedisStore>> RedisStore::StartTls(
    RedisClientOptions options, std::shared_ptr<const net::TlsContext> tls,
    Clock& clock) {
  if (tls == nullptr) {
    return absl::InvalidArgumentError("StartTls needs a TLS context");
  }
  auto store = std::unique_ptr<RedisStore>(
      new RedisStore(std::move(options), clock, std::move(tls)));
  if (!store->client_status_.ok()) return store->client_status_;
  return store;
}

RedisStore::RedisStore(RedisClientOptions options, Clock& clock,
                       std::shared_ptr<const net::TlsContext> tls)
    : name_(options.address.ToString()) {
  if (tls != nullptr) options.tls = std::move(tls);
  // Counted here, then handed on to whoever configured a hook.
  auto hook = std::move(options.on_result);
  options.on_result = [this,
                       hook = std::move(hook)](const RedisResult& r) mutable {
    switch (r.kind) {
      case RedisResult::Kind::kOk:
        ok_.fetch_add(1, std::memory_order_relaxed);
        break;
      case RedisResult::Kind::kError:
        errors_.fetch_add(1, std::memory_order_relaxed);
        break;
      case RedisResult::Kind::kTimeout:
        timeouts_.fetch_add(1, std::memory_order_relaxed);
        break;
    }
    if (r.kind != RedisResult::Kind::kOk) {
      absl::MutexLock lock(&mu_);
      last_error_ = r.error;
    }
    if (hook) hook(r);
  };
  // Made here, on the loop before its thread runs it (nothing else uses the
  // loop yet); used and destroyed on the store's thread.
  auto client = RedisClient::Create(std::move(options), loop_, clock);
  if (!client.ok()) {
    client_status_ = client.status();
    return;  // no thread: StartTls returns the error
  }
  client_ = *std::move(client);
  // The store's thread takes no process signals (SIGPIPE from hiredis's
  // write(2) to a closed socket above all): they belong to the main thread.
  // A new thread inherits the creator's mask, so block everything around the
  // spawn.
  sigset_t all;
  sigset_t previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  thread_ = std::thread([this] {
    loop_.Run();
    // On the store's thread, as every use of the client.
    client_.reset();
  });
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
}

RedisStore::~RedisStore() {
  // Run's loop ends after this iteration; the client (and its bridges) are
  // destroyed on the store's thread before it returns.
  loop_.Stop();
  if (thread_.joinable()) thread_.join();
}

void RedisStore::Post(Task task) {
  loop_.Post([this, task = std::move(task)]() mutable {
    if (client_ != nullptr) task(*client_);
  });
}

void RedisStore::PostAfter(absl::Duration delay, Task task) {
  loop_.Post([this, delay, task = std::move(task)]() mutable {
    loop_.AddTimer(delay, [this, task = std::move(task)]() mutable {
      if (client_ != nullptr) task(*client_);
    });
  });
}

RedisStore::Stats RedisStore::StatsApprox() {
  Stats s{.ok = ok_.load(std::memory_order_relaxed),
          .errors = errors_.load(std::memory_order_relaxed),
          .timeouts = timeouts_.load(std::memory_order_relaxed)};
  absl::MutexLock lock(&mu_);
  s.last_error = last_error_;
  return s;
}

}  // namespace bulwark::store
