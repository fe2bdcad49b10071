#include "sidecar/metrics.h"

#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bulwark {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kPromtool[] = "/usr/bin/promtool";

// Uses every handle once, so every family of SPEC section 5 has at least one
// series. Returns the endpoint handle: the endpoint's series exist while it is
// held.
[[nodiscard]] std::shared_ptr<EndpointMetrics> TouchEverything(
    Metrics& metrics) {
  RouteMetrics* route = metrics.ForRoute("orders-get");
  route->Requests(0).Increment();
  route->Requests(14).Increment();
  route->Duration().Observe(0.003);
  route->Rejections(RejectReason::kRateLimited).Increment();
  route->ShadowRejections(RejectReason::kCoalesced).Increment();
  route->SetBreakerState(RouteMetrics::BreakerState::kClosed);
  route->BreakerTransitions(RouteMetrics::BreakerState::kOpen).Increment();
  route->Tokens().Set(199);
  route->InFlight().Set(3);
  route->Queued().Set(1);
  route->Limit().Set(17);
  route->Method("shop.v1.Orders/GetOrder").Requests(0).Increment();
  route->Method("shop.v1.Orders/GetOrder").Duration().Observe(0.003);
  route->Singleflight(RouteMetrics::SingleflightRole::kLeader).Increment();
  route->Singleflight(RouteMetrics::SingleflightRole::kFollower).Increment(2);

  ClusterMetrics* cluster = metrics.ForCluster("orders");
  cluster->UpstreamDuration().Observe(0.002);
  std::shared_ptr<EndpointMetrics> endpoint =
      cluster->ForEndpoint("127.0.0.1:50051");
  endpoint->UpstreamRequests(0).Increment();
  endpoint->SetHealthy(true);
  endpoint->HealthChecks(EndpointMetrics::HealthCheckResult::kSuccess)
      .Increment();

  metrics.Reloads(Metrics::ReloadResult::kSuccess).Increment();
  return endpoint;
}

// The lines of `text` that belong to the sample `name` (exact metric name, any
// labels).
std::vector<std::string> Samples(const std::string& text,
                                 absl::string_view name) {
  std::vector<std::string> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, absl::StrCat(name, "{")) ||
        absl::StartsWith(line, absl::StrCat(name, " "))) {
      out.emplace_back(line);
    }
  }
  return out;
}

struct Family {
  const char* name;
  const char* type;
  // A sample line prefix with the exact label set the family must carry.
  const char* sample;
};

TEST(MetricsTest, EveryFamilyOfTheSpecIsExposedWithItsTypeAndLabels) {
  Metrics metrics("1.2.3");
  const auto endpoint = TouchEverything(metrics);
  const std::string text = metrics.Serialize();

  const Family families[] = {
      {"bulwark_requests_total", "counter",
       R"(bulwark_requests_total{code="OK",route="orders-get"} 1)"},
      {"bulwark_request_duration_seconds", "histogram",
       R"(bulwark_request_duration_seconds_count{route="orders-get"} 1)"},
      {"bulwark_rejections_total", "counter",
       R"(bulwark_rejections_total{reason="rate_limited",route="orders-get"} 1)"},
      {"bulwark_shadow_rejections_total", "counter",
       R"(bulwark_shadow_rejections_total{reason="coalesced",route="orders-get"} 1)"},
      {"bulwark_upstream_requests_total", "counter",
       R"(bulwark_upstream_requests_total{cluster="orders",code="OK",endpoint="127.0.0.1:50051"} 1)"},
      {"bulwark_upstream_request_duration_seconds", "histogram",
       R"(bulwark_upstream_request_duration_seconds_count{cluster="orders"} 1)"},
      {"bulwark_circuit_breaker_state", "gauge",
       R"(bulwark_circuit_breaker_state{route="orders-get",state="closed"} 1)"},
      {"bulwark_circuit_breaker_transitions_total", "counter",
       R"(bulwark_circuit_breaker_transitions_total{route="orders-get",to="open"} 1)"},
      {"bulwark_rate_limit_tokens", "gauge",
       R"(bulwark_rate_limit_tokens{route="orders-get"} 199)"},
      {"bulwark_concurrency_in_flight", "gauge",
       R"(bulwark_concurrency_in_flight{route="orders-get"} 3)"},
      {"bulwark_concurrency_queued", "gauge",
       R"(bulwark_concurrency_queued{route="orders-get"} 1)"},
      {"bulwark_singleflight_calls_total", "counter",
       R"(bulwark_singleflight_calls_total{role="follower",route="orders-get"} 2)"},
      {"bulwark_endpoint_healthy", "gauge",
       R"(bulwark_endpoint_healthy{cluster="orders",endpoint="127.0.0.1:50051"} 1)"},
      {"bulwark_health_checks_total", "counter",
       R"(bulwark_health_checks_total{cluster="orders",endpoint="127.0.0.1:50051",result="success"} 1)"},
      {"bulwark_config_reloads_total", "counter",
       R"(bulwark_config_reloads_total{result="success"} 1)"},
      {"bulwark_build_info", "gauge",
       R"(bulwark_build_info{version="1.2.3"} 1)"},
      {"bulwark_concurrency_limit", "gauge",
       R"(bulwark_concurrency_limit{route="orders-get"} 17)"},
      {"bulwark_method_requests_total", "counter",
       R"(bulwark_method_requests_total{code="OK",method="shop.v1.Orders/GetOrder",route="orders-get"} 1)"},
      {"bulwark_method_request_duration_seconds", "histogram",
       R"(bulwark_method_request_duration_seconds_count{method="shop.v1.Orders/GetOrder",route="orders-get"} 1)"},
      {"bulwark_access_log_dropped_total", "counter",
       R"(bulwark_access_log_dropped_total 0)"},
  };
  for (const Family& f : families) {
    SCOPED_TRACE(f.name);
    EXPECT_THAT(text,
                HasSubstr(absl::StrCat("# TYPE ", f.name, " ", f.type, "\n")));
    EXPECT_THAT(text, HasSubstr(absl::StrCat("# HELP ", f.name, " ")));
    EXPECT_THAT(text, HasSubstr(absl::StrCat("\n", f.sample, "\n")));
  }
  // No family beyond those of the SPEC built so far (the rest belong to work
  // still open: global limits, retries, outlier detection).
  int type_lines = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, "# TYPE ")) ++type_lines;
  }
  EXPECT_EQ(type_lines, 20);
}

TEST(MetricsTest, RequestCodeSeriesAppearOnlyOnceUsed) {
  Metrics metrics("test");
  RouteMetrics* route = metrics.ForRoute("r");
  route->Requests(5).Increment();  // NOT_FOUND
  route->Requests(5).Increment();
  route->Requests(16).Increment();  // UNAUTHENTICATED
  const std::string text = metrics.Serialize();

  EXPECT_THAT(
      Samples(text, "bulwark_requests_total"),
      ::testing::UnorderedElementsAre(
          R"(bulwark_requests_total{code="NOT_FOUND",route="r"} 2)",
          R"(bulwark_requests_total{code="UNAUTHENTICATED",route="r"} 1)"));
}

TEST(MetricsTest, OutOfRangeCodesCountAsUnknown) {
  Metrics metrics("test");
  RouteMetrics* route = metrics.ForRoute("r");
  route->Requests(-1).Increment();
  route->Requests(17).Increment();
  route->Requests(2).Increment();
  EXPECT_EQ(&route->Requests(99), &route->Requests(2));
  EXPECT_THAT(Samples(metrics.Serialize(), "bulwark_requests_total"),
              ::testing::ElementsAre(
                  R"(bulwark_requests_total{code="UNKNOWN",route="r"} 3)"));
}

TEST(MetricsTest, HandlesAreCachedAndStableByName) {
  Metrics metrics("test");
  RouteMetrics* route = metrics.ForRoute("r");
  EXPECT_EQ(metrics.ForRoute("r"), route);
  EXPECT_NE(metrics.ForRoute("other"), route);
  EXPECT_EQ(&route->Requests(0), &route->Requests(0));
  EXPECT_EQ(&route->Duration(), &route->Duration());
  ClusterMetrics* cluster = metrics.ForCluster("c");
  EXPECT_EQ(metrics.ForCluster("c"), cluster);
  EXPECT_EQ(cluster->ForEndpoint("10.0.0.1:80"),
            cluster->ForEndpoint("10.0.0.1:80"));
  // The same endpoint address in two clusters is two series.
  EXPECT_NE(metrics.ForCluster("d")->ForEndpoint("10.0.0.1:80"),
            cluster->ForEndpoint("10.0.0.1:80"));
}

TEST(MetricsTest, EndpointSeriesLeaveWithTheLastHolder) {
  Metrics metrics("test");
  ClusterMetrics* cluster = metrics.ForCluster("c");
  std::shared_ptr<EndpointMetrics> first = cluster->ForEndpoint("10.0.0.1:80");
  first->SetHealthy(false);
  first->UpstreamRequests(0).Increment();
  first->HealthChecks(EndpointMetrics::HealthCheckResult::kFailure).Increment();
  std::shared_ptr<EndpointMetrics> second = cluster->ForEndpoint("10.0.0.1:80");
  ASSERT_EQ(first, second);
  std::shared_ptr<EndpointMetrics> other = cluster->ForEndpoint("10.0.0.2:80");
  other->SetHealthy(true);
  first.reset();
  // Still held: still exported.
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr("bulwark_endpoint_healthy{cluster=\"c\",endpoint="
                        "\"10.0.0.1:80\"} 0"));
  second.reset();
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, Not(HasSubstr("10.0.0.1:80")));
  EXPECT_THAT(text, HasSubstr("bulwark_endpoint_healthy{cluster=\"c\",endpoint="
                              "\"10.0.0.2:80\"} 1"));
  // Asked for again: a fresh handle whose series start over.
  std::shared_ptr<EndpointMetrics> again = cluster->ForEndpoint("10.0.0.1:80");
  again->SetHealthy(true);
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr("bulwark_endpoint_healthy{cluster=\"c\",endpoint="
                        "\"10.0.0.1:80\"} 1"));
  EXPECT_THAT(metrics.Serialize(),
              Not(HasSubstr("bulwark_upstream_requests_total{cluster=\"c\","
                            "code=\"OK\",endpoint=\"10.0.0.1:80\"}")));
}

TEST(MetricsTest, BreakerStateGaugeIsOneHot) {
  Metrics metrics("test");
  RouteMetrics* route = metrics.ForRoute("r");
  route->SetBreakerState(RouteMetrics::BreakerState::kOpen);
  EXPECT_THAT(
      Samples(metrics.Serialize(), "bulwark_circuit_breaker_state"),
      ::testing::UnorderedElementsAre(
          R"(bulwark_circuit_breaker_state{route="r",state="closed"} 0)",
          R"(bulwark_circuit_breaker_state{route="r",state="open"} 1)",
          R"(bulwark_circuit_breaker_state{route="r",state="half_open"} 0)"));

  route->SetBreakerState(RouteMetrics::BreakerState::kHalfOpen);
  EXPECT_THAT(
      Samples(metrics.Serialize(), "bulwark_circuit_breaker_state"),
      ::testing::UnorderedElementsAre(
          R"(bulwark_circuit_breaker_state{route="r",state="closed"} 0)",
          R"(bulwark_circuit_breaker_state{route="r",state="open"} 0)",
          R"(bulwark_circuit_breaker_state{route="r",state="half_open"} 1)"));
}

TEST(MetricsTest, BuildInfoIsOneAndReloadSeriesExistFromTheStart) {
  Metrics metrics("0.1.0");
  const std::string text = metrics.Serialize();
  EXPECT_THAT(
      Samples(text, "bulwark_build_info"),
      ::testing::ElementsAre(R"(bulwark_build_info{version="0.1.0"} 1)"));
  EXPECT_THAT(Samples(text, "bulwark_config_reloads_total"),
              ::testing::UnorderedElementsAre(
                  R"(bulwark_config_reloads_total{result="success"} 0)",
                  R"(bulwark_config_reloads_total{result="failure"} 0)"));
  // A route nobody used exports nothing.
  EXPECT_THAT(text, Not(HasSubstr("bulwark_requests_total")));
}

TEST(MetricsTest, RejectReasonLabelsMatchTheSpec) {
  Metrics metrics("test");
  RouteMetrics* route = metrics.ForRoute("r");
  for (RejectReason reason :
       {RejectReason::kRateLimited, RejectReason::kCircuitOpen,
        RejectReason::kConcurrencyLimit, RejectReason::kQueueTimeout,
        RejectReason::kNoHealthyEndpoint, RejectReason::kMessageTooLarge}) {
    route->Rejections(reason).Increment();
  }
  EXPECT_THAT(
      Samples(metrics.Serialize(), "bulwark_rejections_total"),
      ::testing::UnorderedElementsAre(
          R"(bulwark_rejections_total{reason="rate_limited",route="r"} 1)",
          R"(bulwark_rejections_total{reason="circuit_open",route="r"} 1)",
          R"(bulwark_rejections_total{reason="concurrency_limit",route="r"} 1)",
          R"(bulwark_rejections_total{reason="queue_timeout",route="r"} 1)",
          R"(bulwark_rejections_total{reason="no_healthy_endpoint",route="r"} 1)",
          R"(bulwark_rejections_total{reason="message_too_large",route="r"} 1)"));
}

TEST(MetricsTest, GrpcCodeNamesCoverAllSeventeenCodes) {
  EXPECT_EQ(GrpcCodeName(0), "OK");
  EXPECT_EQ(GrpcCodeName(1), "CANCELLED");
  EXPECT_EQ(GrpcCodeName(4), "DEADLINE_EXCEEDED");
  EXPECT_EQ(GrpcCodeName(8), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(GrpcCodeName(14), "UNAVAILABLE");
  EXPECT_EQ(GrpcCodeName(16), "UNAUTHENTICATED");
  EXPECT_EQ(GrpcCodeName(17), "UNKNOWN");
  EXPECT_EQ(GrpcCodeName(-3), "UNKNOWN");
}

TEST(MetricsTest, CollectHookRunsBeforeEachSerialize) {
  Metrics metrics("test");
  prometheus::Gauge& tokens = metrics.ForRoute("r")->Tokens();
  int scrapes = 0;
  metrics.SetCollectHook([&] { tokens.Set(++scrapes * 10); });
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr(R"(bulwark_rate_limit_tokens{route="r"} 10)"));
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr(R"(bulwark_rate_limit_tokens{route="r"} 20)"));
  metrics.SetCollectHook(nullptr);
  metrics.Serialize();
  EXPECT_EQ(scrapes, 2);
}

TEST(MetricsTest, ConcurrentFirstUseYieldsOneSeries) {
  Metrics metrics("test");
  RouteMetrics* route = metrics.ForRoute("r");
  constexpr int kThreads = 4;
  constexpr int kPerThread = 10000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        metrics.ForRoute("r")->Requests(0).Increment();
        route->Rejections(RejectReason::kQueueTimeout).Increment();
      }
    });
  }
  for (auto& t : threads) t.join();
  const std::string text = metrics.Serialize();
  EXPECT_THAT(Samples(text, "bulwark_requests_total"),
              ::testing::ElementsAre(
                  R"(bulwark_requests_total{code="OK",route="r"} 40000)"));
  EXPECT_THAT(
      Samples(text, "bulwark_rejections_total"),
      ::testing::ElementsAre(
          R"(bulwark_rejections_total{reason="queue_timeout",route="r"} 40000)"));
}

// Prometheus buckets are "less than or equal": a value on a bound counts in
// that bound's bucket; past the last bound only +Inf holds it.
TEST(MetricsTest, HistogramBucketsAreCumulativeAndInclusive) {
  Metrics metrics("test");
  Histogram& h = metrics.ForRoute("r")->Duration();
  h.Observe(0.0001);  // exactly the first bound
  h.Observe(0.0003);  // between 0.00025 and 0.0005
  h.Observe(0.0005);
  h.Observe(60);  // past the last bound (10)
  const std::string text = metrics.Serialize();
  const auto bucket = [&](absl::string_view le) {
    return absl::StrCat(
        R"(bulwark_request_duration_seconds_bucket{route="r",le=")", le,
        R"("} )");
  };
  EXPECT_THAT(text, HasSubstr(bucket("0.0001") + "1\n"));
  EXPECT_THAT(text, HasSubstr(bucket("0.00025") + "1\n"));
  EXPECT_THAT(text, HasSubstr(bucket("0.0005") + "3\n"));
  EXPECT_THAT(text, HasSubstr(bucket("10") + "3\n"));
  EXPECT_THAT(text, HasSubstr(bucket("+Inf") + "4\n"));
  EXPECT_THAT(
      text,
      HasSubstr("bulwark_request_duration_seconds_count{route=\"r\"} 4\n"));
  EXPECT_THAT(
      text,
      HasSubstr("bulwark_request_duration_seconds_sum{route=\"r\"} 60.0009\n"));
}

// Observations from many threads at once are all counted, in count and sum.
TEST(MetricsTest, ConcurrentObservationsAreAllCounted) {
  Metrics metrics("test");
  Histogram& h = metrics.ForCluster("c")->UpstreamDuration();
  constexpr int kThreads = 4;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) h.Observe(0.5);
    });
  }
  for (auto& t : threads) t.join();
  const std::string text = metrics.Serialize();
  EXPECT_THAT(
      Samples(text, "bulwark_upstream_request_duration_seconds_count"),
      ::testing::ElementsAre(
          R"(bulwark_upstream_request_duration_seconds_count{cluster="c"} 80000)"));
  EXPECT_THAT(
      Samples(text, "bulwark_upstream_request_duration_seconds_sum"),
      ::testing::ElementsAre(
          R"(bulwark_upstream_request_duration_seconds_sum{cluster="c"} 40000)"));
}

// Runs `promtool check metrics` with `text` on its stdin; returns its exit
// status and output.
struct PromtoolResult {
  int exit_code;
  std::string output;
};
PromtoolResult RunPromtool(const std::string& text) {
  // promtool reads the exposition on stdin; its findings go to stderr, so fold
  // them into the output we read back through a temporary file.
  char out_path[] = "/tmp/bulwark_promtool_XXXXXX";
  const int out_fd = mkstemp(out_path);
  if (out_fd < 0) return {-1, "mkstemp failed"};
  close(out_fd);
  const std::string command =
      absl::StrCat(kPromtool, " check metrics >", out_path, " 2>&1");
  FILE* pipe = popen(command.c_str(), "w");
  if (pipe == nullptr) return {-1, "popen failed"};
  fwrite(text.data(), 1, text.size(), pipe);
  const int status = pclose(pipe);
  std::string output;
  if (FILE* f = fopen(out_path, "r"); f != nullptr) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) output.append(buf, n);
    fclose(f);
  }
  unlink(out_path);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

TEST(MetricsTest, ExpositionPassesPromtoolCheckMetrics) {
  // CI installs promtool; a missing one is a broken environment, not a reason
  // to skip.
  ASSERT_EQ(access(kPromtool, X_OK), 0)
      << kPromtool
      << " is missing: install the `prometheus` package (promtool) to run "
      << "this test; SPEC section 4 promises /metrics passes `promtool check "
         "metrics`";
  Metrics metrics("0.1.0");
  const auto endpoint = TouchEverything(metrics);
  // Label values that need escaping in the exposition.
  metrics.ForRoute(R"(quote"back\slash)")->Requests(0).Increment();
  const PromtoolResult result = RunPromtool(metrics.Serialize());
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output, "") << "promtool lint findings";
}

}  // namespace
}  // namespace bulwark
