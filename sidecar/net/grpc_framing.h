// gRPC-over-HTTP/2 details the transport needs without parsing protobuf: the
// 5-byte message prefix (scanned as DATA flows, to enforce max_message_bytes
// without buffering messages), grpc-timeout parsing and encoding, grpc-message
// percent-encoding, and the HTTP status to gRPC code mapping of the gRPC spec.
// Pure functions and a small value type; thread-compatible.
#ifndef BULWARK_SIDECAR_NET_GRPC_FRAMING_H_
#define BULWARK_SIDECAR_NET_GRPC_FRAMING_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/time/time.h"

namespace bulwark::net {

// Follows the length-prefixed message framing of one direction of a gRPC
// stream. Cost: O(bytes fed) with no copies; a message's payload is skipped,
// not read.
class MessageScanner {
 public:
  enum class Verdict { kOk, kTooLarge };

  explicit MessageScanner(uint64_t max_message_bytes)
      : max_(max_message_bytes) {}

  // Feeds the next bytes of the stream. kTooLarge as soon as a prefix announces
  // a message larger than the limit (the prefix is all it takes: nothing more
  // needs to arrive).
  Verdict Feed(const uint8_t* data, size_t len);

  uint64_t messages_started() const { return messages_started_; }
  // True when the bytes fed so far end exactly at a message boundary.
  bool AtBoundary() const { return prefix_have_ == 0 && remaining_ == 0; }
  uint64_t last_message_length() const { return last_length_; }

 private:
  uint64_t max_;
  uint64_t remaining_ =
      0;  // payload bytes of the current message still to come
  uint8_t prefix_[5] = {};
  size_t prefix_have_ = 0;
  uint64_t messages_started_ = 0;
  uint64_t last_length_ = 0;
};

// Parses a grpc-timeout value: 1 to 8 ASCII digits and a unit (H M S m u n).
std::optional<absl::Duration> ParseGrpcTimeout(std::string_view value);

// Encodes a positive duration as grpc-timeout in the finest unit that fits in 8
// digits, rounding down (so the upstream never sees more time than the sidecar
// grants). Zero or negative becomes "1n".
std::string EncodeGrpcTimeout(absl::Duration timeout);

// grpc-message encoding: bytes outside 0x20..0x7E and '%' become %XX.
std::string PercentEncode(std::string_view message);

// How long the sidecar's own grpc-message may be on the wire (SPEC section
// 11): a local answer quoting what a peer sent (a 60 KB :path) must still fit
// in a header block every client takes.
inline constexpr size_t kMaxLocalMessageBytes = 2048;

// `message` cut so that its percent-encoding takes at most `max_encoded_bytes`:
// unchanged if it fits, else cut before a UTF-8 character (never inside one)
// with "..." appended. The result is not yet encoded.
std::string TruncateGrpcMessage(std::string_view message,
                                size_t max_encoded_bytes);

// The gRPC code a client derives from a non-200 HTTP status (gRPC's
// http-grpc-status mapping), e.g. 503 -> UNAVAILABLE, 404 -> UNIMPLEMENTED.
int GrpcCodeFromHttpStatus(int http_status);

// The gRPC code a client derives from an HTTP/2 RST_STREAM error code.
int GrpcCodeFromHttp2Error(uint32_t error_code);

// Parses a grpc-status value ("0".."16"); nullopt if malformed.
std::optional<int> ParseGrpcStatus(std::string_view value);

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_GRPC_FRAMING_H_
