// TLS and mTLS through the real binaries, with certificates made at test time
// by the openssl command: the listener (server certificate, optional client CA)
// and the upstream side (CA, client certificate, server name). Good handshakes
// pass calls; a wrong CA, a missing client certificate, an expired certificate
// and a plaintext client fail, and the sidecar keeps serving.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "bulwark/demo/v1/demo.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/integration/process.h"

namespace bulwark::test {
namespace {

using ::bulwark::demo::v1::Demo;
using ::bulwark::demo::v1::EchoRequest;
using ::bulwark::demo::v1::EchoResponse;

// Runs a shell command in `dir`; true if it exited 0.
bool Sh(const std::string& dir, const std::string& command) {
  const std::string full =
      absl::StrCat("cd '", dir, "' && (", command, ") >>openssl.log 2>&1");
  return std::system(full.c_str()) == 0;
}

// A CA, a second unrelated CA, a server certificate for 127.0.0.1/localhost, a
// client certificate, and an expired server certificate, all under `dir`.
bool MakeCertificates(const std::string& dir) {
  const char* kCaConf =
      "[ca]\ndefault_ca=test_ca\n[test_ca]\ndatabase=index.txt\nnew_certs_dir=."
      "\n"
      "serial=serial\ndefault_md=sha256\npolicy=any\ncopy_extensions=copy\n"
      "[any]\ncommonName=supplied\n";
  return WriteFile(dir + "/ca.conf", kCaConf).ok() &&
         Sh(dir, "touch index.txt && echo 01 > serial") &&
         Sh(dir,
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out "
            "ca.crt -days 2 "
            "-subj /CN=bulwark-test-ca") &&
         Sh(dir,
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key "
            "-out other-ca.crt "
            "-days 2 -subj /CN=other-ca") &&
         Sh(dir,
            "openssl req -newkey rsa:2048 -nodes -keyout server.key -out "
            "server.csr "
            "-subj /CN=localhost -addext "
            "subjectAltName=IP:127.0.0.1,DNS:localhost") &&
         Sh(dir,
            "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key "
            "-CAcreateserial "
            "-out server.crt -days 2 -copy_extensions copy") &&
         Sh(dir,
            "openssl req -newkey rsa:2048 -nodes -keyout client.key -out "
            "client.csr "
            "-subj /CN=client") &&
         Sh(dir,
            "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key "
            "-CAcreateserial "
            "-out client.crt -days 2") &&
         Sh(dir,
            "openssl req -newkey rsa:2048 -nodes -keyout other-client.key -out "
            "other.csr "
            "-subj /CN=intruder && openssl x509 -req -in other.csr -CA "
            "other-ca.crt "
            "-CAkey other-ca.key -CAcreateserial -out other-client.crt -days "
            "2") &&
         Sh(dir,
            "openssl ca -batch -config ca.conf -cert ca.crt -keyfile ca.key "
            "-in server.csr "
            "-out expired.crt -startdate 20200101000000Z -enddate "
            "20200102000000Z -notext");
}

std::string Read(const std::string& path) {
  auto text = ReadFile(path);
  return text.ok() ? *text : "";
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir();
    ASSERT_TRUE(MakeCertificates(dir_)) << Read(dir_ + "/openssl.log");
  }

  void StartUpstream(std::vector<std::string> args = {}) {
    auto upstream = DemoUpstream::Start({.extra_args = std::move(args)});
    ASSERT_TRUE(upstream.ok()) << upstream.status();
    upstream_ = std::move(*upstream);
  }

  void StartSidecar(const std::string& listener_tls,
                    const std::string& cluster_tls) {
    port_ = PickFreePort();
    const int admin = PickFreePort();
    const std::string config = absl::StrCat(
        "listener:\n  address: \"127.0.0.1:", port_, "\"\n", listener_tls,
        "admin: { address: \"127.0.0.1:", admin, "\" }\n", "workers: 1\n",
        "clusters:\n  - name: demo\n    endpoints: [\"", upstream_->address(),
        "\"]\n", cluster_tls,
        "routes:\n  - name: all\n    match: {}\n    cluster: demo\n");
    ASSERT_TRUE(WriteFile(dir_ + "/bulwark.yaml", config).ok());
    auto child = ChildProcess::Start(BinaryPath("bulwark"),
                                     {"--config", dir_ + "/bulwark.yaml"});
    ASSERT_TRUE(child.ok()) << child.status();
    sidecar_ = std::move(*child);
    ASSERT_TRUE(WaitForTcpPort(port_, absl::Seconds(20), sidecar_.get()).ok())
        << sidecar_->Log();
  }

  std::string ListenerTls(bool mtls) const {
    return absl::StrCat(
        "  tls:\n    cert_file: ", dir_, "/server.crt\n    key_file: ", dir_,
        "/server.key\n",
        mtls ? absl::StrCat("    client_ca_file: ", dir_, "/ca.crt\n") : "");
  }

  grpc::Status Echo(std::shared_ptr<grpc::ChannelCredentials> credentials) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                             credentials, args);
    auto stub = Demo::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(5));
    EchoRequest request;
    request.set_payload("secret");
    EchoResponse response;
    grpc::Status status = stub->Echo(&ctx, request, &response);
    if (status.ok()) {
      EXPECT_EQ(response.payload(), "secret");
    }
    return status;
  }

  std::shared_ptr<grpc::ChannelCredentials> Tls(
      const std::string& ca, const std::string& client = "") {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = Read(dir_ + "/" + ca);
    if (!client.empty()) {
      options.pem_cert_chain = Read(dir_ + "/" + client + ".crt");
      options.pem_private_key = Read(dir_ + "/" + client + ".key");
    }
    return grpc::SslCredentials(options);
  }

  std::string dir_;
  int port_ = 0;
  std::unique_ptr<DemoUpstream> upstream_;
  std::unique_ptr<ChildProcess> sidecar_;
};

TEST_F(TlsTest, ListenerServesClientsThatTrustItsCa) {
  StartUpstream();
  StartSidecar(ListenerTls(false), "");
  EXPECT_TRUE(Echo(Tls("ca.crt")).ok());
}

TEST_F(TlsTest, ClientWithAnotherCaAndPlaintextClientAreRefused) {
  StartUpstream();
  StartSidecar(ListenerTls(false), "");
  EXPECT_EQ(Echo(Tls("other-ca.crt")).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Echo(grpc::InsecureChannelCredentials()).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(Echo(Tls("ca.crt")).ok()) << "the sidecar stopped serving";
}

TEST_F(TlsTest, MutualTlsNeedsAClientCertificateFromTheClientCa) {
  StartUpstream();
  StartSidecar(ListenerTls(true), "");
  EXPECT_EQ(Echo(Tls("ca.crt")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Echo(Tls("ca.crt", "other-client")).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(Echo(Tls("ca.crt", "client")).ok());
}

TEST_F(TlsTest, ExpiredListenerCertificateIsRefusedByClients) {
  StartUpstream();
  StartSidecar(
      absl::StrCat("  tls:\n    cert_file: ", dir_,
                   "/expired.crt\n    key_file: ", dir_, "/server.key\n"),
      "");
  EXPECT_EQ(Echo(Tls("ca.crt")).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTest, ReloadReadsRotatedCertificates) {
  StartUpstream();
  StartSidecar(ListenerTls(false), "");
  ASSERT_TRUE(Echo(Tls("ca.crt")).ok());
  // Rotate: a certificate for the same names from another CA, written over the
  // same files.
  ASSERT_TRUE(Sh(
      dir_,
      "openssl req -newkey rsa:2048 -nodes -keyout rotated.key -out "
      "rotated.csr "
      "-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost "
      "&& "
      "openssl x509 -req -in rotated.csr -CA other-ca.crt -CAkey other-ca.key "
      "-CAcreateserial -out rotated.crt -days 2 -copy_extensions copy && "
      "cp rotated.crt server.crt && cp rotated.key server.key"))
      << Read(dir_ + "/openssl.log");
  ASSERT_TRUE(sidecar_->Signal(SIGHUP).ok());
  // New connections get the new certificate once the reload is done.
  EXPECT_TRUE(PollUntil([&] { return Echo(Tls("other-ca.crt")).ok(); },
                        absl::Seconds(10)))
      << sidecar_->Log();
  EXPECT_EQ(Echo(Tls("ca.crt")).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTest, UpstreamTlsVerifiesTheUpstreamAndPresentsAClientCertificate) {
  StartUpstream({"--tls_cert", dir_ + "/server.crt", "--tls_key",
                 dir_ + "/server.key", "--tls_client_ca", dir_ + "/ca.crt"});
  StartSidecar(
      "", absl::StrCat("    tls:\n      ca_file: ", dir_,
                       "/ca.crt\n      cert_file: ", dir_,
                       "/client.crt\n      key_file: ", dir_, "/client.key\n"));
  EXPECT_TRUE(Echo(grpc::InsecureChannelCredentials()).ok()) << sidecar_->Log();
}

TEST_F(TlsTest, UpstreamWithAnUntrustedCertificateGivesUnavailable) {
  StartUpstream(
      {"--tls_cert", dir_ + "/server.crt", "--tls_key", dir_ + "/server.key"});
  StartSidecar(
      "", absl::StrCat("    tls:\n      ca_file: ", dir_, "/other-ca.crt\n"));
  EXPECT_EQ(Echo(grpc::InsecureChannelCredentials()).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace bulwark::test
