#include "policies/singleflight.h"

#include <cstdint>
#include <string>

namespace bulwark {

std::string EncodeSingleflightKey(
    absl::string_view method, absl::string_view request_message,
    absl::Span<const SingleflightKeyHeader> key_headers) {
  std::string key;
  EncodeSingleflightKeyInto(
      method, request_message,
      [key_headers](const auto& emit) {
        for (const SingleflightKeyHeader& header : key_headers) {
          emit(header.name,
               header.value.has_value() ? &*header.value : nullptr);
        }
      },
      key);
  return key;
}

}  // namespace bulwark
