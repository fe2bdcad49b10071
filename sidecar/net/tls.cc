#include "sidecar/net/tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <atomic>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace bulwark::net {
namespace {

constexpr unsigned char kAlpnH2[] = {2, 'h', '2'};

std::atomic<uint64_t> next_id{1};

int SelectAlpn(SSL*, const unsigned char** out, unsigned char* outlen,
               const unsigned char* in, unsigned int inlen, void*) {
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, kAlpnH2, sizeof(kAlpnH2), in,
                            inlen) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // a TLS client that does not speak h2
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

absl::Status Fail(std::string_view what, const std::string& file) {
  return absl::InvalidArgumentError(
      absl::StrCat(std::string(what), " ", file, ": ", TlsErrorString()));
}

}  // namespace

std::string TlsErrorString() {
  std::string out;
  while (unsigned long err = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown TLS error" : out;
}

TlsContext::TlsContext(SSL_CTX* ctx, bool server, std::string server_name)
    : ctx_(ctx),
      server_(server),
      server_name_(std::move(server_name)),
      id_(next_id++) {}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Server(
    const TlsServerFiles& files) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr)
    return absl::InternalError("SSL_CTX_new: " + TlsErrorString());
  std::shared_ptr<TlsContext> out(new TlsContext(ctx, true, ""));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert_file.c_str()) != 1) {
    return Fail("cannot load certificate", files.cert_file);
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, files.key_file.c_str(),
                                  SSL_FILETYPE_PEM) != 1) {
    return Fail("cannot load private key", files.key_file);
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return Fail("private key does not match the certificate", files.cert_file);
  }
  if (!files.client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, files.client_ca_file.c_str(),
                                      nullptr) != 1) {
      return Fail("cannot load client CA", files.client_ca_file);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       nullptr);
  }
  SSL_CTX_set_alpn_select_cb(ctx, &SelectAlpn, nullptr);
  return std::shared_ptr<const TlsContext>(std::move(out));
}

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Client(
    const TlsClientFiles& files) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr)
    return absl::InternalError("SSL_CTX_new: " + TlsErrorString());
  std::shared_ptr<TlsContext> out(
      new TlsContext(ctx, false, files.server_name));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  if (files.ca_file.empty()) {
    SSL_CTX_set_default_verify_paths(ctx);
  } else if (SSL_CTX_load_verify_locations(ctx, files.ca_file.c_str(),
                                           nullptr) != 1) {
    return Fail("cannot load CA", files.ca_file);
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (!files.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, files.cert_file.c_str()) != 1) {
      return Fail("cannot load client certificate", files.cert_file);
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, files.key_file.c_str(),
                                    SSL_FILETYPE_PEM) != 1) {
      return Fail("cannot load client key", files.key_file);
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      return Fail("client key does not match the certificate", files.cert_file);
    }
  }
  SSL_CTX_set_alpn_protos(ctx, kAlpnH2, sizeof(kAlpnH2));
  return std::shared_ptr<const TlsContext>(std::move(out));
}

SSL* TlsContext::NewConnection(int fd, const std::string& peer_name) const {
  SSL* ssl = SSL_new(ctx_);
  if (ssl == nullptr) return nullptr;
  if (SSL_set_fd(ssl, fd) != 1) {
    SSL_free(ssl);
    return nullptr;
  }
  if (server_) {
    SSL_set_accept_state(ssl);
    return ssl;
  }
  const std::string& name = server_name_.empty() ? peer_name : server_name_;
  if (!name.empty()) {
    SSL_set_tlsext_host_name(ssl, name.c_str());
    // An IP address is checked against the certificate's IP SANs, a name
    // against its DNS.
    if (X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
        X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str()) != 1) {
      SSL_set1_host(ssl, name.c_str());
    }
  }
  SSL_set_connect_state(ssl);
  return ssl;
}

}  // namespace bulwark::net
