// bulwark: the gRPC resilience sidecar's command line (SPEC section 1).
//   bulwark --config PATH              run
//   bulwark --config PATH --validate   check the file, print a summary, exit 0
//   or 1 bulwark --version | --help
// Exit codes: 0 clean exit, 1 configuration or usage error, 2 runtime failure.
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/synchronization/mutex.h"
#include "sidecar/allocator.h"
#include "sidecar/config_loader.h"
#include "sidecar/log.h"
#include "sidecar/sidecar.h"

namespace {

constexpr char kUsage[] =
    "usage: bulwark --config PATH [--validate]\n"
    "       bulwark --version | --help\n"
    "\n"
    "Bulwark is a gRPC resilience sidecar: per route rate limiting, circuit "
    "breaking,\n"
    "request coalescing and a concurrency limit in front of health-checked "
    "upstreams.\n"
    "\n"
    "  --config PATH   the YAML configuration (see the README and SPEC)\n"
    "  --validate      check the configuration, print a summary and exit 0 "
    "(valid) or 1\n"
    "  --version       print the version\n"
    "  --help          print this help\n"
    "\n"
    "Signals: SIGTERM/SIGINT drain and exit; SIGHUP reloads the configuration "
    "(so does a\n"
    "change of the file's content). Log level: "
    "BULWARK_LOG_LEVEL=debug|info|warning|error.\n";

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  bool validate = false;
  for (int i = 1; i < argc; ++i) {
    const char* arg = argv[i];
    if (std::strcmp(arg, "--help") == 0 || std::strcmp(arg, "-h") == 0) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (std::strcmp(arg, "--version") == 0) {
      std::printf("bulwark %s\n", BULWARK_VERSION);
      return 0;
    }
    if (std::strcmp(arg, "--validate") == 0) {
      validate = true;
    } else if (std::strcmp(arg, "--config") == 0 && i + 1 < argc) {
      config_path = argv[++i];
    } else if (std::strncmp(arg, "--config=", 9) == 0) {
      config_path = arg + 9;
    } else {
      std::fprintf(stderr, "bulwark: unknown argument '%s'\n\n%s", arg, kUsage);
      return 1;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "bulwark: --config PATH is required\n\n%s", kUsage);
    return 1;
  }

  auto config = bulwark::LoadConfigFile(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n",
                 std::string(config.status().message()).c_str());
    return 1;
  }
  if (validate) {
    std::printf("%s: valid\n%s", config_path.c_str(),
                bulwark::SummarizeConfig(*config).c_str());
    return 0;
  }

  // Debian's Abseil checks every Mutex for lock-order cycles by default:
  // measurable CPU on the data path and nothing a release build needs.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  bulwark::ConfigureAllocator();
  bulwark::Log(bulwark::LogLevel::kInfo, "memory allocator: %s",
               bulwark::AllocatorName());
  bulwark::Sidecar::BlockSignals();
  auto sidecar = bulwark::Sidecar::Create(*std::move(config));
  if (!sidecar.ok()) {
    bulwark::Log(bulwark::LogLevel::kError, "cannot start: %s",
                 std::string(sidecar.status().message()));
    return 2;
  }
  return (*sidecar)->Run(bulwark::ReleaseFreeMemory);
}
