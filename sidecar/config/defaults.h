// The documented defaults (SPEC section 2, also listed in config.proto),
// filled into a configuration the YAML left incomplete. Listener and admin
// always exist; inside a cluster or route only the blocks that are present get
// defaults, since an absent policy block means that policy is off. A plain
// string or list the YAML spelled out, even as "" or [], is kept (FieldPresence
// says which): an explicit `failure_codes: []` stays empty.
//
// Thread-safety: a pure function of its arguments (it writes `config` only).
// Cost: linear in the number of clusters and routes.
#ifndef BULWARK_SIDECAR_CONFIG_DEFAULTS_H_
#define BULWARK_SIDECAR_CONFIG_DEFAULTS_H_

#include "sidecar/config/common.h"
#include "sidecar/config/yaml_to_proto.h"

namespace bulwark::config_internal {

void FillDefaults(cfg::Config& config, const FieldPresence& presence);

}  // namespace bulwark::config_internal

#endif  // BULWARK_SIDECAR_CONFIG_DEFAULTS_H_
