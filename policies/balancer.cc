#include "policies/balancer.h"

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

// Every healthy endpoint with the fewest in flight is a tie; `pick_number`
// chooses among them in turn. The loads may move between the two passes; then
// the first pass's own choice (healthy and least loaded when read) is returned.
std::optional<size_t> ScanLeastRequest(
    absl::Span<const EndpointLoad* const> endpoints, uint64_t pick_number) {
  std::optional<size_t> first_least;
  uint32_t least = 0;
  size_t ties = 0;
  for (size_t i = 0; i < endpoints.size(); ++i) {
    if (!IsHealthy(*endpoints[i])) continue;
    const uint32_t load = InFlight(*endpoints[i]);
    if (!first_least.has_value() || load < least) {
      first_least = i;
      least = load;
      ties = 1;
    } else if (load == least) {
      ++ties;
    }
  }
  if (ties <= 1) return first_least;
  uint64_t target = pick_number % ties;
  for (size_t i = 0; i < endpoints.size(); ++i) {
    if (!IsHealthy(*endpoints[i]) || InFlight(*endpoints[i]) != least) continue;
    if (target-- == 0) return i;
  }
  return first_least;
}

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
  const size_t n = endpoints.size();
  if (n <= Balancer::kExactScanMaxEndpoints) {
    return ScanLeastRequest(endpoints, pick_number);
  }
  // Two distinct endpoints drawn uniformly: i, then j among the n - 1 others.
  const uint64_t draw = Mix(pick_number);
  const size_t i = static_cast<size_t>(draw % n);
  const size_t j = (i + 1 + static_cast<size_t>((draw >> 32) % (n - 1))) % n;
  const bool i_healthy = IsHealthy(*endpoints[i]);
  const bool j_healthy = IsHealthy(*endpoints[j]);
  if (i_healthy && j_healthy) {
    return InFlight(*endpoints[j]) < InFlight(*endpoints[i]) ? j : i;
  }
  if (i_healthy) return i;
  if (j_healthy) return j;
  return ScanLeastRequest(endpoints, pick_number);
}

std::optional<size_t> Balancer::Pick(
    absl::Span<const EndpointLoad* const> endpoints) {
  // Relaxed: the counter only spreads picks; no other memory is published
  // through it.
  const uint64_t pick_number = picks_.fetch_add(1, std::memory_order_relaxed);
  switch (policy_) {
    case Policy::kRoundRobin:
      return PickRoundRobin(endpoints, pick_number);
    case Policy::kLeastRequest:
      return PickLeastRequest(endpoints, pick_number);
  }
  return std::nullopt;
}

}  // namespace bulwark
