#!/usr/bin/env bash
# Builds Bulwark and runs the whole test suite with ctest:
#   1. build-asan/: every test under AddressSanitizer + UndefinedBehaviorSanitizer (any report
#      fails the test: halt_on_error, no recovery);
#   2. build-tsa/: clang with -Wthread-safety -Werror over the whole tree (compile only: the
#      lock annotations are checked at compile time);
#   3. build/: the release build (RelWithDebInfo, -Werror), every test; its ctest summary is
#      the last thing printed.
# BULWARK_QUICK=1 runs step 3 only. Safe to run twice; only what changed is rebuilt.
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
stamp "tests"
cd build
# Integration tests start real processes on loopback; two at a time suits a 2-core machine.
ctest --output-on-failure --timeout 600 -j 2
