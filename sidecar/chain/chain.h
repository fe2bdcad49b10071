// The call chain driver (SPEC section 3). For each downstream call, in order:
//   route -> rate_limit -> circuit_breaker -> singleflight -> concurrency ->
//   pick a healthy endpoint -> upstream
// each a stage of the route (sidecar/chain/*_stage.h) that returns a verdict:
// continue, answer locally, or park. The driver alone answers a call, and it
// settles what the call holds when it ends: the breaker ticket (by the breaker
// stage's one rule), the permit, the flight membership, endpoint load and the
// metrics.
//
// Continuations: a call parked for a concurrency slot or for a flight is a
// stored continuation; the policy calls back on any thread, the driver posts
// to the call's executor and looks the call up by id (the client may have
// left). Those posts carry the route's state (shared_ptr), so a reload never
// frees a limiter under a posted permit.
//
// Singleflight: a coalescable unary call is held until the client half-closes
// (at most `max_request_bytes`, else it goes on as a plain call); its key
// joins a flight. The leader's upstream call is a FlightCall, owned by the
// leader's worker (ProxyHandler), not by any caller: it holds the flight's
// breaker ticket, permit and endpoint load and runs until the route timeout
// or until its last caller leaves (the latest caller deadline). Each caller
// leaves alone when its own deadline passes. A follower whose leader left
// before going upstream runs the chain again from the breaker (it may become
// the leader and then passes the breaker and the semaphore like any leader).
// An answer too large to share reaches each caller by its own upstream call.
// A shadow singleflight only counts (`coalesced`); each call sends its held
// request upstream on its own stream, so the call leaving cancels it.
//
// Thread-safety: worker thread only, except the policies' callbacks (post).
// Cost per call: one route lookup, one allocation (the ChainCall), the policy
// decisions, two metric updates.
#ifndef BULWARK_SIDECAR_CHAIN_CHAIN_H_
#define BULWARK_SIDECAR_CHAIN_CHAIN_H_

#include <cstdint>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "sidecar/net/stream_handler.h"
#include "sidecar/snapshot.h"

namespace bulwark::chain {

class FlightCall;

// The transport's CallHandler for one worker: matches the route, arms the
// deadline and runs the chain; owns the flights led from this worker.
class ProxyHandler final : public net::CallHandler {
 public:
  ProxyHandler(net::Executor& executor,
               std::shared_ptr<const Snapshot> snapshot);
  ~ProxyHandler() override;

  void OnCall(net::Call& call) override;
  // Worker thread only (post it): new calls use `snapshot`, calls in flight
  // keep theirs.
  void SetSnapshot(std::shared_ptr<const Snapshot> snapshot) {
    snapshot_ = std::move(snapshot);
  }

  // Flight calls of this worker, by id (worker thread only).
  uint64_t NextFlightId() { return ++last_flight_id_; }
  void AddFlight(uint64_t id, std::unique_ptr<FlightCall> flight);
  // The flight's upstream call ended (`finished`) or every caller left (it is
  // cancelled: its outcome is a deadline expiry if the last caller left on
  // its deadline, else a cancellation).
  void EndFlight(uint64_t id, bool deadline_expired, bool finished = false);
  size_t FlightsRunning() const { return flights_.size(); }
  net::Executor& executor() { return executor_; }
  // The worker's buffer for singleflight keys: a key is built here, looked
  // up, and copied only by a call that leads a flight.
  std::string& key_buffer() { return key_buffer_; }
  // Whether this call's line goes to the access log (`sample` of OK calls,
  // `errors_only`). The worker's own generator: no lock.
  bool KeepInAccessLog(const config::v1::AccessLog& config, bool ok) {
    if (!ok) return true;
    if (config.errors_only()) return false;
    return config.sample() >= 1.0 ||
           absl::Uniform(rng_, 0.0, 1.0) < config.sample();
  }

 private:
  net::Executor& executor_;
  absl::InsecureBitGen rng_;
  std::shared_ptr<const Snapshot> snapshot_;
  uint64_t last_flight_id_ = 0;
  absl::flat_hash_map<uint64_t, std::unique_ptr<FlightCall>> flights_;
  std::string key_buffer_;
};

}  // namespace bulwark::chain

#endif  // BULWARK_SIDECAR_CHAIN_CHAIN_H_
