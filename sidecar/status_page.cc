#include "sidecar/status_page.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sidecar/metrics.h"

namespace bulwark {
namespace {

// The page's style and script. The script renders the same rows as the
// server does below (keep the two in step: RouteRow / EndpointRow).
constexpr char kHead[] = R"html(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bulwark status</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d232a; background: #fbfbfc; }
header { display: flex; align-items: baseline; gap: 1em; }
h1 { font-size: 1.4em; margin: 0; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
#updated { color: #5b6570; }
body.stale #updated { color: #b3261e; font-weight: 600; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
th { font-weight: 600; color: #5b6570; font-size: .9em; }
td.num { font-variant-numeric: tabular-nums; text-align: right; }
.state { display: inline-block; padding: .05em .5em; border-radius: .8em; font-weight: 600; font-size: .9em; }
.closed, .healthy { background: #dff3e3; color: #1b6b2f; }
.open, .unhealthy { background: #fbe0de; color: #a1231b; }
.half_open { background: #fff1cc; color: #7a5600; }
.none { color: #9aa3ad; }
.rej { color: #a1231b; }
</style>
</head>
<body>
)html";

constexpr char kScript[] = R"html(<script>
(function () {
  "use strict";
  var esc = function (s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  };
  var none = '<span class="none">&mdash;</span>';
  function rejections(r) {
    var parts = [];
    Object.keys(r).forEach(function (k) { if (r[k] > 0) parts.push(esc(k) + " " + r[k]); });
    return parts.length ? '<span class="rej">' + parts.join(", ") + "</span>" : none;
  }
  function routeRow(r) {
    var lm = r.last_minute || {calls: 0, coalesced: 0, rejections: {}};
    var b = r.circuit_breaker, c = r.concurrency, rl = r.rate_limit;
    return '<tr data-route="' + esc(r.name) + '" data-breaker="' + (b ? esc(b.state) : "") +
      '" data-source="routes"><td>' + esc(r.name) + "</td><td>" + esc(r.cluster) + "</td><td>" +
      (b ? '<span class="state ' + esc(b.state) + '">' + esc(b.state) + "</span>" : none) +
      '</td><td class="num">' + (rl ? Math.floor(rl.tokens) : none) +
      '</td><td class="num">' + (c ? c.in_flight + " / " + c.limit : none) +
      '</td><td class="num">' + (c ? c.queued : none) +
      '</td><td class="num">' + lm.calls +
      '</td><td class="num">' + (r.singleflight ? (lm.calls ? Math.round(100 * lm.coalesced / lm.calls) : 0) + " %" : none) +
      '</td><td class="num">' + (r.retry ? Math.floor(r.retry.budget_left) : none) +
      "</td><td>" + rejections(lm.rejections) + "</td></tr>";
  }
  function endpointRows(c) {
    return c.endpoints.map(function (e) {
      var h = e.healthy ? "healthy" : "unhealthy";
      return '<tr data-endpoint="' + esc(e.resolved) + '" data-health="' + h +
        '" data-source="routes"><td>' + esc(c.name) + "</td><td>" + esc(e.resolved) +
        '</td><td><span class="state ' + h + '">' + h + "</span></td><td>" +
        (e.ejected ? '<span class="state open">ejected' +
          (e.ejection_seconds_left ? " " + Math.ceil(e.ejection_seconds_left) + " s" : "") +
          "</span>" : none) +
        '</td><td class="num">' + e.in_flight + "</td></tr>";
    }).join("");
  }
  function refresh() {
    fetch("/routes", {cache: "no-store"}).then(function (res) {
      if (!res.ok) throw new Error("HTTP " + res.status);
      return res.json();
    }).then(function (s) {
      document.querySelector("#routes tbody").innerHTML = s.routes.map(routeRow).join("");
      document.querySelector("#endpoints tbody").innerHTML = s.clusters.map(endpointRows).join("");
      document.getElementById("updated").textContent = "live, updated " + new Date().toLocaleTimeString();
      document.body.classList.remove("stale");
    }).catch(function (e) {
      document.getElementById("updated").textContent = "cannot reach /routes (" + e.message + "); showing the last state";
      document.body.classList.add("stale");
    });
  }
  refresh();
  setInterval(refresh, 2000);
})();
</script>
)html";

constexpr char kNone[] = "<span class=\"none\">&mdash;</span>";

std::string RouteRow(const Route& route, absl::Time now) {
  const RecentActivity::Counts lm = route.state->recent.LastMinuteApprox(now);
  std::string breaker_state;
  std::string breaker = kNone;
  if (route.breaker != nullptr) {
    breaker_state = std::string(CircuitBreaker::StateName(
        route.breaker->breaker().SnapshotApprox().state));
    breaker = absl::StrCat("<span class=\"state ", breaker_state, "\">",
                           breaker_state, "</span>");
  }
  std::string tokens = kNone, in_flight = kNone, queued = kNone;
  if (route.rate_limit != nullptr) {
    tokens =
        absl::StrCat(static_cast<int64_t>(route.rate_limit->TokensApprox()));
  }
  if (route.concurrency != nullptr) {
    const ConcurrencyLimiter& limiter = route.concurrency->limiter();
    in_flight =
        absl::StrCat(limiter.InFlightApprox(), " / ", limiter.LimitApprox());
    queued = absl::StrCat(limiter.QueuedApprox());
  }
  std::string coalesced = kNone;
  if (route.singleflight != nullptr) {
    coalesced = absl::StrCat(
        lm.calls > 0 ? (100 * lm.coalesced + lm.calls / 2) / lm.calls : 0,
        " %");
  }
  std::string budget = kNone;
  if (route.upstream->retry() != nullptr) {
    budget = absl::StrCat(
        static_cast<int64_t>(route.upstream->budget()->AvailableApprox(now)));
  }
  std::string rejections;
  for (int i = 0; i < kRejectReasonCount; ++i) {
    const auto reason = static_cast<RejectReason>(i);
    if (reason == RejectReason::kCoalesced || lm.rejections[i] == 0) continue;
    absl::StrAppend(&rejections, rejections.empty() ? "" : ", ",
                    std::string(RejectReasonName(reason)), " ",
                    lm.rejections[i]);
  }
  rejections = rejections.empty() ? std::string(kNone)
                                  : absl::StrCat("<span class=\"rej\">",
                                                 rejections, "</span>");
  const std::string name = HtmlEscape(route.name);
  return absl::StrCat(
      "<tr data-route=\"", name, "\" data-breaker=\"", breaker_state,
      "\" data-source=\"server\"><td>", name, "</td><td>",
      HtmlEscape(route.cluster->name()), "</td><td>", breaker,
      "</td><td class=\"num\">", tokens, "</td><td class=\"num\">", in_flight,
      "</td><td class=\"num\">", queued, "</td><td class=\"num\">", lm.calls,
      "</td><td class=\"num\">", coalesced, "</td><td class=\"num\">", budget,
      "</td><td>", rejections, "</td></tr>\n");
}

std::string EndpointRow(const Cluster& cluster, const Endpoint& endpoint,
                        absl::Time now) {
  const char* health = endpoint.load.healthy.load(std::memory_order_relaxed)
                           ? "healthy"
                           : "unhealthy";
  const std::string resolved = HtmlEscape(endpoint.resolved);
  std::string ejected = kNone;
  if (endpoint.load.ejected.load(std::memory_order_relaxed)) {
    ejected = "<span class=\"state open\">ejected";
    if (endpoint.outlier != nullptr) {
      const OutlierState::Snapshot o = endpoint.outlier->GetSnapshot(now);
      if (!o.until_serving && o.time_left > absl::ZeroDuration()) {
        absl::StrAppend(
            &ejected, " ",
            absl::ToInt64Seconds(absl::Ceil(o.time_left, absl::Seconds(1))),
            " s");
      }
    }
    ejected += "</span>";
  }
  return absl::StrCat(
      "<tr data-endpoint=\"", resolved, "\" data-health=\"", health,
      "\" data-source=\"server\"><td>", HtmlEscape(cluster.name()), "</td><td>",
      resolved, "</td><td><span class=\"state ", health, "\">", health,
      "</span></td><td>", ejected, "</td><td class=\"num\">",
      endpoint.load.in_flight.load(std::memory_order_relaxed), "</td></tr>\n");
}

}  // namespace

std::string HtmlEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string StatusPageHtml(const Snapshot& snapshot, absl::Time now,
                           std::string_view version) {
  std::string out = kHead;
  absl::StrAppend(
      &out, "<header><h1>Bulwark</h1><span>", HtmlEscape(version),
      "</span><span id=\"updated\">state as of this page's load</span>"
      "</header>\n<main>\n<h2>Routes</h2>\n<table id=\"routes\"><thead><tr>"
      "<th>route</th><th>cluster</th><th>breaker</th><th>tokens</th>"
      "<th>in flight / limit</th><th>queued</th><th>calls (1 min)</th>"
      "<th>coalesced</th><th>retry budget</th><th>rejections (1 min)</th>"
      "</tr></thead><tbody>\n");
  for (const auto& route : snapshot.routes->routes()) {
    out += RouteRow(*route, now);
  }
  out +=
      "</tbody></table>\n<h2>Endpoints</h2>\n<table id=\"endpoints\"><thead>"
      "<tr><th>cluster</th><th>endpoint</th><th>health</th><th>ejected</th>"
      "<th>in flight</th></tr></thead><tbody>\n";
  for (const auto& cluster : snapshot.cluster_list) {
    for (const auto& endpoint : cluster->endpoints()) {
      out += EndpointRow(*cluster, *endpoint, now);
    }
  }
  out += "</tbody></table>\n</main>\n";
  out += kScript;
  out += "</body>\n</html>\n";
  return out;
}

}  // namespace bulwark
