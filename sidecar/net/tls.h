// TlsContext: an OpenSSL SSL_CTX for one side of the sidecar, built from the
// configuration's PEM files: the listener (server; client_ca_file => clients
// must present a certificate signed by it, i.e. mTLS) or an upstream cluster
// (client; verifies the upstream against ca_file or the system roots, optional
// client certificate, server name for SNI and the host-name check). Both
// negotiate ALPN "h2". Files are read when the context is built, so a reload
// that builds a new one picks up rotated certificates.
//
// Thread-safety: immutable once built; one context serves every worker
// (OpenSSL's SSL_CTX is safe to share for creating connections). Cost: the
// handshake per connection; nothing per call.
#ifndef BULWARK_SIDECAR_NET_TLS_H_
#define BULWARK_SIDECAR_NET_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

namespace bulwark::net {

struct TlsServerFiles {
  std::string cert_file;
  std::string key_file;
  std::string client_ca_file;  // empty: no client certificate asked for
};

struct TlsClientFiles {
  std::string ca_file;  // empty: the system's default roots
  std::string
      cert_file;  // client certificate (with key_file) for upstream mTLS
  std::string key_file;
  std::string
      server_name;  // SNI and the name checked; empty: the endpoint's host
};

class TlsContext {
 public:
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Server(
      const TlsServerFiles& files);
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Client(
      const TlsClientFiles& files);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // A new connection object for `fd` (server or client state set). nullptr on
  // failure. `peer_name`: for a client, the name to send as SNI and verify
  // (server_name wins).
  SSL* NewConnection(int fd, const std::string& peer_name) const;
  bool is_server() const { return server_; }
  // Distinguishes contexts (e.g. in connection keys): unique per built context.
  uint64_t id() const { return id_; }

 private:
  TlsContext(SSL_CTX* ctx, bool server, std::string server_name);
  SSL_CTX* ctx_;
  bool server_;
  std::string server_name_;
  uint64_t id_;
};

// The last OpenSSL error as text (clears the error queue).
std::string TlsErrorString();

// The identity of the peer certificate of an established connection (SPEC
// section 8, `key: PEER_IDENTITY`): its first URI subjectAltName, else its
// subject's commonName; "" without a certificate or with neither. Cost: one
// certificate parse; read it once per connection.
std::string PeerCertificateIdentity(SSL* ssl);

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_TLS_H_
