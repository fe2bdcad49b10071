#include "sidecar/health_checks.h"

#include <unistd.h>

#include <random>

namespace bulwark {

HealthChecks::HealthChecks(net::Worker& worker)
    : worker_(worker), transport_(worker) {}

void HealthChecks::Follow(std::shared_ptr<const Snapshot> snapshot) {
  // Jitter exists to spread the probes of many sidecars: seed it per process
  // and start.
  const uint64_t seed = (uint64_t{std::random_device{}()} << 32) ^
                        static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())) ^
                        static_cast<uint64_t>(getpid());
  worker_.Post([this, seed, snapshot = std::move(snapshot)] {
    std::vector<Running> previous;
    previous.swap(running_);
    uint64_t n = 0;
    for (const auto& cluster : snapshot->cluster_list) {
      if (!cluster->config().has_health_check()) continue;
      Running check{
          .cluster = cluster->name(),
          .config = cluster->config().health_check().SerializeAsString()};
      for (const auto& endpoint : cluster->endpoints())
        check.endpoints.push_back(endpoint.get());
      // Unchanged cluster (e.g. another cluster's DNS answer changed): its
      // probes carry on undisturbed.
      for (Running& old : previous) {
        if (old.checker != nullptr && old.cluster == check.cluster &&
            old.config == check.config && old.endpoints == check.endpoints) {
          check.checker = std::move(old.checker);
          break;
        }
      }
      if (check.checker == nullptr) {
        check.checker = std::make_unique<HealthChecker>(
            cluster->name(), cluster->config().health_check(),
            cluster->endpoints(), worker_.timers(), worker_.clock(), transport_,
            seed + n++);
        check.checker->Start();
      }
      running_.push_back(std::move(check));
    }
    // `previous` now holds the checkers no longer wanted: destroying them
    // stops them.
  });
}

void HealthChecks::Stop() {
  worker_.Post([this] { running_.clear(); });
}

}  // namespace bulwark
