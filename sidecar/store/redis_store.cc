#include "sidecar/store/redis_store.h"

#include <pthread.h>
#include <signal.h>

#include <utility>

namespace bulwark::store {

std::unique_ptr<RedisStore> RedisStore::Start(RedisClientOptions options,
                                              Clock& clock) {
  return std::unique_ptr<RedisStore>(new RedisStore(std::move(options), clock));
}

RedisStore::RedisStore(RedisClientOptions options, Clock& clock)
    : name_(options.address.ToString()) {
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
  // The store's thread takes no process signals (SIGPIPE from hiredis's
  // write(2) to a closed socket above all): they belong to the main thread.
  // A new thread inherits the creator's mask, so block everything around the
  // spawn.
  sigset_t all;
  sigset_t previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  thread_ = std::thread([this, &clock, options = std::move(options)]() mutable {
    client_ = std::make_unique<RedisClient>(std::move(options), loop_, clock);
    loop_.Run();
    client_.reset();
  });
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
}

RedisStore::~RedisStore() {
  // Run's loop ends after this iteration; the client is destroyed on the
  // store's thread before it returns.
  loop_.Stop();
  thread_.join();
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
