#include "policies/singleflight.h"

#include <atomic>
#include <latch>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bulwark {
namespace {

// Stands in for the sidecar's response (headers, message, trailers): opaque to
// the policy.
struct Response {
  std::string status;
  std::string body;
};

using Flights = Singleflight<Response>;
using Role = Flights::Role;
using LeaveStatus = Flights::LeaveStatus;

// What one subscriber received.
struct Received {
  int calls = 0;
  std::optional<FlightEnd> end;
  std::shared_ptr<const Response> result;
};

Flights::OnOutcome Into(Received& received) {
  return [&received](Flights::Outcome outcome) {
    ++received.calls;
    received.end = outcome.end;
    received.result = std::move(outcome.result);
  };
}

Flights::OnOutcome Ignore() {
  return [](Flights::Outcome) {};
}

Flights::OnUnwanted CountInto(int& unwanted) {
  return [&unwanted](bool) { ++unwanted; };
}

std::string Key(absl::string_view message) {
  return EncodeSingleflightKey(
      "/shop.v1.Orders/GetOrder", message,
      {{.name = "authorization", .value = "Bearer a"}});
}

std::shared_ptr<const Response> Ok(absl::string_view body) {
  return std::make_shared<const Response>(Response{"OK", std::string(body)});
}

TEST(SingleflightTest, FirstCallerLeadsAndAnIdenticalOneFollows) {
  Flights flights;
  Received leader_got, follower_got;
  auto leader = flights.Join(Key("id=1"), Into(leader_got), [](bool) {});
  auto follower = flights.Join(Key("id=1"), Into(follower_got), [](bool) {});
  EXPECT_EQ(leader.role, Role::kLeader);
  EXPECT_TRUE(leader.leadership.Held());
  EXPECT_EQ(follower.role, Role::kFollower);
  EXPECT_FALSE(follower.leadership.Held());
  EXPECT_EQ(flights.FlightsOpenApprox(), 1u);
  EXPECT_EQ(flights.FollowersWaitingApprox(), 1u);

  EXPECT_EQ(leader.leadership.Complete(Ok("order 1")), 2u);
  EXPECT_EQ(leader_got.end, FlightEnd::kCompleted);
  EXPECT_EQ(follower_got.result->body, "order 1");
  EXPECT_EQ(flights.FlightsOpenApprox(), 0u);
  EXPECT_EQ(flights.FollowersWaitingApprox(), 0u);
}

TEST(SingleflightTest, DifferentKeysFlyApart) {
  Flights flights;
  auto one = flights.Join(Key("id=1"), Ignore(), [](bool) {});
  auto two = flights.Join(Key("id=2"), Ignore(), [](bool) {});
  EXPECT_EQ(one.role, Role::kLeader);
  EXPECT_EQ(two.role, Role::kLeader);
  EXPECT_EQ(flights.FlightsOpenApprox(), 2u);
}

TEST(SingleflightTest, HasOpenFlightSeesAFlightOnlyWhileItIsOpen) {
  Flights flights;
  EXPECT_FALSE(flights.HasOpenFlight(Key("id=1")));
  auto leader = flights.Join(Key("id=1"), Ignore(), [](bool) {});
  EXPECT_TRUE(flights.HasOpenFlight(Key("id=1")));
  EXPECT_FALSE(flights.HasOpenFlight(Key("id=2")));
  // Asking subscribes nobody.
  EXPECT_EQ(flights.FollowersWaitingApprox(), 0u);
  leader.leadership.Complete(Ok("order 1"));
  EXPECT_FALSE(flights.HasOpenFlight(Key("id=1")));
}

TEST(SingleflightTest, SingleflightThousandFollowersGetOneResult) {
  Flights flights;
  Received leader_got;
  auto leader = flights.Join(Key("hot"), Into(leader_got), [](bool) {});
  std::vector<Received> got(1000);
  std::vector<Flights::Membership> members;
  for (Received& received : got) {
    auto joined = flights.Join(Key("hot"), Into(received), [](bool) {});
    ASSERT_EQ(joined.role, Role::kFollower);
    members.push_back(std::move(joined.membership));
  }
  EXPECT_EQ(flights.FollowersWaitingApprox(), 1000u);

  const auto result = Ok("hot answer");
  EXPECT_EQ(leader.leadership.Complete(result), 1001u);
  EXPECT_EQ(leader_got.result, result);
  for (const Received& received : got) {
    EXPECT_EQ(received.calls, 1);
    EXPECT_EQ(received.result,
              result);  // the very same stored object, not a copy
  }
  EXPECT_EQ(result.use_count(), 1 + 1 + 1000);
  EXPECT_EQ(flights.FollowersWaitingApprox(), 0u);
  // Members leaving after the end changes nothing and delivers nothing more.
  EXPECT_EQ(members.front().Leave(), LeaveStatus::kAlreadyEnded);
  members.clear();
  EXPECT_EQ(got.back().calls, 1);
}

TEST(SingleflightTest, ConcurrentJoinsElectExactlyOneLeader) {
  constexpr int kThreads = 8;
  Flights flights;
  std::atomic<int> delivered{0};
  std::vector<Flights::JoinResult> joined(kThreads);
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      joined[t] = flights.Join(
          Key("same"), [&](Flights::Outcome) { delivered.fetch_add(1); },
          [](bool) {});
    });
  }
  for (std::thread& thread : threads) thread.join();
  int leaders = 0;
  for (Flights::JoinResult& j : joined) {
    if (j.role != Role::kLeader) continue;
    ++leaders;
    EXPECT_EQ(j.leadership.Complete(Ok("x")), static_cast<size_t>(kThreads));
  }
  EXPECT_EQ(leaders, 1);
  EXPECT_EQ(delivered.load(), kThreads);
}

TEST(SingleflightTest, LeaderFailureFansOutToAll) {
  Flights flights;
  Received leader_got, a, b;
  auto leader = flights.Join(Key("q"), Into(leader_got), [](bool) {});
  auto follower_a = flights.Join(Key("q"), Into(a), [](bool) {});
  auto follower_b = flights.Join(Key("q"), Into(b), [](bool) {});
  const auto failure = std::make_shared<const Response>(
      Response{"UNAVAILABLE", "connection reset"});
  EXPECT_EQ(leader.leadership.Complete(failure), 3u);
  for (const Received* r : {&leader_got, &a, &b}) {
    EXPECT_EQ(r->end, FlightEnd::kCompleted);
    EXPECT_EQ(r->result, failure);
  }
}

TEST(SingleflightTest, DroppedLeadershipAbandonsTheFlightToItsFollowers) {
  Flights flights;
  Received follower_got;
  auto follower = [&] {
    auto leader = flights.Join(Key("q"), Ignore(), [](bool) {});
    return flights.Join(Key("q"), Into(follower_got), [](bool) {});
  }();  // the leader's Leadership and Membership die here without a result
  EXPECT_EQ(follower_got.calls, 1);
  EXPECT_EQ(follower_got.end, FlightEnd::kAbandoned);
  EXPECT_EQ(follower_got.result, nullptr);
  EXPECT_EQ(flights.FlightsOpenApprox(), 0u);
  EXPECT_EQ(follower.membership.Leave(), LeaveStatus::kAlreadyEnded);
}

TEST(SingleflightTest, FollowerLeavingKeepsFlightForOthers) {
  Flights flights;
  int unwanted = 0;
  Received leaving, staying;
  auto leader = flights.Join(Key("q"), Ignore(), CountInto(unwanted));
  auto follower_leaving = flights.Join(Key("q"), Into(leaving), [](bool) {});
  auto follower_staying = flights.Join(Key("q"), Into(staying), [](bool) {});

  EXPECT_EQ(follower_leaving.membership.Leave(), LeaveStatus::kLeft);
  EXPECT_EQ(flights.FollowersWaitingApprox(), 1u);
  EXPECT_EQ(unwanted, 0);

  EXPECT_EQ(leader.leadership.Complete(Ok("r")), 2u);
  EXPECT_EQ(leaving.calls, 0);
  EXPECT_EQ(staying.result->body, "r");
}

TEST(SingleflightTest, LeaderCallerLeavingKeepsFlightWhileFollowersWait) {
  Flights flights;
  int unwanted = 0;
  Received leader_got, follower_got;
  auto leader = flights.Join(Key("q"), Into(leader_got), CountInto(unwanted));
  auto follower = flights.Join(Key("q"), Into(follower_got), [](bool) {});

  // The leader's client cancels; its upstream call (holding the Leadership)
  // goes on.
  EXPECT_EQ(leader.membership.Leave(), LeaveStatus::kLeft);
  EXPECT_EQ(unwanted, 0);
  EXPECT_EQ(flights.FlightsOpenApprox(), 1u);
  // A newcomer still joins the running flight.
  Received newcomer_got;
  auto newcomer = flights.Join(Key("q"), Into(newcomer_got), [](bool) {});
  EXPECT_EQ(newcomer.role, Role::kFollower);

  EXPECT_EQ(leader.leadership.Complete(Ok("r")), 2u);
  EXPECT_EQ(leader_got.calls, 0);
  EXPECT_EQ(follower_got.result->body, "r");
  EXPECT_EQ(newcomer_got.result->body, "r");
}

TEST(SingleflightTest, LastCallerLeavingReportsCancel) {
  Flights flights;
  int unwanted = 0;
  Received leader_got, follower_got;
  auto leader = flights.Join(Key("q"), Into(leader_got), CountInto(unwanted));
  auto follower =
      flights.Join(Key("q"), Into(follower_got), CountInto(unwanted));

  EXPECT_EQ(follower.membership.Leave(), LeaveStatus::kLeft);
  EXPECT_EQ(unwanted, 0);
  EXPECT_EQ(leader.membership.Leave(), LeaveStatus::kLastLeft);
  EXPECT_EQ(unwanted, 1);  // the leader's on_unwanted: cancel the upstream call
  EXPECT_EQ(flights.FlightsOpenApprox(), 0u);

  // The key left the map: the same call now starts a new flight.
  auto next = flights.Join(Key("q"), Ignore(), [](bool) {});
  EXPECT_EQ(next.role, Role::kLeader);
  // The cancelled upstream call's late answer reaches nobody.
  EXPECT_EQ(leader.leadership.Complete(Ok("late")), 0u);
  EXPECT_EQ(leader_got.calls + follower_got.calls, 0);
  EXPECT_EQ(unwanted, 1);
}

TEST(SingleflightTest, LastCallerLeavingByDestructionReportsCancel) {
  Flights flights;
  int unwanted = 0;
  Flights::Leadership upstream;
  {
    auto leader = flights.Join(Key("q"), Ignore(), CountInto(unwanted));
    upstream = std::move(leader.leadership);
  }  // the caller's Membership is destroyed with it
  EXPECT_EQ(unwanted, 1);
  EXPECT_EQ(upstream.Complete(Ok("late")), 0u);
}

TEST(SingleflightTest, FinishedKeyIsRemovedAtOnce) {
  Flights flights;
  auto first = flights.Join(Key("q"), Ignore(), [](bool) {});
  first.leadership.Complete(Ok("first"));
  EXPECT_EQ(flights.FlightsOpenApprox(), 0u);

  Received second_got;
  auto second = flights.Join(Key("q"), Into(second_got), [](bool) {});
  EXPECT_EQ(second.role, Role::kLeader);  // no cached answer
  second.leadership.Complete(Ok("second"));
  EXPECT_EQ(second_got.result->body, "second");
}

// Every key hashes alike: the map must still tell them apart by their bytes.
struct ConstantHash {
  size_t operator()(absl::string_view) const { return 42; }
};

TEST(SingleflightTest, HashCollisionNeverSharesAResult) {
  using CollidingFlights = Singleflight<Response, ConstantHash>;
  CollidingFlights flights;
  using Outcome = CollidingFlights::Outcome;
  std::shared_ptr<const Response> alice_got, bob_got, alice_twin_got;
  auto alice = flights.Join(
      Key("user=alice"), [&](Outcome o) { alice_got = o.result; }, [](bool) {});
  auto bob = flights.Join(
      Key("user=bob"), [&](Outcome o) { bob_got = o.result; }, [](bool) {});
  auto alice_twin = flights.Join(
      Key("user=alice"), [&](Outcome o) { alice_twin_got = o.result; },
      [](bool) {});
  EXPECT_EQ(alice.role, CollidingFlights::Role::kLeader);
  EXPECT_EQ(bob.role, CollidingFlights::Role::kLeader);
  EXPECT_EQ(alice_twin.role, CollidingFlights::Role::kFollower);
  EXPECT_EQ(flights.FlightsOpenApprox(), 2u);

  bob.leadership.Complete(Ok("bob's order"));
  EXPECT_EQ(alice_got, nullptr);
  EXPECT_EQ(alice_twin_got, nullptr);
  alice.leadership.Complete(Ok("alice's order"));
  EXPECT_EQ(bob_got->body, "bob's order");
  EXPECT_EQ(alice_got->body, "alice's order");
  EXPECT_EQ(alice_twin_got->body, "alice's order");
}

TEST(SingleflightKeyTest, KeyEncodingIsUnambiguous) {
  using H = SingleflightKeyHeader;
  // Field boundaries: moving bytes from one field to the next changes the key.
  EXPECT_NE(EncodeSingleflightKey("ab", "c", {}),
            EncodeSingleflightKey("a", "bc", {}));
  EXPECT_NE(EncodeSingleflightKey("m", "", {{.name = "h", .value = "v"}}),
            EncodeSingleflightKey("m", "", {{.name = "hv", .value = ""}}));
  // Header values are not merged across headers.
  EXPECT_NE(
      EncodeSingleflightKey(
          "m", "x", {{.name = "a", .value = "1"}, {.name = "b", .value = ""}}),
      EncodeSingleflightKey(
          "m", "x", {{.name = "a", .value = ""}, {.name = "b", .value = "1"}}));
  // An absent header differs from one sent empty.
  EXPECT_NE(
      EncodeSingleflightKey("m", "x", {{.name = "a", .value = std::nullopt}}),
      EncodeSingleflightKey("m", "x", {{.name = "a", .value = ""}}));
  // A message ending in bytes that look like an encoded header does not alias
  // one.
  const std::string with_header =
      EncodeSingleflightKey("m", "x", {{.name = "a", .value = "1"}});
  const std::string header_bytes = with_header.substr(4);  // after "\1m\1x"
  EXPECT_NE(EncodeSingleflightKey("m", "x" + header_bytes, {}), with_header);
  // Lengths beyond one varint byte still separate fields.
  const std::string long_message(300, 'z');
  EXPECT_NE(
      EncodeSingleflightKey("m", long_message, {}),
      EncodeSingleflightKey("m", long_message.substr(1), {{.name = "z"}}));
  // Same inputs, same key; message bytes may hold anything, NULs included.
  const std::string binary("a\0b", 3);
  EXPECT_EQ(EncodeSingleflightKey("m", binary, {H{.name = "h", .value = "v"}}),
            EncodeSingleflightKey("m", binary, {H{.name = "h", .value = "v"}}));
  EXPECT_NE(EncodeSingleflightKey("m", binary, {}),
            EncodeSingleflightKey("m", std::string("a\0c", 3), {}));
}

}  // namespace
}  // namespace bulwark
