// HostPort and ParseHostPort: the "host:port" addresses of the configuration
// (listener, admin, cluster endpoints). Parsing is pure string work (no DNS
// lookup), so it is thread-safe and costs O(length of the text); a DNS name is
// checked for shape only and is resolved later by whoever connects to it.
#ifndef BULWARK_SIDECAR_HOST_PORT_H_
#define BULWARK_SIDECAR_HOST_PORT_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace bulwark {

// A parsed address. `host` is an IPv4 literal, an IPv6 literal without brackets
// ("::1") or a DNS name; ToString() adds the brackets back for IPv6. A plain
// value type.
struct HostPort {
  std::string host;
  uint16_t port = 0;

  // "host:port", "[v6]:port" for IPv6 literals: the form ParseHostPort accepts.
  std::string ToString() const;

  friend bool operator==(const HostPort&, const HostPort&) = default;
};

// Whether port 0 is accepted. Listening addresses may say 0 (the kernel picks
// an ephemeral port, which the tests rely on); an endpoint to connect to never
// can.
enum class PortZero { kReject, kAllow };

// Parses "host:port", "1.2.3.4:80", "[::1]:80" or "dns-name.example:443".
// Returns InvalidArgument with a message that quotes the text, e.g.
//   expected host:port (got "localhost")
//   port out of range (got 70000, expected 1..65535)
// Callers prefix the field path. Thread-safe, no I/O.
absl::StatusOr<HostPort> ParseHostPort(std::string_view text,
                                       PortZero port_zero = PortZero::kReject);

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_HOST_PORT_H_
