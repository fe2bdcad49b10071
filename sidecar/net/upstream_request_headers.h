// UpstreamRequestHeaders: the HTTP/2 request header block the sidecar sends
// upstream for a gRPC call, built once for forwarded calls
// (DownstreamStream::Forward) and for the sidecar's own upstream calls
// (UpstreamCall: singleflight flights, health probes), so both speak the same:
// :method POST, :scheme https towards a TLS endpoint and http towards h2c, the
// path, the client's :authority (or the endpoint's), the request's regular
// headers unchanged and in order (content-type and te: trailers added when
// absent), and grpc-timeout re-encoded from the time the call has left.
//
// The nghttp2_nv entries point into the inputs and into the object itself (the
// re-encoded grpc-timeout), so it can be neither copied nor moved and must not
// outlive the strings it was built from; nghttp2 copies everything on submit.
//
// Thread-compatible. Cost: one vector of about as many entries as headers.
#ifndef BULWARK_SIDECAR_NET_UPSTREAM_REQUEST_HEADERS_H_
#define BULWARK_SIDECAR_NET_UPSTREAM_REQUEST_HEADERS_H_

#include <nghttp2/nghttp2.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/time/time.h"
#include "sidecar/net/stream_handler.h"

namespace bulwark::net {

class UpstreamRequestHeaders {
 public:
  // `headers`: the request's regular headers and, if the client sent one, its
  // :authority (other pseudo-headers and any grpc-timeout are not copied).
  // `authority_fallback`: :authority when `headers` has none. `remaining`: the
  // time the call has left, InfiniteDuration for no deadline. `tls`: the
  // endpoint speaks TLS (":scheme: https").
  UpstreamRequestHeaders(std::string_view path, const HeaderList& headers,
                         std::string_view authority_fallback,
                         absl::Duration remaining, bool tls);
  UpstreamRequestHeaders(const UpstreamRequestHeaders&) = delete;
  UpstreamRequestHeaders& operator=(const UpstreamRequestHeaders&) = delete;

  const nghttp2_nv* data() const { return nv_.data(); }
  size_t size() const { return nv_.size(); }

 private:
  std::string timeout_;  // the grpc-timeout value the nv_ entry points into
  // A typical gRPC request's headers fit inline: no allocation per call.
  absl::InlinedVector<nghttp2_nv, 16> nv_;
};

// What an upstream's first header block says, for the forwarding path and the
// sidecar's own upstream calls alike: an informational (1xx) head to skip, a
// gRPC answer (:status 200), or an HTTP error, with the gRPC status it maps to
// (gRPC's HTTP-to-status table) and the message to give the caller.
struct ResponseHead {
  enum class Kind { kInformational, kGrpc, kHttpError };
  Kind kind = Kind::kGrpc;
  int grpc_code = 0;    // kHttpError only
  std::string message;  // kHttpError only
};
ResponseHead ParseResponseHead(const HeaderList& headers);

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_UPSTREAM_REQUEST_HEADERS_H_
