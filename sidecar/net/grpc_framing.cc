#include "sidecar/net/grpc_framing.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"

namespace bulwark::net {

MessageScanner::Verdict MessageScanner::Feed(const uint8_t* data, size_t len) {
  while (len > 0) {
    if (remaining_ > 0) {
      const uint64_t skip = std::min<uint64_t>(remaining_, len);
      remaining_ -= skip;
      data += skip;
      len -= skip;
      continue;
    }
    const size_t take = std::min(len, sizeof(prefix_) - prefix_have_);
    std::memcpy(prefix_ + prefix_have_, data, take);
    prefix_have_ += take;
    data += take;
    len -= take;
    if (prefix_have_ < sizeof(prefix_)) break;
    prefix_have_ = 0;
    const uint64_t length = (uint64_t{prefix_[1]} << 24) |
                            (uint64_t{prefix_[2]} << 16) |
                            (uint64_t{prefix_[3]} << 8) | uint64_t{prefix_[4]};
    ++messages_started_;
    last_length_ = length;
    if (length > max_) return Verdict::kTooLarge;
    remaining_ = length;
  }
  return Verdict::kOk;
}

std::optional<absl::Duration> ParseGrpcTimeout(std::string_view value) {
  if (value.size() < 2 || value.size() > 9) return std::nullopt;
  int64_t amount = 0;
  for (char c : value.substr(0, value.size() - 1)) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c)))
      return std::nullopt;
    amount = amount * 10 + (c - '0');
  }
  switch (value.back()) {
    case 'H':
      return absl::Hours(amount);
    case 'M':
      return absl::Minutes(amount);
    case 'S':
      return absl::Seconds(amount);
    case 'm':
      return absl::Milliseconds(amount);
    case 'u':
      return absl::Microseconds(amount);
    case 'n':
      return absl::Nanoseconds(amount);
    default:
      return std::nullopt;
  }
}

std::string EncodeGrpcTimeout(absl::Duration timeout) {
  if (timeout <= absl::ZeroDuration()) return "1n";
  constexpr int64_t kMax = 99'999'999;
  struct Unit {
    absl::Duration size;
    char letter;
  };
  static constexpr Unit kUnits[] = {
      {absl::Nanoseconds(1), 'n'},  {absl::Microseconds(1), 'u'},
      {absl::Milliseconds(1), 'm'}, {absl::Seconds(1), 'S'},
      {absl::Minutes(1), 'M'},      {absl::Hours(1), 'H'},
  };
  for (const Unit& unit : kUnits) {
    // Rounded down (never more time than granted); IDivDuration saturates
    // instead of overflowing past 2^63 ns.
    absl::Duration remainder;
    const int64_t amount = absl::IDivDuration(timeout, unit.size, &remainder);
    if (amount == 0) return "1n";  // under a nanosecond
    if (amount <= kMax) return std::to_string(amount) + unit.letter;
  }
  return std::to_string(kMax) + "H";
}

std::string PercentEncode(std::string_view message) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(message.size());
  for (unsigned char c : message) {
    if (c >= 0x20 && c <= 0x7E && c != '%') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xF]);
    }
  }
  return out;
}

namespace {

// The bytes PercentEncode makes of `c`.
size_t EncodedWidth(unsigned char c) {
  return c >= 0x20 && c <= 0x7E && c != '%' ? 1 : 3;
}

bool IsUtf8Continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

}  // namespace

std::string TruncateGrpcMessage(std::string_view message,
                                size_t max_encoded_bytes) {
  size_t encoded = 0;
  for (unsigned char c : message) encoded += EncodedWidth(c);
  if (encoded <= max_encoded_bytes) return std::string(message);
  constexpr std::string_view kEllipsis = "...";
  const size_t budget = max_encoded_bytes > kEllipsis.size()
                            ? max_encoded_bytes - kEllipsis.size()
                            : 0;
  size_t cut = 0;
  encoded = 0;
  while (encoded + EncodedWidth(static_cast<unsigned char>(message[cut])) <=
         budget) {
    encoded += EncodedWidth(static_cast<unsigned char>(message[cut]));
    ++cut;  // stays < message.size(): the whole message is over the budget
  }
  // A UTF-8 character has at most three continuation bytes: back up over them
  // so the cut falls before the character's first byte.
  for (int i = 0; i < 3 && cut > 0 &&
                  IsUtf8Continuation(static_cast<unsigned char>(message[cut]));
       ++i) {
    --cut;
  }
  std::string out(message.substr(0, cut));
  out.append(kEllipsis);
  return out;
}

int GrpcCodeFromHttpStatus(int http_status) {
  switch (http_status) {
    case 400:
      return 13;  // INTERNAL
    case 401:
      return 16;  // UNAUTHENTICATED
    case 403:
      return 7;  // PERMISSION_DENIED
    case 404:
      return 12;  // UNIMPLEMENTED
    case 429:
    case 502:
    case 503:
    case 504:
      return 14;  // UNAVAILABLE
    default:
      return 2;  // UNKNOWN
  }
}

int GrpcCodeFromHttp2Error(uint32_t error_code) {
  switch (error_code) {
    case 0x0:     // NO_ERROR
    case 0x1:     // PROTOCOL_ERROR
    case 0x2:     // INTERNAL_ERROR
    case 0x3:     // FLOW_CONTROL_ERROR
    case 0x6:     // FRAME_SIZE_ERROR
    case 0x9:     // COMPRESSION_ERROR
    case 0xa:     // CONNECT_ERROR
      return 13;  // INTERNAL
    case 0x7:     // REFUSED_STREAM
      return 14;  // UNAVAILABLE
    case 0x8:     // CANCEL
      return 1;   // CANCELLED
    case 0xb:     // ENHANCE_YOUR_CALM
      return 8;   // RESOURCE_EXHAUSTED
    case 0xc:     // INADEQUATE_SECURITY
      return 7;   // PERMISSION_DENIED
    default:
      return 13;
  }
}

std::optional<int> ParseGrpcStatus(std::string_view value) {
  if (value.empty() || value.size() > 2) return std::nullopt;
  int code = 0;
  for (char c : value) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c)))
      return std::nullopt;
    code = code * 10 + (c - '0');
  }
  if (code > 16) return std::nullopt;
  return code;
}

}  // namespace bulwark::net
