#include "sidecar/cluster.h"

#include "absl/base/const_init.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "sidecar/config_loader.h"
#include "sidecar/log.h"
#include "sidecar/net/tls.h"

namespace bulwark {

Cluster::Cluster(const config::v1::Cluster& config, ClusterMetrics* metrics)
    : config_(config), metrics_(metrics) {}

absl::StatusOr<std::shared_ptr<Cluster>> Cluster::Create(
    const config::v1::Cluster& config, Metrics& metrics, DnsCache& dns,
    const Cluster* previous, bool reread_tls) {
  std::shared_ptr<Cluster> cluster(
      new Cluster(config, metrics.ForCluster(config.name())));
  const bool checked = config.has_health_check();
  cluster->outlier_detection_ = config.has_outlier_detection();
  // New outlier settings need a new OutlierState (it keeps them from
  // construction); so does a predecessor without one.
  const bool same_outlier =
      previous != nullptr &&
      previous->config_.has_outlier_detection() ==
          config.has_outlier_detection() &&
      previous->config_.outlier_detection().SerializeAsString() ==
          config.outlier_detection().SerializeAsString();
  if (config.has_tls()) {
    if (!reread_tls && previous != nullptr && previous->tls_ != nullptr) {
      cluster->tls_ = previous->tls_;
    } else {
      auto ctx =
          net::TlsContext::Client({.ca_file = config.tls().ca_file(),
                                   .cert_file = config.tls().cert_file(),
                                   .key_file = config.tls().key_file(),
                                   .server_name = config.tls().server_name()});
      if (!ctx.ok()) return ctx.status();
      cluster->tls_ = *std::move(ctx);
    }
  }
  const std::shared_ptr<const net::TlsContext>& tls = cluster->tls_;
  // New thresholds need a new HealthState (it keeps them from construction).
  const bool same_thresholds =
      previous != nullptr &&
      previous->config_.health_check().unhealthy_threshold() ==
          config.health_check().unhealthy_threshold() &&
      previous->config_.health_check().healthy_threshold() ==
          config.health_check().healthy_threshold();
  absl::flat_hash_set<std::string> seen;
  for (const std::string& text : config.endpoints()) {
    auto address = ParseHostPort(text);
    if (!address.ok()) return address.status();
    auto resolved = dns.Get(*address);
    if (!resolved.ok()) return resolved.status();
    for (const ResolvedAddress& r : *resolved) {
      // Two entries reaching one address (a name and its IP) are one endpoint.
      if (!seen.insert(r.text).second) continue;
      std::shared_ptr<Endpoint> endpoint;
      std::shared_ptr<Endpoint> predecessor;
      if (previous != nullptr) {
        for (const auto& old : previous->endpoints_) {
          // Same entry, same address, same health-check presence: its state.
          if (old->address == *address && old->resolved == r.text &&
              (old->health != nullptr) == checked) {
            predecessor = old;
          }
        }
      }
      if (predecessor != nullptr && predecessor->upstream.tls == tls &&
          same_thresholds && same_outlier) {
        endpoint = predecessor;
      }
      if (endpoint == nullptr) {
        endpoint = std::make_shared<Endpoint>();
        endpoint->address = *address;
        endpoint->resolved = r.text;
        endpoint->upstream.addr = r.addr;
        endpoint->upstream.addr_len = r.addr_len;
        endpoint->upstream.key = r.text;
        endpoint->upstream.authority = address->ToString();
        endpoint->upstream.host = address->host;
        if (tls != nullptr) {
          endpoint->upstream.tls = tls;
          // A connection per TLS context: new certificates mean new
          // connections.
          endpoint->upstream.key =
              absl::StrCat(endpoint->upstream.key, "|tls#", tls->id());
        }
        endpoint->metrics = cluster->metrics_->ForEndpoint(r.text);
        if (predecessor != nullptr && same_thresholds) {
          endpoint->health = predecessor->health;
          endpoint->load.healthy.store(predecessor->load.healthy.load());
        } else if (checked) {
          // Fresh thresholds start a fresh verdict (healthy until probes say
          // otherwise, as for a new endpoint): the next probes decide within a
          // threshold's worth of intervals.
          const auto& hc = config.health_check();
          endpoint->health = std::make_shared<HealthState>(HealthState::Options{
              .unhealthy_threshold = hc.unhealthy_threshold(),
              .healthy_threshold = hc.healthy_threshold()});
        }
        endpoint->metrics->SetHealthy(endpoint->load.healthy.load());
        if (predecessor != nullptr && same_outlier &&
            predecessor->outlier != nullptr) {
          endpoint->outlier = predecessor->outlier;
          endpoint->load.ejected.store(predecessor->load.ejected.load());
          endpoint->metrics->SetEjected(endpoint->load.ejected.load());
        } else if (config.has_outlier_detection()) {
          const config::v1::OutlierDetection& od = config.outlier_detection();
          endpoint->outlier =
              std::make_shared<OutlierState>(OutlierState::Options{
                  .consecutive_failures = od.consecutive_failures(),
                  .failure_rate = od.failure_rate(),
                  .minimum_requests = od.minimum_requests(),
                  .window = ToAbslDuration(od.window()),
                  .base_ejection_time = ToAbslDuration(od.base_ejection_time()),
                  .max_ejection_time = ToAbslDuration(od.max_ejection_time()),
                  .min_available = od.min_available()});
          endpoint->metrics->SetEjected(false);
        }
      }
      cluster->loads_.push_back(&endpoint->load);
      cluster->endpoints_.push_back(std::move(endpoint));
    }
  }
  Balancer::Policy policy = Balancer::Policy::kRoundRobin;
  switch (config.load_balancing()) {
    case config::v1::Cluster::LEAST_REQUEST:
      policy = Balancer::Policy::kLeastRequest;
      break;
    case config::v1::Cluster::PEAK_EWMA:
      policy = Balancer::Policy::kPeakEwma;
      break;
    default:
      break;
  }
  cluster->balancer_ = std::make_unique<Balancer>(policy);
  return cluster;
}

namespace {

// Ejection decisions, process-wide (they are rare): see cluster.h.
ABSL_CONST_INIT absl::Mutex ejection_mu(absl::kConstInit);

bool TakesCalls(const Endpoint& e) {
  return e.load.healthy.load(std::memory_order_relaxed) &&
         !e.load.ejected.load(std::memory_order_relaxed);
}

// Ejects `endpoint` if that leaves at least min_available endpoints taking
// calls. `until_serving`: a Watch NOT_SERVING (no end time).
void TryEject(const std::vector<std::shared_ptr<Endpoint>>& endpoints,
              Endpoint& endpoint, absl::Time now, bool until_serving)
    ABSL_LOCKS_EXCLUDED(ejection_mu) {
  OutlierState& outlier = *endpoint.outlier;
  absl::Time until = absl::InfiniteFuture();
  {
    absl::MutexLock lock(&ejection_mu);
    size_t available = 0;
    for (const auto& e : endpoints) available += TakesCalls(*e) ? 1 : 0;
    const bool counted = TakesCalls(endpoint);
    if (counted && available < outlier.options().min_available + 1) return;
    if (until_serving) {
      outlier.EjectUntilServing();
    } else {
      until = outlier.Eject(now);
    }
    endpoint.load.ejected.store(true, std::memory_order_relaxed);
  }
  if (endpoint.metrics != nullptr) {
    endpoint.metrics->SetEjected(true);
    endpoint.metrics->Ejections().Increment();
  }
  if (until_serving) {
    Log(LogLevel::kWarning,
        "outlier detection: endpoint %s ejected until its Watch stream "
        "reports SERVING",
        endpoint.resolved);
  } else {
    Log(LogLevel::kWarning,
        "outlier detection: endpoint %s ejected for %s (ejection %d)",
        endpoint.resolved, absl::FormatDuration(until - now),
        outlier.GetSnapshot(now).ejections);
  }
}

void EndEjection(Endpoint& endpoint) {
  endpoint.load.ejected.store(false, std::memory_order_relaxed);
  if (endpoint.metrics != nullptr) endpoint.metrics->SetEjected(false);
  Log(LogLevel::kInfo, "outlier detection: endpoint %s takes calls again",
      endpoint.resolved);
}

}  // namespace

void RecordLiveOutcome(const std::vector<std::shared_ptr<Endpoint>>& endpoints,
                       Endpoint& endpoint, bool failure, absl::Time now) {
  if (endpoint.outlier == nullptr) return;
  if (endpoint.outlier->Record(failure, now) == OutlierState::Verdict::kEject) {
    TryEject(endpoints, endpoint, now, /*until_serving=*/false);
  }
}

void RecordWatchStatus(const std::vector<std::shared_ptr<Endpoint>>& endpoints,
                       Endpoint& endpoint, bool serving, absl::Time now) {
  if (endpoint.outlier == nullptr) return;
  if (!serving) {
    if (!endpoint.outlier->GetSnapshot(now).until_serving) {
      TryEject(endpoints, endpoint, now, /*until_serving=*/true);
    }
    return;
  }
  if (!endpoint.outlier->GetSnapshot(now).until_serving) return;
  endpoint.outlier->Serving();
  if (!endpoint.outlier->Ejected(now)) EndEjection(endpoint);
}

void Cluster::EndDueEjections(absl::Time now) {
  if (!outlier_detection_) return;
  for (const auto& e : endpoints_) {
    if (e->load.ejected.load(std::memory_order_relaxed) &&
        e->outlier != nullptr && e->outlier->EndIfDue(now) &&
        !e->outlier->Ejected(now)) {
      EndEjection(*e);
    }
  }
}

Endpoint* Cluster::Pick(absl::Time now) {
  EndDueEjections(now);
  const std::optional<size_t> index = balancer_->Pick(loads_, now);
  if (index.has_value()) return endpoints_[*index].get();
  if (!outlier_detection_ || config_.outlier_detection().min_available() == 0) {
    return nullptr;
  }
  // Nothing takes calls, but ejection must not leave fewer than
  // min_available: a healthy ejected endpoint serves.
  const size_t n = endpoints_.size();
  const uint64_t start = other_picks_.fetch_add(1, std::memory_order_relaxed);
  for (size_t i = 0; i < n; ++i) {
    Endpoint* e = endpoints_[(start + i) % n].get();
    if (e->load.healthy.load(std::memory_order_relaxed)) return e;
  }
  return nullptr;
}

Endpoint* Cluster::PickOther(absl::Time now,
                             absl::Span<Endpoint* const> tried) {
  Endpoint* picked = Pick(now);
  const auto was_tried = [&](const Endpoint* e) {
    for (const Endpoint* t : tried) {
      if (t == e) return true;
    }
    return false;
  };
  if (picked == nullptr || !was_tried(picked)) return picked;
  const size_t n = endpoints_.size();
  const uint64_t start = other_picks_.fetch_add(1, std::memory_order_relaxed);
  for (size_t i = 0; i < n; ++i) {
    Endpoint* e = endpoints_[(start + i) % n].get();
    if (TakesCalls(*e) && !was_tried(e)) return e;
  }
  return picked;  // every endpoint taking calls was tried: the same again
}

bool Cluster::AnyHealthy() const {
  for (const auto& endpoint : endpoints_) {
    if (endpoint->load.healthy.load(std::memory_order_relaxed)) return true;
  }
  return false;
}

}  // namespace bulwark
