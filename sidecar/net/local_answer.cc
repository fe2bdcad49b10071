#include "sidecar/net/local_answer.h"

#include <cstdint>
#include <string>

#include "absl/strings/escaping.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "sidecar/net/grpc_framing.h"

namespace bulwark::net {

HeaderList LocalAnswerTrailers(const LocalAnswer& answer) {
  HeaderList fields;
  fields.emplace_back("grpc-status", std::to_string(answer.grpc_code));
  const std::string message =
      TruncateGrpcMessage(answer.message, kMaxLocalMessageBytes);
  if (!message.empty()) {
    fields.emplace_back("grpc-message", PercentEncode(message));
  }
  if (!answer.reason.empty()) {
    fields.emplace_back("x-bulwark-reason", std::string(answer.reason));
  }
  if (answer.retry_pushback_ms >= 0) {
    fields.emplace_back("grpc-retry-pushback-ms",
                        std::to_string(answer.retry_pushback_ms));
  }
  if (!answer.reason.empty()) {
    fields.emplace_back(
        "grpc-status-details-bin",
        Base64Unpadded(RejectionStatusDetails(answer, message)));
  }
  return fields;
}

std::string RejectionStatusDetails(const LocalAnswer& answer,
                                   std::string_view message) {
  google::rpc::Status status;
  status.set_code(answer.grpc_code);
  status.set_message(std::string(message));
  google::rpc::ErrorInfo info;
  info.set_reason(std::string(answer.reason));
  info.set_domain(std::string(kErrorInfoDomain));
  if (!answer.route.empty()) {
    (*info.mutable_metadata())["route"] = std::string(answer.route);
  }
  status.add_details()->PackFrom(info);
  if (answer.retry_pushback_ms >= 0) {
    google::rpc::RetryInfo retry;
    google::protobuf::Duration* delay = retry.mutable_retry_delay();
    delay->set_seconds(answer.retry_pushback_ms / 1000);
    delay->set_nanos(static_cast<int32_t>(answer.retry_pushback_ms % 1000) *
                     1000000);
    status.add_details()->PackFrom(retry);
  }
  return status.SerializeAsString();
}

std::string Base64Unpadded(std::string_view bytes) {
  std::string out =
      absl::Base64Escape(absl::string_view(bytes.data(), bytes.size()));
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

}  // namespace bulwark::net
