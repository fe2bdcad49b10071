#!/usr/bin/env python3
"""Bulwark under overload: a fixed concurrency limit, the adaptive one, and none.

    python3 bench/overload.py [--build-dir build]              # the full run, ~10 minutes
    python3 bench/overload.py --scale 0.25                     # every phase 4x shorter
    python3 bench/overload.py --scale 0.1 --contestants fixed,none

Every contestant is a Bulwark sidecar (workers: 1, one route on Demo.Echo) in front of its
own capacity-bound bulwark-demo-upstream (--capacity 20 --service_time 10ms: 20 workers,
2000 calls/s, FIFO queue of its own; three identical upstreams so the contestants never
share a queue):

    fixed     concurrency { max_in_flight: 20, max_queued: 128, queue_timeout: 50ms }:
              tuned for the unloaded upstream
    adaptive  concurrency { max_in_flight: 256, adaptive: { min_limit: 4, initial_limit: 20 },
              priority_header: x-priority }
    none      no concurrency block

bulwark-bench offers the load open loop (--rate_schedule; calls started on schedule whether
or not earlier ones answered), 1 s deadline per call, in phases (seconds at --scale 1):

    unloaded   10 s   10 % of capacity          the reference p99
    steady     60 s   70 %
    step       20 s   3 x steady (210 %)
    recover    20 s   70 %
    critical   20 s   3 x steady, 10 % of calls with x-priority: critical
    recover2   20 s   70 %
    halved     30 s   70 % of the original capacity while SIGUSR1 has halved every upstream's
                      workers at the phase's start (140 % of what is left)

Contestants are loaded one at a time (all processes are started first and stay up), as
the machine has 2 cores: three loads at once would make the generator, the upstreams and
the sidecars compete for CPU and measure the scheduler. --parallel loads all three at once
on one clock (for a machine with >= 6 idle cores).

Each sidecar's admin port is scraped every 500 ms (bulwark_concurrency_limit, in flight,
queued). Results: bench/results/overload-<date>.md (table, definitions, the command) and
overload-<date>.png (gnuplot: offered load, goodput, limit and p99 over time). See
bench/README.md, section "Overload".

Every process is started by this script in its own session and stopped by PID (SIGTERM,
then SIGKILL) at exit, on Ctrl-C and on SIGTERM; everything listens on 127.0.0.1.
"""

import argparse
import atexit
import csv
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)

ALL_CONTESTANTS = ["fixed", "adaptive", "none"]
PRIORITY_HEADER = "x-priority"
TIMELINE_S = 0.1          # bulwark-bench --timeline interval
SCRAPE_S = 0.5            # admin scrape period
FULL_ADMISSION_BAD = 0.01  # an interval is "fully admitted" with <= 1 % non-OK answers
SETTLED_BAND = 0.10       # the limit settled: within +-10 % of its final value
PACER_LAG_WARN_MS = 20    # a generator this far behind its schedule was starved of CPU

# name, default seconds, load (x capacity, or "step" = step factor x steady), critical share
PHASES = [
    ("unloaded", 10, "unloaded", 0.0),
    ("steady", 60, "steady", 0.0),
    ("step", 20, "step", 0.0),
    ("recover", 20, "steady", 0.0),
    ("critical", 20, "step", 0.1),
    ("recover2", 20, "steady", 0.0),
    ("halved", 30, "steady", 0.0),
]
HALVED_PHASE = "halved"

SIDECAR_CONFIG = """\
# bench/overload.py contestant {name}
listener:
  address: "127.0.0.1:{port}"
admin:
  address: "127.0.0.1:{admin_port}"
drain_timeout: 1s
workers: 1
clusters:
  - name: demo
    endpoints: ["127.0.0.1:{upstream_port}"]
routes:
  - name: echo
    match: {{ service: bulwark.demo.v1.Demo, method: Echo }}
    cluster: demo
{concurrency}"""

CONCURRENCY = {
    "fixed": "    concurrency: { max_in_flight: 20, max_queued: 128, queue_timeout: 50ms }\n",
    "adaptive": ("    concurrency: { max_in_flight: 256, adaptive: { min_limit: 4, initial_limit: 20 },\n"
                 "                   priority_header: " + PRIORITY_HEADER + " }\n"),
    "none": "",
}

# --------------------------------------------------------------------------------------
# Process bookkeeping: every process this script starts is tracked and stopped at exit.

_started = []  # subprocess.Popen objects, each the leader of its own session


def _stop(proc, grace=3.0):
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def _stop_all():
    while _started:
        _stop(_started.pop())


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


atexit.register(_stop_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def start(argv, log_path):
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _started.append(proc)
    return proc


def stop(proc):
    _stop(proc)
    if proc in _started:
        _started.remove(proc)


def log(msg):
    print(f"overload: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def wait_file(path, proc, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return True
        time.sleep(0.05)
    return False


def fetch(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode(errors="replace")
    except OSError:
        return None


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def ensure_gnuplot(no_install):
    if shutil.which("gnuplot"):
        return True
    if no_install:
        log("gnuplot missing (--no-install): no chart")
        return False
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    log("installing gnuplot-nox")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    rc = subprocess.call(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                 "gnuplot-nox"], env=env, stdout=subprocess.DEVNULL)
    if rc != 0 or not shutil.which("gnuplot"):
        log("could not install gnuplot-nox: no chart")
        return False
    return True


# --------------------------------------------------------------------------------------
# Contestants

class Contestant:
    def __init__(self, name):
        self.name = name
        self.upstream = None
        self.upstream_port = None
        self.sidecar = None
        self.port = None
        self.admin_port = None
        self.samples = []       # (unix time, limit, in_flight, queued); None where absent
        self.halved_at = None   # unix time SIGUSR1 was sent
        self.bench_rc = None
        self.report = None      # bulwark-bench JSON
        self.timeline = []      # rows of the --timeline CSV, as dicts of floats
        self.bench_cmd = None
        self.sidecar_cpu = None
        self.upstream_cpu = None

    def metrics(self):
        return fetch(f"http://127.0.0.1:{self.admin_port}/metrics")


def metric_value(text, name, route="echo"):
    m = re.search(r"^%s\{[^}]*route=\"%s\"[^}]*\}\s+(\S+)" % (re.escape(name), route), text,
                  re.M)
    return float(m.group(1)) if m else None


def start_contestant(name, args, bins, tmp):
    c = Contestant(name)
    port_file = os.path.join(tmp, f"upstream-{name}.port")
    c.upstream = start([bins["upstream"], "--port", "0", "--port_file", port_file,
                        "--name", f"upstream-{name}", "--capacity", str(args.capacity),
                        "--service_time", f"{args.service_time_ms}ms"],
                       os.path.join(tmp, f"upstream-{name}.log"))
    if not wait_file(port_file, c.upstream):
        raise SystemExit(f"overload: the upstream for {name} did not start; see "
                         f"{tmp}/upstream-{name}.log")
    with open(port_file) as f:
        c.upstream_port = int(f.read().strip())
    c.port, c.admin_port = free_port(), free_port()
    config = os.path.join(tmp, f"bulwark-{name}.yaml")
    with open(config, "w") as f:
        f.write(SIDECAR_CONFIG.format(name=name, port=c.port, admin_port=c.admin_port,
                                      upstream_port=c.upstream_port,
                                      concurrency=CONCURRENCY[name]))
    check = subprocess.run([bins["bulwark"], "--validate", "--config", config],
                           capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        hint = ""
        if name == "adaptive":
            hint = ("\n(this sidecar build has no adaptive concurrency yet? run with "
                    "--contestants fixed,none)")
        raise SystemExit(f"overload: {config} does not validate:\n"
                         f"{check.stdout}{check.stderr}{hint}")
    c.sidecar = start([bins["bulwark"], "--config", config],
                      os.path.join(tmp, f"bulwark-{name}.log"))
    if not (wait_port(c.port, c.sidecar) and wait_port(c.admin_port, c.sidecar)):
        raise SystemExit(f"overload: the {name} sidecar did not start; see "
                         f"{tmp}/bulwark-{name}.log")
    log(f"{name}: upstream :{c.upstream_port} (pid {c.upstream.pid}), sidecar :{c.port} "
        f"admin :{c.admin_port} (pid {c.sidecar.pid})")
    return c


# --------------------------------------------------------------------------------------
# The load

def build_phases(args):
    """[(name, start_s, seconds, rate, critical_share)] at --scale, phases of 0 s left out."""
    lengths = dict((name, secs) for name, secs, _, _ in PHASES)
    for item in filter(None, (args.phase_seconds or "").split(",")):
        key, _, value = item.partition("=")
        if key not in lengths:
            raise SystemExit(f"overload: --phase-seconds: no phase {key!r} "
                             f"(phases: {', '.join(lengths)})")
        lengths[key] = float(value)
    capacity = args.capacity / (args.service_time_ms / 1000.0)
    rates = {"unloaded": args.unloaded * capacity, "steady": args.load * capacity}
    rates["step"] = args.step_factor * rates["steady"]
    phases, t = [], 0.0
    for name, _, load, share in PHASES:
        seconds = round(lengths[name] * args.scale, 3)
        if seconds <= 0:
            continue
        phases.append(dict(name=name, start=round(t, 3), seconds=seconds,
                           rate=round(rates[load], 1), share=share,
                           capacity=capacity / 2 if name == HALVED_PHASE else capacity))
        t += seconds
    if not phases:
        raise SystemExit("overload: every phase is 0 s long")
    return phases, capacity


def schedules(phases):
    rate = ",".join(f"{p['start']:g}:{p['rate']:g}" for p in phases)
    shares, current = [], 0.0
    for p in phases:
        if p["share"] != current or not shares:
            shares.append(f"{p['start']:g}:{p['share']:g}")
            current = p["share"]
    return rate, ",".join(shares) if any(p["share"] > 0 for p in phases) else ""


def bench_argv(args, bins, c, phases, start_at, tmp):
    rate, share = schedules(phases)
    total = phases[-1]["start"] + phases[-1]["seconds"]
    argv = [bins["bench"], "--target", f"127.0.0.1:{c.port}", "--rpc", "echo",
            "--rate_schedule", rate, "--duration", f"{total:g}s",
            "--deadline", f"{args.deadline_ms}ms", "--connections", str(args.connections),
            "--payload_bytes", "100", "--max_outstanding", "10000",
            "--timeline", os.path.join(tmp, f"timeline-{c.name}.csv"),
            "--json", os.path.join(tmp, f"bench-{c.name}.json"),
            "--start_at_unix", f"{start_at:.3f}", "--progress=false"]
    if args.warmup_s > 0:
        argv += ["--warmup", f"{args.warmup_s:g}s"]
    if share:
        argv += ["--priority_header", PRIORITY_HEADER, "--priority_share", f"critical={share}"]
    return argv


class Scraper(threading.Thread):
    """Samples every contestant's admin port every SCRAPE_S until stopped."""

    def __init__(self, contestants):
        super().__init__(daemon=True)
        self.contestants = contestants
        self.stopping = threading.Event()

    def run(self):
        next_at = time.monotonic()
        while not self.stopping.is_set():
            for c in self.contestants:
                now = time.time()
                text = c.metrics()
                if text is None:
                    continue
                c.samples.append((now, metric_value(text, "bulwark_concurrency_limit"),
                                  metric_value(text, "bulwark_concurrency_in_flight"),
                                  metric_value(text, "bulwark_concurrency_queued")))
            next_at += SCRAPE_S
            self.stopping.wait(max(0.0, next_at - time.monotonic()))


def run_load(args, bins, group, phases, tmp):
    """Loads every contestant in `group` at once, on one clock; SIGUSR1 to their upstreams
    at the start of the halved phase."""
    start_at = time.time() + 1.5  # connections are set up before then
    t0 = start_at + args.warmup_s  # the measured run, whose clock the phases use
    total = phases[-1]["start"] + phases[-1]["seconds"]
    halve = next((p["start"] for p in phases if p["name"] == HALVED_PHASE), None)
    benches = []
    scraper = Scraper(group)
    for c in group:
        c.bench_cmd = bench_argv(args, bins, c, phases, start_at, tmp)
        c.sidecar_cpu = cpu_seconds(c.sidecar.pid)
        c.upstream_cpu = cpu_seconds(c.upstream.pid)
        benches.append((c, start(c.bench_cmd, os.path.join(tmp, f"bench-{c.name}.log"))))
    scraper.start()
    log(f"loading {', '.join(c.name for c in group)} for {total:g} s"
        + (f" (SIGUSR1 to the upstreams at {halve:g} s)" if halve is not None else ""))
    give_up = t0 + total + args.deadline_ms / 1000.0 + 30
    last_note = time.time()
    try:
        while any(proc.poll() is None for _, proc in benches):
            now = time.time()
            if halve is not None and now >= t0 + halve:
                for c in group:
                    if c.halved_at is None and c.upstream.poll() is None:
                        c.upstream.send_signal(signal.SIGUSR1)
                        c.halved_at = time.time()
            if now > give_up:
                log("a bench overran its time; stopping it")
                break
            if now - last_note >= 30:
                log(f"  ... {now - t0:.0f} s of {total:g}")
                last_note = now
            time.sleep(0.01)
    finally:
        scraper.stopping.set()
        scraper.join(timeout=5)
        for c, proc in benches:
            stop(proc)
            c.bench_rc = proc.returncode
    for c in group:
        before_s, before_u = c.sidecar_cpu, c.upstream_cpu
        c.sidecar_cpu = _delta(cpu_seconds(c.sidecar.pid), before_s)
        c.upstream_cpu = _delta(cpu_seconds(c.upstream.pid), before_u)
        try:
            with open(os.path.join(tmp, f"bench-{c.name}.json")) as f:
                c.report = json.load(f)
            with open(os.path.join(tmp, f"timeline-{c.name}.csv")) as f:
                c.timeline = [{k: (float(v) if v != "NA" else None) for k, v in row.items()}
                              for row in csv.DictReader(f)]
        except (OSError, ValueError) as e:
            log(f"{c.name}: no bench results ({e}); see {tmp}/bench-{c.name}.log")


def _delta(after, before):
    return None if after is None or before is None else after - before


# --------------------------------------------------------------------------------------
# Analysis

def limit_series(c):
    """[(t since the bench's start, limit)] of the scraped samples that have a limit."""
    if not c.report:
        return []
    t0 = c.report["start_unix_s"]
    return [(t - t0, limit) for t, limit, _, _ in c.samples if limit is not None]


def settled_after(series, start, end):
    """Seconds from `start` until the limit stayed within +-SETTLED_BAND of its final value
    for the rest of [start, end); None without samples."""
    inside = [(t, v) for t, v in series if start <= t < end]
    if not inside:
        return None
    final = inside[-1][1]
    band = SETTLED_BAND * max(abs(final), 1e-9)
    settled = inside[-1][0]
    for t, v in reversed(inside):
        if abs(v - final) > band:
            break
        settled = t
    return max(0.0, settled - start), final


def full_admission_after(rows, start, end):
    """Seconds from `start` until every later interval of [start, end) had <= 1 % non-OK
    answers; None if the last one did not."""
    inside = [r for r in rows if start - 1e-6 <= r["t_s"] < end - 1e-6]
    since = None
    for r in inside:
        bad = sum(r[k] for k in ("load_shed", "concurrency_limit", "queue_timeout",
                                 "deadline_exceeded", "other"))
        ended = bad + r["ok"]
        if ended > 0 and bad > FULL_ADMISSION_BAD * ended:
            since = None
        elif since is None:
            since = r["t_s"]
    return None if since is None else max(0.0, since - start)


def analyse(c, phases):
    out = []
    steps = (c.report or {}).get("steps", [])
    series = limit_series(c)
    unloaded_p99 = None
    for i, p in enumerate(phases):
        s = steps[i] if i < len(steps) else None
        if s is None:
            out.append(dict(phase=p, missing=True))
            continue
        end = p["start"] + p["seconds"]
        rejected = s["load_shed"] + s["concurrency_limit"] + s["queue_timeout"]
        p99_ms = s["ok_latency_us"]["p99"] / 1000.0 if s["ok"] else None
        if p["name"] == "unloaded":
            unloaded_p99 = p99_ms
        settle = settled_after(series, p["start"], end)
        row = dict(
            phase=p, missing=False,
            offered_per_s=s["offered"] / p["seconds"],
            goodput=s["ok"] / p["seconds"],
            capacity_share=s["ok"] / p["seconds"] / p["capacity"],
            ok_share=s["ok"] / s["offered"] if s["offered"] else None,
            rejected=rejected,
            load_shed=s["load_shed"], concurrency_limit=s["concurrency_limit"],
            queue_timeout=s["queue_timeout"], deadline=s["deadline_exceeded"],
            other=s["other"], not_sent=s["not_sent"], offered=s["offered"],
            p99_ms=p99_ms, p50_ms=s["ok_latency_us"]["p50"] / 1000.0 if s["ok"] else None,
            settled_s=settle[0] if settle else None,
            final_limit=settle[1] if settle else None,
            full_admission_s=full_admission_after(c.timeline, p["start"], end),
            critical_ok_share=(s["critical_ok"] / s["critical_offered"]
                               if s["critical_offered"] else None),
            normal_ok_share=((s["ok"] - s["critical_ok"]) /
                             (s["offered"] - s["critical_offered"])
                             if s["offered"] > s["critical_offered"] else None),
        )
        out.append(row)
    for row in out:
        if not row["missing"]:
            row["p99_x"] = (row["p99_ms"] / unloaded_p99
                            if row["p99_ms"] is not None and unloaded_p99 else None)
    return out


def status_summary(rep):
    """The run's non-OK status codes, with each code's reasons or first message."""
    parts = []
    for code, n in sorted((rep.get("status") or {}).items()):
        if code == "OK":
            continue
        reasons = (rep.get("reasons") or {}).get(code)
        if reasons:
            detail = ", ".join(f"{r} {k}" for r, k in sorted(reasons.items()))
        else:
            detail = f'"{(rep.get("status_messages") or {}).get(code, "")[:80]}"'
        parts.append(f"{code} {n} ({detail})")
    return "; ".join(parts) or "none"


def fmt(v, spec, none="—"):
    return none if v is None else format(v, spec)


def markdown(args, phases, capacity, contestants, results, cmdline, info, png_name):
    lines = [f"# Overload: {', '.join(c.name for c in contestants)} "
             f"({info['date']})", ""]
    lines += [f"Command: `{cmdline}`", ""]
    lines += [f"Machine: {info['nproc']} cores ({info['cpu']}), loadavg {info['load_start']} "
              f"at start, {info['load_end']} at end; "
              f"{'all contestants loaded at once' if args.parallel else 'contestants loaded one at a time'}.",
              ""]
    lines += [f"Binaries: `{info['bins']['bulwark']}` ({info['version'] or '?'}), "
              f"`{info['bins']['upstream']}`, `{info['bins']['bench']}`.", ""]
    lines += [f"Upstream: bulwark-demo-upstream --capacity {args.capacity} --service_time "
              f"{args.service_time_ms}ms = {capacity:g} calls/s (FIFO queue; halved by SIGUSR1 "
              f"at the start of `halved`), one per contestant. Load: bulwark-bench open loop, "
              f"deadline {args.deadline_ms} ms, {args.connections} connections, "
              f"{args.warmup_s:g} s warm-up at the first phase's rate (not recorded); scale "
              f"{args.scale:g}.", ""]
    lines += ["| phase | from s | seconds | offered/s | capacity/s | critical share |",
              "| --- | --- | --- | --- | --- | --- |"]
    for p in phases:
        lines.append(f"| {p['name']} | {p['start']:g} | {p['seconds']:g} | {p['rate']:g} | "
                     f"{p['capacity']:g} | {p['share']:g} |")
    lines += ["", "Sidecars (workers: 1, one route on Demo.Echo):", ""]
    for c in contestants:
        conf = CONCURRENCY[c.name].strip() or "(no concurrency block)"
        lines.append(f"- **{c.name}**: `{' '.join(conf.split())}`")
    lines += ["", "## Results", "",
              "| sidecar | phase | offered/s | goodput/s | of capacity | OK | shed (load_shed / "
              "limit / queue) | deadline exceeded | other | p99 OK ms | p99 / unloaded | "
              "limit at end | limit settled s | full admission s | critical OK | normal OK |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | "
              "--- | --- | --- |"]
    for c in contestants:
        for r in results[c.name]:
            p = r["phase"]
            if r["missing"]:
                lines.append(f"| {c.name} | {p['name']} | (no data) |" + " |" * 14)
                continue
            shed = (f"{r['rejected']} ({r['load_shed']} / {r['concurrency_limit']} / "
                    f"{r['queue_timeout']})")
            crit = fmt(r["critical_ok_share"], ".1%") if p["share"] > 0 else ""
            normal = fmt(r["normal_ok_share"], ".1%") if p["share"] > 0 else ""
            lines.append(
                f"| {c.name} | {p['name']} | {r['offered_per_s']:.0f} | {r['goodput']:.0f} | "
                f"{r['capacity_share']:.0%} | {fmt(r['ok_share'], '.1%')} | {shed} | "
                f"{r['deadline']} | {r['other']} | {fmt(r['p99_ms'], '.1f')} | "
                f"{fmt(r['p99_x'], '.1f')}{'x' if r['p99_x'] is not None else ''} | "
                f"{fmt(r['final_limit'], '.0f')} | {fmt(r['settled_s'], '.1f')} | "
                f"{fmt(r['full_admission_s'], '.1f', 'never')} | {crit} | {normal} |")
    lines += ["", "Per contestant:", ""]
    for c in contestants:
        rep = c.report or {}
        lines.append(
            f"- {c.name}: bench exit {c.bench_rc}, {rep.get('offered', '?')} calls offered, "
            f"{rep.get('not_sent', '?')} not sent, pacer lag max "
            f"{fmt(rep.get('pacer_max_lag_ms'), '.1f')} ms, client CPU "
            f"{fmt(rep.get('client_cpu_us_per_call'), '.0f')} µs/call; sidecar CPU "
            f"{fmt(c.sidecar_cpu, '.1f')} s, upstream CPU {fmt(c.upstream_cpu, '.1f')} s"
            + (f"; SIGUSR1 at {c.halved_at - rep['start_unix_s']:.2f} s"
               if c.halved_at and rep.get("start_unix_s") else "")
            + f"; non-OK: {status_summary(rep)}")
    starved = [c.name for c in contestants
               if (c.report or {}).get("pacer_max_lag_ms", 0) > PACER_LAG_WARN_MS]
    if starved:
        lines += ["", f"**Warning**: the load generator fell more than {PACER_LAG_WARN_MS} ms "
                  f"behind its schedule at least once for {', '.join(starved)} (it was short of "
                  "CPU): the calls it owed then started late, in a burst, and the latencies of "
                  "that moment include the wait. Far more than this: rerun on a quiet machine."]
    lines += ["", "Definitions:", "",
              "- Calls belong to the phase in which they were **started**; goodput = OK calls "
              "of the phase / its length; *of capacity* = goodput / the upstream's capacity "
              "in the phase; *OK* = OK / offered.",
              "- *shed*: answered by the sidecar with `x-bulwark-reason` load_shed, "
              "concurrency_limit or queue_timeout. *deadline exceeded*: the 1 s deadline passed "
              "(no reason trailer: the call was admitted, or never limited). *other*: every "
              "other non-OK answer.",
              "- *p99 OK*: of the calls answered OK (admitted and served in time); *p99 / "
              "unloaded*: against the same sidecar's p99 in `unloaded`.",
              f"- *limit at end*: `bulwark_concurrency_limit` at the phase's last scrape "
              f"(every {SCRAPE_S:g} s); *limit settled*: seconds from the phase's start until "
              f"the limit stayed within ±{SETTLED_BAND:.0%} of that value for the rest of the "
              "phase (— without the metric).",
              f"- *full admission*: seconds from the phase's start until every later 100 ms "
              f"interval of the phase had at most {FULL_ADMISSION_BAD:.0%} non-OK answers "
              "(by end time); after `step` and `critical` it is the time to recover; "
              "*never*: the phase's last interval had more.",
              "- *critical OK* / *normal OK*: share of the critical (x-priority: critical) and "
              "of the other calls answered OK, in phases with a critical share.", ""]
    if png_name:
        lines += [f"![offered load, goodput, limit and p99 over time]({png_name})", ""]
    return "\n".join(lines)


def plot(args, phases, contestants, tmp, png_path, stamp):
    """Offered load, goodput, limit and p99 over time, one line per contestant."""
    bin_s = 0.5
    total = phases[-1]["start"] + phases[-1]["seconds"]
    files = {}
    for c in contestants:
        if not c.timeline:
            continue
        path = os.path.join(tmp, f"plot-{c.name}.dat")
        bins = {}
        for r in c.timeline:
            b = int(r["t_s"] / bin_s + 1e-6)
            acc = bins.setdefault(b, dict(offered=0, ok=0, p99=[]))
            acc["offered"] += r["offered"]
            acc["ok"] += r["ok"]
            if r["p99_ms"] is not None:
                acc["p99"].append(r["p99_ms"])
        series = limit_series(c)
        with open(path, "w") as f:
            f.write("t offered goodput p99 limit\n")
            for b in sorted(bins):
                acc = bins[b]
                t = b * bin_s
                if t >= total - 1e-6:  # the tails of the last calls
                    break
                limits = [v for tt, v in series if t <= tt < t + bin_s]
                f.write(f"{t + bin_s / 2:.2f} {acc['offered'] / bin_s:.1f} "
                        f"{acc['ok'] / bin_s:.1f} "
                        f"{max(acc['p99']) if acc['p99'] else 'NA'} "
                        f"{limits[-1] if limits else 'NA'}\n")
        files[c.name] = path
    if not files:
        return False
    arrows = []
    for p in phases[1:]:
        arrows.append(f'set arrow from {p["start"]:g}, graph 0 to {p["start"]:g}, graph 1 '
                      'nohead dt 3 lc rgb "gray50"')
    labels = [f'set label "{p["name"]}" at {p["start"] + p["seconds"] / 2:g}, graph 0.93 '
              'center font ",8" tc rgb "gray30"' for p in phases]
    colours = {"fixed": "#1f77b4", "adaptive": "#d62728", "none": "#7f7f7f"}

    def lines_for(col, title_fmt, extra=""):
        parts = []
        for name, path in files.items():
            parts.append(f'"{path}" using 1:{col} with lines lw 2 lc rgb "{colours[name]}" '
                         f'title "{title_fmt.format(name=name)}"{extra}')
        return ", \\\n     ".join(parts)

    script = f"""
set terminal pngcairo size 1200,1100 font ",10" noenhanced
set output "{png_path}"
set datafile missing "NA"
set key autotitle columnhead outside right
set grid
set xlabel "seconds (0.5 s bins)"
set xrange [0:{total:g}]
set offsets 0, 0, graph 0.1, 0
set lmargin 12
set rmargin 16
{chr(10).join(arrows)}
{chr(10).join(labels)}
set multiplot layout 4,1 title "bench/overload.py {stamp}: capacity {args.capacity} x {args.service_time_ms} ms, scale {args.scale:g}"
set ylabel "offered calls/s"
set yrange [0:*]
plot {lines_for(2, "{name}")}
set ylabel "goodput (OK calls/s)"
plot {lines_for(3, "{name}")}
set ylabel "concurrency limit"
plot {lines_for(5, "{name}")}
set ylabel "p99 OK (ms)"
set logscale y
set offsets 0, 0, 0, 0
set yrange [*:{args.deadline_ms * 2}]
plot {lines_for(4, "{name}")}
unset multiplot
"""
    with open(os.path.join(tmp, "plot.gp"), "w") as f:
        f.write(script)
    rc = subprocess.call(["gnuplot", os.path.join(tmp, "plot.gp")],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "gnuplot.log"), "w"))
    if rc != 0:
        log(f"gnuplot failed; see {tmp}/gnuplot.log")
        return False
    return True


# --------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(REPO_DIR, "build"))
    ap.add_argument("--bulwark", default="",
                    help="the sidecar binary (default: BUILD_DIR/sidecar/bulwark)")
    ap.add_argument("--contestants", default=",".join(ALL_CONTESTANTS))
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies every phase's length (0.25: a quick check)")
    ap.add_argument("--phase-seconds", default="",
                    help="phase lengths at scale 1, e.g. steady=30,recover2=0 (0 drops one)")
    ap.add_argument("--capacity", type=int, default=20, help="upstream workers")
    ap.add_argument("--service-time-ms", type=int, default=10, help="each call's work")
    ap.add_argument("--unloaded", type=float, default=0.1, help="x capacity in `unloaded`")
    ap.add_argument("--load", type=float, default=0.7, help="x capacity in steady phases")
    ap.add_argument("--step-factor", type=float, default=3.0, help="step = this x steady")
    ap.add_argument("--deadline-ms", type=int, default=1000)
    ap.add_argument("--warmup-s", type=float, default=2.0,
                    help="load at the first phase's rate before the phases, not recorded "
                         "(connection set-up stays out of the unloaded p99)")
    ap.add_argument("--connections", type=int, default=8,
                    help="client connections per contestant (the sidecar allows 1000 "
                         "streams on each)")
    ap.add_argument("--parallel", action="store_true",
                    help="load every contestant at once (needs >= 6 idle cores)")
    ap.add_argument("--out-dir", default=os.path.join(BENCH_DIR, "results"))
    ap.add_argument("--no-install", action="store_true", help="never apt-get gnuplot")
    ap.add_argument("--keep-tmp", action="store_true", help="keep configs, logs and raw data")
    args = ap.parse_args(argv)
    cmdline = "python3 bench/overload.py " + " ".join(shlex.quote(a) for a in
                                                       (argv if argv is not None else sys.argv[1:]))

    names = [n.strip() for n in args.contestants.split(",") if n.strip()]
    for n in names:
        if n not in ALL_CONTESTANTS:
            raise SystemExit(f"overload: unknown contestant {n!r} (know {ALL_CONTESTANTS})")
    if args.scale <= 0 or args.capacity < 1 or args.service_time_ms < 1:
        raise SystemExit("overload: --scale, --capacity and --service-time-ms must be > 0")
    bins = {"bulwark": args.bulwark or os.path.join(args.build_dir, "sidecar", "bulwark"),
            "upstream": os.path.join(args.build_dir, "tools", "bulwark-demo-upstream"),
            "bench": os.path.join(args.build_dir, "tools", "bulwark-bench")}
    for b in bins.values():
        if not os.access(b, os.X_OK):
            raise SystemExit(f"overload: {b} missing; build with: ninja -C {args.build_dir} "
                             "bulwark bulwark-demo-upstream bulwark-bench")
    have_gnuplot = ensure_gnuplot(args.no_install)
    version = subprocess.run([bins["bulwark"], "--version"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    phases, capacity = build_phases(args)
    total = phases[-1]["start"] + phases[-1]["seconds"]
    rounds = 1 if args.parallel else len(names)
    log(f"{len(phases)} phases, {total:g} s of load per contestant, about "
        f"{rounds * (total + args.warmup_s + 4):.0f} s in all")

    now = datetime.datetime.now()
    stamp = now.strftime("%Y-%m-%d-%H%M%S")
    with open("/proc/loadavg") as f:
        load_start = " ".join(f.read().split()[:3])
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    tmp = tempfile.mkdtemp(prefix="bulwark-overload-")
    try:
        contestants = [start_contestant(n, args, bins, tmp) for n in names]
        groups = [contestants] if args.parallel else [[c] for c in contestants]
        for group in groups:
            run_load(args, bins, group, phases, tmp)
        with open("/proc/loadavg") as f:
            load_end = " ".join(f.read().split()[:3])
        for c in contestants:
            if c.sidecar.poll() is not None:
                log(f"{c.name}: the sidecar exited ({c.sidecar.returncode}) during the run")
        _stop_all()

        results = {c.name: analyse(c, phases) for c in contestants}
        os.makedirs(args.out_dir, exist_ok=True)
        png_path = os.path.join(args.out_dir, f"overload-{stamp}.png")
        png_ok = have_gnuplot and plot(args, phases, contestants, tmp, png_path, stamp)
        info = dict(date=stamp, nproc=os.cpu_count(), cpu=cpu, load_start=load_start,
                    load_end=load_end, bins=bins, version=version)
        md = markdown(args, phases, capacity, contestants, results, cmdline, info,
                      os.path.basename(png_path) if png_ok else None)
        md_path = os.path.join(args.out_dir, f"overload-{stamp}.md")
        with open(md_path, "w") as f:
            f.write(md)
        print(md)
        log(f"wrote {md_path}" + (f" and {png_path}" if png_ok else ""))
        failed = [c.name for c in contestants if c.bench_rc != 0 or not c.report]
        if failed:
            log(f"bench failed for {', '.join(failed)}; logs in {tmp}")
            args.keep_tmp = True
            return 1
        return 0
    finally:
        _stop_all()
        if args.keep_tmp:
            log(f"configs, logs and raw data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
