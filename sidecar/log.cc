#include "sidecar/log.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace bulwark {
namespace {

LogLevel LevelFromEnv() {
  const char* env = std::getenv("BULWARK_LOG_LEVEL");
  if (env == nullptr) return LogLevel::kInfo;
  if (std::strcmp(env, "debug") == 0) return LogLevel::kDebug;
  if (std::strcmp(env, "warning") == 0) return LogLevel::kWarning;
  if (std::strcmp(env, "error") == 0) return LogLevel::kError;
  return LogLevel::kInfo;
}

const LogLevel kThreshold = LevelFromEnv();

}  // namespace

bool LogEnabled(LogLevel level) { return level >= kThreshold; }

void LogLine(LogLevel level, std::string_view message) {
  static constexpr const char* kNames[] = {"debug", "info", "warning", "error"};
  std::string line = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                                      absl::UTCTimeZone());
  line += " bulwark ";
  line += kNames[static_cast<int>(level)];
  line += ": ";
  line.append(message.data(), message.size());
  line += '\n';
  [[maybe_unused]] ssize_t n = write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace bulwark
