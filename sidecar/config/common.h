// What the parts of the configuration loader (yaml_to_proto, defaults,
// validator, summary) share: quoting a value into an error line, converting
// and printing durations, and the short names pb and cfg for the protobuf and
// config namespaces. Internal to sidecar/config/ and sidecar/config_loader.cc.
//
// Thread-safety: pure functions. Cost: one small string or message per call.
#ifndef BULWARK_SIDECAR_CONFIG_COMMON_H_
#define BULWARK_SIDECAR_CONFIG_COMMON_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "bulwark/config/v1/config.pb.h"
#include "google/protobuf/duration.pb.h"

namespace bulwark::config_internal {

namespace pb = ::google::protobuf;
namespace cfg = ::bulwark::config::v1;

// Long scalars are cut in messages: the point is to recognise the value, not to
// echo a pasted certificate back.
inline constexpr size_t kMaxQuotedValue = 60;

// Escaped so that every error stays on its own line whatever the value holds.
inline std::string Quote(absl::string_view value) {
  const bool cut = value.size() > kMaxQuotedValue;
  return absl::StrCat("\"",
                      absl::Utf8SafeCEscape(value.substr(0, kMaxQuotedValue)),
                      cut ? "...\"" : "\"");
}

// "0s" rather than absl's "0", so every duration in a message reads as one.
inline std::string FormatDurationForHumans(absl::Duration d) {
  if (d == absl::ZeroDuration()) return "0s";
  return absl::FormatDuration(d);
}

inline pb::Duration ToProtoDuration(absl::Duration d) {
  absl::Duration remainder;
  const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &remainder);
  pb::Duration out;
  out.set_seconds(seconds);
  out.set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(remainder)));
  return out;
}

}  // namespace bulwark::config_internal

#endif  // BULWARK_SIDECAR_CONFIG_COMMON_H_
