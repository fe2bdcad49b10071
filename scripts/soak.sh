#!/usr/bin/env bash
# A bounded soak of Bulwark (issue 9, item 4): two demo upstreams behind one sidecar whose
# configuration exercises every policy, under parallel bulwark-bench loads plus an endpoint
# that keeps flapping, for SOAK_SECONDS (default 600). Every SAMPLE_SECONDS (default 10) the
# sidecar's RSS, fd count, thread count and its calls by status (from /metrics) go to
# bench/soak/soak-<date>.csv; at the end a gnuplot chart goes to bench/soak/soak-<date>.png
# and a summary (also printed) to bench/soak/soak-<date>.txt.
#
#   scripts/soak.sh                      # 10 minutes
#   SOAK_SECONDS=60 scripts/soak.sh      # a short trial
#
# Environment: BUILD_DIR (default build/; configured and built if needed, NINJA_JOBS caps
# the build's parallelism), SOAK_SECONDS, SAMPLE_SECONDS, WARMUP_SECONDS (the RSS/fd
# reference point; default min(60, SOAK_SECONDS/4)), KEEP_LOGS=1 keeps the bench reports
# and process logs (kept anyway when something looks wrong).
#
# The loads (all on 127.0.0.1, all bounded):
#   unique      Echo, unique payloads, 2 callers, 10 ms upstream delay       -> route echo
#   identical   Echo, identical payloads, 8 callers, 50 ms delay (coalesced) -> route echo
#   flood       ClientStream, 1 caller closed loop, 3 s bursts every 15 s    -> route upload
#               (rate limited: 100/s, burst 50)
#   stream      ServerStream, 20 messages, 5 ms apart, 4 callers             -> route streams
#   bidi        Bidi, 10 ping-pongs, 2 ms delay each, 4 callers              -> route streams
#               (streams: at most 6 in flight, 4 queued for 50 ms)
#   breaker     Echo failing with UNAVAILABLE (--fault_code 14), 1000 calls by 8 callers,
#               every ~30 s: trips the echo route's breaker (open 3 s, then half-open;
#               meanwhile the echo loads get circuit_open answers, fast: expect a CPU spike)
#   flapping    upstream 2 is SIGSTOPped / SIGCONTed every 20 s: its health checks
#               (CHECK every 500 ms, 250 ms timeout) time out, it is marked unhealthy, then
#               healthy again
# Route timeouts (2 s, streams 5 s) are far below the clients' 10 s deadline, so every call
# must be answered by the sidecar or the upstream before the client gives up: a client-side
# deadline expiry (or a bench that never ends) counts as an unanswered call.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SOAK_SECONDS=${SOAK_SECONDS:-600}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-10}
WARMUP_SECONDS=${WARMUP_SECONDS:-$(( SOAK_SECONDS / 4 < 60 ? SOAK_SECONDS / 4 : 60 ))}
BUILD_DIR=${BUILD_DIR:-build}
CLIENT_DEADLINE_S=10
OUT_DIR=$ROOT/bench/soak
STAMP=$(date +%Y%m%d-%H%M%S)
CSV=$OUT_DIR/soak-$STAMP.csv
PNG=$OUT_DIR/soak-$STAMP.png
SUMMARY=$OUT_DIR/soak-$STAMP.txt

log() { echo "soak: $*" >&2; }

# --- tools -------------------------------------------------------------------------------
need=()
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  log "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null
fi

BIN_SIDECAR=$BUILD_DIR/sidecar/bulwark
BIN_UPSTREAM=$BUILD_DIR/tools/bulwark-demo-upstream
BIN_BENCH=$BUILD_DIR/tools/bulwark-bench
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  scripts/install-deps.sh
  log "configuring $BUILD_DIR"
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
log "building bulwark, bulwark-demo-upstream, bulwark-bench in $BUILD_DIR (if needed)"
ninja -C "$BUILD_DIR" ${NINJA_JOBS:+-j"$NINJA_JOBS"} bulwark bulwark-demo-upstream \
  bulwark-bench >/dev/null

mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-soak-XXXXXX")

# --- processes: only our own PIDs are ever signalled ---------------------------------------
LOOP_PIDS=()   # background loops (they stop their own children on SIGTERM)
BENCH_PIDS=()  # continuous bench loads
SIDECAR_PID=""
UP1_PID=""
UP2_PID=""
KEEP_WORK=${KEEP_LOGS:-0}
cleanup() {
  local pid
  if [ -n "$UP2_PID" ]; then kill -CONT "$UP2_PID" 2>/dev/null || true; fi
  for pid in "${LOOP_PIDS[@]}" "${BENCH_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${LOOP_PIDS[@]}" "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in $SIDECAR_PID $UP1_PID $UP2_PID; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $SIDECAR_PID $UP1_PID $UP2_PID; do wait "$pid" 2>/dev/null || true; done
  if [ "$KEEP_WORK" = 1 ]; then
    log "logs and bench reports kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {  # below the ephemeral range, so no outgoing connection holds it
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 10000 ))
    if ! port_in_use "$p"; then echo "$p"; return 0; fi
  done
  log "no free port found"
  return 1
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll every 100 ms
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq 1 $(( seconds * 10 ))); do
    if "$@"; then return 0; fi
    sleep 0.1
  done
  log "timed out waiting for $what"
  return 1
}

start_upstream() {  # start_upstream NAME: sets REPLY_PID and REPLY_PORT
  local name=$1
  "$BIN_UPSTREAM" --port 0 --port_file "$WORK/$name.port" --name "$name" \
    >"$WORK/$name.log" 2>&1 &
  REPLY_PID=$!
  wait_for 30 "$name's port file" test -s "$WORK/$name.port"
  REPLY_PORT=$(cat "$WORK/$name.port")
}

start_upstream up-1
UP1_PID=$REPLY_PID
UP1_PORT=$REPLY_PORT
start_upstream up-2
UP2_PID=$REPLY_PID
UP2_PORT=$REPLY_PORT
PORT=$(free_port)
ADMIN=$(free_port)
while [ "$ADMIN" = "$PORT" ]; do ADMIN=$(free_port); done

cat >"$WORK/bulwark.yaml" <<EOF
listener: { address: "127.0.0.1:$PORT" }
admin: { address: "127.0.0.1:$ADMIN" }
workers: 2
drain_timeout: 5s
clusters:
  - name: demo
    endpoints: ["127.0.0.1:$UP1_PORT", "127.0.0.1:$UP2_PORT"]
    load_balancing: ROUND_ROBIN
    health_check: { mode: CHECK, interval: 500ms, timeout: 250ms,
                    unhealthy_threshold: 2, healthy_threshold: 2 }
routes:
  - name: echo                 # singleflight + circuit breaker + concurrency
    match: { service: bulwark.demo.v1.Demo, method: Echo }
    cluster: demo
    timeout: 2s
    circuit_breaker: { consecutive_failures: 10, failure_rate: 0.25, minimum_requests: 50,
                       window: 10s, open_duration: 3s, half_open_requests: 3 }
    singleflight: { enabled: true }
    concurrency: { max_in_flight: 64, max_queued: 128, queue_timeout: 100ms }
  - name: upload               # rate limited
    match: { service: bulwark.demo.v1.Demo, method: ClientStream }
    cluster: demo
    timeout: 2s
    rate_limit: { requests_per_second: 100, burst: 50 }
  - name: streams              # ServerStream and Bidi, with a concurrency limit
    match: { service: bulwark.demo.v1.Demo }
    cluster: demo
    timeout: 5s
    concurrency: { max_in_flight: 6, max_queued: 4, queue_timeout: 50ms }
  - name: control
    match: { service: bulwark.demo.v1.Control }
    cluster: demo
EOF
"$BIN_SIDECAR" --config "$WORK/bulwark.yaml" --validate >"$WORK/validate.log" 2>&1 || {
  cat "$WORK/validate.log" >&2
  exit 1
}
"$BIN_SIDECAR" --config "$WORK/bulwark.yaml" >"$WORK/bulwark.log" 2>&1 &
SIDECAR_PID=$!
wait_for 30 "the sidecar's listener" port_in_use "$PORT"
wait_for 30 "the sidecar's admin port" port_in_use "$ADMIN"
# Both endpoints healthy before the load starts.
endpoints_healthy() {
  [ "$(curl -s --max-time 2 "http://127.0.0.1:$ADMIN/metrics" |
       awk '/^bulwark_endpoint_healthy\{/ { n += $NF } END { print n + 0 }')" = 2 ]
}
wait_for 30 "both endpoints healthy" endpoints_healthy
log "upstreams :$UP1_PORT (pid $UP1_PID) :$UP2_PORT (pid $UP2_PID); sidecar :$PORT" \
  "admin :$ADMIN (pid $SIDECAR_PID); work dir $WORK"

# --- sampling ------------------------------------------------------------------------------
CODES="OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS"
CODES="$CODES PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE"
CODES="$CODES UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS UNAUTHENTICATED"
START=$(date +%s)
END=$(( START + SOAK_SECONDS ))
elapsed() { echo $(( $(date +%s) - START )); }

proc_field() {  # proc_field NAME: a number from /proc/SIDECAR/status
  awk -v f="$1:" '$1 == f { print $2 }' "/proc/$SIDECAR_PID/status" 2>/dev/null
}
sample() {  # one CSV line
  local rss fds threads metrics
  rss=$(proc_field VmRSS)
  threads=$(proc_field Threads)
  fds=$(find "/proc/$SIDECAR_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  metrics=$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN/metrics" || true)
  printf '%s\n' "$metrics" | awk -v t="$(elapsed)" -v rss="${rss:-NA}" -v fds="$fds" \
    -v threads="${threads:-NA}" -v codes="$CODES" -v got="${#metrics}" '
    /^bulwark_requests_total\{/ {
      if (match($0, /code="[A-Z_]+"/)) { c = substr($0, RSTART + 6, RLENGTH - 7); n[c] += $NF }
      total += $NF
    }
    /^bulwark_endpoint_healthy\{/ { healthy += $NF }
    /^bulwark_circuit_breaker_transitions_total\{/ && /to="open"/ { opens += $NF }
    /^bulwark_health_checks_total\{/ && !/result="success"/ { probe_failures += $NF }
    END {
      if (got == 0) {
        line = t "," rss "," fds "," threads ",NA,NA,NA,NA"
      } else {
        line = t "," rss "," fds "," threads "," healthy + 0 "," opens + 0 "," \
               probe_failures + 0 "," total + 0
      }
      k = split(codes, names, " ")
      for (i = 1; i <= k; i++) line = line "," (got == 0 ? "NA" : n[names[i]] + 0)
      print line
    }'
}
{
  printf 'elapsed_s,rss_kib,fds,threads,healthy_endpoints,breaker_opens,failed_probes'
  printf ',calls_total'
  for c in $CODES; do printf ',%s' "$c"; done
  printf '\n'
} >"$CSV"
sample >>"$CSV"

sampler() {
  local child=""
  trap '[ -n "$child" ] && kill "$child" 2>/dev/null; exit 0' TERM
  while [ ! -e "$WORK/stop-sampling" ]; do
    sleep "$SAMPLE_SECONDS" & child=$!
    wait "$child" || true
    child=""
    [ -e "$WORK/stop-sampling" ] && break
    if ! kill -0 "$SIDECAR_PID" 2>/dev/null; then
      echo "$(elapsed) sidecar gone" >>"$WORK/events"
      break
    fi
    sample >>"$CSV"
  done
}

# --- loads ---------------------------------------------------------------------------------
bench() {  # bench NAME ARGS...: one bench run, report in $WORK/NAME.json
  local name=$1
  shift
  "$BIN_BENCH" --target "127.0.0.1:$PORT" --deadline "${CLIENT_DEADLINE_S}s" \
    --json "$WORK/$name.json" "$@" >"$WORK/$name.log" 2>&1
}
continuous() {  # continuous NAME ARGS...: one bench for the whole soak, in the background
  local name=$1
  shift
  bench "$name" --duration "${SOAK_SECONDS}s" "$@" &
  BENCH_PIDS+=($!)
}
left() { echo $(( END - $(date +%s) )); }
nap() {  # nap SECONDS: sleep, but never past END; false once END has passed
  local s=$1
  [ "$(left)" -gt 0 ] || return 1
  [ "$s" -le "$(left)" ] || s=$(left)
  sleep "$s" & child=$!
  wait "$child" || true
  child=""
  [ "$(left)" -gt 0 ]
}
# Loops run in subshells; on SIGTERM (the script is ending early, or a load hung past the
# end) they kill their current child outright.
periodic() {  # periodic NAME FIRST_DELAY GAP ARGS...: a bench run every GAP seconds
  local name=$1 first=$2 gap=$3 n=0 rc
  child=""
  shift 3
  trap '[ -n "$child" ] && kill -KILL "$child" 2>/dev/null; exit 0' TERM
  if [ "$first" -gt 0 ]; then nap "$first" || return 0; fi
  while true; do
    n=$(( n + 1 ))
    echo "$(elapsed) $name-$n start" >>"$WORK/events"
    bench "$name-$n" "$@" & child=$!
    rc=0
    wait "$child" || rc=$?
    child=""
    [ "$rc" = 0 ] || echo "$(elapsed) $name-$n exit $rc" >>"$WORK/events"
    nap "$gap" || break
  done
}
flapper() {  # SIGSTOP / SIGCONT upstream 2 every 20 s
  local stopped=0
  child=""
  trap '[ -n "$child" ] && kill "$child" 2>/dev/null; kill -CONT "$UP2_PID" 2>/dev/null; exit 0' TERM
  while nap 20; do
    if [ "$stopped" = 0 ]; then
      kill -STOP "$UP2_PID"
      stopped=1
      echo "$(elapsed) up-2 SIGSTOP" >>"$WORK/events"
    else
      kill -CONT "$UP2_PID"
      stopped=0
      echo "$(elapsed) up-2 SIGCONT" >>"$WORK/events"
    fi
  done
  kill -CONT "$UP2_PID" 2>/dev/null || true
  [ "$stopped" = 0 ] || echo "$(elapsed) up-2 SIGCONT (end)" >>"$WORK/events"
}

: >"$WORK/events"
log "soaking for ${SOAK_SECONDS}s (samples every ${SAMPLE_SECONDS}s into $CSV)"
continuous unique --rpc echo --unique_payloads --concurrency 2 --fault_delay_ms 10
continuous identical --rpc echo --concurrency 8 --fault_delay_ms 50
continuous stream --rpc server_stream --stream_messages 20 --fault_delay_ms 5 --concurrency 4
continuous bidi --rpc bidi --stream_messages 10 --fault_delay_ms 2 --concurrency 4
periodic flood 0 12 --rpc client_stream --stream_messages 1 --concurrency 1 --duration 3s &
LOOP_PIDS+=($!)
periodic breaker 10 30 --rpc echo --unique_payloads --fault_code 14 --concurrency 8 \
  --calls 1000 &
LOOP_PIDS+=($!)
flapper &
LOOP_PIDS+=($!)
sampler &
SAMPLER_PID=$!
LOOP_PIDS+=("$SAMPLER_PID")

# --- the end -------------------------------------------------------------------------------
# Every load ends by itself shortly after END; one still running CLIENT_DEADLINE_S + 30 s
# later holds calls that were never answered (its last progress line says how many).
HUNG=""
for pid in "${BENCH_PIDS[@]}" "${LOOP_PIDS[@]}"; do
  [ "$pid" = "$SAMPLER_PID" ] && continue
  while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt $(( END + CLIENT_DEADLINE_S + 30 )) ]; do
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    HUNG="$HUNG $pid"
    kill -TERM "$pid" 2>/dev/null || true  # a bench stops starting calls, a loop ends
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
done
[ -z "$HUNG" ] || echo "$(elapsed) loads still running at the end (pids$HUNG), stopped" \
  >>"$WORK/events"
touch "$WORK/stop-sampling"
kill -TERM "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SIDECAR_ALIVE=1
kill -0 "$SIDECAR_PID" 2>/dev/null || SIDECAR_ALIVE=0
if [ "$SIDECAR_ALIVE" = 1 ]; then
  sample >>"$CSV"
  curl -s --max-time 5 "http://127.0.0.1:$ADMIN/routes" >"$WORK/routes.json" || true
  curl -s --max-time 5 "http://127.0.0.1:$ADMIN/metrics" >"$WORK/metrics.txt" || true
fi
# Drain: SIGTERM must end the sidecar with 0.
SIDECAR_RC=0
kill -TERM "$SIDECAR_PID" 2>/dev/null || true
for _ in $(seq 1 300); do kill -0 "$SIDECAR_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$SIDECAR_PID" 2>/dev/null; then
  SIDECAR_RC="still running 30 s after SIGTERM"
  kill -KILL "$SIDECAR_PID" 2>/dev/null || true
fi
wait "$SIDECAR_PID" 2>/dev/null || { rc=$?; [ "$SIDECAR_RC" != 0 ] || SIDECAR_RC=$rc; }
SIDECAR_PID=""
[ "$SIDECAR_ALIVE" = 1 ] || SIDECAR_RC="crashed during the soak ($SIDECAR_RC)"

# --- plot ----------------------------------------------------------------------------------
gnuplot <<EOF || log "gnuplot failed; the CSV is $CSV"
set terminal pngcairo size 1200,900 font ",10" noenhanced
set output "$PNG"
set datafile separator ","
set datafile missing "NA"
set key autotitle columnhead outside right
set grid
set xlabel "elapsed (s)"
set multiplot layout 3,1 title "Bulwark soak $STAMP (${SOAK_SECONDS}s; 2 upstreams, one flapping)"
set ylabel "RSS (MiB)"
set y2label "fds, threads"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
plot "$CSV" using 1:(\$2/1024) with linespoints lw 2 title "RSS (MiB)", \
     "" using 1:3 axes x1y2 with linespoints title "fds", \
     "" using 1:4 axes x1y2 with linespoints title "threads"
unset y2label
unset y2tics
set ylabel "calls (cumulative)"
plot "$CSV" using 1:8 with lines lw 2 title "all", \
     "" using 1:9 with lines title "OK", \
     "" using 1:17 with lines title "RESOURCE_EXHAUSTED", \
     "" using 1:23 with lines title "UNAVAILABLE", \
     "" using 1:13 with lines title "DEADLINE_EXCEEDED", \
     "" using 1:(\$8-\$9-\$17-\$23-\$13) with lines title "other"
set ylabel "healthy endpoints"
set yrange [-0.2:2.2]
set ytics 0,1,2 nomirror
set y2label "cumulative"
set y2tics
set y2range [0:*]
plot "$CSV" using 1:5 with linespoints lw 2 title "healthy endpoints (sampled)", \
     "" using 1:6 axes x1y2 with linespoints title "breaker openings", \
     "" using 1:7 axes x1y2 with linespoints title "failed health probes"
unset multiplot
EOF

# --- summary -------------------------------------------------------------------------------
SUSPICIOUS=0
python3 - "$CSV" "$WORK" "$WARMUP_SECONDS" "$CLIENT_DEADLINE_S" "$SIDECAR_RC" "$PNG" \
  "$SOAK_SECONDS" >"$SUMMARY" <<'PY' || SUSPICIOUS=1
import csv, glob, json, os, re, sys

csv_path, work, warmup, deadline_s, sidecar_rc, png, soak_s = sys.argv[1:8]
warmup, deadline_us = float(warmup), float(deadline_s) * 1e6
rows = [r for r in csv.DictReader(open(csv_path))]
num = lambda r, k: float(r[k]) if r.get(k) not in (None, "", "NA") else None
problems = []

def at_warmup():
    for r in rows:
        if float(r["elapsed_s"]) >= warmup and num(r, "rss_kib") is not None:
            return r
    return rows[0]

w, e = at_warmup(), rows[-1]
out = []
out.append(f"Bulwark soak: {soak_s} s, {len(rows)} samples, CSV {csv_path}, plot {png}")
out.append(f"sidecar exit after SIGTERM: {sidecar_rc}")
if sidecar_rc != "0":
    problems.append(f"sidecar did not exit 0 on SIGTERM: {sidecar_rc}")
rw, re_ = num(w, "rss_kib"), num(e, "rss_kib")
if rw and re_:
    out.append(f"RSS: {rw/1024:.1f} MiB at warm-up (t={w['elapsed_s']}s) -> {re_/1024:.1f} MiB "
               f"at the end (t={e['elapsed_s']}s), {((re_-rw)/1024):+.1f} MiB; "
               f"peak {max(num(r,'rss_kib') or 0 for r in rows)/1024:.1f} MiB")
out.append(f"fds: {w['fds']} at warm-up -> {e['fds']} at the end "
           f"(min {min(int(r['fds']) for r in rows)}, max {max(int(r['fds']) for r in rows)})")
out.append(f"threads: {w['threads']} at warm-up -> {e['threads']} at the end")
codes = [c for c in rows[0].keys() if c.isupper()]
final = {c: int(float(e[c])) for c in codes if e.get(c) not in (None, "", "NA")}
out.append("calls by code (sidecar /metrics, all routes): total "
           f"{e['calls_total']}: " + ", ".join(f"{c} {n}" for c, n in final.items() if n))

# Bench reports: what every client saw.
code_numbers = {"CANCELLED": 1, "UNKNOWN": 2, "DEADLINE_EXCEEDED": 4,
                "RESOURCE_EXHAUSTED": 8, "INTERNAL": 13, "UNAVAILABLE": 14}
started = answered = unanswered = 0
per_load = {}
suspicious = []
for path in sorted(glob.glob(os.path.join(work, "*.json"))):
    name = os.path.basename(path)[:-5]
    if name == "routes":
        continue
    try:
        rep = json.load(open(path))
    except ValueError:
        suspicious.append(f"{name}: no JSON report (bench failed?)")
        continue
    load = re.sub(r"-\d+$", "", name)
    agg = per_load.setdefault(load, {"runs": 0, "calls": 0, "status": {}, "reasons": {}})
    agg["runs"] += 1
    agg["calls"] += rep["calls"]
    started += rep["calls"]
    for code, n in rep["status"].items():
        agg["status"][code] = agg["status"].get(code, 0) + n
    for code, by_reason in rep["reasons"].items():
        for reason, n in by_reason.items():
            key = f"{code}/{reason}"
            agg["reasons"][key] = agg["reasons"].get(key, 0) + n
    reached_deadline = rep["latency_us"]["max"] >= 0.95 * deadline_us
    for code, n in rep["status"].items():
        with_reason = sum(rep["reasons"].get(code, {}).values())
        if code == "OK":
            answered += n
        elif code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE") and with_reason:
            answered += n  # rest checked below
            rest = n - with_reason
            injected = rep.get("fault_code") == code_numbers.get(code)
            if rest and not injected:
                suspicious.append(f"{name}: {rest} {code} without x-bulwark-reason "
                                  f"(e.g. {rep['status_messages'].get(code, '?')!r})")
        elif rep.get("fault_code") and rep["fault_code"] == code_numbers.get(code):
            answered += n  # the upstream failed it on request
        elif code == "DEADLINE_EXCEEDED" and not reached_deadline:
            answered += n  # the sidecar's route timeout answered it
        elif code == "DEADLINE_EXCEEDED":
            unanswered += n
            suspicious.append(f"{name}: {n} DEADLINE_EXCEEDED, slowest call "
                              f"{rep['latency_us']['max']/1e6:.1f}s = the client's own deadline "
                              f"(e.g. {rep['status_messages'].get(code, '?')!r})")
        else:
            answered += n
            suspicious.append(f"{name}: {n} {code} (e.g. {rep['status_messages'].get(code, '?')!r})")
    if rep.get("bad_responses"):
        suspicious.append(f"{name}: {rep['bad_responses']} OK answers with the wrong payload")

# Loads that did not end: their last progress line holds the calls still in flight.
events = open(os.path.join(work, "events")).read() if os.path.exists(os.path.join(work, "events")) else ""
for line in events.splitlines():
    if "still running" in line or "exit" in line or "gone" in line:
        suspicious.append(f"event: {line}")
for log in glob.glob(os.path.join(work, "*.log")):
    text = open(log, errors="replace").read()
    m = re.findall(r"in flight (\d+)\s*$", text, re.M)
    name = os.path.basename(log)[:-4]
    if m and not os.path.exists(os.path.join(work, name + ".json")):
        unanswered += int(m[-1])
        started += int(m[-1])
        suspicious.append(f"{name}: never finished, {m[-1]} calls in flight")

out.append("")
out.append("loads (what the clients saw):")
for load, agg in per_load.items():
    status = ", ".join(f"{c} {n}" for c, n in sorted(agg["status"].items(), key=lambda x: -x[1]))
    reasons = ", ".join(f"{k} {n}" for k, n in sorted(agg["reasons"].items()))
    out.append(f"  {load:10s} runs {agg['runs']:3d}  calls {agg['calls']:8d}  {status}"
               + (f"  [reasons: {reasons}]" if reasons else ""))
out.append("")
out.append(f"calls started by the clients: {started}; answered: {answered}; "
           f"unanswered: {unanswered}")
flaps = [l for l in events.splitlines() if "up-2" in l]
out.append(f"endpoint flaps: {len(flaps)} ({'; '.join(flaps)})")
bursts = [l for l in events.splitlines() if "breaker-" in l and "start" in l]
out.append(f"breaker bursts: {len(bursts)}")
if os.path.exists(os.path.join(work, "bulwark.log")):
    levels = {}
    for line in open(os.path.join(work, "bulwark.log"), errors="replace"):
        m = re.search(r"bulwark (\w+):", line)
        if m:
            levels[m.group(1)] = levels.get(m.group(1), 0) + 1
    out.append("sidecar log lines by level: " + ", ".join(f"{k} {v}" for k, v in levels.items()))
problems += suspicious
if unanswered:
    problems.append(f"{unanswered} unanswered calls")
out.append("")
if problems:
    out.append("SUSPICIOUS:")
    out += [f"  - {p}" for p in problems]
else:
    out.append("nothing suspicious: every call was answered OK, by a policy (x-bulwark-reason), "
               "by the route timeout, or with the status the upstream was asked to fail with")
print("\n".join(out))
sys.exit(1 if problems else 0)
PY
cat "$SUMMARY"
if [ "$SUSPICIOUS" = 1 ]; then
  KEEP_WORK=1
  cp "$WORK/bulwark.log" "$OUT_DIR/soak-$STAMP-bulwark.log" 2>/dev/null || true
fi
log "CSV $CSV"
log "plot $PNG"
log "summary $SUMMARY"
