#include "sidecar/host_port.h"

#include <arpa/inet.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace bulwark {
namespace {

// RFC 1035 limits, the name counted without its trailing dot.
constexpr size_t kMaxHostNameLength = 253;
constexpr size_t kMaxLabelLength = 63;

// The text is escaped so that a stray newline cannot split an error line.
absl::Status Invalid(absl::string_view what, absl::string_view text) {
  return absl::InvalidArgumentError(
      absl::StrCat(what, " (got \"", absl::Utf8SafeCEscape(text), "\")"));
}

bool IsIpv4Literal(const std::string& host) {
  in_addr addr;
  return inet_pton(AF_INET, host.c_str(), &addr) == 1;
}

bool IsIpv6Literal(const std::string& host) {
  in6_addr addr;
  return inet_pton(AF_INET6, host.c_str(), &addr) == 1;
}

bool IsDnsLabel(absl::string_view label) {
  if (label.empty() || label.size() > kMaxLabelLength) return false;
  if (label.front() == '-' || label.back() == '-') return false;
  for (char c : label) {
    // '_' is not valid in host names proper (RFC 952), but resolvers accept it
    // and internal names do use it; refusing it would only get in the way.
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' &&
        c != '_') {
      return false;
    }
  }
  return true;
}

bool IsDnsName(absl::string_view name) {
  // A trailing dot marks a fully qualified name: "orders.example.".
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > kMaxHostNameLength) return false;
  for (absl::string_view label : absl::StrSplit(name, '.')) {
    if (!IsDnsLabel(label)) return false;
  }
  return true;
}

// A host made only of digits and dots is meant as an IPv4 literal: "1.2.3.400"
// must not slip through as a (numeric) DNS name.
bool LooksLikeIpv4(absl::string_view host) {
  for (char c : host) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c)) && c != '.') {
      return false;
    }
  }
  return true;
}

absl::Status CheckHost(const std::string& host, absl::string_view text) {
  if (LooksLikeIpv4(host)) {
    if (IsIpv4Literal(host)) return absl::OkStatus();
    return Invalid(absl::StrCat("invalid IPv4 address \"",
                                absl::Utf8SafeCEscape(host), "\""),
                   text);
  }
  if (IsDnsName(host)) return absl::OkStatus();
  return Invalid(
      absl::StrCat("invalid host name \"", absl::Utf8SafeCEscape(host), "\""),
      text);
}

absl::StatusOr<uint16_t> ParsePort(absl::string_view port,
                                   absl::string_view text, PortZero port_zero) {
  if (port.empty()) return Invalid("missing port", text);
  for (char c : port) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return Invalid("port must be a number", text);
    }
  }
  const uint32_t min_port = port_zero == PortZero::kAllow ? 0 : 1;
  uint32_t value = 0;
  // More than 5 digits cannot be a port; checking the length first also keeps
  // SimpleAtoi from overflowing on absurdly long inputs.
  if (port.size() > 5 || !absl::SimpleAtoi(port, &value) || value > 65535 ||
      value < min_port) {
    return absl::InvalidArgumentError(absl::StrCat(
        "port out of range (got ", port, ", expected ", min_port, "..65535)"));
  }
  return static_cast<uint16_t>(value);
}

}  // namespace

std::string HostPort::ToString() const {
  if (host.find(':') != std::string::npos) {
    return absl::StrCat("[", host, "]:", port);
  }
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<HostPort> ParseHostPort(std::string_view input,
                                       PortZero port_zero) {
  const absl::string_view text(input.data(), input.size());
  if (text.find("://") != absl::string_view::npos) {
    return Invalid("expected host:port without a scheme", text);
  }
  std::string host;
  absl::string_view port;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == absl::string_view::npos) {
      return Invalid("missing ']' after IPv6 address", text);
    }
    host = std::string(text.substr(1, close - 1));
    absl::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') {
      return Invalid("expected host:port", text);
    }
    port = rest.substr(1);
    if (!IsIpv6Literal(host)) {
      return Invalid(absl::StrCat("invalid IPv6 address \"",
                                  absl::Utf8SafeCEscape(host), "\""),
                     text);
    }
  } else {
    const size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos) {
      return Invalid("expected host:port", text);
    }
    host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
    if (host.find(':') != std::string::npos) {
      return Invalid("IPv6 addresses need brackets, like [::1]:80", text);
    }
    if (host.empty()) return Invalid("missing host", text);
    if (absl::Status s = CheckHost(host, text); !s.ok()) return s;
  }
  if (auto parsed_port = ParsePort(port, text, port_zero); parsed_port.ok()) {
    return HostPort{std::move(host), *parsed_port};
  } else {
    return parsed_port.status();
  }
}

}  // namespace bulwark
