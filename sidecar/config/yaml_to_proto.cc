#include "sidecar/config/yaml_to_proto.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

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
#include "google/protobuf/message.h"
#include "sidecar/config/common.h"
#include "sidecar/validation_errors.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/yaml.h"

namespace bulwark::config_internal {
namespace {

// The largest google.protobuf.Duration (10000 years), per duration.proto.
constexpr int64_t kMaxProtoDurationSeconds = 315'576'000'000;

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

using R = pb::Reflection;
template <typename T>
using Setter = void (R::*)(pb::Message*, const pb::FieldDescriptor*, T) const;

// Sets a singular number field, or appends to a repeated one, through the
// accessors of the field's width: the narrow ones (int32, uint32, float) take
// `v` cast, the parser having checked its range.
template <typename Narrow, typename Wide>
void SetNumber(pb::Message* message, const pb::FieldDescriptor* field, Wide v,
               Setter<Narrow> set_narrow, Setter<Narrow> add_narrow,
               Setter<Wide> set_wide, Setter<Wide> add_wide) {
  const R* r = message->GetReflection();
  const bool repeated = field->is_repeated();
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
    case pb::FieldDescriptor::CPPTYPE_UINT32:
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      (r->*(repeated ? add_narrow : set_narrow))(message, field,
                                                 static_cast<Narrow>(v));
      return;
    default:
      (r->*(repeated ? add_wide : set_wide))(message, field, v);
  }
}

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

}  // namespace

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

void YamlToProto::FillMessage(const YAML::Node& node, pb::Message* message) {
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

std::string YamlToProto::UnknownFieldMessage(const pb::Descriptor& descriptor,
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
  if (best != nullptr && best_distance <= 2 && best_distance * 2 < key.size()) {
    return absl::StrCat("unknown field (did you mean ", best->name(), "?)");
  }
  return absl::StrCat(
      "unknown field (valid fields: ", absl::StrJoin(names, ", "), ")");
}

void YamlToProto::FillField(const YAML::Node& node, pb::Message* message,
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

bool YamlToProto::Spend(const YAML::Node& node) {
  if (budget_spent_) return false;
  ++nodes_visited_;
  if (node.IsScalar()) scalar_bytes_ += node.Scalar().size();
  if (nodes_visited_ <= kMaxYamlNodes && scalar_bytes_ <= kMaxYamlScalarBytes) {
    return true;
  }
  budget_spent_ = true;
  errors_->AddError(absl::StrCat(
      "the document is too large once YAML aliases are expanded (more than ",
      kMaxYamlNodes, " nodes or ", kMaxYamlScalarBytes >> 20,
      " MiB of scalars); stopped reading here"));
  return false;
}

void YamlToProto::FillValue(const YAML::Node& node, pb::Message* message,
                            const pb::FieldDescriptor* field) {
  if (!Spend(node)) return;
  const pb::Reflection* reflection = message->GetReflection();
  const bool repeated = field->is_repeated();
  if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
    if (field->message_type()->full_name() == "google.protobuf.Duration") {
      if (std::optional<pb::Duration> d = ParseDuration(node); d.has_value()) {
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
      if (std::optional<int64_t> v = ParseSigned(*text, field); v.has_value()) {
        SetNumber<int32_t>(message, field, *v, &R::SetInt32, &R::AddInt32,
                           &R::SetInt64, &R::AddInt64);
      }
      return;
    case pb::FieldDescriptor::CPPTYPE_UINT32:
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      if (std::optional<uint64_t> v = ParseUnsigned(*text, field);
          v.has_value()) {
        SetNumber<uint32_t>(message, field, *v, &R::SetUInt32, &R::AddUInt32,
                            &R::SetUInt64, &R::AddUInt64);
      }
      return;
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      if (std::optional<double> v = ParseDouble(*text); v.has_value()) {
        SetNumber<float>(message, field, *v, &R::SetFloat, &R::AddFloat,
                         &R::SetDouble, &R::AddDouble);
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

absl::string_view YamlToProto::KindOf(const pb::FieldDescriptor* field) {
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

std::optional<std::string> YamlToProto::ScalarText(
    const YAML::Node& node, const pb::FieldDescriptor* field) {
  if (node.IsScalar()) return node.Scalar();
  errors_->AddError(
      absl::StrCat("expected ", KindOf(field), " (got ", Describe(node), ")"));
  return std::nullopt;
}

std::optional<bool> YamlToProto::ParseBool(const std::string& text) {
  // YAML 1.1's yes/no/on/off are refused on purpose: `shadow: no` reading as
  // false is exactly the kind of surprise a strict loader exists to prevent.
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "true") return true;
  if (lower == "false") return false;
  errors_->AddError(
      absl::StrCat("expected true or false (got ", Quote(text), ")"));
  return std::nullopt;
}

bool YamlToProto::IsDigits(absl::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return absl::ascii_isdigit(static_cast<unsigned char>(c));
  });
}

std::optional<int64_t> YamlToProto::ParseSigned(
    const std::string& text, const pb::FieldDescriptor* field) {
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

std::optional<uint64_t> YamlToProto::ParseUnsigned(
    const std::string& text, const pb::FieldDescriptor* field) {
  const bool is32 = field->cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT32;
  const absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  if (absl::StartsWith(trimmed, "-") && IsDigits(trimmed.substr(1))) {
    errors_->AddError(absl::StrCat("must not be negative (got ", trimmed, ")"));
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

std::optional<double> YamlToProto::ParseDouble(const std::string& text) {
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
  errors_->AddError(absl::StrCat("expected a number (got ", Quote(text), ")"));
  return std::nullopt;
}

std::optional<int> YamlToProto::ParseEnum(const std::string& text,
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
  errors_->AddError(absl::StrCat("unknown value ", Quote(text),
                                 " (valid: ", absl::StrJoin(names, ", "), ")"));
  return std::nullopt;
}

std::optional<pb::Duration> YamlToProto::ParseDuration(const YAML::Node& node) {
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
  if (absl::SimpleAtod(text, &bare_number) || !absl::ParseDuration(text, &d)) {
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

}  // namespace bulwark::config_internal
