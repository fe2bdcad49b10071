#include "sidecar/health_checker.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.pb.h"
#include "sidecar/config_loader.h"
#include "sidecar/log.h"
#include "sidecar/net/upstream_call.h"
#include "sidecar/net/worker.h"

namespace bulwark {
namespace health_wire {

std::string FramedRequest(std::string_view service) {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(std::string(service));
  const std::string message = request.SerializeAsString();
  const auto n = static_cast<uint32_t>(message.size());
  std::string framed = {0, static_cast<char>(n >> 24),
                        static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                        static_cast<char>(n)};
  return framed + message;
}

std::optional<int> ParseStatus(std::string_view payload) {
  grpc::health::v1::HealthCheckResponse response;
  if (!response.ParseFromArray(payload.data(),
                               static_cast<int>(payload.size()))) {
    return std::nullopt;
  }
  return static_cast<int>(response.status());
}

}  // namespace health_wire

// --- the transport over the data plane ---------------------------------------

namespace {

net::UpstreamRequest HealthRequest(const char* method, std::string_view service,
                                   absl::Time deadline) {
  net::UpstreamRequest request;
  request.path = absl::StrCat("/grpc.health.v1.Health/", method);
  request.headers = {{"content-type", "application/grpc"},
                     {"te", "trailers"},
                     {"user-agent", "bulwark-health-check"}};
  request.body = health_wire::FramedRequest(service);
  request.deadline = deadline;
  return request;
}

bool IsServing(std::string_view payload) {
  return health_wire::ParseStatus(payload) == health_wire::kServing;
}

class CheckProbe final : public HealthProbeTransport::Handle,
                         public net::UpstreamCallListener {
 public:
  explicit CheckProbe(absl::AnyInvocable<void(ProbeResult)> done)
      : done_(std::move(done)) {}

  void Begin(net::Worker& worker, const Endpoint& endpoint,
             net::UpstreamRequest request) {
    call_ =
        net::UpstreamCall::Start(worker, endpoint.upstream, std::move(request),
                                 this, {.use = net::UpstreamUse::kHealthProbe});
  }

  void OnMessage(std::string_view payload) override {
    serving_ = IsServing(payload);
  }

  void OnFinish(const net::UpstreamCallResult& result) override {
    ProbeResult verdict = ProbeResult::kFailure;
    // Our own deadline, or the upstream's answer to the grpc-timeout we sent.
    if (result.deadline_exceeded ||
        (result.grpc_code == 4 && !result.transport_failure)) {
      verdict = ProbeResult::kTimeout;
    } else if (result.grpc_code == 0 && serving_) {
      verdict = ProbeResult::kSuccess;
    }
    // `done` may destroy this (and the call, which allows it from OnFinish).
    auto done = std::move(done_);
    done(verdict);
  }

 private:
  absl::AnyInvocable<void(ProbeResult)> done_;
  bool serving_ = false;
  std::unique_ptr<net::UpstreamCall> call_;
};

class WatchStream final : public HealthProbeTransport::Handle,
                          public net::UpstreamCallListener {
 public:
  WatchStream(absl::AnyInvocable<void(bool)> on_status,
              absl::AnyInvocable<void()> on_end)
      : on_status_(std::move(on_status)), on_end_(std::move(on_end)) {}

  void Begin(net::Worker& worker, const Endpoint& endpoint,
             net::UpstreamRequest request) {
    // The stream lives as long as the endpoint is watched: no byte limit.
    call_ = net::UpstreamCall::Start(
        worker, endpoint.upstream, std::move(request), this,
        {.use = net::UpstreamUse::kHealthProbe,
         .max_response_bytes = std::numeric_limits<uint64_t>::max() / 2});
  }

  void OnMessage(std::string_view payload) override {
    on_status_(IsServing(payload));
  }

  void OnFinish(const net::UpstreamCallResult& /*result*/) override {
    auto on_end = std::move(on_end_);
    on_end();  // may destroy this
  }

 private:
  absl::AnyInvocable<void(bool)> on_status_;
  absl::AnyInvocable<void()> on_end_;
  std::unique_ptr<net::UpstreamCall> call_;
};

const char* ResultName(ProbeResult result) {
  switch (result) {
    case ProbeResult::kSuccess:
      return "success";
    case ProbeResult::kFailure:
      return "failure";
    case ProbeResult::kTimeout:
      return "timeout";
  }
  return "unknown";
}

// "10.0.0.4:50051", or "orders:50051 (10.0.0.4:50051)" for an address of a
// DNS name.
std::string EndpointName(const Endpoint& endpoint) {
  const std::string configured = endpoint.address.ToString();
  if (endpoint.resolved.empty() || endpoint.resolved == configured) {
    return configured;
  }
  return absl::StrCat(configured, " (", endpoint.resolved, ")");
}

EndpointMetrics::HealthCheckResult MetricResult(ProbeResult result) {
  switch (result) {
    case ProbeResult::kSuccess:
      return EndpointMetrics::HealthCheckResult::kSuccess;
    case ProbeResult::kTimeout:
      return EndpointMetrics::HealthCheckResult::kTimeout;
    default:
      return EndpointMetrics::HealthCheckResult::kFailure;
  }
}

absl::Duration PositiveOr(const google::protobuf::Duration& value,
                          absl::Duration fallback) {
  const absl::Duration d = ToAbslDuration(value);
  return d > absl::ZeroDuration() ? d : fallback;
}

constexpr absl::Duration kInitialWatchBackoff = absl::Milliseconds(100);

}  // namespace

std::unique_ptr<HealthProbeTransport::Handle>
UpstreamHealthProbeTransport::Check(
    const Endpoint& endpoint, const std::string& service,
    absl::Duration timeout, absl::AnyInvocable<void(ProbeResult)> done) {
  auto probe = std::make_unique<CheckProbe>(std::move(done));
  probe->Begin(
      worker_, endpoint,
      HealthRequest("Check", service, worker_.clock().Now() + timeout));
  return probe;
}

std::unique_ptr<HealthProbeTransport::Handle>
UpstreamHealthProbeTransport::Watch(
    const Endpoint& endpoint, const std::string& service,
    absl::AnyInvocable<void(bool serving)> on_status,
    absl::AnyInvocable<void()> on_end) {
  auto stream =
      std::make_unique<WatchStream>(std::move(on_status), std::move(on_end));
  stream->Begin(worker_, endpoint,
                HealthRequest("Watch", service, absl::InfiniteFuture()));
  return stream;
}

// --- the checker -------------------------------------------------------------

struct HealthChecker::Target {
  std::shared_ptr<Endpoint> endpoint;
  // The probe in flight (CHECK) or the open stream (WATCH).
  std::unique_ptr<HealthProbeTransport::Handle> call;
  // CHECK: the next probe's turn. WATCH: the stream's reopening.
  std::optional<TimerQueue::TimerId> turn;
  // CHECK: the probe's timeout. WATCH: the next heartbeat (the held status
  // again while a stream is up, a missed heartbeat while none is).
  std::optional<TimerQueue::TimerId> beat;
  // WATCH: whether the current stream has delivered a status, and the last one.
  bool stream_up = false;
  bool serving = false;
  absl::Duration backoff;
};

HealthChecker::HealthChecker(std::string cluster,
                             const config::v1::HealthCheck& config,
                             std::vector<std::shared_ptr<Endpoint>> endpoints,
                             TimerQueue& timers, Clock& clock,
                             HealthProbeTransport& transport, uint64_t seed)
    : cluster_(std::move(cluster)),
      watch_(config.mode() == config::v1::HealthCheck::WATCH),
      service_(config.service()),
      interval_(PositiveOr(config.interval(), absl::Seconds(5))),
      timeout_(PositiveOr(config.timeout(), absl::Seconds(1))),
      jitter_(config.has_jitter() ? std::clamp(config.jitter(), 0.0, 1.0)
                                  : 0.1),
      initial_backoff_(std::min(kInitialWatchBackoff, interval_)),
      timers_(timers),
      clock_(clock),
      transport_(transport),
      rng_(seed),
      endpoints_(endpoints) {
  for (auto& endpoint : endpoints) {
    if (endpoint == nullptr || endpoint->health == nullptr) continue;
    auto target = std::make_unique<Target>();
    target->endpoint = std::move(endpoint);
    target->backoff = initial_backoff_;
    targets_.push_back(std::move(target));
  }
}

HealthChecker::~HealthChecker() { Stop(); }

void HealthChecker::Start() {
  if (started_ || stopped_) return;
  started_ = true;
  for (auto& target : targets_) {
    // Traffic reads the flag, not the threshold state an endpoint kept across
    // a reload: make sure they agree before the first verdict.
    Endpoint& endpoint = *target->endpoint;
    endpoint.load.healthy.store(endpoint.health->Healthy(),
                                std::memory_order_relaxed);
    const absl::Duration first = Jittered(interval_, 0.0, jitter_);
    if (watch_) {
      ArmReopen(*target, first);
    } else {
      ArmProbe(*target, first);
    }
  }
}

void HealthChecker::Stop() {
  stopped_ = true;
  for (auto& target : targets_) {
    Cancel(target->turn);
    Cancel(target->beat);
    target->call.reset();
  }
}

void HealthChecker::Cancel(std::optional<TimerQueue::TimerId>& timer) {
  if (timer.has_value()) timers_.Cancel(*timer);
  timer.reset();
}

absl::Duration HealthChecker::Jittered(absl::Duration base, double low,
                                       double high) {
  if (high <= low) return base * low;
  return base * std::uniform_real_distribution<double>(low, high)(rng_);
}

// --- CHECK -------------------------------------------------------------------

void HealthChecker::ArmProbe(Target& target, absl::Duration delay) {
  target.turn = timers_.Schedule(clock_.Now() + delay, [this, &target] {
    target.turn.reset();
    OnProbeTurn(target);
  });
}

void HealthChecker::OnProbeTurn(Target& target) {
  // The cadence is fixed to probe starts, so the time to notice a change is
  // about unhealthy_threshold intervals whatever the probes' latency.
  ArmProbe(target, Jittered(interval_, 1.0 - jitter_, 1.0 + jitter_));
  if (target.call != nullptr) return;  // still in flight: skip this turn
  target.call = transport_.Check(
      *target.endpoint, service_, timeout_,
      [this, &target](ProbeResult result) { OnProbeDone(target, result); });
  // Our own timeout as well as the transport's: a probe that never answers
  // must not stop the checking of its endpoint.
  target.beat = timers_.Schedule(clock_.Now() + timeout_, [this, &target] {
    target.beat.reset();
    target.call.reset();
    Record(target, ProbeResult::kTimeout);
  });
}

void HealthChecker::OnProbeDone(Target& target, ProbeResult result) {
  Cancel(target.beat);
  target.call.reset();
  Record(target, result);
}

// --- WATCH -------------------------------------------------------------------

void HealthChecker::ArmReopen(Target& target, absl::Duration delay) {
  target.turn = timers_.Schedule(clock_.Now() + delay, [this, &target] {
    target.turn.reset();
    OpenWatch(target);
  });
}

void HealthChecker::OpenWatch(Target& target) {
  target.stream_up = false;
  target.call = transport_.Watch(
      *target.endpoint, service_,
      [this, &target](bool serving) { OnWatchStatus(target, serving); },
      [this, &target] { OnWatchEnd(target); });
  // Silence is counted from the stream's failure (or from the first opening);
  // a reopening does not restart it.
  if (!target.beat.has_value()) ArmHeartbeat(target, timeout_);
}

void HealthChecker::OnWatchStatus(Target& target, bool serving) {
  target.stream_up = true;
  target.serving = serving;
  target.backoff = initial_backoff_;
  Record(target, serving ? ProbeResult::kSuccess : ProbeResult::kFailure);
  // Outlier detection: NOT_SERVING ejects at once, SERVING ends that.
  RecordWatchStatus(endpoints_, *target.endpoint, serving, clock_.Now());
  Cancel(target.beat);
  ArmHeartbeat(target, interval_);
}

void HealthChecker::OnWatchEnd(Target& target) {
  target.call.reset();
  target.stream_up = false;
  Record(target, ProbeResult::kFailure);
  Cancel(target.beat);
  ArmHeartbeat(target, timeout_);
  ArmReopen(target, target.backoff);
  target.backoff = std::min(target.backoff * 2, interval_);
}

void HealthChecker::ArmHeartbeat(Target& target, absl::Duration delay) {
  target.beat = timers_.Schedule(clock_.Now() + delay, [this, &target] {
    target.beat.reset();
    OnHeartbeat(target);
  });
}

void HealthChecker::OnHeartbeat(Target& target) {
  if (target.stream_up) {
    // A health service speaks only on change: the open stream's last word
    // stands for this interval too.
    Record(target,
           target.serving ? ProbeResult::kSuccess : ProbeResult::kFailure);
    ArmHeartbeat(target, interval_);
  } else {
    Record(target, ProbeResult::kTimeout);
    ArmHeartbeat(target, timeout_);
  }
}

// --- verdicts ----------------------------------------------------------------

void HealthChecker::Record(Target& target, ProbeResult result) {
  Endpoint& endpoint = *target.endpoint;
  const HealthState::Transition transition =
      endpoint.health->Record(result, clock_.Now());
  if (endpoint.metrics != nullptr) {
    endpoint.metrics->HealthChecks(MetricResult(result)).Increment();
  }
  if (transition == HealthState::Transition::kUnchanged) return;
  const bool healthy = transition == HealthState::Transition::kBecameHealthy;
  // Relaxed: the flag is a hint read on its own by Cluster::Pick; nothing else
  // is published with it.
  endpoint.load.healthy.store(healthy, std::memory_order_relaxed);
  if (endpoint.metrics != nullptr) endpoint.metrics->SetHealthy(healthy);
  Log(LogLevel::kWarning,
      "health check: cluster %s endpoint %s is now %s (%s mode, last probe: "
      "%s)",
      cluster_, EndpointName(endpoint), healthy ? "HEALTHY" : "UNHEALTHY",
      watch_ ? "WATCH" : "CHECK", ResultName(result));
}

}  // namespace bulwark
