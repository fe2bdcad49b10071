#include "sidecar/net/grpc_framing.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace bulwark::net {
namespace {

// gRPC status codes, spelled out so the expectations read like the spec.
constexpr int kCancelled = 1;
constexpr int kUnknown = 2;
constexpr int kResourceExhausted = 8;
constexpr int kPermissionDenied = 7;
constexpr int kUnimplemented = 12;
constexpr int kInternal = 13;
constexpr int kUnavailable = 14;
constexpr int kUnauthenticated = 16;

// One length-prefixed gRPC message: flag byte, 4-byte big-endian length, then
// `length` payload bytes (the payload is filled with 'x').
std::vector<uint8_t> Prefix(uint32_t length, uint8_t flag = 0) {
  return {flag, static_cast<uint8_t>(length >> 24),
          static_cast<uint8_t>(length >> 16), static_cast<uint8_t>(length >> 8),
          static_cast<uint8_t>(length)};
}

std::vector<uint8_t> Message(uint32_t length, uint8_t flag = 0) {
  std::vector<uint8_t> bytes = Prefix(length, flag);
  bytes.insert(bytes.end(), length, 'x');
  return bytes;
}

std::vector<uint8_t> Concat(std::initializer_list<std::vector<uint8_t>> parts) {
  std::vector<uint8_t> out;
  for (const auto& part : parts)
    out.insert(out.end(), part.begin(), part.end());
  return out;
}

MessageScanner::Verdict FeedAll(MessageScanner& scanner,
                                const std::vector<uint8_t>& bytes) {
  return scanner.Feed(bytes.data(), bytes.size());
}

// ---------------------------------------------------------------------------
// MessageScanner

TEST(MessageScannerTest, StartsAtABoundaryWithNoMessages) {
  MessageScanner scanner(100);
  EXPECT_TRUE(scanner.AtBoundary());
  EXPECT_EQ(scanner.messages_started(), 0u);
  EXPECT_EQ(scanner.Feed(nullptr, 0), MessageScanner::Verdict::kOk);
  EXPECT_TRUE(scanner.AtBoundary());
}

TEST(MessageScannerTest, FollowsMessagesFedOneByteAtATime) {
  MessageScanner scanner(100);
  const std::vector<uint8_t> stream = Concat({Message(3), Message(7)});
  // Bytes 0..4: first prefix; 5..7: payload; 8..12: second prefix; 13..19.
  for (size_t i = 0; i < stream.size(); ++i) {
    ASSERT_EQ(scanner.Feed(&stream[i], 1), MessageScanner::Verdict::kOk)
        << "byte " << i;
    const size_t fed = i + 1;
    const uint64_t expected_started = fed < 5 ? 0 : fed < 13 ? 1 : 2;
    EXPECT_EQ(scanner.messages_started(), expected_started) << "byte " << i;
    EXPECT_EQ(scanner.AtBoundary(), fed == 8 || fed == stream.size())
        << "byte " << i;
  }
  EXPECT_EQ(scanner.last_message_length(), 7u);
}

TEST(MessageScannerTest, CountsSeveralMessagesInOneFeed) {
  MessageScanner scanner(100);
  EXPECT_EQ(FeedAll(scanner, Concat({Message(3), Message(50), Message(10)})),
            MessageScanner::Verdict::kOk);
  EXPECT_EQ(scanner.messages_started(), 3u);
  EXPECT_EQ(scanner.last_message_length(), 10u);
  EXPECT_TRUE(scanner.AtBoundary());
}

TEST(MessageScannerTest, FollowsAPayloadSplitAcrossFeeds) {
  MessageScanner scanner(100);
  const std::vector<uint8_t> stream = Concat({Message(10), Message(2)});
  // The prefix plus part of the payload, then the rest and part of the next
  // prefix, then the end.
  EXPECT_EQ(scanner.Feed(stream.data(), 8), MessageScanner::Verdict::kOk);
  EXPECT_FALSE(scanner.AtBoundary());
  EXPECT_EQ(scanner.Feed(stream.data() + 8, 9), MessageScanner::Verdict::kOk);
  EXPECT_FALSE(scanner.AtBoundary());
  EXPECT_EQ(scanner.messages_started(), 1u);
  EXPECT_EQ(scanner.Feed(stream.data() + 17, stream.size() - 17),
            MessageScanner::Verdict::kOk);
  EXPECT_TRUE(scanner.AtBoundary());
  EXPECT_EQ(scanner.messages_started(), 2u);
  EXPECT_EQ(scanner.last_message_length(), 2u);
}

TEST(MessageScannerTest, AcceptsAMessageOfExactlyTheLimit) {
  MessageScanner scanner(16);
  EXPECT_EQ(FeedAll(scanner, Message(16)), MessageScanner::Verdict::kOk);
  EXPECT_TRUE(scanner.AtBoundary());
  EXPECT_EQ(scanner.last_message_length(), 16u);
}

TEST(MessageScannerTest, RejectsOneByteOverTheLimitOnThePrefixAlone) {
  MessageScanner scanner(16);
  const std::vector<uint8_t> prefix = Prefix(17);
  // Four bytes of the prefix say nothing yet; the fifth completes it.
  for (size_t i = 0; i < 4; ++i) {
    ASSERT_EQ(scanner.Feed(&prefix[i], 1), MessageScanner::Verdict::kOk);
  }
  EXPECT_EQ(scanner.Feed(&prefix[4], 1), MessageScanner::Verdict::kTooLarge);
  EXPECT_EQ(scanner.last_message_length(), 17u);
  EXPECT_EQ(scanner.messages_started(), 1u);
}

TEST(MessageScannerTest, RejectsAnOversizedMessageAfterSmallerOnes) {
  MessageScanner scanner(16);
  EXPECT_EQ(FeedAll(scanner, Concat({Message(16), Message(0), Prefix(17)})),
            MessageScanner::Verdict::kTooLarge);
  EXPECT_EQ(scanner.messages_started(), 3u);
}

TEST(MessageScannerTest, RejectsTheLargestLengthAPrefixCanAnnounce) {
  MessageScanner scanner(4 << 20);
  EXPECT_EQ(FeedAll(scanner, Prefix(0xFFFFFFFFu)),
            MessageScanner::Verdict::kTooLarge);
  EXPECT_EQ(scanner.last_message_length(), 0xFFFFFFFFu);
}

TEST(MessageScannerTest, ReadsTheLengthWhateverTheCompressedFlag) {
  MessageScanner scanner(16);
  EXPECT_EQ(FeedAll(scanner, Message(16, /*flag=*/1)),
            MessageScanner::Verdict::kOk);
  EXPECT_TRUE(scanner.AtBoundary());
  EXPECT_EQ(FeedAll(scanner, Prefix(17, /*flag=*/1)),
            MessageScanner::Verdict::kTooLarge);
}

TEST(MessageScannerTest, CountsZeroLengthMessagesAndEndsAtABoundary) {
  MessageScanner scanner(16);
  EXPECT_EQ(FeedAll(scanner, Concat({Message(0), Message(0), Message(0)})),
            MessageScanner::Verdict::kOk);
  EXPECT_EQ(scanner.messages_started(), 3u);
  EXPECT_EQ(scanner.last_message_length(), 0u);
  EXPECT_TRUE(scanner.AtBoundary());
}

TEST(MessageScannerTest, AcceptsZeroLengthMessagesUnderAZeroLimit) {
  MessageScanner scanner(0);
  EXPECT_EQ(FeedAll(scanner, Message(0)), MessageScanner::Verdict::kOk);
  EXPECT_EQ(FeedAll(scanner, Prefix(1)), MessageScanner::Verdict::kTooLarge);
}

TEST(MessageScannerTest, IsNotAtABoundaryInsideAPrefixOrPayload) {
  MessageScanner scanner(100);
  const std::vector<uint8_t> message = Message(4);
  EXPECT_EQ(scanner.Feed(message.data(), 2), MessageScanner::Verdict::kOk);
  EXPECT_FALSE(scanner.AtBoundary());  // inside the prefix
  EXPECT_EQ(scanner.Feed(message.data() + 2, 4), MessageScanner::Verdict::kOk);
  EXPECT_FALSE(scanner.AtBoundary());  // one payload byte in, three to come
  EXPECT_EQ(scanner.Feed(message.data() + 6, 3), MessageScanner::Verdict::kOk);
  EXPECT_TRUE(scanner.AtBoundary());
}

// ---------------------------------------------------------------------------
// ParseGrpcTimeout

TEST(ParseGrpcTimeoutTest, ParsesEveryUnit) {
  EXPECT_EQ(ParseGrpcTimeout("2H"), absl::Hours(2));
  EXPECT_EQ(ParseGrpcTimeout("3M"), absl::Minutes(3));
  EXPECT_EQ(ParseGrpcTimeout("4S"), absl::Seconds(4));
  EXPECT_EQ(ParseGrpcTimeout("5m"), absl::Milliseconds(5));
  EXPECT_EQ(ParseGrpcTimeout("6u"), absl::Microseconds(6));
  EXPECT_EQ(ParseGrpcTimeout("7n"), absl::Nanoseconds(7));
}

TEST(ParseGrpcTimeoutTest, AcceptsEightDigits) {
  EXPECT_EQ(ParseGrpcTimeout("99999999n"), absl::Nanoseconds(99999999));
  EXPECT_EQ(ParseGrpcTimeout("12345678m"), absl::Milliseconds(12345678));
  EXPECT_EQ(ParseGrpcTimeout("99999999H"), absl::Hours(99999999));
  EXPECT_EQ(ParseGrpcTimeout("00000001S"), absl::Seconds(1));
}

TEST(ParseGrpcTimeoutTest, RejectsNineDigits) {
  EXPECT_EQ(ParseGrpcTimeout("123456789n"), std::nullopt);
  EXPECT_EQ(ParseGrpcTimeout("100000000S"), std::nullopt);
  EXPECT_EQ(ParseGrpcTimeout("000000001S"), std::nullopt);
}

TEST(ParseGrpcTimeoutTest, RejectsEmptyAndAMissingAmountOrUnit) {
  EXPECT_EQ(ParseGrpcTimeout(""), std::nullopt);
  EXPECT_EQ(ParseGrpcTimeout("S"), std::nullopt);    // no digits
  EXPECT_EQ(ParseGrpcTimeout("100"), std::nullopt);  // no unit
  EXPECT_EQ(ParseGrpcTimeout("1"), std::nullopt);
}

TEST(ParseGrpcTimeoutTest, RejectsUnknownUnits) {
  for (std::string_view value : {"1s", "1h", "1U", "1N", "1x", "1 ", "10ms"}) {
    EXPECT_EQ(ParseGrpcTimeout(value), std::nullopt) << value;
  }
}

TEST(ParseGrpcTimeoutTest, RejectsNonDigitAmounts) {
  for (std::string_view value :
       {"-1S", "+1S", " 1S", "1 S", "1.5S", "1e3m", "0x10S", "a1S", "1aS"}) {
    EXPECT_EQ(ParseGrpcTimeout(value), std::nullopt) << value;
  }
}

// ---------------------------------------------------------------------------
// EncodeGrpcTimeout

// The digits of an encoded timeout (everything but the unit letter).
size_t Digits(const std::string& encoded) {
  return encoded.empty() ? 0 : encoded.size() - 1;
}

TEST(EncodeGrpcTimeoutTest, UsesTheFinestUnitThatFitsInEightDigits) {
  EXPECT_EQ(EncodeGrpcTimeout(absl::Nanoseconds(1)), "1n");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Nanoseconds(99999999)), "99999999n");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Nanoseconds(100000000)), "100000u");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Milliseconds(250)), "250000u");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Seconds(2)), "2000000u");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Seconds(100)), "100000m");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Hours(1)), "3600000m");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Hours(100)), "360000S");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Seconds(99999999)), "99999999S");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Minutes(99999999)), "99999999M");
}

TEST(EncodeGrpcTimeoutTest, RoundsDownSoTheUpstreamNeverGetsMoreTime) {
  // 199999999ns does not fit in 8 digits of n; in u it is 199999.999u.
  EXPECT_EQ(EncodeGrpcTimeout(absl::Nanoseconds(199999999)), "199999u");
  // 100000059 s (nine digits of S) is 1666667.65 minutes.
  EXPECT_EQ(EncodeGrpcTimeout(absl::Seconds(100000059)), "1666667M");
  // 1500.0000001 ms: 1500000u, not 1500001u.
  EXPECT_EQ(EncodeGrpcTimeout(absl::Milliseconds(1500) + absl::Nanoseconds(1)),
            "1500000u");
}

TEST(EncodeGrpcTimeoutTest, RoundTripNeverGrantsMoreTimeThanGiven) {
  std::vector<absl::Duration> durations = {
      absl::Nanoseconds(1),
      absl::Nanoseconds(999),
      absl::Nanoseconds(123456789),
      absl::Nanoseconds(100000001),
      absl::Milliseconds(1500) + absl::Nanoseconds(1),
      absl::Seconds(99999999) + absl::Nanoseconds(1),
      absl::Minutes(99999999) + absl::Seconds(59),
      absl::Hours(12345678) + absl::Minutes(59),
  };
  // A deterministic spread over the whole range, with ragged low digits.
  for (int64_t ns = 7; ns < int64_t{1} << 61; ns = ns * 3 + 1) {
    durations.push_back(absl::Nanoseconds(ns));
  }
  for (absl::Duration d : durations) {
    const std::string encoded = EncodeGrpcTimeout(d);
    SCOPED_TRACE(absl::FormatDuration(d) + " -> " + encoded);
    EXPECT_LE(Digits(encoded), 8u);
    const std::optional<absl::Duration> parsed = ParseGrpcTimeout(encoded);
    ASSERT_TRUE(parsed.has_value());
    EXPECT_LE(*parsed, d);
    EXPECT_GT(*parsed, absl::ZeroDuration());
    // The finest unit that fits loses less than one part in 10^5 (a coarser
    // unit is only needed past 10^8 of the finer one, at most 1000x finer).
    EXPECT_LT(d - *parsed, d / 100000 + absl::Nanoseconds(1));
  }
}

TEST(EncodeGrpcTimeoutTest, ZeroAndNegativeBecomeOneNanosecond) {
  EXPECT_EQ(EncodeGrpcTimeout(absl::ZeroDuration()), "1n");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Nanoseconds(-1)), "1n");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Seconds(-30)), "1n");
  EXPECT_EQ(EncodeGrpcTimeout(-absl::InfiniteDuration()), "1n");
}

TEST(EncodeGrpcTimeoutTest, EncodesHugeDurationsInHours) {
  // Past 2^63 ns (292 years): no nanosecond count fits in an int64.
  EXPECT_EQ(EncodeGrpcTimeout(absl::Hours(5000000)), "5000000H");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Hours(99999999)), "99999999H");
  // Beyond what 8 digits of hours can say: the largest value there is.
  EXPECT_EQ(EncodeGrpcTimeout(absl::Hours(100000000)), "99999999H");
  EXPECT_EQ(EncodeGrpcTimeout(absl::Hours(int64_t{1} << 40)), "99999999H");
  EXPECT_EQ(EncodeGrpcTimeout(absl::InfiniteDuration()), "99999999H");
}

// ---------------------------------------------------------------------------
// PercentEncode

TEST(PercentEncodeTest, LeavesPrintableAsciiUnchanged) {
  const std::string printable =
      " !\"#$&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
      "abcdefghijklmnopqrstuvwxyz{|}~";
  EXPECT_EQ(PercentEncode(printable), printable);
  EXPECT_EQ(PercentEncode("deadline exceeded"), "deadline exceeded");
  EXPECT_EQ(PercentEncode(""), "");
}

TEST(PercentEncodeTest, EncodesThePercentSign) {
  EXPECT_EQ(PercentEncode("%"), "%25");
  EXPECT_EQ(PercentEncode("100% done"), "100%25 done");
  EXPECT_EQ(PercentEncode("%25"), "%2525");
}

TEST(PercentEncodeTest, EncodesNonAsciiBytesOneByOne) {
  EXPECT_EQ(PercentEncode("caf\xC3\xA9"), "caf%C3%A9");
  EXPECT_EQ(PercentEncode("\xFF\x80"), "%FF%80");
}

TEST(PercentEncodeTest, EncodesControlCharacters) {
  EXPECT_EQ(PercentEncode("a\nb\tc\rd"), "a%0Ab%09c%0Dd");
  EXPECT_EQ(PercentEncode(std::string_view("\0\x1F\x7F", 3)), "%00%1F%7F");
}

// ---------------------------------------------------------------------------
// HTTP status and HTTP/2 error code mapping (gRPC's
// http-grpc-status-mapping.md and PROTOCOL-HTTP2.md).

TEST(TruncateGrpcMessageTest, LeavesAMessageThatFitsUnchanged) {
  EXPECT_EQ(TruncateGrpcMessage("", 16), "");
  EXPECT_EQ(TruncateGrpcMessage("exactly 16 bytes", 16), "exactly 16 bytes");
}

TEST(TruncateGrpcMessageTest, CutsALongMessageAndMarksTheCut) {
  const std::string message(10000, 'a');
  const std::string cut = TruncateGrpcMessage(message, kMaxLocalMessageBytes);
  EXPECT_EQ(cut.size(), kMaxLocalMessageBytes);
  EXPECT_EQ(cut, std::string(kMaxLocalMessageBytes - 3, 'a') + "...");
}

TEST(TruncateGrpcMessageTest, BoundsTheEncodedLengthNotTheRawOne) {
  // '%' takes three bytes on the wire: 2048 of them would be 6 KiB.
  const std::string message(5000, '%');
  const std::string cut = TruncateGrpcMessage(message, kMaxLocalMessageBytes);
  EXPECT_LE(PercentEncode(cut).size(), kMaxLocalMessageBytes);
  EXPECT_GE(PercentEncode(cut).size(), kMaxLocalMessageBytes - 5);
  EXPECT_EQ(cut.substr(cut.size() - 3), "...");
}

TEST(TruncateGrpcMessageTest, NeverCutsInsideAUtf8Character) {
  // "é" is two bytes (C3 A9, six on the wire), "€" three (E2 82 AC), "😀"
  // four (F0 9F 98 80): whatever the budget, the kept prefix is whole
  // characters.
  for (const std::string ch :
       {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"}) {
    std::string message = "x";
    while (message.size() < 300) message += ch;
    for (size_t max = 4; max < 100; ++max) {
      const std::string cut = TruncateGrpcMessage(message, max);
      ASSERT_GE(cut.size(), 3u);
      ASSERT_EQ(cut.substr(cut.size() - 3), "...");
      const std::string kept = cut.substr(0, cut.size() - 3);
      EXPECT_LE(PercentEncode(cut).size(), max);
      ASSERT_FALSE(kept.empty());
      EXPECT_EQ((kept.size() - 1) % ch.size(), 0u)
          << "cut inside a character at " << kept.size() << " (max " << max
          << ")";
    }
  }
}

TEST(GrpcCodeFromHttpStatusTest, MapsTheStatusesTheGrpcSpecNames) {
  EXPECT_EQ(GrpcCodeFromHttpStatus(400), kInternal);
  EXPECT_EQ(GrpcCodeFromHttpStatus(401), kUnauthenticated);
  EXPECT_EQ(GrpcCodeFromHttpStatus(403), kPermissionDenied);
  EXPECT_EQ(GrpcCodeFromHttpStatus(404), kUnimplemented);
  EXPECT_EQ(GrpcCodeFromHttpStatus(429), kUnavailable);
  EXPECT_EQ(GrpcCodeFromHttpStatus(502), kUnavailable);
  EXPECT_EQ(GrpcCodeFromHttpStatus(503), kUnavailable);
  EXPECT_EQ(GrpcCodeFromHttpStatus(504), kUnavailable);
}

TEST(GrpcCodeFromHttpStatusTest, MapsEveryOtherStatusToUnknown) {
  for (int status : {100, 204, 301, 302, 405, 408, 418, 500, 501, 505, 599}) {
    EXPECT_EQ(GrpcCodeFromHttpStatus(status), kUnknown) << status;
  }
}

TEST(GrpcCodeFromHttp2ErrorTest, MapsEveryErrorCodeTheGrpcSpecNames) {
  EXPECT_EQ(GrpcCodeFromHttp2Error(0x0), kInternal);     // NO_ERROR
  EXPECT_EQ(GrpcCodeFromHttp2Error(0x1), kInternal);     // PROTOCOL_ERROR
  EXPECT_EQ(GrpcCodeFromHttp2Error(0x2), kInternal);     // INTERNAL_ERROR
  EXPECT_EQ(GrpcCodeFromHttp2Error(0x3), kInternal);     // FLOW_CONTROL_ERROR
  EXPECT_EQ(GrpcCodeFromHttp2Error(0x4), kInternal);     // SETTINGS_TIMEOUT
  EXPECT_EQ(GrpcCodeFromHttp2Error(0x6), kInternal);     // FRAME_SIZE_ERROR
  EXPECT_EQ(GrpcCodeFromHttp2Error(0x7), kUnavailable);  // REFUSED_STREAM
  EXPECT_EQ(GrpcCodeFromHttp2Error(0x8), kCancelled);    // CANCEL
  EXPECT_EQ(GrpcCodeFromHttp2Error(0x9), kInternal);     // COMPRESSION_ERROR
  EXPECT_EQ(GrpcCodeFromHttp2Error(0xa), kInternal);     // CONNECT_ERROR
  EXPECT_EQ(GrpcCodeFromHttp2Error(0xb),
            kResourceExhausted);  // ENHANCE_YOUR_CALM
  EXPECT_EQ(GrpcCodeFromHttp2Error(0xc),
            kPermissionDenied);  // INADEQUATE_SECURITY
}

// ---------------------------------------------------------------------------
// ParseGrpcStatus

TEST(ParseGrpcStatusTest, ParsesEveryCode) {
  for (int code = 0; code <= 16; ++code) {
    EXPECT_EQ(ParseGrpcStatus(std::to_string(code)), code);
  }
}

TEST(ParseGrpcStatusTest, RejectsOutOfRangeAndMalformedValues) {
  for (std::string_view value :
       {"", "17", "99", "100", "-1", "+1", " 1", "1 ", "1a", "a", "0x1"}) {
    EXPECT_EQ(ParseGrpcStatus(value), std::nullopt) << "'" << value << "'";
  }
}

}  // namespace
}  // namespace bulwark::net
