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

// Appends `s` as a JSON string literal to `out`: no temporary, and a plain
// copy when nothing needs escaping (the access log's hot path).
inline void AppendJsonString(std::string& out, absl::string_view s) {
  out += '"';
  size_t plain = 0;  // start of the run not yet copied
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + plain, i - plain);
    plain = i + 1;
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
        out += absl::StrFormat("\\u%04x", c);
    }
  }
  out.append(s.data() + plain, s.size() - plain);
  out += '"';
}

inline std::string JsonString(absl::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  AppendJsonString(out, s);
  return out;
}

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_JSON_STRING_H_
