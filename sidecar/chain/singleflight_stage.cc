#include "sidecar/chain/singleflight_stage.h"

#include <algorithm>
#include <optional>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"

namespace bulwark::chain {
namespace {

// Headers that shape the answer: a caller must never get an encoding or a
// content type it did not ask for.
constexpr std::string_view kShapingHeaders[] = {"content-type", "grpc-encoding",
                                                "grpc-accept-encoding"};

}  // namespace

SingleflightStage::SingleflightStage(
    const config::v1::Route& route, Flights& flights, RouteMetrics& metrics,
    const absl::flat_hash_set<std::string>* unary_methods)
    : exact_method_(!route.match().service().empty() &&
                    !route.match().method().empty()),
      unary_methods_(unary_methods),
      shadow_(route.singleflight().shadow()),
      max_request_bytes_(route.singleflight().has_max_request_bytes()
                             ? route.singleflight().max_request_bytes()
                             : kDefaultMaxRequestBytes),
      flights_(flights),
      metrics_(metrics) {
  for (std::string_view name : kShapingHeaders) {
    key_headers_.emplace_back(name);
  }
  for (const std::string& name : route.singleflight().key_headers()) {
    if (std::find(key_headers_.begin(), key_headers_.end(), name) ==
        key_headers_.end()) {
      key_headers_.push_back(name);
    }
  }
}

bool SingleflightStage::Coalescable(std::string_view path) const {
  if (exact_method_) return true;
  return unary_methods_ != nullptr &&
         unary_methods_->contains(absl::string_view(path.data(), path.size()));
}

void SingleflightStage::KeyInto(const net::Call& call, std::string_view body,
                                std::string& key) const {
  const net::HeaderList& headers = call.request_headers();
  const std::string_view path = call.path();
  // One part per value a key header carries (in the request's order), or one
  // marking it absent. One pass over the request finds the values (the
  // encoder walks the parts twice: to size the key, then to write it).
  struct Found {
    size_t key_header;  // index in key_headers_
    std::string_view value;
  };
  absl::InlinedVector<Found, 4> found;
  for (const auto& [header, value] : headers) {
    for (size_t k = 0; k < key_headers_.size(); ++k) {
      const std::string& name = key_headers_[k];
      if (header.size() == name.size() && header == name) {
        found.push_back({k, value});
        break;  // key_headers_ has no repeats
      }
    }
  }
  EncodeSingleflightKeyInto(
      absl::string_view(path.data(), path.size()),
      absl::string_view(body.data(), body.size()),
      [&](const auto& emit) {
        for (size_t k = 0; k < key_headers_.size(); ++k) {
          const absl::string_view name(key_headers_[k]);
          bool sent = false;
          for (const Found& f : found) {
            if (f.key_header != k) continue;
            const absl::string_view view(f.value.data(), f.value.size());
            emit(name, &view);
            sent = true;
          }
          if (!sent) emit(name, nullptr);
        }
      },
      key);
}

std::string SingleflightStage::Key(const net::Call& call,
                                   std::string_view body) const {
  std::string key;
  KeyInto(call, body, key);
  return key;
}

std::string SingleflightStage::DescribeJson() const {
  return absl::StrCat(
      "{\"flights_open\": ", flights_.FlightsOpenApprox(),
      ", \"followers_waiting\": ", flights_.FollowersWaitingApprox(),
      ", \"shadow\": ", shadow_ ? "true" : "false", "}");
}

}  // namespace bulwark::chain
