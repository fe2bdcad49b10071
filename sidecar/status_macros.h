// The one status macro the project keeps: our Abseil (20220623) has no
// ABSL_RETURN_IF_ERROR.
#ifndef BULWARK_SIDECAR_STATUS_MACROS_H_
#define BULWARK_SIDECAR_STATUS_MACROS_H_

#include "absl/status/status.h"

#define BULWARK_RETURN_IF_ERROR(expr)                       \
  do {                                                      \
    if (::absl::Status _st = (expr); !_st.ok()) return _st; \
  } while (0)

#endif  // BULWARK_SIDECAR_STATUS_MACROS_H_
