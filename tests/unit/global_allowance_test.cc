#include "policies/global_allowance.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policies/clock.h"

namespace bulwark {
namespace {

using Mode = GlobalAllowance::Mode;

bool Admitted(const GlobalTake& t) {
  return t.take.kind == TakeResult::kAdmitted;
}

// Options with round numbers: 300 calls/s and a burst of 300 for all replicas
// together.
GlobalAllowanceOptions Options() {
  return {.rate_per_second = 300,
          .burst = 300,
          .refill_horizon = absl::Milliseconds(100),
          .low_water_fraction = 0.5,
          .rate_window = absl::Seconds(1),
          .store_retry_interval = absl::Milliseconds(250)};
}

// Calls TryTake `calls` times, one every `every`, answering each refill
// request in full at once; returns how many were admitted.
int64_t RunAtRate(GlobalAllowance& allowance, FakeClock& clock, int calls,
                  absl::Duration every) {
  int64_t admitted = 0;
  for (int i = 0; i < calls; ++i) {
    clock.AdvanceBy(every);
    const GlobalTake t = allowance.TryTake(clock.Now());
    if (Admitted(t)) ++admitted;
    if (t.refill_tokens > 0) allowance.OnGrant(t.refill_tokens, clock.Now());
  }
  return admitted;
}

TEST(GlobalAllowanceTest, FirstCallsSpendBurstOverReplicasWhileRefillRuns) {
  FakeClock clock;
  GlobalAllowance allowance(Options(), /*replicas=*/3, clock.Now());

  // The very first call asks for a refill; none of the others do while it is
  // under way.
  const GlobalTake first = allowance.TryTake(clock.Now());
  EXPECT_TRUE(Admitted(first));
  EXPECT_GT(first.refill_tokens, 0);
  for (int i = 1; i < 100; ++i) {
    const GlobalTake t = allowance.TryTake(clock.Now());
    ASSERT_TRUE(Admitted(t)) << "call " << i;
    EXPECT_EQ(t.refill_tokens, 0) << "call " << i;
  }
  // 300 / 3 = 100 calls on the start allowance, then nothing until a grant.
  const GlobalTake over = allowance.TryTake(clock.Now());
  EXPECT_EQ(over.take.kind, TakeResult::kRejected);
  EXPECT_GT(over.take.retry_after, absl::ZeroDuration());
  EXPECT_EQ(allowance.StatsApprox(clock.Now()).mode, Mode::kStarting);
  EXPECT_EQ(allowance.StatsApprox(clock.Now()).debt, 100);
}

TEST(GlobalAllowanceTest, StartAllowanceIsAtLeastOneCall) {
  FakeClock clock;
  GlobalAllowanceOptions options = Options();
  options.burst = 2;
  GlobalAllowance allowance(options, /*replicas=*/5, clock.Now());

  EXPECT_TRUE(Admitted(allowance.TryTake(clock.Now())));
  EXPECT_FALSE(Admitted(allowance.TryTake(clock.Now())));
}

TEST(GlobalAllowanceTest, NeverSeenReplicasCountAsOne) {
  FakeClock clock;
  GlobalAllowance allowance(Options(), /*replicas=*/0, clock.Now());

  int admitted = 0;
  for (int i = 0; i < 400; ++i) {
    if (Admitted(allowance.TryTake(clock.Now()))) ++admitted;
  }
  EXPECT_EQ(admitted, 300);
}

TEST(GlobalAllowanceTest, GrantsRepayWhatTheStartAllowanceLent) {
  FakeClock clock;
  GlobalAllowance allowance(Options(), /*replicas=*/3, clock.Now());

  // The request leaves with the first call: a batch plus that one call.
  const GlobalTake first = allowance.TryTake(clock.Now());
  ASSERT_EQ(first.refill_tokens, 2);
  for (int i = 0; i < 9; ++i) allowance.TryTake(clock.Now());
  allowance.OnGrant(first.refill_tokens, clock.Now());

  GlobalAllowance::Stats stats = allowance.StatsApprox(clock.Now());
  EXPECT_EQ(stats.mode, Mode::kShared);
  // Ten calls lent, two repaid; the rest of the start allowance bridges the
  // next refill, which asks for what is still owed.
  EXPECT_EQ(stats.debt, 8);
  EXPECT_EQ(stats.tokens, 0);
  EXPECT_EQ(stats.start_left, 90);
  const GlobalTake next = allowance.TryTake(clock.Now());
  EXPECT_TRUE(Admitted(next));
  stats = allowance.StatsApprox(clock.Now());
  EXPECT_EQ(next.refill_tokens, stats.last_batch + 9);
  allowance.OnGrant(next.refill_tokens, clock.Now());
  stats = allowance.StatsApprox(clock.Now());
  EXPECT_EQ(stats.debt, 0);
  EXPECT_EQ(stats.tokens, stats.last_batch);
}

TEST(GlobalAllowanceTest, BatchFollowsThisSidecarsShareOfTheTraffic) {
  FakeClock clock;
  GlobalAllowanceOptions options = Options();
  options.rate_per_second = 10000;
  options.burst = 10000;
  GlobalAllowance busy(options, /*replicas=*/2, clock.Now());
  GlobalAllowance quiet(options, /*replicas=*/2, clock.Now());

  // 2 s at 1000 calls/s and at 100 calls/s: batches of rate x 100 ms.
  RunAtRate(busy, clock, 2000, absl::Milliseconds(1));
  EXPECT_NEAR(busy.StatsApprox(clock.Now()).last_batch, 100, 1);
  EXPECT_NEAR(busy.StatsApprox(clock.Now()).local_rate, 1000, 2);
  RunAtRate(quiet, clock, 200, absl::Milliseconds(10));
  EXPECT_NEAR(quiet.StatsApprox(clock.Now()).last_batch, 10, 1);
  // Two idle seconds later the busy key's share has gone.
  EXPECT_EQ(busy.StatsApprox(clock.Now()).local_rate, 0);
}

TEST(GlobalAllowanceTest, BatchIsClampedToBurstOverReplicas) {
  FakeClock clock;
  GlobalAllowanceOptions options = Options();
  options.rate_per_second = 100000;
  options.burst = 90;
  GlobalAllowance allowance(options, /*replicas=*/3, clock.Now());

  // 10 000 calls/s would want batches of 1000.
  RunAtRate(allowance, clock, 20000, absl::Microseconds(100));
  EXPECT_EQ(allowance.StatsApprox(clock.Now()).last_batch, 30);
}

TEST(GlobalAllowanceTest, LowWaterAsksOnceUntilAnswered) {
  FakeClock clock;
  GlobalAllowanceOptions options = Options();
  options.rate_per_second = 100000;
  options.burst = 100000;
  // At 1000 calls/s a batch is ceil(105.5 +- 0.1) = 106 calls: the low water
  // mark is 53.
  options.refill_horizon = absl::Microseconds(105500);
  GlobalAllowance allowance(options, /*replicas=*/1, clock.Now());
  RunAtRate(allowance, clock, 2000, absl::Milliseconds(1));
  GlobalAllowance::Stats stats = allowance.StatsApprox(clock.Now());
  ASSERT_EQ(stats.last_batch, 106);
  ASSERT_FALSE(stats.refill_in_flight);
  ASSERT_GT(stats.tokens, 53);

  // Spending asks nothing until the call that leaves the low water mark.
  int requests = 0;
  int64_t asked = 0;
  while (requests == 0) {
    clock.AdvanceBy(absl::Milliseconds(1));
    const int64_t before = allowance.StatsApprox(clock.Now()).tokens;
    const GlobalTake t = allowance.TryTake(clock.Now());
    ASSERT_TRUE(Admitted(t));
    if (t.refill_tokens > 0) {
      ++requests;
      asked = t.refill_tokens;
      EXPECT_EQ(before - 1, 53);
    } else {
      ASSERT_GT(before - 1, 53);
    }
  }
  EXPECT_EQ(asked, 106);
  // Unanswered: nothing more is asked, however many calls come.
  for (int i = 0; i < 300; ++i) {
    clock.AdvanceBy(absl::Milliseconds(1));
    ASSERT_EQ(allowance.TryTake(clock.Now()).refill_tokens, 0) << "call " << i;
  }
  EXPECT_TRUE(allowance.StatsApprox(clock.Now()).refill_in_flight);
  // Answered: the next call may ask again.
  allowance.OnGrant(asked, clock.Now());
  EXPECT_FALSE(allowance.StatsApprox(clock.Now()).refill_in_flight);
  EXPECT_GT(allowance.TryTake(clock.Now()).refill_tokens, 0);
}

TEST(GlobalAllowanceTest, ShortGrantWaitsBeforeAskingAgain) {
  FakeClock clock;
  GlobalAllowanceOptions options = Options();
  options.burst = 3;  // a start allowance of one call
  GlobalAllowance allowance(options, /*replicas=*/3, clock.Now());
  const GlobalTake first = allowance.TryTake(clock.Now());
  ASSERT_GT(first.refill_tokens, 0);
  // The shared bucket is dry: nothing granted, and the one call lent is still
  // owed.
  allowance.OnGrant(0, clock.Now());

  const GlobalTake rejected = allowance.TryTake(clock.Now());
  EXPECT_EQ(rejected.take.kind, TakeResult::kRejected);
  EXPECT_EQ(rejected.refill_tokens, 0);
  // The time the bucket needs for one token per replica (3 / 300 s), but no
  // more than three quarters of its time to fill the burst of 3: 7.5 ms.
  EXPECT_GE(rejected.take.retry_after, absl::Microseconds(7500));
  EXPECT_LE(rejected.take.retry_after, absl::Milliseconds(100));

  clock.AdvanceBy(absl::Milliseconds(100));
  EXPECT_GT(allowance.TryTake(clock.Now()).refill_tokens, 0);
}

TEST(GlobalAllowanceTest, LocalFallbackEnforcesTheShareAfterTheAllowance) {
  FakeClock clock;
  GlobalAllowance allowance(Options(), /*replicas=*/3, clock.Now());
  const GlobalTake first = allowance.TryTake(clock.Now());   // lent
  allowance.OnGrant(first.refill_tokens + 19, clock.Now());  // 20 tokens
  ASSERT_EQ(allowance.StatsApprox(clock.Now()).tokens, 20);
  allowance.OnStoreError(clock.Now(), StoreErrorMode::kLocal);

  // The 20 tokens granted before the error are spent first.
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(Admitted(allowance.TryTake(clock.Now()))) << "call " << i;
  }
  EXPECT_EQ(allowance.StatsApprox(clock.Now()).tokens, 0);
  // Then 300/3 = 100 calls/s with a burst of 300/3 = 100, less the 21 calls
  // this sidecar admitted just before.
  int admitted = 0;
  GlobalTake t;
  while (Admitted(t = allowance.TryTake(clock.Now()))) ++admitted;
  EXPECT_EQ(admitted, 79);
  EXPECT_EQ(t.take.retry_after, absl::Milliseconds(10));

  clock.AdvanceBy(absl::Seconds(5));
  admitted = 0;
  for (int i = 0; i < 150; ++i) {
    if (Admitted(allowance.TryTake(clock.Now()))) ++admitted;
  }
  EXPECT_EQ(admitted, 100);
  const GlobalAllowance::Stats stats = allowance.StatsApprox(clock.Now());
  EXPECT_EQ(stats.mode, Mode::kFallback);
  EXPECT_EQ(stats.fallback_mode, StoreErrorMode::kLocal);
}

TEST(GlobalAllowanceTest, AllowFallbackAdmitsEverything) {
  FakeClock clock;
  GlobalAllowance allowance(Options(), /*replicas=*/3, clock.Now());
  allowance.TryTake(clock.Now());
  allowance.OnStoreError(clock.Now(), StoreErrorMode::kAllow);

  for (int i = 0; i < 10000; ++i) {
    ASSERT_TRUE(Admitted(allowance.TryTake(clock.Now()))) << "call " << i;
  }
}

TEST(GlobalAllowanceTest, DenyFallbackRejectsOnceTheAllowanceIsSpent) {
  FakeClock clock;
  GlobalAllowance allowance(Options(), /*replicas=*/3, clock.Now());
  const GlobalTake first = allowance.TryTake(clock.Now());
  allowance.OnGrant(first.refill_tokens + 4, clock.Now());  // 5 tokens
  allowance.OnStoreError(clock.Now(), StoreErrorMode::kDeny);

  // An allowance granted before the error is still spent.
  for (int i = 0; i < 5; ++i) {
    EXPECT_TRUE(Admitted(allowance.TryTake(clock.Now()))) << "call " << i;
  }
  for (int i = 0; i < 100; ++i) {
    const GlobalTake t = allowance.TryTake(clock.Now());
    ASSERT_EQ(t.take.kind, TakeResult::kRejected) << "call " << i;
    EXPECT_GT(t.take.retry_after, absl::ZeroDuration());
  }
}

TEST(GlobalAllowanceTest, ErrorBeforeAnyGrantEndsTheStartAllowance) {
  FakeClock clock;
  GlobalAllowance allowance(Options(), /*replicas=*/3, clock.Now());
  allowance.TryTake(clock.Now());
  allowance.OnStoreError(clock.Now(), StoreErrorMode::kDeny);

  EXPECT_FALSE(Admitted(allowance.TryTake(clock.Now())));
}

TEST(GlobalAllowanceTest, ReturnsToTheSharedBucketWhenTheStoreAnswers) {
  FakeClock clock;
  GlobalAllowance allowance(Options(), /*replicas=*/3, clock.Now());
  allowance.TryTake(clock.Now());
  allowance.OnStoreError(clock.Now(), StoreErrorMode::kDeny);

  // No new request before store_retry_interval, then exactly one.
  clock.AdvanceBy(absl::Milliseconds(249));
  EXPECT_EQ(allowance.TryTake(clock.Now()).refill_tokens, 0);
  clock.AdvanceBy(absl::Milliseconds(1));
  const GlobalTake retry = allowance.TryTake(clock.Now());
  EXPECT_GT(retry.refill_tokens, 0);
  EXPECT_EQ(allowance.TryTake(clock.Now()).refill_tokens, 0);

  // It fails again: still DENY, next retry 250 ms later.
  allowance.OnStoreError(clock.Now(), StoreErrorMode::kDeny);
  clock.AdvanceBy(absl::Milliseconds(250));
  const GlobalTake again = allowance.TryTake(clock.Now());
  ASSERT_GT(again.refill_tokens, 0);
  // The store is back.
  allowance.OnGrant(again.refill_tokens + 10, clock.Now());
  const GlobalAllowance::Stats stats = allowance.StatsApprox(clock.Now());
  EXPECT_EQ(stats.mode, Mode::kShared);
  // The grant less the one call lent before the error.
  EXPECT_EQ(stats.tokens, again.refill_tokens + 10 - 1);
  EXPECT_EQ(stats.debt, 0);
  EXPECT_TRUE(Admitted(allowance.TryTake(clock.Now())));
}

TEST(GlobalAllowanceTest, GrantUpdatesTheReplicasTheFallbackUses) {
  FakeClock clock;
  GlobalAllowance allowance(Options(), /*replicas=*/1, clock.Now());
  const GlobalTake first = allowance.TryTake(clock.Now());
  allowance.OnGrant(first.refill_tokens, clock.Now(), /*replicas=*/6);
  EXPECT_EQ(allowance.StatsApprox(clock.Now()).replicas, 6);
  allowance.TryTake(clock.Now());
  allowance.OnStoreError(clock.Now(), StoreErrorMode::kLocal);

  clock.AdvanceBy(absl::Seconds(10));
  int admitted = 0;
  for (int i = 0; i < 1000; ++i) {
    if (Admitted(allowance.TryTake(clock.Now()))) ++admitted;
  }
  // The grant was spent (it repaid the first call, the second took the rest):
  // a burst of 300 / 6.
  EXPECT_EQ(admitted, 50);
}

TEST(GlobalAllowanceTest, ConcurrentCallsSpendEachTokenOnce) {
  FakeClock clock;
  GlobalAllowanceOptions options = Options();
  options.burst = 30;
  GlobalAllowance allowance(options, /*replicas=*/3, clock.Now());
  std::atomic<int64_t> admitted{0};
  std::atomic<int64_t> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5000; ++i) {
        if (i % 100 == 0) clock.AdvanceBy(absl::Milliseconds(1));
        const GlobalTake take = allowance.TryTake(clock.Now());
        if (Admitted(take)) admitted.fetch_add(1);
        if (take.refill_tokens > 0) {
          // Grant half of what is asked, as a dry bucket might.
          const int64_t g = take.refill_tokens / 2;
          granted.fetch_add(g);
          allowance.OnGrant(g, clock.Now());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const GlobalAllowance::Stats stats = allowance.StatsApprox(clock.Now());
  // Every admitted call spent a granted token or was lent (and is owed).
  EXPECT_EQ(admitted.load(), granted.load() - stats.tokens + stats.debt);
  EXPECT_GT(granted.load(), 0);
}

}  // namespace
}  // namespace bulwark

namespace bulwark {
namespace {

// A busy sidecar alone against a shared bucket whose burst is one batch (200
// calls/s, burst 20, 1000 calls/s offered): its short grants must not make it
// wait until the shared bucket is full, or the tokens past the cap are lost
// and it admits less than the limit. The shared bucket is simulated here
// (refill at the rate, capped at the burst), each refill answered 2 ms later.
TEST(GlobalAllowanceTest, ABusySidecarAloneGetsTheWholeLimitWithASmallBurst) {
  FakeClock clock;
  const GlobalAllowanceOptions options{.rate_per_second = 200, .burst = 20};
  GlobalAllowance allowance(options, /*replicas=*/1, clock.Now());
  double shared = 20;  // the bucket in "Redis", starts full
  absl::Time shared_at = clock.Now();
  int64_t pending = 0;  // tokens asked for, answered at `answer_at`
  absl::Time answer_at = absl::InfiniteFuture();
  int64_t admitted = 0;
  int64_t refills = 0;
  const absl::Time start = clock.Now();
  for (int ms = 0; ms < 10'000; ++ms) {
    clock.AdvanceBy(absl::Milliseconds(1));
    const absl::Time now = clock.Now();
    if (now >= answer_at) {
      shared =
          std::min(20.0, shared + 200 * absl::ToDoubleSeconds(now - shared_at));
      shared_at = now;
      const auto granted =
          std::min<int64_t>(pending, static_cast<int64_t>(shared));
      shared -= static_cast<double>(granted);
      allowance.OnGrant(granted, now);
      answer_at = absl::InfiniteFuture();
    }
    const GlobalTake t = allowance.TryTake(now);
    if (Admitted(t)) ++admitted;
    if (t.refill_tokens > 0) {
      ++refills;
      pending = t.refill_tokens;
      answer_at = now + absl::Milliseconds(2);
    }
  }
  const double limit = 200 * absl::ToDoubleSeconds(clock.Now() - start) + 20;
  EXPECT_LE(admitted, limit);
  EXPECT_GE(admitted, 0.98 * 200 * 10) << refills << " refills";
}

}  // namespace
}  // namespace bulwark
