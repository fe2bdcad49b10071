#!/usr/bin/env bash
# Installs what Bulwark needs to build, test and run its demo, from Debian 12 packages.
# Safe to run twice: apt-get skips what is already installed.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  clang             # the -Wthread-safety build in scripts/test.sh
  libssl-dev openssl  # TLS in the sidecar; the TLS tests make certificates with openssl
  libnghttp2-dev libevent-dev
  libgoogle-perftools-dev  # tcmalloc_minimal, the sidecar's allocator
  libhiredis-dev redis-server  # global rate limits: the Redis client, and the tests' Redis
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libyaml-cpp-dev
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  prometheus        # promtool, used by the metrics tests
  nghttp2-client    # h2load, used by the benchmarks
  chromium          # headless, for the status page's browser test
  curl ca-certificates
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
