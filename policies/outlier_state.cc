#include "policies/outlier_state.h"

#include <algorithm>

namespace bulwark {

OutlierState::OutlierState(const Options& options)
    : options_(options),
      slice_(std::max(options.window / kSlices, absl::Milliseconds(1))) {}

uint32_t OutlierState::DecayedEjectionsLocked(absl::Time now) const {
  absl::Time from = decay_from_;
  if (timed_) {
    if (now < until_) return ejections_;
    from = until_;  // ended, EndIfDue not yet called
  }
  if (ejections_ == 0 || from == absl::InfinitePast() || now <= from ||
      options_.base_ejection_time <= absl::ZeroDuration()) {
    return ejections_;
  }
  absl::Duration rest;
  const int64_t steps =
      absl::IDivDuration(now - from, options_.base_ejection_time, &rest);
  return steps >= ejections_ ? 0 : ejections_ - static_cast<uint32_t>(steps);
}

void OutlierState::ResetCountsLocked() {
  consecutive_ = 0;
  slices_.fill(Slice{});
}

OutlierState::Verdict OutlierState::Record(bool failure, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (until_serving_ || (timed_ && now < until_)) return Verdict::kKeep;
  consecutive_ = failure ? consecutive_ + 1 : 0;
  const int64_t index = absl::ToInt64Nanoseconds(now - absl::UnixEpoch()) /
                        absl::ToInt64Nanoseconds(slice_);
  Slice& slice =
      slices_[static_cast<size_t>(((index % kSlices) + kSlices) % kSlices)];
  if (slice.index != index) slice = Slice{.index = index};
  ++slice.calls;
  if (failure) ++slice.failures;
  if (options_.consecutive_failures > 0 &&
      consecutive_ >= options_.consecutive_failures) {
    return Verdict::kEject;
  }
  if (!failure || options_.failure_rate > 1.0) return Verdict::kKeep;
  uint64_t calls = 0;
  uint64_t failures = 0;
  for (const Slice& s : slices_) {
    if (s.index < 0 || s.index > index || index - s.index >= kSlices) continue;
    calls += s.calls;
    failures += s.failures;
  }
  if (calls >= std::max<uint32_t>(options_.minimum_requests, 1) &&
      static_cast<double>(failures) >=
          options_.failure_rate * static_cast<double>(calls)) {
    return Verdict::kEject;
  }
  return Verdict::kKeep;
}

absl::Time OutlierState::Eject(absl::Time now) {
  absl::MutexLock lock(&mu_);
  const uint32_t count = DecayedEjectionsLocked(now) + 1;
  ejections_ = count;
  absl::Duration length = options_.base_ejection_time * count;
  length = std::min(length, options_.max_ejection_time);
  timed_ = true;
  until_ = now + length;
  ResetCountsLocked();
  return until_;
}

void OutlierState::EjectUntilServing() {
  absl::MutexLock lock(&mu_);
  until_serving_ = true;
}

void OutlierState::Serving() {
  absl::MutexLock lock(&mu_);
  if (!until_serving_) return;
  until_serving_ = false;
  ResetCountsLocked();
}

bool OutlierState::EndIfDue(absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (!timed_ || now < until_) return false;
  timed_ = false;
  decay_from_ = until_;
  ResetCountsLocked();
  return true;
}

bool OutlierState::Ejected(absl::Time now) {
  absl::MutexLock lock(&mu_);
  return until_serving_ || (timed_ && now < until_);
}

OutlierState::Snapshot OutlierState::GetSnapshot(absl::Time now) {
  absl::MutexLock lock(&mu_);
  Snapshot s;
  const bool timed = timed_ && now < until_;
  s.ejected = until_serving_ || timed;
  s.until_serving = until_serving_;
  s.time_left = timed ? until_ - now : absl::ZeroDuration();
  s.ejections = DecayedEjectionsLocked(now);
  s.consecutive_failures = consecutive_;
  return s;
}

}  // namespace bulwark
