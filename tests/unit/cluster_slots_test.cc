#include "sidecar/store/cluster_slots.h"

#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bulwark::store {
namespace {

using ::testing::HasSubstr;

TEST(Crc16Test, MatchesTheXmodemCheckValue) {
  EXPECT_EQ(Crc16Xmodem("123456789"), 0x31C3);
  EXPECT_EQ(Crc16Xmodem(""), 0);
}

TEST(KeySlotTest, MatchesRedisForPlainKeys) {
  // Values from CLUSTER KEYSLOT on redis-server 7.
  EXPECT_EQ(KeySlot("foo"), 12182);
  EXPECT_EQ(KeySlot("bar"), 5061);
  EXPECT_EQ(KeySlot(""), 0);
}

TEST(KeySlotTest, KeysWithTheSameHashTagShareASlot) {
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("{user1000}.followers"));
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("user1000"));
  EXPECT_EQ(KeySlot("bulwark:{shop:orders:alice}:bucket"),
            KeySlot("shop:orders:alice"));
}

TEST(KeySlotTest, FollowsRedisHashTagEdgeCases) {
  // An empty tag: the whole key.
  EXPECT_EQ(KeySlot("foo{}{bar}"), Crc16Xmodem("foo{}{bar}") % 16384);
  // The first '{' and the first '}' after it.
  EXPECT_EQ(KeySlot("foo{{bar}}zap"), Crc16Xmodem("{bar") % 16384);
  EXPECT_EQ(KeySlot("foo{bar}{zap}"), KeySlot("bar"));
  // No closing brace: the whole key.
  EXPECT_EQ(KeySlot("foo{bar"), Crc16Xmodem("foo{bar") % 16384);
  EXPECT_EQ(KeySlot("}foo{bar}"), KeySlot("bar"));
}

TEST(ParseRedirectionTest, ParsesMoved) {
  auto r = ParseRedirection("MOVED 3999 127.0.0.1:6381");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kind, Redirection::Kind::kMoved);
  EXPECT_EQ(r->slot, 3999);
  EXPECT_EQ(r->node, (HostPort{.host = "127.0.0.1", .port = 6381}));
}

TEST(ParseRedirectionTest, ParsesAskAndNamesAndIpv6) {
  auto ask = ParseRedirection("ASK 0 redis-2.shop.svc:6379");
  ASSERT_TRUE(ask.ok()) << ask.status();
  EXPECT_EQ(ask->kind, Redirection::Kind::kAsk);
  EXPECT_EQ(ask->slot, 0);
  EXPECT_EQ(ask->node, (HostPort{.host = "redis-2.shop.svc", .port = 6379}));

  auto v6 = ParseRedirection("MOVED 16383 ::1:7000");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->slot, 16383);
  EXPECT_EQ(v6->node, (HostPort{.host = "::1", .port = 7000}));

  auto bracketed = ParseRedirection("MOVED 1 [::1]:7000");
  ASSERT_TRUE(bracketed.ok()) << bracketed.status();
  EXPECT_EQ(bracketed->node, (HostPort{.host = "::1", .port = 7000}));
}

TEST(ParseRedirectionTest, AnEmptyHostIsLeftForTheCallerToFillIn) {
  auto r = ParseRedirection("MOVED 12 :6380");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->node, (HostPort{.host = "", .port = 6380}));
}

TEST(ParseRedirectionTest, RejectsMalformedReplies) {
  for (const char* text :
       {"", "MOVED", "MOVED ", "MOVED 3999", "MOVED 3999 ", "MOVED x 1.2.3.4:5",
        "MOVED -1 1.2.3.4:5", "MOVED 16384 1.2.3.4:5", "MOVED 3999 1.2.3.4",
        "MOVED 3999 1.2.3.4:", "MOVED 3999 1.2.3.4:0",
        "MOVED 3999 1.2.3.4:65536", "MOVED 3999 1.2.3.4:80x",
        "MOVED 3999 1.2.3.4:80 extra", "ASK 1 1.2.3.4:5 ", "moved 1 1.2.3.4:5",
        "ERR unknown command", "MOVEDX 1 1.2.3.4:5",
        "ASK 99999999999 1.2.3.4:5"}) {
    auto r = ParseRedirection(text);
    EXPECT_FALSE(r.ok()) << "accepted \"" << text << "\"";
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(r.status().message(), HasSubstr("malformed redirection"));
    }
  }
}

TEST(ParseRedirectionTest, LooksLikeRedirectionOnlyForMovedAndAsk) {
  EXPECT_TRUE(LooksLikeRedirection("MOVED 1 a:1"));
  EXPECT_TRUE(LooksLikeRedirection("ASK 1 a:1"));
  EXPECT_TRUE(LooksLikeRedirection("MOVED garbage"));
  EXPECT_FALSE(LooksLikeRedirection("NOSCRIPT No matching script"));
  EXPECT_FALSE(LooksLikeRedirection("ASKING"));
}

TEST(SlotMapTest, UnknownSlotsHaveNoNode) {
  SlotMap map;
  EXPECT_EQ(map.NodeFor(0), nullptr);
  EXPECT_EQ(map.NodeFor(-1), nullptr);
  EXPECT_EQ(map.NodeFor(16384), nullptr);
  EXPECT_EQ(map.nodes(), 0u);
}

TEST(SlotMapTest, AssignCountsSlotsPerNodeAndForgetsEmptiedNodes) {
  const HostPort a{.host = "10.0.0.1", .port = 6379};
  const HostPort b{.host = "10.0.0.2", .port = 6379};
  SlotMap map;
  map.Assign(1, a);
  map.Assign(2, a);
  map.Assign(2, a);  // again: no double count
  EXPECT_EQ(map.SlotsOf(a), 2);
  ASSERT_NE(map.NodeFor(1), nullptr);
  EXPECT_EQ(*map.NodeFor(1), a);

  map.Assign(1, b);  // slot 1 moved
  EXPECT_EQ(map.SlotsOf(a), 1);
  EXPECT_EQ(map.SlotsOf(b), 1);
  EXPECT_EQ(*map.NodeFor(1), b);
  EXPECT_EQ(map.nodes(), 2u);

  map.Assign(2, b);  // a's last slot moved: a is forgotten
  EXPECT_EQ(map.SlotsOf(a), 0);
  EXPECT_EQ(map.SlotsOf(b), 2);
  EXPECT_EQ(map.nodes(), 1u);

  map.Assign(16384, a);  // out of range: ignored
  EXPECT_EQ(map.nodes(), 1u);
}

TEST(SlotMapTest, ForgetDropsEveryOneOfANodesSlots) {
  const HostPort a{.host = "10.0.0.1", .port = 6379};
  const HostPort b{.host = "10.0.0.2", .port = 6379};
  SlotMap map;
  for (int slot = 0; slot < 100; ++slot) map.Assign(slot, slot % 2 ? a : b);
  EXPECT_EQ(map.Forget(a), 50);
  EXPECT_EQ(map.Forget(a), 0);
  EXPECT_EQ(map.NodeFor(1), nullptr);
  ASSERT_NE(map.NodeFor(0), nullptr);
  EXPECT_EQ(*map.NodeFor(0), b);
  EXPECT_EQ(map.nodes(), 1u);
  // A forgotten node's entry is reused.
  map.Assign(1, a);
  EXPECT_EQ(map.SlotsOf(a), 1);
  EXPECT_EQ(*map.NodeFor(1), a);
}

}  // namespace
}  // namespace bulwark::store
