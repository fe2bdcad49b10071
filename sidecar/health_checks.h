// HealthChecks: the health-check orchestration of the process. The checkers
// run on one worker over its upstream connections; Follow makes them match a
// snapshot (clusters whose endpoints and health_check are unchanged keep
// their checker and its probe state; others are stopped or started), Stop
// ends them all.
//
// Thread-safety: Follow and Stop from any thread (they post to the worker);
// the checkers are touched only on the worker's thread. Lifetime: Stop, then
// let the posted task run, before destroying this.
#ifndef BULWARK_SIDECAR_HEALTH_CHECKS_H_
#define BULWARK_SIDECAR_HEALTH_CHECKS_H_

#include <memory>
#include <string>
#include <vector>

#include "sidecar/health_checker.h"
#include "sidecar/net/worker.h"
#include "sidecar/snapshot.h"

namespace bulwark {

class HealthChecks {
 public:
  explicit HealthChecks(net::Worker& worker);

  void Follow(std::shared_ptr<const Snapshot> snapshot);
  // Posted before the worker's ForceCloseAndStop, whose task then runs after
  // it (posts run in order).
  void Stop();

 private:
  struct Running {
    std::unique_ptr<HealthChecker> checker;
    std::string cluster;
    std::string config;                // the health_check block, serialized
    std::vector<Endpoint*> endpoints;  // what it probes (kept alive by it)
  };

  net::Worker& worker_;
  UpstreamHealthProbeTransport transport_;
  std::vector<Running> running_;  // worker thread only
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_HEALTH_CHECKS_H_
