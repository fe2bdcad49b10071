// ConcurrencyStage: the route's semaphore in the chain (SPEC sections 2-3). A
// call takes a slot, waits for one in the bounded FIFO queue (parked: the
// limiter calls back on a releasing thread and the driver resumes the call on
// its own worker), or is answered `concurrency_limit`; a waiter whose
// queue_timeout passes is answered `queue_timeout`, one whose own deadline
// passes DEADLINE_EXCEEDED.
//
// Shadow is honest: the call never waits, but its place is booked in the same
// limiter (a slot, or a waiter in the queue that the driver keeps until the
// wait ends), so the books match what enforcing would hold, and
// concurrency_limit / queue_timeout are counted when they would have happened.
// A booked slot that is granted while the call still runs is held until it
// ends.
//
// Thread-safety: const after construction; the limiter is thread-safe. Cost:
// one compare-and-swap per acquire and release while nobody waits.
#ifndef BULWARK_SIDECAR_CHAIN_CONCURRENCY_STAGE_H_
#define BULWARK_SIDECAR_CHAIN_CONCURRENCY_STAGE_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "bulwark/config/v1/config.pb.h"
#include "policies/clock.h"
#include "policies/concurrency_limiter.h"
#include "sidecar/chain/verdict.h"
#include "sidecar/metrics.h"
#include "sidecar/net/stream_handler.h"

namespace bulwark::chain {

class ConcurrencyStage {
 public:
  using Permit = ConcurrencyLimiter::Permit;
  using WaitHandle = ConcurrencyLimiter::WaitHandle;
  using WaitResult = ConcurrencyLimiter::WaitResult;

  static std::unique_ptr<ConcurrencyLimiter> NewState(
      const config::v1::Concurrency& config, Clock& clock);
  // `exact_method`: the route matches one exact method; `unary_methods`
  // ("/pkg.Service/Method", from descriptor_sets) may be null. Both tell calls
  // known unary, the adaptive limit's latency samples.
  ConcurrencyStage(
      const config::v1::Concurrency& config, std::string route,
      ConcurrencyLimiter& limiter, RouteMetrics& metrics,
      bool exact_method = false,
      const absl::flat_hash_set<std::string>* unary_methods = nullptr);

  struct Acquired {
    // kContinue: go upstream (holding `permit` unless shadow booked none);
    // kPark: wait for `on_done`; kAnswer: reject.
    Verdict verdict;
    Permit permit;
    // Set while a waiter is booked in the queue: the call waits (enforcing)
    // or goes on regardless (shadow); the driver cancels it if the call ends
    // first.
    std::optional<WaitHandle> wait;
  };
  // The call's priority from priority_header (kNormal without one).
  Priority PriorityOf(const net::Call& call) const;
  using OnDone = absl::AnyInvocable<void(WaitResult)>;
  // `make_on_done` is called only if the call may have to wait (no free slot
  // at first sight); the callback it makes may run on any thread (see
  // ConcurrencyLimiter::Waiter).
  Acquired Acquire(TimerQueue& timers, absl::Time call_deadline,
                   Priority priority,
                   absl::FunctionRef<OnDone()> make_on_done) const;
  // How a booked wait ended: kContinue (granted; in shadow always), or the
  // answer an enforcing waiter gets.
  Verdict OnWaitEnded(ConcurrencyLimiter::WaitStatus status) const;
  void Cancel(WaitHandle wait) const { limiter_.Cancel(wait); }
  bool shadow() const { return shadow_; }
  // Whether a call that ended with `result` is a latency sample (SPEC section
  // 7): known unary, or shaped like one; streams hold slots but are not.
  bool IsSample(std::string_view path, const net::CallResult& result) const;
  // Whether an ending says the upstream is overloaded: a deadline, or
  // RESOURCE_EXHAUSTED / UNAVAILABLE from upstream.
  static bool Overloaded(const net::CallResult& result);
  // The same for an upstream call the sidecar owns (a flight, attempts).
  static bool Overloaded(const net::UpstreamCallResult& result);

  std::string DescribeJson() const;
  ConcurrencyLimiter& limiter() const { return limiter_; }

 private:
  // load_shed (counted only, in shadow).
  Verdict LoadShed(std::string_view why) const;

  const std::string route_;
  const bool shadow_;
  const std::string priority_header_;
  const bool exact_method_;
  const absl::flat_hash_set<std::string>* unary_methods_;
  ConcurrencyLimiter& limiter_;
  RouteMetrics& metrics_;
};

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_CONCURRENCY_STAGE_H_
