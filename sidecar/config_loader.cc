#include "sidecar/config_loader.h"

#include <exception>
#include <filesystem>
#include <new>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "sidecar/config/defaults.h"
#include "sidecar/config/validator.h"
#include "sidecar/config/yaml_to_proto.h"
#include "sidecar/file_util.h"
#include "sidecar/status_macros.h"
#include "sidecar/validation_errors.h"
#include "yaml-cpp/yaml.h"

namespace bulwark {
namespace {

using config_internal::ConfigValidator;
using config_internal::Describe;
using config_internal::FieldPresence;
using config_internal::FillDefaults;
using config_internal::ParseOneDocument;
using config_internal::YamlToProto;

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

}  // namespace bulwark
