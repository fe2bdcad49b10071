// The header fields of a gRPC answer the sidecar makes itself (SPEC sections 3
// and 11): grpc-status, grpc-message (cut to kMaxLocalMessageBytes on the
// wire, percent-encoded), x-bulwark-reason, grpc-retry-pushback-ms and, on
// every rejection (an answer with a reason), grpc-status-details-bin: a
// google.rpc.Status with the same code and message, a google.rpc.ErrorInfo
// {reason, domain "bulwark.io", metadata {route}} and, with a pushback, a
// google.rpc.RetryInfo with the same delay.
//
// Pure functions; thread-compatible. Cost: a few small allocations and one
// protobuf serialization per rejection, nothing on forwarded calls.
#ifndef BULWARK_SIDECAR_NET_LOCAL_ANSWER_H_
#define BULWARK_SIDECAR_NET_LOCAL_ANSWER_H_

#include <string>
#include <string_view>

#include "sidecar/net/stream_handler.h"

namespace bulwark::net {

inline constexpr std::string_view kErrorInfoDomain = "bulwark.io";

// The trailer fields of `answer` (no :status or content-type), in wire form.
HeaderList LocalAnswerTrailers(const LocalAnswer& answer);

// The serialized google.rpc.Status of a rejection (`answer.reason` not empty),
// with `message` as the status message.
std::string RejectionStatusDetails(const LocalAnswer& answer,
                                   std::string_view message);

// Base64 without padding, as gRPC sends -bin header values (gRPC accepts both
// padded and unpadded).
std::string Base64Unpadded(std::string_view bytes);

}  // namespace bulwark::net

#endif  // BULWARK_SIDECAR_NET_LOCAL_ANSWER_H_
