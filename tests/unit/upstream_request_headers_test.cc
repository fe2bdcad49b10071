#include "sidecar/net/upstream_request_headers.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bulwark::net {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

HeaderList Fields(const UpstreamRequestHeaders& headers) {
  HeaderList out;
  for (size_t i = 0; i < headers.size(); ++i) {
    const nghttp2_nv& nv = headers.data()[i];
    out.emplace_back(
        std::string(reinterpret_cast<char*>(nv.name), nv.namelen),
        std::string(reinterpret_cast<char*>(nv.value), nv.valuelen));
  }
  return out;
}

TEST(UpstreamRequestHeadersTest, ForwardsTheClientsHeadersOverH2c) {
  const HeaderList request = {{":authority", "svc.example:443"},
                              {"content-type", "application/grpc+proto"},
                              {"te", "trailers"},
                              {"x-padded", " padded "},
                              {"grpc-timeout", "99S"},
                              {"x-b-bin", "AAE"}};
  const UpstreamRequestHeaders headers("/pkg.S/M", request, "10.0.0.1:50051",
                                       absl::InfiniteDuration(), false);
  EXPECT_THAT(Fields(headers),
              ElementsAre(Pair(":method", "POST"), Pair(":scheme", "http"),
                          Pair(":path", "/pkg.S/M"),
                          Pair(":authority", "svc.example:443"),
                          Pair("content-type", "application/grpc+proto"),
                          Pair("te", "trailers"), Pair("x-padded", " padded "),
                          Pair("x-b-bin", "AAE")));
}

TEST(UpstreamRequestHeadersTest, SpeaksHttpsToTlsUpstreams) {
  const UpstreamRequestHeaders headers("/pkg.S/M", {}, "up:443",
                                       absl::InfiniteDuration(), true);
  EXPECT_THAT(
      Fields(headers),
      ElementsAre(Pair(":method", "POST"), Pair(":scheme", "https"),
                  Pair(":path", "/pkg.S/M"), Pair(":authority", "up:443"),
                  Pair("content-type", "application/grpc"),
                  Pair("te", "trailers")));
}

TEST(UpstreamRequestHeadersTest, SendsTheTimeLeftNotTheClientsGrpcTimeout) {
  // The fields point into the request's headers: they must outlive them.
  const HeaderList request = {{"grpc-timeout", "1H"},
                              {"content-type", "application/grpc"}};
  const UpstreamRequestHeaders headers("/pkg.S/M", request, "up:80",
                                       absl::Milliseconds(1500), false);
  const HeaderList fields = Fields(headers);
  ASSERT_FALSE(fields.empty());
  EXPECT_THAT(fields[fields.size() - 1], Pair("grpc-timeout", "1500000u"));
  int timeouts = 0;
  for (const auto& [name, value] : fields) timeouts += name == "grpc-timeout";
  EXPECT_EQ(timeouts, 1);
}

}  // namespace
}  // namespace bulwark::net
