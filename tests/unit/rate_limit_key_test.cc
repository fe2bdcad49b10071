// The limit keys of RateLimitStage (SPEC section 8): key_headers tuples and
// PEER_IDENTITY on local limits; the tuple encoding is unambiguous. Global
// limits are exercised against a real Redis in
// tests/integration/global_rate_limit_test.cc.
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/time/time.h"
#include "bulwark/config/v1/config.pb.h"
#include "gtest/gtest.h"
#include "policies/clock.h"
#include "sidecar/chain/rate_limit_stage.h"
#include "sidecar/metrics.h"
#include "sidecar/net/stream_handler.h"

namespace bulwark::chain {
namespace {

namespace cfg = ::bulwark::config::v1;

// A call that has headers and a peer identity and nothing else.
class KeyCall final : public net::Call {
 public:
  KeyCall(std::string identity, net::HeaderList headers)
      : headers_(std::move(headers)), identity_(std::move(identity)) {}

  uint64_t id() const override { return 1; }
  net::Executor& executor() override { std::abort(); }
  std::string_view path() const override { return "/demo.Svc/Get"; }
  std::string_view header(std::string_view name) const override {
    for (const auto& [n, v] : headers_) {
      if (n == name) return v;
    }
    return {};
  }
  std::string_view peer_identity() const override { return identity_; }
  absl::Time start_time() const override { return absl::UnixEpoch(); }
  absl::Time client_deadline() const override { return absl::InfiniteFuture(); }
  void SetDeadline(absl::Time) override {}
  absl::Time deadline() const override { return absl::InfiniteFuture(); }
  void SetObserver(std::unique_ptr<net::CallObserver>) override {}
  net::CallObserver* observer() const override { return nullptr; }
  void RespondLocal(const net::LocalAnswer&) override {}
  void Forward(const net::UpstreamAddress&) override {}
  void ForwardHeld(const net::UpstreamAddress&, std::string) override {}
  void RespondWith(std::shared_ptr<const net::CapturedResponse>) override {}
  void CollectRequest(
      uint64_t, absl::AnyInvocable<void(std::optional<std::string>)>) override {
  }
  const net::HeaderList& request_headers() const override { return headers_; }

 private:
  net::HeaderList headers_;
  std::string identity_;
};

// A call with these headers and no peer identity.
KeyCall Headers(net::HeaderList headers) {
  return KeyCall("", std::move(headers));
}

cfg::RateLimit TupleLimit() {
  cfg::RateLimit rl;
  rl.set_requests_per_second(1);
  rl.set_burst(1);
  rl.set_max_keys(100);
  rl.add_key_headers("x-tenant");
  rl.add_key_headers("x-user");
  return rl;
}

TEST(RateLimitKeyTest, TupleValuesAreLengthPrefixed) {
  const cfg::RateLimit rl = TupleLimit();
  EXPECT_EQ(RateLimitKey(rl, Headers({{"x-tenant", "a,b"}, {"x-user", "c"}})),
            "3:a,b1:c");
  EXPECT_NE(RateLimitKey(rl, Headers({{"x-tenant", "a,b"}, {"x-user", "c"}})),
            RateLimitKey(rl, Headers({{"x-tenant", "a"}, {"x-user", "b,c"}})));
  // A value that looks like an encoded tuple is still one value.
  EXPECT_NE(RateLimitKey(rl, Headers({{"x-tenant", "1:a1:b"}})),
            RateLimitKey(rl, Headers({{"x-tenant", "a"}, {"x-user", "b"}})));
}

TEST(RateLimitKeyTest, AHeaderNotSentCountsAsEmptyAndNoneSentIsNoKey) {
  const cfg::RateLimit rl = TupleLimit();
  EXPECT_EQ(RateLimitKey(rl, Headers({{"x-user", "u"}})), "0:1:u");
  EXPECT_EQ(RateLimitKey(rl, Headers({{"x-tenant", "t"}})), "1:t0:");
  EXPECT_EQ(RateLimitKey(rl, Headers({{"other", "x"}})), "");
}

TEST(RateLimitKeyTest, KeyHeaderAndPeerIdentity) {
  cfg::RateLimit rl;
  rl.set_key_header("x-client");
  EXPECT_EQ(RateLimitKey(rl, KeyCall("spiffe://a", {{"x-client", "c1"}})),
            "c1");
  cfg::RateLimit by_peer;
  by_peer.set_key(cfg::RateLimit::PEER_IDENTITY);
  EXPECT_EQ(RateLimitKey(by_peer, KeyCall("spiffe://a", {{"x-client", "c1"}})),
            "spiffe://a");
  EXPECT_EQ(RateLimitKey(cfg::RateLimit(), KeyCall("a", {{"x-client", "c1"}})),
            "");
}

class RateLimitStageKeyTest : public ::testing::Test {
 protected:
  void Build(const cfg::RateLimit& rl) {
    state_ = RateLimitStage::NewState(rl, "orders", clock_);
    stage_ = std::make_unique<RateLimitStage>(rl, "orders", *state_,
                                              *metrics_.ForRoute("orders"));
  }
  bool Admitted(const net::Call& call) {
    return stage_->Decide(call, clock_.Now()).kind == Verdict::Kind::kContinue;
  }

  FakeClock clock_;
  Metrics metrics_{"test"};
  std::unique_ptr<RateLimitState> state_;
  std::unique_ptr<RateLimitStage> stage_;
};

TEST_F(RateLimitStageKeyTest, EachTupleHasItsOwnBucket) {
  Build(TupleLimit());
  const KeyCall ab_c = Headers({{"x-tenant", "a,b"}, {"x-user", "c"}});
  const KeyCall a_bc = Headers({{"x-tenant", "a"}, {"x-user", "b,c"}});
  EXPECT_TRUE(Admitted(ab_c));
  EXPECT_FALSE(Admitted(ab_c));
  EXPECT_TRUE(Admitted(a_bc));
  EXPECT_FALSE(Admitted(a_bc));
  // Calls with none of the headers share one bucket, apart from the keys.
  EXPECT_TRUE(Admitted(Headers({})));
  EXPECT_FALSE(Admitted(Headers({{"unrelated", "x"}})));
  EXPECT_EQ(state_->keyed->KeyCount(), 2u);
  clock_.AdvanceBy(absl::Seconds(1));
  EXPECT_TRUE(Admitted(ab_c));
}

TEST_F(RateLimitStageKeyTest, PeerIdentityKeysALocalLimit) {
  cfg::RateLimit rl;
  rl.set_requests_per_second(1);
  rl.set_burst(2);
  rl.set_max_keys(100);
  rl.set_key(cfg::RateLimit::PEER_IDENTITY);
  Build(rl);
  const KeyCall alice("spiffe://shop/alice", {});
  const KeyCall bob("CN-bob", {});
  EXPECT_TRUE(Admitted(alice));
  EXPECT_TRUE(Admitted(alice));
  EXPECT_FALSE(Admitted(alice));
  EXPECT_TRUE(Admitted(bob));
  // A header does not change the identity's bucket.
  EXPECT_TRUE(Admitted(KeyCall("CN-bob", {{"x-client", "other"}})));
  EXPECT_FALSE(Admitted(bob));
}

TEST_F(RateLimitStageKeyTest, RejectionCarriesPushbackAndShadowOnlyCounts) {
  cfg::RateLimit rl = TupleLimit();
  Build(rl);
  const KeyCall call = Headers({{"x-tenant", "t"}});
  ASSERT_TRUE(Admitted(call));
  const Verdict rejected = stage_->Decide(call, clock_.Now());
  ASSERT_EQ(rejected.kind, Verdict::Kind::kAnswer);
  EXPECT_EQ(rejected.rejection.reason, RejectReason::kRateLimited);
  EXPECT_EQ(rejected.rejection.pushback, absl::Seconds(1));

  rl.set_shadow(true);
  Build(rl);
  EXPECT_TRUE(Admitted(call));
  EXPECT_TRUE(Admitted(call));
  EXPECT_EQ(metrics_.ForRoute("orders")
                ->ShadowRejections(RejectReason::kRateLimited)
                .Value(),
            1);
}

}  // namespace
}  // namespace bulwark::chain
