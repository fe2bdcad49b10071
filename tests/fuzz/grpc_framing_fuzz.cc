// Checks the gRPC framing helpers of sidecar/net/grpc_framing.h against
// reference models written here:
//  - MessageScanner fed one byte stream in input-chosen chunks (zero-length
//  ones included)
//    agrees after every Feed with a whole-stream walk of the 5-byte prefixes:
//    messages started (never decreasing), last length, AtBoundary; it says
//    kTooLarge exactly in the chunk that completes the first prefix announcing
//    more than max_message_bytes, and never otherwise.
//  - ParseGrpcTimeout accepts exactly 1-8 digits plus one of H M S m u n, with
//  the right
//    value; EncodeGrpcTimeout's output always parses back, has at most 8
//    digits, never grants more time than it was given (for >= 1ns) and loses
//    less than 1e-5 of it.
//  - PercentEncode's output is printable ASCII (0x20..0x7E), escapes are %XX
//  with
//    upper-case hex, and decoding gives the input back.
//  - ParseGrpcStatus and the HTTP / HTTP/2 code mappings stay within gRPC codes
//  0..16.
//
// Input: [max selector][8 chunk-size bytes][timeout text length][...rest is the
// stream].
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "sidecar/net/grpc_framing.h"
#include "tests/fuzz/byte_reader.h"

namespace {

using bulwark::fuzz::ByteReader;
using bulwark::net::MessageScanner;

uint64_t ChooseMax(ByteReader& in) {
  static constexpr uint64_t kInteresting[] = {
      0,           1,           4,          5,
      16,          255,         1024,       4 * 1024 * 1024,
      0xFFFFFFFEu, 0xFFFFFFFFu, 1ull << 32, UINT64_MAX,
  };
  const uint8_t selector = in.Byte();
  constexpr size_t kCount = sizeof(kInteresting) / sizeof(kInteresting[0]);
  if (selector < kCount) return kInteresting[selector];
  return selector;  // small limits make kTooLarge easy to reach
}

// What a whole-stream walk of the framing says.
struct Reference {
  // For the k-th message: the stream offset just past its prefix, and its
  // length.
  std::vector<size_t> prefix_end;
  std::vector<uint64_t> length;
  // Offsets where a message starts (0 included): the boundaries.
  std::vector<uint64_t> starts;
  // Index of the first message announcing more than the limit, if any.
  std::optional<size_t> too_large;
};

Reference Walk(std::string_view stream, uint64_t max) {
  Reference ref;
  uint64_t pos = 0;
  ref.starts.push_back(0);
  while (pos + 5 <= stream.size()) {
    const auto* p = reinterpret_cast<const uint8_t*>(stream.data() + pos);
    const uint64_t length = (uint64_t{p[1]} << 24) | (uint64_t{p[2]} << 16) |
                            (uint64_t{p[3]} << 8) | p[4];
    ref.prefix_end.push_back(pos + 5);
    ref.length.push_back(length);
    if (length > max) {
      ref.too_large = ref.length.size() - 1;
      break;
    }
    pos += 5 + length;
    ref.starts.push_back(pos);
  }
  return ref;
}

void CheckScanner(std::string_view stream, uint64_t max,
                  const uint8_t (&chunk_sizes)[8]) {
  const Reference ref = Walk(stream, max);
  MessageScanner scanner(max);
  FUZZ_CHECK(scanner.messages_started() == 0 && scanner.AtBoundary());
  size_t fed = 0;
  uint64_t started_before = 0;
  for (size_t round = 0; fed < stream.size(); ++round) {
    // Zero-length feeds are allowed; a whole cycle of zeros is not (no
    // progress).
    size_t n = chunk_sizes[round % 8];
    if (round % 8 == 7 && n == 0) n = 1;
    if (n > stream.size() - fed) n = stream.size() - fed;
    const auto* chunk = reinterpret_cast<const uint8_t*>(stream.data() + fed);
    const MessageScanner::Verdict verdict = scanner.Feed(chunk, n);
    const size_t before = fed;
    fed += n;

    FUZZ_CHECK(scanner.messages_started() >= started_before);
    started_before = scanner.messages_started();
    if (ref.too_large.has_value() && ref.prefix_end[*ref.too_large] > before &&
        ref.prefix_end[*ref.too_large] <= fed) {
      FUZZ_CHECK(verdict == MessageScanner::Verdict::kTooLarge);
      FUZZ_CHECK(scanner.messages_started() == *ref.too_large + 1);
      FUZZ_CHECK(scanner.last_message_length() == ref.length[*ref.too_large]);
      FUZZ_CHECK(scanner.last_message_length() > max);
      return;  // the transport stops feeding a stream it refused
    }
    FUZZ_CHECK(verdict == MessageScanner::Verdict::kOk);
    size_t expected_started = 0;
    while (expected_started < ref.prefix_end.size() &&
           ref.prefix_end[expected_started] <= fed) {
      ++expected_started;
    }
    FUZZ_CHECK(scanner.messages_started() == expected_started);
    FUZZ_CHECK(scanner.last_message_length() ==
               (expected_started == 0 ? 0 : ref.length[expected_started - 1]));
    bool boundary = false;
    for (uint64_t start : ref.starts) boundary = boundary || start == fed;
    FUZZ_CHECK(scanner.AtBoundary() == boundary);
  }
}

// The grpc-timeout grammar of the gRPC spec, as a reference.
std::optional<absl::Duration> ReferenceTimeout(std::string_view text) {
  if (text.size() < 2 || text.size() > 9) return std::nullopt;
  int64_t amount = 0;
  for (char c : text.substr(0, text.size() - 1)) {
    if (c < '0' || c > '9') return std::nullopt;
    amount = amount * 10 + (c - '0');
  }
  switch (text.back()) {
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
  }
  return std::nullopt;
}

void CheckEncodedTimeout(absl::Duration granted) {
  const std::string encoded = bulwark::net::EncodeGrpcTimeout(granted);
  FUZZ_CHECK(encoded.size() >= 2 && encoded.size() <= 9);
  const std::optional<absl::Duration> parsed =
      bulwark::net::ParseGrpcTimeout(encoded);
  FUZZ_CHECK(parsed.has_value());
  FUZZ_CHECK(*parsed >= absl::Nanoseconds(1));
  if (granted < absl::Nanoseconds(1)) {
    FUZZ_CHECK(encoded == "1n");  // documented: zero, negative, sub-ns
    return;
  }
  FUZZ_CHECK(*parsed <= granted);
  // Up to the largest encodable value the finest unit that fits is used, which
  // loses less than one unit, and a unit is < 1e-5 of the value it encodes.
  if (granted <= absl::Hours(99'999'999)) {
    FUZZ_CHECK((granted - *parsed) * 100'000 <= granted);
  }
}

void CheckTimeouts(std::string_view text, uint64_t raw) {
  const std::optional<absl::Duration> parsed =
      bulwark::net::ParseGrpcTimeout(text);
  const std::optional<absl::Duration> expected = ReferenceTimeout(text);
  FUZZ_CHECK(parsed.has_value() == expected.has_value());
  if (parsed.has_value()) {
    FUZZ_CHECK(*parsed == *expected);
    CheckEncodedTimeout(*parsed);
  }
  // Durations the sidecar computes (deadline minus now): any int64 nanoseconds,
  // whole seconds far beyond any deadline, and infinity.
  CheckEncodedTimeout(absl::Nanoseconds(static_cast<int64_t>(raw)));
  CheckEncodedTimeout(absl::Seconds(static_cast<int64_t>(raw)));
  CheckEncodedTimeout(absl::Nanoseconds(static_cast<int64_t>(raw >> 20)));
  CheckEncodedTimeout(absl::InfiniteDuration());
  CheckEncodedTimeout(-absl::InfiniteDuration());
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;  // lower case is not what PercentEncode writes
}

void CheckPercentEncode(std::string_view message) {
  const std::string encoded = bulwark::net::PercentEncode(message);
  std::string decoded;
  for (size_t i = 0; i < encoded.size(); ++i) {
    const auto c = static_cast<unsigned char>(encoded[i]);
    FUZZ_CHECK(c >= 0x20 && c <= 0x7E);
    if (c != '%') {
      decoded.push_back(static_cast<char>(c));
      continue;
    }
    FUZZ_CHECK(i + 2 < encoded.size());
    const int high = HexValue(encoded[i + 1]);
    const int low = HexValue(encoded[i + 2]);
    FUZZ_CHECK(high >= 0 && low >= 0);
    const auto byte = static_cast<unsigned char>(high * 16 + low);
    // Only what had to be escaped was.
    FUZZ_CHECK(byte < 0x20 || byte > 0x7E || byte == '%');
    decoded.push_back(static_cast<char>(byte));
    i += 2;
  }
  FUZZ_CHECK(decoded == message);
}

void CheckCodes(std::string_view text, uint64_t raw) {
  if (std::optional<int> code = bulwark::net::ParseGrpcStatus(text)) {
    FUZZ_CHECK(*code >= 0 && *code <= 16);
    FUZZ_CHECK(!text.empty() && text.size() <= 2);
    FUZZ_CHECK(std::stoi(std::string(text)) == *code);
  }
  const int from_http =
      bulwark::net::GrpcCodeFromHttpStatus(static_cast<int>(raw));
  FUZZ_CHECK(from_http >= 1 &&
             from_http <= 16);  // never OK for an error status
  const int from_h2 =
      bulwark::net::GrpcCodeFromHttp2Error(static_cast<uint32_t>(raw >> 32));
  FUZZ_CHECK(from_h2 >= 1 && from_h2 <= 16);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 1 << 20) return -1;
  ByteReader in(data, size);
  const uint64_t max = ChooseMax(in);
  uint8_t chunk_sizes[8];
  for (uint8_t& chunk : chunk_sizes) chunk = in.Byte();
  const size_t text_length = in.Byte() % 12;
  const std::string_view stream = in.Rest();

  CheckScanner(stream, max, chunk_sizes);

  const std::string_view text = stream.substr(0, text_length);
  uint64_t raw = 0;
  for (size_t i = 0; i < 8 && i < stream.size(); ++i) {
    raw = (raw << 8) | static_cast<uint8_t>(stream[i]);
  }
  CheckTimeouts(text, raw);
  CheckPercentEncode(stream);
  CheckCodes(text.substr(0, 3), raw);
  return 0;
}
