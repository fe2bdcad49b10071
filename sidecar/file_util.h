// ReadConfigFile: reads a file the configuration names (the config file
// itself, descriptor sets, certificates, keys, CA bundles, password files)
// whole into memory, refusing anything that is not a regular file of at most
// 16 MiB (SPEC section 11). A FIFO, a device such as /dev/zero, a directory or
// a socket is an error at once, never a blocked or endless read: the file is
// opened with O_NONBLOCK and fstat'ed before a byte is read, and at most
// max_bytes + 1 bytes are ever read (a file growing under the read is caught
// too).
//
// Thread-safe (no shared state). Cost: one open, one fstat, reads of the
// file's size; memory: the file's content.
#ifndef BULWARK_SIDECAR_FILE_UTIL_H_
#define BULWARK_SIDECAR_FILE_UTIL_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace bulwark {

// The largest file the loader reads (SPEC section 11).
inline constexpr size_t kMaxConfigFileBytes = size_t{16} << 20;

// The whole content of `path`. On failure the status message is the reason
// only ("No such file or directory", "Is a directory", "not a regular file (a
// FIFO)", "larger than 16 MiB (17825792 bytes)"): callers add what the file is
// and where it was named. Codes: NotFound (ENOENT, ENOTDIR), PermissionDenied
// (EACCES, EPERM), FailedPrecondition (anything else about the file itself),
// ResourceExhausted (out of memory while reading). Never throws.
absl::StatusOr<std::string> ReadConfigFile(
    const std::string& path, size_t max_bytes = kMaxConfigFileBytes);

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_FILE_UTIL_H_
