// HealthChecker decides, for the endpoints of one cluster with a health_check,
// when each endpoint is probed and which verdict every heartbeat gives: it
// feeds each verdict to the endpoint's HealthState (the threshold state
// machine) and, when that reports a transition, flips the endpoint's atomic
// `load.healthy` flag that Cluster::Pick reads, sets bulwark_endpoint_healthy
// and logs the change. Every verdict is counted in
// bulwark_health_checks_total{result}.
//
// Where probes run (decided): over the data plane's own upstream sessions, on
// worker 0's event loop. A probe then tests the very connection that traffic
// uses (its TCP connection, HTTP/2 session and connect backoff), costs no
// thread and no second connection per endpoint, and never blocks a worker: it
// is one more multiplexed stream. The I/O sits behind HealthProbeTransport, so
// the scheduling below is unit-tested with FakeClock and FakeTimerQueue.
//
// CHECK mode: each endpoint is probed with grpc.health.v1.Health/Check on a
// steady cadence: probe starts are `interval` apart, each gap drawn uniformly
// from [interval*(1-jitter), interval*(1+jitter)] (the first one from
// [0, interval*jitter], so a fresh sidecar learns soon but many sidecars do not
// probe in step). A probe still in flight when its next turn comes is not
// doubled: that turn is skipped. SERVING is a success; any other status or
// error a failure; no answer within `timeout` a timeout (the checker cancels
// the probe itself, so a transport that never answers cannot wedge it).
//
// WATCH mode: one Health/Watch stream per endpoint is the heartbeat. A status
// message counts at once (SERVING success, anything else failure) and, because
// a health service sends a message only when the status changes, the status
// the open stream last said counts again every `interval` after that: an
// endpoint that says NOT_SERVING once therefore crosses unhealthy_threshold
// like a polled one would. A stream that ends or fails is a failure and is
// reopened after a capped exponential backoff (100ms doubling, at most
// `interval`; reset once a reopened stream delivers a status). While no stream
// has delivered a status (after a failure, or a stream that opened but stays
// silent), every `timeout` of silence counts a missed heartbeat (timeout).
//
// Thread-safety: not thread-safe; Start, Stop, the destructor and every
// callback run on one thread (worker 0's loop in production; the timer queue
// and the transport must call back on it). The admin thread reads only
// HealthState and the atomics it sets, which are thread-safe. Cost: per
// endpoint, one timer and one probe (one HTTP/2 stream) per interval in CHECK
// mode, one long-lived stream plus one timer per interval in WATCH mode; a
// verdict is one short HealthState lock and a counter increment.
#ifndef BULWARK_SIDECAR_HEALTH_CHECKER_H_
#define BULWARK_SIDECAR_HEALTH_CHECKER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "bulwark/config/v1/config.pb.h"
#include "policies/clock.h"
#include "policies/health_state.h"
#include "sidecar/cluster.h"

namespace bulwark {

namespace net {
class Worker;
}  // namespace net

// grpc.health.v1 on the wire, by hand (pure functions, exposed for tests).
namespace health_wire {
// HealthCheckResponse.ServingStatus.SERVING.
inline constexpr int kServing = 1;
// A framed (5-byte prefix) HealthCheckRequest{service}.
std::string FramedRequest(std::string_view service);
// HealthCheckResponse.status of a message payload (0, UNKNOWN, when absent), or
// nullopt if the bytes are not a valid message.
std::optional<int> ParseStatus(std::string_view payload);
}  // namespace health_wire

// The I/O of health checking: one Check probe, or one Watch stream, against an
// endpoint. Callbacks run later on the checker's thread, never from inside
// Check or Watch; none runs once the returned handle is destroyed (destroying
// it cancels the probe or stream).
class HealthProbeTransport {
 public:
  // Owns one probe or stream; destruction cancels it.
  class Handle {
   public:
    virtual ~Handle() = default;
  };

  virtual ~HealthProbeTransport() = default;

  // One grpc.health.v1.Health/Check of `service`. `done` runs exactly once
  // (unless the handle is destroyed first) and may destroy the handle.
  virtual std::unique_ptr<Handle> Check(
      const Endpoint& endpoint, const std::string& service,
      absl::Duration timeout, absl::AnyInvocable<void(ProbeResult)> done) = 0;

  // A grpc.health.v1.Health/Watch stream of `service`: `on_status` for each
  // status message (must not destroy the handle), then `on_end` once when the
  // stream ends or fails for any reason (may destroy the handle).
  virtual std::unique_ptr<Handle> Watch(
      const Endpoint& endpoint, const std::string& service,
      absl::AnyInvocable<void(bool serving)> on_status,
      absl::AnyInvocable<void()> on_end) = 0;
};

// The transport over the data plane: net::UpstreamCall on `worker`'s own
// multiplexed upstream connection to the endpoint. Worker thread only; the
// messages are encoded and decoded by hand (a few varints), since the data
// plane does not link the protobuf runtime for message bodies.
class UpstreamHealthProbeTransport final : public HealthProbeTransport {
 public:
  explicit UpstreamHealthProbeTransport(net::Worker& worker)
      : worker_(worker) {}

  std::unique_ptr<Handle> Check(
      const Endpoint& endpoint, const std::string& service,
      absl::Duration timeout,
      absl::AnyInvocable<void(ProbeResult)> done) override;
  std::unique_ptr<Handle> Watch(
      const Endpoint& endpoint, const std::string& service,
      absl::AnyInvocable<void(bool serving)> on_status,
      absl::AnyInvocable<void()> on_end) override;

 private:
  net::Worker& worker_;
};

class HealthChecker {
 public:
  // `cluster` names the cluster in log lines. `config` is the cluster's
  // health_check (defaults filled in by the config loader; unset durations fall
  // back to the SPEC defaults). Endpoints without a HealthState are skipped.
  // `seed` drives the jitter (vary it per process so sidecars spread out).
  HealthChecker(std::string cluster, const config::v1::HealthCheck& config,
                std::vector<std::shared_ptr<Endpoint>> endpoints,
                TimerQueue& timers, Clock& clock,
                HealthProbeTransport& transport, uint64_t seed);
  // Stops first.
  ~HealthChecker();

  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Arms each endpoint's first probe (CHECK) or stream opening (WATCH).
  void Start();
  // Cancels every timer, probe and stream; no callback of this checker runs
  // afterwards (a later Start does nothing). Idempotent.
  void Stop();

  const std::string& cluster() const { return cluster_; }

 private:
  struct Target;

  // CHECK mode.
  void ArmProbe(Target& target, absl::Duration delay);
  void OnProbeTurn(Target& target);
  void OnProbeDone(Target& target, ProbeResult result);
  // WATCH mode.
  void ArmReopen(Target& target, absl::Duration delay);
  void OpenWatch(Target& target);
  void OnWatchStatus(Target& target, bool serving);
  void OnWatchEnd(Target& target);
  void ArmHeartbeat(Target& target, absl::Duration delay);
  void OnHeartbeat(Target& target);

  void Record(Target& target, ProbeResult result);
  absl::Duration Jittered(absl::Duration base, double low, double high);
  void Cancel(std::optional<TimerQueue::TimerId>& timer);

  const std::string cluster_;
  const bool watch_;
  const std::string service_;
  const absl::Duration interval_;
  const absl::Duration timeout_;
  const double jitter_;
  const absl::Duration initial_backoff_;

  TimerQueue& timers_;
  Clock& clock_;
  HealthProbeTransport& transport_;
  std::mt19937_64 rng_;
  bool started_ = false;
  bool stopped_ = false;
  std::vector<std::unique_ptr<Target>> targets_;
  // Every endpoint of the cluster (outlier ejection's min_available).
  const std::vector<std::shared_ptr<Endpoint>> endpoints_;
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_HEALTH_CHECKER_H_
