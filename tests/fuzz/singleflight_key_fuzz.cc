// Checks singleflight (policies/singleflight.h) in two parts.
//
// 1. EncodeSingleflightKey is injective where it can be checked: the same
// payload bytes
//    are cut into (method, message, key headers with values present or absent)
//    several ways, and two cuts give equal keys exactly when they give equal
//    tuples. Concatenation ambiguities ("ab","c" vs "a","bc"), absent vs empty
//    header values and header counts are what the cuts vary.
// 2. A Singleflight<std::string> driven by input-chosen Join / Leave / Complete
// / Abandon /
//    drop / move operations, including Joins made from inside an outcome
//    callback, agrees with a model: one flight per key (a second Join of a key
//    with an open flight is a follower), Complete delivers to exactly the
//    subscribers still there, in join order, each subscriber's callback runs at
//    most once and never after it left, on_unwanted runs once when the last
//    caller leaves an unfinished flight, Leave reports kLeft / kLastLeft /
//    kAlreadyEnded as documented, FlightsOpenApprox / FollowersWaitingApprox
//    match the model after every step and return to 0 once everything is
//    dropped. Half the inputs use a constant key hash, so every key collides.
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "policies/singleflight.h"
#include "tests/fuzz/byte_reader.h"

namespace {

using bulwark::EncodeSingleflightKey;
using bulwark::FlightEnd;
using bulwark::SingleflightKeyHeader;
using bulwark::fuzz::ByteReader;

// ---- Part 1: the key encoding ----

struct Tuple {
  std::string method;
  std::string message;
  std::vector<std::pair<std::string, std::optional<std::string>>> headers;

  bool operator==(const Tuple&) const = default;
};

// Cuts `payload` into a tuple as `cuts` says.
Tuple Cut(std::string_view payload, ByteReader& cuts) {
  size_t pos = 0;
  auto take = [&](size_t n) {
    if (n > payload.size() - pos) n = payload.size() - pos;
    std::string out(payload.substr(pos, n));
    pos += n;
    return out;
  };
  Tuple t;
  t.method = take(cuts.Byte() % 24);
  t.message = take(cuts.Byte());
  const int headers = cuts.Byte() % 4;
  for (int i = 0; i < headers; ++i) {
    std::string name = take(cuts.Byte() % 12);
    const uint8_t value = cuts.Byte();
    std::optional<std::string> v;
    if ((value & 1) != 0) v = take((value >> 1) % 24);
    t.headers.emplace_back(std::move(name), std::move(v));
  }
  return t;
}

std::string KeyOf(const Tuple& t) {
  std::vector<SingleflightKeyHeader> headers;
  for (const auto& [name, value] : t.headers) {
    SingleflightKeyHeader h{.name = name, .value = std::nullopt};
    if (value.has_value()) h.value = absl::string_view(*value);
    headers.push_back(h);
  }
  return EncodeSingleflightKey(t.method, t.message, headers);
}

// Returns the tuples' keys, for part 2.
std::vector<std::string> CheckKeys(ByteReader& in) {
  constexpr int kCuts = 4;
  constexpr size_t kCutBytes = 12;
  std::string cut_bytes[kCuts];
  for (std::string& c : cut_bytes) c = std::string(in.Take(kCutBytes));
  const size_t payload_size = in.Byte();
  const std::string payload(in.Take(payload_size));

  std::vector<Tuple> tuples;
  for (const std::string& c : cut_bytes) {
    ByteReader cuts(reinterpret_cast<const uint8_t*>(c.data()), c.size());
    tuples.push_back(Cut(payload, cuts));
  }
  // Variants that differ from the first cut in one way only.
  Tuple absent_vs_empty = tuples[0];
  absent_vs_empty.headers.emplace_back("h", std::nullopt);
  Tuple empty_value = tuples[0];
  empty_value.headers.emplace_back("h", std::string());
  Tuple no_header = tuples[0];
  tuples.push_back(absent_vs_empty);
  tuples.push_back(empty_value);
  tuples.push_back(no_header);

  std::vector<std::string> keys;
  for (const Tuple& t : tuples) keys.push_back(KeyOf(t));
  for (size_t i = 0; i < tuples.size(); ++i) {
    FUZZ_CHECK(KeyOf(tuples[i]) == keys[i]);  // deterministic
    for (size_t j = i + 1; j < tuples.size(); ++j) {
      FUZZ_CHECK((tuples[i] == tuples[j]) == (keys[i] == keys[j]));
    }
  }
  return keys;
}

// ---- Part 2: flights against a model ----

struct ConstantHash {
  size_t operator()(absl::string_view) const { return 42; }
};

template <typename Hash>
class FlightsModelCheck {
 public:
  using Flights = bulwark::Singleflight<std::string, Hash>;
  using Role = typename Flights::Role;
  using LeaveStatus = typename Flights::LeaveStatus;

  FlightsModelCheck(ByteReader& in, std::vector<std::string> keys)
      : in_(in), keys_(std::move(keys)) {}

  void Run() {
    for (int steps = 0; steps < 512 && !in_.empty(); ++steps) {
      Step();
      CheckCounters();
    }
    TearDown();
  }

 private:
  struct Caller {
    size_t flight = 0;
    typename Flights::Membership membership;
    typename Flights::Leadership leadership;
    bool left = false;       // model: its membership left (or was dropped)
    bool delivered = false;  // model: an outcome is owed / was delivered
    bool rejoin = false;     // its callback Joins the same key again
    int outcome_calls = 0;
    std::optional<FlightEnd> end;
    std::shared_ptr<const std::string> result;
  };
  struct FlightModel {
    std::string key;
    bool ended = false;
    std::vector<size_t> subscribers;  // callers, join order
    size_t leader = 0;
    int unwanted_calls = 0;
  };

  // Live subscribers of `f`, in join order.
  std::vector<size_t> Live(const FlightModel& f) const {
    std::vector<size_t> live;
    for (size_t c : f.subscribers) {
      if (!callers_[c]->left) live.push_back(c);
    }
    return live;
  }

  Caller* Pick() {
    if (callers_.empty()) return nullptr;
    return callers_[in_.Below(callers_.size())].get();
  }

  void Step() {
    switch (in_.Byte() % 8) {
      case 0:
      case 1: {
        // Two statements: argument evaluation order is unspecified, and a
        // corpus file must mean the same to every compiler.
        const std::string& key = keys_[in_.Below(keys_.size())];
        Join(key, in_.Byte() % 8 == 0);
        break;
      }
      case 2:
        if (Caller* c = Pick()) Leave(*c, /*drop=*/false);
        break;
      case 3:
        if (Caller* c = Pick()) Leave(*c, /*drop=*/true);
        break;
      case 4:
        if (Caller* c = Pick()) End(*c, FlightEnd::kCompleted, /*drop=*/false);
        break;
      case 5:
        if (Caller* c = Pick()) End(*c, FlightEnd::kAbandoned, in_.Bool());
        break;
      case 6:
        if (Caller* c = Pick()) {  // moves change nothing
          typename Flights::Membership m(std::move(c->membership));
          c->membership = std::move(m);
          typename Flights::Leadership l(std::move(c->leadership));
          c->leadership = std::move(l);
        }
        break;
      case 7:
        if (Caller* c = Pick()) {
          // An empty Leadership ends nothing.
          typename Flights::Leadership empty;
          FUZZ_CHECK(empty.Complete(std::make_shared<const std::string>()) ==
                     0);
          FUZZ_CHECK(empty.Abandon() == 0);
          FUZZ_CHECK(!empty.Held());
          const bool held = c->leadership.Held();
          FUZZ_CHECK(held == (flights_model_[c->flight].leader == Index(*c) &&
                              !leadership_gone_[c->flight]));
        }
        break;
    }
  }

  size_t Index(const Caller& c) const {
    for (size_t i = 0; i < callers_.size(); ++i) {
      if (callers_[i].get() == &c) return i;
    }
    FUZZ_CHECK(false);
    return 0;
  }

  std::optional<size_t> OpenFlight(const std::string& key) const {
    for (size_t f = 0; f < flights_model_.size(); ++f) {
      if (!flights_model_[f].ended && flights_model_[f].key == key) return f;
    }
    return std::nullopt;
  }

  // `key` by value: it may be a flight's key in flights_model_, which this
  // grows.
  void Join(std::string key, bool rejoin) {
    const std::optional<size_t> open = OpenFlight(key);
    const size_t index = callers_.size();
    callers_.push_back(std::make_unique<Caller>());
    Caller& caller = *callers_.back();
    caller.rejoin = rejoin;
    if (open.has_value()) {
      caller.flight = *open;
    } else {
      caller.flight = flights_model_.size();
      flights_model_.push_back({.key = key, .leader = index});
      leadership_gone_.push_back(false);
    }
    flights_model_[caller.flight].subscribers.push_back(index);
    const size_t flight = caller.flight;
    auto joined = flights_.Join(
        key,
        [this, index](typename Flights::Outcome outcome) {
          OnOutcome(index, std::move(outcome));
        },
        [this, flight](bool) { ++flights_model_[flight].unwanted_calls; });
    FUZZ_CHECK(joined.role ==
               (open.has_value() ? Role::kFollower : Role::kLeader));
    FUZZ_CHECK(joined.leadership.Held() == !open.has_value());
    caller.membership = std::move(joined.membership);
    caller.leadership = std::move(joined.leadership);
  }

  void OnOutcome(size_t index, typename Flights::Outcome outcome) {
    Caller& caller = *callers_[index];
    ++caller.outcome_calls;
    FUZZ_CHECK(caller.outcome_calls == 1);
    FUZZ_CHECK(!caller.left);
    FUZZ_CHECK((outcome.result != nullptr) ==
               (outcome.end == FlightEnd::kCompleted));
    caller.end = outcome.end;
    caller.result = std::move(outcome.result);
    delivery_log_.push_back(index);
    if (caller.rejoin) {
      // The key left the map before any callback ran: this Join leads a new
      // flight unless an earlier callback of the same delivery already opened
      // one.
      Join(flights_model_[caller.flight].key, /*rejoin=*/false);
    }
  }

  void Leave(Caller& caller, bool drop) {
    FlightModel& flight = flights_model_[caller.flight];
    std::optional<LeaveStatus> expected;
    if (caller.left || flight.ended) {
      expected = LeaveStatus::kAlreadyEnded;
    } else {
      caller.left = true;
      if (Live(flight).empty()) {
        flight.ended = true;
        expected = LeaveStatus::kLastLeft;
      } else {
        expected = LeaveStatus::kLeft;
      }
    }
    caller.left = true;
    const int unwanted_before = flight.unwanted_calls;
    if (drop) {
      caller.membership = typename Flights::Membership();
    } else {
      FUZZ_CHECK(caller.membership.Leave() == *expected);
    }
    FUZZ_CHECK(caller.membership.Leave() == LeaveStatus::kAlreadyEnded);
    FUZZ_CHECK(flight.unwanted_calls ==
               unwanted_before + (*expected == LeaveStatus::kLastLeft ? 1 : 0));
  }

  void End(Caller& caller, FlightEnd end, bool drop) {
    const size_t f = caller.flight;
    if (flights_model_[f].leader != Index(caller) || leadership_gone_[f]) {
      FUZZ_CHECK(!caller.leadership.Held());
      FUZZ_CHECK(caller.leadership.Abandon() == 0);
      return;
    }
    FUZZ_CHECK(caller.leadership.Held());
    leadership_gone_[f] = true;
    std::vector<size_t> expected;
    if (!flights_model_[f].ended) {
      expected = Live(flights_model_[f]);
      flights_model_[f].ended = true;
      for (size_t c : expected) callers_[c]->delivered = true;
    }
    delivery_log_.clear();
    auto result = std::make_shared<const std::string>("result");
    size_t delivered = 0;
    if (end == FlightEnd::kCompleted) {
      delivered = caller.leadership.Complete(result);
    } else if (drop) {
      caller.leadership = typename Flights::Leadership();
      delivered = delivery_log_.size();
    } else {
      delivered = caller.leadership.Abandon();
    }
    FUZZ_CHECK(!caller.leadership.Held());
    FUZZ_CHECK(delivered == expected.size());
    FUZZ_CHECK(delivery_log_ == expected);
    for (size_t c : expected) {
      FUZZ_CHECK(callers_[c]->outcome_calls == 1);
      FUZZ_CHECK(callers_[c]->end == end);
      FUZZ_CHECK(end != FlightEnd::kCompleted || callers_[c]->result == result);
    }
    delivery_log_.clear();
  }

  void CheckCounters() const {
    size_t open = 0;
    size_t followers = 0;
    for (const FlightModel& f : flights_model_) {
      FUZZ_CHECK(f.unwanted_calls <= 1);
      if (f.ended) continue;
      ++open;
      for (size_t c : Live(f)) followers += c == f.leader ? 0 : 1;
    }
    FUZZ_CHECK(flights_.FlightsOpenApprox() == open);
    FUZZ_CHECK(flights_.FollowersWaitingApprox() == followers);
    for (const auto& c : callers_) {
      FUZZ_CHECK(c->outcome_calls == (c->delivered ? 1 : 0));
    }
  }

  void TearDown() {
    // Drop every membership and leadership, in an input-chosen order. Callbacks
    // may append callers (rejoins) while this runs: the index loop reaches
    // them.
    for (size_t i = 0; i < callers_.size(); ++i) {
      Caller& c = *callers_[i];
      if (in_.Bool()) {
        Leave(c, /*drop=*/true);
        End(c, FlightEnd::kAbandoned, /*drop=*/true);
      } else {
        End(c, FlightEnd::kAbandoned, /*drop=*/true);
        Leave(c, /*drop=*/true);
      }
      CheckCounters();
    }
    FUZZ_CHECK(flights_.FlightsOpenApprox() == 0);
    FUZZ_CHECK(flights_.FollowersWaitingApprox() == 0);
    for (const FlightModel& f : flights_model_) FUZZ_CHECK(f.ended);
  }

  ByteReader& in_;
  const std::vector<std::string> keys_;
  // Outlives every Membership and Leadership below (TearDown has dropped them
  // all by then anyway).
  Flights flights_;
  // A deque: callbacks append callers while references to others are held.
  std::deque<std::unique_ptr<Caller>> callers_;
  std::vector<FlightModel> flights_model_;
  std::vector<bool> leadership_gone_;  // per flight: Complete/Abandon/drop done
  std::vector<size_t> delivery_log_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 8192) return -1;
  ByteReader in(data, size);
  std::vector<std::string> keys = CheckKeys(in);
  if (in.Bool()) {
    FlightsModelCheck<absl::Hash<absl::string_view>>(in, std::move(keys)).Run();
  } else {
    FlightsModelCheck<ConstantHash>(in, std::move(keys)).Run();
  }
  return 0;
}
