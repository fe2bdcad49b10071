#include "sidecar/access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sidecar/json_string.h"
#include "sidecar/log.h"
#include "sidecar/metrics.h"

namespace bulwark {
namespace {

// ", \"key\": " then the value as a JSON string, or null when empty; `key`
// includes its quotes and colon.
void AppendField(std::string& out, std::string_view key_part,
                 std::string_view value) {
  out.append(key_part);
  if (value.empty()) {
    out += "null";
  } else {
    AppendJsonString(out, absl::string_view(value.data(), value.size()));
  }
}

// Milliseconds with three decimals, from integer microseconds (no printf).
void AppendMillis(std::string& out, absl::Duration d) {
  int64_t micros = absl::ToInt64Microseconds(d);
  if (micros < 0) {
    out += '-';
    micros = -micros;
  }
  absl::StrAppend(&out, micros / 1000, ".");
  const int frac = static_cast<int>(micros % 1000);
  out += static_cast<char>('0' + frac / 100);
  out += static_cast<char>('0' + frac / 10 % 10);
  out += static_cast<char>('0' + frac % 10);
}

// RFC 3339 in UTC with milliseconds. The part up to the seconds is formatted
// once a second per thread (cctz's formatting costs thousands of instructions).
void AppendTime(std::string& out, absl::Time time) {
  struct Cache {
    int64_t second = INT64_MIN;
    std::string prefix;  // "2026-12-02T12:00:00"
  };
  thread_local Cache cache;
  const int64_t millis = absl::ToUnixMillis(time);
  const int64_t second = millis >= 0 ? millis / 1000 : (millis - 999) / 1000;
  if (second != cache.second) {
    cache.second = second;
    cache.prefix =
        absl::FormatTime("%Y-%m-%dT%H:%M:%S", absl::FromUnixSeconds(second),
                         absl::UTCTimeZone());
  }
  const int ms = static_cast<int>(millis - second * 1000);
  out += cache.prefix;
  out += '.';
  out += static_cast<char>('0' + ms / 100);
  out += static_cast<char>('0' + ms / 10 % 10);
  out += static_cast<char>('0' + ms % 10);
  out += 'Z';
}

bool IsLowerHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

std::string FormatAccessLogLine(const AccessLogRecord& r) {
  std::string out;
  out.reserve(384);
  out += "{\"time\": \"";
  AppendTime(out, r.time);
  out += '"';
  AppendField(out, ", \"route\": ", r.route);
  AppendField(out, ", \"method\": ", r.method);
  AppendField(out, ", \"peer\": ", r.peer);
  AppendField(out, ", \"endpoint\": ", r.endpoint);
  AppendField(out, ", \"code\": ", GrpcCodeName(r.grpc_code));
  AppendField(out, ", \"reason\": ", r.reason);
  out += ", \"duration_ms\": ";
  AppendMillis(out, r.duration);
  out += ", \"upstream_ms\": ";
  if (r.upstream.has_value()) {
    AppendMillis(out, *r.upstream);
  } else {
    out += "null";
  }
  absl::StrAppend(&out, ", \"attempts\": ", r.attempts);
  AppendField(out, ", \"singleflight\": ", r.singleflight);
  absl::StrAppend(&out, ", \"request_bytes\": ", r.request_bytes,
                  ", \"response_bytes\": ", r.response_bytes);
  if (!r.trace_id.empty()) AppendField(out, ", \"trace_id\": ", r.trace_id);
  out += "}\n";
  return out;
}

std::string_view TraceIdOf(std::string_view traceparent) {
  // version "-" trace-id (32) "-" parent-id (16) "-" flags (2); later
  // versions may append fields.
  if (traceparent.size() < 55 || traceparent[2] != '-' ||
      traceparent[35] != '-' || traceparent[52] != '-') {
    return "";
  }
  const std::string_view version = traceparent.substr(0, 2);
  const std::string_view id = traceparent.substr(3, 32);
  if (!IsLowerHex(version) || version == "ff" || !IsLowerHex(id) ||
      !IsLowerHex(traceparent.substr(36, 16)) ||
      id == "00000000000000000000000000000000") {
    return "";
  }
  return id;
}

absl::StatusOr<int> AccessLogWriter::OpenFile(const std::string& path) {
  if (path == "/dev/stdout") {
    const int fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
    if (fd < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("access_log.path ", path, ": ", strerror(errno)));
    }
    return fd;
  }
  // O_NONBLOCK: a FIFO without a reader is an error (ENXIO), not a hang.
  const int fd =
      open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK,
           0644);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("access_log.path ", path, ": ", strerror(errno)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat(
        "access_log.path ", path,
        ": not a regular file (use /dev/stdout for the standard output)"));
  }
  fcntl(fd, F_SETFL, O_WRONLY | O_APPEND);  // blocking writes, on its thread
  return fd;
}

absl::StatusOr<std::shared_ptr<AccessLogWriter>> AccessLogWriter::Open(
    const std::string& path, prometheus::Counter* dropped) {
  absl::StatusOr<int> fd = OpenFile(path);
  if (!fd.ok()) return fd.status();
  return std::shared_ptr<AccessLogWriter>(
      new AccessLogWriter(path, *fd, dropped));
}

AccessLogWriter::AccessLogWriter(std::string path, int fd,
                                 prometheus::Counter* dropped)
    : path_(std::move(path)),
      dropped_counter_(dropped),
      fd_(fd),
      thread_([this] { Run(); }) {}

AccessLogWriter::~AccessLogWriter() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
  close(fd_);
}

bool AccessLogWriter::Write(std::string line) {
  {
    absl::MutexLock lock(&mu_);
    if (queued_bytes_ + line.size() <= kMaxQueuedBytes && !stopping_) {
      queued_bytes_ += line.size();
      queue_.push_back(std::move(line));
      ++submitted_;
      return true;
    }
    ++dropped_;
  }
  if (dropped_counter_ != nullptr) dropped_counter_->Increment();
  return false;
}

void AccessLogWriter::Reopen() {
  absl::MutexLock lock(&mu_);
  reopen_ = true;
}

void AccessLogWriter::Flush() {
  absl::MutexLock lock(&mu_);
  const uint64_t target = submitted_;
  auto done = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return written_ >= target || stopping_;
  };
  mu_.Await(absl::Condition(&done));
}

uint64_t AccessLogWriter::dropped() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

void AccessLogWriter::Run() {
  std::vector<std::string> batch;
  bool failing = false;  // a write failed: logged once until one succeeds
  while (true) {
    bool reopen = false;
    bool stopping = false;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !queue_.empty() || reopen_ || stopping_;
      };
      mu_.Await(absl::Condition(&ready));
      batch.assign(std::make_move_iterator(queue_.begin()),
                   std::make_move_iterator(queue_.end()));
      queue_.clear();
      queued_bytes_ = 0;
      reopen = std::exchange(reopen_, false);
      stopping = stopping_;
    }
    if (reopen) {
      absl::StatusOr<int> fd = OpenFile(path_);
      if (fd.ok()) {
        close(fd_);
        fd_ = *fd;
      } else {
        LogLine(LogLevel::kWarning,
                absl::StrCat("access log: cannot reopen (keeping the old "
                             "file): ",
                             fd.status().message()));
      }
    }
    // One write per batch where it fits: lines joined.
    std::string joined;
    for (std::string& line : batch) joined += line;
    size_t off = 0;
    while (off < joined.size()) {
      const ssize_t n = write(fd_, joined.data() + off, joined.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        if (!failing) {
          LogLine(LogLevel::kWarning,
                  absl::StrCat("access log ", path_, ": write failed (",
                               strerror(errno),
                               "); lines are lost until a "
                               "write succeeds"));
        }
        failing = true;
        break;
      }
      off += static_cast<size_t>(n);
    }
    if (off == joined.size()) failing = false;
    {
      absl::MutexLock lock(&mu_);
      written_ += batch.size();
    }
    batch.clear();
    if (stopping) {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) return;
    }
  }
}

}  // namespace bulwark
