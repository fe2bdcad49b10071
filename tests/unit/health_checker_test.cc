// HealthChecker scheduling and verdicts, driven by FakeClock + FakeTimerQueue
// and a fake transport: no sockets, no sleeps. Every test reads the armed
// durations (when probes start, when streams reopen) off the fake clock.
#include "sidecar/health_checker.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "policies/clock.h"
#include "policies/health_state.h"
#include "sidecar/cluster.h"
#include "sidecar/metrics.h"

namespace bulwark {
namespace {

using Mode = config::v1::HealthCheck::Mode;
using std::string_literals::operator""s;
using MetricResult = EndpointMetrics::HealthCheckResult;

// Records the delay of every timer armed, then forwards to the fake queue.
class RecordingTimerQueue final : public TimerQueue {
 public:
  RecordingTimerQueue(FakeTimerQueue& inner, FakeClock& clock)
      : inner_(inner), clock_(clock) {}
  TimerId Schedule(absl::Time when,
                   absl::AnyInvocable<void()> callback) override {
    armed.push_back(when - clock_.Now());
    return inner_.Schedule(when, std::move(callback));
  }
  bool Cancel(TimerId id) override { return inner_.Cancel(id); }

  std::vector<absl::Duration> armed;

 private:
  FakeTimerQueue& inner_;
  FakeClock& clock_;
};

// One Check probe or Watch stream the checker asked for.
struct FakeCall {
  std::string endpoint;
  std::string service;
  absl::Duration timeout;
  absl::Time started;
  absl::AnyInvocable<void(ProbeResult)> done;
  absl::AnyInvocable<void(bool)> on_status;
  absl::AnyInvocable<void()> on_end;
  bool finished = false;   // done / on_end ran
  bool cancelled = false;  // the handle was destroyed before that

  bool live() const { return !finished && !cancelled; }
};

class FakeTransport final : public HealthProbeTransport {
 public:
  explicit FakeTransport(FakeClock& clock) : clock_(clock) {}

  std::unique_ptr<Handle> Check(
      const Endpoint& endpoint, const std::string& service,
      absl::Duration timeout,
      absl::AnyInvocable<void(ProbeResult)> done) override {
    FakeCall& call = Add(checks, endpoint, service);
    call.timeout = timeout;
    call.done = std::move(done);
    return std::make_unique<FakeHandle>(&call);
  }

  std::unique_ptr<Handle> Watch(const Endpoint& endpoint,
                                const std::string& service,
                                absl::AnyInvocable<void(bool)> on_status,
                                absl::AnyInvocable<void()> on_end) override {
    FakeCall& call = Add(watches, endpoint, service);
    call.on_status = std::move(on_status);
    call.on_end = std::move(on_end);
    return std::make_unique<FakeHandle>(&call);
  }

  // What the real transport does when an answer arrives.
  static void Answer(FakeCall& call, ProbeResult result) {
    ASSERT_TRUE(call.live());
    call.finished = true;
    auto done = std::move(call.done);  // `done` may destroy the handle
    done(result);
  }
  static void Status(FakeCall& call, bool serving) {
    ASSERT_TRUE(call.live());
    call.on_status(serving);
  }
  static void End(FakeCall& call) {
    ASSERT_TRUE(call.live());
    call.finished = true;
    auto on_end = std::move(call.on_end);
    on_end();
  }

  int Live() const {
    int n = 0;
    for (const auto& c : checks) n += c->live() ? 1 : 0;
    for (const auto& c : watches) n += c->live() ? 1 : 0;
    return n;
  }

  std::vector<std::unique_ptr<FakeCall>> checks;
  std::vector<std::unique_ptr<FakeCall>> watches;

 private:
  class FakeHandle final : public Handle {
   public:
    explicit FakeHandle(FakeCall* call) : call_(call) {}
    ~FakeHandle() override {
      if (!call_->finished) call_->cancelled = true;
    }

   private:
    FakeCall* call_;
  };

  FakeCall& Add(std::vector<std::unique_ptr<FakeCall>>& calls,
                const Endpoint& endpoint, const std::string& service) {
    calls.push_back(std::make_unique<FakeCall>());
    FakeCall& call = *calls.back();
    call.endpoint = endpoint.address.ToString();
    call.service = service;
    call.started = clock_.Now();
    return call;
  }

  FakeClock& clock_;
};

struct CheckSettings {
  Mode mode = config::v1::HealthCheck::CHECK;
  absl::Duration interval = absl::Seconds(1);
  absl::Duration timeout = absl::Milliseconds(500);
  double jitter = 0.0;
  uint32_t unhealthy_threshold = 2;
  uint32_t healthy_threshold = 2;
};

config::v1::HealthCheck Config(const CheckSettings& s) {
  config::v1::HealthCheck hc;
  hc.set_mode(s.mode);
  hc.set_service("shop.v1.Orders");
  hc.mutable_interval()->set_seconds(absl::ToInt64Seconds(s.interval));
  hc.mutable_interval()->set_nanos(static_cast<int32_t>(
      absl::ToInt64Nanoseconds(s.interval % absl::Seconds(1))));
  hc.mutable_timeout()->set_seconds(absl::ToInt64Seconds(s.timeout));
  hc.mutable_timeout()->set_nanos(static_cast<int32_t>(
      absl::ToInt64Nanoseconds(s.timeout % absl::Seconds(1))));
  hc.set_jitter(s.jitter);
  hc.set_unhealthy_threshold(s.unhealthy_threshold);
  hc.set_healthy_threshold(s.healthy_threshold);
  return hc;
}

class HealthCheckerTest : public ::testing::Test {
 protected:
  // Builds `n` checked endpoints and a checker over them (not started).
  void Build(const CheckSettings& settings, int n = 1, uint64_t seed = 42) {
    settings_ = settings;
    for (int i = 0; i < n; ++i) {
      auto endpoint = std::make_shared<Endpoint>();
      endpoint->address = {.host = "10.0.0.1",
                           .port = static_cast<uint16_t>(50051 + i)};
      endpoint->metrics = metrics_.ForCluster("orders")->ForEndpoint(
          endpoint->address.ToString());
      endpoint->health = std::make_unique<HealthState>(HealthState::Options{
          .unhealthy_threshold = settings.unhealthy_threshold,
          .healthy_threshold = settings.healthy_threshold});
      endpoints_.push_back(std::move(endpoint));
    }
    checker_ =
        std::make_unique<HealthChecker>("orders", Config(settings), endpoints_,
                                        timers_, clock_, transport_, seed);
  }

  Endpoint& endpoint(int i = 0) { return *endpoints_[i]; }
  bool Healthy(int i = 0) {
    return endpoint(i).load.healthy.load(std::memory_order_relaxed);
  }
  double Count(MetricResult result, int i = 0) {
    return endpoint(i).metrics->HealthChecks(result).Value();
  }
  double Checks(int i = 0) {
    return Count(MetricResult::kSuccess, i) + Count(MetricResult::kFailure, i) +
           Count(MetricResult::kTimeout, i);
  }

  // Moves time to the next armed timer and fires it (and everything due then).
  void RunNextTimer() {
    const auto [any, when] = queue_.NextDeadline();
    ASSERT_TRUE(any) << "no timer armed";
    queue_.AdvanceBy(when - clock_.Now());
  }

  // Runs timers until a new Check probe starts; returns it.
  FakeCall& NextCheck() {
    const size_t before = transport_.checks.size();
    for (int i = 0; i < 100 && transport_.checks.size() == before; ++i) {
      RunNextTimer();
    }
    EXPECT_GT(transport_.checks.size(), before) << "no probe started";
    return *transport_.checks.back();
  }

  FakeCall& NextWatch() {
    const size_t before = transport_.watches.size();
    for (int i = 0; i < 100 && transport_.watches.size() == before; ++i) {
      RunNextTimer();
    }
    EXPECT_GT(transport_.watches.size(), before) << "no stream opened";
    return *transport_.watches.back();
  }

  FakeClock clock_;
  FakeTimerQueue queue_{clock_};
  RecordingTimerQueue timers_{queue_, clock_};
  FakeTransport transport_{clock_};
  Metrics metrics_{"test"};
  CheckSettings settings_;
  std::vector<std::shared_ptr<Endpoint>> endpoints_;
  std::unique_ptr<HealthChecker> checker_;
};

// --- CHECK -------------------------------------------------------------------

TEST_F(HealthCheckerTest, FirstProbesAreArmedWithinTheInitialJitter) {
  Build({.interval = absl::Seconds(10), .jitter = 0.2}, /*n=*/5);
  const absl::Time start = clock_.Now();
  checker_->Start();

  // Only the first turns are armed at Start, one per endpoint.
  ASSERT_EQ(timers_.armed.size(), 5u);
  for (absl::Duration delay : timers_.armed) {
    EXPECT_GE(delay, absl::ZeroDuration());
    EXPECT_LE(delay, absl::Seconds(2));  // interval * jitter
  }
  EXPECT_TRUE(transport_.checks.empty()) << "nothing is sent from Start";
  queue_.AdvanceBy(absl::Seconds(2));
  ASSERT_EQ(transport_.checks.size(), 5u);
  for (const auto& check : transport_.checks) {
    EXPECT_LE(check->started - start, absl::Seconds(2));
    EXPECT_EQ(check->service, "shop.v1.Orders");
    EXPECT_EQ(check->timeout, absl::Milliseconds(500));
  }
}

TEST_F(HealthCheckerTest, ProbeTurnsAreIntervalApartWithinJitterBounds) {
  Build({.interval = absl::Seconds(10), .jitter = 0.2});
  checker_->Start();
  absl::Time previous = NextCheck().started;
  absl::Duration shortest = absl::InfiniteDuration();
  absl::Duration longest = absl::ZeroDuration();
  for (int i = 0; i < 200; ++i) {
    FakeTransport::Answer(*transport_.checks.back(), ProbeResult::kSuccess);
    FakeCall& check = NextCheck();
    const absl::Duration gap = check.started - previous;
    previous = check.started;
    EXPECT_GE(gap, absl::Seconds(8));
    EXPECT_LE(gap, absl::Seconds(12));
    shortest = std::min(shortest, gap);
    longest = std::max(longest, gap);
  }
  // The armed turns are exactly those gaps: every delay armed is either a
  // turn in [8s, 12s] or the 500ms probe timeout.
  for (size_t i = 1; i < timers_.armed.size(); ++i) {
    const absl::Duration d = timers_.armed[i];
    EXPECT_TRUE(d == absl::Milliseconds(500) ||
                (d >= absl::Seconds(8) && d <= absl::Seconds(12)))
        << d;
  }
  // And the jitter really spreads them.
  EXPECT_LT(shortest, absl::Seconds(9));
  EXPECT_GT(longest, absl::Seconds(11));
}

TEST_F(HealthCheckerTest, WithoutJitterProbesStartAtOnceThenEveryInterval) {
  Build({.interval = absl::Seconds(3), .jitter = 0.0});
  const absl::Time start = clock_.Now();
  checker_->Start();
  ASSERT_EQ(timers_.armed.size(), 1u);
  EXPECT_EQ(timers_.armed[0], absl::ZeroDuration());
  EXPECT_EQ(NextCheck().started, start);
  FakeTransport::Answer(*transport_.checks.back(), ProbeResult::kSuccess);
  EXPECT_EQ(NextCheck().started, start + absl::Seconds(3));
  FakeTransport::Answer(*transport_.checks.back(), ProbeResult::kSuccess);
  EXPECT_EQ(NextCheck().started, start + absl::Seconds(6));
}

TEST_F(HealthCheckerTest, FailuresMarkUnhealthyAndSuccessesHealthyAgain) {
  Build({.unhealthy_threshold = 3, .healthy_threshold = 2});
  checker_->Start();

  FakeTransport::Answer(NextCheck(), ProbeResult::kFailure);
  FakeTransport::Answer(NextCheck(), ProbeResult::kFailure);
  EXPECT_TRUE(Healthy()) << "two failures are below the threshold";
  FakeTransport::Answer(NextCheck(), ProbeResult::kFailure);
  EXPECT_FALSE(Healthy());
  EXPECT_FALSE(endpoint().health->Healthy());
  EXPECT_NE(metrics_.Serialize().find(
                "bulwark_endpoint_healthy{cluster=\"orders\",endpoint=\"10.0."
                "0.1:50051\"} 0"),
            std::string::npos);

  FakeTransport::Answer(NextCheck(), ProbeResult::kSuccess);
  EXPECT_FALSE(Healthy()) << "one success is below the threshold";
  FakeTransport::Answer(NextCheck(), ProbeResult::kSuccess);
  EXPECT_TRUE(Healthy());
  EXPECT_NE(metrics_.Serialize().find(
                "bulwark_endpoint_healthy{cluster=\"orders\",endpoint=\"10.0."
                "0.1:50051\"} 1"),
            std::string::npos);

  EXPECT_EQ(Count(MetricResult::kFailure), 3);
  EXPECT_EQ(Count(MetricResult::kSuccess), 2);
  EXPECT_EQ(Count(MetricResult::kTimeout), 0);
}

TEST_F(HealthCheckerTest, EachEndpointIsJudgedOnItsOwn) {
  Build({.unhealthy_threshold = 1}, /*n=*/2);
  checker_->Start();
  queue_.AdvanceBy(absl::ZeroDuration());
  ASSERT_EQ(transport_.checks.size(), 2u);
  FakeCall& first = *transport_.checks[0];
  FakeCall& second = *transport_.checks[1];
  const int failing = first.endpoint == "10.0.0.1:50051" ? 0 : 1;
  FakeTransport::Answer(first, ProbeResult::kFailure);
  FakeTransport::Answer(second, ProbeResult::kSuccess);
  EXPECT_FALSE(Healthy(failing));
  EXPECT_TRUE(Healthy(1 - failing));
}

TEST_F(HealthCheckerTest, AnUnansweredProbeIsCancelledAndCountedAsTimeout) {
  Build({.timeout = absl::Milliseconds(500), .unhealthy_threshold = 2});
  checker_->Start();
  FakeCall& first = NextCheck();
  const absl::Time sent = clock_.Now();
  RunNextTimer();  // the timeout comes before the next turn
  EXPECT_EQ(clock_.Now() - sent, absl::Milliseconds(500));
  EXPECT_TRUE(first.cancelled);
  EXPECT_EQ(Count(MetricResult::kTimeout), 1);
  EXPECT_EQ(endpoint().health->GetSnapshot().last_result,
            ProbeResult::kTimeout);

  // A timeout the transport reports itself counts the same.
  FakeTransport::Answer(NextCheck(), ProbeResult::kTimeout);
  EXPECT_EQ(Count(MetricResult::kTimeout), 2);
  EXPECT_EQ(Count(MetricResult::kFailure), 0);
  EXPECT_FALSE(Healthy()) << "timeouts are failed probes";
}

TEST_F(HealthCheckerTest, AProbeStillInFlightIsNotDoubled) {
  // Timeout longer than the interval: turns come while the probe is pending.
  Build({.interval = absl::Seconds(1), .timeout = absl::Seconds(5)});
  checker_->Start();
  FakeCall& first = NextCheck();
  queue_.AdvanceBy(absl::Milliseconds(4900));
  EXPECT_EQ(transport_.checks.size(), 1u) << "turns 1s..4s were skipped";
  EXPECT_EQ(transport_.Live(), 1);
  EXPECT_EQ(Checks(), 0);

  // At 5s the probe times out and that turn's probe starts.
  queue_.AdvanceBy(absl::Milliseconds(100));
  EXPECT_TRUE(first.cancelled);
  EXPECT_EQ(Count(MetricResult::kTimeout), 1);
  ASSERT_EQ(transport_.checks.size(), 2u);
  EXPECT_EQ(transport_.Live(), 1);
}

TEST_F(HealthCheckerTest, AnAnswerAfterTheNextTurnLetsTheFollowingTurnProbe) {
  Build({.interval = absl::Seconds(1), .timeout = absl::Seconds(5)});
  checker_->Start();
  FakeCall& first = NextCheck();
  queue_.AdvanceBy(absl::Milliseconds(1500));
  FakeTransport::Answer(first, ProbeResult::kSuccess);
  EXPECT_EQ(transport_.checks.size(), 1u);
  queue_.AdvanceBy(absl::Milliseconds(500));  // the 2s turn
  EXPECT_EQ(transport_.checks.size(), 2u);
  EXPECT_EQ(Count(MetricResult::kSuccess), 1);
}

// --- WATCH -------------------------------------------------------------------

TEST_F(HealthCheckerTest, WatchStatusMessagesDriveHealth) {
  Build({.mode = config::v1::HealthCheck::WATCH,
         .interval = absl::Seconds(1),
         .timeout = absl::Milliseconds(500),
         .unhealthy_threshold = 2,
         .healthy_threshold = 2});
  checker_->Start();
  FakeCall& stream = NextWatch();
  EXPECT_EQ(stream.service, "shop.v1.Orders");

  FakeTransport::Status(stream, true);
  EXPECT_EQ(Count(MetricResult::kSuccess), 1);
  // Two NOT_SERVING messages in a row: two failures at once.
  FakeTransport::Status(stream, false);
  FakeTransport::Status(stream, false);
  EXPECT_FALSE(Healthy());
  FakeTransport::Status(stream, true);
  FakeTransport::Status(stream, true);
  EXPECT_TRUE(Healthy());
  EXPECT_EQ(Count(MetricResult::kTimeout), 0);
  EXPECT_TRUE(stream.live()) << "the stream stays open throughout";
}

TEST_F(HealthCheckerTest, WatchHeldStatusCountsAgainEveryInterval) {
  // A health service sends only changes: one NOT_SERVING must still cross
  // the threshold.
  Build({.mode = config::v1::HealthCheck::WATCH,
         .interval = absl::Seconds(1),
         .timeout = absl::Milliseconds(500),
         .unhealthy_threshold = 3,
         .healthy_threshold = 2});
  checker_->Start();
  FakeCall& stream = NextWatch();
  FakeTransport::Status(stream, false);
  const absl::Time said = clock_.Now();
  queue_.AdvanceBy(absl::Milliseconds(1999));
  EXPECT_TRUE(Healthy());
  EXPECT_EQ(Count(MetricResult::kFailure), 2);
  queue_.AdvanceBy(absl::Milliseconds(1));
  EXPECT_FALSE(Healthy()) << "third failure at " << (clock_.Now() - said);

  FakeTransport::Status(stream, true);
  EXPECT_FALSE(Healthy());
  queue_.AdvanceBy(absl::Seconds(1));
  EXPECT_TRUE(Healthy());
  EXPECT_EQ(Count(MetricResult::kTimeout), 0);
  EXPECT_EQ(transport_.watches.size(), 1u);
}

TEST_F(HealthCheckerTest, WatchStreamEndIsAFailureAndReopensWithCappedBackoff) {
  Build({.mode = config::v1::HealthCheck::WATCH,
         .interval = absl::Seconds(1),
         .timeout = absl::Seconds(30),  // keep missed heartbeats out of it
         .unhealthy_threshold = 100});
  checker_->Start();
  FakeCall* stream = &NextWatch();
  FakeTransport::Status(*stream, true);

  std::vector<absl::Duration> reopen_after;
  for (int i = 0; i < 6; ++i) {
    FakeTransport::End(*stream);
    const absl::Time ended = clock_.Now();
    stream = &NextWatch();
    reopen_after.push_back(stream->started - ended);
  }
  EXPECT_EQ(reopen_after,
            (std::vector<absl::Duration>{
                absl::Milliseconds(100), absl::Milliseconds(200),
                absl::Milliseconds(400), absl::Milliseconds(800),
                absl::Seconds(1), absl::Seconds(1)}));  // capped at interval
  EXPECT_EQ(Count(MetricResult::kFailure), 6);
  EXPECT_EQ(Count(MetricResult::kTimeout), 0);

  // A stream that delivers a status resets the backoff.
  FakeTransport::Status(*stream, true);
  FakeTransport::End(*stream);
  const absl::Time ended = clock_.Now();
  EXPECT_EQ(NextWatch().started - ended, absl::Milliseconds(100));
}

TEST_F(HealthCheckerTest, WatchFailingStreamsMarkUnhealthy) {
  Build({.mode = config::v1::HealthCheck::WATCH,
         .interval = absl::Seconds(1),
         .timeout = absl::Seconds(1),
         .unhealthy_threshold = 2,
         .healthy_threshold = 2});
  checker_->Start();
  FakeCall& first = NextWatch();
  FakeTransport::Status(first, true);
  FakeTransport::End(first);  // e.g. the upstream process died
  EXPECT_TRUE(Healthy());
  FakeTransport::End(NextWatch());  // connection refused
  EXPECT_FALSE(Healthy());

  FakeCall& back = NextWatch();
  FakeTransport::Status(back, true);
  queue_.AdvanceBy(absl::Seconds(1));
  EXPECT_TRUE(Healthy());
}

TEST_F(HealthCheckerTest, WatchSilenceWhileDisconnectedIsAMissedHeartbeat) {
  Build({.mode = config::v1::HealthCheck::WATCH,
         .interval = absl::Seconds(10),
         .timeout = absl::Seconds(1),
         .unhealthy_threshold = 100});
  checker_->Start();
  FakeCall& first = NextWatch();
  FakeTransport::Status(first, true);
  FakeTransport::End(first);
  const absl::Time ended = clock_.Now();
  FakeCall& silent = NextWatch();  // reopened after 100ms, says nothing
  EXPECT_EQ(silent.started - ended, absl::Milliseconds(100));

  queue_.AdvanceBy(ended + absl::Milliseconds(999) - clock_.Now());
  EXPECT_EQ(Count(MetricResult::kTimeout), 0);
  queue_.AdvanceBy(absl::Milliseconds(1));
  EXPECT_EQ(Count(MetricResult::kTimeout), 1) << "one timeout after the end";
  queue_.AdvanceBy(absl::Seconds(2));
  EXPECT_EQ(Count(MetricResult::kTimeout), 3) << "then one per timeout";
  EXPECT_TRUE(silent.live()) << "a silent stream is kept, not churned";

  // Once the stream speaks, silence is no longer counted.
  FakeTransport::Status(silent, true);
  queue_.AdvanceBy(absl::Seconds(5));
  EXPECT_EQ(Count(MetricResult::kTimeout), 3);
}

TEST_F(HealthCheckerTest, WatchAStreamThatNeverSpeaksCountsTimeouts) {
  Build({.mode = config::v1::HealthCheck::WATCH,
         .interval = absl::Seconds(10),
         .timeout = absl::Seconds(1),
         .unhealthy_threshold = 2});
  checker_->Start();
  NextWatch();
  queue_.AdvanceBy(absl::Seconds(2));
  EXPECT_EQ(Count(MetricResult::kTimeout), 2);
  EXPECT_FALSE(Healthy());
}

// --- lifecycle
// -----------------------------------------------------------------

TEST_F(HealthCheckerTest, StopCancelsProbesAndTimers) {
  Build({}, /*n=*/2);
  checker_->Start();
  queue_.AdvanceBy(absl::ZeroDuration());
  ASSERT_EQ(transport_.Live(), 2);
  checker_->Stop();
  EXPECT_EQ(transport_.Live(), 0);
  EXPECT_TRUE(transport_.checks[0]->cancelled);
  EXPECT_EQ(queue_.PendingCount(), 0u);
  queue_.AdvanceBy(absl::Minutes(5));
  EXPECT_EQ(transport_.checks.size(), 2u);
  EXPECT_EQ(Checks(0) + Checks(1), 0);
  checker_.reset();  // safe after Stop
}

TEST_F(HealthCheckerTest, StopCancelsWatchStreamsAndReopenings) {
  Build({.mode = config::v1::HealthCheck::WATCH}, /*n=*/2);
  checker_->Start();
  queue_.AdvanceBy(absl::ZeroDuration());
  ASSERT_EQ(transport_.watches.size(), 2u);
  FakeTransport::End(*transport_.watches[0]);  // a reopening is now armed
  checker_->Stop();
  EXPECT_EQ(transport_.Live(), 0);
  EXPECT_TRUE(transport_.watches[1]->cancelled);
  EXPECT_EQ(queue_.PendingCount(), 0u);
  queue_.AdvanceBy(absl::Minutes(5));
  EXPECT_EQ(transport_.watches.size(), 2u);
}

TEST_F(HealthCheckerTest, DestroyingARunningCheckerStopsIt) {
  Build({});
  checker_->Start();
  queue_.AdvanceBy(absl::ZeroDuration());
  checker_.reset();
  EXPECT_EQ(transport_.Live(), 0);
  EXPECT_EQ(queue_.PendingCount(), 0u);
}

TEST_F(HealthCheckerTest, StartAlignsTheFlagWithTheCarriedOverHealth) {
  // An endpoint kept by a reload comes with its threshold state.
  Build({.unhealthy_threshold = 1});
  endpoint().health->Record(ProbeResult::kFailure, clock_.Now());
  checker_->Start();
  EXPECT_FALSE(Healthy());
}

TEST_F(HealthCheckerTest, EndpointsWithoutHealthStateAreNotProbed) {
  Build({});
  auto unchecked = std::make_shared<Endpoint>();
  HealthChecker checker("orders", Config({}), {unchecked}, timers_, clock_,
                        transport_, 1);
  checker.Start();
  EXPECT_EQ(queue_.PendingCount(), 0u);
}

// --- the wire ----------------------------------------------------------------

TEST(HealthWireTest, RequestIsAFramedHealthCheckRequest) {
  EXPECT_EQ(health_wire::FramedRequest(""), std::string(5, '\0'));
  EXPECT_EQ(health_wire::FramedRequest("svc"), "\0\0\0\0\x05\x0a\x03svc"s);
  const std::string long_name(200, 'x');  // two-byte length varint
  EXPECT_EQ(health_wire::FramedRequest(long_name),
            absl::StrCat("\0\0\0\0\xcb\x0a\xc8\x01"s, long_name));
}

TEST(HealthWireTest, ParsesTheServingStatus) {
  EXPECT_EQ(health_wire::ParseStatus(""), 0);  // UNKNOWN
  EXPECT_EQ(health_wire::ParseStatus("\x08\x01"s), health_wire::kServing);
  EXPECT_EQ(health_wire::ParseStatus("\x08\x02"s), 2);
  // Unknown fields of every wire type are skipped.
  EXPECT_EQ(health_wire::ParseStatus(
                "\x10\x05\x1a\x02hi\x25\0\0\0\0\x29\0\0\0\0\0\0\0\0\x08\x01"s),
            1);
  EXPECT_EQ(health_wire::ParseStatus("\x08"s), std::nullopt);
  EXPECT_EQ(health_wire::ParseStatus("\x0a\x05x"s), std::nullopt);
  EXPECT_EQ(health_wire::ParseStatus("\x0f"s), std::nullopt);
}

}  // namespace
}  // namespace bulwark
