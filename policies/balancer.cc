#include "policies/balancer.h"

#include <algorithm>
#include <cmath>

namespace bulwark {
namespace {

// Takes calls: healthy and not ejected.
bool IsHealthy(const EndpointLoad& e) {
  return e.healthy.load(std::memory_order_relaxed) &&
         !e.ejected.load(std::memory_order_relaxed);
}
uint32_t InFlight(const EndpointLoad& e) {
  return e.in_flight.load(std::memory_order_relaxed);
}

// splitmix64's finalizer: consecutive pick numbers become independent-looking
// draws.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Every healthy endpoint of the lowest cost is a tie; `pick_number` chooses
// among them in turn. The loads may move between the two passes; then the
// first pass's own choice (healthy and cheapest when read) is returned.
template <typename CostFn>
std::optional<size_t> ScanCheapest(
    absl::Span<const EndpointLoad* const> endpoints, uint64_t pick_number,
    const CostFn& cost_of) {
  using Cost = decltype(cost_of(*endpoints[0]));
  std::optional<size_t> first_least;
  Cost least{};
  size_t ties = 0;
  for (size_t i = 0; i < endpoints.size(); ++i) {
    if (!IsHealthy(*endpoints[i])) continue;
    const Cost cost = cost_of(*endpoints[i]);
    if (!first_least.has_value() || cost < least) {
      first_least = i;
      least = cost;
      ties = 1;
    } else if (cost == least) {
      ++ties;
    }
  }
  if (ties <= 1) return first_least;
  uint64_t target = pick_number % ties;
  for (size_t i = 0; i < endpoints.size(); ++i) {
    if (!IsHealthy(*endpoints[i]) || cost_of(*endpoints[i]) != least) continue;
    if (target-- == 0) return i;
  }
  return first_least;
}

// Up to kExactScanMaxEndpoints the exact scan; beyond, the cheaper of two
// distinct endpoints drawn uniformly (i, then j among the n - 1 others),
// the full scan when neither is healthy.
template <typename CostFn>
std::optional<size_t> PickCheapest(
    absl::Span<const EndpointLoad* const> endpoints, uint64_t pick_number,
    const CostFn& cost_of) {
  const size_t n = endpoints.size();
  if (n <= Balancer::kExactScanMaxEndpoints) {
    return ScanCheapest(endpoints, pick_number, cost_of);
  }
  const uint64_t draw = Mix(pick_number);
  const size_t i = static_cast<size_t>(draw % n);
  const size_t j = (i + 1 + static_cast<size_t>((draw >> 32) % (n - 1))) % n;
  const bool i_healthy = IsHealthy(*endpoints[i]);
  const bool j_healthy = IsHealthy(*endpoints[j]);
  if (i_healthy && j_healthy) {
    return cost_of(*endpoints[j]) < cost_of(*endpoints[i]) ? j : i;
  }
  if (i_healthy) return i;
  if (j_healthy) return j;
  return ScanCheapest(endpoints, pick_number, cost_of);
}

// exp(-elapsed / kPeakEwmaDecay), 1 for no (or negative: clocks of two
// workers read out of order) elapsed time.
double DecayFactor(int64_t elapsed_ns) {
  if (elapsed_ns <= 0) return 1.0;
  return std::exp(-static_cast<double>(elapsed_ns) /
                  absl::ToDoubleNanoseconds(kPeakEwmaDecay));
}

// The estimate (ns) decayed to `now_ns`; -1 if never sampled.
double DecayedNs(const EndpointLoad& load, int64_t now_ns) {
  const int64_t stamp = load.latency_stamp_ns.load(std::memory_order_relaxed);
  if (stamp == EndpointLoad::kNeverSampled) return -1;
  const double value =
      static_cast<double>(load.latency_ns.load(std::memory_order_relaxed));
  return value * DecayFactor(now_ns - stamp);
}

void Store(EndpointLoad& load, double value_ns, int64_t now_ns) {
  load.latency_ns.store(std::llround(std::max(value_ns, 0.0)),
                        std::memory_order_relaxed);
  load.latency_stamp_ns.store(now_ns, std::memory_order_relaxed);
}

// An unsampled endpoint's cost per call in flight: above any sampled cost
// (31 years of latency), and a multiple so that unsampled endpoints still
// order by their calls in flight.
constexpr double kUnsampledBusyCost = 1e18;

}  // namespace

std::optional<size_t> PickRoundRobin(
    absl::Span<const EndpointLoad* const> endpoints, uint64_t pick_number) {
  size_t healthy = 0;
  for (const EndpointLoad* e : endpoints) healthy += IsHealthy(*e) ? 1 : 0;
  if (healthy == 0) return std::nullopt;
  uint64_t target = pick_number % healthy;
  std::optional<size_t> last_healthy;
  for (size_t i = 0; i < endpoints.size(); ++i) {
    if (!IsHealthy(*endpoints[i])) continue;
    if (target-- == 0) return i;
    last_healthy = i;
  }
  // Some endpoint turned unhealthy between the passes: any one seen healthy
  // just now will do.
  return last_healthy;
}

std::optional<size_t> PickLeastRequest(
    absl::Span<const EndpointLoad* const> endpoints, uint64_t pick_number) {
  return PickCheapest(endpoints, pick_number,
                      [](const EndpointLoad& e) { return InFlight(e); });
}

std::optional<absl::Duration> LatencyEstimate(const EndpointLoad& load,
                                              absl::Time now) {
  const double ns = DecayedNs(load, absl::ToUnixNanos(now));
  if (ns < 0) return std::nullopt;
  return absl::Nanoseconds(static_cast<int64_t>(ns));
}

void ObserveLatency(EndpointLoad& load, absl::Duration latency,
                    absl::Time now) {
  const int64_t now_ns = absl::ToUnixNanos(now);
  const double sample = static_cast<double>(
      std::max<int64_t>(absl::ToInt64Nanoseconds(latency), 0));
  const double estimate = DecayedNs(load, now_ns);
  if (estimate < 0 || sample >= estimate) {
    Store(load, sample, now_ns);
    return;
  }
  Store(load, estimate + (sample - estimate) * kPeakEwmaDownWeight, now_ns);
}

void ObserveLatencyAtLeast(EndpointLoad& load, absl::Duration latency,
                           absl::Time now) {
  const int64_t now_ns = absl::ToUnixNanos(now);
  const double sample = static_cast<double>(
      std::max<int64_t>(absl::ToInt64Nanoseconds(latency), 0));
  Store(load, std::max(sample, DecayedNs(load, now_ns)), now_ns);
}

double PeakEwmaCost(const EndpointLoad& load, absl::Time now) {
  const double in_flight = static_cast<double>(InFlight(load));
  const double estimate = DecayedNs(load, absl::ToUnixNanos(now));
  if (estimate < 0) {
    return kUnsampledBusyCost * in_flight;
  }
  return estimate * (in_flight + 1);
}

std::optional<size_t> PickPeakEwma(
    absl::Span<const EndpointLoad* const> endpoints, uint64_t pick_number,
    absl::Time now) {
  return PickCheapest(endpoints, pick_number, [now](const EndpointLoad& e) {
    return PeakEwmaCost(e, now);
  });
}

std::optional<size_t> Balancer::Pick(
    absl::Span<const EndpointLoad* const> endpoints, absl::Time now) {
  // Relaxed: the counter only spreads picks; no other memory is published
  // through it.
  const uint64_t pick_number = picks_.fetch_add(1, std::memory_order_relaxed);
  switch (policy_) {
    case Policy::kRoundRobin:
      return PickRoundRobin(endpoints, pick_number);
    case Policy::kLeastRequest:
      return PickLeastRequest(endpoints, pick_number);
    case Policy::kPeakEwma:
      return PickPeakEwma(endpoints, pick_number, now);
  }
  return std::nullopt;
}

}  // namespace bulwark
