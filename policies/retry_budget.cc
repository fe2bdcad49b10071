#include "policies/retry_budget.h"

#include <algorithm>
#include <cmath>

namespace bulwark {

absl::Duration RetryBackoff(int retry, absl::Duration initial,
                            absl::Duration max, double random01) {
  if (retry < 1) retry = 1;
  absl::Duration cap = initial;
  for (int i = 1; i < retry && cap < max; ++i) cap *= 2;
  cap = std::min(cap, max);
  if (cap <= absl::ZeroDuration()) return absl::ZeroDuration();
  random01 = std::clamp(random01, 0.0, 1.0);
  return absl::Floor(cap * random01, absl::Microseconds(1));
}

RetryBudget::RetryBudget(const Options& options)
    : ratio_(std::max(0.0, options.ratio)),
      floor_(std::max(0.0, options.min_per_second) *
             absl::ToDoubleSeconds(options.window)),
      slice_(std::max(options.window / kSlices, absl::Milliseconds(1))) {}

RetryBudget::Slice& RetryBudget::SliceAt(absl::Time now) {
  const int64_t index = absl::ToInt64Nanoseconds(now - absl::UnixEpoch()) /
                        absl::ToInt64Nanoseconds(slice_);
  Slice& slice =
      slices_[static_cast<size_t>(((index % kSlices) + kSlices) % kSlices)];
  if (slice.index != index) slice = Slice{.index = index};
  return slice;
}

double RetryBudget::AllowedLocked(absl::Time now, int64_t* extras) {
  const int64_t current = absl::ToInt64Nanoseconds(now - absl::UnixEpoch()) /
                          absl::ToInt64Nanoseconds(slice_);
  int64_t calls = 0;
  *extras = 0;
  for (const Slice& slice : slices_) {
    if (slice.index < 0 || current - slice.index >= kSlices ||
        slice.index > current) {
      continue;
    }
    calls += slice.calls;
    *extras += slice.extras;
  }
  return std::max(ratio_ * static_cast<double>(calls), floor_);
}

void RetryBudget::RecordCall(absl::Time now) {
  absl::MutexLock lock(&mu_);
  ++SliceAt(now).calls;
}

bool RetryBudget::TryTakeExtra(absl::Time now) {
  absl::MutexLock lock(&mu_);
  Slice& slice = SliceAt(now);
  int64_t extras = 0;
  const double allowed = AllowedLocked(now, &extras);
  if (static_cast<double>(extras + 1) > allowed) return false;
  ++slice.extras;
  return true;
}

double RetryBudget::AvailableApprox(absl::Time now) {
  absl::MutexLock lock(&mu_);
  int64_t extras = 0;
  const double allowed = AllowedLocked(now, &extras);
  return std::max(0.0, std::floor(allowed - static_cast<double>(extras)));
}

}  // namespace bulwark
