#include "policies/global_allowance.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace bulwark {
namespace {

int64_t Share(int64_t burst, int replicas) {
  return std::max<int64_t>(1, std::max<int64_t>(burst, 0) / replicas);
}

TokenBucketLimits LocalLimits(const GlobalAllowanceOptions& options,
                              int replicas) {
  return TokenBucketLimits(
      {.rate_per_second = options.rate_per_second / replicas,
       .burst = Share(options.burst, replicas)});
}

TakeResult Admitted() {
  return {.kind = TakeResult::kAdmitted, .retry_after = absl::ZeroDuration()};
}

}  // namespace

std::string_view StoreErrorModeName(StoreErrorMode mode) {
  switch (mode) {
    case StoreErrorMode::kLocal:
      return "LOCAL";
    case StoreErrorMode::kAllow:
      return "ALLOW";
    case StoreErrorMode::kDeny:
      return "DENY";
  }
  return "LOCAL";
}

GlobalAllowance::GlobalAllowance(const GlobalAllowanceOptions& options,
                                 int replicas, absl::Time now)
    : options_(options),
      replicas_(std::max(1, replicas)),
      start_left_(Share(options.burst, std::max(1, replicas))),
      next_request_at_(now),
      window_start_(now),
      created_(now),
      local_limits_(LocalLimits(options, std::max(1, replicas))),
      local_level_(local_limits_, now) {}

GlobalTake GlobalAllowance::TryTake(absl::Time now) {
  absl::MutexLock lock(&mu_);
  Roll(now);
  ++calls_current_;
  GlobalTake out;
  if (tokens_ > 0) {
    --tokens_;
    out.take = Admit(now);
  } else if (mode_ != Mode::kFallback && start_left_ > 0) {
    --start_left_;
    ++debt_;
    out.take = Admit(now);
  } else if (mode_ == Mode::kFallback) {
    switch (fallback_mode_) {
      case StoreErrorMode::kLocal:
        out.take = local_level_.TryTake(local_limits_, now);
        break;
      case StoreErrorMode::kAllow:
        out.take = Admit(now);
        break;
      case StoreErrorMode::kDeny:
        out.take = Reject(now);
        break;
    }
  } else {
    out.take = Reject(now);
  }
  const int64_t batch = BatchSize(now);
  if (RefillDue(now, batch)) {
    in_flight_ = true;
    last_batch_ = batch;
    requested_ = batch + debt_;
    out.refill_tokens = requested_;
  }
  return out;
}

void GlobalAllowance::OnGrant(int64_t tokens, absl::Time now, int replicas) {
  absl::MutexLock lock(&mu_);
  if (replicas > 0) SetReplicas(replicas);
  tokens = std::max<int64_t>(tokens, 0);
  const int64_t repaid = std::min(debt_, tokens);
  debt_ -= repaid;
  tokens_ += tokens - repaid;
  const bool dry = tokens < requested_;
  in_flight_ = false;
  requested_ = 0;
  mode_ = Mode::kShared;
  next_request_at_ = dry ? now + DryWait() : now;
}

void GlobalAllowance::OnStoreError(absl::Time now, StoreErrorMode mode) {
  absl::MutexLock lock(&mu_);
  in_flight_ = false;
  requested_ = 0;
  mode_ = Mode::kFallback;
  fallback_mode_ = mode;
  next_request_at_ = now + options_.store_retry_interval;
}

GlobalAllowance::Stats GlobalAllowance::StatsApprox(absl::Time now) {
  absl::MutexLock lock(&mu_);
  Roll(now);
  return {.mode = mode_,
          .fallback_mode = fallback_mode_,
          .tokens = tokens_,
          .start_left = start_left_,
          .debt = debt_,
          .refill_in_flight = in_flight_,
          .last_batch = last_batch_,
          .replicas = replicas_,
          .local_rate = LocalRate(now)};
}

void GlobalAllowance::Roll(absl::Time now) {
  const absl::Duration window = options_.rate_window;
  if (window <= absl::ZeroDuration() || now < window_start_ + window) return;
  // Abseil 20220623 writes the remainder unconditionally: never pass null.
  absl::Duration rem;
  const int64_t windows = absl::IDivDuration(now - window_start_, window, &rem);
  calls_previous_ = windows == 1 ? calls_current_ : 0;
  calls_current_ = 0;
  window_start_ += windows * window;
}

double GlobalAllowance::LocalRate(absl::Time now) const {
  const absl::Duration window = options_.rate_window;
  if (window <= absl::ZeroDuration()) return 0;
  if (now - created_ < window) {
    // No full window seen yet: the calls so far over the time so far (at least
    // one horizon, so the first call alone is not read as a huge rate).
    const absl::Duration seen =
        std::max(now - created_, options_.refill_horizon);
    return seen > absl::ZeroDuration()
               ? calls_current_ / absl::ToDoubleSeconds(seen)
               : 0;
  }
  const double into =
      std::clamp(absl::FDivDuration(now - window_start_, window), 0.0, 1.0);
  return (calls_previous_ * (1 - into) + calls_current_) /
         absl::ToDoubleSeconds(window);
}

int64_t GlobalAllowance::BatchSize(absl::Time now) const {
  const double wanted = std::ceil(
      LocalRate(now) * absl::ToDoubleSeconds(options_.refill_horizon));
  const int64_t cap = Share(options_.burst, replicas_);
  if (!(wanted >= 1)) return 1;
  if (wanted >= static_cast<double>(cap)) return cap;
  return static_cast<int64_t>(wanted);
}

bool GlobalAllowance::RefillDue(absl::Time now, int64_t batch) const {
  if (in_flight_ || now < next_request_at_) return false;
  switch (mode_) {
    case Mode::kStarting:  // none yet
    case Mode::kFallback:  // retry the store
      return true;
    case Mode::kShared: {
      const auto low_water = static_cast<int64_t>(
          std::ceil(batch * std::clamp(options_.low_water_fraction, 0.0, 1.0)));
      return tokens_ <= low_water || debt_ > 0;
    }
  }
  return false;
}

void GlobalAllowance::SetReplicas(int replicas) {
  if (replicas == replicas_) return;
  replicas_ = replicas;
  // The level keeps its tokens; the next take caps them at the new burst.
  local_limits_ = LocalLimits(options_, replicas_);
}

TakeResult GlobalAllowance::Admit(absl::Time now) {
  // The LOCAL bucket follows every admitted call (it may be empty: fine).
  local_level_.TryTake(local_limits_, now);
  return Admitted();
}

TakeResult GlobalAllowance::Reject(absl::Time now) const {
  absl::Duration wait = std::max(next_request_at_ - now, absl::Milliseconds(1));
  if (mode_ != Mode::kFallback) {
    // The shared bucket makes a token for each replica in replicas / rate.
    if (!(options_.rate_per_second > 0)) {
      wait = absl::InfiniteDuration();
    } else {
      wait =
          std::max(wait, absl::Seconds(replicas_ / options_.rate_per_second));
    }
  }
  return {.kind = TakeResult::kRejected, .retry_after = wait};
}

absl::Duration GlobalAllowance::DryWait() const {
  if (!(options_.rate_per_second > 0)) return options_.refill_horizon;
  const absl::Duration batch_time =
      absl::Seconds(static_cast<double>(std::max<int64_t>(last_batch_, 1)) *
                    replicas_ / options_.rate_per_second);
  // Never as long as the shared bucket takes to fill up: tokens past its
  // burst are lost, so a sidecar that waited that long would admit less than
  // the limit (a busy sidecar alone, whose batch is the whole burst, lost
  // about 5 % of the rate that way).
  const absl::Duration fill_time = absl::Seconds(
      0.75 * static_cast<double>(options_.burst) / options_.rate_per_second);
  return std::clamp(std::min(batch_time, fill_time), absl::Milliseconds(1),
                    std::max(options_.refill_horizon, absl::Milliseconds(1)));
}

}  // namespace bulwark
