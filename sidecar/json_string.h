// JsonString: a string as a JSON string literal (quotes, backslash escapes,
// \u00XX for other control bytes), for the hand-built JSON of the admin views
// and bulwark-bench's reports. Thread-safety: a pure function. Cost: one pass
// and one allocation.
#ifndef BULWARK_SIDECAR_JSON_STRING_H_
#define BULWARK_SIDECAR_JSON_STRING_H_

#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace bulwark {

inline std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_JSON_STRING_H_
