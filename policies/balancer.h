// Balancer decides which endpoint of a cluster the next upstream call goes to,
// among the endpoints healthy (and not ejected) at that moment, or that none
// is (the no_healthy_endpoint rejection).
//
// kRoundRobin gives the healthy endpoints equal shares in turn, however the
// unhealthy ones are placed: it picks the (n mod k)-th of the k healthy
// endpoints. ("The first healthy one after the cursor" would instead hand the
// endpoint that follows a run of unhealthy ones the share of that whole run.)
//
// kLeastRequest picks the healthy endpoint with the fewest calls in flight,
// rotating among ties so that equally loaded endpoints share the calls. Up to
// kExactScanMaxEndpoints endpoints it scans them all; beyond, it compares two
// endpoints drawn at random ("power of two choices": near-optimal spread at
// O(1) per pick), falling back to the full scan when neither draw is healthy.
//
// Thread-safety: thread-safe and lock-free; one Balancer is shared by every
// worker of a cluster. Its only state is an atomic pick counter. Endpoint loads
// are read with relaxed atomics: a pick sees a recent snapshot, which may be
// stale by a few calls, never wrong memory. Cost: one atomic increment plus
// O(endpoints) relaxed loads (O(1) for least request beyond
// kExactScanMaxEndpoints); no allocation.
#ifndef BULWARK_POLICIES_BALANCER_H_
#define BULWARK_POLICIES_BALANCER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "absl/types/span.h"

namespace bulwark {

// The live load of one endpoint, owned by the sidecar's endpoint object: the
// health checker sets `healthy`, outlier detection sets `ejected`, the upstream
// path increments `in_flight` when it sends a call and decrements it when the
// call ends. Relaxed ordering is enough for all three: they only steer
// balancing. An endpoint takes calls while healthy and not ejected.
struct EndpointLoad {
  std::atomic<bool> healthy{true};
  std::atomic<bool> ejected{false};
  std::atomic<uint32_t> in_flight{0};
};

// Pure choice functions: the same inputs give the same answer, so they are
// table-tested without a Balancer. `pick_number` is the running count of picks
// (rotation and random draws derive from it).
std::optional<size_t> PickRoundRobin(
    absl::Span<const EndpointLoad* const> endpoints, uint64_t pick_number);
std::optional<size_t> PickLeastRequest(
    absl::Span<const EndpointLoad* const> endpoints, uint64_t pick_number);

class Balancer {
 public:
  enum class Policy : uint8_t { kRoundRobin, kLeastRequest };

  // Least request scans every endpoint up to this many, and draws two beyond.
  static constexpr size_t kExactScanMaxEndpoints = 16;

  explicit Balancer(Policy policy) : policy_(policy) {}

  Balancer(const Balancer&) = delete;
  Balancer& operator=(const Balancer&) = delete;

  // The index into `endpoints` of the endpoint to use, or std::nullopt if none
  // is healthy.
  std::optional<size_t> Pick(absl::Span<const EndpointLoad* const> endpoints);

  Policy policy() const { return policy_; }

 private:
  const Policy policy_;
  // Shared by every worker and written on every pick: on its own cache line so
  // that the neighbouring fields' readers do not pay for its traffic.
  alignas(64) std::atomic<uint64_t> picks_{0};
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_BALANCER_H_
