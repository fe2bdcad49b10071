// The views of a loaded configuration for people: SummarizeConfig (a few lines
// for `bulwark --validate`) and ConfigToJson (GET /config), declared in
// sidecar/config_loader.h and defined in summary.cc, and the one-line
// descriptions of a route's match, a route's policies and a cluster they are
// built from. They describe; they decide nothing.
//
// Thread-safety: pure functions of a configuration that does not change while
// they run. Cost: linear in the configuration; off the data path.
#ifndef BULWARK_SIDECAR_CONFIG_SUMMARY_H_
#define BULWARK_SIDECAR_CONFIG_SUMMARY_H_

#include <string>

#include "sidecar/config/common.h"
#include "sidecar/config_loader.h"

namespace bulwark::config_internal {

// "/pkg.Service/Method", "/pkg.Service/*", "prefix /pkg." or "all calls".
std::string DescribeMatch(const cfg::RouteMatch& match);

// The route's timeout and policies with their main numbers, "; "-separated
// ("no policies" when there are none).
std::string DescribePolicies(const cfg::Route& route);

// Name, endpoints, balancing, tls and health check of a cluster.
std::string DescribeCluster(const cfg::Cluster& cluster);

}  // namespace bulwark::config_internal

#endif  // BULWARK_SIDECAR_CONFIG_SUMMARY_H_
