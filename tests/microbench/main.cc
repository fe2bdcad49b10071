// One Google Benchmark binary for every policy: bench files register, this runs
// them.
#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"

int main(int argc, char** argv) {
  // As the sidecar runs (sidecar/main.cc): Debian's Abseil checks every Mutex
  // for lock-order cycles by default, which would dominate these numbers.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
