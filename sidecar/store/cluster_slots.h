// Redis Cluster's key-to-node arithmetic, as the cluster-aware RedisClient
// needs it (SPEC section 8): which of the 16384 hash slots a key falls in
// (CRC16-XMODEM of the key, or of its `{hash tag}`, exactly as Redis's
// keyHashSlot does), what a MOVED or ASK error reply says (the slot and the
// node now serving it), and a SlotMap that remembers, slot by slot, which
// node answered for it last. It decides nothing about when to believe a
// redirection: the client does.
//
// Thread-safety: the functions are pure and thread-safe; a SlotMap is a plain
// value (not thread-safe; the client uses it on its loop only). Cost: KeySlot
// is O(key length) with a 256-entry table; ParseRedirection O(reply length);
// a SlotMap is 32 KiB of slot entries plus one entry per node that serves a
// slot it knows, every operation O(1) but Forget, O(16384).
#ifndef BULWARK_SIDECAR_STORE_CLUSTER_SLOTS_H_
#define BULWARK_SIDECAR_STORE_CLUSTER_SLOTS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "sidecar/host_port.h"

namespace bulwark::store {

inline constexpr int kClusterSlots = 16384;

// CRC16-XMODEM (polynomial 0x1021, initial value 0, no reflection): Redis
// Cluster's key hash. Crc16Xmodem("123456789") == 0x31C3.
uint16_t Crc16Xmodem(std::string_view data);

// The slot of `key`: CRC16 of the text between the first '{' and the first
// '}' after it when that text is not empty, else of the whole key; mod 16384.
// "{user1000}.following" and "{user1000}.followers" share a slot;
// "foo{}{bar}" hashes the whole key; "foo{{bar}}zap" hashes "{bar".
int KeySlot(std::string_view key);

// A redirection error reply: "MOVED 3999 127.0.0.1:6381" (the slot now lives
// there: remember it) or "ASK 3999 127.0.0.1:6381" (the slot is migrating:
// ask that node once, after ASKING, and remember nothing).
struct Redirection {
  enum class Kind { kMoved, kAsk };
  Kind kind = Kind::kMoved;
  int slot = 0;
  // The node as announced: host and port split at the last ':' (Redis writes
  // IPv6 literals without brackets). An empty host ("MOVED 1 :6380", a node
  // that does not know its own address) means the host of the node that
  // replied: the caller fills it in.
  HostPort node;
};

// Whether `error` (an error reply's text) starts like a redirection ("MOVED "
// or "ASK "); ParseRedirection then says whether it is a well-formed one.
bool LooksLikeRedirection(std::string_view error);

// Parses a MOVED or ASK reply. InvalidArgument quoting the text for anything
// else: another error, a slot that is not a number in 0..16383, a missing or
// out-of-range port (1..65535), extra fields.
absl::StatusOr<Redirection> ParseRedirection(std::string_view error);

// Slot -> node, as the redirections taught it, with the count of slots each
// node holds, so a node left with none is forgotten (its entry freed).
class SlotMap {
 public:
  SlotMap();

  // The node serving `slot`, or nullptr when unknown (send to the seed).
  // Valid until the next Assign or Forget.
  const HostPort* NodeFor(int slot) const;

  // `slot` (0..16383; others are ignored) is served by `node` from now on.
  void Assign(int slot, const HostPort& node);

  // Forgets every slot `node` serves (its connection failed); returns how
  // many it served.
  int Forget(const HostPort& node);

  // How many slots `node` serves; 0 for a node it does not know.
  int SlotsOf(const HostPort& node) const;

  // Nodes that serve at least one slot.
  size_t nodes() const { return by_name_.size(); }

 private:
  struct Node {
    HostPort address;
    int slots = 0;
  };
  void Release(int16_t index);

  std::vector<int16_t> slot_to_node_;  // -1: unknown
  std::vector<Node> nodes_;            // by index; slots == 0: a free entry
  std::vector<int16_t> free_;
  absl::flat_hash_map<std::string, int16_t> by_name_;  // ToString() -> index
};

}  // namespace bulwark::store

#endif  // BULWARK_SIDECAR_STORE_CLUSTER_SLOTS_H_
