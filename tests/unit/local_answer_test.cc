#include "sidecar/net/local_answer.h"

#include <string>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "gtest/gtest.h"
#include "sidecar/net/grpc_framing.h"

namespace bulwark::net {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

std::string Field(const HeaderList& fields, const std::string& name) {
  for (const auto& [n, v] : fields) {
    if (n == name) return std::string(v);
  }
  return "<absent>";
}

google::rpc::Status DecodeDetails(const std::string& value) {
  std::string bytes;
  EXPECT_TRUE(absl::Base64Unescape(value, &bytes)) << value;
  google::rpc::Status status;
  EXPECT_TRUE(status.ParseFromString(bytes));
  return status;
}

TEST(LocalAnswerTrailersTest, ARejectionCarriesReasonPushbackAndDetails) {
  const HeaderList fields =
      LocalAnswerTrailers({.grpc_code = 8,
                           .message = "rate limited on route echo",
                           .reason = "rate_limited",
                           .retry_pushback_ms = 1250,
                           .route = "echo"});
  ASSERT_EQ(fields.size(), 5u);
  EXPECT_THAT(HeaderList(fields.begin(), fields.begin() + 4),
              ElementsAre(Pair("grpc-status", "8"),
                          Pair("grpc-message", "rate limited on route echo"),
                          Pair("x-bulwark-reason", "rate_limited"),
                          Pair("grpc-retry-pushback-ms", "1250")));
  const std::string details = Field(fields, "grpc-status-details-bin");
  EXPECT_EQ(details.find('='), std::string::npos) << "padded: " << details;

  const google::rpc::Status status = DecodeDetails(details);
  EXPECT_EQ(status.code(), 8);
  EXPECT_EQ(status.message(), "rate limited on route echo");
  ASSERT_EQ(status.details_size(), 2);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(status.details(0).UnpackTo(&info));
  EXPECT_EQ(status.details(0).type_url(),
            "type.googleapis.com/google.rpc.ErrorInfo");
  EXPECT_EQ(info.reason(), "rate_limited");
  EXPECT_EQ(info.domain(), "bulwark.io");
  ASSERT_EQ(info.metadata().count("route"), 1u);
  EXPECT_EQ(info.metadata().at("route"), "echo");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(status.details(1).UnpackTo(&retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 1);
  EXPECT_EQ(retry.retry_delay().nanos(), 250000000);
}

TEST(LocalAnswerTrailersTest, NoPushbackNoRetryInfoAndNoRouteNoRouteMetadata) {
  const HeaderList fields = LocalAnswerTrailers(
      {.grpc_code = 14, .message = "open", .reason = "circuit_open"});
  EXPECT_EQ(Field(fields, "grpc-retry-pushback-ms"), "<absent>");
  const google::rpc::Status status =
      DecodeDetails(Field(fields, "grpc-status-details-bin"));
  ASSERT_EQ(status.details_size(), 1);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(status.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "circuit_open");
  EXPECT_TRUE(info.metadata().empty());
}

TEST(LocalAnswerTrailersTest, AnAnswerWithoutReasonHasNoDetails) {
  const HeaderList fields =
      LocalAnswerTrailers({.grpc_code = 12, .message = "no route"});
  EXPECT_THAT(fields, ElementsAre(Pair("grpc-status", "12"),
                                  Pair("grpc-message", "no route")));
  EXPECT_THAT(LocalAnswerTrailers({.grpc_code = 13}),
              ElementsAre(Pair("grpc-status", "13")));
}

TEST(LocalAnswerTrailersTest, TheMessageIsCutAndEncodedAndTheDetailsAgree) {
  const std::string path = "/pkg.S/" + std::string(30000, '%');
  const HeaderList fields = LocalAnswerTrailers(
      {.grpc_code = 8, .message = "no slot for " + path, .reason = "x"});
  const std::string wire = Field(fields, "grpc-message");
  EXPECT_LE(wire.size(), kMaxLocalMessageBytes);
  EXPECT_EQ(wire.substr(0, 15), "no slot for /pk");
  EXPECT_EQ(wire.substr(wire.size() - 3), "...");
  const google::rpc::Status status =
      DecodeDetails(Field(fields, "grpc-status-details-bin"));
  EXPECT_EQ(PercentEncode(status.message()), wire);
}

TEST(Base64UnpaddedTest, DropsOnlyThePadding) {
  EXPECT_EQ(Base64Unpadded(""), "");
  EXPECT_EQ(Base64Unpadded("a"), "YQ");
  EXPECT_EQ(Base64Unpadded("ab"), "YWI");
  EXPECT_EQ(Base64Unpadded("abc"), "YWJj");
  EXPECT_EQ(Base64Unpadded(std::string("\xff\xfe", 2)), "//4");
}

}  // namespace
}  // namespace bulwark::net
