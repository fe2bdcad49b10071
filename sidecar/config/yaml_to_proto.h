// YAML -> bulwark.config.v1.Config, strictly and generically over the
// message's descriptor: every key must name a field (an unknown one gets a
// "did you mean" or the list of valid fields), every value must have the
// field's type. Durations are written like 250ms or 2s (a bare number is
// refused: seconds to one reader, milliseconds to another); booleans are true
// or false only (YAML 1.1's yes/no/on/off are refused); a repeated key is an
// error, not a silent override. Problems go to ValidationErrors under the field
// path, and the walk goes on so that one run reports them all.
//
// Bounded whatever the text holds: ParseOneDocument refuses more than one
// document or more than 1 000 000 nodes in the text (counted by a parser that
// builds nothing, before yaml-cpp builds its graph), and YamlToProto stops at
// 1 000 000 nodes visited or 64 MiB of scalars copied with YAML aliases
// expanded ("billion laughs").
//
// Thread-safety: ParseOneDocument and Describe are thread-safe (no shared
// state); a YamlToProto and a FieldPresence belong to one load. Cost: linear in
// the text, and in the document with aliases expanded, within the budgets.
#ifndef BULWARK_SIDECAR_CONFIG_YAML_TO_PROTO_H_
#define BULWARK_SIDECAR_CONFIG_YAML_TO_PROTO_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/message.h"
#include "sidecar/config/common.h"
#include "sidecar/validation_errors.h"
#include "yaml-cpp/yaml.h"

namespace bulwark::config_internal {

// What a YAML node is, for "(got ...)" in messages.
std::string Describe(const YAML::Node& node);

// The one YAML document of `text`, parsed into yaml-cpp's graph, or null when
// the text holds no document. Errors are InvalidArgument, prefixed with
// `display_name` (and the line and column where yaml-cpp gives them).
absl::StatusOr<YAML::Node> ParseOneDocument(const std::string& text,
                                            absl::string_view display_name);

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

class YamlToProto {
 public:
  YamlToProto(ValidationErrors* errors, FieldPresence* presence)
      : errors_(errors), presence_(presence) {}

  // `node` must be a map or null (an empty block: present, all defaults).
  void FillMessage(const YAML::Node& node, pb::Message* message);

 private:
  static std::string UnknownFieldMessage(const pb::Descriptor& descriptor,
                                         absl::string_view key);
  void FillField(const YAML::Node& node, pb::Message* message,
                 const pb::FieldDescriptor* field);
  // Charges one visit of `node` (and its bytes, for a scalar) to the budget;
  // false once it is spent, after recording one error where that happened.
  bool Spend(const YAML::Node& node);
  // Sets a singular field, or appends to a repeated one.
  void FillValue(const YAML::Node& node, pb::Message* message,
                 const pb::FieldDescriptor* field);
  static absl::string_view KindOf(const pb::FieldDescriptor* field);
  // Quoted and plain scalars are read alike ("200" is a fine burst): what
  // matters is the text, and the field says how to read it.
  std::optional<std::string> ScalarText(const YAML::Node& node,
                                        const pb::FieldDescriptor* field);
  std::optional<bool> ParseBool(const std::string& text);
  static bool IsDigits(absl::string_view text);
  std::optional<int64_t> ParseSigned(const std::string& text,
                                     const pb::FieldDescriptor* field);
  std::optional<uint64_t> ParseUnsigned(const std::string& text,
                                        const pb::FieldDescriptor* field);
  std::optional<double> ParseDouble(const std::string& text);
  std::optional<int> ParseEnum(const std::string& text,
                               const pb::FieldDescriptor* field);
  std::optional<pb::Duration> ParseDuration(const YAML::Node& node);

  ValidationErrors* errors_;
  FieldPresence* presence_;
  size_t nodes_visited_ = 0;
  size_t scalar_bytes_ = 0;
  bool budget_spent_ = false;
};

}  // namespace bulwark::config_internal

#endif  // BULWARK_SIDECAR_CONFIG_YAML_TO_PROTO_H_
