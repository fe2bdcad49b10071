#include "sidecar/net/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "sidecar/file_util.h"

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

// Every PEM file is read whole through ReadConfigFile (a regular file of at
// most 16 MiB, SPEC section 11) and parsed from memory: a file swapped for a
// FIFO or a device between the loader's check and this read is an error, never
// a blocked reload.
using BioPtr = std::unique_ptr<BIO, decltype(&BIO_free)>;

absl::StatusOr<std::string> ReadPem(absl::string_view what,
                                    const std::string& file) {
  absl::StatusOr<std::string> pem = ReadConfigFile(file);
  if (!pem.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot load ", what, " ", file, ": ", pem.status().message()));
  }
  return pem;
}

BioPtr MemoryBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())),
                &BIO_free);
}

// PEM's end of input ("no start line" after the last block) is no error.
bool OnlyEndOfPemLeft() {
  const unsigned long err = ERR_peek_last_error();
  if (ERR_GET_LIB(err) == ERR_LIB_PEM &&
      ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
    ERR_clear_error();
    return true;
  }
  return err == 0;
}

// An encrypted key is refused rather than prompting on a terminal.
int NoPassphrase(char*, int, int, void*) { return -1; }

// The certificate and its chain (SSL_CTX_use_certificate_chain_file's job).
absl::Status UseCertificateChain(SSL_CTX* ctx, absl::string_view what,
                                 const std::string& file) {
  absl::StatusOr<std::string> pem = ReadPem(what, file);
  if (!pem.ok()) return pem.status();
  ERR_clear_error();
  BioPtr bio = MemoryBio(*pem);
  const std::string cannot = absl::StrCat("cannot load ", what);
  X509* leaf = bio == nullptr ? nullptr
                              : PEM_read_bio_X509_AUX(bio.get(), nullptr,
                                                      &NoPassphrase, nullptr);
  if (leaf == nullptr) return Fail(cannot, file);
  const int used = SSL_CTX_use_certificate(ctx, leaf);
  X509_free(leaf);
  if (used != 1) return Fail(cannot, file);
  SSL_CTX_clear_chain_certs(ctx);
  while (X509* ca =
             PEM_read_bio_X509(bio.get(), nullptr, &NoPassphrase, nullptr)) {
    if (SSL_CTX_add0_chain_cert(ctx, ca) != 1) {
      X509_free(ca);
      return Fail(cannot, file);
    }
  }
  if (!OnlyEndOfPemLeft()) return Fail(cannot, file);
  return absl::OkStatus();
}

absl::Status UsePrivateKey(SSL_CTX* ctx, absl::string_view what,
                           const std::string& file) {
  absl::StatusOr<std::string> pem = ReadPem(what, file);
  if (!pem.ok()) return pem.status();
  ERR_clear_error();
  BioPtr bio = MemoryBio(*pem);
  EVP_PKEY* key =
      bio == nullptr
          ? nullptr
          : PEM_read_bio_PrivateKey(bio.get(), nullptr, &NoPassphrase, nullptr);
  const std::string cannot = absl::StrCat("cannot load ", what);
  if (key == nullptr) return Fail(cannot, file);
  const int used = SSL_CTX_use_PrivateKey(ctx, key);
  EVP_PKEY_free(key);
  if (used != 1) return Fail(cannot, file);
  return absl::OkStatus();
}

// A CA bundle into the context's trust store (SSL_CTX_load_verify_locations'
// job): every certificate (and CRL) in the file; none is an error.
absl::Status LoadCaBundle(SSL_CTX* ctx, absl::string_view what,
                          const std::string& file) {
  absl::StatusOr<std::string> pem = ReadPem(what, file);
  if (!pem.ok()) return pem.status();
  ERR_clear_error();
  BioPtr bio = MemoryBio(*pem);
  const std::string cannot = absl::StrCat("cannot load ", what);
  STACK_OF(X509_INFO)* infos =
      bio == nullptr
          ? nullptr
          : PEM_X509_INFO_read_bio(bio.get(), nullptr, &NoPassphrase, nullptr);
  if (infos == nullptr) return Fail(cannot, file);
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  int certificates = 0;
  bool ok = true;
  for (int i = 0; i < sk_X509_INFO_num(infos) && ok; ++i) {
    X509_INFO* info = sk_X509_INFO_value(infos, i);
    if (info->x509 != nullptr) {
      ok = X509_STORE_add_cert(store, info->x509) == 1;
      ++certificates;
    }
    if (ok && info->crl != nullptr) {
      ok = X509_STORE_add_crl(store, info->crl) == 1;
    }
  }
  sk_X509_INFO_pop_free(infos, X509_INFO_free);
  if (!ok) return Fail(cannot, file);
  if (certificates == 0) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat(cannot, " ", file, ": no PEM certificate in it"));
  }
  return absl::OkStatus();
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
  if (absl::Status s = UseCertificateChain(ctx, "certificate", files.cert_file);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = UsePrivateKey(ctx, "private key", files.key_file);
      !s.ok()) {
    return s;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return Fail("private key does not match the certificate", files.cert_file);
  }
  if (!files.client_ca_file.empty()) {
    if (absl::Status s = LoadCaBundle(ctx, "client CA", files.client_ca_file);
        !s.ok()) {
      return s;
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
  } else if (absl::Status s = LoadCaBundle(ctx, "CA", files.ca_file); !s.ok()) {
    return s;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (!files.cert_file.empty()) {
    if (absl::Status s =
            UseCertificateChain(ctx, "client certificate", files.cert_file);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = UsePrivateKey(ctx, "client key", files.key_file);
        !s.ok()) {
      return s;
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

std::string PeerCertificateIdentity(SSL* ssl) {
  if (ssl == nullptr) return "";
  X509* cert = SSL_get_peer_certificate(ssl);  // a reference of our own
  if (cert == nullptr) return "";
  std::string identity;
  if (auto* names = static_cast<GENERAL_NAMES*>(
          X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
      names != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names) && identity.empty(); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
      if (name->type != GEN_URI) continue;
      const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
      identity.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                      static_cast<size_t>(ASN1_STRING_length(uri)));
    }
    GENERAL_NAMES_free(names);
  }
  if (identity.empty()) {
    X509_NAME* subject = X509_get_subject_name(cert);
    const int index = subject != nullptr ? X509_NAME_get_index_by_NID(
                                               subject, NID_commonName, -1)
                                         : -1;
    if (index >= 0) {
      const ASN1_STRING* cn =
          X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index));
      unsigned char* utf8 = nullptr;
      if (const int len = ASN1_STRING_to_UTF8(&utf8, cn); len > 0) {
        identity.assign(reinterpret_cast<const char*>(utf8),
                        static_cast<size_t>(len));
      }
      OPENSSL_free(utf8);
    }
  }
  X509_free(cert);
  return identity;
}

}  // namespace bulwark::net
