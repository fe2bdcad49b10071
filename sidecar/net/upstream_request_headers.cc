#include "sidecar/net/upstream_request_headers.h"

#include "sidecar/net/grpc_framing.h"
#include "sidecar/net/header_util.h"

namespace bulwark::net {

UpstreamRequestHeaders::UpstreamRequestHeaders(
    std::string_view path, const HeaderList& headers,
    std::string_view authority_fallback, absl::Duration remaining, bool tls) {
  nv_.reserve(headers.size() + 7);
  nv_.push_back(MakeNv(":method", "POST"));
  nv_.push_back(MakeNv(":scheme", tls ? "https" : "http"));
  nv_.push_back(MakeNv(":path", path));
  std::string_view authority = FindHeader(headers, ":authority");
  nv_.push_back(
      MakeNv(":authority", authority.empty() ? authority_fallback : authority));
  bool have_te = false;
  bool have_content_type = false;
  for (const auto& [name, value] : headers) {
    if (name.empty() || name[0] == ':' || name == "grpc-timeout") continue;
    have_te |= name == "te";
    have_content_type |= name == "content-type";
    nv_.push_back(MakeNv(name, value));
  }
  if (!have_content_type) {
    nv_.push_back(MakeNv("content-type", "application/grpc"));
  }
  if (!have_te) nv_.push_back(MakeNv("te", "trailers"));
  if (remaining != absl::InfiniteDuration()) {
    timeout_ = EncodeGrpcTimeout(remaining);
    nv_.push_back(MakeNv("grpc-timeout", timeout_));
  }
}

}  // namespace bulwark::net
