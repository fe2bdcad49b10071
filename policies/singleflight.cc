#include "policies/singleflight.h"

#include <cstdint>
#include <string>

namespace bulwark {
namespace {

// LEB128: a prefix code, so a length can never be confused with the bytes after
// it.
size_t VarintSize(uint64_t n) {
  size_t size = 1;
  while (n >= 0x80) {
    n >>= 7;
    ++size;
  }
  return size;
}

void AppendVarint(uint64_t n, std::string& out) {
  while (n >= 0x80) {
    out.push_back(static_cast<char>((n & 0x7f) | 0x80));
    n >>= 7;
  }
  out.push_back(static_cast<char>(n));
}

size_t FieldSize(absl::string_view field) {
  return VarintSize(field.size()) + field.size();
}

void AppendField(absl::string_view field, std::string& out) {
  AppendVarint(field.size(), out);
  out.append(field.data(), field.size());
}

// Marks whether a header was sent, so "absent" and "sent empty" are different
// keys.
constexpr char kHeaderAbsent = 0;
constexpr char kHeaderPresent = 1;

}  // namespace

std::string EncodeSingleflightKey(
    absl::string_view method, absl::string_view request_message,
    absl::Span<const SingleflightKeyHeader> key_headers) {
  size_t size = FieldSize(method) + FieldSize(request_message) +
                VarintSize(key_headers.size());
  for (const SingleflightKeyHeader& header : key_headers) {
    size += FieldSize(header.name) + 1;
    if (header.value.has_value()) size += FieldSize(*header.value);
  }

  std::string key;
  key.reserve(size);
  AppendField(method, key);
  AppendField(request_message, key);
  AppendVarint(key_headers.size(), key);
  for (const SingleflightKeyHeader& header : key_headers) {
    AppendField(header.name, key);
    if (header.value.has_value()) {
      key.push_back(kHeaderPresent);
      AppendField(*header.value, key);
    } else {
      key.push_back(kHeaderAbsent);
    }
  }
  return key;
}

}  // namespace bulwark
