// DNS for cluster endpoints (sidecar/dns.h) and how clusters follow the
// answers (sidecar/cluster.h): a fake resolver answers, a FakeClock decides
// what is due; nothing sleeps and nothing leaves the process.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policies/clock.h"
#include "sidecar/cluster.h"
#include "sidecar/config_loader.h"
#include "sidecar/dns.h"
#include "sidecar/metrics.h"

namespace bulwark {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

ResolvedAddress V4(const std::string& ip, uint16_t port) {
  ResolvedAddress r;
  auto* in = reinterpret_cast<sockaddr_in*>(&r.addr);
  in->sin_family = AF_INET;
  in->sin_port = htons(port);
  inet_pton(AF_INET, ip.c_str(), &in->sin_addr);
  r.addr_len = sizeof(sockaddr_in);
  r.text = absl::StrCat(ip, ":", port);
  return r;
}

// Answers from a table the test edits; counts lookups per name.
class FakeResolver final : public Resolver {
 public:
  absl::StatusOr<std::vector<ResolvedAddress>> Resolve(
      const HostPort& address) override {
    absl::MutexLock lock(&mu_);
    ++lookups_[address.host];
    auto it = ips_.find(address.host);
    if (it == ips_.end()) {
      return absl::UnavailableError(
          absl::StrCat("cannot resolve ", address.ToString(),
                       ": Name or service not known"));
    }
    std::vector<ResolvedAddress> out;
    for (const std::string& ip : it->second)
      out.push_back(V4(ip, address.port));
    return out;
  }
  void Set(const std::string& host, std::vector<std::string> ips) {
    absl::MutexLock lock(&mu_);
    ips_[host] = std::move(ips);
  }
  void Remove(const std::string& host) {
    absl::MutexLock lock(&mu_);
    ips_.erase(host);
  }
  int lookups(const std::string& host) {
    absl::MutexLock lock(&mu_);
    return lookups_[host];
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::vector<std::string>> ips_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> lookups_ ABSL_GUARDED_BY(mu_);
};

std::vector<std::string> Texts(
    const absl::StatusOr<std::vector<ResolvedAddress>>& addresses) {
  std::vector<std::string> out;
  if (!addresses.ok()) return {addresses.status().ToString()};
  for (const ResolvedAddress& a : *addresses) out.push_back(a.text);
  return out;
}

TEST(DnsTest, IpLiteralsAreRecognisedAndNeverLookedUp) {
  EXPECT_TRUE(IsIpLiteral("10.0.0.1"));
  EXPECT_TRUE(IsIpLiteral("::1"));
  EXPECT_TRUE(IsIpLiteral("fd00::4"));
  EXPECT_FALSE(IsIpLiteral("orders.svc"));
  EXPECT_FALSE(IsIpLiteral("10.0.0"));
  EXPECT_FALSE(IsIpLiteral(""));

  FakeResolver resolver;
  DnsCache cache(resolver);
  EXPECT_THAT(Texts(cache.Get({.host = "10.0.0.1", .port = 80})),
              ElementsAre("10.0.0.1:80"));
  EXPECT_THAT(Texts(cache.Get({.host = "::1", .port = 50051})),
              ElementsAre("[::1]:50051"));
  EXPECT_EQ(resolver.lookups("10.0.0.1"), 0);
  EXPECT_EQ(resolver.lookups("::1"), 0);
}

TEST(DnsTest, SystemResolverAnswersFromTheHostsFile) {
  // Every Linux machine maps localhost in /etc/hosts.
  SystemResolver resolver;
  auto found = resolver.Resolve({.host = "localhost", .port = 8080});
  ASSERT_TRUE(found.ok()) << found.status();
  bool loopback = false;
  for (const ResolvedAddress& a : *found) {
    loopback |= a.text == "127.0.0.1:8080" || a.text == "[::1]:8080";
  }
  EXPECT_TRUE(loopback) << Texts(found).front();
  // One family: localhost maps to 127.0.0.1 in every /etc/hosts, so its IPv6
  // answer (::1, where listed) is left out.
  for (const ResolvedAddress& a : *found) {
    EXPECT_EQ(a.addr.ss_family, AF_INET) << a.text;
  }
  auto missing = resolver.Resolve({.host = "no-such-host.invalid", .port = 1});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(missing.status().message(),
              HasSubstr("cannot resolve no-such-host.invalid:1"));
}

TEST(DnsTest, CacheLooksUpOnceAndRefreshReportsChanges) {
  FakeResolver resolver;
  resolver.Set("orders", {"10.0.0.2", "10.0.0.1"});
  DnsCache cache(resolver);
  const HostPort name{.host = "orders", .port = 50051};
  EXPECT_THAT(Texts(cache.Get(name)),
              ElementsAre("10.0.0.1:50051", "10.0.0.2:50051"));
  EXPECT_THAT(Texts(cache.Get(name)),
              ElementsAre("10.0.0.1:50051", "10.0.0.2:50051"));
  EXPECT_EQ(resolver.lookups("orders"), 1);

  // Same set in another order: no change.
  resolver.Set("orders", {"10.0.0.1", "10.0.0.2"});
  EXPECT_EQ(cache.Refresh(name).value(), false);
  resolver.Set("orders", {"10.0.0.3"});
  EXPECT_EQ(cache.Refresh(name).value(), true);
  EXPECT_THAT(Texts(cache.Get(name)), ElementsAre("10.0.0.3:50051"));

  // A failed lookup keeps the last answer.
  resolver.Remove("orders");
  EXPECT_FALSE(cache.Refresh(name).ok());
  EXPECT_THAT(Texts(cache.Get(name)), ElementsAre("10.0.0.3:50051"));

  // Clear: the next Get looks up again (and fails now).
  cache.Clear();
  EXPECT_FALSE(cache.Get(name).ok());
}

class RefresherTest : public ::testing::Test {
 protected:
  FakeClock clock_;
  FakeResolver resolver_;
  DnsCache cache_{resolver_};
  int changes_ = 0;
  DnsRefresher refresher_{cache_, clock_, [this] { ++changes_; }};
  const HostPort orders_{.host = "orders", .port = 50051};
  const HostPort users_{.host = "users", .port = 50052};
};

TEST_F(RefresherTest, NamesAreLookedUpEveryIntervalAndChangesReported) {
  resolver_.Set("orders", {"10.0.0.1"});
  resolver_.Set("users", {"10.0.1.1"});
  ASSERT_TRUE(cache_.Get(orders_).ok());
  ASSERT_TRUE(cache_.Get(users_).ok());
  const absl::Time start = clock_.Now();
  refresher_.SetNames(
      {{orders_, absl::Seconds(5)}, {users_, absl::Seconds(2)}});
  EXPECT_EQ(refresher_.NextDue(), start + absl::Seconds(2));

  // Nothing due yet.
  EXPECT_FALSE(refresher_.RefreshDue());
  EXPECT_EQ(resolver_.lookups("users"), 1);

  clock_.AdvanceBy(absl::Seconds(2));
  EXPECT_FALSE(refresher_.RefreshDue());  // same answer
  EXPECT_EQ(resolver_.lookups("users"), 2);
  EXPECT_EQ(resolver_.lookups("orders"), 1);
  EXPECT_EQ(refresher_.NextDue(), start + absl::Seconds(4));

  resolver_.Set("orders", {"10.0.0.1", "10.0.0.9"});
  clock_.AdvanceBy(absl::Seconds(3));  // t=5: both due
  EXPECT_TRUE(refresher_.RefreshDue());
  EXPECT_EQ(changes_, 1);
  EXPECT_EQ(resolver_.lookups("orders"), 2);
  EXPECT_THAT(Texts(cache_.Get(orders_)),
              ElementsAre("10.0.0.1:50051", "10.0.0.9:50051"));
  EXPECT_EQ(refresher_.NextDue(), start + absl::Seconds(7));
}

TEST_F(RefresherTest, FailedLookupIsNoChange) {
  resolver_.Set("orders", {"10.0.0.1"});
  ASSERT_TRUE(cache_.Get(orders_).ok());
  refresher_.SetNames({{orders_, absl::Seconds(1)}});
  resolver_.Remove("orders");
  for (int i = 0; i < 3; ++i) {
    clock_.AdvanceBy(absl::Seconds(1));
    EXPECT_FALSE(refresher_.RefreshDue());
  }
  EXPECT_EQ(resolver_.lookups("orders"), 4);
  EXPECT_EQ(changes_, 0);
  EXPECT_THAT(Texts(cache_.Get(orders_)), ElementsAre("10.0.0.1:50051"));
}

TEST_F(RefresherTest, SetNamesKeepsSchedulesAndTheShortestInterval) {
  resolver_.Set("orders", {"10.0.0.1"});
  resolver_.Set("users", {"10.0.1.1"});
  const absl::Time start = clock_.Now();
  refresher_.SetNames({{orders_, absl::Seconds(10)}});
  clock_.AdvanceBy(absl::Seconds(4));
  // orders keeps its due time (t=10); users is new (due t=4+3); the same name
  // listed by two clusters is refreshed at the shorter interval.
  refresher_.SetNames({{orders_, absl::Seconds(10)},
                       {users_, absl::Seconds(3)},
                       {users_, absl::Seconds(8)}});
  EXPECT_EQ(refresher_.NextDue(), start + absl::Seconds(7));
  clock_.AdvanceBy(absl::Seconds(3));
  refresher_.RefreshDue();
  EXPECT_EQ(resolver_.lookups("users"), 1);
  EXPECT_EQ(resolver_.lookups("orders"), 0);
  EXPECT_EQ(refresher_.NextDue(), start + absl::Seconds(10));

  // A name no longer listed is no longer looked up.
  refresher_.SetNames({{users_, absl::Seconds(3)}});
  clock_.AdvanceBy(absl::Seconds(10));
  refresher_.RefreshDue();
  EXPECT_EQ(resolver_.lookups("orders"), 0);
  refresher_.SetNames({});
  EXPECT_EQ(refresher_.NextDue(), absl::InfiniteFuture());
}

TEST_F(RefresherTest, ThreadStopsPromptlyWithNothingDue) {
  refresher_.SetNames({{orders_, absl::Hours(1)}});
  refresher_.Start();
  refresher_.Stop();  // returns without waiting for the hour
  refresher_.Stop();  // idempotent
  EXPECT_EQ(resolver_.lookups("orders"), 0);
}

// --- clusters built from the answers ---

class ClusterDnsTest : public ::testing::Test {
 protected:
  config::v1::Cluster Config(const std::string& endpoints,
                             const std::string& extra = "") {
    auto loaded = ParseConfigText(
        absl::StrCat("clusters:\n  - name: c\n    endpoints: [", endpoints,
                     "]\n", extra, "routes:\n  - name: r\n    cluster: c\n"),
        "test.yaml", "");
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return loaded.ok() ? loaded->proto.clusters(0) : config::v1::Cluster();
  }
  std::shared_ptr<Cluster> Build(const config::v1::Cluster& config,
                                 const Cluster* previous) {
    auto cluster = Cluster::Create(config, metrics_, cache_, previous);
    EXPECT_TRUE(cluster.ok()) << cluster.status();
    return cluster.ok() ? *cluster : nullptr;
  }
  static std::vector<std::string> Resolved(const Cluster& cluster) {
    std::vector<std::string> out;
    for (const auto& e : cluster.endpoints()) out.push_back(e->resolved);
    return out;
  }

  Metrics metrics_{"test"};
  FakeResolver resolver_;
  DnsCache cache_{resolver_};
};

TEST_F(ClusterDnsTest, NameIsOneEndpointPerAddress) {
  resolver_.Set("orders", {"10.0.0.1", "10.0.0.2"});
  auto cluster = Build(Config("\"orders:50051\", \"10.0.0.9:50051\""), nullptr);
  ASSERT_NE(cluster, nullptr);
  EXPECT_THAT(
      Resolved(*cluster),
      ElementsAre("10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.9:50051"));
  const Endpoint& first = *cluster->endpoints()[0];
  EXPECT_EQ(first.address.ToString(), "orders:50051");
  // Connections are per address; the configured name stays the authority and
  // the TLS name.
  EXPECT_EQ(first.upstream.key, "10.0.0.1:50051");
  EXPECT_EQ(first.upstream.authority, "orders:50051");
  EXPECT_EQ(first.upstream.host, "orders");
  EXPECT_EQ(first.metrics->name(), "10.0.0.1:50051");
}

TEST_F(ClusterDnsTest, AddressReachedTwiceIsOneEndpoint) {
  resolver_.Set("orders", {"10.0.0.1"});
  auto cluster = Build(Config("\"orders:50051\", \"10.0.0.1:50051\""), nullptr);
  ASSERT_NE(cluster, nullptr);
  EXPECT_THAT(Resolved(*cluster), ElementsAre("10.0.0.1:50051"));
}

TEST_F(ClusterDnsTest, UnresolvableNameFailsTheBuildWithItsName) {
  auto cluster =
      Cluster::Create(Config("\"nowhere:1\""), metrics_, cache_, nullptr);
  ASSERT_FALSE(cluster.ok());
  EXPECT_THAT(cluster.status().message(),
              HasSubstr("cannot resolve nowhere:1"));
}

TEST_F(ClusterDnsTest, NewAnswerKeepsStateOfRemainingAddresses) {
  resolver_.Set("orders", {"10.0.0.1", "10.0.0.2"});
  const config::v1::Cluster config = Config(
      "\"orders:50051\"", "    health_check: { unhealthy_threshold: 1 }\n");
  auto before = Build(config, nullptr);
  ASSERT_NE(before, nullptr);
  Endpoint* kept = before->endpoints()[1].get();  // 10.0.0.2
  kept->load.healthy.store(false);
  kept->metrics->SetHealthy(false);

  resolver_.Set("orders", {"10.0.0.2", "10.0.0.3"});
  ASSERT_TRUE(cache_.Refresh({.host = "orders", .port = 50051}).value());
  auto after = Build(config, before.get());
  ASSERT_NE(after, nullptr);
  EXPECT_THAT(Resolved(*after),
              ElementsAre("10.0.0.2:50051", "10.0.0.3:50051"));
  // The address that stayed is the same endpoint: health, load, probe state.
  EXPECT_EQ(after->endpoints()[0].get(), kept);
  EXPECT_FALSE(after->endpoints()[0]->load.healthy.load());
  EXPECT_NE(after->endpoints()[1]->health, nullptr);
  EXPECT_TRUE(after->endpoints()[1]->load.healthy.load());

  // The removed address's series go once nothing holds its endpoint.
  EXPECT_THAT(metrics_.Serialize(), HasSubstr("10.0.0.1:50051"));
  before.reset();
  const std::string text = metrics_.Serialize();
  EXPECT_THAT(text, Not(HasSubstr("10.0.0.1:50051")));
  EXPECT_THAT(text, HasSubstr("endpoint=\"10.0.0.2:50051\"} 0"));
  EXPECT_THAT(text, HasSubstr("endpoint=\"10.0.0.3:50051\"} 1"));
}

TEST_F(ClusterDnsTest, PickSpreadsOverEveryAddress) {
  resolver_.Set("orders", {"10.0.0.1", "10.0.0.2", "10.0.0.3"});
  auto cluster = Build(Config("\"orders:50051\""), nullptr);
  ASSERT_NE(cluster, nullptr);
  std::map<std::string, int> picks;
  for (int i = 0; i < 30; ++i) ++picks[cluster->Pick(absl::Now())->resolved];
  EXPECT_EQ(picks, (std::map<std::string, int>{{"10.0.0.1:50051", 10},
                                               {"10.0.0.2:50051", 10},
                                               {"10.0.0.3:50051", 10}}));
}

}  // namespace
}  // namespace bulwark
