#include "sidecar/proxy_stream.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "sidecar/log.h"
#include "sidecar/net/upstream_call.h"

namespace bulwark {
namespace {

constexpr int kCancelled = 1;
constexpr int kDeadlineExceeded = 4;
constexpr int kResourceExhausted = 8;
constexpr int kUnimplemented = 12;
constexpr int kUnavailable = 14;

int64_t CeilMillis(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  if (d == absl::InfiniteDuration()) return INT64_MAX;
  return absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1)));
}

CircuitBreaker::Outcome OutcomeOfCode(const Route& route, int code) {
  if (code == kCancelled) return CircuitBreaker::Outcome::kIgnored;
  return code >= 0 && code < 17 && route.failure_codes.test(code)
             ? CircuitBreaker::Outcome::kFailure
             : CircuitBreaker::Outcome::kSuccess;
}

std::shared_ptr<net::CapturedResponse> TrailersOnly(int code,
                                                    std::string_view message,
                                                    std::string_view reason,
                                                    int64_t pushback_ms) {
  auto response = std::make_shared<net::CapturedResponse>();
  response->trailers_only = true;
  response->grpc_code = code;
  response->headers = {{":status", "200"},
                       {"content-type", "application/grpc"},
                       {"grpc-status", std::to_string(code)},
                       {"grpc-message", std::string(message)}};
  if (!reason.empty())
    response->headers.emplace_back("x-bulwark-reason", std::string(reason));
  if (pushback_ms >= 0) {
    response->headers.emplace_back("grpc-retry-pushback-ms",
                                   std::to_string(pushback_ms));
  }
  return response;
}

}  // namespace

// The upstream call of a singleflight flight (or of one shadow-mode call):
// owned by the worker's ProxyHandler, not by a caller. It settles what an
// upstream call holds (breaker ticket, permit, endpoint load) and hands its
// captured response to the flight, or to its one caller in shadow mode.
class FlightCall final : public net::UpstreamCallListener {
 public:
  FlightCall(ProxyHandler& handler, uint64_t id,
             std::shared_ptr<const Snapshot> snapshot, const Route& route,
             Flights::Leadership leadership, uint64_t solo_call_id,
             std::optional<CircuitBreaker::Ticket> ticket,
             ConcurrencyLimiter::Permit permit, Endpoint* endpoint)
      : handler_(handler),
        id_(id),
        snapshot_(std::move(snapshot)),
        route_(route),
        leadership_(std::move(leadership)),
        solo_call_id_(solo_call_id),
        ticket_(ticket),
        permit_(std::move(permit)),
        endpoint_(endpoint) {}

  ~FlightCall() override {
    // Cancelled (nobody wants it) or shutting down: nothing to deliver.
    if (ticket_.has_value()) {
      route_.state->breaker->Record(*ticket_,
                                    CircuitBreaker::Outcome::kIgnored);
    }
    endpoint_->load.in_flight.fetch_sub(1, std::memory_order_relaxed);
  }

  void Start(net::UpstreamRequest request) {
    call_ = net::UpstreamCall::Start(
        handler_.worker(), endpoint_->upstream, std::move(request), this,
        {.capture = true,
         .deliver_messages = false,
         .max_response_bytes =
             snapshot_->config.proto.listener().max_message_bytes()});
  }

  void OnFinish(const net::UpstreamCallResult& result) override {
    if (ticket_.has_value()) {
      const CircuitBreaker::Outcome outcome =
          result.transport_failure || result.deadline_exceeded
              ? CircuitBreaker::Outcome::kFailure
              : OutcomeOfCode(route_, result.grpc_code);
      route_.state->breaker->Record(*ticket_, outcome);
      ticket_.reset();
    }
    permit_.Release();
    endpoint_->metrics->UpstreamRequests(result.grpc_code).Increment();
    route_.cluster->metrics()->UpstreamDuration().Observe(
        absl::ToDoubleSeconds(result.duration));
    if (leadership_.Held()) {
      leadership_.Complete(result.response);
    } else if (net::Call* call = handler_.worker().FindCall(solo_call_id_)) {
      call->RespondWith(result.response);
    }
    handler_.EndFlight(id_);  // destroys this (and the finished UpstreamCall)
  }

 private:
  ProxyHandler& handler_;
  const uint64_t id_;
  std::shared_ptr<const Snapshot> snapshot_;  // keeps route_ alive
  const Route& route_;
  Flights::Leadership leadership_;
  const uint64_t solo_call_id_;
  std::optional<CircuitBreaker::Ticket> ticket_;
  ConcurrencyLimiter::Permit permit_;
  Endpoint* endpoint_;
  std::unique_ptr<net::UpstreamCall> call_;
};

namespace {

// The per-call state of the chain; the transport owns it (Call::SetObserver)
// and calls OnClose once when the downstream stream ends.
class ProxyCall final : public net::CallObserver {
 public:
  ProxyCall(ProxyHandler& handler, std::shared_ptr<const Snapshot> snapshot,
            const Route& route, net::Call& call)
      : handler_(handler),
        snapshot_(std::move(snapshot)),
        route_(route),
        call_(call) {
    route_.state->active_calls.fetch_add(1, std::memory_order_relaxed);
  }

  ~ProxyCall() override {
    route_.state->active_calls.fetch_sub(1, std::memory_order_relaxed);
    if (parked_)
      route_.state->limiter->Cancel(wait_);  // shutdown with a waiter queued
  }

  // Runs the chain from the rate limiter on.
  void Start() {
    const absl::Time now = absl::Now();
    if (!CheckRateLimit(now)) return;
    if (!CheckBreaker(now)) return;
    if (route_.Coalescable(call_.path())) {
      call_.CollectRequest([this](std::string body) {
        request_body_ = std::move(body);
        JoinFlight();
      });
      return;
    }
    AcquireSlot();
  }

  // Continuation when the flight this call followed ended.
  void OnFlightOutcome(Flights::Outcome outcome) {
    membership_ = Flights::Membership();
    if (outcome.end == FlightEnd::kCompleted) {
      call_.RespondWith(std::move(outcome.result));
      return;
    }
    // The leader gave up before going upstream (its caller left): try again,
    // which makes one of the waiting callers the new leader.
    JoinFlight();
  }

  void OnClose(const net::CallResult& result) override {
    if (parked_) {
      route_.state->limiter->Cancel(wait_);
      parked_ = false;
    }
    const absl::Time now = absl::Now();
    RouteMetrics& metrics = *route_.metrics;
    if (result.reason == "message_too_large") {
      metrics.Rejections(RejectReason::kMessageTooLarge).Increment();
    }
    if (ticket_.has_value()) {
      route_.state->breaker->Record(*ticket_, BreakerOutcome(result), now);
    }
    if (endpoint_ != nullptr) {
      endpoint_->load.in_flight.fetch_sub(1, std::memory_order_relaxed);
      if (result.forwarded) {
        const int upstream_code = result.upstream_grpc_code >= 0
                                      ? result.upstream_grpc_code
                                      : result.grpc_code;
        endpoint_->metrics->UpstreamRequests(upstream_code).Increment();
        route_.cluster->metrics()->UpstreamDuration().Observe(
            absl::ToDoubleSeconds(result.upstream_duration));
      }
    }
    metrics.Requests(result.grpc_code).Increment();
    metrics.Duration().Observe(absl::ToDoubleSeconds(now - call_.start_time()));
    permit_.Release();
  }

  void Reject(int code, RejectReason reason, std::string message,
              int64_t pushback_ms = -1) {
    route_.metrics->Rejections(reason).Increment();
    if (leadership_.Held()) {
      // The flight's callers share the leader's fate, as they would share its
      // answer.
      leadership_.Complete(
          TrailersOnly(code, message, RejectReasonName(reason), pushback_ms));
      return;  // this call answers through its own membership, like the others
    }
    call_.RespondLocal({.grpc_code = code,
                        .message = std::move(message),
                        .reason = RejectReasonName(reason),
                        .retry_pushback_ms = pushback_ms});
  }

  // Continuation of a parked call, on its own worker.
  void OnSlot(ConcurrencyLimiter::WaitResult result) {
    parked_ = false;
    switch (result.status) {
      case ConcurrencyLimiter::WaitStatus::kGranted:
        permit_ = std::move(result.permit);
        PickAndForward();
        return;
      case ConcurrencyLimiter::WaitStatus::kQueueTimeout:
        ForgetTicket();
        Reject(kResourceExhausted, RejectReason::kQueueTimeout,
               absl::StrCat(
                   "no concurrency slot on route ", route_.name, " within ",
                   absl::FormatDuration(
                       route_.state->limiter->options().queue_timeout)));
        return;
      case ConcurrencyLimiter::WaitStatus::kDeadlineExceeded:
        ForgetTicket();
        call_.RespondLocal(
            {.grpc_code = kDeadlineExceeded,
             .message =
                 "deadline exceeded while waiting for a concurrency slot"});
        return;
    }
  }

 private:
  // The sidecar answered this call itself (or a flight answers it): its breaker
  // ticket counts as neither success nor failure.
  void ForgetTicket() {
    if (ticket_.has_value()) {
      route_.state->breaker->Record(*ticket_,
                                    CircuitBreaker::Outcome::kIgnored);
      ticket_.reset();
    }
  }

  bool CheckRateLimit(absl::Time now) {
    RouteState& state = *route_.state;
    if (state.bucket == nullptr && state.keyed == nullptr) return true;
    TakeResult taken;
    if (state.bucket != nullptr) {
      taken = state.bucket->TryTake(now);
    } else if (std::string_view key = call_.header(route_.key_header);
               !key.empty()) {
      taken = state.keyed->TryTake(key, now);
    } else {
      taken = state.keyed->TryTakeShared(now);
    }
    if (taken.kind == TakeResult::kAdmitted) return true;
    if (route_.rate_limit_shadow) {
      route_.metrics->ShadowRejections(RejectReason::kRateLimited).Increment();
      return true;
    }
    Reject(kResourceExhausted, RejectReason::kRateLimited,
           absl::StrCat("rate limit of route ", route_.name, " exceeded"),
           CeilMillis(taken.retry_after));
    return false;
  }

  bool CheckBreaker(absl::Time now) {
    CircuitBreaker* breaker = route_.state->breaker.get();
    if (breaker == nullptr) return true;
    CircuitBreaker::Admission admission = breaker->TryAcquire(now);
    if (admission.kind == CircuitBreaker::Admission::kAdmitted) {
      ticket_ = admission.ticket;
      return true;
    }
    if (route_.breaker_shadow) {
      route_.metrics->ShadowRejections(RejectReason::kCircuitOpen).Increment();
      return true;
    }
    Reject(kUnavailable, RejectReason::kCircuitOpen,
           absl::StrCat("circuit breaker of route ", route_.name, " is open"),
           CeilMillis(admission.retry_after));
    return false;
  }

  void AcquireSlot() {
    ConcurrencyLimiter* limiter = route_.state->limiter.get();
    if (limiter == nullptr) {
      PickAndForward();
      return;
    }
    net::Worker* worker = &call_.worker();
    const uint64_t call_id = call_.id();
    auto acquired = limiter->Acquire(
        {.timers = worker->timers(),
         .call_deadline = route_.concurrency_shadow ? absl::InfiniteFuture()
                                                    : call_.deadline(),
         .on_done = [worker, call_id](ConcurrencyLimiter::WaitResult result) {
           // Any thread: hop to the call's worker; if the call is gone the
           // permit in `result` is released by its destructor there.
           worker->Post(
               [worker, call_id, result = std::move(result)]() mutable {
                 if (net::Call* call = worker->FindCall(call_id)) {
                   if (auto* self = static_cast<ProxyCall*>(call->observer())) {
                     self->OnSlot(std::move(result));
                   }
                 }
               });
         }});
    switch (acquired.status) {
      case ConcurrencyLimiter::AcquireStatus::kGranted:
        permit_ = std::move(acquired.permit);
        PickAndForward();
        return;
      case ConcurrencyLimiter::AcquireStatus::kParked:
        if (route_.concurrency_shadow) {
          // Shadow: it would have waited; don't.
          limiter->Cancel(acquired.wait);
          PickAndForward();
          return;
        }
        parked_ = true;
        wait_ = acquired.wait;
        return;
      case ConcurrencyLimiter::AcquireStatus::kConcurrencyLimit:
        if (route_.concurrency_shadow) {
          route_.metrics->ShadowRejections(RejectReason::kConcurrencyLimit)
              .Increment();
          PickAndForward();
          return;
        }
        ForgetTicket();
        Reject(kResourceExhausted, RejectReason::kConcurrencyLimit,
               absl::StrCat("concurrency limit of route ", route_.name,
                            " reached"));
        return;
    }
  }

  void PickAndForward() {
    endpoint_ = route_.cluster->Pick();
    if (endpoint_ == nullptr) {
      ForgetTicket();
      permit_.Release();
      Reject(kUnavailable, RejectReason::kNoHealthyEndpoint,
             absl::StrCat("cluster ", route_.cluster->name(),
                          " has no healthy endpoint"));
      return;
    }
    endpoint_->load.in_flight.fetch_add(1, std::memory_order_relaxed);
    if (!request_body_.has_value()) {
      call_.Forward(endpoint_->upstream);
      return;
    }
    // A held unary call: its upstream call belongs to the flight (or, in shadow
    // mode, is this call's own), not to this stream.
    const uint64_t id = flight_id_ != 0 ? flight_id_ : handler_.NextFlightId();
    const uint64_t solo_call_id = leadership_.Held() ? 0 : call_.id();
    auto flight = std::make_unique<FlightCall>(
        handler_, id, snapshot_, route_, std::move(leadership_), solo_call_id,
        ticket_, std::move(permit_), std::exchange(endpoint_, nullptr));
    ticket_.reset();
    FlightCall* raw = flight.get();
    handler_.AddFlight(id, std::move(flight));
    raw->Start({.path = std::string(call_.path()),
                .headers = call_.request_headers(),
                .body = std::move(*request_body_),
                .deadline = call_.deadline()});
  }

  void JoinFlight() {
    std::vector<SingleflightKeyHeader> headers;
    headers.reserve(route_.key_headers.size());
    for (const std::string& name : route_.key_headers) {
      std::string_view value = call_.header(name);
      headers.push_back(
          {.name = name,
           .value = value.empty()
                        ? std::nullopt
                        : std::optional<absl::string_view>(
                              absl::string_view(value.data(), value.size()))});
    }
    const std::string_view path = call_.path();
    std::string key = EncodeSingleflightKey(
        absl::string_view(path.data(), path.size()), *request_body_, headers);
    net::Worker* worker = &call_.worker();
    const uint64_t call_id = call_.id();
    const uint64_t flight_id = handler_.NextFlightId();
    ProxyHandler* handler = &handler_;
    auto joined = route_.state->flights->Join(
        std::move(key),
        [worker, call_id](Flights::Outcome outcome) {
          worker->Post(
              [worker, call_id, outcome = std::move(outcome)]() mutable {
                if (net::Call* call = worker->FindCall(call_id)) {
                  if (auto* self = static_cast<ProxyCall*>(call->observer())) {
                    self->OnFlightOutcome(std::move(outcome));
                  }
                }
              });
        },
        [worker, handler, flight_id] {
          worker->Post([handler, flight_id] { handler->EndFlight(flight_id); });
        });
    const bool leader = joined.role == Flights::Role::kLeader;
    if (route_.singleflight_shadow) {
      // Shadow: count what would have been coalesced, but every call goes
      // upstream itself.
      if (!leader) {
        route_.metrics->ShadowRejections(RejectReason::kCoalesced).Increment();
        joined.membership.Leave();
        AcquireSlot();
        return;
      }
    } else {
      route_.metrics
          ->Singleflight(leader ? RouteMetrics::SingleflightRole::kLeader
                                : RouteMetrics::SingleflightRole::kFollower)
          .Increment();
    }
    membership_ = std::move(joined.membership);
    if (!leader) {
      // A follower takes no slot and is not counted by the breaker: the flight
      // is.
      ForgetTicket();
      return;
    }
    leadership_ = std::move(joined.leadership);
    flight_id_ = flight_id;
    AcquireSlot();
  }

  CircuitBreaker::Outcome BreakerOutcome(const net::CallResult& result) const {
    using Ending = net::CallResult::Ending;
    if (!result.forwarded) return CircuitBreaker::Outcome::kIgnored;
    switch (result.ending) {
      case Ending::kClientCancelled:
      case Ending::kLocalAnswer:
        return CircuitBreaker::Outcome::kIgnored;
      case Ending::kDeadlineExceeded:
      case Ending::kUpstreamFailed:
      case Ending::kUpstreamReset:
        return CircuitBreaker::Outcome::kFailure;
      case Ending::kCompleted:
        break;
    }
    return OutcomeOfCode(route_, result.upstream_grpc_code >= 0
                                     ? result.upstream_grpc_code
                                     : result.grpc_code);
  }

  ProxyHandler& handler_;
  std::shared_ptr<const Snapshot> snapshot_;  // keeps route_ alive
  const Route& route_;
  net::Call& call_;
  std::optional<std::string>
      request_body_;  // held unary request (singleflight)
  Flights::Membership membership_;
  Flights::Leadership leadership_;
  uint64_t flight_id_ = 0;
  std::optional<CircuitBreaker::Ticket> ticket_;
  ConcurrencyLimiter::Permit permit_;
  bool parked_ = false;
  ConcurrencyLimiter::WaitHandle wait_;
  Endpoint* endpoint_ = nullptr;
};

}  // namespace

ProxyHandler::ProxyHandler(net::Worker& worker,
                           std::shared_ptr<const Snapshot> snapshot)
    : worker_(worker), snapshot_(std::move(snapshot)) {}

ProxyHandler::~ProxyHandler() = default;

void ProxyHandler::AddFlight(uint64_t id, std::unique_ptr<FlightCall> flight) {
  flights_[id] = std::move(flight);
}

void ProxyHandler::EndFlight(uint64_t id) {
  // Moved out first: destroying it may post or touch the map through callbacks.
  auto it = flights_.find(id);
  if (it == flights_.end()) return;
  std::unique_ptr<FlightCall> flight = std::move(it->second);
  flights_.erase(it);
}

void ProxyHandler::OnCall(net::Call& call) {
  const Route* route = snapshot_->routes->Match(call.path());
  if (route == nullptr) {
    call.RespondLocal(
        {.grpc_code = kUnimplemented,
         .message = absl::StrCat(
             "no route for method ",
             absl::string_view(call.path().data(), call.path().size()))});
    return;
  }
  absl::Time deadline = call.client_deadline();
  if (route->timeout != absl::InfiniteDuration()) {
    deadline = std::min(deadline, call.start_time() + route->timeout);
  }
  call.SetDeadline(deadline);
  auto proxy = std::make_unique<ProxyCall>(*this, snapshot_, *route, call);
  ProxyCall* self = proxy.get();
  call.SetObserver(std::move(proxy));
  self->Start();
}

}  // namespace bulwark
