#!/usr/bin/env bash
# Builds Bulwark and runs the whole test suite with ctest:
#   1. build-asan/: every test under AddressSanitizer + UndefinedBehaviorSanitizer (any report
#      fails the test: halt_on_error, no recovery);
#   2. build-tsa/: clang with -Wthread-safety -Werror over the whole tree (compile only: the
#      lock annotations are checked at compile time);
#   3. build/: the release build (RelWithDebInfo, -Werror), built here, tested in step 5;
#   4. build-tsan/: clang with ThreadSanitizer (any report fails the test: halt_on_error).
#      It links an Abseil rebuilt with TSan from Debian's own source package
#      (scripts/build-absl-tsan.sh, into build-tsan-deps/, once per clone), so absl::Mutex is
#      visible to TSan; Debian's gRPC is built against Debian's uninstrumented libabsl and
#      cannot share a process with it, so only the targets without gRPC are built
#      (-DBULWARK_SKIP_GRPC_TARGETS=ON): the sidecar and the unit tests, which run here.
#      Then build/'s integration tests run against build-tsan's sidecar
#      (BULWARK_SIDECAR_BINARY; clients and demo upstream are build/'s release binaries),
#      and a TSan report in the sidecar's log fails the test that started it;
#   5. build/: every test; its ctest summary is the last thing printed.
# BULWARK_QUICK=1 runs steps 3 and 5 only. Safe to run twice; only what changed is rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

JOBS=${JOBS:-$(nproc)}
start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start ))s] $*"; }

configure() {  # configure DIR extra-cmake-args...
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DBULWARK_WERROR=ON "$@" >/dev/null
}

if [ "${BULWARK_QUICK:-0}" != 1 ]; then
  stamp "AddressSanitizer + UndefinedBehaviorSanitizer build"
  configure build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBULWARK_SANITIZE=address,undefined \
    -DCMAKE_CXX_FLAGS="-fno-sanitize-recover=all"
  ninja -C build-asan -j "$JOBS"
  stamp "AddressSanitizer + UndefinedBehaviorSanitizer tests"
  (cd build-asan &&
   ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:abort_on_error=0 \
   UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
   ctest --output-on-failure --timeout 600 -j 2 -LE deploy)

  stamp "clang -Wthread-safety build (compile only)"
  configure build-tsa -DCMAKE_CXX_COMPILER=clang++ -DBULWARK_THREAD_SAFETY=ON
  ninja -C build-tsa -j "$JOBS" bulwark bulwark_core
fi

stamp "release build"
configure build -DCMAKE_BUILD_TYPE=RelWithDebInfo
ninja -C build -j "$JOBS"

if [ "${BULWARK_QUICK:-0}" != 1 ]; then
  stamp "ThreadSanitizer: Abseil from Debian's source, with TSan (once)"
  scripts/build-absl-tsan.sh
  stamp "ThreadSanitizer build (the targets without gRPC)"
  configure build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
    -DBULWARK_SANITIZE=thread -DBULWARK_SKIP_GRPC_TARGETS=ON \
    -DCMAKE_PREFIX_PATH="$PWD/build-tsan-deps/absl"
  ninja -C build-tsan -j "$JOBS" bulwark bulwark_unit_tests
  # The suppressions are for third-party code only, each one justified in the file.
  tsan_options="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/tests/tsan_suppressions.txt"
  stamp "ThreadSanitizer unit tests"
  (cd build-tsan && TSAN_OPTIONS=$tsan_options ctest --output-on-failure --timeout 600 -j 2 -L unit)
  stamp "ThreadSanitizer sidecar under the release build's integration tests"
  tsan_sidecar=$PWD/build-tsan/sidecar/bulwark
  (cd build && TSAN_OPTIONS=$tsan_options BULWARK_SIDECAR_BINARY=$tsan_sidecar \
   ctest --output-on-failure --timeout 600 -j 2 -L integration -LE deploy)
fi

stamp "release tests"
cd build
# Integration tests start real processes on loopback; two at a time suits a 2-core machine.
ctest --output-on-failure --timeout 600 -j 2
