#include "sidecar/config_loader.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <limits>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/descriptor_database.h"
#include "google/protobuf/message.h"
#include "google/protobuf/util/json_util.h"
#include "sidecar/file_util.h"
#include "sidecar/host_port.h"
#include "sidecar/status_macros.h"
#include "sidecar/validation_errors.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/yaml.h"

namespace bulwark {
namespace {

namespace pb = ::google::protobuf;
namespace cfg = ::bulwark::config::v1;

// -----------------------------------------------------------------------------
// Small helpers shared by the walker and the validator.

// The largest google.protobuf.Duration (10000 years), per duration.proto.
constexpr int64_t kMaxProtoDurationSeconds = 315'576'000'000;
// Long scalars are cut in messages: the point is to recognise the value, not to
// echo a pasted certificate back.
constexpr size_t kMaxQuotedValue = 60;

// Escaped so that every error stays on its own line whatever the value holds.
std::string Quote(absl::string_view value) {
  const bool cut = value.size() > kMaxQuotedValue;
  return absl::StrCat("\"",
                      absl::Utf8SafeCEscape(value.substr(0, kMaxQuotedValue)),
                      cut ? "...\"" : "\"");
}

// What a YAML node is, for "(got ...)" in messages.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return Quote(node.Scalar());
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// "0s" rather than absl's "0", so every duration in a message reads as one.
std::string FormatDurationForHumans(absl::Duration d) {
  if (d == absl::ZeroDuration()) return "0s";
  return absl::FormatDuration(d);
}

pb::Duration ToProtoDuration(absl::Duration d) {
  absl::Duration remainder;
  const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &remainder);
  pb::Duration out;
  out.set_seconds(seconds);
  out.set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(remainder)));
  return out;
}

size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1,
                         diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// -----------------------------------------------------------------------------
// Files. Every file the config names is read through ReadConfigFile
// (sidecar/file_util.h): regular files of at most 16 MiB only.

std::string ResolvePath(absl::string_view base_dir, const std::string& path) {
  const std::filesystem::path p(path);
  if (base_dir.empty() || p.is_absolute()) return path;
  return (std::filesystem::path(std::string(base_dir)) / p)
      .lexically_normal()
      .string();
}

// -----------------------------------------------------------------------------
// Which fields the YAML spelled out. Proto3 `optional` fields and messages
// carry their own presence; this covers plain strings and repeated fields,
// where "absent" (take the default) and "empty" (an explicit "" or []) mean
// different things.

class FieldPresence {
 public:
  void Mark(const pb::Message* message, const pb::FieldDescriptor* field) {
    present_.insert({message, field});
  }
  bool Has(const pb::Message& message, absl::string_view field_name) const {
    const pb::FieldDescriptor* field =
        message.GetDescriptor()->FindFieldByName(std::string(field_name));
    return field != nullptr && present_.contains({&message, field});
  }

 private:
  absl::flat_hash_set<std::pair<const pb::Message*, const pb::FieldDescriptor*>>
      present_;
};

// -----------------------------------------------------------------------------
// YAML budget. yaml-cpp keeps an alias as a second reference to its anchor's
// node, so a small file can name one node a billion times ("billion laughs");
// what such a file costs is paid when a walker visits every use. Two budgets
// bound it: nodes in the text (counted by a parser that builds nothing, before
// yaml-cpp builds its graph), and nodes visited plus scalar bytes copied while
// the graph is converted to the proto (each use of an alias counts again).
// Both sit far above any real configuration.

constexpr size_t kMaxYamlNodes = 1'000'000;
constexpr size_t kMaxYamlScalarBytes = size_t{64} << 20;

// -----------------------------------------------------------------------------
// YAML -> protobuf, strictly and generically over the message's descriptor:
// every key must name a field, every value must have the field's type. Problems
// go to `errors` under the field path; walking goes on so that one run reports
// them all, until the budget above is spent.

class YamlToProto {
 public:
  YamlToProto(ValidationErrors* errors, FieldPresence* presence)
      : errors_(errors), presence_(presence) {}

  // `node` must be a map or null (an empty block: present, all defaults).
  void FillMessage(const YAML::Node& node, pb::Message* message) {
    if (node.IsNull()) return;
    if (!node.IsMap()) {
      errors_->AddError(
          absl::StrCat("expected a map (got ", Describe(node), ")"));
      return;
    }
    const pb::Descriptor* descriptor = message->GetDescriptor();
    absl::flat_hash_set<std::string> seen;
    for (const auto& entry : node) {
      if (!Spend(entry.first)) return;
      if (!entry.first.IsScalar()) {
        errors_->AddError(absl::StrCat("keys must be field names (got ",
                                       Describe(entry.first), ")"));
        continue;
      }
      const std::string& key = entry.first.Scalar();
      // Escaped: a key holding a line break or NUL must not split or forge
      // error lines.
      ValidationErrors::ScopedField scope(
          errors_, absl::StrCat(".", absl::CHexEscape(key)));
      // yaml-cpp keeps both entries of a repeated key; the second would
      // silently win.
      if (!seen.insert(key).second) {
        errors_->AddError("duplicate key");
        continue;
      }
      const pb::FieldDescriptor* field = descriptor->FindFieldByName(key);
      if (field == nullptr) {
        errors_->AddError(UnknownFieldMessage(*descriptor, key));
        continue;
      }
      presence_->Mark(message, field);
      FillField(entry.second, message, field);
    }
  }

 private:
  static std::string UnknownFieldMessage(const pb::Descriptor& descriptor,
                                         absl::string_view key) {
    const pb::FieldDescriptor* best = nullptr;
    size_t best_distance = std::numeric_limits<size_t>::max();
    std::vector<absl::string_view> names;
    for (int i = 0; i < descriptor.field_count(); ++i) {
      const pb::FieldDescriptor* field = descriptor.field(i);
      names.push_back(field->name());
      // camelCase is what protobuf's JSON mapping would accept; say which name
      // we want.
      const size_t distance =
          field->json_name() == key
              ? 0
              : EditDistance(absl::AsciiStrToLower(key), field->name());
      if (distance < best_distance) {
        best_distance = distance;
        best = field;
      }
    }
    if (best != nullptr && best_distance <= 2 &&
        best_distance * 2 < key.size()) {
      return absl::StrCat("unknown field (did you mean ", best->name(), "?)");
    }
    return absl::StrCat(
        "unknown field (valid fields: ", absl::StrJoin(names, ", "), ")");
  }

  void FillField(const YAML::Node& node, pb::Message* message,
                 const pb::FieldDescriptor* field) {
    if (field->is_map()) {
      errors_->AddError("map fields are not supported in YAML configs");
      return;
    }
    if (!field->is_repeated()) {
      FillValue(node, message, field);
      return;
    }
    // "key:" alone is present and empty, like "key: []".
    if (node.IsNull()) return;
    if (!node.IsSequence()) {
      errors_->AddError(
          absl::StrCat("expected a list (got ", Describe(node), ")"));
      return;
    }
    size_t i = 0;
    for (const YAML::Node& item : node) {
      if (budget_spent_) return;
      ValidationErrors::ScopedField scope(errors_, absl::StrCat("[", i++, "]"));
      FillValue(item, message, field);
    }
  }

  // Charges one visit of `node` (and its bytes, for a scalar) to the budget;
  // false once it is spent, after recording one error where that happened.
  bool Spend(const YAML::Node& node) {
    if (budget_spent_) return false;
    ++nodes_visited_;
    if (node.IsScalar()) scalar_bytes_ += node.Scalar().size();
    if (nodes_visited_ <= kMaxYamlNodes &&
        scalar_bytes_ <= kMaxYamlScalarBytes) {
      return true;
    }
    budget_spent_ = true;
    errors_->AddError(absl::StrCat(
        "the document is too large once YAML aliases are expanded (more than ",
        kMaxYamlNodes, " nodes or ", kMaxYamlScalarBytes >> 20,
        " MiB of scalars); stopped reading here"));
    return false;
  }

  // Sets a singular field, or appends to a repeated one.
  void FillValue(const YAML::Node& node, pb::Message* message,
                 const pb::FieldDescriptor* field) {
    if (!Spend(node)) return;
    const pb::Reflection* reflection = message->GetReflection();
    const bool repeated = field->is_repeated();
    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (field->message_type()->full_name() == "google.protobuf.Duration") {
        if (std::optional<pb::Duration> d = ParseDuration(node);
            d.has_value()) {
          (repeated ? reflection->AddMessage(message, field)
                    : reflection->MutableMessage(message, field))
              ->CopyFrom(*d);
        }
        return;
      }
      if (!node.IsMap() && !node.IsNull()) {
        errors_->AddError(
            absl::StrCat("expected a map (got ", Describe(node), ")"));
        return;
      }
      FillMessage(node, repeated ? reflection->AddMessage(message, field)
                                 : reflection->MutableMessage(message, field));
      return;
    }
    const std::optional<std::string> text = ScalarText(node, field);
    if (!text.has_value()) return;
    switch (field->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_STRING:
        repeated ? reflection->AddString(message, field, *text)
                 : reflection->SetString(message, field, *text);
        return;
      case pb::FieldDescriptor::CPPTYPE_BOOL:
        if (std::optional<bool> v = ParseBool(*text); v.has_value()) {
          repeated ? reflection->AddBool(message, field, *v)
                   : reflection->SetBool(message, field, *v);
        }
        return;
      case pb::FieldDescriptor::CPPTYPE_INT32:
      case pb::FieldDescriptor::CPPTYPE_INT64:
        if (std::optional<int64_t> v = ParseSigned(*text, field);
            v.has_value()) {
          SetSigned(message, field, *v);
        }
        return;
      case pb::FieldDescriptor::CPPTYPE_UINT32:
      case pb::FieldDescriptor::CPPTYPE_UINT64:
        if (std::optional<uint64_t> v = ParseUnsigned(*text, field);
            v.has_value()) {
          SetUnsigned(message, field, *v);
        }
        return;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      case pb::FieldDescriptor::CPPTYPE_FLOAT:
        if (std::optional<double> v = ParseDouble(*text); v.has_value()) {
          SetFloating(message, field, *v);
        }
        return;
      case pb::FieldDescriptor::CPPTYPE_ENUM:
        if (std::optional<int> v = ParseEnum(*text, field); v.has_value()) {
          repeated ? reflection->AddEnumValue(message, field, *v)
                   : reflection->SetEnumValue(message, field, *v);
        }
        return;
      case pb::FieldDescriptor::CPPTYPE_MESSAGE:
        break;  // handled above
    }
  }

  static absl::string_view KindOf(const pb::FieldDescriptor* field) {
    switch (field->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_STRING:
        return "a string";
      case pb::FieldDescriptor::CPPTYPE_BOOL:
        return "true or false";
      case pb::FieldDescriptor::CPPTYPE_INT32:
      case pb::FieldDescriptor::CPPTYPE_INT64:
        return "an integer";
      case pb::FieldDescriptor::CPPTYPE_UINT32:
      case pb::FieldDescriptor::CPPTYPE_UINT64:
        return "a non-negative integer";
      case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      case pb::FieldDescriptor::CPPTYPE_FLOAT:
        return "a number";
      case pb::FieldDescriptor::CPPTYPE_ENUM:
        return "one of the names of the enum";
      case pb::FieldDescriptor::CPPTYPE_MESSAGE:
        break;
    }
    return "a map";
  }

  // Quoted and plain scalars are read alike ("200" is a fine burst): what
  // matters is the text, and the field says how to read it.
  std::optional<std::string> ScalarText(const YAML::Node& node,
                                        const pb::FieldDescriptor* field) {
    if (node.IsScalar()) return node.Scalar();
    errors_->AddError(absl::StrCat("expected ", KindOf(field), " (got ",
                                   Describe(node), ")"));
    return std::nullopt;
  }

  std::optional<bool> ParseBool(const std::string& text) {
    // YAML 1.1's yes/no/on/off are refused on purpose: `shadow: no` reading as
    // false is exactly the kind of surprise a strict loader exists to prevent.
    const std::string lower = absl::AsciiStrToLower(text);
    if (lower == "true") return true;
    if (lower == "false") return false;
    errors_->AddError(
        absl::StrCat("expected true or false (got ", Quote(text), ")"));
    return std::nullopt;
  }

  static bool IsDigits(absl::string_view text) {
    return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
      return absl::ascii_isdigit(static_cast<unsigned char>(c));
    });
  }

  std::optional<int64_t> ParseSigned(const std::string& text,
                                     const pb::FieldDescriptor* field) {
    const bool is32 = field->cpp_type() == pb::FieldDescriptor::CPPTYPE_INT32;
    int64_t value = 0;
    const bool parsed = absl::SimpleAtoi(text, &value);
    const absl::string_view digits =
        absl::StartsWith(text, "-") ? absl::string_view(text).substr(1) : text;
    if (!parsed && !IsDigits(digits)) {
      errors_->AddError(
          absl::StrCat("expected an integer (got ", Quote(text), ")"));
      return std::nullopt;
    }
    if (!parsed || (is32 && (value < std::numeric_limits<int32_t>::min() ||
                             value > std::numeric_limits<int32_t>::max()))) {
      errors_->AddError(absl::StrCat(
          "out of range for ", is32 ? "int32" : "int64", " (got ", text, ")"));
      return std::nullopt;
    }
    return value;
  }

  std::optional<uint64_t> ParseUnsigned(const std::string& text,
                                        const pb::FieldDescriptor* field) {
    const bool is32 = field->cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT32;
    const absl::string_view trimmed = absl::StripAsciiWhitespace(text);
    if (absl::StartsWith(trimmed, "-") && IsDigits(trimmed.substr(1))) {
      errors_->AddError(
          absl::StrCat("must not be negative (got ", trimmed, ")"));
      return std::nullopt;
    }
    uint64_t value = 0;
    const bool parsed = absl::SimpleAtoi(text, &value);
    if (!parsed && !IsDigits(trimmed)) {
      errors_->AddError(absl::StrCat("expected a non-negative integer (got ",
                                     Quote(text), ")"));
      return std::nullopt;
    }
    if (!parsed || (is32 && value > std::numeric_limits<uint32_t>::max())) {
      errors_->AddError(absl::StrCat("out of range for ",
                                     is32 ? "uint32" : "uint64", " (got ",
                                     trimmed, ")"));
      return std::nullopt;
    }
    return value;
  }

  std::optional<double> ParseDouble(const std::string& text) {
    // YAML spells infinity and NaN with a leading dot; map them so that the
    // range checks can say "must be finite" instead of "expected a number".
    const std::string lower = absl::AsciiStrToLower(text);
    if (lower == ".inf" || lower == "+.inf") {
      return std::numeric_limits<double>::infinity();
    }
    if (lower == "-.inf") return -std::numeric_limits<double>::infinity();
    if (lower == ".nan") return std::numeric_limits<double>::quiet_NaN();
    double value = 0;
    if (absl::SimpleAtod(text, &value)) return value;
    errors_->AddError(
        absl::StrCat("expected a number (got ", Quote(text), ")"));
    return std::nullopt;
  }

  std::optional<int> ParseEnum(const std::string& text,
                               const pb::FieldDescriptor* field) {
    const pb::EnumDescriptor* type = field->enum_type();
    if (const pb::EnumValueDescriptor* value = type->FindValueByName(text)) {
      return value->number();
    }
    std::vector<absl::string_view> names;
    names.reserve(type->value_count());
    for (int i = 0; i < type->value_count(); ++i) {
      names.push_back(type->value(i)->name());
    }
    errors_->AddError(absl::StrCat("unknown value ", Quote(text), " (valid: ",
                                   absl::StrJoin(names, ", "), ")"));
    return std::nullopt;
  }

  std::optional<pb::Duration> ParseDuration(const YAML::Node& node) {
    static constexpr absl::string_view kExpected =
        "expected a duration like 250ms or 2s";
    if (!node.IsScalar()) {
      errors_->AddError(absl::StrCat(kExpected, " (got ", Describe(node), ")"));
      return std::nullopt;
    }
    const std::string& text = node.Scalar();
    absl::Duration d;
    if (absl::ParseDuration(text, &d) &&
        (d == absl::InfiniteDuration() || d == -absl::InfiniteDuration())) {
      errors_->AddError(absl::StrCat("must be finite (got ", Quote(text), ")"));
      return std::nullopt;
    }
    double bare_number = 0;
    // absl accepts a bare "0"; we refuse every bare number so that `timeout: 2`
    // cannot be read as seconds by one reader and milliseconds by another.
    if (absl::SimpleAtod(text, &bare_number) ||
        !absl::ParseDuration(text, &d)) {
      errors_->AddError(absl::StrCat(kExpected, " (got ", Quote(text), ")"));
      return std::nullopt;
    }
    if (d < absl::ZeroDuration()) {
      errors_->AddError(
          absl::StrCat("must not be negative (got ", Quote(text), ")"));
      return std::nullopt;
    }
    if (d > absl::Seconds(kMaxProtoDurationSeconds)) {
      errors_->AddError(absl::StrCat("out of range (got ", Quote(text), ")"));
      return std::nullopt;
    }
    return ToProtoDuration(d);
  }

  static void SetSigned(pb::Message* message, const pb::FieldDescriptor* field,
                        int64_t v) {
    const pb::Reflection* r = message->GetReflection();
    const bool is32 = field->cpp_type() == pb::FieldDescriptor::CPPTYPE_INT32;
    if (field->is_repeated()) {
      is32 ? r->AddInt32(message, field, static_cast<int32_t>(v))
           : r->AddInt64(message, field, v);
    } else {
      is32 ? r->SetInt32(message, field, static_cast<int32_t>(v))
           : r->SetInt64(message, field, v);
    }
  }

  static void SetUnsigned(pb::Message* message,
                          const pb::FieldDescriptor* field, uint64_t v) {
    const pb::Reflection* r = message->GetReflection();
    const bool is32 = field->cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT32;
    if (field->is_repeated()) {
      is32 ? r->AddUInt32(message, field, static_cast<uint32_t>(v))
           : r->AddUInt64(message, field, v);
    } else {
      is32 ? r->SetUInt32(message, field, static_cast<uint32_t>(v))
           : r->SetUInt64(message, field, v);
    }
  }

  static void SetFloating(pb::Message* message,
                          const pb::FieldDescriptor* field, double v) {
    const pb::Reflection* r = message->GetReflection();
    const bool is_float =
        field->cpp_type() == pb::FieldDescriptor::CPPTYPE_FLOAT;
    if (field->is_repeated()) {
      is_float ? r->AddFloat(message, field, static_cast<float>(v))
               : r->AddDouble(message, field, v);
    } else {
      is_float ? r->SetFloat(message, field, static_cast<float>(v))
               : r->SetDouble(message, field, v);
    }
  }

  ValidationErrors* errors_;
  FieldPresence* presence_;
  size_t nodes_visited_ = 0;
  size_t scalar_bytes_ = 0;
  bool budget_spent_ = false;
};

// -----------------------------------------------------------------------------
// Defaults (SPEC section 2, also listed in config.proto). Listener and admin
// always exist; inside a cluster or route only the blocks that are present get
// defaults, since an absent policy block means that policy is off.

void FillHealthCheckDefaults(cfg::HealthCheck& hc) {
  if (!hc.has_interval()) {
    *hc.mutable_interval() = ToProtoDuration(absl::Seconds(5));
  }
  if (!hc.has_timeout()) {
    *hc.mutable_timeout() = ToProtoDuration(absl::Seconds(1));
  }
  if (!hc.has_jitter()) hc.set_jitter(0.1);
  if (!hc.has_unhealthy_threshold()) hc.set_unhealthy_threshold(3);
  if (!hc.has_healthy_threshold()) hc.set_healthy_threshold(2);
}

void FillRateLimitDefaults(cfg::RateLimit& rl) {
  if (!rl.has_requests_per_second()) rl.set_requests_per_second(100);
  if (!rl.has_burst()) rl.set_burst(200);
  if (!rl.has_max_keys()) rl.set_max_keys(10000);
}

void FillCircuitBreakerDefaults(cfg::CircuitBreaker& cb,
                                const FieldPresence& presence) {
  if (!cb.has_consecutive_failures()) cb.set_consecutive_failures(5);
  if (!cb.has_failure_rate()) cb.set_failure_rate(0.5);
  if (!cb.has_minimum_requests()) cb.set_minimum_requests(20);
  if (!cb.has_window()) {
    *cb.mutable_window() = ToProtoDuration(absl::Seconds(10));
  }
  if (!cb.has_open_duration()) {
    *cb.mutable_open_duration() = ToProtoDuration(absl::Seconds(30));
  }
  if (!cb.has_half_open_requests()) cb.set_half_open_requests(3);
  // An explicit [] is kept: then only deadline expiry and transport errors
  // count.
  if (!presence.Has(cb, "failure_codes")) {
    for (cfg::StatusCode code : {cfg::UNAVAILABLE, cfg::DEADLINE_EXCEEDED,
                                 cfg::INTERNAL, cfg::UNKNOWN, cfg::DATA_LOSS}) {
      cb.add_failure_codes(code);
    }
  }
  if (!cb.has_slow_call_duration()) {
    *cb.mutable_slow_call_duration() = ToProtoDuration(absl::ZeroDuration());
  }
  if (!cb.has_slow_call_rate()) cb.set_slow_call_rate(1.0);
  if (!cb.has_deadline_failure_min()) {
    *cb.mutable_deadline_failure_min() =
        ToProtoDuration(absl::Milliseconds(100));
  }
}

void FillConcurrencyDefaults(cfg::Concurrency& c) {
  if (!c.has_max_in_flight()) c.set_max_in_flight(64);
  if (!c.has_max_queued()) c.set_max_queued(128);
  if (!c.has_queue_timeout()) {
    *c.mutable_queue_timeout() = ToProtoDuration(absl::Milliseconds(50));
  }
}

void FillSingleflightDefaults(cfg::Singleflight& sf,
                              const FieldPresence& presence,
                              uint64_t max_message_bytes) {
  if (!sf.has_enabled()) sf.set_enabled(true);
  // An explicit [] is kept: the key is then the method and the request bytes
  // alone.
  if (!presence.Has(sf, "key_headers")) sf.add_key_headers("authorization");
  // A listener taking smaller messages lowers the default with it, so that
  // the default is always within range. (A max_message_bytes of 0 is reported
  // on its own field; 1 keeps this one quiet.)
  if (!sf.has_max_request_bytes()) {
    sf.set_max_request_bytes(
        std::max<uint64_t>(1, std::min<uint64_t>(65536, max_message_bytes)));
  }
}

void FillDefaults(cfg::Config& config, const FieldPresence& presence) {
  cfg::Listener& listener = *config.mutable_listener();
  if (!presence.Has(listener, "address")) listener.set_address("0.0.0.0:15000");
  if (!listener.has_max_message_bytes()) {
    listener.set_max_message_bytes(4194304);
  }
  if (!listener.has_max_concurrent_streams()) {
    listener.set_max_concurrent_streams(1000);
  }
  if (!listener.has_handshake_timeout()) {
    *listener.mutable_handshake_timeout() = ToProtoDuration(absl::Seconds(10));
  }
  if (!listener.has_idle_timeout()) {
    *listener.mutable_idle_timeout() = ToProtoDuration(absl::Hours(1));
  }
  cfg::Admin& admin = *config.mutable_admin();
  if (!presence.Has(admin, "address")) admin.set_address("0.0.0.0:15001");
  if (!config.has_drain_timeout()) {
    *config.mutable_drain_timeout() = ToProtoDuration(absl::Seconds(20));
  }
  if (!config.has_workers()) config.set_workers(0);
  for (cfg::Cluster& cluster : *config.mutable_clusters()) {
    if (cluster.has_health_check()) {
      FillHealthCheckDefaults(*cluster.mutable_health_check());
    }
    if (!cluster.has_dns_refresh_interval()) {
      *cluster.mutable_dns_refresh_interval() =
          ToProtoDuration(absl::Seconds(5));
    }
  }
  for (cfg::Route& route : *config.mutable_routes()) {
    if (route.has_rate_limit()) {
      FillRateLimitDefaults(*route.mutable_rate_limit());
    }
    if (route.has_circuit_breaker()) {
      FillCircuitBreakerDefaults(*route.mutable_circuit_breaker(), presence);
    }
    if (route.has_concurrency()) {
      FillConcurrencyDefaults(*route.mutable_concurrency());
    }
    if (route.has_singleflight()) {
      FillSingleflightDefaults(*route.mutable_singleflight(), presence,
                               listener.max_message_bytes());
    }
  }
}

// -----------------------------------------------------------------------------
// Semantic validation: ranges, references between blocks, files, addresses.

using Field = ValidationErrors::ScopedField;

bool IsHeaderNameChar(char c) {
  // RFC 9110 tchar, lower case only (HTTP/2 forbids upper-case field names).
  if (absl::ascii_islower(static_cast<unsigned char>(c)) ||
      absl::ascii_isdigit(static_cast<unsigned char>(c))) {
    return true;
  }
  return absl::string_view("!#$%&'*+-.^_`|~").find(c) !=
         absl::string_view::npos;
}

void CheckHeaderName(ValidationErrors& errors, const std::string& name) {
  if (name.empty()) {
    errors.AddError("must not be empty");
  } else if (name.front() == ':') {
    errors.AddError(
        absl::StrCat("must not be a pseudo-header (got ", Quote(name), ")"));
  } else if (!std::all_of(name.begin(), name.end(), IsHeaderNameChar)) {
    errors.AddError(absl::StrCat(
        "must be a lower-case HTTP/2 header name (got ", Quote(name), ")"));
  }
}

// Ranges (SPEC section 2: every number has a maximum as well as a minimum).
// The maximums sit far above any real use (the benchmark configs' 1e9 rates
// and 100 000 slots among them); they exist so that no value a file may hold
// makes the sidecar abort, reject every call, or hold memory out of
// proportion to its traffic. config.proto documents each one.
constexpr uint64_t kMaxConcurrentStreams = 1'000'000;
constexpr uint64_t kMaxHealthThreshold = 1'000;
constexpr absl::Duration kMaxRouteTimeout = absl::Hours(24);
constexpr double kMaxRequestsPerSecond = 1e9;
constexpr uint64_t kMaxBurst = 1'000'000'000'000;
constexpr uint64_t kMaxKeys = 10'000'000;
constexpr uint64_t kMaxBreakerCount = 1'000'000;
constexpr uint64_t kMaxHalfOpenRequests = 10'000;
constexpr absl::Duration kMaxBreakerDuration = absl::Hours(1);
constexpr uint64_t kMaxInFlight = 1'000'000;
constexpr uint64_t kMaxQueued = 1'000'000;
constexpr absl::Duration kMaxQueueTimeout = absl::Hours(1);
constexpr uint64_t kMaxMessageBytes = std::numeric_limits<int32_t>::max();

void CheckAtLeast(ValidationErrors& errors, absl::string_view field,
                  uint64_t value, uint64_t min) {
  if (value >= min) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(absl::StrCat("must be >= ", min, " (got ", value, ")"));
}

void CheckAtMost(ValidationErrors& errors, absl::string_view field,
                 uint64_t value, uint64_t max) {
  if (value <= max) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(absl::StrCat("must be <= ", max, " (got ", value, ")"));
}

// [min, max], reported as whichever side is crossed.
void CheckBetween(ValidationErrors& errors, absl::string_view field,
                  uint64_t value, uint64_t min, uint64_t max) {
  CheckAtLeast(errors, field, value, min);
  CheckAtMost(errors, field, value, max);
}

// (0, 1] when `zero_allowed` is false, [0, 1] otherwise. Written so that NaN
// fails.
void CheckRatio(ValidationErrors& errors, absl::string_view field, double value,
                bool zero_allowed) {
  const bool ok = (zero_allowed ? value >= 0 : value > 0) && value <= 1;
  if (ok) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(absl::StrCat(
      "must be in ", zero_allowed ? "[0, 1]" : "(0, 1]", " (got ", value, ")"));
}

void CheckDurationBetween(ValidationErrors& errors, absl::string_view field,
                          const pb::Duration& value, absl::Duration min,
                          absl::Duration max) {
  const absl::Duration d = ToAbslDuration(value);
  if (d >= min && d <= max) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(absl::StrCat("must be between ", FormatDurationForHumans(min),
                               " and ", FormatDurationForHumans(max), " (got ",
                               FormatDurationForHumans(d), ")"));
}

void CheckDurationPositive(ValidationErrors& errors, absl::string_view field,
                           const pb::Duration& value) {
  const absl::Duration d = ToAbslDuration(value);
  if (d > absl::ZeroDuration()) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(
      absl::StrCat("must be > 0 (got ", FormatDurationForHumans(d), ")"));
}

void CheckDurationAtMost(ValidationErrors& errors, absl::string_view field,
                         const pb::Duration& value, absl::Duration max) {
  const absl::Duration d = ToAbslDuration(value);
  if (d <= max) return;
  Field f(&errors, absl::StrCat(".", field));
  errors.AddError(absl::StrCat("must be <= ", FormatDurationForHumans(max),
                               " (got ", FormatDurationForHumans(d), ")"));
}

// (0, max]: the existing "> 0" message for zero, "<= max" above.
void CheckDurationPositiveAtMost(ValidationErrors& errors,
                                 absl::string_view field,
                                 const pb::Duration& value,
                                 absl::Duration max) {
  CheckDurationPositive(errors, field, value);
  CheckDurationAtMost(errors, field, value, max);
}

// Does a route with this match take calls to `path` ("/pkg.Service/Method")?
bool RouteMatchesPath(const cfg::RouteMatch& match, absl::string_view path) {
  if (!match.service().empty()) {
    const std::string service_prefix = absl::StrCat("/", match.service(), "/");
    if (!match.method().empty()) {
      return path == absl::StrCat(service_prefix, match.method());
    }
    return absl::StartsWith(path, service_prefix);
  }
  if (!match.prefix().empty()) return absl::StartsWith(path, match.prefix());
  return true;
}

class ConfigValidator {
 public:
  ConfigValidator(ValidationErrors* errors, std::string base_dir,
                  LoadedConfig* out)
      : errors_(*errors),
        base_dir_(std::move(base_dir)),
        out_(*out),
        config_(out->proto) {}

  void Validate() {
    if (config_.workers() > 256) {
      Field f(&errors_, "workers");
      errors_.AddError(
          absl::StrCat("must be <= 256 (got ", config_.workers(), ")"));
    }
    CheckDurationBetween(errors_, "drain_timeout", config_.drain_timeout(),
                         absl::ZeroDuration(), absl::Hours(1));
    ValidateListenerAndAdmin();
    LoadDescriptorSets();
    ValidateClusters();
    ValidateRoutes();
  }

 private:
  // Resolves `*path` against the config's directory in place (what the rest of
  // the sidecar and /config then see) and checks that the file can be read.
  void ResolveAndCheckFile(absl::string_view field, std::string* path) {
    if (path->empty()) return;
    Field f(&errors_, absl::StrCat(".", field));
    const std::string original = *path;
    *path = ResolvePath(base_dir_, original);
    if (auto content = ReadConfigFile(*path); !content.ok()) {
      errors_.AddError(absl::StrCat("cannot read ",
                                    DescribePath(original, *path), ": ",
                                    content.status().message()));
    } else if (content->empty()) {
      errors_.AddError(
          absl::StrCat(DescribePath(original, *path), " is empty"));
    }
  }

  static std::string DescribePath(const std::string& original,
                                  const std::string& resolved) {
    if (original == resolved) return Quote(original);
    return absl::StrCat(Quote(original), " (resolved to ", resolved, ")");
  }

  std::optional<HostPort> CheckAddress(absl::string_view field,
                                       const std::string& address,
                                       PortZero port_zero) {
    if (auto parsed = ParseHostPort(address, port_zero); parsed.ok()) {
      return *std::move(parsed);
    } else {
      Field f(&errors_, absl::StrCat(".", field));
      errors_.AddError(std::string(parsed.status().message()));
      return std::nullopt;
    }
  }

  void ValidateListenerAndAdmin() {
    std::optional<HostPort> listener_address;
    {
      Field f(&errors_, "listener");
      cfg::Listener& listener = *config_.mutable_listener();
      // Port 0 = ephemeral: what tests use to run many sidecars side by side.
      listener_address =
          CheckAddress("address", listener.address(), PortZero::kAllow);
      if (listener.max_message_bytes() < 1 ||
          listener.max_message_bytes() > kMaxMessageBytes) {
        Field m(&errors_, ".max_message_bytes");
        errors_.AddError(absl::StrCat("must be between 1 and ",
                                      kMaxMessageBytes, " (got ",
                                      listener.max_message_bytes(), ")"));
      }
      CheckBetween(errors_, "max_concurrent_streams",
                   listener.max_concurrent_streams(), 1, kMaxConcurrentStreams);
      CheckDurationBetween(errors_, "handshake_timeout",
                           listener.handshake_timeout(),
                           absl::Milliseconds(100), absl::Hours(1));
      CheckDurationBetween(errors_, "idle_timeout", listener.idle_timeout(),
                           absl::Seconds(1), absl::Hours(24));
      if (listener.has_tls()) {
        Field t(&errors_, ".tls");
        cfg::ListenerTls& tls = *listener.mutable_tls();
        if (tls.cert_file().empty()) {
          Field r(&errors_, ".cert_file");
          errors_.AddError("required when tls is set");
        }
        if (tls.key_file().empty()) {
          Field r(&errors_, ".key_file");
          errors_.AddError("required when tls is set");
        }
        ResolveAndCheckFile("cert_file", tls.mutable_cert_file());
        ResolveAndCheckFile("key_file", tls.mutable_key_file());
        ResolveAndCheckFile("client_ca_file", tls.mutable_client_ca_file());
      }
    }
    Field f(&errors_, "admin");
    std::optional<HostPort> admin_address =
        CheckAddress("address", config_.admin().address(), PortZero::kAllow);
    if (listener_address.has_value() && admin_address.has_value() &&
        Overlap(*listener_address, *admin_address)) {
      Field a(&errors_, ".address");
      errors_.AddError(absl::StrCat("conflicts with listener.address ",
                                    Quote(config_.listener().address()),
                                    " (same port)"));
    }
  }

  // Two listening addresses collide when they share a (fixed) port and either
  // is the wildcard or both name the same host.
  static bool Overlap(const HostPort& a, const HostPort& b) {
    if (a.port == 0 || a.port != b.port) return false;
    auto wildcard = [](const HostPort& x) {
      return x.host == "0.0.0.0" || x.host == "::";
    };
    return a.host == b.host || wildcard(a) || wildcard(b);
  }

  // Keeps the first error of building descriptors (a missing import, say):
  // the one that explains the others.
  class DescriptorErrors : public pb::DescriptorPool::ErrorCollector {
   public:
    void AddError(const std::string& filename,
                  const std::string& /*element_name*/,
                  const pb::Message* /*descriptor*/, ErrorLocation /*location*/,
                  const std::string& message) override {
      if (first_.empty()) first_ = absl::StrCat(filename, ": ", message);
    }
    const std::string& first() const { return first_; }

   private:
    std::string first_;
  };

  void LoadDescriptorSets() {
    auto& paths = *config_.mutable_descriptor_sets();
    for (int i = 0; i < paths.size(); ++i) {
      Field f(&errors_, absl::StrCat("descriptor_sets[", i, "]"));
      const std::string original = paths[i];
      if (original.empty()) {
        errors_.AddError("must not be empty");
        continue;
      }
      paths[i] = ResolvePath(base_dir_, original);
      if (auto content = ReadConfigFile(paths[i]); content.ok()) {
        LoadDescriptorSet(*content, DescribePath(original, paths[i]));
      } else {
        errors_.AddError(absl::StrCat("cannot read ",
                                      DescribePath(original, paths[i]), ": ",
                                      content.status().message()));
      }
    }
  }

  void LoadDescriptorSet(const std::string& content,
                         const std::string& described) {
    pb::FileDescriptorSet set;
    if (!set.ParseFromString(content)) {
      errors_.AddError(absl::StrCat(described, " is not a FileDescriptorSet"));
      return;
    }
    if (set.file_size() == 0) {
      errors_.AddError(absl::StrCat(
          described,
          " holds no files (build it with protoc --include_imports "
          "--descriptor_set_out)"));
      return;
    }
    // A pool over a database builds files on demand with their imports,
    // whatever the order of the set; a missing import (no --include_imports)
    // fails the lookup.
    pb::SimpleDescriptorDatabase database;
    for (const pb::FileDescriptorProto& file : set.file()) {
      pb::FileDescriptorProto existing;
      if (database.FindFileByName(file.name(), &existing)) continue;
      database.Add(file);
    }
    DescriptorErrors build_errors;
    pb::DescriptorPool pool(&database, &build_errors);
    for (const pb::FileDescriptorProto& file_proto : set.file()) {
      const pb::FileDescriptor* file = pool.FindFileByName(file_proto.name());
      if (file == nullptr) {
        errors_.AddError(
            absl::StrCat(described, " is invalid: ", build_errors.first()));
        return;
      }
      for (int s = 0; s < file->service_count(); ++s) {
        const pb::ServiceDescriptor* service = file->service(s);
        for (int m = 0; m < service->method_count(); ++m) {
          const pb::MethodDescriptor* method = service->method(m);
          std::string path =
              absl::StrCat("/", service->full_name(), "/", method->name());
          if (method->client_streaming() || method->server_streaming()) {
            out_.streaming_methods.insert(std::move(path));
          } else {
            out_.unary_methods.insert(std::move(path));
          }
        }
      }
    }
  }

  void ValidateClusters() {
    if (config_.clusters().empty()) {
      Field f(&errors_, "clusters");
      errors_.AddError("at least one cluster is required");
    }
    for (int i = 0; i < config_.clusters_size(); ++i) {
      Field f(&errors_, absl::StrCat("clusters[", i, "]"));
      ValidateCluster(i, *config_.mutable_clusters(i));
    }
  }

  void ValidateCluster(int index, cfg::Cluster& cluster) {
    if (cluster.name().empty()) {
      Field n(&errors_, ".name");
      errors_.AddError("must not be empty");
    } else if (auto [it, inserted] =
                   cluster_index_.emplace(cluster.name(), index);
               !inserted) {
      Field n(&errors_, ".name");
      errors_.AddError(absl::StrCat("duplicate cluster name ",
                                    Quote(cluster.name()), " (also clusters[",
                                    it->second, "])"));
    }
    if (cluster.endpoints().empty()) {
      Field e(&errors_, ".endpoints");
      errors_.AddError("at least one endpoint is required");
    }
    absl::flat_hash_map<std::string, int> seen;
    for (int i = 0; i < cluster.endpoints_size(); ++i) {
      Field e(&errors_, absl::StrCat(".endpoints[", i, "]"));
      if (auto parsed = ParseHostPort(cluster.endpoints(i), PortZero::kReject);
          !parsed.ok()) {
        errors_.AddError(std::string(parsed.status().message()));
      } else if (auto [it, inserted] = seen.emplace(parsed->ToString(), i);
                 !inserted) {
        // Endpoint health and load are kept per address: two entries would be
        // one.
        errors_.AddError(absl::StrCat("duplicate endpoint ",
                                      Quote(cluster.endpoints(i)),
                                      " (also endpoints[", it->second, "])"));
      }
    }
    if (cluster.has_tls()) {
      Field t(&errors_, ".tls");
      cfg::UpstreamTls& tls = *cluster.mutable_tls();
      if (tls.cert_file().empty() != tls.key_file().empty()) {
        const bool cert_missing = tls.cert_file().empty();
        Field m(&errors_, cert_missing ? ".cert_file" : ".key_file");
        errors_.AddError(cert_missing ? "required when key_file is set"
                                      : "required when cert_file is set");
      }
      ResolveAndCheckFile("ca_file", tls.mutable_ca_file());
      ResolveAndCheckFile("cert_file", tls.mutable_cert_file());
      ResolveAndCheckFile("key_file", tls.mutable_key_file());
    }
    if (const absl::Duration refresh =
            ToAbslDuration(cluster.dns_refresh_interval());
        refresh != absl::ZeroDuration()) {
      CheckDurationBetween(errors_, "dns_refresh_interval",
                           cluster.dns_refresh_interval(),
                           absl::Milliseconds(100), absl::Hours(1));
    }
    if (cluster.has_health_check()) {
      Field h(&errors_, ".health_check");
      const cfg::HealthCheck& hc = cluster.health_check();
      CheckDurationBetween(errors_, "interval", hc.interval(),
                           absl::Milliseconds(10), absl::Hours(1));
      CheckDurationBetween(errors_, "timeout", hc.timeout(),
                           absl::Milliseconds(1), absl::Hours(1));
      CheckRatio(errors_, "jitter", hc.jitter(), /*zero_allowed=*/true);
      CheckBetween(errors_, "unhealthy_threshold", hc.unhealthy_threshold(), 1,
                   kMaxHealthThreshold);
      CheckBetween(errors_, "healthy_threshold", hc.healthy_threshold(), 1,
                   kMaxHealthThreshold);
    }
  }

  void ValidateRoutes() {
    if (config_.routes().empty()) {
      Field f(&errors_, "routes");
      errors_.AddError("at least one route is required");
    }
    absl::flat_hash_map<std::string, int> names;
    for (int i = 0; i < config_.routes_size(); ++i) {
      Field f(&errors_, absl::StrCat("routes[", i, "]"));
      const cfg::Route& route = config_.routes(i);
      if (route.name().empty()) {
        Field n(&errors_, ".name");
        errors_.AddError("must not be empty");
      } else if (auto [it, inserted] = names.emplace(route.name(), i);
                 !inserted) {
        Field n(&errors_, ".name");
        errors_.AddError(absl::StrCat("duplicate route name ",
                                      Quote(route.name()), " (also routes[",
                                      it->second, "])"));
      }
      ValidateRouteCluster(route);
      const size_t errors_before = errors_.size();
      ValidateMatch(route.match());
      const bool match_ok = errors_.size() == errors_before;
      if (route.has_timeout()) {
        CheckDurationPositiveAtMost(errors_, "timeout", route.timeout(),
                                    kMaxRouteTimeout);
      }
      if (route.has_rate_limit()) ValidateRateLimit(route.rate_limit());
      if (route.has_circuit_breaker()) {
        ValidateCircuitBreaker(route.circuit_breaker());
      }
      if (route.has_concurrency()) ValidateConcurrency(route.concurrency());
      if (route.has_singleflight()) ValidateSingleflight(route, match_ok);
    }
  }

  void ValidateRouteCluster(const cfg::Route& route) {
    Field c(&errors_, ".cluster");
    if (route.cluster().empty()) {
      errors_.AddError("must not be empty");
    } else if (!cluster_index_.contains(route.cluster())) {
      std::vector<absl::string_view> known;
      for (const cfg::Cluster& cluster : config_.clusters()) {
        if (!cluster.name().empty()) known.push_back(cluster.name());
      }
      errors_.AddError(absl::StrCat("unknown cluster ", Quote(route.cluster()),
                                    " (clusters: ", absl::StrJoin(known, ", "),
                                    ")"));
    }
  }

  void ValidateMatch(const cfg::RouteMatch& match) {
    Field m(&errors_, ".match");
    if (match.service().find('/') != std::string::npos) {
      Field s(&errors_, ".service");
      errors_.AddError(absl::StrCat(
          "must be a fully qualified service name without '/' (got ",
          Quote(match.service()), ")"));
    }
    if (!match.method().empty()) {
      Field s(&errors_, ".method");
      if (match.service().empty()) {
        errors_.AddError("requires service");
      } else if (match.method().find('/') != std::string::npos) {
        errors_.AddError(absl::StrCat("must be a method name without '/' (got ",
                                      Quote(match.method()), ")"));
      }
    }
    if (!match.prefix().empty()) {
      Field p(&errors_, ".prefix");
      if (!match.service().empty()) {
        errors_.AddError("cannot be combined with service");
      } else if (match.prefix().front() != '/') {
        errors_.AddError(absl::StrCat("must start with '/' (got ",
                                      Quote(match.prefix()), ")"));
      }
    }
  }

  void ValidateRateLimit(const cfg::RateLimit& rl) {
    Field f(&errors_, ".rate_limit");
    if (!(rl.requests_per_second() > 0 &&
          std::isfinite(rl.requests_per_second()))) {
      Field r(&errors_, ".requests_per_second");
      errors_.AddError(absl::StrCat("must be > 0 and finite (got ",
                                    rl.requests_per_second(), ")"));
    } else if (rl.requests_per_second() > kMaxRequestsPerSecond) {
      Field r(&errors_, ".requests_per_second");
      errors_.AddError(absl::StrCat(
          "must be <= ", static_cast<int64_t>(kMaxRequestsPerSecond), " (got ",
          rl.requests_per_second(), ")"));
    }
    CheckBetween(errors_, "burst", rl.burst(), 1, kMaxBurst);
    CheckBetween(errors_, "max_keys", rl.max_keys(), 1, kMaxKeys);
    if (!rl.key_header().empty()) {
      Field k(&errors_, ".key_header");
      CheckHeaderName(errors_, rl.key_header());
    }
  }

  void ValidateCircuitBreaker(const cfg::CircuitBreaker& cb) {
    Field f(&errors_, ".circuit_breaker");
    CheckAtMost(errors_, "consecutive_failures", cb.consecutive_failures(),
                kMaxBreakerCount);
    CheckRatio(errors_, "failure_rate", cb.failure_rate(),
               /*zero_allowed=*/false);
    CheckBetween(errors_, "minimum_requests", cb.minimum_requests(), 1,
                 kMaxBreakerCount);
    CheckDurationBetween(errors_, "window", cb.window(), absl::Seconds(1),
                         absl::Hours(1));
    CheckDurationPositiveAtMost(errors_, "open_duration", cb.open_duration(),
                                kMaxBreakerDuration);
    CheckBetween(errors_, "half_open_requests", cb.half_open_requests(), 1,
                 kMaxHalfOpenRequests);
    for (int i = 0; i < cb.failure_codes_size(); ++i) {
      if (cb.failure_codes(i) == cfg::OK) {
        Field c(&errors_, absl::StrCat(".failure_codes[", i, "]"));
        errors_.AddError("OK cannot be a failure code");
      }
    }
    CheckDurationAtMost(errors_, "slow_call_duration", cb.slow_call_duration(),
                        kMaxBreakerDuration);
    CheckRatio(errors_, "slow_call_rate", cb.slow_call_rate(),
               /*zero_allowed=*/false);
    CheckDurationAtMost(errors_, "deadline_failure_min",
                        cb.deadline_failure_min(), kMaxBreakerDuration);
  }

  void ValidateConcurrency(const cfg::Concurrency& c) {
    Field f(&errors_, ".concurrency");
    CheckBetween(errors_, "max_in_flight", c.max_in_flight(), 1, kMaxInFlight);
    CheckAtMost(errors_, "max_queued", c.max_queued(), kMaxQueued);
    // queue_timeout >= 0 holds already: the parser refuses negative durations.
    CheckDurationAtMost(errors_, "queue_timeout", c.queue_timeout(),
                        kMaxQueueTimeout);
  }

  void ValidateSingleflight(const cfg::Route& route, bool match_ok) {
    Field f(&errors_, ".singleflight");
    const cfg::Singleflight& sf = route.singleflight();
    for (int i = 0; i < sf.key_headers_size(); ++i) {
      Field k(&errors_, absl::StrCat(".key_headers[", i, "]"));
      CheckHeaderName(errors_, sf.key_headers(i));
    }
    ValidateMaxRequestBytes(sf.max_request_bytes());
    // A broken match already has its error; judging what it matches would only
    // add noise.
    if (!sf.enabled() || !match_ok) return;
    Field e(&errors_, ".enabled");
    const cfg::RouteMatch& match = route.match();
    if (!match.service().empty() && !match.method().empty()) {
      const std::string path =
          absl::StrCat("/", match.service(), "/", match.method());
      if (out_.streaming_methods.contains(path)) {
        errors_.AddError(
            absl::StrCat(path,
                         " is a streaming method (per descriptor_sets); "
                         "singleflight coalesces unary calls only"));
      }
      return;
    }
    // A broad route coalesces the unary methods descriptor_sets know; its
    // streaming and unknown methods pass untouched (SPEC section 2).
    bool matches_unary = false;
    for (const std::string& path : out_.unary_methods) {
      matches_unary = matches_unary || RouteMatchesPath(match, path);
    }
    if (!matches_unary) {
      errors_.AddError(
          "singleflight needs a route that matches one exact method "
          "(service + method) or methods known unary from descriptor_sets");
    }
  }

  // 1..listener.max_message_bytes: a request the listener refuses can never be
  // held anyway. Against a broken listener limit (its own error) only the
  // absolute maximum is checked.
  void ValidateMaxRequestBytes(uint64_t value) {
    CheckAtLeast(errors_, "max_request_bytes", value, 1);
    const uint64_t listener_max = config_.listener().max_message_bytes();
    if (listener_max < 1 || listener_max > kMaxMessageBytes) {
      CheckAtMost(errors_, "max_request_bytes", value, kMaxMessageBytes);
    } else if (value > listener_max) {
      Field f(&errors_, ".max_request_bytes");
      errors_.AddError(absl::StrCat("must be <= listener.max_message_bytes (",
                                    listener_max, ") (got ", value, ")"));
    }
  }

  ValidationErrors& errors_;
  std::string base_dir_;
  LoadedConfig& out_;
  cfg::Config& config_;
  absl::flat_hash_map<std::string, int> cluster_index_;
};

// -----------------------------------------------------------------------------
// Summary helpers.

std::string DescribeMatch(const cfg::RouteMatch& match) {
  if (!match.service().empty()) {
    return absl::StrCat("/", match.service(), "/",
                        match.method().empty() ? "*" : match.method());
  }
  if (!match.prefix().empty()) return absl::StrCat("prefix ", match.prefix());
  return "all calls";
}

std::string Shadow(bool shadow) { return shadow ? " (shadow)" : ""; }

std::string DescribePolicies(const cfg::Route& route) {
  std::vector<std::string> parts;
  if (route.has_timeout()) {
    parts.push_back(absl::StrCat(
        "timeout ", FormatDurationForHumans(ToAbslDuration(route.timeout()))));
  }
  if (route.has_rate_limit()) {
    const cfg::RateLimit& rl = route.rate_limit();
    parts.push_back(absl::StrCat(
        "rate_limit ", rl.requests_per_second(), "/s burst ", rl.burst(),
        rl.key_header().empty() ? "" : absl::StrCat(" per ", rl.key_header()),
        Shadow(rl.shadow())));
  }
  if (route.has_circuit_breaker()) {
    const cfg::CircuitBreaker& cb = route.circuit_breaker();
    parts.push_back(absl::StrCat(
        "circuit_breaker ", cb.consecutive_failures(), " in a row or ",
        cb.failure_rate(), " of >= ", cb.minimum_requests(), " in ",
        FormatDurationForHumans(ToAbslDuration(cb.window())), ", open ",
        FormatDurationForHumans(ToAbslDuration(cb.open_duration())),
        ", deadline failures after ",
        FormatDurationForHumans(ToAbslDuration(cb.deadline_failure_min())),
        Shadow(cb.shadow())));
  }
  if (route.has_singleflight() && route.singleflight().enabled()) {
    const cfg::Singleflight& sf = route.singleflight();
    parts.push_back(absl::StrCat("singleflight key_headers [",
                                 absl::StrJoin(sf.key_headers(), ", "),
                                 "], requests up to ", sf.max_request_bytes(),
                                 " bytes", Shadow(sf.shadow())));
  }
  if (route.has_concurrency()) {
    const cfg::Concurrency& c = route.concurrency();
    parts.push_back(
        absl::StrCat("concurrency ", c.max_in_flight(), " in flight, ",
                     c.max_queued(), " queued for ",
                     FormatDurationForHumans(ToAbslDuration(c.queue_timeout())),
                     Shadow(c.shadow())));
  }
  if (parts.empty()) return "no policies";
  return absl::StrJoin(parts, "; ");
}

std::string DescribeCluster(const cfg::Cluster& cluster) {
  std::string out = absl::StrCat(
      cluster.name(), ": ", absl::StrJoin(cluster.endpoints(), ", "), "; ",
      cfg::Cluster::LoadBalancing_Name(cluster.load_balancing()));
  if (cluster.has_tls()) absl::StrAppend(&out, "; tls");
  if (cluster.has_health_check()) {
    const cfg::HealthCheck& hc = cluster.health_check();
    absl::StrAppend(
        &out, "; health ", cfg::HealthCheck::Mode_Name(hc.mode()), " every ",
        FormatDurationForHumans(ToAbslDuration(hc.interval())), " (timeout ",
        FormatDurationForHumans(ToAbslDuration(hc.timeout())), ")");
  } else {
    absl::StrAppend(&out, "; no health check");
  }
  return out;
}

// A yaml-cpp event handler that keeps nothing and counts the nodes of the text
// (an alias counts once: this pass bounds what yaml-cpp will build, not what a
// walker would visit). Past the budget it throws TooManyNodes, so a huge
// document is refused before any graph of it exists.
class CountingYamlHandler final : public YAML::EventHandler {
 public:
  struct TooManyNodes {};

  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override { Count(); }
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override { Count(); }
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {
    Count();
  }
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    Count();
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    Count();
  }
  void OnMapEnd() override {}

 private:
  void Count() {
    if (++nodes_ > kMaxYamlNodes) throw TooManyNodes{};
  }

  size_t nodes_ = 0;
};

absl::Status YamlError(absl::string_view display_name,
                       const YAML::Exception& e) {
  if (e.mark.is_null()) {
    return absl::InvalidArgumentError(
        absl::StrCat(display_name, ": invalid YAML: ", e.msg));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(display_name, ":", e.mark.line + 1, ":", e.mark.column + 1,
                   ": invalid YAML: ", e.msg));
}

// The one YAML document of `text`, parsed into yaml-cpp's graph, or null when
// the text holds no document.
absl::StatusOr<YAML::Node> ParseOneDocument(const std::string& text,
                                            absl::string_view display_name) {
  try {
    // Count documents and nodes with a parser that builds nothing, stopping at
    // two documents: yaml-cpp's LoadAll can loop forever (and exhaust memory)
    // on some malformed inputs such as ",".
    std::stringstream stream(text);
    YAML::Parser parser(stream);
    CountingYamlHandler counter;
    int count = 0;
    while (count < 2 && parser.HandleNextDocument(counter)) ++count;
    if (count > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          display_name, ": expected one YAML document (got more than one)"));
    }
    if (count == 0) return YAML::Node();
    return YAML::Load(text);
  } catch (const CountingYamlHandler::TooManyNodes&) {
    return absl::InvalidArgumentError(
        absl::StrCat(display_name, ": invalid YAML: more than ", kMaxYamlNodes,
                     " nodes in one document"));
  } catch (const YAML::Exception& e) {
    return YamlError(display_name, e);
  }
}

absl::StatusOr<LoadedConfig> ParseConfigTextOrThrow(std::string_view yaml,
                                                    std::string_view file_name,
                                                    std::string_view base_dir) {
  const absl::string_view display_name(file_name.data(), file_name.size());
  absl::StatusOr<YAML::Node> document =
      ParseOneDocument(std::string(yaml), display_name);
  if (!document.ok()) return document.status();
  if (!document->IsDefined() || document->IsNull()) {
    return absl::InvalidArgumentError(absl::StrCat(
        display_name,
        ": config is empty (expected a YAML map with clusters and routes)"));
  }
  const YAML::Node& root = *document;
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(
        display_name, ": expected a YAML map at the top level (got ",
        Describe(root), ")"));
  }

  LoadedConfig loaded;
  FieldPresence presence;
  {
    ValidationErrors errors;
    try {
      YamlToProto(&errors, &presence).FillMessage(root, &loaded.proto);
    } catch (const YAML::Exception& e) {
      // Not expected (the walker checks node types before reading), but
      // yaml-cpp's exceptions must not cross this boundary.
      errors.AddError(absl::StrCat("invalid YAML: ", e.msg));
    }
    // Range checks on a half-read file would mostly report echoes of these
    // errors.
    BULWARK_RETURN_IF_ERROR(errors.status(file_name));
  }
  FillDefaults(loaded.proto, presence);
  ValidationErrors errors;
  ConfigValidator(&errors, std::string(base_dir), &loaded).Validate();
  BULWARK_RETURN_IF_ERROR(errors.status(file_name));
  return loaded;
}

// Whatever a library throws while a file is loaded (std::bad_alloc from a
// descriptor set, say) is a config error: neither start-up nor a reload may end
// the process because of a file.
absl::Status ExceptionStatus(absl::string_view display_name,
                             const std::exception* e) {
  if (e == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(display_name, ": cannot load: unknown exception"));
  }
  if (dynamic_cast<const std::bad_alloc*>(e) != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(display_name, ": cannot load: out of memory"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(display_name, ": cannot load: ", e->what()));
}

}  // namespace

absl::Duration ToAbslDuration(const google::protobuf::Duration& duration) {
  return absl::Seconds(duration.seconds()) +
         absl::Nanoseconds(duration.nanos());
}

absl::StatusOr<LoadedConfig> ParseConfigText(std::string_view yaml,
                                             std::string_view file_name,
                                             std::string_view base_dir) {
  const absl::string_view display_name(file_name.data(), file_name.size());
  try {
    return ParseConfigTextOrThrow(yaml, file_name, base_dir);
  } catch (const std::exception& e) {
    return ExceptionStatus(display_name, &e);
  } catch (...) {
    return ExceptionStatus(display_name, nullptr);
  }
}

absl::StatusOr<LoadedConfig> LoadConfigFile(const std::string& path) {
  absl::StatusOr<std::string> content = ReadConfigFile(path);
  if (!content.ok()) {
    return absl::Status(content.status().code(),
                        absl::StrCat(path, ": cannot read config file: ",
                                     content.status().message()));
  }
  try {
    // Relative paths in the file are relative to the file: the sidecar may be
    // started from any directory, and a ConfigMap mounts its files together.
    const std::string base_dir =
        std::filesystem::path(path).parent_path().string();
    auto loaded = ParseConfigText(*content, path, base_dir);
    if (loaded.ok()) loaded->source_path = path;
    return loaded;
  } catch (const std::exception& e) {
    return ExceptionStatus(path, &e);
  } catch (...) {
    return ExceptionStatus(path, nullptr);
  }
}

std::string ConfigToJson(const config::v1::Config& config) {
  pb::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  if (auto status = pb::util::MessageToJsonString(config, &json, options);
      !status.ok()) {
    // Cannot happen for a Config (no Any, no unknown enum values from YAML);
    // keep the answer valid JSON anyway.
    return absl::StrCat("{\"error\": \"",
                        absl::CEscape(std::string(status.message())), "\"}\n");
  }
  return json;
}

std::string SummarizeConfig(const LoadedConfig& loaded) {
  const cfg::Config& config = loaded.proto;
  std::vector<std::string> lines;
  if (!loaded.source_path.empty()) {
    lines.push_back(absl::StrCat("config: ", loaded.source_path));
  }
  const cfg::Listener& listener = config.listener();
  lines.push_back(absl::StrCat(
      "listener: ", listener.address(),
      listener.has_tls()
          ? (listener.tls().client_ca_file().empty() ? " (tls)" : " (mtls)")
          : " (h2c)",
      ", max_message_bytes ", listener.max_message_bytes(),
      ", max_concurrent_streams ", listener.max_concurrent_streams(),
      ", handshake_timeout ",
      FormatDurationForHumans(ToAbslDuration(listener.handshake_timeout())),
      ", idle_timeout ",
      FormatDurationForHumans(ToAbslDuration(listener.idle_timeout()))));
  lines.push_back(absl::StrCat("admin: ", config.admin().address()));
  lines.push_back(absl::StrCat(
      "workers: ", config.workers(),
      config.workers() == 0 ? " (one per core)" : "", ", drain_timeout ",
      FormatDurationForHumans(ToAbslDuration(config.drain_timeout()))));
  if (!config.descriptor_sets().empty()) {
    lines.push_back(absl::StrCat(
        "descriptor_sets: ", config.descriptor_sets_size(), " file(s), ",
        loaded.unary_methods.size(), " unary and ",
        loaded.streaming_methods.size(), " streaming methods known"));
  }
  lines.push_back(absl::StrCat("clusters: ", config.clusters_size()));
  for (const cfg::Cluster& cluster : config.clusters()) {
    lines.push_back(absl::StrCat("  ", DescribeCluster(cluster)));
  }
  lines.push_back(
      absl::StrCat("routes: ", config.routes_size(), " (first match wins)"));
  for (const cfg::Route& route : config.routes()) {
    lines.push_back(
        absl::StrCat("  ", route.name(), ": ", DescribeMatch(route.match()),
                     " -> ", route.cluster(), "; ", DescribePolicies(route)));
  }
  return absl::StrCat(absl::StrJoin(lines, "\n"), "\n");
}

}  // namespace bulwark
