#include "sidecar/store/cluster_slots.h"

#include <array>
#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>

#include "absl/status/status.h"

namespace bulwark::store {
namespace {

constexpr std::array<uint16_t, 256> MakeCrcTable() {
  std::array<uint16_t, 256> table{};
  for (int i = 0; i < 256; ++i) {
    uint16_t crc = static_cast<uint16_t>(i << 8);
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x8000) != 0 ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                                : static_cast<uint16_t>(crc << 1);
    }
    table[i] = crc;
  }
  return table;
}

constexpr std::array<uint16_t, 256> kCrcTable = MakeCrcTable();

// A non-negative decimal integer of at most 9 digits, the whole of `text`.
bool ParseSmallNumber(std::string_view text, int& out) {
  if (text.empty() || text.size() > 9) return false;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
  }
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

absl::Status Malformed(std::string_view error, std::string_view why) {
  std::string message = "malformed redirection (";
  message.append(why);
  message.append("): \"");
  message.append(error.substr(0, 200));
  message.append("\"");
  return absl::InvalidArgumentError(message);
}

}  // namespace

uint16_t Crc16Xmodem(std::string_view data) {
  uint16_t crc = 0;
  for (char c : data) {
    const auto byte = static_cast<uint8_t>(c);
    crc = static_cast<uint16_t>((crc << 8) ^
                                kCrcTable[((crc >> 8) ^ byte) & 0xff]);
  }
  return crc;
}

int KeySlot(std::string_view key) {
  // Redis's keyHashSlot: the first '{', then the first '}' after it.
  if (size_t open = key.find('{'); open != std::string_view::npos) {
    if (size_t close = key.find('}', open + 1);
        close != std::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return Crc16Xmodem(key) & (kClusterSlots - 1);
}

bool LooksLikeRedirection(std::string_view error) {
  return error.starts_with("MOVED ") || error.starts_with("ASK ");
}

absl::StatusOr<Redirection> ParseRedirection(std::string_view error) {
  Redirection out;
  std::string_view rest;
  if (error.starts_with("MOVED ")) {
    out.kind = Redirection::Kind::kMoved;
    rest = error.substr(6);
  } else if (error.starts_with("ASK ")) {
    out.kind = Redirection::Kind::kAsk;
    rest = error.substr(4);
  } else {
    return Malformed(error, "not MOVED or ASK");
  }
  const size_t space = rest.find(' ');
  if (space == std::string_view::npos) return Malformed(error, "no address");
  if (!ParseSmallNumber(rest.substr(0, space), out.slot) ||
      out.slot >= kClusterSlots) {
    return Malformed(error, "slot not in 0..16383");
  }
  const std::string_view address = rest.substr(space + 1);
  if (address.find_first_of(" \t\r\n") != std::string_view::npos) {
    return Malformed(error, "extra fields");
  }
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return Malformed(error, "no port");
  int port = 0;
  if (!ParseSmallNumber(address.substr(colon + 1), port) || port < 1 ||
      port > 65535) {
    return Malformed(error, "port not in 1..65535");
  }
  std::string_view host = address.substr(0, colon);
  // Tolerate the bracketed form too.
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  out.node = {.host = std::string(host), .port = static_cast<uint16_t>(port)};
  return out;
}

SlotMap::SlotMap() : slot_to_node_(kClusterSlots, -1) {}

const HostPort* SlotMap::NodeFor(int slot) const {
  if (slot < 0 || slot >= kClusterSlots) return nullptr;
  const int16_t index = slot_to_node_[slot];
  return index < 0 ? nullptr : &nodes_[index].address;
}

void SlotMap::Assign(int slot, const HostPort& node) {
  if (slot < 0 || slot >= kClusterSlots) return;
  std::string name = node.ToString();
  int16_t index;
  if (auto it = by_name_.find(name); it != by_name_.end()) {
    index = it->second;
  } else {
    if (!free_.empty()) {
      index = free_.back();
      free_.pop_back();
      nodes_[index] = {.address = node, .slots = 0};
    } else {
      // At most 16384 nodes can hold a slot each: an int16_t index suffices.
      index = static_cast<int16_t>(nodes_.size());
      nodes_.push_back({.address = node, .slots = 0});
    }
    by_name_.emplace(std::move(name), index);
  }
  const int16_t previous = slot_to_node_[slot];
  if (previous == index) return;
  slot_to_node_[slot] = index;
  ++nodes_[index].slots;
  if (previous >= 0 && --nodes_[previous].slots == 0) Release(previous);
}

int SlotMap::Forget(const HostPort& node) {
  auto it = by_name_.find(node.ToString());
  if (it == by_name_.end()) return 0;
  const int16_t index = it->second;
  const int slots = nodes_[index].slots;
  for (int16_t& entry : slot_to_node_) {
    if (entry == index) entry = -1;
  }
  nodes_[index].slots = 0;
  Release(index);
  return slots;
}

int SlotMap::SlotsOf(const HostPort& node) const {
  auto it = by_name_.find(node.ToString());
  return it == by_name_.end() ? 0 : nodes_[it->second].slots;
}

void SlotMap::Release(int16_t index) {
  by_name_.erase(nodes_[index].address.ToString());
  nodes_[index].address = {};
  free_.push_back(index);
}

}  // namespace bulwark::store
