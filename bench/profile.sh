#!/usr/bin/env bash
# Instructions per call in the sidecar, counted by callgrind (repeatable on a
# noisy machine: it counts instructions, not time).
#
#   BUILD_DIR=build bench/profile.sh [PAYLOAD_BYTES] [CALLS]     (defaults 100, 5000)
#
# Starts the demo upstream and a one-worker sidecar under valgrind --tool=callgrind on
# loopback, warms up with 200 unary Echo calls (h2load, 8 connections x 8 streams), zeroes
# the counters, sends CALLS more, dumps, and prints instructions per call for the whole
# process plus the top functions by inclusive and self cost. Everything it starts is
# stopped by PID at the end; the measured dump is kept as bench/results/profile-DATE-PAYLOADB.callgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
payload=${1:-100}
calls=${2:-5000}
for tool in valgrind callgrind_control callgrind_annotate h2load python3; do
  command -v "$tool" >/dev/null || { echo "profile.sh: $tool is missing" >&2; exit 1; }
done

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

"$BUILD_DIR/tools/bulwark-demo-upstream" --port 0 --port_file "$tmp/upstream.port" \
  >"$tmp/upstream.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/upstream.port" ] && break; sleep 0.1; done
upstream=$(cat "$tmp/upstream.port")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
admin=$(free_port)
cat >"$tmp/bulwark.yaml" <<EOF
listener: { address: "127.0.0.1:$port", max_message_bytes: 1048576 }
admin: { address: "127.0.0.1:$admin" }
workers: 1
clusters:
  - { name: demo, endpoints: ["127.0.0.1:$upstream"] }
routes:
  - { name: all, cluster: demo }
EOF

# One gRPC message: 5-byte prefix + an EchoRequest whose field 1 (payload) holds the bytes.
python3 - "$payload" "$tmp/body" <<'EOF'
import struct, sys
n, path = int(sys.argv[1]), sys.argv[2]
data = (b"bulwark-" * (n // 8 + 1))[:n]
varint, v = b"", len(data)
while True:
    b = v & 0x7F; v >>= 7
    varint += bytes([b | (0x80 if v else 0)])
    if not v: break
msg = b"\x0a" + varint + data
open(path, "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
EOF

out="bench/results/profile-$(date +%Y%m%d-%H%M%S)-${payload}B.callgrind"
valgrind --tool=callgrind --callgrind-out-file="$out" \
  "$BUILD_DIR/sidecar/bulwark" --config "$tmp/bulwark.yaml" >"$tmp/bulwark.log" 2>&1 &
vg=$!
pids+=("$vg")
for _ in $(seq 300); do
  python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
  sleep 0.2
done

load() {
  h2load -t 1 -c 8 -m 8 -n "$1" -d "$tmp/body" \
    -H "content-type: application/grpc" -H "te: trailers" \
    "http://127.0.0.1:$port/bulwark.demo.v1.Demo/Echo" | grep -E "^requests:|status codes:"
}
echo "== warm-up: 200 calls"
load 200
callgrind_control -z "$vg" >/dev/null
echo "== measured: $calls calls of $payload payload bytes"
load "$calls"
callgrind_control -d "$vg" >/dev/null
kill -TERM "$vg"; wait "$vg" || true

# The dump after zeroing is "$out.1"; the one written at exit ("$out") also counts the
# warm-up and the start: keep the measured one under the plain name.
mv "$out.1" "$out"
dump="$out"
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
echo "== $((total / calls)) instructions per call (whole process, $total over $calls calls)"
echo "== top inclusive"
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n '/^-----.*$/,$p' | grep -E "^ *[0-9,]+ " | head -25
echo "== top self"
callgrind_annotate --threshold=100 "$dump" 2>/dev/null | grep -E "^ *[0-9,]+ " | grep -vE "\((100\.0|9[0-9]\.[0-9]+)%\)" | head -20
echo "callgrind file: $dump"
