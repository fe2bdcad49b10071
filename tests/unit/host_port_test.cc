#include "sidecar/host_port.h"

#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace bulwark {
namespace {

// The error message, or "OK" when parsing succeeded.
std::string ErrorOf(std::string_view text,
                    PortZero port_zero = PortZero::kReject) {
  if (auto parsed = ParseHostPort(text, port_zero); !parsed.ok()) {
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(parsed.status().message());
  }
  return "OK";
}

TEST(ParseHostPortTest, ParsesIpv4AndPort) {
  auto parsed = ParseHostPort("1.2.3.4:80");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->host, "1.2.3.4");
  EXPECT_EQ(parsed->port, 80);
}

TEST(ParseHostPortTest, ParsesBracketedIpv6WithoutKeepingTheBrackets) {
  auto parsed = ParseHostPort("[::1]:50051");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->host, "::1");
  EXPECT_EQ(parsed->port, 50051);
}

TEST(ParseHostPortTest, ParsesDnsNames) {
  for (std::string_view text :
       {"localhost:80", "orders.shop.svc.cluster.local:443",
        "my-host_1.example.:8080"}) {
    auto parsed = ParseHostPort(text);
    EXPECT_TRUE(parsed.ok()) << text << ": " << parsed.status();
  }
  if (auto parsed = ParseHostPort("orders.default.svc:9000"); parsed.ok()) {
    EXPECT_EQ(parsed->host, "orders.default.svc");
    EXPECT_EQ(parsed->port, 9000);
  } else {
    ADD_FAILURE() << parsed.status();
  }
}

TEST(ParseHostPortTest, AcceptsTheWholePortRange) {
  EXPECT_EQ(ErrorOf("h:1"), "OK");
  EXPECT_EQ(ErrorOf("h:65535"), "OK");
}

TEST(ParseHostPortTest, RejectsPortZeroUnlessTheCallerAllowsIt) {
  EXPECT_EQ(ErrorOf("127.0.0.1:0"),
            "port out of range (got 0, expected 1..65535)");
  auto parsed = ParseHostPort("127.0.0.1:0", PortZero::kAllow);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->port, 0);
}

TEST(ParseHostPortTest, RejectsPortsAbove65535) {
  EXPECT_EQ(ErrorOf("h:65536"),
            "port out of range (got 65536, expected 1..65535)");
  EXPECT_EQ(ErrorOf("h:99999999999999999999", PortZero::kAllow),
            "port out of range (got 99999999999999999999, expected 0..65535)");
}

TEST(ParseHostPortTest, RejectsTextWithoutAPort) {
  EXPECT_EQ(ErrorOf("localhost"), "expected host:port (got \"localhost\")");
  EXPECT_EQ(ErrorOf(""), "expected host:port (got \"\")");
  EXPECT_EQ(ErrorOf("[::1]"), "expected host:port (got \"[::1]\")");
  EXPECT_EQ(ErrorOf("h:"), "missing port (got \"h:\")");
}

TEST(ParseHostPortTest, RejectsAMissingHost) {
  EXPECT_EQ(ErrorOf(":80"), "missing host (got \":80\")");
}

TEST(ParseHostPortTest, RejectsNonNumericPorts) {
  EXPECT_EQ(ErrorOf("h:http"), "port must be a number (got \"h:http\")");
  EXPECT_EQ(ErrorOf("h:-1"), "port must be a number (got \"h:-1\")");
}

TEST(ParseHostPortTest, RequiresBracketsAroundIpv6) {
  EXPECT_EQ(ErrorOf("::1:80"),
            "IPv6 addresses need brackets, like [::1]:80 (got \"::1:80\")");
  EXPECT_EQ(ErrorOf("[::1:80"),
            "missing ']' after IPv6 address (got \"[::1:80\")");
  EXPECT_EQ(ErrorOf("[foo]:80"),
            "invalid IPv6 address \"foo\" (got \"[foo]:80\")");
}

TEST(ParseHostPortTest, RejectsMalformedHosts) {
  EXPECT_EQ(ErrorOf("1.2.3.400:80"),
            "invalid IPv4 address \"1.2.3.400\" (got \"1.2.3.400:80\")");
  EXPECT_EQ(ErrorOf("foo bar:80"),
            "invalid host name \"foo bar\" (got \"foo bar:80\")");
  EXPECT_EQ(ErrorOf("-foo:80"), "invalid host name \"-foo\" (got \"-foo:80\")");
  EXPECT_EQ(ErrorOf("a..b:80"), "invalid host name \"a..b\" (got \"a..b:80\")");
  EXPECT_EQ(ErrorOf("http://h:80"),
            "expected host:port without a scheme (got \"http://h:80\")");
}

TEST(HostPortTest, ToStringRoundTripsThroughParse) {
  for (std::string_view text : {"1.2.3.4:80", "[::1]:50051", "localhost:0"}) {
    auto parsed = ParseHostPort(text, PortZero::kAllow);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->ToString(), text);
  }
}

TEST(HostPortTest, ComparesHostAndPort) {
  EXPECT_EQ((HostPort{"a", 1}), (HostPort{"a", 1}));
  EXPECT_NE((HostPort{"a", 1}), (HostPort{"a", 2}));
  EXPECT_NE((HostPort{"a", 1}), (HostPort{"b", 1}));
}

}  // namespace
}  // namespace bulwark
