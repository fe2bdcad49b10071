// Attempts: the upstream attempts of one unary call on a route with `retry`
// (SPEC section 9), owned by whoever owns the call's upstream side (the
// ChainCall of a plain call, the FlightCall of a flight). The call's request
// is held whole; each attempt sends it as a captured upstream call, so
// nothing reaches the client before an attempt is chosen as the answer:
//   - an attempt that answers with response headers (not trailers-only) is
//     committed: it is the call's answer, whatever its status;
//   - a trailers-only answer with one of `retry_codes` (RESOURCE_EXHAUSTED
//     never), or an unreachable endpoint (UNAVAILABLE), is retried after a
//     jittered exponential backoff, or after the upstream's
//     grpc-retry-pushback-ms (a negative one: no further attempt);
//   - with hedge_delay, another attempt is sent when none answered that long
//     after the last one was sent; the first answer that is not retried wins
//     and the others are cancelled (RST_STREAM CANCEL upstream);
//   - every extra attempt (retry or hedge) needs the route's budget, the
//     breaker's admission, time left before the call's deadline, and goes to
//     another endpoint when there is one, carrying grpc-previous-rpc-attempts;
//   - a stream refused unseen is sent again once, outside the budget;
//   - each attempt settles its own breaker ticket and outlier record and is
//     counted in bulwark_upstream_attempts_total{kind} and per endpoint.
// When no attempt may follow, the last answer is the call's.
//
// Thread-safety: the call's worker only. Lifetime: destroying it cancels every
// attempt in flight (their outcome: a deadline expiry if Cancel said so, else
// neither); `done` runs at most once and may destroy it.
// Cost per attempt: a copy of the request (headers and body) and a captured
// response of at most max_response_bytes.
#ifndef BULWARK_SIDECAR_CHAIN_ATTEMPTS_H_
#define BULWARK_SIDECAR_CHAIN_ATTEMPTS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/random/random.h"
#include "policies/circuit_breaker.h"
#include "sidecar/chain/upstream_stage.h"
#include "sidecar/net/stream_handler.h"

namespace bulwark {
struct Route;
}

namespace bulwark::chain {

class Attempts {
 public:
  using Done = absl::AnyInvocable<void(const net::UpstreamCallResult& result)>;

  // `first` is the endpoint the chain picked; `ticket` the call's breaker
  // ticket (settled by the first attempt). `retries`: false for a call that
  // gets one attempt only (a method not retried, a request over
  // max_request_bytes): then only the refused-unseen resend applies.
  // `call_deadline` bounds every attempt.
  Attempts(net::Executor& executor, const Route& route, Endpoint* first,
           std::optional<CircuitBreaker::Ticket> ticket,
           net::UpstreamRequest request, bool retries,
           uint64_t max_response_bytes, Done done);
  ~Attempts();

  Attempts(const Attempts&) = delete;
  Attempts& operator=(const Attempts&) = delete;

  void Start();
  // The call left before an answer: attempts in flight are cancelled when
  // this object is destroyed; their outcome is a deadline expiry when
  // `deadline_expired`, else the caller's cancellation (neither).
  void CallLeft(bool deadline_expired) { left_on_deadline_ = deadline_expired; }

  int sent() const { return sent_; }
  // The endpoint of the answer (or of the last attempt sent).
  Endpoint* answering_endpoint() const { return answering_; }

 private:
  struct Attempt;
  enum class Kind { kFirst, kRetry, kHedge };

  void Send(Kind kind, Endpoint* endpoint,
            std::optional<CircuitBreaker::Ticket> ticket);
  void StartCall(Attempt& attempt);
  void OnAttemptFinished(Attempt& attempt,
                         const net::UpstreamCallResult& result);
  // An extra attempt now, if the budget, the breaker, the deadline and
  // max_attempts allow; false when none was sent.
  bool TrySendExtra(Kind kind);
  // The next attempt after `delay` (at once when zero).
  void ScheduleRetry(absl::Duration delay);
  void RetryNow();
  void ArmHedge();
  void CancelTimers();
  // Settles and drops an attempt that did not answer (cancelled by us).
  void Abandon(Attempt& attempt, bool deadline_expired);
  void Finish(const net::UpstreamCallResult& result);
  absl::Time Now() const;

  net::Executor& executor_;
  const Route& route_;
  const UpstreamStage& stage_;
  const RetryPolicy* policy_;  // null: one attempt
  net::UpstreamRequest request_;
  const uint64_t max_response_bytes_;
  Done done_;
  std::vector<std::unique_ptr<Attempt>> in_flight_;
  std::vector<Endpoint*> tried_;
  Endpoint* answering_ = nullptr;
  int sent_ = 0;
  int retries_ = 0;       // retries sent (for the backoff)
  bool resent_ = false;   // the refused-unseen resend was used
  bool no_more_ = false;  // a pushback said no further attempt
  bool finished_ = false;
  bool left_on_deadline_ = false;
  std::optional<uint64_t> retry_timer_;
  std::optional<uint64_t> hedge_timer_;
  std::optional<net::UpstreamCallResult> last_;  // the latest retried answer
  absl::InsecureBitGen rng_;
};

// How one upstream call (a flight's, an attempt) went, for the outcome rule.
UpstreamOutcome OutcomeOfUpstreamCall(const net::UpstreamCallResult& result);

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_ATTEMPTS_H_
