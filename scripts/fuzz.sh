#!/usr/bin/env bash
# Builds the fuzz targets of tests/fuzz/ with clang, libFuzzer and ASan/UBSan into
# build-fuzz/ (the libraries too, instrumented for coverage), then runs each target for a
# bounded time starting from its seed corpus, and prints the executions per target.
#
#   scripts/fuzz.sh                      # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh h2_session config
#
# Environment:
#   FUZZ_SECONDS     time per target (default 60)
#   FUZZ_JOBS        build parallelism (default 1: the machine is shared)
#   FUZZ_BUILD_DIR   build directory (default <repo>/build-fuzz)
#   FUZZ_CMAKE_ARGS  extra configure arguments (e.g. -DBULWARK_ALLOW_MISSING=ON)
#
# New interesting inputs go to a scratch corpus (<build>/corpus/<name>/), never into the
# repository; crashes, leaks and timeouts go to <build>/artifacts/<name>/ and are listed at
# the end. To keep a finding as a regression test, copy it into tests/fuzz/<name>_corpus/
# once the bug is fixed (ctest replays every file there). Exit status: non-zero if any
# target found something.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
JOBS="${FUZZ_JOBS:-1}"
ALL_TARGETS=(config grpc_framing route_match singleflight_key policies h2_session)
if [[ $# -gt 0 ]]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

if ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: clang++ not found (apt-get install clang)" >&2
  exit 2
fi
# libFuzzer's runtime ships separately on some Debian setups.
probe_dir="$(mktemp -d)"
trap 'rm -rf "$probe_dir"' EXIT
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' \
  >"$probe_dir/probe.cc"
if ! clang++ -fsanitize=fuzzer "$probe_dir/probe.cc" -o "$probe_dir/probe" 2>/dev/null; then
  echo "fuzz.sh: clang++ -fsanitize=fuzzer does not link;" \
    "apt-get install libclang-rt-14-dev (or libfuzzer-14-dev)" >&2
  exit 2
fi

# Coverage (fuzzer-no-link) and sanitizers on every library the targets link, not only on
# the targets themselves; -fno-sanitize-recover makes a UBSan report a crash.
mkdir -p "$BUILD"
# shellcheck disable=SC2086
cmake -S "$ROOT" -B "$BUILD" -G Ninja \
  -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DBULWARK_FUZZ=ON \
  -DBULWARK_SANITIZE=address,undefined \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link -fno-sanitize-recover=all" \
  ${FUZZ_CMAKE_ARGS:-} >"$BUILD/configure.log" 2>&1 ||
  { cat "$BUILD/configure.log" >&2; exit 2; }
ninja -C "$BUILD" -j "$JOBS" "${TARGETS[@]/%/_fuzz}"

# ASan's leak check runs at exit; UBSan prints a stack with each report.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

status=0
summary=()
for name in "${TARGETS[@]}"; do
  binary="$BUILD/tests/fuzz/${name}_fuzz"
  seeds="$ROOT/tests/fuzz/${name}_corpus"
  scratch="$BUILD/corpus/$name"
  artifacts="$BUILD/artifacts/$name"
  log="$BUILD/fuzz-$name.log"
  mkdir -p "$scratch" "$artifacts"
  marker="$artifacts/.run-started"  # findings of this run are newer than it
  touch "$marker"
  echo "=== $name: ${SECONDS_PER_TARGET}s (log: $log)"
  # The first corpus directory receives new inputs; the seed directory is only read.
  rc=0
  "$binary" -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="$artifacts/" "$scratch" "$seeds" \
    >"$log" 2>&1 || rc=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  coverage="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)"
  found="$(find "$artifacts" -type f -newer "$marker" | wc -l)"
  line="$(printf '%-18s runs %-10s exec/s %-7s %-11s findings %s' "$name" \
    "${runs:-?}" "${speed:-?}" "${coverage:-cov: ?}" "$found")"
  if [[ $rc -ne 0 || $found -ne 0 ]]; then
    status=1
    line+="  <-- exit $rc, see $log and $artifacts/"
    grep -E 'ERROR: |SUMMARY: |invariant broken' "$log" | head -5 || true
  fi
  summary+=("$line")
done

echo
echo "=== summary (${SECONDS_PER_TARGET}s per target)"
printf '%s\n' "${summary[@]}"
exit "$status"
