#include "sidecar/chain/upstream_stage.h"

#include "absl/strings/str_cat.h"

namespace bulwark::chain {

Rejection UpstreamStage::NoHealthyEndpoint() const {
  return {.code = absl::StatusCode::kUnavailable,
          .reason = RejectReason::kNoHealthyEndpoint,
          .message = absl::StrCat("cluster ", cluster_->name(),
                                  " has no healthy endpoint")};
}

}  // namespace bulwark::chain
