#include "sidecar/net/upstream_request_headers.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "sidecar/net/grpc_framing.h"
#include "sidecar/net/header_util.h"

namespace bulwark::net {

UpstreamRequestHeaders::UpstreamRequestHeaders(
    std::string_view path, const HeaderList& headers,
    std::string_view authority_fallback, absl::Duration remaining, bool tls) {
  using std::string_view_literals::operator""sv;
  nv_.reserve(headers.size() + 7);
  nv_.push_back(MakeNv(":method", "POST"));
  nv_.push_back(MakeNv(":scheme", tls ? "https" : "http"));
  nv_.push_back(MakeNv(":path", path));
  nv_.push_back(MakeNv(":authority", authority_fallback));  // or the client's
  // One pass, names compared by length first (this runs for every call).
  bool have_te = false;
  bool have_content_type = false;
  for (const auto& [name, value] : headers) {
    if (name.empty()) continue;
    if (name[0] == ':') {
      if (name == ":authority"sv && !value.empty())
        nv_[3] = MakeNv(name, value);
      continue;
    }
    if (name.size() == 12) {
      if (name == "grpc-timeout"sv) continue;
      have_content_type |= name == "content-type"sv;
    } else if (name.size() == 2) {
      have_te |= name == "te"sv;
    }
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

ResponseHead ParseResponseHead(const HeaderList& headers) {
  const std::string_view status = FindHeader(headers, ":status");
  if (!status.empty() && status[0] == '1') {
    return {.kind = ResponseHead::Kind::kInformational};
  }
  if (status == "200") return {.kind = ResponseHead::Kind::kGrpc};
  const int http_status = std::atoi(std::string(status).c_str());
  return {
      .kind = ResponseHead::Kind::kHttpError,
      .grpc_code = GrpcCodeFromHttpStatus(http_status),
      .message = absl::StrCat("upstream answered HTTP status ",
                              absl::string_view(status.data(), status.size()))};
}

}  // namespace bulwark::net
