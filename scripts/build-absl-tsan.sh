#!/usr/bin/env bash
# Builds Debian's own Abseil (the exact source package of the installed libabsl-dev) with
# clang and -fsanitize=thread, as static libraries, into build-tsan-deps/absl/, for the
# ThreadSanitizer build of scripts/test.sh.
#
# Why: Debian's libabsl is not instrumented, so TSan cannot see absl::Mutex lock and unlock
# and reports every access guarded by one as a race. Rebuilding the same source with the
# same patches and options (Debian's debian/rules: C++17; its patched absl/base/options.h:
# absl's own any/optional/string_view/variant, inline namespace debian3, hardened) keeps
# the ABI identical to the headers the other builds compile against.
#
# Safe to run twice: once built (stamp file naming the version and flags), it does nothing.
# The first run adds a deb-src entry for the configured Debian suites if apt has no source
# for abseil (same URIs and Signed-By as /etc/apt/sources.list.d/debian.sources), fetches
# and unpacks the source, and builds it (~4 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

DEPS_DIR=${BULWARK_TSAN_DEPS_DIR:-$PWD/build-tsan-deps}
PREFIX=$DEPS_DIR/absl
JOBS=${JOBS:-$(nproc)}

version=$(dpkg-query -W -f='${Version}' libabsl-dev)
# Debian's flags for the static build, with TSan; -gline-tables-only is enough for the
# file:line of every frame in a report.
cxxflags="-O2 -gline-tables-only -fsanitize=thread"
stamp="abseil $version; clang; CXX_STANDARD=17; static; $cxxflags"
if [ "$(cat "$PREFIX/.bulwark-stamp" 2>/dev/null)" = "$stamp" ] &&
   [ -f "$PREFIX/lib/cmake/absl/abslConfig.cmake" ]; then
  echo "build-absl-tsan: $PREFIX is up to date ($version)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

has_source() {
  local versions
  versions=$(apt-cache showsrc abseil 2>/dev/null || true)
  grep -qx "Version: $version" <<<"$versions"
}
if ! has_source; then
  # Every deb stanza of Debian's sources file, as deb-src.
  debsrc=/etc/apt/sources.list.d/bulwark-deb-src.sources
  echo "build-absl-tsan: adding $debsrc"
  sed -e 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
    $SUDO tee "$debsrc" >/dev/null
  $SUDO apt-get update -qq
  has_source || { echo "build-absl-tsan: no source for abseil=$version" >&2; exit 1; }
fi

src_dir=$DEPS_DIR/src
mkdir -p "$src_dir"
log=$DEPS_DIR/build-absl-tsan.log
: >"$log"
# run CMD...: its output goes to the log, which is shown if it fails.
run() {
  if ! "$@" >>"$log" 2>&1; then
    echo "build-absl-tsan: failed: $*; log $log:" >&2
    tail -n 50 "$log" >&2
    exit 1
  fi
}
tree=$src_dir/abseil-$version
if [ ! -f "$tree/.unpacked" ]; then
  # apt checks the files against the signed Sources index (dpkg-source then warns that it
  # cannot check the .dsc's own signature without debian-keyring: expected).
  (cd "$src_dir" && run apt-get source --download-only -q "abseil=$version")
  rm -rf "$tree"
  run dpkg-source -x "$src_dir/abseil_${version#*:}.dsc" "$tree"
  # The ABI options must be those of the headers every other build uses.
  cmp -s "$tree/absl/base/options.h" /usr/include/absl/base/options.h || {
    echo "build-absl-tsan: $tree/absl/base/options.h differs from libabsl-dev's" >&2; exit 1; }
  touch "$tree/.unpacked"
fi

# Kept between runs, so an interrupted build resumes where it stopped.
build=$DEPS_DIR/absl-build
run cmake -S "$tree" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS="$cxxflags" \
  -DCMAKE_CXX_STANDARD=17 -DBUILD_SHARED_LIBS=OFF -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
  -DBUILD_TESTING=OFF -DABSL_BUILD_TESTING=OFF \
  -DCMAKE_INSTALL_PREFIX="$PREFIX"
run ninja -C "$build" -j "$JOBS" install
echo "$stamp" >"$PREFIX/.bulwark-stamp"
echo "build-absl-tsan: installed $PREFIX ($version)"
