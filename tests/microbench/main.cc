// One Google Benchmark binary for every policy: bench files register, this runs them.
#include "benchmark/benchmark.h"

BENCHMARK_MAIN();
