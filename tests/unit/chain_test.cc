// The call chain against a fake call, a fake executor and a fake clock: no
// sockets, no sleeps. Each test drives calls through the real stages of a
// route built from YAML, plays the transport's part (how a call ends, what an
// upstream call answers) and asserts what the chain did: answered, forwarded,
// coalesced, parked, and what the breaker and the metrics counted.
#include "sidecar/chain/chain.h"

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policies/clock.h"
#include "policies/singleflight.h"
#include "sidecar/chain/singleflight_stage.h"
#include "sidecar/config_loader.h"
#include "sidecar/dns.h"
#include "sidecar/metrics.h"
#include "sidecar/snapshot.h"

namespace bulwark::chain {
namespace {

using net::CallResult;
using ::testing::ElementsAre;
using Ending = net::CallResult::Ending;

class NoResolver final : public Resolver {
 public:
  absl::StatusOr<std::vector<ResolvedAddress>> Resolve(
      const HostPort& address) override {
    return absl::NotFoundError(address.ToString());
  }
};

class FakeExecutor;

// An upstream call the chain started for a flight: the test answers it.
struct FakeUpstreamCall {
  std::string endpoint;  // the address key it was sent to
  net::UpstreamRequest request;
  net::UpstreamCallListener* listener = nullptr;
  bool cancelled = false;
  bool finished = false;
};

class FakeUpstreamHandle final : public net::UpstreamCallHandle {
 public:
  explicit FakeUpstreamHandle(std::shared_ptr<FakeUpstreamCall> call)
      : call_(std::move(call)) {}
  ~FakeUpstreamHandle() override {
    if (!call_->finished) call_->cancelled = true;
  }

 private:
  std::shared_ptr<FakeUpstreamCall> call_;
};

class FakeExecutor final : public net::Executor {
 public:
  FakeExecutor() : timers_(clock_) {}

  void Post(absl::AnyInvocable<void()> task) override {
    tasks_.push_back(std::move(task));
  }
  net::Call* FindCall(uint64_t id) override {
    auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : it->second;
  }
  TimerQueue& timers() override { return timers_; }
  Clock& clock() override { return clock_; }
  std::unique_ptr<net::UpstreamCallHandle> StartUpstreamCall(
      const net::UpstreamAddress& address, net::UpstreamRequest request,
      net::UpstreamCallListener* listener,
      const net::UpstreamCallOptions&) override {
    auto call = std::make_shared<FakeUpstreamCall>();
    call->endpoint = address.key;
    call->request = std::move(request);
    call->listener = listener;
    upstream_.push_back(call);
    return std::make_unique<FakeUpstreamHandle>(call);
  }

  // Runs posted tasks (and what they post) until none is left.
  void RunPending() {
    while (!tasks_.empty()) {
      auto task = std::move(tasks_.front());
      tasks_.pop_front();
      task();
    }
  }
  void AdvanceBy(absl::Duration d) {
    timers_.AdvanceBy(d);
    RunPending();
  }
  // Answers an upstream call the chain started.
  void Finish(FakeUpstreamCall& call, net::UpstreamCallResult result) {
    call.finished = true;
    call.listener->OnFinish(result);
    RunPending();
  }

  void Register(uint64_t id, net::Call* call) { calls_[id] = call; }
  void Unregister(uint64_t id) { calls_.erase(id); }
  const std::vector<std::shared_ptr<FakeUpstreamCall>>& upstream() const {
    return upstream_;
  }
  FakeClock& fake_clock() { return clock_; }

 private:
  FakeClock clock_;
  FakeTimerQueue timers_;
  std::deque<absl::AnyInvocable<void()>> tasks_;
  std::map<uint64_t, net::Call*> calls_;
  std::vector<std::shared_ptr<FakeUpstreamCall>> upstream_;
};

// A downstream call as the transport would present it; records what the
// chain decided.
class FakeCall final : public net::Call {
 public:
  enum class Decision {
    kNone,
    kLocal,
    kForwarded,
    kForwardedHeld,
    kShared,
  };

  FakeCall(FakeExecutor& executor, uint64_t id, std::string path,
           net::HeaderList headers, absl::Duration timeout)
      : executor_(executor),
        id_(id),
        path_(std::move(path)),
        headers_(std::move(headers)),
        start_(executor.clock().Now()),
        client_deadline_(timeout == absl::InfiniteDuration()
                             ? absl::InfiniteFuture()
                             : start_ + timeout) {
    executor_.Register(id_, this);
  }
  ~FakeCall() override { executor_.Unregister(id_); }

  uint64_t id() const override { return id_; }
  net::Executor& executor() override { return executor_; }
  std::string_view path() const override { return path_; }
  std::string_view header(std::string_view name) const override {
    for (const auto& [n, v] : headers_) {
      if (n == name) return v;
    }
    return {};
  }
  absl::Time start_time() const override { return start_; }
  absl::Time client_deadline() const override { return client_deadline_; }
  void SetDeadline(absl::Time deadline) override { deadline_ = deadline; }
  absl::Time deadline() const override { return deadline_; }
  void SetObserver(std::unique_ptr<net::CallObserver> observer) override {
    observer_ = std::move(observer);
  }
  net::CallObserver* observer() const override { return observer_.get(); }
  void RespondLocal(const net::LocalAnswer& answer) override {
    decision_ = Decision::kLocal;
    answer_ = answer;
    reason_ = std::string(answer.reason);
    route_ = std::string(answer.route);
  }
  void Forward(const net::UpstreamAddress&) override {
    decision_ = Decision::kForwarded;
  }
  void ForwardHeld(const net::UpstreamAddress&, std::string body) override {
    decision_ = Decision::kForwardedHeld;
    forwarded_body_ = std::move(body);
  }
  void RespondWith(
      std::shared_ptr<const net::CapturedResponse> response) override {
    decision_ = Decision::kShared;
    shared_ = std::move(response);
  }
  void CollectRequest(
      uint64_t limit,
      absl::AnyInvocable<void(std::optional<std::string>)> done) override {
    collect_limit_ = limit;
    collect_ = std::move(done);
  }
  const net::HeaderList& request_headers() const override { return headers_; }

  // --- the test's side of the transport ---
  bool collecting() const { return collect_ != nullptr; }
  // The client half-closes after `body` (or sends more than the limit).
  void SendRequest(std::string body) {
    ASSERT_TRUE(collect_ != nullptr);
    auto done = std::move(collect_);
    collect_ = nullptr;
    if (body.size() > collect_limit_) {
      done(std::nullopt);
    } else {
      done(std::move(body));
    }
    executor_.RunPending();
  }
  // The stream ends (once): the observer settles.
  void Close(CallResult result) {
    ASSERT_FALSE(closed_);
    closed_ = true;
    executor_.Unregister(id_);
    if (observer_ != nullptr) {
      observer_->OnClose(result);
      observer_.reset();
    }
    executor_.RunPending();
  }
  // The transport's ending for what the chain decided, as it would report it.
  void CloseAnswered(int upstream_code = 0,
                     absl::Duration upstream_time = absl::Milliseconds(1)) {
    CallResult result;
    switch (decision_) {
      case Decision::kLocal:
        result.ending = Ending::kLocalAnswer;
        result.grpc_code = answer_.grpc_code;
        break;
      case Decision::kShared:
        result.ending = Ending::kCompleted;
        result.grpc_code = shared_->grpc_code;
        break;
      default:
        result.ending = Ending::kCompleted;
        result.forwarded = true;
        result.grpc_code = upstream_code;
        result.upstream_grpc_code = upstream_code;
        result.upstream_duration = upstream_time;
        break;
    }
    Close(result);
  }

  Decision decision() const { return decision_; }
  const net::LocalAnswer& answer() const { return answer_; }
  const std::string& reason() const { return reason_; }
  const std::string& answered_route() const { return route_; }
  const std::string& forwarded_body() const { return forwarded_body_; }
  const net::CapturedResponse* shared() const { return shared_.get(); }
  bool closed() const { return closed_; }

 private:
  FakeExecutor& executor_;
  const uint64_t id_;
  std::string path_;
  net::HeaderList headers_;
  absl::Time start_;
  absl::Time client_deadline_;
  absl::Time deadline_ = absl::InfiniteFuture();
  std::unique_ptr<net::CallObserver> observer_;
  Decision decision_ = Decision::kNone;
  net::LocalAnswer answer_;
  std::string reason_;
  std::string route_;
  std::string forwarded_body_;
  std::shared_ptr<const net::CapturedResponse> shared_;
  uint64_t collect_limit_ = 0;
  absl::AnyInvocable<void(std::optional<std::string>)> collect_;
  bool closed_ = false;
};

constexpr char kMethod[] = "/shop.v1.Orders/GetOrder";

net::CallResult Ended(Ending ending, int code, bool forwarded,
                      absl::Duration upstream_time = absl::ZeroDuration()) {
  CallResult result;
  result.ending = ending;
  result.grpc_code = code;
  result.forwarded = forwarded;
  result.upstream_duration = upstream_time;
  return result;
}

net::UpstreamCallResult Answered(int code, std::string body = "payload") {
  net::UpstreamCallResult result;
  result.grpc_code = code;
  result.duration = absl::Milliseconds(5);
  result.response = std::make_shared<net::CapturedResponse>();
  result.response->grpc_code = code;
  result.response->headers = {{":status", "200"}};
  result.response->body = std::move(body);
  result.response->trailers = {{"grpc-status", std::to_string(code)}};
  return result;
}

class ChainTest : public ::testing::Test {
 protected:
  // One route `r` on cluster `c` (one endpoint), with `policies` (YAML lines
  // of the route, indented four spaces).
  void Build(absl::string_view policies,
             absl::string_view match =
                 "{service: shop.v1.Orders, method: "
                 "GetOrder}",
             absl::string_view top_level = "",
             absl::string_view cluster = R"(    endpoints: ["127.0.0.1:1"])") {
    const std::string yaml = absl::StrCat(top_level, R"(
clusters:
  - name: c
)",
                                          cluster, R"(
routes:
  - name: r
    match: )",
                                          match, R"(
    cluster: c
)",
                                          policies);
    auto loaded = ParseConfigText(yaml, "chain_test.yaml", "");
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto snapshot = BuildSnapshot(
        std::move(*loaded), nullptr,
        {.metrics = metrics(), .dns = dns_, .clock = executor_.clock()});
    ASSERT_TRUE(snapshot.ok()) << snapshot.status();
    snapshot_ = *snapshot;
    handler_ = std::make_unique<ProxyHandler>(executor_, snapshot_);
  }

  // A new downstream call, handed to the chain.
  FakeCall& Call(net::HeaderList headers = {{"content-type",
                                             "application/grpc"}},
                 absl::Duration timeout = absl::InfiniteDuration(),
                 std::string path = kMethod) {
    calls_.push_back(std::make_unique<FakeCall>(
        executor_, ++next_id_, std::move(path), std::move(headers), timeout));
    FakeCall& call = *calls_.back();
    handler_->OnCall(call);
    executor_.RunPending();
    return call;
  }

  const Route& route() const { return *snapshot_->routes->routes()[0]; }
  Metrics& metrics() {
    return metrics_holder_.empty() ? metrics_ : *metrics_holder_.back();
  }
  RouteMetrics& route_metrics() { return *metrics().ForRoute("r"); }
  double Rejections(RejectReason reason) {
    return route_metrics().Rejections(reason).Value();
  }
  double Shadow(RejectReason reason) {
    return route_metrics().ShadowRejections(reason).Value();
  }
  double Requests(int code) { return route_metrics().Requests(code).Value(); }
  CircuitBreaker::State BreakerState() {
    return route().breaker->breaker().SnapshotApprox().state;
  }
  FakeUpstreamCall& Upstream(size_t i) { return *executor_.upstream().at(i); }
  size_t UpstreamCalls() const { return executor_.upstream().size(); }

  Metrics metrics_{"test"};
  std::vector<std::unique_ptr<Metrics>> metrics_holder_;  // one per Build
  NoResolver resolver_;
  DnsCache dns_{resolver_};
  FakeExecutor executor_;
  std::shared_ptr<const Snapshot> snapshot_;
  std::unique_ptr<ProxyHandler> handler_;
  std::vector<std::unique_ptr<FakeCall>> calls_;
  uint64_t next_id_ = 0;
};

// --- order and answers -------------------------------------------------------

TEST_F(ChainTest, RateLimitComesFirstAndItsRejectionNeverReachesTheBreaker) {
  Build(R"(    rate_limit: {requests_per_second: 1, burst: 1}
    circuit_breaker: {consecutive_failures: 1}
)");
  FakeCall& first = Call();
  EXPECT_EQ(first.decision(), FakeCall::Decision::kForwarded);
  FakeCall& second = Call();
  ASSERT_EQ(second.decision(), FakeCall::Decision::kLocal);
  EXPECT_EQ(second.reason(), "rate_limited");
  EXPECT_EQ(second.answer().grpc_code, 8);
  EXPECT_EQ(second.answer().retry_pushback_ms, 1000);
  EXPECT_EQ(second.answered_route(), "r");
  second.CloseAnswered();
  first.CloseAnswered(/*upstream_code=*/0);
  EXPECT_EQ(BreakerState(), CircuitBreaker::State::kClosed);
  EXPECT_EQ(route().breaker->breaker().SnapshotApprox().window_requests, 1);
  EXPECT_EQ(Rejections(RejectReason::kRateLimited), 1);
}

TEST_F(ChainTest, OpenBreakerAnswersWithTimeUntilHalfOpen) {
  Build(R"(    circuit_breaker: {consecutive_failures: 1, open_duration: 30s}
)");
  Call().CloseAnswered(/*upstream_code=*/14);
  ASSERT_EQ(BreakerState(), CircuitBreaker::State::kOpen);
  executor_.AdvanceBy(absl::Seconds(10));
  FakeCall& rejected = Call();
  ASSERT_EQ(rejected.decision(), FakeCall::Decision::kLocal);
  EXPECT_EQ(rejected.reason(), "circuit_open");
  EXPECT_EQ(rejected.answer().grpc_code, 14);
  EXPECT_EQ(rejected.answer().retry_pushback_ms, 20000);
}

TEST_F(ChainTest, BreakerRejectionComesBeforeTheSemaphore) {
  Build(R"(    circuit_breaker: {consecutive_failures: 1}
    concurrency: {max_in_flight: 1, max_queued: 0}
)");
  Call().CloseAnswered(14);
  FakeCall& rejected = Call();
  EXPECT_EQ(rejected.reason(), "circuit_open");
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 0u);
}

TEST_F(ChainTest, FullSemaphoreAnswersConcurrencyLimit) {
  Build(R"(    concurrency: {max_in_flight: 1, max_queued: 0}
)");
  FakeCall& holder = Call();
  EXPECT_EQ(holder.decision(), FakeCall::Decision::kForwarded);
  FakeCall& rejected = Call();
  EXPECT_EQ(rejected.reason(), "concurrency_limit");
  EXPECT_EQ(rejected.answer().grpc_code, 8);
  holder.CloseAnswered();
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 0u);
}

TEST_F(ChainTest, ParkedCallGoesOnWhenASlotIsReleased) {
  Build(R"(    concurrency: {max_in_flight: 1, max_queued: 1, queue_timeout: 1s}
)");
  FakeCall& holder = Call();
  FakeCall& waiter = Call();
  EXPECT_EQ(waiter.decision(), FakeCall::Decision::kNone);
  holder.CloseAnswered();
  EXPECT_EQ(waiter.decision(), FakeCall::Decision::kForwarded);
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 1u);
  waiter.CloseAnswered();
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 0u);
}

TEST_F(ChainTest, ParkedCallTimesOutWithQueueTimeout) {
  Build(
      R"(    concurrency: {max_in_flight: 1, max_queued: 1, queue_timeout: 50ms}
)");
  Call();
  FakeCall& waiter = Call();
  executor_.AdvanceBy(absl::Milliseconds(50));
  EXPECT_EQ(waiter.reason(), "queue_timeout");
  EXPECT_EQ(Rejections(RejectReason::kQueueTimeout), 1);
}

TEST_F(ChainTest, ParkedCallsOwnDeadlineWinsOverTheQueueTimeout) {
  Build(R"(    concurrency: {max_in_flight: 1, max_queued: 1, queue_timeout: 1s}
)");
  Call();
  FakeCall& waiter =
      Call({{"content-type", "application/grpc"}}, absl::Milliseconds(20));
  executor_.AdvanceBy(absl::Milliseconds(20));
  ASSERT_EQ(waiter.decision(), FakeCall::Decision::kLocal);
  EXPECT_EQ(waiter.answer().grpc_code, 4);
  EXPECT_EQ(waiter.reason(), "");
}

TEST_F(ChainTest, ClientLeavingWhileParkedFreesItsPlaceInTheQueue) {
  Build(R"(    concurrency: {max_in_flight: 1, max_queued: 1, queue_timeout: 1s}
)");
  FakeCall& holder = Call();
  FakeCall& waiter = Call();
  EXPECT_EQ(route().concurrency->limiter().QueuedApprox(), 1u);
  waiter.Close(Ended(Ending::kClientCancelled, 1, false));
  EXPECT_EQ(route().concurrency->limiter().QueuedApprox(), 0u);
  holder.CloseAnswered();
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 0u);
}

TEST_F(ChainTest, NoHealthyEndpointReleasesTheSlotAndTheTicket) {
  Build(R"(    circuit_breaker: {consecutive_failures: 1}
    concurrency: {max_in_flight: 1}
)");
  snapshot_->routes->routes()[0]->cluster->endpoints()[0]->load.healthy.store(
      false);
  FakeCall& call = Call();
  EXPECT_EQ(call.reason(), "no_healthy_endpoint");
  call.CloseAnswered();
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 0u);
  EXPECT_EQ(BreakerState(), CircuitBreaker::State::kClosed);
  EXPECT_EQ(route().breaker->breaker().SnapshotApprox().window_requests, 0);
}

// --- breaker accounting: one rule for every path ---------------------------

TEST_F(ChainTest, UnreachableEndpointIsATransportFailure) {
  // A connect held back by backoff: the transport never opened a stream.
  Build(R"(    circuit_breaker: {consecutive_failures: 3}
)");
  for (int i = 0; i < 3; ++i) {
    FakeCall& call = Call();
    ASSERT_EQ(call.decision(), FakeCall::Decision::kForwarded);
    call.Close(Ended(Ending::kUpstreamFailed, 14, /*forwarded=*/false));
  }
  EXPECT_EQ(BreakerState(), CircuitBreaker::State::kOpen);
}

TEST_F(ChainTest, DeadlinesTooShortToMeetNeverOpenTheBreaker) {
  Build(
      R"(    circuit_breaker: {consecutive_failures: 5, deadline_failure_min: 100ms}
)");
  for (int i = 0; i < 10; ++i) {
    Call().Close(
        Ended(Ending::kDeadlineExceeded, 4, true, absl::Nanoseconds(1)));
  }
  EXPECT_EQ(BreakerState(), CircuitBreaker::State::kClosed);
  EXPECT_EQ(Requests(4), 10);
}

TEST_F(ChainTest, SlowUpstreamBehindClientDeadlinesOpensTheBreaker) {
  Build(
      R"(    circuit_breaker: {consecutive_failures: 5, deadline_failure_min: 100ms}
)");
  for (int i = 0; i < 5; ++i) {
    Call().Close(
        Ended(Ending::kDeadlineExceeded, 4, true, absl::Milliseconds(150)));
  }
  EXPECT_EQ(BreakerState(), CircuitBreaker::State::kOpen);
}

TEST_F(ChainTest, RefusedStreamAndClientCancelAreNeitherSuccessNorFailure) {
  Build(R"(    circuit_breaker: {consecutive_failures: 1}
)");
  Call().Close(Ended(Ending::kUpstreamRefused, 14, true));
  Call().Close(Ended(Ending::kClientCancelled, 1, true));
  EXPECT_EQ(BreakerState(), CircuitBreaker::State::kClosed);
  EXPECT_EQ(route().breaker->breaker().SnapshotApprox().window_requests, 0);
}

TEST_F(ChainTest, FlightThatEveryCallerLeftOnItsDeadlineIsADeadlineFailure) {
  Build(
      R"(    circuit_breaker: {consecutive_failures: 1, deadline_failure_min: 100ms}
    singleflight: {}
)");
  FakeCall& leader =
      Call({{"content-type", "application/grpc"}}, absl::Milliseconds(200));
  leader.SendRequest("q");
  ASSERT_EQ(UpstreamCalls(), 1u);
  executor_.AdvanceBy(absl::Milliseconds(200));
  leader.Close(Ended(Ending::kDeadlineExceeded, 4, false));
  EXPECT_TRUE(Upstream(0).cancelled);
  EXPECT_EQ(BreakerState(), CircuitBreaker::State::kOpen);
}

TEST_F(ChainTest, FlightAnswerCountsOnceInTheBreaker) {
  Build(R"(    circuit_breaker: {consecutive_failures: 2}
    singleflight: {}
)");
  FakeCall& a = Call();
  a.SendRequest("q");
  FakeCall& b = Call();
  b.SendRequest("q");
  ASSERT_EQ(UpstreamCalls(), 1u);
  executor_.Finish(Upstream(0), Answered(14));
  EXPECT_EQ(a.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(b.decision(), FakeCall::Decision::kShared);
  a.CloseAnswered();
  b.CloseAnswered();
  EXPECT_EQ(route().breaker->breaker().SnapshotApprox().window_failures, 1);
  EXPECT_EQ(BreakerState(), CircuitBreaker::State::kClosed);
  EXPECT_EQ(Requests(14), 2);
}

TEST_F(ChainTest, FlightRefusedUnseenIsSentOnceMore) {
  Build(R"(    circuit_breaker: {consecutive_failures: 1}
    singleflight: {}
)");
  FakeCall& a = Call();
  a.SendRequest("q");
  net::UpstreamCallResult refused;
  refused.grpc_code = 14;
  refused.refused = true;
  refused.transport_failure = true;
  executor_.Finish(Upstream(0), refused);
  ASSERT_EQ(UpstreamCalls(), 2u);
  executor_.Finish(Upstream(1), Answered(0));
  EXPECT_EQ(a.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(BreakerState(), CircuitBreaker::State::kClosed);
}

// --- singleflight never changes a caller's answer ---------------------------

TEST_F(ChainTest, LeadersShortDeadlineDoesNotFailTheFollowers) {
  Build(R"(    timeout: 5s
    singleflight: {}
)");
  FakeCall& leader =
      Call({{"content-type", "application/grpc"}}, absl::Milliseconds(10));
  leader.SendRequest("q");
  FakeCall& follower = Call();
  follower.SendRequest("q");
  ASSERT_EQ(UpstreamCalls(), 1u);
  // The flight runs to the route timeout, not to the leader's deadline.
  EXPECT_EQ(Upstream(0).request.deadline,
            leader.start_time() + absl::Seconds(5));
  executor_.AdvanceBy(absl::Milliseconds(10));
  leader.Close(Ended(Ending::kDeadlineExceeded, 4, false));
  EXPECT_FALSE(Upstream(0).cancelled);
  executor_.Finish(Upstream(0), Answered(0));
  ASSERT_EQ(follower.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(follower.shared()->grpc_code, 0);
}

TEST_F(ChainTest, LastCallerLeavingCancelsTheFlight) {
  Build(R"(    singleflight: {}
)");
  FakeCall& leader = Call();
  leader.SendRequest("q");
  FakeCall& follower = Call();
  follower.SendRequest("q");
  leader.Close(Ended(Ending::kClientCancelled, 1, false));
  EXPECT_FALSE(Upstream(0).cancelled);
  follower.Close(Ended(Ending::kClientCancelled, 1, false));
  EXPECT_TRUE(Upstream(0).cancelled);
  EXPECT_EQ(handler_->FlightsRunning(), 0u);
}

TEST_F(ChainTest, PromotedFollowerPassesTheSemaphore) {
  Build(R"(    singleflight: {}
    concurrency: {max_in_flight: 1, max_queued: 4, queue_timeout: 1s}
)");
  FakeCall& holder = Call({{"content-type", "application/grpc"}});
  holder.SendRequest("other");  // a flight of its own holds the one slot
  ASSERT_EQ(UpstreamCalls(), 1u);
  FakeCall& leader = Call();
  leader.SendRequest("q");  // leads, parked for a slot
  FakeCall& follower = Call();
  follower.SendRequest("q");
  EXPECT_EQ(UpstreamCalls(), 1u);
  // The leader leaves before going upstream: the follower leads now, and
  // waits for a slot like any leader.
  leader.Close(Ended(Ending::kClientCancelled, 1, false));
  EXPECT_EQ(UpstreamCalls(), 1u);
  EXPECT_EQ(route().concurrency->limiter().QueuedApprox(), 1u);
  executor_.Finish(Upstream(0), Answered(0));
  ASSERT_EQ(UpstreamCalls(), 2u);
  EXPECT_EQ(Upstream(1).request.body, "q");
  executor_.Finish(Upstream(1), Answered(0));
  EXPECT_EQ(follower.decision(), FakeCall::Decision::kShared);
}

TEST_F(ChainTest, PromotedFollowerPassesTheBreaker) {
  Build(R"(    circuit_breaker: {consecutive_failures: 1, open_duration: 30s}
    singleflight: {}
    concurrency: {max_in_flight: 1, max_queued: 4, queue_timeout: 1s}
)");
  FakeCall& holder = Call();
  holder.SendRequest("a");  // holds the one slot
  Call().SendRequest("x");  // first in the queue
  FakeCall& leader = Call();
  leader.SendRequest("q");  // second in the queue
  FakeCall& follower = Call();
  follower.SendRequest("q");
  // The holder's flight fails: the breaker opens and the slot goes to "x".
  executor_.Finish(Upstream(0), Answered(14));
  ASSERT_EQ(BreakerState(), CircuitBreaker::State::kOpen);
  ASSERT_EQ(UpstreamCalls(), 2u);
  // The leader leaves before going upstream: the follower would lead now,
  // and meets the open breaker like any leader.
  leader.Close(Ended(Ending::kClientCancelled, 1, false));
  EXPECT_EQ(follower.reason(), "circuit_open");
  EXPECT_EQ(UpstreamCalls(), 2u);
}

TEST_F(ChainTest,
       KeyHoldsEncodingHeadersSoNoCallerGetsAnEncodingItNeverOffered) {
  Build(R"(    singleflight: {}
)");
  FakeCall& gzip = Call(
      {{"content-type", "application/grpc"}, {"grpc-accept-encoding", "gzip"}});
  gzip.SendRequest("q");
  FakeCall& identity = Call({{"content-type", "application/grpc"},
                             {"grpc-accept-encoding", "identity"}});
  identity.SendRequest("q");
  EXPECT_EQ(UpstreamCalls(), 2u);
}

TEST_F(ChainTest, KeyTellsAbsentFromEmptyAndHoldsEveryValue) {
  Build(R"(    singleflight: {key_headers: [x-tenant]}
)");
  Call({{"content-type", "application/grpc"}}).SendRequest("q");
  Call({{"content-type", "application/grpc"}, {"x-tenant", ""}})
      .SendRequest("q");
  Call({{"content-type", "application/grpc"},
        {"x-tenant", "a"},
        {"x-tenant", "b"}})
      .SendRequest("q");
  Call({{"content-type", "application/grpc"}, {"x-tenant", "a"}})
      .SendRequest("q");
  EXPECT_EQ(UpstreamCalls(), 4u);
  // And a true duplicate still coalesces.
  Call({{"content-type", "application/grpc"}, {"x-tenant", "a"}})
      .SendRequest("q");
  EXPECT_EQ(UpstreamCalls(), 4u);
}

TEST_F(ChainTest, KeyIsTheEncodingOfEveryKeyHeaderValueInConfiguredOrder) {
  Build(R"(    singleflight: {key_headers: [x-tenant, x-region]}
)");
  const SingleflightStage& stage = *route().singleflight;
  // Request order differs from the configured order; x-tenant is sent twice,
  // x-region and grpc-encoding not at all.
  FakeCall& call = Call({{"x-tenant", "a"},
                         {"grpc-accept-encoding", "gzip"},
                         {"content-type", "application/grpc"},
                         {"x-tenant", "b"}});
  using H = SingleflightKeyHeader;
  const std::vector<H> parts = {
      {.name = "content-type", .value = "application/grpc"},
      {.name = "grpc-encoding", .value = std::nullopt},
      {.name = "grpc-accept-encoding", .value = "gzip"},
      {.name = "x-tenant", .value = "a"},
      {.name = "x-tenant", .value = "b"},
      {.name = "x-region", .value = std::nullopt},
  };
  EXPECT_EQ(stage.Key(call, "msg"),
            EncodeSingleflightKey(kMethod, "msg", parts));
  EXPECT_NE(stage.Key(call, "msg"),
            EncodeSingleflightKey(kMethod, "msg",
                                  absl::MakeConstSpan(parts).first(5)));
}

TEST_F(ChainTest, AnswerTooLargeToShareReachesEveryCallerOnItsOwn) {
  Build(R"(    singleflight: {}
)");
  FakeCall& leader = Call();
  leader.SendRequest("q");
  FakeCall& follower = Call();
  follower.SendRequest("q");
  net::UpstreamCallResult too_large;
  too_large.grpc_code = 8;
  too_large.too_large = true;
  executor_.Finish(Upstream(0), too_large);
  EXPECT_EQ(leader.decision(), FakeCall::Decision::kForwardedHeld);
  EXPECT_EQ(leader.forwarded_body(), "q");
  EXPECT_EQ(follower.decision(), FakeCall::Decision::kForwardedHeld);
  EXPECT_EQ(follower.forwarded_body(), "q");
}

TEST_F(ChainTest, RequestOverMaxRequestBytesIsNeverHeld) {
  Build(R"(    singleflight: {max_request_bytes: 4}
)");
  FakeCall& call = Call();
  ASSERT_TRUE(call.collecting());
  call.SendRequest("longer than four");
  EXPECT_EQ(call.decision(), FakeCall::Decision::kForwarded);
  EXPECT_EQ(UpstreamCalls(), 0u);
}

TEST_F(ChainTest, BroadRouteCoalescesUnaryMethodsAndPassesStreamsUntouched) {
  const char* dir = std::getenv("BULWARK_BINARY_DIR");
  Build(R"(    singleflight: {}
)",
        "{service: bulwark.demo.v1.Demo}",
        absl::StrCat("descriptor_sets: [\"",
                     dir != nullptr ? dir : BULWARK_BUILD_DIR,
                     "/proto/demo_descriptor_set.pb\"]\n"));
  const net::HeaderList grpc = {{"content-type", "application/grpc"}};
  FakeCall& stream =
      Call(grpc, absl::InfiniteDuration(), "/bulwark.demo.v1.Demo/Bidi");
  EXPECT_FALSE(stream.collecting());
  EXPECT_EQ(stream.decision(), FakeCall::Decision::kForwarded);
  FakeCall& unknown = Call(grpc, absl::InfiniteDuration(),
                           "/bulwark.demo.v1.Demo/NotInTheDescriptors");
  EXPECT_EQ(unknown.decision(), FakeCall::Decision::kForwarded);
  FakeCall& a =
      Call(grpc, absl::InfiniteDuration(), "/bulwark.demo.v1.Demo/Echo");
  a.SendRequest("q");
  FakeCall& b =
      Call(grpc, absl::InfiniteDuration(), "/bulwark.demo.v1.Demo/Echo");
  b.SendRequest("q");
  EXPECT_EQ(UpstreamCalls(), 1u);
}

TEST_F(ChainTest, FollowerTakesNoSlot) {
  Build(R"(    singleflight: {}
    concurrency: {max_in_flight: 1, max_queued: 0}
)");
  Call().SendRequest("q");
  FakeCall& follower = Call();
  follower.SendRequest("q");
  EXPECT_EQ(follower.decision(), FakeCall::Decision::kNone);  // waiting
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 1u);
  EXPECT_EQ(route_metrics()
                .Singleflight(RouteMetrics::SingleflightRole::kFollower)
                .Value(),
            1);
}

// --- shadow is honest -------------------------------------------------------

// --- per-method series (SPEC section 5)

TEST_F(ChainTest, PerMethodSeriesNameKnownMethodsAndOtherwiseOther) {
  Build("", "{prefix: /shop.v1.}");
  // A broad route without descriptor_sets knows no method: _OTHER.
  FakeCall& call = Call({{"content-type", "application/grpc"}},
                        absl::InfiniteDuration(), "/shop.v1.Orders/Made.Up");
  call.CloseAnswered();
  EXPECT_EQ(&route().MethodMetricsFor("/shop.v1.Orders/Made.Up"),
            route().other_method);
  EXPECT_EQ(route().other_method->Requests(0).Value(), 1);
  EXPECT_TRUE(route().method_metrics.empty());
}

TEST_F(ChainTest, AnExactMethodRouteNamesItsMethod) {
  Build("");
  FakeCall& call = Call();
  call.CloseAnswered(/*upstream_code=*/5);
  MethodMetrics& method = route().MethodMetricsFor(kMethod);
  EXPECT_NE(&method, route().other_method);
  EXPECT_EQ(method.Requests(5).Value(), 1);
  EXPECT_EQ(method.Duration().Collect().histogram.sample_count, 1u);
  EXPECT_EQ(route().other_method->Requests(5).Value(), 0);
  EXPECT_THAT(metrics().Serialize(),
              ::testing::HasSubstr(
                  "bulwark_method_requests_total{code=\"NOT_FOUND\","
                  "method=\"shop.v1.Orders/GetOrder\",route=\"r\"} 1"));
}

// --- adaptive concurrency and priorities (SPEC section 7)
// ---------------------

TEST_F(ChainTest, AdaptiveRouteRefusesWithLoadShed) {
  Build(R"(    concurrency:
      max_in_flight: 100
      max_queued: 0
      adaptive: {min_limit: 1, initial_limit: 1}
)");
  FakeCall& holder = Call();
  EXPECT_EQ(holder.decision(), FakeCall::Decision::kForwarded);
  FakeCall& shed = Call();
  EXPECT_EQ(shed.reason(), "load_shed");
  EXPECT_EQ(shed.answer().grpc_code, 8);
  EXPECT_EQ(Rejections(RejectReason::kLoadShed), 1);
  holder.CloseAnswered();
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 0u);
}

TEST_F(ChainTest, UnaryCallsMoveTheAdaptiveLimitAndStreamsDoNot) {
  Build(R"(    concurrency:
      max_in_flight: 100
      adaptive: {min_limit: 1, initial_limit: 2}
)",
        "{prefix: /shop.v1.Orders/}");
  const ConcurrencyLimiter& limiter = route().concurrency->limiter();
  // Streams (not shaped like unary calls) end after 10 ms each, many times:
  // no sample, the limit stays.
  for (int i = 0; i < 64; ++i) {
    FakeCall& stream = Call();
    executor_.AdvanceBy(absl::Milliseconds(10));
    stream.CloseAnswered();
  }
  EXPECT_EQ(limiter.LimitApprox(), 2u);
  // Unary-shaped calls with the upstream unloaded: the limit grows.
  for (int i = 0; i < 64; ++i) {
    FakeCall& a = Call();
    FakeCall& b = Call();
    executor_.AdvanceBy(absl::Milliseconds(10));
    for (FakeCall* call : {&a, &b}) {
      CallResult result;
      result.ending = Ending::kCompleted;
      result.forwarded = true;
      result.grpc_code = 0;
      result.upstream_grpc_code = 0;
      result.unary_shaped = true;
      call->Close(result);
    }
  }
  EXPECT_GT(limiter.LimitApprox(), 2u);
}

TEST_F(ChainTest, PriorityHeaderOrdersTheQueueAndDisplacesLowerPriorities) {
  Build(R"(    concurrency:
      max_in_flight: 1
      max_queued: 1
      queue_timeout: 1s
      priority_header: x-priority
)");
  FakeCall& holder = Call();
  FakeCall& sheddable =
      Call({{"content-type", "application/grpc"}, {"x-priority", "sheddable"}});
  EXPECT_EQ(sheddable.decision(), FakeCall::Decision::kNone);
  // The queue is full; a critical call takes the sheddable one's place.
  FakeCall& critical =
      Call({{"content-type", "application/grpc"}, {"x-priority", "critical"}});
  EXPECT_EQ(sheddable.reason(), "load_shed");
  EXPECT_EQ(critical.decision(), FakeCall::Decision::kNone);
  // An unknown value is normal, below critical: refused as the queue is full.
  FakeCall& other =
      Call({{"content-type", "application/grpc"}, {"x-priority", "urgent!"}});
  EXPECT_EQ(other.reason(), "concurrency_limit");
  holder.CloseAnswered();
  EXPECT_EQ(critical.decision(), FakeCall::Decision::kForwarded);
}

TEST_F(ChainTest, ShadowAdaptiveCountsLoadShedAndLetsTheCallGo) {
  Build(R"(    concurrency:
      max_in_flight: 100
      max_queued: 0
      shadow: true
      adaptive: {min_limit: 1, initial_limit: 1}
)");
  FakeCall& first = Call();
  FakeCall& second = Call();
  EXPECT_EQ(first.decision(), FakeCall::Decision::kForwarded);
  EXPECT_EQ(second.decision(), FakeCall::Decision::kForwarded);
  EXPECT_EQ(Shadow(RejectReason::kLoadShed), 1);
  EXPECT_EQ(Rejections(RejectReason::kLoadShed), 0);
}

TEST_F(ChainTest, ShadowSemaphoreCountsWhatEnforcingWouldHaveRejected) {
  // SPEC: with {max_in_flight: 1, max_queued: 2, queue_timeout: 50ms}, six
  // concurrent calls: 3 concurrency_limit and 2 queue_timeout.
  Build(
      R"(    concurrency: {max_in_flight: 1, max_queued: 2, queue_timeout: 50ms, shadow: true}
)");
  std::vector<FakeCall*> calls;
  for (int i = 0; i < 6; ++i) calls.push_back(&Call());
  for (FakeCall* call : calls) {
    EXPECT_EQ(call->decision(), FakeCall::Decision::kForwarded);
  }
  EXPECT_EQ(Shadow(RejectReason::kConcurrencyLimit), 3);
  EXPECT_EQ(route().concurrency->limiter().QueuedApprox(), 2u);
  executor_.AdvanceBy(absl::Milliseconds(50));
  EXPECT_EQ(Shadow(RejectReason::kQueueTimeout), 2);
  for (FakeCall* call : calls) call->CloseAnswered();
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 0u);
  EXPECT_EQ(route().concurrency->limiter().QueuedApprox(), 0u);
  EXPECT_EQ(Rejections(RejectReason::kConcurrencyLimit), 0);
}

TEST_F(ChainTest, ShadowSemaphoreHoldsAGrantedBookingUntilTheCallEnds) {
  Build(
      R"(    concurrency: {max_in_flight: 1, max_queued: 1, queue_timeout: 1s, shadow: true}
)");
  FakeCall& first = Call();
  FakeCall& second = Call();  // booked in the queue, forwarded anyway
  EXPECT_EQ(second.decision(), FakeCall::Decision::kForwarded);
  first.CloseAnswered();
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 1u);
  second.CloseAnswered();
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 0u);
}

TEST_F(ChainTest, ShadowRateLimitAndBreakerCountAndLetCallsThrough) {
  Build(R"(    rate_limit: {requests_per_second: 1, burst: 1, shadow: true}
    circuit_breaker: {consecutive_failures: 1, shadow: true}
)");
  Call().CloseAnswered(14);
  FakeCall& call = Call();
  EXPECT_EQ(call.decision(), FakeCall::Decision::kForwarded);
  EXPECT_EQ(Shadow(RejectReason::kRateLimited), 1);
  EXPECT_EQ(Shadow(RejectReason::kCircuitOpen), 1);
}

TEST_F(ChainTest, ShadowSingleflightSendsEveryCallOnItsOwnStream) {
  Build(R"(    singleflight: {shadow: true}
)");
  FakeCall& a = Call();
  a.SendRequest("q");
  FakeCall& b = Call();
  b.SendRequest("q");
  EXPECT_EQ(a.decision(), FakeCall::Decision::kForwardedHeld);
  EXPECT_EQ(b.decision(), FakeCall::Decision::kForwardedHeld);
  EXPECT_EQ(b.forwarded_body(), "q");
  EXPECT_EQ(UpstreamCalls(), 0u);  // no detached flight call to outlive them
  EXPECT_EQ(Shadow(RejectReason::kCoalesced), 1);
  a.CloseAnswered();
  b.CloseAnswered();
  // The shadow flight closed with its caller: a new identical call leads.
  FakeCall& c = Call();
  c.SendRequest("q");
  EXPECT_EQ(Shadow(RejectReason::kCoalesced), 1);
}

// --- every policy combination, shadow and enforcing -----------------------

// Each policy absent, enforcing or in shadow (81 routes). Three identical
// calls and one other: one parks or follows, one is answered, one leaves;
// whatever each combination decides, every call ends, every slot, waiter,
// flight and ticket is given back, and the counts add up.
TEST_F(ChainTest, EveryPolicyCombinationReleasesEverythingItHolds) {
  const char* kBlocks[] = {
      "    rate_limit: {requests_per_second: 1, burst: 3%s}\n",
      "    circuit_breaker: {consecutive_failures: 1%s}\n",
      "    singleflight: {%s}\n",
      ("    concurrency: {max_in_flight: 1, max_queued: 1, queue_timeout: "
       "50ms%s}\n"),
  };
  for (int combo = 0; combo < 81; ++combo) {
    std::string policies;
    int mode = combo;
    for (const char* block : kBlocks) {
      const int m = mode % 3;  // 0 absent, 1 enforcing, 2 shadow
      mode /= 3;
      if (m == 0) continue;
      const bool braces_only =
          std::string_view(block).find("{%s}") != std::string_view::npos;
      const std::string shadow =
          m == 2 ? (braces_only ? "shadow: true" : ", shadow: true") : "";
      policies += absl::StrReplaceAll(block, {{"%s", shadow}});
    }
    SCOPED_TRACE(policies);
    calls_.clear();
    metrics_holder_.push_back(std::make_unique<Metrics>("test"));
    Build(policies);
    if (HasFatalFailure()) return;
    const size_t base = UpstreamCalls();
    std::vector<FakeCall*> calls;
    for (int i = 0; i < 4; ++i) {
      FakeCall& call = Call();
      if (call.collecting()) call.SendRequest(i < 3 ? "same" : "other");
      calls.push_back(&call);
    }
    // The first upstream call fails; the others answer OK.
    for (size_t i = base; i < UpstreamCalls(); ++i) {
      if (!Upstream(i).finished && !Upstream(i).cancelled) {
        executor_.Finish(Upstream(i), Answered(i == base ? 14 : 0));
      }
    }
    calls[2]->Close(Ended(Ending::kClientCancelled, 1, false));
    executor_.AdvanceBy(absl::Milliseconds(50));
    for (size_t i = base; i < UpstreamCalls(); ++i) {
      if (!Upstream(i).finished && !Upstream(i).cancelled) {
        executor_.Finish(Upstream(i), Answered(0));
      }
    }
    for (FakeCall* call : calls) {
      if (!call->closed()) call->CloseAnswered();
    }
    executor_.AdvanceBy(absl::Seconds(1));
    EXPECT_EQ(handler_->FlightsRunning(), 0u);
    EXPECT_EQ(route().state->active_calls.load(), 0);
    if (route().concurrency != nullptr) {
      EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 0u);
      EXPECT_EQ(route().concurrency->limiter().QueuedApprox(), 0u);
    }
    if (route().singleflight != nullptr) {
      EXPECT_EQ(route().singleflight->flights().FlightsOpenApprox(), 0u);
      EXPECT_EQ(route().singleflight->flights().FollowersWaitingApprox(), 0u);
    }
    if (route().breaker != nullptr) {
      EXPECT_EQ(route()
                    .breaker->breaker()
                    .SnapshotApprox()
                    .half_open_probes_in_flight,
                0);
    }
    double requests = 0;
    for (int code = 0; code < 17; ++code) requests += Requests(code);
    EXPECT_EQ(requests, 4);
  }
}

// --- /routes ---------------------------------------------------------------

TEST_F(ChainTest, LastMinuteCountsCallsRejectionsAndCoalescedCalls) {
  Build(R"(    rate_limit: {requests_per_second: 1, burst: 2}
    singleflight: {}
)");
  FakeCall& a = Call();
  a.SendRequest("q");
  FakeCall& b = Call();
  b.SendRequest("q");
  FakeCall& limited = Call();
  executor_.Finish(Upstream(0), Answered(0));
  a.CloseAnswered();
  b.CloseAnswered();
  limited.CloseAnswered();
  RecentActivity::Counts counts =
      route().state->recent.LastMinuteApprox(executor_.clock().Now());
  EXPECT_EQ(counts.calls, 3);
  EXPECT_EQ(counts.coalesced, 1);
  EXPECT_EQ(counts.rejections[static_cast<size_t>(RejectReason::kRateLimited)],
            1);
  // A minute later they have left the window.
  executor_.AdvanceBy(absl::Seconds(61));
  counts = route().state->recent.LastMinuteApprox(executor_.clock().Now());
  EXPECT_EQ(counts.calls, 0);
  EXPECT_EQ(counts.coalesced, 0);
}

TEST_F(ChainTest, RoutesJsonDescribesEachConfiguredPolicy) {
  Build(R"(    rate_limit: {requests_per_second: 10, burst: 5}
    circuit_breaker: {}
    concurrency: {max_in_flight: 3}
    singleflight: {}
)");
  EXPECT_EQ(route().rate_limit->DescribeJson(),
            "{\"tokens\": 5, \"shadow\": false}");
  EXPECT_NE(route().breaker->DescribeJson().find("\"state\": \"closed\""),
            std::string::npos);
  EXPECT_EQ(route().concurrency->DescribeJson(),
            "{\"limit\": 3, \"in_flight\": 0, \"queued\": 0, "
            "\"max_queued\": 128, \"shadow\": false}");
  EXPECT_EQ(route().singleflight->DescribeJson(),
            "{\"flights_open\": 0, \"followers_waiting\": 0, "
            "\"shadow\": false}");
}

// --- lifetimes --------------------------------------------------------------

TEST_F(ChainTest, PermitPostedToACallThatLeftIsReleased) {
  Build(R"(    concurrency: {max_in_flight: 1, max_queued: 1, queue_timeout: 1s}
)");
  FakeCall& holder = Call();
  FakeCall& waiter = Call();
  // The slot is handed to the waiter (the post is queued), then the waiter
  // leaves before the post runs.
  holder.Close(Ended(Ending::kCompleted, 0, true));
  (void)waiter;
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 1u);
  waiter.CloseAnswered();
  EXPECT_EQ(route().concurrency->limiter().InFlightApprox(), 0u);
}

TEST_F(ChainTest, RouteStateOutlivesTheSnapshotWhilePermitsArePosted) {
  Build(R"(    concurrency: {max_in_flight: 1, max_queued: 1, queue_timeout: 1s}
)");
  FakeCall* holder = &Call();
  Call();  // parked
  std::weak_ptr<RouteState> state = route().state;
  // The sidecar moves to another snapshot; the calls keep theirs.
  snapshot_.reset();
  handler_->SetSnapshot(nullptr);
  holder->CloseAnswered();
  calls_.clear();
  executor_.RunPending();
  EXPECT_TRUE(state.expired());
}

// --- retries, hedging and outlier detection (SPEC section 9) ---------------

constexpr char kThreeEndpoints[] =
    R"(    endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])";

net::UpstreamCallResult TrailersOnly(int code, std::string pushback = "") {
  net::UpstreamCallResult result;
  result.grpc_code = code;
  result.duration = absl::Milliseconds(5);
  result.response = std::make_shared<net::CapturedResponse>();
  result.response->grpc_code = code;
  result.response->trailers_only = true;
  result.response->headers = {{":status", "200"},
                              {"grpc-status", std::to_string(code)}};
  if (!pushback.empty()) {
    result.response->headers.emplace_back("grpc-retry-pushback-ms", pushback);
  }
  return result;
}

net::UpstreamCallResult Unreachable() {
  net::UpstreamCallResult result = TrailersOnly(14);
  result.transport_failure = true;
  return result;
}

std::string HeaderOf(const FakeUpstreamCall& call, std::string_view name) {
  for (const auto& [n, v] : call.request.headers) {
    if (n == name) return std::string(v);
  }
  return "<absent>";
}

class RetryTest : public ChainTest {
 protected:
  double Attempts(RouteMetrics::AttemptKind kind) {
    return route_metrics().UpstreamAttempts(kind).Value();
  }
  double Exhausted() { return route_metrics().RetryBudgetExhausted().Value(); }
};

using AttemptKind = RouteMetrics::AttemptKind;

TEST_F(RetryTest, ARetryGoesToAnotherEndpointAndTurnsAFailureIntoOk) {
  Build(R"(    retry: {methods: ALL}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  ASSERT_TRUE(call.collecting());  // held whole, to be sent again
  call.SendRequest("q");
  ASSERT_EQ(UpstreamCalls(), 1u);
  EXPECT_EQ(HeaderOf(Upstream(0), "grpc-previous-rpc-attempts"), "<absent>");
  executor_.Finish(Upstream(0), TrailersOnly(14));
  EXPECT_EQ(call.decision(), FakeCall::Decision::kNone);  // backing off
  executor_.AdvanceBy(absl::Milliseconds(25));  // initial_backoff: the cap
  ASSERT_EQ(UpstreamCalls(), 2u);
  EXPECT_NE(Upstream(1).endpoint, Upstream(0).endpoint);
  EXPECT_EQ(Upstream(1).request.body, "q");
  EXPECT_EQ(HeaderOf(Upstream(1), "grpc-previous-rpc-attempts"), "1");
  executor_.Finish(Upstream(1), Answered(0));
  ASSERT_EQ(call.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(call.shared()->grpc_code, 0);
  EXPECT_EQ(call.shared()->body, "payload");
  call.CloseAnswered();
  EXPECT_EQ(Requests(0), 1);  // the client's call counts once
  EXPECT_EQ(Attempts(AttemptKind::kFirst), 1);
  EXPECT_EQ(Attempts(AttemptKind::kRetry), 1);
}

TEST_F(RetryTest, AnAnswerWithResponseHeadersIsCommittedWhateverItsStatus) {
  Build(R"(    retry: {methods: ALL}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  call.SendRequest("q");
  executor_.Finish(Upstream(0), Answered(14));  // headers, then trailers
  executor_.AdvanceBy(absl::Seconds(1));
  EXPECT_EQ(UpstreamCalls(), 1u);
  ASSERT_EQ(call.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(call.shared()->grpc_code, 14);
}

TEST_F(RetryTest, OnlyRetryCodesAreRetriedAndResourceExhaustedNever) {
  Build(R"(    retry: {methods: ALL, retry_codes: [UNAVAILABLE, ABORTED]}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  for (int code : {8, 13, 5}) {
    FakeCall& call = Call();
    call.SendRequest("q");
    const size_t before = UpstreamCalls();
    executor_.Finish(Upstream(before - 1), TrailersOnly(code));
    executor_.AdvanceBy(absl::Seconds(1));
    EXPECT_EQ(UpstreamCalls(), before) << code;
    ASSERT_EQ(call.decision(), FakeCall::Decision::kShared) << code;
    EXPECT_EQ(call.shared()->grpc_code, code);
  }
  FakeCall& aborted = Call();
  aborted.SendRequest("q");
  executor_.Finish(Upstream(UpstreamCalls() - 1), TrailersOnly(10));
  executor_.AdvanceBy(absl::Milliseconds(25));
  EXPECT_EQ(UpstreamCalls(), 5u);
}

TEST_F(RetryTest, ListingResourceExhaustedIsAConfigError) {
  auto loaded = ParseConfigText(R"(
clusters: [{name: c, endpoints: ["127.0.0.1:1"]}]
routes:
  - name: r
    match: {service: a.B, method: C}
    cluster: c
    retry: {methods: ALL, retry_codes: [UNAVAILABLE, RESOURCE_EXHAUSTED]}
)",
                                "t.yaml", "");
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()),
              ::testing::HasSubstr("routes[0].retry.retry_codes[1]: "
                                   "RESOURCE_EXHAUSTED is never retried"));
}

TEST_F(RetryTest, PushbackIsTheDelayAndANegativeOneStopsRetries) {
  Build(R"(    retry: {methods: ALL, max_attempts: 3}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  call.SendRequest("q");
  executor_.Finish(Upstream(0), TrailersOnly(14, "200"));
  executor_.AdvanceBy(absl::Milliseconds(199));
  EXPECT_EQ(UpstreamCalls(), 1u);  // a backoff would have been <= 25 ms
  executor_.AdvanceBy(absl::Milliseconds(1));
  ASSERT_EQ(UpstreamCalls(), 2u);
  executor_.Finish(Upstream(1), TrailersOnly(14, "-1"));
  executor_.AdvanceBy(absl::Seconds(5));
  EXPECT_EQ(UpstreamCalls(), 2u);
  ASSERT_EQ(call.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(call.shared()->grpc_code, 14);
}

TEST_F(RetryTest, AttemptsStopAtMaxAttemptsAndTheLastAnswerIsTheCalls) {
  Build(R"(    retry: {methods: ALL, max_attempts: 3}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  call.SendRequest("q");
  executor_.Finish(Upstream(0), Unreachable());
  executor_.AdvanceBy(absl::Milliseconds(25));
  ASSERT_EQ(UpstreamCalls(), 2u);
  executor_.Finish(Upstream(1), TrailersOnly(14));
  executor_.AdvanceBy(absl::Milliseconds(50));  // the second backoff's cap
  ASSERT_EQ(UpstreamCalls(), 3u);
  EXPECT_EQ(HeaderOf(Upstream(2), "grpc-previous-rpc-attempts"), "2");
  // Three attempts, three endpoints.
  EXPECT_NE(Upstream(2).endpoint, Upstream(0).endpoint);
  EXPECT_NE(Upstream(2).endpoint, Upstream(1).endpoint);
  executor_.Finish(Upstream(2), TrailersOnly(14));
  executor_.AdvanceBy(absl::Seconds(1));
  EXPECT_EQ(UpstreamCalls(), 3u);
  ASSERT_EQ(call.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(call.shared()->grpc_code, 14);
}

TEST_F(RetryTest, NoRetryThatCannotFinishBeforeTheCallsDeadline) {
  Build(R"(    retry: {methods: ALL}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call =
      Call({{"content-type", "application/grpc"}}, absl::Milliseconds(100));
  call.SendRequest("q");
  EXPECT_EQ(Upstream(0).request.deadline,
            call.start_time() + absl::Milliseconds(100));
  executor_.Finish(Upstream(0), TrailersOnly(14, "150"));
  EXPECT_EQ(UpstreamCalls(), 1u);
  ASSERT_EQ(call.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(call.shared()->grpc_code, 14);
}

TEST_F(RetryTest, PerAttemptTimeoutBoundsEachAttemptWithinTheCallsDeadline) {
  Build(R"(    retry: {methods: ALL, per_attempt_timeout: 30ms,
            retry_codes: [UNAVAILABLE, DEADLINE_EXCEEDED]}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call =
      Call({{"content-type", "application/grpc"}}, absl::Milliseconds(1000));
  call.SendRequest("q");
  EXPECT_EQ(Upstream(0).request.deadline,
            call.start_time() + absl::Milliseconds(30));
}

TEST_F(RetryTest, TheBudgetHoldsExtraAttemptsAndCountsWhatItStopped) {
  // ratio 0, floor 0.1/s x 10 s: one extra attempt in the window.
  Build(R"(    retry: {methods: ALL, budget: {ratio: 0, min_per_second: 0.1}}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& a = Call();
  a.SendRequest("q");
  executor_.Finish(Upstream(0), TrailersOnly(14));
  executor_.AdvanceBy(absl::Milliseconds(25));
  ASSERT_EQ(UpstreamCalls(), 2u);
  FakeCall& b = Call();
  b.SendRequest("q");
  executor_.Finish(Upstream(2), TrailersOnly(14));
  executor_.AdvanceBy(absl::Milliseconds(25));
  EXPECT_EQ(UpstreamCalls(), 3u);  // b's retry was not sent
  ASSERT_EQ(b.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(b.shared()->grpc_code, 14);
  EXPECT_EQ(Exhausted(), 1);
  EXPECT_THAT(route().upstream->DescribeRetryJson(executor_.clock().Now()),
              ::testing::HasSubstr("\"budget_left\": 0"));
}

TEST_F(RetryTest, EveryEndpointFailingSendsAtMostOnePlusRatioTimesTheCalls) {
  Build(R"(    retry: {methods: ALL, max_attempts: 5,
            budget: {ratio: 0.2, min_per_second: 0}}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  size_t answered = 0;
  for (int i = 0; i < 200; ++i) {
    FakeCall& call = Call();
    call.SendRequest("q");
    while (answered < UpstreamCalls()) {
      executor_.Finish(Upstream(answered++), TrailersOnly(14));
      executor_.AdvanceBy(absl::Milliseconds(250));
    }
    ASSERT_EQ(call.decision(), FakeCall::Decision::kShared) << i;
    call.CloseAnswered();
  }
  EXPECT_LE(UpstreamCalls(), 240u);
  EXPECT_GE(UpstreamCalls(), 230u);  // the budget was used, not left idle
}

TEST_F(RetryTest, MethodsNotMarkedIdempotentAreSentOnce) {
  const char* dir = std::getenv("BULWARK_BINARY_DIR");
  Build(R"(    retry: {}
)",
        "{service: bulwark.demo.v1.Demo}",
        absl::StrCat("descriptor_sets: [\"",
                     dir != nullptr ? dir : BULWARK_BUILD_DIR,
                     "/proto/demo_descriptor_set.pb\"]\n"),
        kThreeEndpoints);
  const net::HeaderList grpc = {{"content-type", "application/grpc"}};
  // Write is not marked: streamed once, never held.
  FakeCall& write =
      Call(grpc, absl::InfiniteDuration(), "/bulwark.demo.v1.Demo/Write");
  EXPECT_FALSE(write.collecting());
  EXPECT_EQ(write.decision(), FakeCall::Decision::kForwarded);
  // Echo is NO_SIDE_EFFECTS: retried.
  FakeCall& echo =
      Call(grpc, absl::InfiniteDuration(), "/bulwark.demo.v1.Demo/Echo");
  echo.SendRequest("q");
  executor_.Finish(Upstream(0), TrailersOnly(14));
  executor_.AdvanceBy(absl::Milliseconds(25));
  EXPECT_EQ(UpstreamCalls(), 2u);
}

TEST_F(RetryTest, ALargerRequestThanMaxRequestBytesGetsOneStreamedAttempt) {
  Build(R"(    retry: {methods: ALL, max_request_bytes: 4}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  call.SendRequest(std::string(20, 'x'));
  EXPECT_EQ(call.decision(), FakeCall::Decision::kForwarded);
}

TEST_F(RetryTest, AHedgeFollowsAfterTheDelayAndTheFirstAnswerWins) {
  Build(R"(    retry: {methods: ALL, hedge_delay: 10ms, max_attempts: 3}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  call.SendRequest("q");
  executor_.AdvanceBy(absl::Milliseconds(9));
  EXPECT_EQ(UpstreamCalls(), 1u);
  executor_.AdvanceBy(absl::Milliseconds(1));
  ASSERT_EQ(UpstreamCalls(), 2u);
  EXPECT_NE(Upstream(1).endpoint, Upstream(0).endpoint);
  EXPECT_EQ(HeaderOf(Upstream(1), "grpc-previous-rpc-attempts"), "1");
  executor_.Finish(Upstream(1), Answered(0, "fast"));
  ASSERT_EQ(call.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(call.shared()->body, "fast");
  EXPECT_TRUE(Upstream(0).cancelled);  // the loser is cancelled upstream
  executor_.AdvanceBy(absl::Seconds(1));
  EXPECT_EQ(UpstreamCalls(), 2u);  // no third hedge after the answer
  EXPECT_EQ(Attempts(AttemptKind::kHedge), 1);
}

TEST_F(RetryTest, ARetriedAnswerDuringHedgingSendsTheNextAttemptAtOnce) {
  Build(R"(    retry: {methods: ALL, hedge_delay: 100ms, max_attempts: 3}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  call.SendRequest("q");
  executor_.Finish(Upstream(0), TrailersOnly(14));
  ASSERT_EQ(UpstreamCalls(), 2u);
  executor_.Finish(Upstream(1), Answered(0));
  EXPECT_EQ(call.decision(), FakeCall::Decision::kShared);
}

TEST_F(RetryTest, TheBreakerCountsEveryAttempt) {
  Build(R"(    circuit_breaker: {consecutive_failures: 2}
    retry: {methods: ALL, max_attempts: 2}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  call.SendRequest("q");
  executor_.Finish(Upstream(0), TrailersOnly(14));
  executor_.AdvanceBy(absl::Milliseconds(25));
  ASSERT_EQ(UpstreamCalls(), 2u);
  executor_.Finish(Upstream(1), TrailersOnly(14));
  call.CloseAnswered();
  EXPECT_EQ(BreakerState(), CircuitBreaker::State::kOpen);
}

TEST_F(RetryTest, AnOpenBreakerStopsFurtherAttempts) {
  Build(R"(    circuit_breaker: {consecutive_failures: 1}
    retry: {methods: ALL, max_attempts: 3}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  call.SendRequest("q");
  executor_.Finish(Upstream(0), TrailersOnly(14));  // opens the breaker
  executor_.AdvanceBy(absl::Milliseconds(25));
  EXPECT_EQ(UpstreamCalls(), 1u);
  ASSERT_EQ(call.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(call.shared()->grpc_code, 14);
}

TEST_F(RetryTest, ARefusedStreamIsSentAgainOnceOutsideTheBudget) {
  Build(R"(    retry: {methods: ALL, budget: {ratio: 0, min_per_second: 0}}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  call.SendRequest("q");
  net::UpstreamCallResult refused = Unreachable();
  refused.refused = true;
  executor_.Finish(Upstream(0), refused);
  ASSERT_EQ(UpstreamCalls(), 2u);  // at once, budget or not
  EXPECT_EQ(Upstream(1).endpoint, Upstream(0).endpoint);
  EXPECT_EQ(HeaderOf(Upstream(1), "grpc-previous-rpc-attempts"), "<absent>");
  executor_.Finish(Upstream(1), Answered(0));
  EXPECT_EQ(call.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(Exhausted(), 0);
}

TEST_F(RetryTest, TheClientLeavingCancelsTheAttemptsAndAPendingRetry) {
  Build(R"(    retry: {methods: ALL, hedge_delay: 10ms}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  call.SendRequest("q");
  executor_.AdvanceBy(absl::Milliseconds(10));
  ASSERT_EQ(UpstreamCalls(), 2u);
  call.Close(Ended(Ending::kClientCancelled, 1, false));
  EXPECT_TRUE(Upstream(0).cancelled);
  EXPECT_TRUE(Upstream(1).cancelled);
  executor_.AdvanceBy(absl::Seconds(1));
  EXPECT_EQ(UpstreamCalls(), 2u);
  for (const auto& e : route().cluster->endpoints()) {
    EXPECT_EQ(e->load.in_flight.load(), 0u) << e->resolved;
  }
}

TEST_F(RetryTest, AFlightIsRetriedAndEveryCallerGetsTheAnswer) {
  Build(R"(    singleflight: {}
    retry: {methods: ALL}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& a = Call();
  a.SendRequest("q");
  FakeCall& b = Call();
  b.SendRequest("q");
  ASSERT_EQ(UpstreamCalls(), 1u);
  executor_.Finish(Upstream(0), TrailersOnly(14));
  executor_.AdvanceBy(absl::Milliseconds(25));
  ASSERT_EQ(UpstreamCalls(), 2u);
  executor_.Finish(Upstream(1), Answered(0));
  ASSERT_EQ(a.decision(), FakeCall::Decision::kShared);
  ASSERT_EQ(b.decision(), FakeCall::Decision::kShared);
  EXPECT_EQ(a.shared()->grpc_code, 0);
  EXPECT_EQ(b.shared()->grpc_code, 0);
}

constexpr char kOutlierCluster[] =
    R"(    endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    outlier_detection: {consecutive_failures: 3, base_ejection_time: 10s,
                        min_available: 2})";

TEST_F(RetryTest, OutlierDetectionEjectsAFailingEndpointUntilItsTimeIsUp) {
  Build("", "{service: shop.v1.Orders, method: GetOrder}", "", kOutlierCluster);
  const Cluster& cluster = *route().cluster;
  // Round robin: calls 0, 3, 6 go to the first endpoint; they fail.
  std::string failing;
  int failures = 0;
  for (int i = 0; failures < 3; ++i) {
    FakeCall& call = Call();
    ASSERT_EQ(call.decision(), FakeCall::Decision::kForwarded);
    const std::string endpoint(route().cluster->endpoints()[i % 3]->resolved);
    if (i % 3 == 0) {
      failing = endpoint;
      call.Close(Ended(Ending::kCompleted, 14, true, absl::Milliseconds(1)));
      ++failures;
    } else {
      call.CloseAnswered(0);
    }
  }
  const Endpoint& ejected = *cluster.endpoints()[0];
  ASSERT_EQ(ejected.resolved, failing);
  EXPECT_TRUE(ejected.load.ejected.load());
  EXPECT_EQ(ejected.metrics->name(), failing);
  // Balancing skips it.
  for (int i = 0; i < 6; ++i) {
    EXPECT_NE(route().upstream->Pick(executor_.clock()), &ejected);
  }
  EXPECT_TRUE(ejected.outlier->GetSnapshot(executor_.clock().Now()).ejected);
  executor_.AdvanceBy(absl::Seconds(10));
  int back = 0;
  for (int i = 0; i < 6; ++i) {
    back += route().upstream->Pick(executor_.clock()) == &ejected;
  }
  EXPECT_EQ(back, 2);
  EXPECT_FALSE(ejected.load.ejected.load());
}

TEST_F(RetryTest, OutlierDetectionNeverEjectsBelowMinAvailable) {
  Build("", "{service: shop.v1.Orders, method: GetOrder}", "", kOutlierCluster);
  // Every call fails: one endpoint is ejected, then min_available (2) holds.
  for (int i = 0; i < 30; ++i) {
    FakeCall& call = Call();
    call.Close(Ended(Ending::kCompleted, 14, true, absl::Milliseconds(1)));
  }
  int ejected = 0;
  for (const auto& e : route().cluster->endpoints()) {
    ejected += e->load.ejected.load() ? 1 : 0;
  }
  EXPECT_EQ(ejected, 1);
}

TEST_F(RetryTest, AnEjectedHealthyEndpointServesWhenHealthTakesTheOthers) {
  Build("", "{service: shop.v1.Orders, method: GetOrder}", "", kOutlierCluster);
  for (int i = 0; i < 30; ++i) {
    FakeCall& call = Call();
    call.Close(Ended(Ending::kCompleted, 14, true, absl::Milliseconds(1)));
  }
  const auto& endpoints = route().cluster->endpoints();
  Endpoint* ejected = nullptr;
  for (const auto& e : endpoints) {
    if (e->load.ejected.load()) ejected = e.get();
  }
  ASSERT_NE(ejected, nullptr);
  // Health checks take every other endpoint away: the ejected one serves
  // (min_available 2 > 0), rather than no endpoint at all.
  for (const auto& e : endpoints) {
    if (e.get() != ejected) e->load.healthy.store(false);
  }
  EXPECT_EQ(route().upstream->Pick(executor_.clock()), ejected);
  ejected->load.healthy.store(false);
  EXPECT_EQ(route().upstream->Pick(executor_.clock()), nullptr);
}

TEST_F(RetryTest, ClientCancelsAndShortDeadlinesNeverEject) {
  Build("", "{service: shop.v1.Orders, method: GetOrder}", "", kOutlierCluster);
  for (int i = 0; i < 30; ++i) {
    FakeCall& call = Call();
    call.Close(i % 2 == 0 ? Ended(Ending::kClientCancelled, 1, true)
                          : Ended(Ending::kDeadlineExceeded, 4, true,
                                  absl::Milliseconds(10)));
  }
  for (const auto& e : route().cluster->endpoints()) {
    EXPECT_FALSE(e->load.ejected.load()) << e->resolved;
  }
}

TEST_F(RetryTest, RetriesAndOutlierDetectionTogetherAnswerEveryCallOk) {
  Build(R"(    retry: {methods: ALL}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kOutlierCluster);
  const std::string bad(route().cluster->endpoints()[0]->resolved);
  int ok = 0;
  size_t answered = 0;
  for (int i = 0; i < 60; ++i) {
    FakeCall& call = Call();
    call.SendRequest("q");
    while (answered < UpstreamCalls()) {
      FakeUpstreamCall& up = Upstream(answered++);
      executor_.Finish(up, up.endpoint == bad ? Unreachable() : Answered(0));
      executor_.AdvanceBy(absl::Milliseconds(25));
    }
    ASSERT_EQ(call.decision(), FakeCall::Decision::kShared);
    ok += call.shared()->grpc_code == 0 ? 1 : 0;
    call.CloseAnswered();
  }
  EXPECT_EQ(ok, 60);
  // The bad endpoint saw 3 calls before its ejection (and none during it).
  int to_bad = 0;
  for (const auto& up : executor_.upstream()) to_bad += up->endpoint == bad;
  EXPECT_EQ(to_bad, 3);
}

// --- PEAK_EWMA balancing
// ------------------------------------------------------

constexpr char kPeakEwmaCluster[] =
    R"(    endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    load_balancing: PEAK_EWMA)";

class ChainPeakEwmaTest : public RetryTest {
 protected:
  const Endpoint& EndpointAt(const std::string& resolved) {
    for (const auto& e : route().cluster->endpoints()) {
      if (e->resolved == resolved) return *e;
    }
    ADD_FAILURE() << "no endpoint " << resolved;
    return *route().cluster->endpoints()[0];
  }
  // The estimate in whole milliseconds, -1 if never sampled.
  int64_t EstimateMs(const Endpoint& e) {
    const std::optional<absl::Duration> estimate =
        LatencyEstimate(e.load, executor_.clock().Now());
    return estimate.has_value() ? absl::ToInt64Milliseconds(*estimate) : -1;
  }
};

TEST_F(ChainPeakEwmaTest, UnaryCallsAreLatencySamplesAndStreamsAreNot) {
  Build("", "{service: shop.v1.Orders}", "", kPeakEwmaCluster);
  const auto& endpoints = route().cluster->endpoints();
  // Never sampled and idle: the three are tried in turn.
  FakeCall& stream = Call();
  ASSERT_EQ(stream.decision(), FakeCall::Decision::kForwarded);
  stream.CloseAnswered(0, absl::Seconds(30));  // not unary-shaped: no sample
  for (const auto& e : endpoints) EXPECT_EQ(EstimateMs(*e), -1);
  int sampled = 0;
  for (int i = 0; i < 3; ++i) {
    FakeCall& call = Call();
    ASSERT_EQ(call.decision(), FakeCall::Decision::kForwarded);
    CallResult result =
        Ended(Ending::kCompleted, 0, true, absl::Milliseconds(i == 0 ? 40 : 4));
    result.upstream_grpc_code = 0;
    result.unary_shaped = true;
    call.Close(result);
  }
  std::vector<int64_t> estimates;
  for (const auto& e : endpoints) {
    estimates.push_back(EstimateMs(*e));
    sampled += EstimateMs(*e) >= 0;
  }
  EXPECT_EQ(sampled, 3);  // each unsampled endpoint got one call
  std::sort(estimates.begin(), estimates.end());
  EXPECT_THAT(estimates, ElementsAre(4, 4, 40));
  // Now the 40 ms endpoint is passed over while the others are as loaded.
  const Endpoint* slow = nullptr;
  for (const auto& e : endpoints) {
    if (EstimateMs(*e) == 40) slow = e.get();
  }
  for (int i = 0; i < 6; ++i) {
    EXPECT_NE(route().upstream->Pick(executor_.clock()), slow);
  }
}

TEST_F(ChainPeakEwmaTest, AFastFailureNeverMakesAnEndpointLookFast) {
  Build("", "{service: shop.v1.Orders}", "", kPeakEwmaCluster);
  FakeCall& first = Call();
  ASSERT_EQ(first.decision(), FakeCall::Decision::kForwarded);
  const Endpoint* forwarded_to = nullptr;  // the one holding the call
  for (const auto& e : route().cluster->endpoints()) {
    if (e->load.in_flight.load() == 1) forwarded_to = e.get();
  }
  ASSERT_NE(forwarded_to, nullptr);
  const Endpoint& e = *forwarded_to;
  CallResult ok = Ended(Ending::kCompleted, 0, true, absl::Milliseconds(30));
  ok.upstream_grpc_code = 0;
  ok.unary_shaped = true;
  first.Close(ok);
  ASSERT_EQ(EstimateMs(e), 30);
  // The others are busy: the next call goes to the same endpoint and fails
  // in 1 ms (UNAVAILABLE, a failure by the default rule).
  for (const auto& other : route().cluster->endpoints()) {
    if (other.get() != &e) other->load.in_flight.store(100);
  }
  FakeCall& second = Call();
  CallResult failed =
      Ended(Ending::kCompleted, 14, true, absl::Milliseconds(1));
  failed.upstream_grpc_code = 14;
  failed.unary_shaped = true;
  second.Close(failed);
  EXPECT_EQ(EstimateMs(e), 30);  // a lower bound: not lowered
  // A transport failure after 50 ms raises it.
  FakeCall& third = Call();
  CallResult broken =
      Ended(Ending::kUpstreamFailed, 14, true, absl::Milliseconds(50));
  broken.unary_shaped = true;
  third.Close(broken);
  EXPECT_EQ(EstimateMs(e), 50);
  for (const auto& other : route().cluster->endpoints()) {
    if (other.get() != &e) other->load.in_flight.store(0);
  }
}

TEST_F(ChainPeakEwmaTest, AHedgeThatLosesLeavesItsElapsedTimeAsALowerBound) {
  Build(R"(    retry: {methods: ALL, hedge_delay: 10ms, max_attempts: 2}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kPeakEwmaCluster);
  FakeCall& call = Call();
  call.SendRequest("q");
  executor_.AdvanceBy(absl::Milliseconds(12));
  ASSERT_EQ(UpstreamCalls(), 2u);
  executor_.Finish(Upstream(1), Answered(0, "fast"));  // duration: 5 ms
  ASSERT_TRUE(Upstream(0).cancelled);
  EXPECT_EQ(EstimateMs(EndpointAt(Upstream(1).endpoint)), 5);
  // The first attempt was out 12 ms when cancelled: at least that slow.
  EXPECT_EQ(EstimateMs(EndpointAt(Upstream(0).endpoint)), 12);
  call.CloseAnswered();
  // The next call avoids the slow one: the fast one (5 ms x 1) loses only to
  // the endpoint never tried (0).
  FakeCall& next = Call();
  next.SendRequest("q");
  ASSERT_EQ(UpstreamCalls(), 3u);
  EXPECT_NE(Upstream(2).endpoint, Upstream(0).endpoint);
  EXPECT_NE(Upstream(2).endpoint, Upstream(1).endpoint);
}

TEST_F(ChainPeakEwmaTest, OtherBalancingsRecordNoLatency) {
  Build(R"(    retry: {methods: ALL, hedge_delay: 10ms, max_attempts: 2}
)",
        "{service: shop.v1.Orders, method: GetOrder}", "", kThreeEndpoints);
  FakeCall& call = Call();
  call.SendRequest("q");
  executor_.AdvanceBy(absl::Milliseconds(12));
  ASSERT_EQ(UpstreamCalls(), 2u);
  executor_.Finish(Upstream(1), Answered(0));
  for (const auto& e : route().cluster->endpoints())
    EXPECT_EQ(EstimateMs(*e), -1);
  call.CloseAnswered();
}

}  // namespace
}  // namespace bulwark::chain
