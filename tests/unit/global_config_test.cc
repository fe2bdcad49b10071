// The configuration of global rate limits and limit keys (SPEC section 8):
// `redis` entries, rate_limit.global, key_headers and key: PEER_IDENTITY, with
// their defaults and every validation error.
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sidecar/config_loader.h"

namespace bulwark {
namespace {

namespace cfg = ::bulwark::config::v1;
using ::testing::HasSubstr;
using ::testing::Not;

// One cluster, `top` (top-level blocks such as redis:), and one route whose
// rate_limit block is `rate_limit` (indented under the route).
std::string Config(absl::string_view top, absl::string_view rate_limit) {
  return absl::StrCat(R"yaml(
clusters:
  - name: demo
    endpoints: ["127.0.0.1:50051"]
)yaml",
                      top, R"yaml(
routes:
  - name: orders
    cluster: demo
    rate_limit:
)yaml",
                      rate_limit);
}

constexpr char kMainRedis[] = R"yaml(
redis:
  - name: main
    address: "127.0.0.1:6379"
)yaml";

std::string ErrorOf(const std::string& yaml, const std::string& base_dir = "") {
  if (auto loaded = ParseConfigText(yaml, "test.yaml", base_dir);
      !loaded.ok()) {
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(loaded.status().message());
  }
  return "OK";
}

std::filesystem::path MakeTempDir() {
  const ::testing::TestInfo* info =
      ::testing::UnitTest::GetInstance()->current_test_info();
  std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                              absl::StrCat("global_config_", info->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

void WriteFile(const std::filesystem::path& path, absl::string_view content) {
  std::ofstream out(path, std::ios::binary);
  out << content;
}

TEST(GlobalConfigTest, DefaultsFillRedisTimeoutDomainAndMode) {
  auto loaded = ParseConfigText(Config(kMainRedis, R"yaml(
      requests_per_second: 1000
      global: { redis: main }
)yaml"),
                                "test.yaml", "");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->proto.redis_size(), 1);
  const cfg::Redis& redis = loaded->proto.redis(0);
  EXPECT_EQ(redis.timeout().seconds(), 0);
  EXPECT_EQ(redis.timeout().nanos(), 50'000'000);
  EXPECT_TRUE(loaded->redis_passwords.empty());
  const cfg::RateLimit& rl = loaded->proto.routes(0).rate_limit();
  ASSERT_TRUE(rl.has_global());
  EXPECT_EQ(rl.global().domain(), "default");
  EXPECT_EQ(rl.global().on_redis_error(), cfg::GlobalRateLimit::LOCAL);
  EXPECT_EQ(rl.key(), cfg::RateLimit::HEADERS);
  EXPECT_THAT(SummarizeConfig(*loaded),
              HasSubstr("global on redis main (domain default, LOCAL"));
  EXPECT_THAT(SummarizeConfig(*loaded),
              HasSubstr("redis main: 127.0.0.1:6379, timeout 50ms"));
}

TEST(GlobalConfigTest, FullGlobalBlockLoads) {
  auto loaded = ParseConfigText(Config(R"yaml(
redis:
  - name: main
    address: "redis.shop.svc:6379"
    timeout: 20ms
)yaml",
                                       R"yaml(
      requests_per_second: 50
      burst: 10
      key_headers: [x-tenant, x-user]
      global: { redis: main, domain: shop, on_redis_error: DENY }
)yaml"),
                                "test.yaml", "");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const cfg::RateLimit& rl = loaded->proto.routes(0).rate_limit();
  EXPECT_EQ(rl.global().domain(), "shop");
  EXPECT_EQ(rl.global().on_redis_error(), cfg::GlobalRateLimit::DENY);
  EXPECT_EQ(rl.key_headers_size(), 2);
  EXPECT_THAT(SummarizeConfig(*loaded), HasSubstr("per (x-tenant, x-user)"));
}

TEST(GlobalConfigTest, UnknownRedisNamesTheKnownOnes) {
  EXPECT_THAT(
      ErrorOf(Config(kMainRedis, "      global: { redis: x }\n")),
      HasSubstr(
          R"(routes[0].rate_limit.global.redis: unknown redis "x" (redis: main))"));
  EXPECT_THAT(ErrorOf(Config("", "      global: { redis: x }\n")),
              HasSubstr(R"(routes[0].rate_limit.global.redis: unknown redis )"
                        R"("x" (redis: none configured))"));
  EXPECT_THAT(ErrorOf(Config(kMainRedis, "      global: { domain: a }\n")),
              HasSubstr("routes[0].rate_limit.global.redis: must name a redis "
                        "entry"));
}

TEST(GlobalConfigTest, DomainMustBePlainAndBounded) {
  EXPECT_THAT(
      ErrorOf(Config(kMainRedis,
                     "      global: { redis: main, domain: \"a:b\" }\n")),
      HasSubstr("routes[0].rate_limit.global.domain: must be 1..64 bytes of "
                "[A-Za-z0-9._-] (got \"a:b\")"));
  EXPECT_THAT(ErrorOf(Config(kMainRedis,
                             "      global: { redis: main, domain: \"\" }\n")),
              HasSubstr("routes[0].rate_limit.global.domain: must be 1..64"));
  EXPECT_THAT(
      ErrorOf(Config(kMainRedis,
                     absl::StrCat("      global: { redis: main, domain: ",
                                  std::string(65, 'd'), " }\n"))),
      HasSubstr("routes[0].rate_limit.global.domain: must be 1..64"));
  EXPECT_EQ(ErrorOf(Config(kMainRedis,
                           "      global: { redis: main, domain: shop-v1.eu_1 "
                           "}\n")),
            "OK");
}

TEST(GlobalConfigTest, UnknownOnRedisErrorIsAnError) {
  EXPECT_THAT(
      ErrorOf(Config(kMainRedis,
                     "      global: { redis: main, on_redis_error: MAYBE }\n")),
      HasSubstr("routes[0].rate_limit.global.on_redis_error"));
}

TEST(GlobalConfigTest, RedisEntriesAreValidated) {
  const std::string error = ErrorOf(Config(R"yaml(
redis:
  - name: main
    address: "127.0.0.1"
  - name: main
    address: "127.0.0.1:0"
    username: bulwark
  - name: ""
    address: ""
    timeout: 0s
  - name: slow
    address: "127.0.0.1:6379"
    timeout: 11s
)yaml",
                                           "      burst: 1\n"));
  EXPECT_THAT(error, HasSubstr("redis[0].address: "));
  EXPECT_THAT(error, HasSubstr(R"(redis[1].name: duplicate redis name "main")"
                               R"( (also redis[0]))"));
  EXPECT_THAT(error, HasSubstr("redis[1].address: "));
  EXPECT_THAT(error, HasSubstr("redis[1].username: needs password_file"));
  EXPECT_THAT(error, HasSubstr("redis[2].name: must not be empty"));
  EXPECT_THAT(error, HasSubstr("redis[2].address: must not be empty"));
  EXPECT_THAT(error, HasSubstr("redis[2].timeout: must be between 1ms and 10s "
                               "(got 0s)"));
  EXPECT_THAT(error, HasSubstr("redis[3].timeout: must be between 1ms and 10s "
                               "(got 11s)"));
}

TEST(GlobalConfigTest, RedisTlsFilesAreResolvedAndChecked) {
  const std::filesystem::path dir = MakeTempDir();
  WriteFile(dir / "ca.pem", "-----BEGIN CERTIFICATE-----\n");
  auto loaded = ParseConfigText(Config(R"yaml(
redis:
  - name: main
    address: "127.0.0.1:6379"
    tls: { ca_file: ca.pem, server_name: redis.test }
)yaml",
                                       "      global: { redis: main }\n"),
                                "test.yaml", dir.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->proto.redis(0).tls().ca_file(), (dir / "ca.pem").string());
  EXPECT_EQ(loaded->proto.redis(0).tls().server_name(), "redis.test");
}

TEST(GlobalConfigTest, BadRedisTlsFilesAreErrorsNamingTheField) {
  const std::filesystem::path dir = MakeTempDir();
  WriteFile(dir / "empty.pem", "");
  const std::string error = ErrorOf(Config(R"yaml(
redis:
  - name: main
    address: "127.0.0.1:6379"
    tls: { ca_file: missing.pem, key_file: empty.pem }
)yaml",
                                           "      burst: 1\n"),
                                    dir.string());
  EXPECT_THAT(error, HasSubstr("redis[0].tls.ca_file: cannot read "
                               "\"missing.pem\""));
  EXPECT_THAT(error, HasSubstr("redis[0].tls.cert_file: required when "
                               "key_file is set"));
  EXPECT_THAT(error, HasSubstr("redis[0].tls.key_file: \"empty.pem\""));
}

TEST(GlobalConfigTest, PasswordFileIsReadAndItsNewlineStripped) {
  const std::filesystem::path dir = MakeTempDir();
  WriteFile(dir / "password", "s3cret\n");
  WriteFile(dir / "crlf", "s3cret\r\n");
  auto loaded = ParseConfigText(Config(R"yaml(
redis:
  - name: main
    address: "127.0.0.1:6379"
    username: bulwark
    password_file: password
  - name: other
    address: "127.0.0.1:6380"
    password_file: crlf
)yaml",
                                       "      global: { redis: main }\n"),
                                "test.yaml", dir.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->redis_passwords.at("main"), "s3cret");
  EXPECT_EQ(loaded->redis_passwords.at("other"), "s3cret");
  // Resolved against the config's directory; the password itself never shows
  // in /config.
  EXPECT_EQ(loaded->proto.redis(0).password_file(),
            (dir / "password").string());
  EXPECT_THAT(ConfigToJson(loaded->proto), Not(HasSubstr("s3cret")));
  EXPECT_THAT(SummarizeConfig(*loaded), HasSubstr("AUTH as bulwark"));
}

TEST(GlobalConfigTest, BadPasswordFilesAreErrors) {
  const std::filesystem::path dir = MakeTempDir();
  WriteFile(dir / "empty", "\n");
  WriteFile(dir / "two_lines", "a\nb\n");
  const std::string error = ErrorOf(Config(R"yaml(
redis:
  - name: a
    address: "127.0.0.1:6379"
    password_file: missing
  - name: b
    address: "127.0.0.1:6379"
    password_file: empty
  - name: c
    address: "127.0.0.1:6379"
    password_file: two_lines
  - name: d
    address: "127.0.0.1:6379"
    password_file: .
)yaml",
                                           "      burst: 1\n"),
                                    dir.string());
  EXPECT_THAT(error, HasSubstr("redis[0].password_file: cannot read "
                               "\"missing\""));
  EXPECT_THAT(error, HasSubstr("No such file or directory"));
  EXPECT_THAT(error, HasSubstr("redis[1].password_file: \"empty\""));
  EXPECT_THAT(error, HasSubstr("is empty"));
  EXPECT_THAT(error, HasSubstr("redis[2].password_file: \"two_lines\""));
  EXPECT_THAT(error, HasSubstr("holds more than one line"));
  EXPECT_THAT(error, HasSubstr("redis[3].password_file: cannot read"));
}

TEST(GlobalConfigTest, KeyHeadersAreValidated) {
  EXPECT_THAT(ErrorOf(Config("", R"yaml(
      key_header: x-a
      key_headers: [x-b]
)yaml")),
              HasSubstr("routes[0].rate_limit.key_headers: cannot be combined "
                        "with key_header"));
  EXPECT_THAT(
      ErrorOf(Config("", "      key_headers: [x-a, X-B, x-a]\n")),
      HasSubstr("routes[0].rate_limit.key_headers[1]: must be a lower-case "
                "HTTP/2 header name"));
  EXPECT_THAT(ErrorOf(Config("", "      key_headers: [x-a, x-a]\n")),
              HasSubstr(R"(routes[0].rate_limit.key_headers[1]: duplicate )"
                        R"(header "x-a" (also key_headers[0]))"));
  EXPECT_THAT(ErrorOf(Config("", "      key_headers: [\":path\"]\n")),
              HasSubstr("routes[0].rate_limit.key_headers[0]: must not be a "
                        "pseudo-header"));
  EXPECT_THAT(
      ErrorOf(Config("", "      key_headers: [a, b, c, d, e, f, g, h, i]\n")),
      HasSubstr("routes[0].rate_limit.key_headers: at most 8 headers (got 9)"));
  EXPECT_EQ(ErrorOf(Config("", "      key_headers: [x-tenant, x-user]\n")),
            "OK");
}

TEST(GlobalConfigTest, PeerIdentityNeedsMutualTls) {
  EXPECT_THAT(ErrorOf(Config("", "      key: PEER_IDENTITY\n")),
              HasSubstr("routes[0].rate_limit.key: PEER_IDENTITY needs "
                        "listener.tls with client_ca_file"));
  EXPECT_THAT(ErrorOf(Config("", R"yaml(
      key: PEER_IDENTITY
      key_header: x-a
)yaml")),
              HasSubstr("routes[0].rate_limit.key: PEER_IDENTITY cannot be "
                        "combined with key_header or key_headers"));
  EXPECT_THAT(ErrorOf(Config("", "      key: SOMETHING\n")),
              HasSubstr("routes[0].rate_limit.key"));

  const std::filesystem::path dir = MakeTempDir();
  for (const char* name : {"cert.pem", "key.pem", "ca.pem"}) {
    WriteFile(dir / name, "not checked by the loader\n");
  }
  const std::string tls = R"yaml(
listener:
  address: "127.0.0.1:0"
  tls: { cert_file: cert.pem, key_file: key.pem, client_ca_file: ca.pem }
)yaml";
  EXPECT_EQ(ErrorOf(Config(tls, "      key: PEER_IDENTITY\n"), dir.string()),
            "OK");
  const std::string server_tls_only = R"yaml(
listener:
  address: "127.0.0.1:0"
  tls: { cert_file: cert.pem, key_file: key.pem }
)yaml";
  EXPECT_THAT(ErrorOf(Config(server_tls_only, "      key: PEER_IDENTITY\n"),
                      dir.string()),
              HasSubstr("needs listener.tls with client_ca_file"));
}

TEST(GlobalConfigTest, ConfigJsonShowsTheNewBlocks) {
  auto loaded = ParseConfigText(Config(kMainRedis, R"yaml(
      key_headers: [x-tenant]
      global: { redis: main, domain: shop, on_redis_error: ALLOW }
)yaml"),
                                "test.yaml", "");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const std::string json = ConfigToJson(loaded->proto);
  EXPECT_THAT(json, HasSubstr("\"on_redis_error\": \"ALLOW\""));
  EXPECT_THAT(json, HasSubstr("\"domain\": \"shop\""));
  EXPECT_THAT(json, HasSubstr("\"address\": \"127.0.0.1:6379\""));
  EXPECT_THAT(json, HasSubstr("\"key\": \"HEADERS\""));
}

}  // namespace
}  // namespace bulwark
