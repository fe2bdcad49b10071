// The status page at GET / on the admin port (SPEC section 10): what a person
// reads during an incident. Every route with its policies' live state (the
// breaker's state in colour, tokens, the concurrency limit with calls in
// flight and queued, the coalesced share and rejections by reason over the
// last minute) and every cluster's endpoints (healthy, in flight).
//
// The page is rendered here, on the server, so that it shows the state as of
// its load without JavaScript; a small inline script then fetches /routes
// every 2 s and renders the same tables from it. Everything is inline (no
// external script, font or style), so it works offline.
//
// Thread-safety: reads the snapshot's atomics only (racy snapshots, like
// /routes).
#ifndef BULWARK_SIDECAR_STATUS_PAGE_H_
#define BULWARK_SIDECAR_STATUS_PAGE_H_

#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "sidecar/snapshot.h"

namespace bulwark {

// `now` is the policies' clock (the last minute's window); `version` is shown
// in the header.
std::string StatusPageHtml(const Snapshot& snapshot, absl::Time now,
                           std::string_view version);

// `text` with &, <, >, " and ' escaped for HTML.
std::string HtmlEscape(std::string_view text);

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_STATUS_PAGE_H_
