// RecentActivity: a route's calls, rejections by reason and coalesced calls
// over the last 60 seconds, for /routes' `last_minute` and the status page
// (SPEC section 4). Sixty one-second buckets on the monotonic clock; a bucket
// is reset when its second comes round again.
//
// Thread-safety: thread-safe, lock-free. The counts are approximate by
// design: a bucket being reset while another worker adds to it may lose that
// one count, and a read sums buckets that keep moving. Never a basis for a
// decision. Cost per call: one atomic load and one relaxed fetch_add.
#ifndef BULWARK_SIDECAR_RECENT_ACTIVITY_H_
#define BULWARK_SIDECAR_RECENT_ACTIVITY_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "sidecar/metrics.h"

namespace bulwark {

class RecentActivity {
 public:
  static constexpr int kSeconds = 60;

  struct Counts {
    int64_t calls = 0;
    std::array<int64_t, kRejectReasonCount> rejections{};
    int64_t coalesced = 0;
  };

  void AddCall(absl::Time now) { Add(now, &Bucket::calls); }
  void AddCoalesced(absl::Time now) { Add(now, &Bucket::coalesced); }
  void AddRejection(absl::Time now, RejectReason reason) {
    BucketAt(now).rejections[static_cast<size_t>(reason)].fetch_add(
        1, std::memory_order_relaxed);
  }

  // The sums over the 60 seconds up to `now` (approximate, see above).
  Counts LastMinuteApprox(absl::Time now) const {
    Counts out;
    const int64_t second = SecondOf(now);
    for (const Bucket& bucket : buckets_) {
      const int64_t at = bucket.second.load(std::memory_order_acquire);
      if (at <= second - kSeconds || at > second) continue;
      out.calls += bucket.calls.load(std::memory_order_relaxed);
      out.coalesced += bucket.coalesced.load(std::memory_order_relaxed);
      for (size_t i = 0; i < out.rejections.size(); ++i) {
        out.rejections[i] +=
            bucket.rejections[i].load(std::memory_order_relaxed);
      }
    }
    return out;
  }

  // The `last_minute` object of /routes.
  std::string LastMinuteJson(absl::Time now) const;

 private:
  struct Bucket {
    std::atomic<int64_t> second{-1};
    std::atomic<int64_t> calls{0};
    std::atomic<int64_t> coalesced{0};
    std::array<std::atomic<int64_t>, kRejectReasonCount> rejections{};
  };

  static int64_t SecondOf(absl::Time now) { return absl::ToUnixSeconds(now); }

  Bucket& BucketAt(absl::Time now) {
    const int64_t second = SecondOf(now);
    Bucket& bucket = buckets_[static_cast<size_t>(
        ((second % kSeconds) + kSeconds) % kSeconds)];
    int64_t seen = bucket.second.load(std::memory_order_acquire);
    if (seen != second && seen < second &&
        bucket.second.compare_exchange_strong(seen, second,
                                              std::memory_order_acq_rel)) {
      // This thread moved the bucket to a new second: it starts from zero.
      bucket.calls.store(0, std::memory_order_relaxed);
      bucket.coalesced.store(0, std::memory_order_relaxed);
      for (auto& r : bucket.rejections) r.store(0, std::memory_order_relaxed);
    }
    return bucket;
  }

  void Add(absl::Time now, std::atomic<int64_t> Bucket::*counter) {
    (BucketAt(now).*counter).fetch_add(1, std::memory_order_relaxed);
  }

  std::array<Bucket, kSeconds> buckets_;
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_RECENT_ACTIVITY_H_
