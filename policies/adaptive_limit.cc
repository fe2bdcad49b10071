#include "policies/adaptive_limit.h"

#include <algorithm>
#include <cmath>

namespace bulwark {
namespace {

// A window spans at least this long, and at least two baseline latencies, so
// that a limit change shows in the latencies before the next one.
constexpr absl::Duration kMinWindow = absl::Milliseconds(20);
// How far one window moves the baseline toward its mean: down (a lower
// latency seen) and up (only from windows well under the limit).
constexpr double kBaselineDown = 0.5;
constexpr double kBaselineUp = 0.1;

}  // namespace

AdaptiveLimit::AdaptiveLimit(const Options& options)
    : options_(options),
      limit_(std::clamp<double>(options.initial_limit, options.min_limit,
                                options.max_limit)) {}

bool AdaptiveLimit::OnSample(absl::Time now, absl::Duration latency,
                             uint32_t in_flight, bool overloaded) {
  if (samples_ == 0) window_start_ = now;
  ++samples_;
  max_in_flight_seen_ = std::max(max_in_flight_seen_, in_flight);
  if (overloaded) {
    // Its latency is the deadline's, not the upstream's: counted, not
    // averaged.
    ++overloaded_;
  } else {
    latency_sum_ += std::max(latency, absl::ZeroDuration());
  }
  if (samples_ < kMinWindowSamples ||
      now - window_start_ < std::max(kMinWindow, 2 * baseline_)) {
    return false;
  }
  const uint32_t before = limit();
  CloseWindow(now);
  return limit() != before;
}

void AdaptiveLimit::CloseWindow(absl::Time now) {
  const double limit = limit_;
  const int answered = samples_ - overloaded_;
  double target = limit;
  if (overloaded_ > kOverloadShare * samples_) {
    target = limit * kOverloadBackoff;
  } else if (answered > 0) {
    const absl::Duration mean = latency_sum_ / answered;
    mean_latency_ = mean;
    // Calls in flight well under the limit: their latency is the upstream's
    // own, not queueing this limit let in.
    const bool under_limit = max_in_flight_seen_ * 2 <= limit;
    if (baseline_ == absl::ZeroDuration()) {
      baseline_ = mean;
    } else if (mean < baseline_) {
      baseline_ += (mean - baseline_) * kBaselineDown;
    } else if (under_limit) {
      baseline_ += (mean - baseline_) * kBaselineUp;
    }
    const double ratio = mean > absl::ZeroDuration()
                             ? kTolerance * absl::FDivDuration(baseline_, mean)
                             : 1.0;
    const double gradient = std::clamp(ratio, 0.5, 1.0);
    const double headroom = std::max(1.0, std::log2(limit));
    target = limit * gradient + headroom;
    // No growth past twice the calls in flight seen: an idle route's limit
    // does not climb without bound.
    if (target > limit) {
      target = std::min(target, std::max(limit, 2.0 * max_in_flight_seen_));
    }
    // At the floor and still slow: the upstream's own latency has risen for
    // good; learn it again rather than stay at the floor.
    if (limit < options_.min_limit + 0.5 && ratio < 1.0) {
      if (++windows_at_floor_ >= kRebaselineWindows) {
        baseline_ = mean;
        windows_at_floor_ = 0;
      }
    } else {
      windows_at_floor_ = 0;
    }
  }
  // A decrease for overload outcomes applies whole (multiplicative decrease);
  // latency's moves are smoothed.
  const double next = overloaded_ > kOverloadShare * samples_
                          ? target
                          : limit + kSmoothing * (target - limit);
  limit_ = std::clamp(next, static_cast<double>(options_.min_limit),
                      static_cast<double>(options_.max_limit));
  samples_ = 0;
  overloaded_ = 0;
  latency_sum_ = absl::ZeroDuration();
  max_in_flight_seen_ = 0;
  window_start_ = now;
}

}  // namespace bulwark
