// What a stage of the call chain decides for one call (SPEC section 3), and
// the upstream outcome the breaker stage settles from. A stage returns a
// Verdict: go on to the next stage, answer the call locally with a Rejection,
// or park it (the stage stored a continuation that resumes the chain later on
// the call's own worker). Only the chain driver acts on a verdict.
//
// Thread-safety: plain values. Cost: a Rejection carries one string, built
// only when a call is rejected.
#ifndef BULWARK_SIDECAR_CHAIN_VERDICT_H_
#define BULWARK_SIDECAR_CHAIN_VERDICT_H_

#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "sidecar/metrics.h"

namespace bulwark::chain {

// A call answered by the sidecar itself: trailers-only, with
// x-bulwark-reason, grpc-retry-pushback-ms when `pushback` is finite, and
// grpc-status-details-bin.
struct Rejection {
  absl::StatusCode code = absl::StatusCode::kUnavailable;
  // Unset for a deadline that passed while the call waited (DEADLINE_EXCEEDED
  // is no policy's rejection).
  std::optional<RejectReason> reason;
  std::string message;
  absl::Duration pushback = absl::InfiniteDuration();  // infinite: none
};

struct Verdict {
  enum class Kind { kContinue, kAnswer, kPark };
  Kind kind = Kind::kContinue;
  Rejection rejection;  // kAnswer only

  static Verdict Continue() { return {}; }
  static Verdict Park() { return {.kind = Kind::kPark}; }
  static Verdict Answer(Rejection rejection) {
    return {.kind = Kind::kAnswer, .rejection = std::move(rejection)};
  }
};

// How one upstream call went, the same for a forwarded stream, a flight and a
// shadow flight: what the breaker stage classifies (one rule for every path).
struct UpstreamOutcome {
  enum class Kind {
    kNotSent,           // the sidecar answered before anything went upstream
    kAnswered,          // the upstream answered with `grpc_code`
    kTransportFailure,  // unreachable (refused, reset, held back by backoff) or
                        // the connection broke
    kRefused,   // refused unseen (REFUSED_STREAM, GOAWAY): not a failure
    kDeadline,  // the call's deadline passed with the upstream holding it
    kClientCancelled,  // the caller left: neither success nor failure
  };
  Kind kind = Kind::kNotSent;
  int grpc_code = 2;
  // How long the upstream had the call (for kDeadline: deadline_failure_min).
  absl::Duration upstream_time = absl::ZeroDuration();
};

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_VERDICT_H_
