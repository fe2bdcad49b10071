#include "policies/token_bucket.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace bulwark {
namespace {

constexpr int64_t kNanosPerSecond = 1'000'000'000;

int64_t UnitsPerNanosecond(double rate_per_second) {
  // `!(x > 0)` also catches NaN.
  if (!(rate_per_second > 0)) return 0;
  const double units = rate_per_second * kNanosPerSecond;
  // Above this the product overflows int64; such rates are far beyond any real
  // limit.
  constexpr double kMaxUnits = 9.2e18;
  if (units >= kMaxUnits) return static_cast<int64_t>(kMaxUnits);
  return std::max<int64_t>(1, std::llround(units));
}

}  // namespace

TokenBucketLimits::TokenBucketLimits(const TokenBucketOptions& options)
    : capacity_units(absl::int128(std::max<int64_t>(options.burst, 0)) *
                     kUnitsPerToken),
      units_per_ns(UnitsPerNanosecond(options.rate_per_second)) {}

TokenBucketLevel::TokenBucketLevel(const TokenBucketLimits& limits,
                                   absl::Time now)
    : units_(limits.capacity_units), updated_ns_(absl::ToUnixNanos(now)) {}

absl::int128 TokenBucketLevel::FilledUnitsAt(const TokenBucketLimits& limits,
                                             int64_t now_ns) const {
  if (now_ns <= updated_ns_) return units_;
  // In 128 bits and capped at int64 max, elapsed * units_per_ns + units_ cannot
  // overflow: 9.2e18 * 9.2e18 + 9.2e36 < 1.7e38.
  absl::int128 elapsed_ns = absl::int128(now_ns) - updated_ns_;
  elapsed_ns =
      std::min(elapsed_ns, absl::int128(std::numeric_limits<int64_t>::max()));
  return std::min(limits.capacity_units,
                  units_ + elapsed_ns * limits.units_per_ns);
}

TakeResult TokenBucketLevel::TryTake(const TokenBucketLimits& limits,
                                     absl::Time now) {
  const int64_t now_ns = absl::ToUnixNanos(now);
  if (now_ns > updated_ns_) {
    units_ = FilledUnitsAt(limits, now_ns);
    updated_ns_ = now_ns;
  }
  if (units_ >= TokenBucketLimits::kUnitsPerToken) {
    units_ -= TokenBucketLimits::kUnitsPerToken;
    return {.kind = TakeResult::kAdmitted, .retry_after = absl::ZeroDuration()};
  }
  if (limits.units_per_ns == 0 ||
      limits.capacity_units < TokenBucketLimits::kUnitsPerToken) {
    return {.kind = TakeResult::kRejected,
            .retry_after = absl::InfiniteDuration()};
  }
  // Less than one token is missing, so this fits in 64 bits.
  const int64_t missing_units =
      static_cast<int64_t>(TokenBucketLimits::kUnitsPerToken - units_);
  // Rounded up without forming missing + units_per_ns, which overflows for
  // rates near the 64-bit limit of units_per_ns (found by
  // tests/fuzz/policies_fuzz.cc).
  const int64_t wait_ns = missing_units / limits.units_per_ns +
                          (missing_units % limits.units_per_ns != 0 ? 1 : 0);
  // Measured from the last refill, which is later than `now` when `now` is
  // stale.
  const int64_t token_ready_ns = updated_ns_ + wait_ns;
  return {.kind = TakeResult::kRejected,
          .retry_after = absl::Nanoseconds(token_ready_ns - now_ns)};
}

double TokenBucketLevel::TokensAt(const TokenBucketLimits& limits,
                                  absl::Time now) const {
  return static_cast<double>(FilledUnitsAt(limits, absl::ToUnixNanos(now))) /
         static_cast<double>(TokenBucketLimits::kUnitsPerToken);
}

TokenBucket::TokenBucket(const TokenBucketOptions& options, Clock& clock)
    : limits_(options), clock_(clock), level_(limits_, clock.Now()) {}

TakeResult TokenBucket::TryTake(absl::Time now) {
  absl::MutexLock lock(&mu_);
  return level_.TryTake(limits_, now);
}

TakeResult TokenBucket::TryTake() { return TryTake(clock_.Now()); }

double TokenBucket::TokensApprox() {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  return level_.TokensAt(limits_, now);
}

}  // namespace bulwark
