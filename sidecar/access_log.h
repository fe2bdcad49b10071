// The access log (SPEC section 10): one JSON object per line per finished
// call, written by a thread of its own so that a call never waits for the
// file. Lines go through a bounded queue (kMaxQueuedBytes); when it is full a
// line is dropped and counted (bulwark_access_log_dropped_total), never
// waited for. Reopen (SIGHUP) makes the writer open the path again before its
// next write, for log rotation.
//
// Thread-safety: Write and Reopen from any thread. Cost on the calling
// thread: formatting the line (a few hundred bytes) and one short critical
// section to queue it; only for calls the log keeps (`sample`,
// `errors_only`).
#ifndef BULWARK_SIDECAR_ACCESS_LOG_H_
#define BULWARK_SIDECAR_ACCESS_LOG_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"

namespace bulwark {

// What one line says. Empty strings and unset optionals are written as null
// (trace_id is left out when absent).
struct AccessLogRecord {
  absl::Time time;  // when the call ended (wall clock)
  std::string_view route;
  std::string_view method;    // "pkg.Service/Method"
  std::string peer;           // "ip:port"
  std::string_view endpoint;  // the answering attempt's endpoint
  int grpc_code = 0;
  std::string_view reason;  // set when the sidecar answered
  absl::Duration duration;
  std::optional<absl::Duration> upstream;  // the answering attempt's time
  int attempts = 0;
  std::string_view singleflight;  // "leader", "follower"
  uint64_t request_bytes = 0;
  uint64_t response_bytes = 0;
  std::string_view trace_id;
};

// The JSON line for `record`, newline included.
std::string FormatAccessLogLine(const AccessLogRecord& record);

// The trace id of a W3C `traceparent` value ("00-<32 hex>-<16 hex>-<2 hex>"),
// or "" if the value is not one (an all-zero id is invalid too).
std::string_view TraceIdOf(std::string_view traceparent);

class AccessLogWriter {
 public:
  // Queued bytes past which lines are dropped.
  static constexpr size_t kMaxQueuedBytes = 4 << 20;

  // Opens `path` for appending (created 0644 if absent; "/dev/stdout" writes
  // to the process's standard output). Errors name the path. `dropped` (may
  // be null) counts dropped lines.
  static absl::StatusOr<std::shared_ptr<AccessLogWriter>> Open(
      const std::string& path, prometheus::Counter* dropped);
  ~AccessLogWriter();  // writes what is queued, then joins the thread

  AccessLogWriter(const AccessLogWriter&) = delete;
  AccessLogWriter& operator=(const AccessLogWriter&) = delete;

  // Queues `line`; false (and counted) if the queue is full. Never blocks on
  // the file.
  bool Write(std::string line) ABSL_LOCKS_EXCLUDED(mu_);
  // The writer opens the path again before its next write.
  void Reopen() ABSL_LOCKS_EXCLUDED(mu_);
  // Blocks until every line queued so far is written (tests, shutdown).
  void Flush() ABSL_LOCKS_EXCLUDED(mu_);

  const std::string& path() const { return path_; }
  uint64_t dropped() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  AccessLogWriter(std::string path, int fd, prometheus::Counter* dropped);
  static absl::StatusOr<int> OpenFile(const std::string& path);
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  const std::string path_;
  prometheus::Counter* const dropped_counter_;
  int fd_;  // the writer thread's own once started
  mutable absl::Mutex mu_;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t written_ ABSL_GUARDED_BY(mu_) = 0;  // lines handed to the file
  uint64_t submitted_ ABSL_GUARDED_BY(mu_) = 0;
  bool reopen_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace bulwark

#endif  // BULWARK_SIDECAR_ACCESS_LOG_H_
