#include "sidecar/recent_activity.h"

#include "absl/strings/str_cat.h"

namespace bulwark {

std::string RecentActivity::LastMinuteJson(absl::Time now) const {
  const Counts counts = LastMinuteApprox(now);
  std::string out = absl::StrCat("{\"calls\": ", counts.calls,
                                 ", \"coalesced\": ", counts.coalesced,
                                 ", \"rejections\": {");
  bool first = true;
  for (int i = 0; i < kRejectReasonCount; ++i) {
    const auto reason = static_cast<RejectReason>(i);
    if (reason == RejectReason::kCoalesced) continue;  // not a rejection
    absl::StrAppend(&out, first ? "" : ", ", "\"",
                    std::string(RejectReasonName(reason)),
                    "\": ", counts.rejections[i]);
    first = false;
  }
  out += "}}";
  return out;
}

}  // namespace bulwark
