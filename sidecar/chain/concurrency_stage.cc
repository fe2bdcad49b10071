#include "sidecar/chain/concurrency_stage.h"

#include "absl/strings/str_cat.h"
#include "sidecar/config_loader.h"

namespace bulwark::chain {

std::unique_ptr<ConcurrencyLimiter> ConcurrencyStage::NewState(
    const config::v1::Concurrency& c, Clock& clock) {
  ConcurrencyLimiter::Options options{
      .max_in_flight = c.max_in_flight(),
      .max_queued = c.max_queued(),
      .queue_timeout = ToAbslDuration(c.queue_timeout()),
      .priorities = !c.priority_header().empty()};
  if (c.has_adaptive()) {
    options.adaptive = ConcurrencyLimiter::AdaptiveOptions{
        .min_limit = c.adaptive().min_limit(),
        .initial_limit = c.adaptive().initial_limit(),
        .queue_target = ToAbslDuration(c.adaptive().queue_target()),
        .queue_interval = ToAbslDuration(c.adaptive().queue_interval())};
  }
  return std::make_unique<ConcurrencyLimiter>(options, clock);
}

ConcurrencyStage::ConcurrencyStage(
    const config::v1::Concurrency& config, std::string route,
    ConcurrencyLimiter& limiter, RouteMetrics& metrics, bool exact_method,
    const absl::flat_hash_set<std::string>* unary_methods)
    : route_(std::move(route)),
      shadow_(config.shadow()),
      priority_header_(config.priority_header()),
      exact_method_(exact_method),
      unary_methods_(unary_methods),
      limiter_(limiter),
      metrics_(metrics) {}

bool ConcurrencyStage::IsSample(std::string_view path,
                                const net::CallResult& result) const {
  if (!result.forwarded) return false;
  if (result.unary_shaped || exact_method_) return true;
  return unary_methods_ != nullptr &&
         unary_methods_->contains(absl::string_view(path.data(), path.size()));
}

bool ConcurrencyStage::Overloaded(const net::UpstreamCallResult& result) {
  const int code = result.grpc_code;
  return result.deadline_exceeded ||
         code == static_cast<int>(absl::StatusCode::kDeadlineExceeded) ||
         code == static_cast<int>(absl::StatusCode::kResourceExhausted) ||
         code == static_cast<int>(absl::StatusCode::kUnavailable);
}

bool ConcurrencyStage::Overloaded(const net::CallResult& result) {
  if (result.ending == net::CallResult::Ending::kDeadlineExceeded) return true;
  const int code = result.upstream_grpc_code;
  return code == static_cast<int>(absl::StatusCode::kDeadlineExceeded) ||
         code == static_cast<int>(absl::StatusCode::kResourceExhausted) ||
         code == static_cast<int>(absl::StatusCode::kUnavailable);
}

Priority ConcurrencyStage::PriorityOf(const net::Call& call) const {
  if (priority_header_.empty()) return Priority::kNormal;
  const std::string_view value = call.header(priority_header_);
  if (value == "critical") return Priority::kCritical;
  if (value == "high") return Priority::kHigh;
  if (value == "sheddable") return Priority::kSheddable;
  return Priority::kNormal;
}

Verdict ConcurrencyStage::LoadShed(std::string_view why) const {
  if (shadow_) {
    metrics_.ShadowRejections(RejectReason::kLoadShed).Increment();
    return Verdict::Continue();
  }
  return Verdict::Answer(
      {.code = absl::StatusCode::kResourceExhausted,
       .reason = RejectReason::kLoadShed,
       .message = absl::StrCat("load shed on route ", route_, ": ",
                               absl::string_view(why.data(), why.size())),
       .pushback = limiter_.ExpectedWaitApprox()});
}

ConcurrencyStage::Acquired ConcurrencyStage::Acquire(
    TimerQueue& timers, absl::Time call_deadline, Priority priority,
    absl::FunctionRef<OnDone()> make_on_done) const {
  std::optional<ConcurrencyLimiter::AcquireResult> quick =
      limiter_.TryAcquire();
  auto acquired = quick.has_value()
                      ? *std::move(quick)
                      : limiter_.Acquire({.timers = timers,
                                          .call_deadline = call_deadline,
                                          .priority = priority,
                                          .on_done = make_on_done()});
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
    case ConcurrencyLimiter::AcquireStatus::kLoadShed:
      out.verdict = LoadShed(
          "the upstream is at its adaptive limit, or the wait would pass the "
          "call's deadline");
      return out;
  }
  return out;
}

Verdict ConcurrencyStage::OnWaitEnded(
    ConcurrencyLimiter::WaitStatus status) const {
  switch (status) {
    case ConcurrencyLimiter::WaitStatus::kGranted:
      return Verdict::Continue();
    case ConcurrencyLimiter::WaitStatus::kLoadShed:
      return LoadShed("displaced from the queue by a higher priority");
    case ConcurrencyLimiter::WaitStatus::kQueueTimeout:
      // On an adaptive route every refusal is load_shed (SPEC section 7).
      if (limiter_.adaptive())
        return LoadShed("no slot within the queue's wait");
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
  return absl::StrCat(
      "{\"limit\": ", limiter_.LimitApprox(),
      limiter_.adaptive()
          ? absl::StrCat(", \"adaptive\": true, \"max_in_flight\": ",
                         limiter_.options().max_in_flight)
          : "",
      ", \"in_flight\": ", limiter_.InFlightApprox(),
      ", \"queued\": ", limiter_.QueuedApprox(),
      ", \"max_queued\": ", limiter_.options().max_queued,
      ", \"shadow\": ", shadow_ ? "true" : "false", "}");
}

}  // namespace bulwark::chain
