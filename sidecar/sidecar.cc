#include "sidecar/sidecar.h"

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "sidecar/admin_views.h"
#include "sidecar/file_util.h"
#include "sidecar/health_checks.h"
#include "sidecar/log.h"
#include "sidecar/net/tls.h"
#include "sidecar/status_page.h"

namespace bulwark {
namespace {

// Through ReadConfigFile, so that a config path swapped for a FIFO or a device
// can never block the main thread's change check (SPEC section 11).
std::string ReadFileOrEmpty(const std::string& path) {
  absl::StatusOr<std::string> content = ReadConfigFile(path);
  return content.ok() ? *std::move(content) : "";
}

// Sent by the DNS refresher's thread to the process when an answer changed:
// wakes the main thread's sigtimedwait.
int WakeSignal() { return SIGRTMIN + 1; }

// The endpoints of `cluster` given as DNS names (IP literals left out).
std::vector<HostPort> NamedEndpoints(const config::v1::Cluster& cluster) {
  std::vector<HostPort> names;
  for (const std::string& text : cluster.endpoints()) {
    auto address = ParseHostPort(text);
    if (address.ok() && !IsIpLiteral(address->host)) names.push_back(*address);
  }
  return names;
}

// The endpoint names of `snapshot` to keep fresh, with their clusters'
// intervals (0 = never refreshed).
std::vector<DnsRefresher::Name> DnsNames(const Snapshot& snapshot) {
  std::vector<DnsRefresher::Name> names;
  for (const auto& cluster : snapshot.cluster_list) {
    const absl::Duration interval =
        ToAbslDuration(cluster->config().dns_refresh_interval());
    if (interval <= absl::ZeroDuration()) continue;
    for (HostPort& address : NamedEndpoints(cluster->config())) {
      names.push_back({.address = std::move(address), .interval = interval});
    }
  }
  return names;
}

// Raises the soft limit on file descriptors to the hard one (SPEC section 11):
// every client, upstream and admin connection is one. Returns the soft limit
// now in force; logs it once.
uint64_t RaiseFileDescriptorLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    Log(LogLevel::kWarning, "file descriptors: getrlimit failed: %s",
        std::strerror(errno));
    return 1024;
  }
  const uint64_t before = limit.rlim_cur;
  // Linux caps the hard limit at fs.nr_open; "unlimited" is not a number to
  // ask for.
  const rlim_t target =
      limit.rlim_max == RLIM_INFINITY ? rlim_t{1} << 20 : limit.rlim_max;
  if (limit.rlim_cur < target) {
    rlimit raised = limit;
    raised.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
      limit = raised;
    } else {
      Log(LogLevel::kWarning,
          "file descriptors: cannot raise the soft limit %d to %d: %s", before,
          static_cast<uint64_t>(target), std::strerror(errno));
    }
  }
  if (limit.rlim_cur != before) {
    Log(LogLevel::kInfo,
        "file descriptors: soft limit raised from %d to %d (the hard limit)",
        before, static_cast<uint64_t>(limit.rlim_cur));
  } else {
    Log(LogLevel::kInfo, "file descriptors: limit %d (soft = hard)", before);
  }
  return limit.rlim_cur;
}

// Most client connections a worker holds (WorkerOptions::max_connections):
// what the fd limit leaves after a reserve for the rest of the process (its
// own files, logs and event loops; per worker a listener and one upstream
// connection per endpoint and some spare; the health checks; the admin port's
// 256 connections), shared by the workers. The reserve takes at most half of
// a small limit; at most 10 000 per worker whatever the limit (each idle
// connection costs memory too). At the cap, new connections are closed at
// accept; should the process still run out of fds, the listeners pause
// (net::AcceptPause).
constexpr uint32_t kMaxConnectionsPerWorker = 10000;
struct ConnectionCap {
  uint32_t per_worker;
  uint64_t reserve;
};
ConnectionCap ConnectionsPerWorker(uint64_t fd_limit, uint32_t workers,
                                   uint64_t endpoints) {
  const uint64_t wanted = 64 + 256 + workers * (8 + endpoints) + endpoints;
  const uint64_t reserve = std::min(wanted, fd_limit / 2);
  const uint64_t per_worker = (fd_limit - reserve) / std::max(1u, workers);
  return {.per_worker = static_cast<uint32_t>(
              std::clamp<uint64_t>(per_worker, 1, kMaxConnectionsPerWorker)),
          .reserve = reserve};
}

}  // namespace

// The listener's TLS context (certificates read now), or null for plaintext
// h2c.
absl::StatusOr<std::shared_ptr<const net::TlsContext>> Sidecar::ListenerTls(
    const config::v1::Config& config) {
  if (!config.listener().has_tls())
    return std::shared_ptr<const net::TlsContext>();
  const auto& t = config.listener().tls();
  auto ctx = net::TlsContext::Server({.cert_file = t.cert_file(),
                                      .key_file = t.key_file(),
                                      .client_ca_file = t.client_ca_file()});
  if (!ctx.ok()) {
    return absl::Status(ctx.status().code(),
                        absl::StrCat("listener.tls: ", ctx.status().message()));
  }
  return *std::move(ctx);
}

void Sidecar::BlockSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, WakeSignal());
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

absl::StatusOr<std::shared_ptr<const Snapshot>> Sidecar::BuildSnapshot(
    LoadedConfig config, const Snapshot* previous, bool reread_tls) {
  return bulwark::BuildSnapshot(std::move(config), previous,
                                {.metrics = metrics_,
                                 .dns = dns_,
                                 .clock = MonotonicClock::Get(),
                                 .reread_tls = reread_tls});
}

absl::StatusOr<std::unique_ptr<Sidecar>> Sidecar::Create(LoadedConfig config) {
  std::unique_ptr<Sidecar> sidecar(new Sidecar());
  sidecar->config_path_ = config.source_path;
  sidecar->config_text_ = ReadFileOrEmpty(config.source_path);
  auto snapshot = sidecar->BuildSnapshot(std::move(config), nullptr);
  if (!snapshot.ok()) return snapshot.status();
  {
    absl::MutexLock lock(&sidecar->mu_);
    sidecar->snapshot_ = *snapshot;
  }
  sidecar->KeepRedisStores(**snapshot);
  const config::v1::Config& proto = (*snapshot)->config.proto;

  auto listen = ParseHostPort(proto.listener().address(), PortZero::kAllow);
  if (!listen.ok()) return listen.status();
  uint32_t workers = proto.workers();
  if (workers == 0) workers = std::max(1u, std::thread::hardware_concurrency());

  std::shared_ptr<const net::TlsContext> tls;
  if (auto built = ListenerTls(proto); !built.ok()) {
    return built.status();
  } else {
    tls = *std::move(built);
  }
  const uint64_t fd_limit = RaiseFileDescriptorLimit();
  uint64_t endpoints = 0;
  for (const auto& cluster : (*snapshot)->cluster_list) {
    endpoints += cluster->endpoints().size();
  }
  const ConnectionCap cap = ConnectionsPerWorker(fd_limit, workers, endpoints);
  Log(LogLevel::kInfo,
      "accepting up to %d client connections per worker (%d workers; fd limit "
      "%d, %d kept for upstreams, files and the admin port)",
      cap.per_worker, workers, fd_limit, cap.reserve);
  net::WorkerOptions options{
      .listen_host = listen->host,
      .listen_port = listen->port,
      .max_message_bytes = proto.listener().max_message_bytes(),
      .max_concurrent_streams = proto.listener().max_concurrent_streams(),
      .max_connections = cap.per_worker,
      .handshake_timeout = ToAbslDuration(proto.listener().handshake_timeout()),
      .idle_timeout = ToAbslDuration(proto.listener().idle_timeout()),
      .tls = tls,
  };
  for (uint32_t i = 0; i < workers; ++i) {
    options.index = static_cast<int>(i);
    auto worker = net::Worker::Create(options);
    if (!worker.ok()) return worker.status();
    // Port 0: the first worker's ephemeral port is shared by the others
    // (SO_REUSEPORT).
    options.listen_port = (*worker)->listen_port();
    auto handler = std::make_unique<chain::ProxyHandler>(**worker, *snapshot);
    (*worker)->SetHandler(handler.get());
    sidecar->handlers_.push_back(std::move(handler));
    sidecar->workers_.push_back(std::move(*worker));
  }

  Sidecar* self = sidecar.get();
  self->metrics_.SetCollectHook([self] { self->RefreshGauges(); });
  auto admin = AdminServer::Create(
      proto.admin().address(),
      {.metrics = [self] { return self->metrics_.Serialize(); },
       .readiness = [self] { return self->Readiness(); },
       .config_json = [self] { return self->current()->config_json; },
       .routes_json = [self] { return self->RoutesJson(); },
       .status_page =
           [self] {
             return StatusPageHtml(*self->current(),
                                   MonotonicClock::Get().Now(),
                                   absl::StrCat("bulwark ", BULWARK_VERSION));
           }});
  if (!admin.ok()) return admin.status();
  sidecar->admin_ = std::move(*admin);

  sidecar->health_checks_ =
      std::make_unique<HealthChecks>(*sidecar->workers_[0]);
  for (auto& worker : sidecar->workers_) worker->Start();
  sidecar->StartHealthChecks(*snapshot);
  const pthread_t main_thread = pthread_self();
  sidecar->dns_refresher_ = std::make_unique<DnsRefresher>(
      sidecar->dns_, RealClock::Get(), [main_thread] {
        // The main thread's loop rebuilds; wake it now rather than at its
        // next one-second tick. Sent to that thread alone, which blocks it
        // (BlockSignals), so it stays pending for Run's sigtimedwait and can
        // never take the process down.
        pthread_kill(main_thread, WakeSignal());
      });
  sidecar->dns_refresher_->SetNames(DnsNames(**snapshot));
  sidecar->dns_refresher_->Start();
  Log(LogLevel::kInfo, "listening on %s:%d with %d workers; admin on port %d",
      listen->host, sidecar->workers_[0]->listen_port(),
      static_cast<int>(workers), sidecar->admin_->port());
  return sidecar;
}

Sidecar::~Sidecar() {
  if (dns_refresher_ != nullptr) dns_refresher_->Stop();
  if (admin_ != nullptr) admin_->Stop();
  StopHealthChecks();
  for (auto& worker : workers_) worker->ForceCloseAndStop();
  for (auto& worker : workers_) worker->Join();
}

std::shared_ptr<const Snapshot> Sidecar::current() {
  absl::MutexLock lock(&mu_);
  return snapshot_;
}

int Sidecar::Run(absl::AnyInvocable<void()> on_tick) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, WakeSignal());
  while (true) {
    timespec timeout{1, 0};
    const int sig = sigtimedwait(&set, nullptr, &timeout);
    if (sig == SIGTERM || sig == SIGINT) {
      Log(LogLevel::kInfo, "%s: draining",
          sig == SIGTERM ? "SIGTERM" : "SIGINT");
      Drain();
      return 0;
    }
    if (sig == SIGHUP) {
      // Log rotation: the access log opens its path again (the writer thread
      // does, before its next line).
      std::shared_ptr<const Snapshot> current;
      {
        absl::MutexLock lock(&mu_);
        current = snapshot_;
      }
      if (current != nullptr && current->access_log != nullptr) {
        current->access_log->Reopen();
      }
      Reload("SIGHUP");
      continue;
    }
    if (sig == WakeSignal()) {
      RefreshEndpoints();
      continue;
    }
    ReleaseUnusedRedisStores();
    if (on_tick) on_tick();
    // Timeout: has the file's content changed (ConfigMap updates swap a
    // symlink)?
    if (!config_path_.empty()) {
      std::string text = ReadFileOrEmpty(config_path_);
      if (!text.empty() && text != config_text_) Reload("config file changed");
    }
  }
}

void Sidecar::Reload(std::string_view why) {
  config_text_ = ReadFileOrEmpty(config_path_);
  auto loaded = LoadConfigFile(config_path_);
  if (loaded.ok()) {
    // A reload looks every endpoint name up afresh; a name whose lookup fails
    // keeps its last answer (a name never resolved fails the build below).
    for (const auto& cluster : loaded->proto.clusters()) {
      for (const HostPort& address : NamedEndpoints(cluster)) {
        (void)dns_.Refresh(address);
      }
    }
  }
  auto fail = [&](std::string_view message) {
    // Logged first: whoever sees the counter grow can also find the reason.
    Log(LogLevel::kError,
        "reload (%s) rejected, previous configuration stays: %s",
        std::string(why), std::string(message));
    metrics_.Reloads(Metrics::ReloadResult::kFailure).Increment();
  };
  if (!loaded.ok()) {
    fail(std::string(loaded.status().message()));
    return;
  }
  std::shared_ptr<const Snapshot> old = current();
  const auto& now_cfg = loaded->proto;
  const auto& old_cfg = old->config.proto;
  if (now_cfg.listener().address() != old_cfg.listener().address() ||
      now_cfg.admin().address() != old_cfg.admin().address() ||
      now_cfg.workers() != old_cfg.workers() ||
      now_cfg.listener().max_message_bytes() !=
          old_cfg.listener().max_message_bytes() ||
      now_cfg.listener().max_concurrent_streams() !=
          old_cfg.listener().max_concurrent_streams() ||
      ToAbslDuration(now_cfg.listener().handshake_timeout()) !=
          ToAbslDuration(old_cfg.listener().handshake_timeout()) ||
      ToAbslDuration(now_cfg.listener().idle_timeout()) !=
          ToAbslDuration(old_cfg.listener().idle_timeout())) {
    fail("listener, admin and workers settings need a restart");
    return;
  }
  // Certificates are read again on every reload (rotation without a restart).
  auto tls = ListenerTls(now_cfg);
  if (!tls.ok()) {
    fail(std::string(tls.status().message()));
    return;
  }
  auto snapshot = BuildSnapshot(std::move(*loaded), old.get());
  if (!snapshot.ok()) {
    fail(std::string(snapshot.status().message()));
    return;
  }
  for (auto& worker : workers_) worker->SetListenerTls(*tls);
  Install(*snapshot);
  Log(LogLevel::kInfo, "configuration reloaded (%s)", std::string(why));
  metrics_.Reloads(Metrics::ReloadResult::kSuccess).Increment();
}

void Sidecar::Install(std::shared_ptr<const Snapshot> snapshot) {
  {
    absl::MutexLock lock(&mu_);
    snapshot_ = snapshot;
  }
  absl::flat_hash_set<std::string> keys;
  for (const auto& cluster : snapshot->cluster_list) {
    for (const auto& endpoint : cluster->endpoints())
      keys.insert(endpoint->upstream.key);
  }
  for (size_t i = 0; i < workers_.size(); ++i) {
    chain::ProxyHandler* handler = handlers_[i].get();
    workers_[i]->Post([handler, snapshot] { handler->SetSnapshot(snapshot); });
    // After the new snapshot (posts run in order): new calls no longer pick
    // the endpoints that left, calls in progress on them finish.
    workers_[i]->RetainUpstreams(keys);
  }
  StartHealthChecks(snapshot);
  if (dns_refresher_ != nullptr) dns_refresher_->SetNames(DnsNames(*snapshot));
  KeepRedisStores(*snapshot);
}

void Sidecar::KeepRedisStores(const Snapshot& snapshot) {
  for (const auto& [name, store] : snapshot.redis) {
    if (std::find(redis_stores_.begin(), redis_stores_.end(), store) ==
        redis_stores_.end()) {
      redis_stores_.push_back(store);
    }
  }
  ReleaseUnusedRedisStores();
}

void Sidecar::ReleaseUnusedRedisStores() {
  // use_count() == 1: only this list holds it, and nothing can take a new
  // reference from nowhere, so the answer cannot go stale.
  std::erase_if(redis_stores_,
                [](const std::shared_ptr<store::RedisStore>& store) {
                  return store.use_count() == 1;
                });
}

void Sidecar::RefreshEndpoints() {
  if (draining_) return;
  std::shared_ptr<const Snapshot> old = current();
  auto snapshot = BuildSnapshot(old->config, old.get(), /*reread_tls=*/false);
  if (!snapshot.ok()) {
    // The answers are cached, so only a name that left the cache can fail
    // here; the endpoints stay as they are.
    Log(LogLevel::kError, "dns: endpoints not updated: %s",
        std::string(snapshot.status().message()));
    return;
  }
  Install(*snapshot);
  std::string sizes;
  for (const auto& cluster : (*snapshot)->cluster_list) {
    absl::StrAppend(&sizes, sizes.empty() ? "" : ", ", cluster->name(), " ",
                    cluster->endpoints().size());
  }
  Log(LogLevel::kInfo, "endpoints updated from DNS (%s)", sizes);
}

void Sidecar::Drain() {
  draining_ = true;
  for (auto& worker : workers_) worker->BeginDrain();
  // Not joined yet: a lookup in progress may take the resolver's timeout, and
  // the drain must not wait for it.
  if (dns_refresher_ != nullptr) dns_refresher_->RequestStop();
  const absl::Duration budget =
      ToAbslDuration(current()->config.proto.drain_timeout());
  const absl::Time until = absl::Now() + budget;
  while (absl::Now() < until) {
    int64_t open = 0;
    for (auto& worker : workers_) open += worker->OpenStreamsApprox();
    if (open == 0) break;
    absl::SleepFor(absl::Milliseconds(10));  // main thread, not a worker
  }
  int64_t left = 0;
  for (auto& worker : workers_) left += worker->OpenStreamsApprox();
  if (left > 0)
    Log(LogLevel::kWarning, "drain timeout: cancelling %d calls", left);
  StopHealthChecks();
  for (auto& worker : workers_) worker->ForceCloseAndStop();
  for (auto& worker : workers_) worker->Join();
  admin_->Stop();
  if (dns_refresher_ != nullptr) dns_refresher_->Stop();
  Log(LogLevel::kInfo, "stopped");
}

void Sidecar::StartHealthChecks(std::shared_ptr<const Snapshot> snapshot) {
  if (health_checks_ != nullptr) health_checks_->Follow(std::move(snapshot));
}

void Sidecar::StopHealthChecks() {
  if (health_checks_ != nullptr) health_checks_->Stop();
}

AdminServer::Readiness Sidecar::Readiness() {
  return ReadinessOf(*current(), draining_);
}

void Sidecar::RefreshGauges() {
  const std::shared_ptr<const Snapshot> snapshot = current();
  // An ejection whose time is up ends here too, not only when a call picks
  // an endpoint (a cluster without traffic must not show it ejected forever).
  const absl::Time now = MonotonicClock::Get().Now();
  for (const auto& cluster : snapshot->cluster_list) {
    cluster->EndDueEjections(now);
  }
  bulwark::RefreshGauges(*snapshot);
}

std::string Sidecar::RoutesJson() {
  int64_t open = 0;
  for (auto& worker : workers_) open += worker->OpenStreamsApprox();
  return bulwark::RoutesJson(*current(), MonotonicClock::Get().Now(), open);
}

}  // namespace bulwark
