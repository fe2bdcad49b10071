// The admin port's views of a snapshot (SPEC section 4): readiness, the
// /routes JSON (one object per configured policy, last_minute, clusters and
// endpoints) and the gauges refreshed before each /metrics scrape. Pure
// functions of the snapshot and the time given, so tests call them directly.
//
// Thread-safety: called on the admin thread; they read policy state through
// its racy *Approx() snapshots only.
#ifndef BULWARK_SIDECAR_ADMIN_VIEWS_H_
#define BULWARK_SIDECAR_ADMIN_VIEWS_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "sidecar/admin_server.h"
#include "sidecar/snapshot.h"

namespace bulwark {

AdminServer::Readiness ReadinessOf(const Snapshot& snapshot, bool draining);
// `now` on the monotonic clock (last_minute, seconds since the last probe).
std::string RoutesJson(const Snapshot& snapshot, absl::Time now,
                       int64_t open_streams);
void RefreshGauges(const Snapshot& snapshot);

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_ADMIN_VIEWS_H_
