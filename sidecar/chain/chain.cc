#include "sidecar/chain/chain.h"

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "sidecar/chain/attempts.h"
#include "sidecar/chain/verdict.h"

namespace bulwark::chain {
namespace {

int64_t CeilMillis(absl::Duration d) {
  if (d == absl::InfiniteDuration()) return -1;
  if (d <= absl::ZeroDuration()) return 0;
  return absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1)));
}

// How a forwarded (or answered) downstream call went, for the breaker.
UpstreamOutcome OutcomeOfCall(const net::CallResult& result) {
  using Ending = net::CallResult::Ending;
  using Kind = UpstreamOutcome::Kind;
  UpstreamOutcome outcome{.upstream_time = result.upstream_duration};
  switch (result.ending) {
    case Ending::kLocalAnswer:
      outcome.kind = Kind::kNotSent;
      break;
    case Ending::kCompleted:
      outcome.kind = result.forwarded ? Kind::kAnswered : Kind::kNotSent;
      outcome.grpc_code = result.upstream_grpc_code >= 0
                              ? result.upstream_grpc_code
                              : result.grpc_code;
      break;
    case Ending::kClientCancelled:
      outcome.kind = result.forwarded ? Kind::kClientCancelled : Kind::kNotSent;
      break;
    case Ending::kDeadlineExceeded:
      outcome.kind = result.forwarded ? Kind::kDeadline : Kind::kNotSent;
      break;
    case Ending::kUpstreamReset:
    case Ending::kUpstreamFailed:
      // Unreachable (refused, reset, a connect held back by backoff) counts
      // whether or not a stream was opened.
      outcome.kind = Kind::kTransportFailure;
      break;
    case Ending::kUpstreamRefused:
      outcome.kind = Kind::kRefused;
      break;
  }
  return outcome;
}

}  // namespace

// The upstream call of a singleflight flight: owned by the leader's worker's
// ProxyHandler, not by a caller. It settles what an upstream call holds
// (breaker ticket, permit, endpoint load) and ends the flight with its
// captured answer.
class FlightCall final {
 public:
  FlightCall(ProxyHandler& handler, uint64_t id,
             std::shared_ptr<const Snapshot> snapshot, const Route& route,
             Flights::Leadership leadership,
             std::optional<CircuitBreaker::Ticket> ticket,
             ConcurrencyLimiter::Permit permit, Endpoint* endpoint,
             net::UpstreamRequest request)
      : handler_(handler),
        id_(id),
        snapshot_(std::move(snapshot)),
        route_(route),
        leadership_(std::move(leadership)),
        permit_(std::move(permit)) {
    const bool retries =
        route_.upstream->RetriesHeld(request.path, request.body.size());
    attempts_ = std::make_unique<Attempts>(
        handler_.executor(), route_, endpoint, ticket, std::move(request),
        retries, snapshot_->config.proto.listener().max_message_bytes(),
        [this](const net::UpstreamCallResult& result) { OnFinish(result); });
  }

  void Start() { attempts_->Start(); }

  // Every caller left: the attempts are cancelled (when this is destroyed).
  void Cancelled(bool deadline_expired) {
    attempts_->CallLeft(deadline_expired);
  }

 private:
  void OnFinish(const net::UpstreamCallResult& result) {
    // A flight is a unary call: a latency sample of an adaptive limit.
    permit_.ReleaseSample(ConcurrencyStage::Overloaded(result));
    std::shared_ptr<net::CapturedResponse> response = result.response;
    if (result.too_large || response == nullptr) {
      response = std::make_shared<net::CapturedResponse>();
      response->too_large_to_share = true;
    }
    leadership_.Complete(std::move(response));
    handler_.EndFlight(id_, false, /*finished=*/true);  // destroys this
  }

  ProxyHandler& handler_;
  const uint64_t id_;
  std::shared_ptr<const Snapshot> snapshot_;  // keeps route_ alive
  const Route& route_;
  Flights::Leadership leadership_;
  ConcurrencyLimiter::Permit permit_;
  std::unique_ptr<Attempts> attempts_;
};

namespace {

// A worker's singleflight key buffer keeps at most this much capacity between
// calls (SingleflightStage's default max_request_bytes, plus headers).
constexpr size_t kKeyBufferKeptBytes = 80 * 1024;

// The per-call state of the chain; the transport owns it (Call::SetObserver)
// and calls OnClose once when the downstream stream ends.
class ChainCall final : public net::CallObserver {
 public:
  ChainCall(ProxyHandler& handler, std::shared_ptr<const Snapshot> snapshot,
            const Route& route, net::Call& call, size_t path_hash)
      : handler_(handler),
        snapshot_(std::move(snapshot)),
        route_(route),
        call_(call),
        path_hash_(path_hash),
        executor_(call.executor()) {
    route_.state->active_calls.fetch_add(1, std::memory_order_relaxed);
  }

  ~ChainCall() override {
    CancelWaits();  // shutdown with a waiter queued
    route_.state->active_calls.fetch_sub(1, std::memory_order_relaxed);
  }

  void Start() {
    if (route_.state->retry_budget != nullptr) {
      route_.state->retry_budget->RecordCall(Now());
    }
    if (route_.rate_limit != nullptr) {
      Verdict verdict = route_.rate_limit->Decide(call_, Now());
      if (verdict.kind == Verdict::Kind::kAnswer) {
        Answer(std::move(verdict.rejection));
        return;
      }
    }
    RunFromBreaker();
  }

  void OnClose(const net::CallResult& result) override {
    CancelWaits();
    const absl::Time now = Now();
    if (attempts_ != nullptr) {
      // Left before an answer (or answered: then nothing is in flight).
      attempts_->CallLeft(result.ending ==
                          net::CallResult::Ending::kDeadlineExceeded);
      attempts_.reset();
    }
    RouteMetrics& metrics = *route_.metrics;
    if (result.reason == "message_too_large") {
      metrics.Rejections(RejectReason::kMessageTooLarge).Increment();
      route_.state->recent.AddRejection(now, RejectReason::kMessageTooLarge);
    }
    if (route_.breaker != nullptr) {
      route_.breaker->Settle(ticket_, OutcomeOfCall(result), now);
    }
    // A caller of a flight leaves alone; on its deadline, the flight's
    // outcome (if it was the last) is a deadline expiry.
    membership_.Leave(result.ending ==
                      net::CallResult::Ending::kDeadlineExceeded);
    if (endpoint_ != nullptr) {
      endpoint_->load.in_flight.fetch_sub(1, std::memory_order_relaxed);
      route_.upstream->RecordOutcome(*endpoint_, OutcomeOfCall(result), now,
                                     /*latency_sample=*/result.unary_shaped);
      if (result.forwarded) {
        const int upstream_code = result.upstream_grpc_code >= 0
                                      ? result.upstream_grpc_code
                                      : result.grpc_code;
        if (endpoint_->metrics != nullptr) {
          endpoint_->metrics->UpstreamRequests(upstream_code).Increment();
        }
        if (route_.cluster->metrics() != nullptr) {
          route_.cluster->metrics()->UpstreamDuration().Observe(
              absl::ToDoubleSeconds(result.upstream_duration));
        }
      }
    }
    metrics.Requests(result.grpc_code).Increment();
    route_.state->recent.AddCall(now);
    const double seconds = absl::ToDoubleSeconds(now - call_.start_time());
    metrics.Duration().Observe(seconds);
    MethodMetrics& method = route_.MethodMetricsFor(call_.path(), path_hash_);
    method.Requests(result.grpc_code).Increment();
    method.Duration().Observe(seconds);
    if (snapshot_->access_log != nullptr &&
        handler_.KeepInAccessLog(snapshot_->config.proto.access_log(),
                                 result.grpc_code == 0)) {
      WriteAccessLog(result, now);
    }
    if (permit_.Held() && route_.concurrency->IsSample(call_.path(), result)) {
      permit_.ReleaseSample(ConcurrencyStage::Overloaded(result));
    }
    permit_.Release();
  }

  // Continuation: the flight this call waited on ended.
  void OnFlightOutcome(Flights::Outcome outcome) {
    membership_ = Flights::Membership();
    if (outcome.end == FlightEnd::kCompleted &&
        !outcome.result->too_large_to_share) {
      call_.RespondWith(std::move(outcome.result));
      return;
    }
    // Completed too large to share: this caller's own upstream call. Or the
    // leader left before going upstream: join again (possibly as leader).
    if (outcome.end == FlightEnd::kCompleted) solo_ = true;
    RunFromBreaker();
  }

  // Continuation: a booked wait for a concurrency slot ended.
  void OnSlot(uint64_t acquisition, ConcurrencyStage::WaitResult result) {
    if (acquisition != acquisition_) return;  // a stale booking: drop it
    const ConcurrencyStage& stage = *route_.concurrency;
    const Verdict verdict = stage.OnWaitEnded(result.status);
    wait_.reset();
    if (!parked_) {
      // Shadow: the call went on already; a granted slot is held until it
      // ends, as enforcing would.
      if (result.permit.Held()) permit_ = std::move(result.permit);
      return;
    }
    parked_ = false;
    if (verdict.kind == Verdict::Kind::kAnswer) {
      Answer(verdict.rejection);
      return;
    }
    permit_ = std::move(result.permit);
    RunUpstream();
  }

 private:
  absl::Time Now() { return executor_.clock().Now(); }

  void CancelWaits() {
    if (wait_.has_value()) {
      route_.concurrency->Cancel(*wait_);
      wait_.reset();
      parked_ = false;
    }
  }

  void RunFromBreaker() {
    if (route_.breaker != nullptr) {
      Verdict verdict = route_.breaker->Admit(Now(), ticket_);
      if (verdict.kind == Verdict::Kind::kAnswer) {
        Answer(std::move(verdict.rejection));
        return;
      }
    }
    if (route_.singleflight != nullptr && !solo_ &&
        route_.singleflight->Coalescable(call_.path())) {
      if (body_.has_value()) {
        JoinFlight();
        return;
      }
      call_.CollectRequest(route_.singleflight->max_request_bytes(),
                           [this](std::optional<std::string> body) {
                             OnRequestHeld(std::move(body));
                           });
      return;
    }
    if (!body_.has_value() && !retry_declined_ &&
        route_.upstream->Retries(call_.path())) {
      // Held whole to be sent again: retried calls are unary, so holding
      // costs nothing; a larger request gets one attempt, streamed.
      call_.CollectRequest(route_.upstream->MaxRetriedRequestBytes(),
                           [this](std::optional<std::string> body) {
                             if (body.has_value()) {
                               body_ = std::move(body);
                             } else {
                               retry_declined_ = true;
                             }
                             RunConcurrency();
                           });
      return;
    }
    RunConcurrency();
  }

  void OnRequestHeld(std::optional<std::string> body) {
    if (!body.has_value()) {
      // Larger than max_request_bytes: never held, a plain call.
      solo_ = true;
      RunConcurrency();
      return;
    }
    body_ = std::move(body);
    JoinFlight();
  }

  void JoinFlight() {
    const SingleflightStage& stage = *route_.singleflight;
    std::string& key = handler_.key_buffer();
    stage.KeyInto(call_, *body_, key);
    if (stage.shadow() && stage.flights().HasOpenFlight(key)) {
      // Shadow, and an identical call's flight is open: this one would have
      // followed it.
      ReleaseKeyBuffer(key);
      RunShadowFollower();
      return;
    }
    net::Executor* executor = &executor_;
    const uint64_t call_id = call_.id();
    const uint64_t flight_id = handler_.NextFlightId();
    ProxyHandler* handler = &handler_;
    auto joined = stage.flights().Join(
        key,
        [executor, call_id](Flights::Outcome outcome) {
          executor->Post(
              [executor, call_id, outcome = std::move(outcome)]() mutable {
                if (net::Call* call = executor->FindCall(call_id)) {
                  if (auto* self = static_cast<ChainCall*>(call->observer())) {
                    self->OnFlightOutcome(std::move(outcome));
                  }
                }
              });
        },
        [&]() -> Flights::OnUnwanted {
          return [executor, handler, flight_id,
                  state = route_.state](bool deadline_expired) {
            executor->Post([handler, flight_id, deadline_expired, state] {
              handler->EndFlight(flight_id, deadline_expired);
            });
          };
        });
    ReleaseKeyBuffer(key);
    const bool leader = joined.role == Flights::Role::kLeader;
    if (stage.shadow()) {
      // Shadow: count what would have been coalesced; every call goes
      // upstream on its own. The leader keeps its flight open while its call
      // runs, so identical calls meanwhile count as coalesced.
      if (!leader) {
        RunShadowFollower();  // an identical call opened its flight meanwhile
        return;
      }
      solo_ = true;
      membership_ = std::move(joined.membership);
      shadow_leadership_ = std::move(joined.leadership);
      RunConcurrency();
      return;
    }
    stage.metrics()
        .Singleflight(leader ? RouteMetrics::SingleflightRole::kLeader
                             : RouteMetrics::SingleflightRole::kFollower)
        .Increment();
    flight_role_ = leader ? "leader" : "follower";
    membership_ = std::move(joined.membership);
    if (!leader) {
      route_.state->recent.AddCoalesced(Now());
      // A follower takes no slot and is not counted by the breaker: the
      // flight is.
      if (route_.breaker != nullptr) route_.breaker->Forget(ticket_);
      return;
    }
    leadership_ = std::move(joined.leadership);
    flight_id_ = flight_id;
    RunConcurrency();
  }

  // Shadow mode, a call that would have followed an open flight: counted as
  // coalesced, it goes upstream on its own.
  void RunShadowFollower() {
    route_.singleflight->metrics()
        .ShadowRejections(RejectReason::kCoalesced)
        .Increment();
    solo_ = true;
    RunConcurrency();
  }

  // A key buffer as large as the largest request held stays only while it is
  // small.
  static void ReleaseKeyBuffer(std::string& key) {
    if (key.capacity() > kKeyBufferKeptBytes) std::string().swap(key);
  }

  void RunConcurrency() {
    if (route_.concurrency == nullptr) {
      RunUpstream();
      return;
    }
    net::Executor* executor = &executor_;
    const uint64_t call_id = call_.id();
    const uint64_t acquisition = ++acquisition_;
    auto acquired = route_.concurrency->Acquire(
        executor_.timers(), call_.deadline(),
        route_.concurrency->PriorityOf(call_),
        [&]() -> ConcurrencyStage::OnDone {
          return [executor, call_id, acquisition, state = route_.state](
                     ConcurrencyStage::WaitResult result) mutable {
            // Any thread: hop to the call's worker. If the call is gone, the
            // permit in `result` is released there (`state` keeps the limiter
            // alive until then).
            executor->Post([executor, call_id, acquisition,
                            state = std::move(state),
                            result = std::move(result)]() mutable {
              if (net::Call* call = executor->FindCall(call_id)) {
                if (auto* self = static_cast<ChainCall*>(call->observer())) {
                  self->OnSlot(acquisition, std::move(result));
                }
              }
            });
          };
        });
    wait_ = acquired.wait;
    switch (acquired.verdict.kind) {
      case Verdict::Kind::kContinue:
        permit_ = std::move(acquired.permit);
        RunUpstream();
        return;
      case Verdict::Kind::kPark:
        parked_ = true;
        return;
      case Verdict::Kind::kAnswer:
        Answer(std::move(acquired.verdict.rejection));
        return;
    }
  }

  void RunUpstream() {
    Endpoint* endpoint = route_.upstream->Pick(executor_.clock());
    if (endpoint == nullptr) {
      Answer(route_.upstream->NoHealthyEndpoint());
      return;
    }
    answering_endpoint_ = endpoint->resolved;
    if (leadership_.Held()) {
      // The flight's upstream call runs to the route timeout (callers leave
      // at their own deadlines; the last one leaving cancels it).
      const absl::Time deadline = route_.timeout == absl::InfiniteDuration()
                                      ? absl::InfiniteFuture()
                                      : call_.start_time() + route_.timeout;
      auto flight = std::make_unique<FlightCall>(
          handler_, flight_id_, snapshot_, route_, std::move(leadership_),
          ticket_, std::move(permit_), endpoint,
          net::UpstreamRequest{.path = std::string(call_.path()),
                               .headers = call_.request_headers(),
                               .body = *body_,
                               .deadline = deadline});
      ticket_.reset();
      FlightCall* raw = flight.get();
      handler_.AddFlight(flight_id_, std::move(flight));
      raw->Start();
      return;
    }
    if (body_.has_value() &&
        route_.upstream->RetriesHeld(call_.path(), body_->size())) {
      RunAttempts(endpoint);
      return;
    }
    if (route_.metrics != nullptr) {
      route_.metrics->UpstreamAttempts(RouteMetrics::AttemptKind::kFirst)
          .Increment();
    }
    endpoint_ = endpoint;
    endpoint_->load.in_flight.fetch_add(1, std::memory_order_relaxed);
    if (body_.has_value()) {
      std::string body = std::move(*body_);
      body_.reset();
      call_.ForwardHeld(endpoint->upstream, std::move(body));
      return;
    }
    call_.Forward(endpoint->upstream);
  }

  // Retries and hedges: the attempts answer the call with a captured
  // response (nothing reaches the client before one is chosen).
  void RunAttempts(Endpoint* first) {
    attempts_ = std::make_unique<Attempts>(
        executor_, route_, first, ticket_,
        net::UpstreamRequest{.path = std::string(call_.path()),
                             .headers = call_.request_headers(),
                             .body = std::move(*body_),
                             .deadline = call_.deadline()},
        /*retries=*/true,
        snapshot_->config.proto.listener().max_message_bytes(),
        [this](const net::UpstreamCallResult& result) {
          OnAttemptsDone(result);
        });
    ticket_.reset();
    body_.reset();
    attempts_->Start();
  }

  void OnAttemptsDone(const net::UpstreamCallResult& result) {
    attempts_sent_ = attempts_->sent();
    if (Endpoint* e = attempts_->answering_endpoint(); e != nullptr) {
      answering_endpoint_ = e->resolved;
    }
    attempts_upstream_time_ = result.duration;
    // A retried call is unary: a latency sample of an adaptive limit.
    permit_.ReleaseSample(ConcurrencyStage::Overloaded(result));
    std::shared_ptr<const net::CapturedResponse> response = result.response;
    if (response == nullptr) {
      auto made = std::make_shared<net::CapturedResponse>();
      made->headers = {{":status", "200"},
                       {"content-type", "application/grpc"},
                       {"grpc-status", std::to_string(result.grpc_code)}};
      made->trailers_only = true;
      made->grpc_code = result.grpc_code;
      response = std::move(made);
    }
    call_.RespondWith(std::move(response));  // may close the call: last
  }

  void WriteAccessLog(const net::CallResult& result, absl::Time now) {
    std::string_view method = call_.path();
    if (!method.empty() && method.front() == '/') method.remove_prefix(1);
    const bool leader = flight_role_ == "leader";
    AccessLogRecord record{
        .time = absl::Now(),
        .route = route_.name,
        .method = method,
        .peer = call_.peer(),
        .endpoint = answering_endpoint_,
        .grpc_code = result.grpc_code,
        .reason = !answered_reason_.empty() ? answered_reason_ : result.reason,
        .duration = now - call_.start_time(),
        .upstream = result.forwarded ? std::optional<absl::Duration>(
                                           result.upstream_duration)
                    : attempts_sent_ > 0
                        ? std::optional<absl::Duration>(attempts_upstream_time_)
                        : std::nullopt,
        .attempts = attempts_sent_ > 0           ? attempts_sent_
                    : result.forwarded || leader ? 1
                                                 : 0,
        .singleflight = flight_role_,
        .request_bytes = result.request_bytes,
        .response_bytes = result.response_bytes,
        .trace_id = TraceIdOf(call_.header("traceparent"))};
    snapshot_->access_log->Write(FormatAccessLogLine(record));
  }

  // The only place a call is answered by the sidecar.
  void Answer(const Rejection& rejection) {
    if (route_.breaker != nullptr) route_.breaker->Forget(ticket_);
    permit_.Release();
    if (leadership_.Held()) {
      // Rejected while leading, before going upstream: the followers run the
      // chain again, one of them as the new leader; this caller's answer is
      // its own.
      membership_.Leave();
      leadership_.Abandon();
    }
    std::string_view reason;
    if (rejection.reason.has_value()) {
      route_.metrics->Rejections(*rejection.reason).Increment();
      route_.state->recent.AddRejection(Now(), *rejection.reason);
      reason = RejectReasonName(*rejection.reason);
      answered_reason_ = reason;
    }
    call_.RespondLocal({.grpc_code = static_cast<int>(rejection.code),
                        .message = rejection.message,
                        .reason = reason,
                        .retry_pushback_ms = CeilMillis(rejection.pushback),
                        .route = route_.name});
  }

  ProxyHandler& handler_;
  std::shared_ptr<const Snapshot> snapshot_;  // keeps route_ alive
  const Route& route_;
  net::Call& call_;
  const size_t path_hash_;  // HashPath(call_.path())
  net::Executor& executor_;
  std::optional<std::string> body_;  // a held unary request (singleflight)
  bool solo_ = false;                // held, but not (or no longer) coalesced
  Flights::Membership membership_;
  Flights::Leadership leadership_;         // leading, until upstream
  Flights::Leadership shadow_leadership_;  // a shadow flight's, while it runs
  uint64_t flight_id_ = 0;
  std::optional<CircuitBreaker::Ticket> ticket_;
  ConcurrencyLimiter::Permit permit_;
  std::optional<ConcurrencyLimiter::WaitHandle> wait_;  // booked in the queue
  bool parked_ = false;       // waiting for that booking (enforcing)
  uint64_t acquisition_ = 0;  // tells a stale booking's answer apart
  Endpoint* endpoint_ = nullptr;
  // Retries: the attempts in progress, a request too large to hold for them,
  // and (for the access log) how many were sent and the answer's upstream
  // time.
  std::unique_ptr<Attempts> attempts_;
  bool retry_declined_ = false;
  int attempts_sent_ = 0;
  absl::Duration attempts_upstream_time_ = absl::ZeroDuration();
  // For the access log: the endpoint the call (or its flight) went to, the
  // reason the chain answered with, and the singleflight role.
  std::string_view answering_endpoint_;
  std::string_view answered_reason_;
  std::string_view flight_role_;
};

}  // namespace

ProxyHandler::ProxyHandler(net::Executor& executor,
                           std::shared_ptr<const Snapshot> snapshot)
    : executor_(executor), snapshot_(std::move(snapshot)) {}

ProxyHandler::~ProxyHandler() = default;

void ProxyHandler::AddFlight(uint64_t id, std::unique_ptr<FlightCall> flight) {
  flights_[id] = std::move(flight);
}

void ProxyHandler::EndFlight(uint64_t id, bool deadline_expired,
                             bool finished) {
  // Moved out first: destroying it may post or touch the map through callbacks.
  auto it = flights_.find(id);
  if (it == flights_.end()) return;
  std::unique_ptr<FlightCall> flight = std::move(it->second);
  flights_.erase(it);
  if (!finished) flight->Cancelled(deadline_expired);
}

void ProxyHandler::OnCall(net::Call& call) {
  const size_t path_hash = HashPath(call.path());
  const Route* route = snapshot_->routes->Match(call.path(), path_hash);
  if (route == nullptr) {
    call.RespondLocal(
        {.grpc_code = static_cast<int>(absl::StatusCode::kUnimplemented),
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
  auto chain =
      std::make_unique<ChainCall>(*this, snapshot_, *route, call, path_hash);
  ChainCall* self = chain.get();
  call.SetObserver(std::move(chain));
  self->Start();
}

}  // namespace bulwark::chain
