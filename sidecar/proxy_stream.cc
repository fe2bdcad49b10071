#include "sidecar/proxy_stream.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "sidecar/log.h"

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

// The per-call state of the chain; the transport owns it (Call::SetObserver) and calls
// OnClose once when the downstream stream ends.
class ProxyCall final : public net::CallObserver {
 public:
  ProxyCall(std::shared_ptr<const Snapshot> snapshot, const Route& route, net::Call& call)
      : snapshot_(std::move(snapshot)), route_(route), call_(call) {}

  ~ProxyCall() override {
    if (parked_) route_.state->limiter->Cancel(wait_);  // shutdown with a waiter queued
  }

  // Runs the chain from the rate limiter on.
  void Start() {
    const absl::Time now = absl::Now();
    if (!CheckRateLimit(now)) return;
    if (!CheckBreaker(now)) return;
    AcquireSlot();
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
        const int upstream_code =
            result.upstream_grpc_code >= 0 ? result.upstream_grpc_code : result.grpc_code;
        endpoint_->metrics->UpstreamRequests(upstream_code).Increment();
        route_.cluster->metrics()->UpstreamDuration().Observe(
            absl::ToDoubleSeconds(result.upstream_duration));
      }
    }
    metrics.Requests(result.grpc_code).Increment();
    metrics.Duration().Observe(absl::ToDoubleSeconds(now - call_.start_time()));
    permit_.Release();
  }

  void Reject(int code, RejectReason reason, std::string message, int64_t pushback_ms = -1) {
    route_.metrics->Rejections(reason).Increment();
    call_.RespondLocal({.grpc_code = code,
                        .message = std::move(message),
                        .reason = RejectReasonName(reason),
                        .retry_pushback_ms = pushback_ms});
  }

  // Continuation of a parked call, on its own worker.
  void OnSlot(ConcurrencyLimiter::WaitResult result) {
    parked_ = false;
    route_.metrics->Queued().Set(route_.state->limiter->QueuedApprox());
    switch (result.status) {
      case ConcurrencyLimiter::WaitStatus::kGranted:
        permit_ = std::move(result.permit);
        PickAndForward();
        return;
      case ConcurrencyLimiter::WaitStatus::kQueueTimeout:
        if (ticket_.has_value()) {
          route_.state->breaker->Record(*ticket_, CircuitBreaker::Outcome::kIgnored);
          ticket_.reset();
        }
        Reject(kResourceExhausted, RejectReason::kQueueTimeout,
               absl::StrCat("no concurrency slot on route ", route_.name, " within ",
                            absl::FormatDuration(route_.state->limiter->options().queue_timeout)));
        return;
      case ConcurrencyLimiter::WaitStatus::kDeadlineExceeded:
        if (ticket_.has_value()) {
          route_.state->breaker->Record(*ticket_, CircuitBreaker::Outcome::kIgnored);
          ticket_.reset();
        }
        call_.RespondLocal({.grpc_code = kDeadlineExceeded,
                            .message = "deadline exceeded while waiting for a concurrency slot"});
        return;
    }
  }

 private:
  bool CheckRateLimit(absl::Time now) {
    RouteState& state = *route_.state;
    if (state.bucket == nullptr && state.keyed == nullptr) return true;
    TakeResult taken;
    if (state.bucket != nullptr) {
      taken = state.bucket->TryTake(now);
    } else if (std::string_view key = call_.header(route_.key_header); !key.empty()) {
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
           // Any thread: hop to the call's worker; if the call is gone the permit in
           // `result` is released by its destructor there.
           worker->Post([worker, call_id, result = std::move(result)]() mutable {
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
        route_.metrics->InFlight().Set(limiter->InFlightApprox());
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
        route_.metrics->Queued().Set(limiter->QueuedApprox());
        return;
      case ConcurrencyLimiter::AcquireStatus::kConcurrencyLimit:
        if (route_.concurrency_shadow) {
          route_.metrics->ShadowRejections(RejectReason::kConcurrencyLimit).Increment();
          PickAndForward();
          return;
        }
        if (ticket_.has_value()) {
          route_.state->breaker->Record(*ticket_, CircuitBreaker::Outcome::kIgnored);
          ticket_.reset();
        }
        Reject(kResourceExhausted, RejectReason::kConcurrencyLimit,
               absl::StrCat("concurrency limit of route ", route_.name, " reached"));
        return;
    }
  }

  void PickAndForward() {
    endpoint_ = route_.cluster->Pick();
    if (endpoint_ == nullptr) {
      if (ticket_.has_value()) {
        route_.state->breaker->Record(*ticket_, CircuitBreaker::Outcome::kIgnored);
        ticket_.reset();
      }
      permit_.Release();
      Reject(kUnavailable, RejectReason::kNoHealthyEndpoint,
             absl::StrCat("cluster ", route_.cluster->name(), " has no healthy endpoint"));
      return;
    }
    endpoint_->load.in_flight.fetch_add(1, std::memory_order_relaxed);
    call_.Forward(endpoint_->upstream);
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
    const int code = result.upstream_grpc_code >= 0 ? result.upstream_grpc_code
                                                    : result.grpc_code;
    if (code == kCancelled) return CircuitBreaker::Outcome::kIgnored;
    return code >= 0 && code < 17 && route_.failure_codes.test(code)
               ? CircuitBreaker::Outcome::kFailure
               : CircuitBreaker::Outcome::kSuccess;
  }

  std::shared_ptr<const Snapshot> snapshot_;  // keeps route_ alive
  const Route& route_;
  net::Call& call_;
  std::optional<CircuitBreaker::Ticket> ticket_;
  ConcurrencyLimiter::Permit permit_;
  bool parked_ = false;
  ConcurrencyLimiter::WaitHandle wait_;
  Endpoint* endpoint_ = nullptr;
};

}  // namespace

void ProxyHandler::OnCall(net::Call& call) {
  const Route* route = snapshot_->routes->Match(call.path());
  if (route == nullptr) {
    call.RespondLocal({.grpc_code = kUnimplemented,
                       .message = absl::StrCat("no route for method ",
                                               absl::string_view(call.path().data(),
                                                                 call.path().size()))});
    return;
  }
  absl::Time deadline = call.client_deadline();
  if (route->timeout != absl::InfiniteDuration()) {
    deadline = std::min(deadline, call.start_time() + route->timeout);
  }
  call.SetDeadline(deadline);
  auto proxy = std::make_unique<ProxyCall>(snapshot_, *route, call);
  ProxyCall* self = proxy.get();
  call.SetObserver(std::move(proxy));
  self->Start();
}

}  // namespace bulwark
