#include "sidecar/cluster.h"

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "sidecar/config_loader.h"
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
          same_thresholds) {
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
      }
      cluster->loads_.push_back(&endpoint->load);
      cluster->endpoints_.push_back(std::move(endpoint));
    }
  }
  cluster->balancer_ = std::make_unique<Balancer>(
      config.load_balancing() == config::v1::Cluster::LEAST_REQUEST
          ? Balancer::Policy::kLeastRequest
          : Balancer::Policy::kRoundRobin);
  return cluster;
}

Endpoint* Cluster::Pick() {
  const std::optional<size_t> index = balancer_->Pick(loads_);
  return index.has_value() ? endpoints_[*index].get() : nullptr;
}

bool Cluster::AnyHealthy() const {
  for (const auto& endpoint : endpoints_) {
    if (endpoint->load.healthy.load(std::memory_order_relaxed)) return true;
  }
  return false;
}

}  // namespace bulwark
