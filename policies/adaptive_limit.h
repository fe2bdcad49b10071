// AdaptiveLimit: a concurrency limit that follows the upstream (SPEC section
// 7), moved by the latencies and outcomes of the unary calls it admitted.
// Pure: no clock of its own, no I/O, not thread-safe (ConcurrencyLimiter calls
// it under its lock).
//
// The algorithm is a latency gradient, like Netflix concurrency-limits'
// Gradient2 and Envoy's adaptive concurrency filter, built to avoid their
// known failure modes:
// - No probe windows. Envoy measures its baseline (min RTT) by dropping the
//   limit to a floor for a moment every interval, which rejects bursts of
//   calls even at a load the upstream serves easily. Here the baseline is
//   learned from live samples only: a window's mean latency lowers it at once
//   when lower, and raises it only from windows in which the calls in flight
//   stayed well under the limit (those latencies are the upstream's own, not
//   queueing the limit let in).
// - No ratchet under load. A baseline that follows every sample drifts up while
//   the upstream is overloaded (Gradient2's long-term average does), which
//   lets the limit, and the latency, climb with it. Here samples taken at the
//   limit never raise the baseline.
// - Recovery when the upstream's own latency rises for good (a slower
//   dependency, a bigger payload): were the baseline kept, the limit would sit
//   at the floor forever. After kRebaselineWindows consecutive windows at the
//   floor with latency still past the tolerance, the baseline is re-learned
//   from the current latency.
//
// Each window (at least kMinWindowSamples samples and at least one baseline
// latency long) moves the limit once:
//   gradient  = clamp(kTolerance x baseline / window mean, 0.5, 1)
//   target    = limit x gradient + headroom (log2 of the limit, at least 1),
//               but no growth past twice the calls in flight seen in the
//               window (an idle limit does not grow without bound);
//   overload  : if more than kOverloadShare of the window's calls ended in
//               overload (deadline, RESOURCE_EXHAUSTED, UNAVAILABLE), target
//               = limit x kOverloadBackoff instead;
//   limit     = limit + kSmoothing x (target - limit), within
//               [min_limit, max_limit].
// Against an upstream that serves N calls at once and queues the rest, the
// limit settles near kTolerance x N plus the headroom: the upstream stays
// busy (goodput at capacity) and admitted calls wait little (latency about
// kTolerance x its unloaded latency).
#ifndef BULWARK_POLICIES_ADAPTIVE_LIMIT_H_
#define BULWARK_POLICIES_ADAPTIVE_LIMIT_H_

#include <cstdint>

#include "absl/time/time.h"

namespace bulwark {

class AdaptiveLimit {
 public:
  struct Options {
    uint32_t min_limit = 4;
    uint32_t max_limit = 256;
    uint32_t initial_limit = 20;
  };
  // Latency allowed over the baseline before the limit shrinks.
  static constexpr double kTolerance = 1.15;
  static constexpr double kSmoothing = 0.2;
  static constexpr double kOverloadShare = 0.1;
  static constexpr double kOverloadBackoff = 0.8;
  static constexpr int kMinWindowSamples = 16;
  static constexpr int kRebaselineWindows = 20;

  explicit AdaptiveLimit(const Options& options);

  // One admitted unary call ended: it held its slot for `latency`; there were
  // `in_flight` calls in flight (itself included) when it was admitted;
  // `overloaded` if it ended in overload. Returns whether the limit changed.
  bool OnSample(absl::Time now, absl::Duration latency, uint32_t in_flight,
                bool overloaded);

  uint32_t limit() const { return static_cast<uint32_t>(limit_ + 0.5); }
  // The mean latency of recent samples (ZeroDuration before any).
  absl::Duration mean_latency() const { return mean_latency_; }
  // The learned no-load latency (ZeroDuration before any sample).
  absl::Duration baseline() const { return baseline_; }

 private:
  void CloseWindow(absl::Time now);

  const Options options_;
  double limit_;
  absl::Duration baseline_ = absl::ZeroDuration();
  absl::Duration mean_latency_ = absl::ZeroDuration();
  int windows_at_floor_ = 0;
  // The open window.
  absl::Time window_start_ = absl::InfinitePast();
  int samples_ = 0;
  int overloaded_ = 0;
  absl::Duration latency_sum_ = absl::ZeroDuration();
  uint32_t max_in_flight_seen_ = 0;
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_ADAPTIVE_LIMIT_H_
