#include "sidecar/chain/attempts.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "sidecar/route_table.h"

namespace bulwark::chain {
namespace {

constexpr int kResourceExhausted =
    static_cast<int>(absl::StatusCode::kResourceExhausted);

// grpc-retry-pushback-ms of a trailers-only answer (or its trailers): unset
// when absent; a negative value, or one that does not parse, means "do not
// retry" (gRPC A6).
std::optional<int64_t> Pushback(const net::CapturedResponse& response) {
  for (const net::HeaderList* list : {&response.headers, &response.trailers}) {
    for (const auto& [name, value] : *list) {
      if (name != "grpc-retry-pushback-ms") continue;
      int64_t ms = 0;
      if (!absl::SimpleAtoi(absl::string_view(value.data(), value.size()),
                            &ms) ||
          ms < 0)
        return -1;
      return ms;
    }
  }
  return std::nullopt;
}

}  // namespace

UpstreamOutcome OutcomeOfUpstreamCall(const net::UpstreamCallResult& result) {
  using Kind = UpstreamOutcome::Kind;
  UpstreamOutcome outcome{.grpc_code = result.grpc_code,
                          .upstream_time = result.duration};
  if (result.refused) {
    outcome.kind = Kind::kRefused;
  } else if (result.deadline_exceeded) {
    outcome.kind = Kind::kDeadline;
  } else if (result.transport_failure) {
    outcome.kind = Kind::kTransportFailure;
  } else if (result.too_large) {
    outcome.kind = Kind::kNotSent;  // answered, but not an outcome we saw
  } else {
    outcome.kind = Kind::kAnswered;
  }
  return outcome;
}

struct Attempts::Attempt final : public net::UpstreamCallListener {
  Attempts* owner = nullptr;
  Kind kind = Kind::kFirst;
  int number = 1;  // 1 = the first attempt
  Endpoint* endpoint = nullptr;
  std::optional<CircuitBreaker::Ticket> ticket;
  absl::Time start;
  std::unique_ptr<net::UpstreamCallHandle> call;

  void OnFinish(const net::UpstreamCallResult& result) override {
    owner->OnAttemptFinished(*this, result);
  }
};

Attempts::Attempts(net::Executor& executor, const Route& route, Endpoint* first,
                   std::optional<CircuitBreaker::Ticket> ticket,
                   net::UpstreamRequest request, bool retries,
                   uint64_t max_response_bytes, Done done)
    : executor_(executor),
      route_(route),
      stage_(*route.upstream),
      policy_(retries ? route.upstream->retry() : nullptr),
      request_(std::move(request)),
      max_response_bytes_(max_response_bytes),
      done_(std::move(done)) {
  answering_ = first;
  tried_.push_back(first);
  // Start() sends it; kept here so the ticket has an owner until then.
  auto attempt = std::make_unique<Attempt>();
  attempt->owner = this;
  attempt->endpoint = first;
  attempt->ticket = ticket;
  in_flight_.push_back(std::move(attempt));
}

Attempts::~Attempts() {
  CancelTimers();
  // Moved out first: settling may not re-enter, but keep the vector stable.
  std::vector<std::unique_ptr<Attempt>> in_flight = std::move(in_flight_);
  for (auto& attempt : in_flight) {
    if (attempt->call != nullptr) {
      attempt->call.reset();  // RST_STREAM CANCEL; no callback after this
      const UpstreamOutcome outcome{
          .kind = left_on_deadline_ ? UpstreamOutcome::Kind::kDeadline
                                    : UpstreamOutcome::Kind::kClientCancelled,
          .upstream_time = Now() - attempt->start};
      if (route_.breaker != nullptr) {
        route_.breaker->Settle(attempt->ticket, outcome, Now());
      }
      stage_.RecordOutcome(*attempt->endpoint, outcome, Now(),
                           /*latency_sample=*/true);
      attempt->endpoint->load.in_flight.fetch_sub(1, std::memory_order_relaxed);
    } else if (route_.breaker != nullptr) {
      route_.breaker->Forget(attempt->ticket);
    }
  }
}

absl::Time Attempts::Now() const { return executor_.clock().Now(); }

void Attempts::Start() {
  Attempt& first = *in_flight_.front();
  first.number = ++sent_;
  StartCall(first);
  if (route_.metrics != nullptr) {
    route_.metrics->UpstreamAttempts(RouteMetrics::AttemptKind::kFirst)
        .Increment();
  }
  ArmHedge();
}

void Attempts::StartCall(Attempt& attempt) {
  attempt.start = Now();
  attempt.endpoint->load.in_flight.fetch_add(1, std::memory_order_relaxed);
  net::UpstreamRequest request{.path = request_.path,
                               .headers = request_.headers,
                               .body = request_.body,
                               .deadline = request_.deadline};
  if (attempt.number > 1) {
    request.headers.emplace_back("grpc-previous-rpc-attempts",
                                 std::to_string(attempt.number - 1));
  }
  if (policy_ != nullptr &&
      policy_->per_attempt_timeout > absl::ZeroDuration()) {
    request.deadline = std::min(request.deadline,
                                attempt.start + policy_->per_attempt_timeout);
  }
  attempt.call = executor_.StartUpstreamCall(
      attempt.endpoint->upstream, std::move(request), &attempt,
      {.capture = true,
       .deliver_messages = false,
       .max_response_bytes = max_response_bytes_});
}

void Attempts::Send(Kind kind, Endpoint* endpoint,
                    std::optional<CircuitBreaker::Ticket> ticket) {
  auto attempt = std::make_unique<Attempt>();
  attempt->owner = this;
  attempt->kind = kind;
  attempt->number = ++sent_;
  attempt->endpoint = endpoint;
  attempt->ticket = ticket;
  answering_ = endpoint;
  if (std::find(tried_.begin(), tried_.end(), endpoint) == tried_.end()) {
    tried_.push_back(endpoint);
  }
  Attempt& raw = *attempt;
  in_flight_.push_back(std::move(attempt));
  if (route_.metrics != nullptr) {
    route_.metrics
        ->UpstreamAttempts(kind == Kind::kHedge
                               ? RouteMetrics::AttemptKind::kHedge
                               : RouteMetrics::AttemptKind::kRetry)
        .Increment();
  }
  StartCall(raw);
}

bool Attempts::TrySendExtra(Kind kind) {
  if (policy_ == nullptr || finished_ || no_more_ ||
      sent_ >= policy_->max_attempts) {
    return false;
  }
  const absl::Time now = Now();
  if (now >= request_.deadline) return false;
  Endpoint* endpoint = stage_.PickOther(now, tried_);
  if (endpoint == nullptr) return false;
  std::optional<CircuitBreaker::Ticket> ticket;
  if (route_.breaker != nullptr &&
      route_.breaker->Admit(now, ticket).kind == Verdict::Kind::kAnswer) {
    return false;  // the breaker opened meanwhile: no more attempts
  }
  if (stage_.budget() == nullptr || !stage_.budget()->TryTakeExtra(now)) {
    if (route_.breaker != nullptr) route_.breaker->Forget(ticket);
    if (route_.metrics != nullptr) {
      route_.metrics->RetryBudgetExhausted().Increment();
    }
    return false;
  }
  Send(kind, endpoint, ticket);
  return true;
}

void Attempts::ArmHedge() {
  if (policy_ == nullptr || policy_->hedge_delay <= absl::ZeroDuration() ||
      sent_ >= policy_->max_attempts || finished_ || no_more_) {
    return;
  }
  if (hedge_timer_.has_value()) executor_.timers().Cancel(*hedge_timer_);
  const absl::Time when = Now() + policy_->hedge_delay;
  if (when >= request_.deadline) {
    hedge_timer_.reset();
    return;
  }
  hedge_timer_ = executor_.timers().Schedule(when, [this] {
    hedge_timer_.reset();
    if (TrySendExtra(Kind::kHedge)) ArmHedge();
  });
}

void Attempts::ScheduleRetry(absl::Duration delay) {
  if (retry_timer_.has_value()) return;  // one is coming already
  if (delay <= absl::ZeroDuration()) {
    RetryNow();  // may destroy this
    return;
  }
  retry_timer_ = executor_.timers().Schedule(Now() + delay, [this] {
    retry_timer_.reset();
    RetryNow();
  });
}

void Attempts::RetryNow() {
  if (finished_) return;
  if (TrySendExtra(Kind::kRetry)) {
    ++retries_;
    ArmHedge();
    return;
  }
  // Nothing more may be sent: with nothing in flight, the last answer is the
  // call's.
  if (in_flight_.empty() && last_.has_value()) {
    const net::UpstreamCallResult last = *std::move(last_);
    Finish(last);  // may destroy this
  }
}

void Attempts::CancelTimers() {
  if (retry_timer_.has_value()) executor_.timers().Cancel(*retry_timer_);
  if (hedge_timer_.has_value()) executor_.timers().Cancel(*hedge_timer_);
  retry_timer_.reset();
  hedge_timer_.reset();
}

void Attempts::OnAttemptFinished(Attempt& attempt,
                                 const net::UpstreamCallResult& result) {
  const absl::Time now = Now();
  if (result.refused && !resent_) {
    // Refused unseen: the upstream never saw it. Sent once more (a fresh
    // connection if the old one is going away), outside the budget and not
    // an attempt of its own.
    resent_ = true;
    attempt.endpoint->load.in_flight.fetch_sub(1, std::memory_order_relaxed);
    StartCall(attempt);  // destroys the finished call
    return;
  }
  const UpstreamOutcome outcome = OutcomeOfUpstreamCall(result);
  if (route_.breaker != nullptr) {
    route_.breaker->Settle(attempt.ticket, outcome, now);
  }
  stage_.RecordOutcome(*attempt.endpoint, outcome, now,
                       /*latency_sample=*/true);
  attempt.endpoint->load.in_flight.fetch_sub(1, std::memory_order_relaxed);
  if (attempt.endpoint->metrics != nullptr) {
    attempt.endpoint->metrics->UpstreamRequests(result.grpc_code).Increment();
  }
  if (route_.cluster->metrics() != nullptr) {
    route_.cluster->metrics()->UpstreamDuration().Observe(
        absl::ToDoubleSeconds(result.duration));
  }
  Endpoint* endpoint = attempt.endpoint;
  // Drop the attempt (its call ended; destroying the handle is allowed here).
  std::unique_ptr<Attempt> done_attempt;
  for (auto it = in_flight_.begin(); it != in_flight_.end(); ++it) {
    if (it->get() == &attempt) {
      done_attempt = std::move(*it);
      in_flight_.erase(it);
      break;
    }
  }
  const net::CapturedResponse* response = result.response.get();
  const bool committed = response != nullptr && !response->trailers_only;
  std::optional<int64_t> pushback;
  if (response != nullptr) pushback = Pushback(*response);
  const bool retryable =
      policy_ != nullptr && !committed && !result.too_large &&
      result.grpc_code > 0 && result.grpc_code < 17 &&
      result.grpc_code != kResourceExhausted &&
      policy_->retry_codes.test(static_cast<size_t>(result.grpc_code)) &&
      !(pushback.has_value() && *pushback < 0);
  if (!retryable) {
    answering_ = endpoint;
    if (pushback.has_value() && *pushback < 0) no_more_ = true;
    Finish(result);  // may destroy this
    return;
  }
  last_ = result;
  answering_ = endpoint;
  // The next attempt: after the upstream's pushback, else the backoff; with
  // hedging and nothing else in flight, at once (the hedge delay already
  // passed or the answer came early).
  absl::Duration delay =
      RetryBackoff(retries_ + 1, policy_->initial_backoff, policy_->max_backoff,
                   absl::Uniform(rng_, 0.0, 1.0));
  if (pushback.has_value()) {
    delay = absl::Milliseconds(*pushback);
  } else if (policy_->hedge_delay > absl::ZeroDuration()) {
    delay = absl::ZeroDuration();
  }
  const bool can_follow = sent_ < policy_->max_attempts && !no_more_ &&
                          now + delay < request_.deadline;
  if (can_follow) {
    if (hedge_timer_.has_value()) {
      executor_.timers().Cancel(*hedge_timer_);
      hedge_timer_.reset();
    }
    ScheduleRetry(delay);
    return;
  }
  if (in_flight_.empty()) {
    const net::UpstreamCallResult last = *std::move(last_);
    Finish(last);  // may destroy this
  }
  // Else: the attempts still in flight may yet answer.
}

void Attempts::Finish(const net::UpstreamCallResult& result) {
  if (finished_) return;
  finished_ = true;
  CancelTimers();
  // The others lose: cancelled upstream, neither success nor failure.
  std::vector<std::unique_ptr<Attempt>> losers = std::move(in_flight_);
  in_flight_.clear();
  const absl::Time now = !losers.empty() && route_.cluster->UsesLatency()
                             ? Now()
                             : absl::InfinitePast();
  for (auto& attempt : losers) {
    attempt->call.reset();
    if (route_.breaker != nullptr) route_.breaker->Forget(attempt->ticket);
    stage_.RecordCancelledAttempt(*attempt->endpoint, now - attempt->start,
                                  now);
    attempt->endpoint->load.in_flight.fetch_sub(1, std::memory_order_relaxed);
    // Sent, then cancelled by the sidecar: the upstream saw it.
    if (attempt->endpoint->metrics != nullptr) {
      attempt->endpoint->metrics
          ->UpstreamRequests(static_cast<int>(absl::StatusCode::kCancelled))
          .Increment();
    }
  }
  Done done = std::move(done_);
  done(result);  // may destroy this
}

}  // namespace bulwark::chain
