// Checks that the configuration loader answers every input with a Status:
// arbitrary bytes as the YAML text of a config file go through
// bulwark::ParseConfigText, which must never crash, hang or let a yaml-cpp
// exception escape, and whose errors must name the file (every error line
// starts with the display name, as config_loader.h promises; the one exception
// is the error cap's "... and N more errors").
//
// Inputs are capped at 64 KiB (a real config is a few KiB; the cap keeps each
// run short). Inputs that could name a device or kernel file (/dev/zero,
// /dev/stdin, /proc/...) are skipped: the loader reads every file a config
// names (descriptor_sets, TLS files) in full, and whoever writes the config may
// read what they like, but the fuzzer must not block on stdin. A path can only
// spell those names literally or through a double-quoted escape, hence the two
// filters below.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "sidecar/config_loader.h"
#include "tests/fuzz/byte_reader.h"

namespace {

constexpr size_t kMaxInputBytes = 64 * 1024;
constexpr std::string_view kDisplayName = "fuzz.yaml";

bool MayNameASpecialFile(absl::string_view text) {
  return absl::StrContains(text, '\\') || absl::StrContains(text, "dev") ||
         absl::StrContains(text, "proc") || absl::StrContains(text, "sys");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > kMaxInputBytes) return -1;  // not added to the corpus
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (MayNameASpecialFile(text)) return -1;

  auto loaded = bulwark::ParseConfigText(text, kDisplayName, "/nonexistent");
  if (loaded.ok()) {
    // A config that loads also prints (GET /config and --validate do this).
    FUZZ_CHECK(!bulwark::ConfigToJson(loaded->proto).empty());
    FUZZ_CHECK(!bulwark::SummarizeConfig(*loaded).empty());
    FUZZ_CHECK(loaded->source_path.empty());
    return 0;
  }
  const absl::Status& status = loaded.status();
  FUZZ_CHECK(!status.message().empty());
  for (absl::string_view line : absl::StrSplit(status.message(), '\n')) {
    // The error cap's summary line is the one line without the file name.
    if (line.empty() || absl::StartsWith(line, "... and ")) continue;
    if (!absl::StartsWith(line, absl::string_view(kDisplayName.data(),
                                                  kDisplayName.size()))) {
      std::fprintf(stderr,
                   "config_fuzz: error line without the file name in:\n%s\n",
                   std::string(status.message()).c_str());
      FUZZ_CHECK(false);
    }
  }
  return 0;
}
