#!/usr/bin/env bash
# Builds Bulwark and runs the whole test suite (unit and integration) with ctest.
# Usage: scripts/test.sh            (build dir: build/)
# Safe to run twice; only what changed is rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBULWARK_WERROR=ON \
  -DBULWARK_ALLOW_MISSING=OFF >/dev/null
ninja -C "$BUILD_DIR" -j "$JOBS"
cd "$BUILD_DIR"
# Integration tests start real processes on loopback; two at a time suits a 2-core machine.
ctest --output-on-failure --timeout 600 -j 2
