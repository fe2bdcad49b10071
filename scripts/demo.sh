#!/usr/bin/env bash
# The demo: Bulwark in front of the bundled demo upstream, a short bounded load in four
# phases that makes each policy act, then a summary of calls by status and the metrics.
# Everything runs on 127.0.0.1 and stops by itself. Safe to run twice.
#
#   scripts/demo.sh [--hold] [--screenshot FILE]
#     --hold            keep Bulwark and the upstream running at the end until Enter is pressed
#                       (the default when run from a terminal), to look at the status page
#     --screenshot FILE save a PNG of the status page (headless chromium) once the breaker opened
set -euo pipefail
cd "$(dirname "$0")/.."
HOLD=auto
SCREENSHOT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --hold) HOLD=yes ;;
    --no-hold) HOLD=no ;;
    --screenshot) SCREENSHOT=$(realpath -m "$2"); shift ;;
    *) echo "demo: unknown option $1 (try --hold, --screenshot FILE)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$HOLD" = auto ]; then if [ -t 0 ]; then HOLD=yes; else HOLD=no; fi; fi
scripts/install-deps.sh

BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$BUILD_DIR" bulwark bulwark-demo-upstream bulwark-bench >/dev/null

BIN="$BUILD_DIR"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {  # wait_port PORT: poll until something listens, 20 s at most
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "demo: nothing listens on port $1" >&2
  return 1
}

echo "== starting the demo upstream on 127.0.0.1:50051 and Bulwark on 127.0.0.1:15000"
"$BIN/tools/bulwark-demo-upstream" --port 50051 --name demo-1 >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
wait_port 50051
"$BIN/sidecar/bulwark" --config examples/bulwark.yaml >"$WORK/bulwark.log" 2>&1 &
PIDS+=($!)
wait_port 15000
wait_port 15001

bench() { "$BIN/tools/bulwark-bench" --target 127.0.0.1:15000 --progress=false "$@"; }

echo
echo "== the status page: open http://127.0.0.1:15001/ in a browser now; it refreshes every"
echo "   2 s and shows each phase below as it happens (breaker state, tokens, rejections)"

echo
echo "== 1. singleflight: 64 callers send identical requests to a 50 ms upstream;"
echo "      concurrent identical calls share one upstream call"
bench --rpc echo --concurrency 64 --calls 640 --fault_delay_ms 50 --payload_bytes 100
echo
echo "== 2. a flood of unique calls (8 callers, closed loop, 2 s) against the route's rate"
echo "      limit of 2000/s with bursts of 500: the excess is answered rate_limited"
bench --rpc echo --concurrency 8 --duration 2s --unique_payloads
echo
echo "== 3. the upstream fails with UNAVAILABLE: after 5 failures in a row the circuit"
echo "      breaker opens and the sidecar answers circuit_open without calling upstream"
sleep 1   # the bucket refills after the flood
bench --rpc echo --concurrency 4 --calls 200 --fault_code 14 --unique_payloads
echo
echo "== metrics (curl http://127.0.0.1:15001/metrics)"
curl -s http://127.0.0.1:15001/metrics | grep -E '^bulwark_(requests_total|rejections_total|singleflight_calls_total|circuit_breaker_state|upstream_requests_total)' | grep -v ' 0$' || true
echo
echo "== live state (curl http://127.0.0.1:15001/routes)"
curl -s http://127.0.0.1:15001/routes
echo
if [ -n "$SCREENSHOT" ]; then
  timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --user-data-dir="$WORK/chromium" --virtual-time-budget=3000 \
    --window-size=1280,560 --screenshot="$SCREENSHOT" http://127.0.0.1:15001/ 2>/dev/null &&
    echo "== status page screenshot: $SCREENSHOT"
fi
if [ "$HOLD" = yes ]; then
  echo "Demo done. Bulwark keeps running: the status page is http://127.0.0.1:15001/ (also"
  echo "/metrics /routes /config /readyz). Press Enter to stop."
  read -r _ || true
else
  echo "Demo done. (With --hold it keeps running for the status page at http://127.0.0.1:15001/.)"
fi
