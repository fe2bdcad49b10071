// PacedLoad: open-loop gRPC callers against one sidecar port for the global
// rate limit tests (global_rate_limit_test, redis_cluster_test). Each thread
// calls bulwark.demo.v1.Demo at its share of `rate`, on a schedule that does
// not wait for answers (a caller paced, not a closed loop), and every call is
// recorded with its start, duration, status and whether the sidecar said
// rate_limited (x-bulwark-reason), so a test counts admitted calls by start
// time in any window. Thread-safety: Between may be called while the load
// runs. Cost: one record per call, kept until destruction.
#ifndef BULWARK_TESTS_INTEGRATION_PACED_LOAD_H_
#define BULWARK_TESTS_INTEGRATION_PACED_LOAD_H_

#include <atomic>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace bulwark::test {

struct PacedCall {
  absl::Time start;
  absl::Duration took;
  grpc::StatusCode code;
  bool rate_limited;
};

struct Counts {
  int ok = 0;
  int rate_limited = 0;
  int other = 0;
  absl::Duration max_latency;
  int total() const { return ok + rate_limited + other; }
};

std::string ToString(const Counts& c);

class PacedLoad {
 public:
  struct Options {
    int port = 0;
    double rate = 100;  // calls per second, over all threads
    int threads = 1;
    std::string method = "Echo";  // Echo or Write
    std::vector<std::pair<std::string, std::string>> metadata;
  };

  explicit PacedLoad(Options options);
  ~PacedLoad() { Stop(); }
  PacedLoad(const PacedLoad&) = delete;
  PacedLoad& operator=(const PacedLoad&) = delete;

  void Stop();
  // Calls that started in [from, to).
  Counts Between(absl::Time from, absl::Time to);

 private:
  void Run(int thread, absl::Time start);

  const Options options_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  absl::Mutex mu_;
  std::vector<PacedCall> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace bulwark::test

#endif  // BULWARK_TESTS_INTEGRATION_PACED_LOAD_H_
