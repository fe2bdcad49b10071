// Small helpers shared by the sessions and UpstreamCall: an nghttp2_nv view of
// a header (nghttp2 copies names and values on submit) and a lookup in a
// HeaderList. Thread-compatible, no allocation.
#ifndef BULWARK_SIDECAR_NET_HEADER_UTIL_H_
#define BULWARK_SIDECAR_NET_HEADER_UTIL_H_

#include <nghttp2/nghttp2.h>

#include <string_view>

#include "sidecar/net/stream_handler.h"

namespace bulwark::net {

inline nghttp2_nv MakeNv(std::string_view name, std::string_view value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())),
                    name.size(), value.size(), NGHTTP2_NV_FLAG_NONE};
}

// The first value of `name` in `headers`, or empty.
inline std::string_view FindHeader(const HeaderList& headers,
                                   std::string_view name) {
  for (const auto& [n, v] : headers) {
    if (n == name) return v;
  }
  return {};
}

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_HEADER_UTIL_H_
