#include "sidecar/chain/concurrency_stage.h"

#include "absl/strings/str_cat.h"
#include "sidecar/config_loader.h"

namespace bulwark::chain {

std::unique_ptr<ConcurrencyLimiter> ConcurrencyStage::NewState(
    const config::v1::Concurrency& c, Clock& clock) {
  return std::make_unique<ConcurrencyLimiter>(
      ConcurrencyLimiter::Options{
          .max_in_flight = c.max_in_flight(),
          .max_queued = c.max_queued(),
          .queue_timeout = ToAbslDuration(c.queue_timeout())},
      clock);
}

ConcurrencyStage::ConcurrencyStage(const config::v1::Concurrency& config,
                                   std::string route,
                                   ConcurrencyLimiter& limiter,
                                   RouteMetrics& metrics)
    : route_(std::move(route)),
      shadow_(config.shadow()),
      limiter_(limiter),
      metrics_(metrics) {}

ConcurrencyStage::Acquired ConcurrencyStage::Acquire(
    TimerQueue& timers, absl::Time call_deadline,
    absl::AnyInvocable<void(WaitResult)> on_done) const {
  auto acquired = limiter_.Acquire({.timers = timers,
                                    .call_deadline = call_deadline,
                                    .on_done = std::move(on_done)});
  Acquired out;
  switch (acquired.status) {
    case ConcurrencyLimiter::AcquireStatus::kGranted:
      out.permit = std::move(acquired.permit);
      return out;
    case ConcurrencyLimiter::AcquireStatus::kParked:
      out.wait = acquired.wait;
      if (!shadow_) out.verdict = Verdict::Park();
      return out;
    case ConcurrencyLimiter::AcquireStatus::kConcurrencyLimit:
      if (shadow_) {
        metrics_.ShadowRejections(RejectReason::kConcurrencyLimit).Increment();
        return out;
      }
      out.verdict = Verdict::Answer(
          {.code = absl::StatusCode::kResourceExhausted,
           .reason = RejectReason::kConcurrencyLimit,
           .message = absl::StrCat("concurrency limit of route ", route_,
                                   " reached")});
      return out;
  }
  return out;
}

Verdict ConcurrencyStage::OnWaitEnded(
    ConcurrencyLimiter::WaitStatus status) const {
  switch (status) {
    case ConcurrencyLimiter::WaitStatus::kGranted:
      return Verdict::Continue();
    case ConcurrencyLimiter::WaitStatus::kQueueTimeout:
      if (shadow_) {
        metrics_.ShadowRejections(RejectReason::kQueueTimeout).Increment();
        return Verdict::Continue();
      }
      return Verdict::Answer(
          {.code = absl::StatusCode::kResourceExhausted,
           .reason = RejectReason::kQueueTimeout,
           .message = absl::StrCat(
               "no concurrency slot on route ", route_, " within ",
               absl::FormatDuration(limiter_.options().queue_timeout))});
    case ConcurrencyLimiter::WaitStatus::kDeadlineExceeded:
      if (shadow_) return Verdict::Continue();
      return Verdict::Answer(
          {.code = absl::StatusCode::kDeadlineExceeded,
           .message =
               "deadline exceeded while waiting for a concurrency slot"});
  }
  return Verdict::Continue();
}

std::string ConcurrencyStage::DescribeJson() const {
  return absl::StrCat("{\"limit\": ", limiter_.options().max_in_flight,
                      ", \"in_flight\": ", limiter_.InFlightApprox(),
                      ", \"queued\": ", limiter_.QueuedApprox(),
                      ", \"max_queued\": ", limiter_.options().max_queued,
                      ", \"shadow\": ", shadow_ ? "true" : "false", "}");
}

}  // namespace bulwark::chain
