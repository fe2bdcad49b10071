// UpstreamStage: the last step of the chain (SPEC section 3): pick a healthy
// endpoint of the route's cluster by its balancing, or answer
// `no_healthy_endpoint`.
//
// Thread-safety: const after construction; Cluster::Pick is thread-safe.
// Cost: Cluster::Pick.
#ifndef BULWARK_SIDECAR_CHAIN_UPSTREAM_STAGE_H_
#define BULWARK_SIDECAR_CHAIN_UPSTREAM_STAGE_H_

#include <memory>

#include "sidecar/chain/verdict.h"
#include "sidecar/cluster.h"

namespace bulwark::chain {

class UpstreamStage {
 public:
  explicit UpstreamStage(std::shared_ptr<Cluster> cluster)
      : cluster_(std::move(cluster)) {}

  // A healthy endpoint, or nullptr (then answer NoHealthyEndpoint()).
  Endpoint* Pick() const { return cluster_->Pick(); }
  Rejection NoHealthyEndpoint() const;
  Cluster& cluster() const { return *cluster_; }

 private:
  std::shared_ptr<Cluster> cluster_;
};

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_UPSTREAM_STAGE_H_
