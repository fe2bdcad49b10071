// SingleflightStage: request coalescing in the chain (SPEC section 3). It says
// which calls may be coalesced (unary: the route matches one exact method, or
// descriptor_sets know the method as unary; streaming and unknown methods pass
// untouched), how large a request may be held (`max_request_bytes`; larger
// ones go on as plain calls), and builds a call's key: the method, the
// request bytes, and every value in order of the headers that shape the
// answer (content-type, grpc-encoding, grpc-accept-encoding) and of
// `key_headers`, a header not sent being a different key from one sent empty.
// The flights themselves (who leads, who follows) are the Singleflight policy;
// the driver runs the leader's upstream call and fans the answer out.
//
// Thread-safety: const after construction; the flights are thread-safe. Cost:
// two passes over the request headers into the worker's key buffer, and one
// copy of the key for a call that leads a flight.
#ifndef BULWARK_SIDECAR_CHAIN_SINGLEFLIGHT_STAGE_H_
#define BULWARK_SIDECAR_CHAIN_SINGLEFLIGHT_STAGE_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "bulwark/config/v1/config.pb.h"
#include "policies/singleflight.h"
#include "sidecar/metrics.h"
#include "sidecar/net/stream_handler.h"

namespace bulwark::chain {

using Flights = Singleflight<net::CapturedResponse>;

class SingleflightStage {
 public:
  static constexpr uint64_t kDefaultMaxRequestBytes = 64 * 1024;

  // `unary_methods` ("/pkg.Service/Method", from descriptor_sets) may be null.
  SingleflightStage(const config::v1::Route& route, Flights& flights,
                    RouteMetrics& metrics,
                    const absl::flat_hash_set<std::string>* unary_methods);

  bool Coalescable(std::string_view path) const;
  uint64_t max_request_bytes() const { return max_request_bytes_; }
  bool shadow() const { return shadow_; }
  // The call's key, written into `key` (a reused buffer: no allocation once
  // it is large enough).
  void KeyInto(const net::Call& call, std::string_view body,
               std::string& key) const;
  std::string Key(const net::Call& call, std::string_view body) const;
  Flights& flights() const { return flights_; }
  RouteMetrics& metrics() const { return metrics_; }

  std::string DescribeJson() const;

 private:
  std::vector<std::string> key_headers_;  // shaping headers first, no repeats
  const bool exact_method_;
  const absl::flat_hash_set<std::string>* unary_methods_;
  const bool shadow_;
  uint64_t max_request_bytes_;
  Flights& flights_;
  RouteMetrics& metrics_;
};

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_SINGLEFLIGHT_STAGE_H_
