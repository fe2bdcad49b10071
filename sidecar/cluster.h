// Cluster: one upstream service's endpoints, their health and load, and the
// balancer that picks among the healthy ones. Endpoint objects are shared
// between configuration snapshots (an endpoint whose address is unchanged keeps
// its health, in-flight count and latency estimate across a reload), and so is
// a cluster's live state.
//
// An endpoint of the configuration given as a DNS name becomes one Endpoint per
// address the name resolves to (sidecar/dns.h); an IP literal is one Endpoint.
// Endpoints are identified, and their connections keyed, by resolved address.
//
// Thread-safety: Pick and the accessors are called from every worker at once:
// health and load are atomics (EndpointLoad), the balancer is lock-free.
// Building a cluster may resolve DNS names (blocking, on a cache miss): done
// at start-up, reload and DNS refresh on the main thread, never on a worker.
// Cost of Pick: one atomic increment plus a scan of the endpoints (round robin
// skips unhealthy ones; PEAK_EWMA adds an exp() per endpoint read).
#ifndef BULWARK_SIDECAR_CLUSTER_H_
#define BULWARK_SIDECAR_CLUSTER_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "bulwark/config/v1/config.pb.h"
#include "policies/balancer.h"
#include "policies/health_state.h"
#include "policies/outlier_state.h"
#include "sidecar/dns.h"
#include "sidecar/host_port.h"
#include "sidecar/metrics.h"
#include "sidecar/net/stream_handler.h"

namespace bulwark {

struct Endpoint {
  HostPort address;               // as configured (a DNS name or an IP literal)
  std::string resolved;           // "10.0.0.4:50051": identity and metric label
  net::UpstreamAddress upstream;  // socket address, connection key
  EndpointLoad load;              // healthy flag and calls in flight (atomics)
  std::shared_ptr<EndpointMetrics> metrics;
  // Threshold state of the heartbeat (present when the cluster has a
  // health_check). Shared with the endpoint's successor when a reload must
  // rebuild the endpoint (new TLS files).
  std::shared_ptr<HealthState> health;
  // Outlier detection's record of live calls (present when the cluster has
  // outlier_detection); shared with a successor as `health` is.
  std::shared_ptr<OutlierState> outlier;
};

// Outlier ejection (SPEC section 9) over the endpoints of one cluster: the
// decisions that need every endpoint (min_available). Ejections are rare, so
// they are taken under one process-wide mutex; that keeps two workers from
// ejecting two endpoints at once below min_available.
//
// A live call's verdict (failure or success, by OutcomeRule) for `endpoint`;
// ejects it when its record asks and min_available allows.
void RecordLiveOutcome(const std::vector<std::shared_ptr<Endpoint>>& endpoints,
                       Endpoint& endpoint, bool failure, absl::Time now);
// A Watch stream's word for `endpoint`: NOT_SERVING ejects at once (if
// min_available allows), SERVING ends that ejection.
void RecordWatchStatus(const std::vector<std::shared_ptr<Endpoint>>& endpoints,
                       Endpoint& endpoint, bool serving, absl::Time now);

class Cluster {
 public:
  // Builds the endpoints from every address of each configured endpoint
  // (`dns` answers names; an address reached through two entries is one
  // endpoint) and, with `tls` configured and `reread_tls`, reads the TLS
  // files (else keeps `previous`'s context). Endpoints of `previous` with the
  // same address are reused with their state; when the TLS context is new they
  // are rebuilt (so rotated certificates are used) but keep their health.
  static absl::StatusOr<std::shared_ptr<Cluster>> Create(
      const config::v1::Cluster& config, Metrics& metrics, DnsCache& dns,
      const Cluster* previous, bool reread_tls = true);

  const std::string& name() const { return config_.name(); }
  const config::v1::Cluster& config() const { return config_; }
  const std::vector<std::shared_ptr<Endpoint>>& endpoints() const {
    return endpoints_;
  }
  ClusterMetrics* metrics() const { return metrics_; }

  // A healthy, not ejected endpoint by the configured balancing, or nullptr if
  // none is healthy. Ejections that are due end here (`now`: the monotonic
  // clock; read only with outlier detection or UsesLatency()). When ejections
  // (and health) leave none, a healthy ejected endpoint is used while
  // min_available > 0: ejection never leaves fewer than min_available
  // endpoints.
  Endpoint* Pick(absl::Time now);
  // As Pick, but an endpoint not in `tried` when there is one (a retry goes
  // to another endpoint).
  Endpoint* PickOther(absl::Time now, absl::Span<Endpoint* const> tried);
  bool AnyHealthy() const;
  // Ends the ejections whose time is up (Pick does it too).
  void EndDueEjections(absl::Time now);
  bool has_outlier_detection() const { return outlier_detection_; }
  // Whether the balancing (PEAK_EWMA) reads the clock at a pick and wants
  // each call's latency (UpstreamStage::RecordOutcome).
  bool UsesLatency() const { return balancer_->UsesLatency(); }

 private:
  Cluster(const config::v1::Cluster& config, ClusterMetrics* metrics);

  config::v1::Cluster config_;
  ClusterMetrics* metrics_;
  std::shared_ptr<const net::TlsContext> tls_;  // null: plaintext
  std::vector<std::shared_ptr<Endpoint>> endpoints_;
  std::vector<const EndpointLoad*> loads_;
  std::unique_ptr<Balancer> balancer_;
  bool outlier_detection_ = false;
  std::atomic<uint64_t> other_picks_{0};
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_CLUSTER_H_
