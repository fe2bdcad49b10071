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
// kPeakEwma weighs each endpoint's calls in flight by how slow it has been
// lately (Finagle's and Linkerd's "peak EWMA"): cost = latency estimate x
// (calls in flight + 1), the cheapest healthy endpoint wins, with the same
// exact scan / two choices and tie rotation as kLeastRequest. The estimate
// (ObserveLatency) jumps at once to a latency above it and moves a tenth of
// the way toward one below it; between samples it decays toward zero with a
// kPeakEwmaDecay time constant, so an endpoint the balancer avoids is tried
// again once its estimate has fallen to the others' cost, and a sample then
// sets it right. An endpoint never sampled costs 0 with nothing in flight and
// more than any sampled endpoint with something in flight (one probe at a
// time until its first answer). Least request alone cannot see that an
// endpoint is slow while every endpoint holds about as many calls: with 3
// endpoints, one 10x slower still holds a third of the calls in flight and so
// (Little's law) answers about 1 call in 20, each ten times late.
//
// Thread-safety: thread-safe and lock-free; one Balancer is shared by every
// worker of a cluster. Its only state is an atomic pick counter. Endpoint loads
// are read with relaxed atomics: a pick sees a recent snapshot, which may be
// stale by a few calls, never wrong memory. A latency sample is two relaxed
// loads and stores: two samples racing on one endpoint may lose one, which
// only steers balancing. Cost: one atomic increment plus O(endpoints) relaxed
// loads (O(1) for least request and peak EWMA beyond kExactScanMaxEndpoints),
// for peak EWMA an exp() per endpoint read; no allocation.
#ifndef BULWARK_POLICIES_BALANCER_H_
#define BULWARK_POLICIES_BALANCER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>

#include "absl/time/time.h"
#include "absl/types/span.h"

namespace bulwark {

// The live load of one endpoint, owned by the sidecar's endpoint object: the
// health checker sets `healthy`, outlier detection sets `ejected`, the upstream
// path increments `in_flight` when it sends a call and decrements it when the
// call ends, and (peak EWMA only) records latencies. Relaxed ordering is
// enough for all: they only steer balancing. An endpoint takes calls while
// healthy and not ejected.
struct EndpointLoad {
  static constexpr int64_t kNeverSampled = std::numeric_limits<int64_t>::min();

  std::atomic<bool> healthy{true};
  std::atomic<bool> ejected{false};
  std::atomic<uint32_t> in_flight{0};
  // Peak EWMA: the latency estimate (ns) as of `latency_stamp_ns` (Unix ns),
  // kNeverSampled before the first sample.
  std::atomic<int64_t> latency_ns{0};
  std::atomic<int64_t> latency_stamp_ns{kNeverSampled};
};

// Peak EWMA's decay time constant: an estimate left alone falls to 1/e of
// itself in this time.
inline constexpr absl::Duration kPeakEwmaDecay = absl::Seconds(10);
// The share of the way a sample below the estimate moves it.
inline constexpr double kPeakEwmaDownWeight = 0.1;

// The latency estimate of `load` at `now` (decayed since its last sample), or
// std::nullopt if never sampled.
std::optional<absl::Duration> LatencyEstimate(const EndpointLoad& load,
                                              absl::Time now);
// Records one call's latency (its upstream time) as of `now`.
void ObserveLatency(EndpointLoad& load, absl::Duration latency, absl::Time now);
// Records that a call took at least `latency` (cancelled, failed or timed out
// before its answer): raises the estimate to it, never lowers it.
void ObserveLatencyAtLeast(EndpointLoad& load, absl::Duration latency,
                           absl::Time now);
// Peak EWMA's cost of sending `load` one more call at `now`.
double PeakEwmaCost(const EndpointLoad& load, absl::Time now);

// Pure choice functions: the same inputs give the same answer, so they are
// table-tested without a Balancer. `pick_number` is the running count of picks
// (rotation and random draws derive from it).
std::optional<size_t> PickRoundRobin(
    absl::Span<const EndpointLoad* const> endpoints, uint64_t pick_number);
std::optional<size_t> PickLeastRequest(
    absl::Span<const EndpointLoad* const> endpoints, uint64_t pick_number);
std::optional<size_t> PickPeakEwma(
    absl::Span<const EndpointLoad* const> endpoints, uint64_t pick_number,
    absl::Time now);

class Balancer {
 public:
  enum class Policy : uint8_t { kRoundRobin, kLeastRequest, kPeakEwma };

  // Least request and peak EWMA scan every endpoint up to this many, and draw
  // two beyond.
  static constexpr size_t kExactScanMaxEndpoints = 16;

  explicit Balancer(Policy policy) : policy_(policy) {}

  Balancer(const Balancer&) = delete;
  Balancer& operator=(const Balancer&) = delete;

  // The index into `endpoints` of the endpoint to use, or std::nullopt if none
  // is healthy. `now` is read by peak EWMA only.
  std::optional<size_t> Pick(absl::Span<const EndpointLoad* const> endpoints,
                             absl::Time now);

  Policy policy() const { return policy_; }
  // Whether picks read the clock and latencies should be recorded.
  bool UsesLatency() const { return policy_ == Policy::kPeakEwma; }

 private:
  const Policy policy_;
  // Shared by every worker and written on every pick: on its own cache line so
  // that the neighbouring fields' readers do not pay for its traffic.
  alignas(64) std::atomic<uint64_t> picks_{0};
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_BALANCER_H_
