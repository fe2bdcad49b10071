// Logging to stderr with a level, one line per message, safe from any thread
// (one write(2) per line). The level comes from BULWARK_LOG_LEVEL (debug, info,
// warning, error; default info). Cost: nothing for a disabled level beyond one
// comparison.
#ifndef BULWARK_SIDECAR_LOG_H_
#define BULWARK_SIDECAR_LOG_H_

#include <string_view>

#include "absl/strings/str_format.h"

namespace bulwark {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, std::string_view message);

template <typename... Args>
void Log(LogLevel level, const absl::FormatSpec<Args...>& format,
         const Args&... args) {
  if (!LogEnabled(level)) return;
  const std::string line = absl::StrFormat(format, args...);
  LogLine(level, std::string_view(line.data(), line.size()));
}

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_LOG_H_
