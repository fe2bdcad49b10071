#!/usr/bin/env bash
# Instructions per call in a proxy, counted by callgrind (repeatable on a noisy machine: it
# counts instructions, not time), for Bulwark or nghttpx on the same load.
#
#   BUILD_DIR=build bench/profile.sh [PAYLOAD_BYTES] [CALLS] [bulwark|bulwark-policies|nghttpx]
#                                    (defaults 100, 5000, bulwark)
#   SIDECAR_BINARY=path/to/bulwark   profiles that sidecar binary instead of BUILD_DIR's (an
#                                    older build, to compare before and after a change)
#   EXTRA_YAML='access_log: {path: /tmp/a.log}'   appended to the sidecar's config (top-level
#                                    fields: e.g. the access log on)
#   PEER_YAML=path                   the sidecar's config template instead of bench/peers/'s
#                                    (${PORT}, ${ADMIN_PORT}, ${UPSTREAM_PORT} are filled in)
#
# bulwark-policies is bench/peers/bulwark-policies.yaml (every policy, singleflight in shadow).
# Starts the demo upstream, then runs the proxy (one worker, configs from bench/peers/) under
# valgrind --tool=callgrind twice on loopback: once for CALLS/5 unary Echo calls and once for
# CALLS + CALLS/5 (h2load, 8 connections x 8 streams, so 64 in flight). Instructions per call
# = the difference between the two runs' totals / CALLS, so start-up, warm-up and shutdown
# cancel out. For nghttpx the worker process is counted (its master only forks and waits).
# Prints that figure and the top functions of the larger run, whose dump is kept as
# bench/results/profile-DATE-PROXY-PAYLOADB.callgrind. Everything it starts is stopped by PID.
#
# glibc's memcpy uses `rep movsb` for large copies, which callgrind counts once per byte, so
# for large payloads memcpy's count is the number of bytes copied.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
payload=${1:-100}
calls=${2:-5000}
proxy=${3:-bulwark}
for tool in valgrind callgrind_annotate h2load python3; do
  command -v "$tool" >/dev/null || { echo "profile.sh: $tool is missing" >&2; exit 1; }
done
[ "$proxy" = nghttpx ] && { command -v nghttpx >/dev/null || { echo "profile.sh: nghttpx is missing" >&2; exit 1; }; }

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

# run N -> prints the callgrind total of the proxy's worker for N calls; dump in $tmp/cg.N.*
run() {
  local n=$1 port admin vg
  port=$(free_port)
  admin=$(free_port)
  if [ "$proxy" != nghttpx ]; then
    local peer=bench/peers/bulwark-plain.yaml
    [ "$proxy" = bulwark-policies ] && peer=bench/peers/bulwark-policies.yaml
    [ -n "${PEER_YAML:-}" ] && peer=$PEER_YAML
    sed -e "s/\${PORT}/$port/; s/\${ADMIN_PORT}/$admin/; s/\${UPSTREAM_PORT}/$upstream/" \
      -e "s/\${SF_SHADOW}/true/" "$peer" >"$tmp/proxy.yaml"
    python3 - "$tmp/proxy.yaml" <<'EOF'
import sys
p = sys.argv[1]
s = open(p).read().replace("listener:\n", "listener:\n  max_message_bytes: 16777216\n", 1)
open(p, "w").write(s)
EOF
    if [ -n "${EXTRA_YAML:-}" ]; then printf '%s\n' "$EXTRA_YAML" >>"$tmp/proxy.yaml"; fi
    valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$n.%p" \
      "${SIDECAR_BINARY:-$BUILD_DIR/sidecar/bulwark}" --config "$tmp/proxy.yaml" >"$tmp/proxy.$n.log" 2>&1 &
  else
    sed -e "s/\${PORT}/$port/; s/\${UPSTREAM_PORT}/$upstream/; s|\${TMP}|$tmp|g" \
      bench/peers/nghttpx.conf >"$tmp/proxy.conf"
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$tmp/cg.$n.%p" \
      nghttpx --conf "$tmp/proxy.conf" >"$tmp/proxy.$n.log" 2>&1 &
  fi
  vg=$!
  pids+=("$vg")
  for _ in $(seq 300); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
    sleep 0.2
  done
  h2load -t 1 -c 8 -m 8 -n "$n" -d "$tmp/body" \
    -H "content-type: application/grpc" -H "te: trailers" \
    "http://127.0.0.1:$port/bulwark.demo.v1.Demo/Echo" >"$tmp/h2load.$n.log"
  grep -q "^requests: $n total, $n started, $n done, $n succeeded" "$tmp/h2load.$n.log" || {
    echo "profile.sh: not every call succeeded:" >&2; cat "$tmp/h2load.$n.log" >&2; exit 1; }
  if [ "$proxy" != nghttpx ]; then
    kill -TERM "$vg"
  else
    kill -TERM "$(cat "$tmp/nghttpx.pid")"
  fi
  wait "$vg" || true
  if [ "$proxy" = nghttpx ]; then
    # The worker is a child valgrind of its own: wait for its dump to appear and settle.
    local sizes="" prev="x"
    for _ in $(seq 120); do
      sizes=$(ls -l "$tmp"/cg."$n".* 2>/dev/null | awk '{print $5}' | tr '\n' ' ')
      [ "$(ls "$tmp"/cg."$n".* 2>/dev/null | wc -l)" -ge 2 ] && [ "$sizes" = "$prev" ] && break
      prev=$sizes
      sleep 0.5
    done
  fi
  # The worker is the process with the most instructions (nghttpx's master only forks).
  local best=0 f total
  for f in "$tmp"/cg."$n".*; do
    total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
    if [ "$total" -gt "$best" ]; then best=$total; cp "$f" "$tmp/worker.$n"; fi
  done
  echo "$best"
}

small=$((calls / 5))
large=$((calls + small))
echo "== $proxy: $small and $large calls of $payload payload bytes under callgrind"
a=$(run "$small")
b=$(run "$large")
echo "== $proxy: $(( (b - a) / calls )) instructions per call ($b - $a over $calls calls)"
out="bench/results/profile-$(date +%Y%m%d-%H%M%S)-$proxy-${payload}B.callgrind"
cp "$tmp/worker.$large" "$out"
echo "== top inclusive ($large-call run)"
{ callgrind_annotate --inclusive=yes "$out" 2>/dev/null | grep -E "^ *[0-9,]+ " | sed -n '2,26p'; } || true
echo "== top self"
{ callgrind_annotate --threshold=100 "$out" 2>/dev/null | grep -E "^ *[0-9,]+ " \
  | grep -vE "\((100\.0|9[0-9]\.[0-9]+)%\)" | head -20; } || true
echo "callgrind file: $out"
