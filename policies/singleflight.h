// Singleflight decides, for each caller of a coalescable unary call, whether it
// leads a new upstream call for its key (Role::kLeader) or follows the flight
// already open for a byte-identical key (Role::kFollower) and receives that
// flight's result. One flight per key at a time; no caching: the key leaves the
// map the moment its flight ends, so a later identical call starts a new
// flight. Keys are compared in full, so a hash collision can never hand one
// caller another's response. The Result type is opaque here (the sidecar's
// headers, message and trailers); it is stored once and shared by every
// subscriber.
//
// Thread-safety: thread-safe; one Singleflight is shared by every worker of a
// route. A single absl::Mutex guards the map and its flights; each operation
// holds it once, for a map probe or a few pointer moves (a follower's key is
// compared in full under it). Callbacks are never invoked under the lock nor
// from inside Join.
//
// Cost: Join hashes the key once (outside the lock); a follower then costs one
// map probe under the lock, a leader a second probe and one Flight allocated
// outside it (with its copy of the key); completing delivers one shared_ptr
// copy per subscriber. Numbers in tests/microbench/queue_flight_bench.cc.
//
// Lifetime: the Singleflight must outlive every Membership and Leadership it
// handed out.
//
// Usage (sidecar; callbacks post to a worker's loop):
//   auto joined = flights.Join(EncodeSingleflightKey(method, message, headers),
//                              /*on_outcome=*/PostToCaller(...),
//                              /*on_unwanted=*/PostCancelUpstream(...));
//   caller.membership = std::move(joined.membership);  // dropped = left
//   if (joined.role == Role::kLeader) {
//     upstream.leadership = std::move(joined.leadership);  // go upstream
//   }
//   // When the upstream call ends, whatever its status:
//   upstream.leadership.Complete(std::make_shared<const Response>(...));
#ifndef BULWARK_POLICIES_SINGLEFLIGHT_H_
#define BULWARK_POLICIES_SINGLEFLIGHT_H_

#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace bulwark {

// One configured key header and this call's value of it (std::nullopt: not
// sent, which is a different key from an empty value). A header sent more than
// once: pass its values joined with "," as HTTP does.
struct SingleflightKeyHeader {
  absl::string_view name;
  std::optional<absl::string_view> value;
};

// The coalescing key of a call: method, request message bytes and the key
// headers (in the configured order), each length-prefixed so that no two
// different inputs encode alike: ("ab", "c") and ("a", "bc") differ. Cost: one
// allocation of about the message's size.
std::string EncodeSingleflightKey(
    absl::string_view method, absl::string_view request_message,
    absl::Span<const SingleflightKeyHeader> key_headers);

namespace singleflight_internal {

// LEB128: a prefix code, so a length can never be confused with the bytes after
// it.
inline size_t VarintSize(uint64_t n) {
  size_t size = 1;
  while (n >= 0x80) {
    n >>= 7;
    ++size;
  }
  return size;
}

// The Put* helpers write at `out` (room made beforehand) and return the end.
inline char* PutVarint(uint64_t n, char* out) {
  while (n >= 0x80) {
    *out++ = static_cast<char>((n & 0x7f) | 0x80);
    n >>= 7;
  }
  *out++ = static_cast<char>(n);
  return out;
}

inline size_t FieldSize(absl::string_view field) {
  return VarintSize(field.size()) + field.size();
}

inline char* PutField(absl::string_view field, char* out) {
  out = PutVarint(field.size(), out);
  if (!field.empty()) std::memcpy(out, field.data(), field.size());
  return out + field.size();
}

// Marks whether a header was sent, so "absent" and "sent empty" are different
// keys.
constexpr char kHeaderAbsent = 0;
constexpr char kHeaderPresent = 1;

}  // namespace singleflight_internal

// The same key as EncodeSingleflightKey, read straight from the caller's own
// header storage and written into `key` (its old contents replaced, its
// capacity reused: a worker keeps one such buffer, so a key costs no
// allocation). `for_each_part(emit)` calls emit(name, value) once per key
// header part, in order (`value` a const absl::string_view*, null for a header
// not sent), and must do the same each time, being called twice: to size the
// key, then to write it. This is the per-call path (SingleflightStage::Key).
template <typename ForEachPart>
void EncodeSingleflightKeyInto(absl::string_view method,
                               absl::string_view request_message,
                               const ForEachPart& for_each_part,
                               std::string& key) {
  namespace internal = singleflight_internal;
  size_t parts = 0;
  size_t size =
      internal::FieldSize(method) + internal::FieldSize(request_message);
  for_each_part([&](absl::string_view name, const absl::string_view* value) {
    ++parts;
    size += internal::FieldSize(name) + 1;
    if (value != nullptr) size += internal::FieldSize(*value);
  });
  size += internal::VarintSize(parts);

  // Sized once, then written in place: no capacity check per byte.
  key.resize(size);
  char* out = key.data();
  out = internal::PutField(method, out);
  out = internal::PutField(request_message, out);
  out = internal::PutVarint(parts, out);
  for_each_part([&](absl::string_view name, const absl::string_view* value) {
    out = internal::PutField(name, out);
    if (value != nullptr) {
      *out++ = internal::kHeaderPresent;
      out = internal::PutField(*value, out);
    } else {
      *out++ = internal::kHeaderAbsent;
    }
  });
  assert(out == key.data() + key.size());
}

// How a flight ended, as seen by each subscriber.
enum class FlightEnd : uint8_t {
  // The leader completed it: `result` is the shared answer, success or failure.
  kCompleted,
  // The leader gave up without a result (Abandon(), or its Leadership was
  // dropped): `result` is null, and the sidecar answers the caller itself.
  kAbandoned,
};

// KeyHash hashes an encoded key (absl::string_view); tests inject a constant
// one to force collisions. Equality is always the full byte comparison.
template <typename Result, typename KeyHash = absl::Hash<absl::string_view>>
class Singleflight {
 public:
  enum class Role : uint8_t { kLeader, kFollower };

  struct Outcome {
    FlightEnd end;
    std::shared_ptr<const Result> result;  // non-null iff end == kCompleted
  };

  // A subscriber's delivery: invoked at most once, with the flight's Outcome,
  // on the thread that ended the flight (the leader's worker), never under the
  // lock. Never invoked after Leave() returned kLeft. Should be cheap, e.g.
  // post to the caller's worker.
  using OnOutcome = absl::AnyInvocable<void(Outcome)>;
  // The leader's "nobody wants this any more": invoked exactly once, on the
  // thread of the caller that left last, if every interested caller (the
  // leader's own included) leaves before the flight ends; the sidecar then
  // cancels the upstream call. `deadline_expired`: the last caller left
  // because its deadline passed (the flight's outcome is then a deadline
  // expiry, not a cancellation). Never invoked under the lock.
  using OnUnwanted = absl::AnyInvocable<void(bool deadline_expired)>;

  enum class LeaveStatus : uint8_t {
    // Removed; other callers still wait and the flight goes on.
    kLeft,
    // Removed, and nobody is left: the flight ended (its key left the map) and
    // the leader's on_unwanted has been invoked.
    kLastLeft,
    // The flight had already ended: this caller's on_outcome has run, or is
    // about to run on the thread that ended it (whoever receives it drops
    // it); or this Membership had already left.
    kAlreadyEnded,
  };

 private:
  struct Flight;

 public:
  // One caller's interest in a flight (leader's own caller or follower).
  // Move-only; leaves on destruction unless it has already left. Leave from the
  // caller's worker when the client cancels or its deadline passes.
  class Membership {
   public:
    Membership() = default;
    Membership(Membership&& other) noexcept { *this = std::move(other); }
    Membership& operator=(Membership&& other) noexcept {
      if (this != &other) {
        Leave();
        owner_ = std::exchange(other.owner_, nullptr);
        flight_ = std::move(other.flight_);
        slot_ = other.slot_;
      }
      return *this;
    }
    ~Membership() { Leave(); }

    // `deadline_expired`: the caller leaves because its deadline passed.
    LeaveStatus Leave(bool deadline_expired = false) {
      Singleflight* owner = std::exchange(owner_, nullptr);
      if (owner == nullptr) return LeaveStatus::kAlreadyEnded;
      std::shared_ptr<Flight> flight = std::move(flight_);
      return owner->LeaveFlight(*flight, slot_, deadline_expired);
    }

   private:
    friend class Singleflight;
    Membership(Singleflight* owner, std::shared_ptr<Flight> flight, size_t slot)
        : owner_(owner), flight_(std::move(flight)), slot_(slot) {}

    Singleflight* owner_ = nullptr;
    std::shared_ptr<Flight> flight_;
    size_t slot_ = 0;
  };

  // The duty to end a flight, held by the leader's upstream call (which may
  // outlive the leader's own caller). Move-only; abandons the flight on
  // destruction unless it ended.
  class Leadership {
   public:
    Leadership() = default;
    Leadership(Leadership&& other) noexcept { *this = std::move(other); }
    Leadership& operator=(Leadership&& other) noexcept {
      if (this != &other) {
        Abandon();
        owner_ = std::exchange(other.owner_, nullptr);
        flight_ = std::move(other.flight_);
      }
      return *this;
    }
    ~Leadership() { Abandon(); }

    bool Held() const { return owner_ != nullptr; }

    // Ends the flight with `result` (success or failure alike): removes the key
    // and invokes every remaining subscriber's on_outcome, on this thread, in
    // join order. Returns how many subscribers it was delivered to: 0 if all
    // had left (the flight had already ended as unwanted) or if this Leadership
    // is empty.
    size_t Complete(std::shared_ptr<const Result> result) {
      assert(result != nullptr);
      Singleflight* owner = std::exchange(owner_, nullptr);
      if (owner == nullptr) return 0;
      std::shared_ptr<Flight> flight = std::move(flight_);
      return owner->EndFlight(*flight, FlightEnd::kCompleted,
                              std::move(result));
    }

    // Ends the flight without a result: subscribers get FlightEnd::kAbandoned.
    // Returns how many subscribers were told.
    size_t Abandon() {
      Singleflight* owner = std::exchange(owner_, nullptr);
      if (owner == nullptr) return 0;
      std::shared_ptr<Flight> flight = std::move(flight_);
      return owner->EndFlight(*flight, FlightEnd::kAbandoned, nullptr);
    }

   private:
    friend class Singleflight;
    Leadership(Singleflight* owner, std::shared_ptr<Flight> flight)
        : owner_(owner), flight_(std::move(flight)) {}

    Singleflight* owner_ = nullptr;
    std::shared_ptr<Flight> flight_;
  };

  struct JoinResult {
    Role role;
    // Always held: this caller's subscription.
    Membership membership;
    // Held iff role == kLeader: go upstream, then Complete().
    Leadership leadership;
  };

  Singleflight() = default;
  ~Singleflight() = default;
  Singleflight(const Singleflight&) = delete;
  Singleflight& operator=(const Singleflight&) = delete;

  // Subscribes this caller to the open flight for `key` (kFollower), or opens
  // one and makes it the leader (kLeader). `make_on_unwanted` is called, once
  // and outside the lock, only if this caller may lead; a follower costs one
  // hash, one map probe under the lock and no allocation (beyond a slot in the
  // flight's list of subscribers). The key bytes are copied only by a leader.
  JoinResult Join(absl::string_view key, OnOutcome on_outcome,
                  absl::FunctionRef<OnUnwanted()> make_on_unwanted)
      ABSL_LOCKS_EXCLUDED(mu_) {
    const size_t hash = KeyHash{}(key);
    {
      absl::MutexLock lock(&mu_);
      if (auto it = flights_.find(KeyRef{key, hash}); it != flights_.end()) {
        return FollowLocked(it->second, on_outcome);
      }
    }
    // Built outside the lock, so the critical section never allocates a
    // flight; if an identical call opened one meanwhile, this one follows it
    // and `fresh` is discarded.
    auto fresh = std::make_shared<Flight>();
    fresh->hash = hash;
    fresh->key.assign(key.data(), key.size());
    fresh->on_unwanted = make_on_unwanted();
    fresh->interested = 1;
    absl::MutexLock lock(&mu_);
    auto [it, inserted] =
        flights_.try_emplace(KeyRef{fresh->key, fresh->hash}, fresh);
    if (!inserted) return FollowLocked(it->second, on_outcome);
    fresh->subscribers.push_back(std::move(on_outcome));
    flights_open_.store(flights_.size(), std::memory_order_relaxed);
    return {.role = Role::kLeader,
            .membership = Membership(this, fresh, 0),
            .leadership = Leadership(this, fresh)};
    // A discarded `fresh` dies after `lock`, outside it.
  }

  // The same with the leader's on_unwanted made up front (tests, benchmarks).
  JoinResult Join(absl::string_view key, OnOutcome on_outcome,
                  OnUnwanted on_unwanted) ABSL_LOCKS_EXCLUDED(mu_) {
    return Join(key, std::move(on_outcome),
                [&on_unwanted] { return std::move(on_unwanted); });
  }

  // Whether a flight for `key` is open now: what a caller that only counts
  // would-be coalescing (shadow mode) needs, without subscribing and leaving.
  bool HasOpenFlight(absl::string_view key) ABSL_LOCKS_EXCLUDED(mu_) {
    const size_t hash = KeyHash{}(key);
    absl::MutexLock lock(&mu_);
    return flights_.contains(KeyRef{key, hash});
  }

  // Racy snapshots for metrics and the admin page.
  size_t FlightsOpenApprox() const {
    return flights_open_.load(std::memory_order_relaxed);
  }
  // Followers subscribed to open flights (leaders' own callers not counted).
  size_t FollowersWaitingApprox() const {
    return followers_waiting_.load(std::memory_order_relaxed);
  }

 private:
  // Most flights have no follower: the leader's own slot needs no allocation.
  using Subscribers = absl::InlinedVector<OnOutcome, 1>;

  JoinResult FollowLocked(const std::shared_ptr<Flight>& open,
                          OnOutcome& on_outcome)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const size_t slot = open->subscribers.size();
    open->subscribers.push_back(std::move(on_outcome));
    ++open->interested;
    followers_waiting_.fetch_add(1, std::memory_order_relaxed);
    return {.role = Role::kFollower,
            .membership = Membership(this, open, slot),
            .leadership = Leadership()};
  }

  // The map's key: a view of the key bytes owned by the Flight it maps to, plus
  // their hash, computed once per Join outside the lock (and never again, so
  // erasing is cheap).
  struct KeyRef {
    absl::string_view bytes;
    size_t hash;
  };
  struct KeyRefHash {
    size_t operator()(const KeyRef& k) const { return k.hash; }
  };
  struct KeyRefEq {
    bool operator()(const KeyRef& a, const KeyRef& b) const {
      return a.hash == b.hash && a.bytes == b.bytes;
    }
  };

  // All fields but `key` and `hash` (immutable while in the map) are guarded by
  // the owning Singleflight's mu_; the clang analysis cannot name another
  // object's mutex here.
  struct Flight {
    std::string key;
    size_t hash = 0;
    // Written once, under mu_. Leave also reads it without the lock: an ended
    // flight stays ended, and acquire/release orders nothing but this flag.
    std::atomic<bool> ended{false};
    // Slot 0 is the leader's own caller. A slot whose caller left holds an
    // empty callback, so a slot number stays valid for its Membership. Emptied
    // when the flight ends.
    Subscribers subscribers;
    size_t interested = 0;  // non-empty slots
    OnUnwanted on_unwanted;
  };

  // What a flight leaves behind when it ends: destroyed (or invoked) outside
  // the lock.
  struct Remains {
    std::shared_ptr<Flight> map_ref;
    std::string key;
    Subscribers subscribers;
    OnUnwanted on_unwanted;
  };

  // Marks `flight` ended, takes it out of the map, and moves what must die or
  // run outside the lock into the returned Remains.
  Remains EndLocked(Flight& flight) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Remains remains;
    flight.ended.store(true, std::memory_order_release);
    auto it = flights_.find(KeyRef{flight.key, flight.hash});
    assert(it != flights_.end() && it->second.get() == &flight);
    remains.map_ref = std::move(it->second);
    flights_.erase(it);
    flights_open_.store(flights_.size(), std::memory_order_relaxed);
    // Slot 0 is the leader's own caller; every other live slot is a waiting
    // follower.
    size_t followers = flight.interested;
    if (!flight.subscribers.empty() && flight.subscribers.front()) --followers;
    followers_waiting_.fetch_sub(followers, std::memory_order_relaxed);
    flight.interested = 0;
    remains.key = std::move(flight.key);
    remains.subscribers = std::move(flight.subscribers);
    remains.on_unwanted = std::move(flight.on_unwanted);
    return remains;
  }

  size_t EndFlight(Flight& flight, FlightEnd end,
                   std::shared_ptr<const Result> result)
      ABSL_LOCKS_EXCLUDED(mu_) {
    Remains remains;
    {
      absl::MutexLock lock(&mu_);
      // Every caller had left.
      if (flight.ended.load(std::memory_order_relaxed)) return 0;
      remains = EndLocked(flight);
    }
    size_t delivered = 0;
    for (OnOutcome& subscriber : remains.subscribers) {
      if (!subscriber) continue;
      subscriber(Outcome{.end = end, .result = result});
      ++delivered;
    }
    return delivered;
  }

  LeaveStatus LeaveFlight(Flight& flight, size_t slot, bool deadline_expired)
      ABSL_LOCKS_EXCLUDED(mu_) {
    // The usual case, a caller leaving after delivery, takes no lock.
    if (flight.ended.load(std::memory_order_acquire)) {
      return LeaveStatus::kAlreadyEnded;
    }
    OnOutcome departed;
    Remains remains;
    bool last;
    {
      absl::MutexLock lock(&mu_);
      if (flight.ended.load(std::memory_order_relaxed)) {
        return LeaveStatus::kAlreadyEnded;
      }
      assert(slot < flight.subscribers.size() && flight.subscribers[slot]);
      departed = std::move(flight.subscribers[slot]);
      flight.subscribers[slot] = nullptr;
      if (slot != 0) followers_waiting_.fetch_sub(1, std::memory_order_relaxed);
      last = --flight.interested == 0;
      if (last) remains = EndLocked(flight);
    }
    if (!last) return LeaveStatus::kLeft;
    if (remains.on_unwanted) remains.on_unwanted(deadline_expired);
    return LeaveStatus::kLastLeft;
  }

  absl::Mutex mu_;
  absl::flat_hash_map<KeyRef, std::shared_ptr<Flight>, KeyRefHash, KeyRefEq>
      flights_ ABSL_GUARDED_BY(mu_);
  // Mirrors for metrics, written under mu_, read without it: relaxed suffices
  // because a reader only wants some recent value.
  std::atomic<size_t> flights_open_{0};
  std::atomic<size_t> followers_waiting_{0};
};

}  // namespace bulwark

#endif  // BULWARK_POLICIES_SINGLEFLIGHT_H_
