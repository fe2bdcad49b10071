// TlsContext loads its PEM files through ReadConfigFile and parses them from
// memory (SPEC section 11): certificate chains, keys and CA bundles load; a
// FIFO or a device in a file's place is an error at once (never a blocked
// read); an encrypted key or a file without PEM is a clear error, never a
// passphrase prompt. The certificates are made here with OpenSSL (EC keys).
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sidecar/net/tls.h"

namespace bulwark::net {
namespace {

using ::testing::HasSubstr;

class TlsContextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string base = "/tmp/bulwark-tls-XXXXXX";
    if (const char* tmp = std::getenv("TEST_TMPDIR")) {
      base = absl::StrCat(tmp, "/bulwark-tls-XXXXXX");
    }
    ASSERT_NE(mkdtemp(base.data()), nullptr);
    dir_ = base;
    // A CA, and a leaf it signed.
    ca_key_ = EVP_EC_gen("P-256");
    leaf_key_ = EVP_EC_gen("P-256");
    ASSERT_NE(ca_key_, nullptr);
    ASSERT_NE(leaf_key_, nullptr);
    ca_ = MakeCertificate("test CA", ca_key_, nullptr, ca_key_);
    leaf_ = MakeCertificate("localhost", leaf_key_, ca_, ca_key_);
    ASSERT_NE(ca_, nullptr);
    ASSERT_NE(leaf_, nullptr);
    WritePem(Path("ca.crt"), {ca_});
    WritePem(Path("chain.crt"), {leaf_, ca_});
    WriteKey(Path("leaf.key"), leaf_key_, /*encrypted=*/false);
    WriteKey(Path("encrypted.key"), leaf_key_, /*encrypted=*/true);
  }

  void TearDown() override {
    X509_free(leaf_);
    X509_free(ca_);
    EVP_PKEY_free(leaf_key_);
    EVP_PKEY_free(ca_key_);
    std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }

  std::string Path(const std::string& name) const {
    return absl::StrCat(dir_, "/", name);
  }

  static X509* MakeCertificate(const char* name, EVP_PKEY* key, X509* issuer,
                               EVP_PKEY* issuer_key) {
    X509* cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), issuer == nullptr ? 1 : 2);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_set_pubkey(cert, key);
    X509_NAME* subject = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(name), -1,
                               -1, 0);
    X509_set_issuer_name(
        cert, issuer == nullptr ? subject : X509_get_subject_name(issuer));
    if (X509_sign(cert, issuer_key, EVP_sha256()) == 0) {
      X509_free(cert);
      return nullptr;
    }
    return cert;
  }

  static void WritePem(const std::string& path,
                       std::initializer_list<X509*> certs) {
    FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    for (X509* cert : certs) PEM_write_X509(f, cert);
    std::fclose(f);
  }

  static void WriteKey(const std::string& path, EVP_PKEY* key, bool encrypted) {
    FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    static char passphrase[] = "secret";
    PEM_write_PrivateKey(
        f, key, encrypted ? EVP_aes_128_cbc() : nullptr,
        encrypted ? reinterpret_cast<unsigned char*>(passphrase) : nullptr,
        encrypted ? 6 : 0, nullptr, nullptr);
    std::fclose(f);
  }

  static void WriteText(const std::string& path, const std::string& text) {
    FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
  }

  std::string dir_;
  EVP_PKEY* ca_key_ = nullptr;
  EVP_PKEY* leaf_key_ = nullptr;
  X509* ca_ = nullptr;
  X509* leaf_ = nullptr;
};

TEST_F(TlsContextTest, ChainKeyAndCaBundleLoad) {
  auto server = TlsContext::Server({.cert_file = Path("chain.crt"),
                                    .key_file = Path("leaf.key"),
                                    .client_ca_file = Path("ca.crt")});
  EXPECT_TRUE(server.ok()) << server.status();
  auto client = TlsContext::Client({.ca_file = Path("ca.crt"),
                                    .cert_file = Path("chain.crt"),
                                    .key_file = Path("leaf.key")});
  EXPECT_TRUE(client.ok()) << client.status();
}

TEST_F(TlsContextTest, AKeyThatIsNotTheCertificatesIsRefused) {
  WriteKey(Path("ca.key"), ca_key_, /*encrypted=*/false);
  auto server = TlsContext::Server(
      {.cert_file = Path("chain.crt"), .key_file = Path("ca.key")});
  ASSERT_FALSE(server.ok());
  // OpenSSL checks the key against the certificate as it takes it.
  EXPECT_THAT(
      std::string(server.status().message()),
      HasSubstr(absl::StrCat("cannot load private key ", Path("ca.key"))));
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr("values mismatch"));
}

TEST_F(TlsContextTest, AFifoInACertificatesPlaceIsAnErrorAtOnce) {
  ASSERT_EQ(mkfifo(Path("fifo.crt").c_str(), 0600), 0);
  const absl::Time start = absl::Now();
  auto server = TlsContext::Server(
      {.cert_file = Path("fifo.crt"), .key_file = Path("leaf.key")});
  ASSERT_FALSE(server.ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr(absl::StrCat("cannot load certificate ",
                                     Path("fifo.crt"), ": ")));
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("FIFO"));
  auto client = TlsContext::Client({.ca_file = Path("fifo.crt")});
  ASSERT_FALSE(client.ok());
  EXPECT_THAT(std::string(client.status().message()), HasSubstr("FIFO"));
}

TEST_F(TlsContextTest, ADeviceInAKeysPlaceIsAnErrorNotAnEndlessRead) {
  auto server = TlsContext::Server(
      {.cert_file = Path("chain.crt"), .key_file = "/dev/zero"});
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr("cannot load private key /dev/zero: "));
}

TEST_F(TlsContextTest, AnEncryptedKeyIsRefusedWithoutAPrompt) {
  auto server = TlsContext::Server(
      {.cert_file = Path("chain.crt"), .key_file = Path("encrypted.key")});
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr(absl::StrCat("cannot load private key ",
                                     Path("encrypted.key"))));
}

TEST_F(TlsContextTest, FilesWithoutPemAreClearErrors) {
  WriteText(Path("garbage.crt"), "not a certificate\n");
  auto server = TlsContext::Server(
      {.cert_file = Path("garbage.crt"), .key_file = Path("leaf.key")});
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(
      std::string(server.status().message()),
      HasSubstr(absl::StrCat("cannot load certificate ", Path("garbage.crt"))));
  auto client = TlsContext::Client({.ca_file = Path("garbage.crt")});
  ASSERT_FALSE(client.ok());
  EXPECT_THAT(std::string(client.status().message()),
              HasSubstr(absl::StrCat("cannot load CA ", Path("garbage.crt"))));
  // A key file where the CA bundle belongs holds no certificate.
  auto no_ca = TlsContext::Client({.ca_file = Path("leaf.key")});
  ASSERT_FALSE(no_ca.ok());
  EXPECT_THAT(std::string(no_ca.status().message()),
              HasSubstr("no PEM certificate"));
}

}  // namespace
}  // namespace bulwark::net
