// The call chain (SPEC section 3): for each downstream call, in this order,
//   route -> rate_limit -> circuit_breaker -> singleflight -> concurrency ->
//   pick healthy endpoint -> upstream
// and, when the call ends, the settlement: breaker outcome, permit release,
// endpoint load, metrics. ProxyHandler is the transport's CallHandler for one
// worker; ProxyCall is the per-call state it attaches to the transport's Call
// as its observer, so it lives exactly as long as the downstream stream and
// releases what it holds on every path.
//
// A call waiting for a concurrency slot is a stored continuation: the limiter's
// callback posts to the call's own worker, which looks the call up by id (the
// client may have left).
//
// Singleflight: a coalescable unary call is held until the client half-closes;
// its key is method + request bytes + key header values. The leader's upstream
// call is a FlightCall (an UpstreamCall owned by the leader's worker, not by
// any caller), so it survives its own caller leaving while followers wait; it
// holds the flight's breaker ticket, semaphore permit and endpoint load, and
// fans its captured response out to every caller, each on its own worker. When
// the last caller leaves, the flight call is cancelled.
//
// Thread-safety: worker thread only, except the limiter callback (any thread,
// posts). Cost per call: one route lookup, one shared_ptr copy of the snapshot,
// the policy decisions, two metric updates.
#ifndef BULWARK_SIDECAR_PROXY_STREAM_H_
#define BULWARK_SIDECAR_PROXY_STREAM_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "bulwark/config/v1/config.pb.h"
#include "sidecar/config_loader.h"
#include "sidecar/net/stream_handler.h"
#include "sidecar/net/worker.h"
#include "sidecar/route_table.h"

namespace bulwark {

// One immutable configuration in force: what a call keeps for its whole life.
struct Snapshot {
  LoadedConfig config;
  absl::flat_hash_map<std::string, std::shared_ptr<Cluster>> clusters;
  std::vector<std::shared_ptr<Cluster>> cluster_list;  // file order
  std::unique_ptr<RouteTable> routes;
  std::string config_json;
};

class FlightCall;

class ProxyHandler final : public net::CallHandler {
 public:
  ProxyHandler(net::Worker& worker, std::shared_ptr<const Snapshot> snapshot);
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
  void EndFlight(uint64_t id);
  net::Worker& worker() { return worker_; }

 private:
  net::Worker& worker_;
  std::shared_ptr<const Snapshot> snapshot_;
  uint64_t last_flight_id_ = 0;
  absl::flat_hash_map<uint64_t, std::unique_ptr<FlightCall>> flights_;
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_PROXY_STREAM_H_
