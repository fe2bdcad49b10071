// ValidationErrors: collects every problem found in a configuration, each under
// the field path it concerns, and turns them into one InvalidArgument status,
// so an operator sees all mistakes of a file at once instead of fixing them one
// run at a time. Shaped after gRPC's ValidationErrors / ScopedField.
//
//   ValidationErrors errors;
//   {
//     ValidationErrors::ScopedField route(&errors, "routes[2]");
//     ValidationErrors::ScopedField field(&errors, ".rate_limit");
//     ValidationErrors::ScopedField burst(&errors, ".burst");
//     errors.AddError("must be >= 1 (got 0)");
//   }
//   errors.status("bulwark.yaml")
//     => InvalidArgument "bulwark.yaml: routes[2].rate_limit.burst: must be >=
//     1 (got 0)"
//
// Not thread-safe (one validation pass owns one instance). AddError costs one
// string of the path; memory is bounded by the error cap.
#ifndef BULWARK_SIDECAR_VALIDATION_ERRORS_H_
#define BULWARK_SIDECAR_VALIDATION_ERRORS_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace bulwark {

class ValidationErrors {
 public:
  // Past this many errors the rest are only counted: a file broken everywhere
  // (a wrong indentation level, say) would otherwise bury its first, most
  // useful error.
  static constexpr size_t kDefaultMaxErrors = 20;

  explicit ValidationErrors(size_t max_errors = kDefaultMaxErrors)
      : max_errors_(max_errors) {}
  ValidationErrors(const ValidationErrors&) = delete;
  ValidationErrors& operator=(const ValidationErrors&) = delete;

  // Pushes one path component for its lifetime: "routes[2]" then ".rate_limit",
  // ".burst". Components are concatenated as given; a leading '.' of the whole
  // path is dropped, so a walker may push ".name" at every level.
  class ScopedField {
   public:
    ScopedField(ValidationErrors* errors, std::string field) : errors_(errors) {
      errors_->fields_.push_back(std::move(field));
    }
    ~ScopedField() { errors_->fields_.pop_back(); }
    ScopedField(const ScopedField&) = delete;
    ScopedField& operator=(const ScopedField&) = delete;

   private:
    ValidationErrors* errors_;
  };

  // Records `message` for the current path.
  void AddError(std::string_view message) {
    ++count_;
    if (lines_.size() >= max_errors_) return;
    std::string path = CurrentPath();
    lines_.push_back(path.empty() ? std::string(message)
                                  : absl::StrCat(path, ": ", Absl(message)));
  }

  // The current path, e.g. "routes[2].rate_limit.burst"; "" at the top.
  std::string CurrentPath() const {
    std::string path = absl::StrJoin(fields_, "");
    if (!path.empty() && path.front() == '.') path.erase(0, 1);
    return path;
  }

  bool ok() const { return count_ == 0; }
  // Errors recorded, including those past the cap.
  size_t size() const { return count_; }

  // OK when no error was recorded; otherwise one InvalidArgument with a line
  // per error, each "PREFIX: path: message" (the prefix is the file name; ""
  // leaves it out), and a last line "... and N more errors" when the cap was
  // reached.
  absl::Status status(std::string_view prefix) const {
    if (ok()) return absl::OkStatus();
    std::vector<std::string> out;
    out.reserve(lines_.size() + 1);
    for (const std::string& line : lines_) {
      out.push_back(prefix.empty() ? line
                                   : absl::StrCat(Absl(prefix), ": ", line));
    }
    if (const size_t more = count_ - lines_.size(); more > 0) {
      out.push_back(absl::StrCat("... and ", more,
                                 more == 1 ? " more error" : " more errors"));
    }
    return absl::InvalidArgumentError(absl::StrJoin(out, "\n"));
  }

 private:
  // Debian's Abseil has its own string_view type; the API takes the standard
  // one.
  static absl::string_view Absl(std::string_view s) {
    return absl::string_view(s.data(), s.size());
  }

  size_t max_errors_;
  size_t count_ = 0;
  std::vector<std::string> fields_;
  std::vector<std::string> lines_;
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_VALIDATION_ERRORS_H_
