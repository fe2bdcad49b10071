#!/usr/bin/env python3
"""Retries, hedging and outlier detection (SPEC section 9) against a misbehaving endpoint.

    python3 bench/retry.py [--build-dir build]     # both scenarios, ~2 minutes
    python3 bench/retry.py --seconds 5             # shorter loads

Three bulwark-demo-upstreams on 127.0.0.1 behind one Bulwark sidecar (workers: 1, one route
on bulwark.demo.v1.Demo/Echo); bulwark-bench keeps --concurrency calls in flight for
--seconds per contestant, 1 s deadline per call. Every contestant gets fresh processes.

Scenario "failing": one of the three endpoints answers every call UNAVAILABLE
(--fail_code=14; its health checks pass, as for an endpoint that fails only live calls):

    none              no retry, no outlier detection
    retry             retry { max_attempts: 3 } (budget 0.2 of calls, 10/s)
    retry+outlier     the same, and outlier_detection { consecutive_failures: 5 } on the cluster

Scenario "slow": every endpoint answers after --fast-ms, one of them after 10x that
(--delay); each balancing of --balancers (LEAST_REQUEST, PEAK_EWMA) with:

    no hedge          no retry block
    hedge after D     retry { max_attempts: 2, hedge_delay: D } (the default budget: 0.2 of
                      calls), D = each of --hedge-factors (2, 4, 5) x the fast latency

The hedge delay matters under LEAST_REQUEST: a hedged call's slow attempt is cancelled when
the hedge answers, which frees the slow endpoint sooner, and LEAST_REQUEST then sends it more
calls (its share is about 1/duration): a short delay cuts the p99 most but hedges more calls.
PEAK_EWMA sees the slow endpoint's latency (a cancelled hedge counts as "at least this long")
and sends it only the calls that probe whether it is still slow.

Reported: client success rate, upstream attempts per client call (from the sidecar's
bulwark_upstream_attempts_total, every attempt sent, cancelled hedges included), p50 / p99 of
the calls, for hedging the extra upstream load, and the share of attempts the slow endpoint
got (bulwark_upstream_requests_total by endpoint). p99 changes are against LEAST_REQUEST
without hedging. Results: bench/results/retry-<date>.md (see
bench/README.md, section "Retries and hedging").

Every process is started in its own session and stopped by PID at exit.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import fetch, free_port, metric_sum, start, stop, wait_port


def log(msg):
    print(f"retry: {msg}", file=sys.stderr, flush=True)


CONFIG = """listener: {{ address: "127.0.0.1:{port}" }}
admin: {{ address: "127.0.0.1:{admin}" }}
workers: 1
clusters:
  - name: demo
    endpoints: [{endpoints}]
    load_balancing: {balancing}
{cluster_extra}routes:
  - name: echo
    match: {{ service: bulwark.demo.v1.Demo, method: Echo }}
    cluster: demo
{route_extra}"""


def run_contestant(args, bins, tmp, name, upstream_flags, balancing, cluster_extra,
                   route_extra):
    procs = []
    ports = []
    slow_port = None
    for i, flags in enumerate(upstream_flags):
        port = free_port()
        p = start([bins["upstream"], f"--port={port}", f"--name=u{i}"] + flags,
                  os.path.join(tmp, f"{name}-u{i}.log"))
        if not wait_port(port, p):
            sys.exit(f"upstream {i} did not start")
        procs.append(p)
        ports.append(port)
        if any(f.startswith("--delay=") for f in flags) and i == len(upstream_flags) - 1:
            slow_port = port
    port, admin = free_port(), free_port()
    config = os.path.join(tmp, f"{name}.yaml")
    with open(config, "w") as f:
        f.write(CONFIG.format(port=port, admin=admin, balancing=balancing,
                              endpoints=", ".join(f'"127.0.0.1:{p}"' for p in ports),
                              cluster_extra=cluster_extra, route_extra=route_extra))
    sidecar = start([bins["bulwark"], "--config", config], os.path.join(tmp, f"{name}.log"))
    if not wait_port(port, sidecar):
        sys.exit(f"sidecar for {name} did not start: see {tmp}/{name}.log")
    out = os.path.join(tmp, f"{name}.json")
    subprocess.run([bins["bench"], f"--target=127.0.0.1:{port}", "--rpc=echo",
                    f"--concurrency={args.concurrency}", f"--duration={args.seconds}s",
                    "--deadline=1s", "--progress=false", f"--json={out}"],
                   check=True, timeout=args.seconds + 60, stdout=subprocess.DEVNULL)
    metrics = fetch(f"http://127.0.0.1:{admin}/metrics")
    for p in [sidecar] + procs:
        stop(p)
    with open(out) as f:
        rep = json.load(f)
    calls = rep["calls"]
    ok = rep["status"].get("OK", 0)
    # Every attempt sent, cancelled hedges included.
    attempts = metric_sum(metrics, "bulwark_upstream_attempts_total")
    sent = metric_sum(metrics, "bulwark_upstream_requests_total")
    to_slow = (metric_sum(metrics, "bulwark_upstream_requests_total",
                          f'endpoint="127.0.0.1:{slow_port}"') if slow_port else 0.0)
    return {
        "slow_share": to_slow / sent if sent else 0.0,
        "name": name,
        "calls": calls,
        "ok": ok,
        "success": ok / calls if calls else 0.0,
        "attempts_per_call": attempts / calls if calls else 0.0,
        "hedges": metric_sum(metrics, "bulwark_upstream_attempts_total", 'kind="hedge"'),
        "retries": metric_sum(metrics, "bulwark_upstream_attempts_total", 'kind="retry"'),
        "exhausted": metric_sum(metrics, "bulwark_retry_budget_exhausted_total"),
        "ejections": metric_sum(metrics, "bulwark_outlier_ejections_total"),
        "p50_ms": rep["latency_us"]["p50"] / 1000.0,
        "p99_ms": rep["latency_us"]["p99"] / 1000.0,
        "p999_ms": rep["latency_us"]["p999"] / 1000.0,
        "qps": rep["qps"],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--fast-ms", type=int, default=5)
    ap.add_argument("--hedge-factors", default="2,4,5",
                    help="hedge_delay values to run, as multiples of --fast-ms")
    ap.add_argument("--balancers", default="LEAST_REQUEST,PEAK_EWMA",
                    help="load_balancing values of the slow scenario")
    ap.add_argument("--skip-failing", action="store_true",
                    help="run the slow scenario only")
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    bins = {
        "bulwark": os.path.join(args.build_dir, "sidecar", "bulwark"),
        "upstream": os.path.join(args.build_dir, "tools", "bulwark-demo-upstream"),
        "bench": os.path.join(args.build_dir, "tools", "bulwark-bench"),
    }
    for b in bins.values():
        if not os.access(b, os.X_OK):
            sys.exit(f"missing {b}: build first (cmake --build {args.build_dir})")
    tmp = tempfile.mkdtemp(prefix="bulwark-retry-")
    retry = "    retry: { max_attempts: 3, methods: ALL }\n"
    outlier = "    outlier_detection: { consecutive_failures: 5, base_ejection_time: 30s }\n"
    failing = [[], [], ["--fail_code=14"]]
    results = {"failing": [], "slow": []}
    failing_rows = [] if args.skip_failing else [("none", "", ""), ("retry", "", retry),
                                                 ("retry+outlier", outlier, retry)]
    for name, cluster_extra, route_extra in failing_rows:
        log(f"failing endpoint: {name}")
        results["failing"].append(run_contestant(args, bins, tmp, name, failing,
                                                 "ROUND_ROBIN", cluster_extra, route_extra))
    fast = f"--delay={args.fast_ms}ms"
    slow_flags = [[fast], [fast], [f"--delay={10 * args.fast_ms}ms"]]
    rows = [("no hedge", "")]
    for factor in (float(f) for f in args.hedge_factors.split(",") if f):
        delay = int(factor * args.fast_ms)
        rows.append((f"hedge after {delay} ms",
                     f"    retry: {{ max_attempts: 2, methods: ALL, hedge_delay: {delay}ms }}\n"))
    for balancing in (b for b in args.balancers.split(",") if b):
        for name, route_extra in rows:
            log(f"slow endpoint: {balancing}, {name}")
            results["slow"].append(run_contestant(
                args, bins, tmp, re.sub(r"\W+", "-", f"{balancing}-{name}"), slow_flags,
                balancing, "", route_extra))
            results["slow"][-1]["name"] = name
            results["slow"][-1]["balancing"] = balancing

    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    cmd = "python3 bench/retry.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# Retries, hedging and outlier detection ({stamp})", "",
        f"Command: `{cmd.strip()}`. Three bulwark-demo-upstreams, one sidecar (workers: 1), "
        f"bulwark-bench with {args.concurrency} calls in flight for {args.seconds} s per row, "
        "1 s deadline; fresh processes per row. Upstream attempts per call: the sidecar's "
        "bulwark_upstream_attempts_total (every attempt sent) over the client's calls. "
        "Machine: 2 cores, loopback; see bench/README.md.", "",
    ]
    if results["failing"]:
        lines += [
            "## One of three endpoints fails every call (UNAVAILABLE, health checks pass)", "",
            "| configuration | calls | client success | upstream attempts per call | retries | "
            "budget exhausted | ejections | p50 ms | p99 ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
    for r in results["failing"]:
        lines.append(f"| {r['name']} | {r['calls']} | {100 * r['success']:.2f} % | "
                     f"{r['attempts_per_call']:.3f} | {r['retries']:.0f} | {r['exhausted']:.0f} | "
                     f"{r['ejections']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    base = results["slow"][0]
    lines += [
        "", f"## One of three endpoints is 10x slower ({args.fast_ms} ms vs "
        f"{10 * args.fast_ms} ms)", "",
        f"p99 change against {base['balancing']} without hedging; slow share: the attempts "
        "the slow endpoint got.", "",
        "| balancing | configuration | calls | p50 ms | p99 ms | p99.9 ms | p99 change | hedges | "
        "extra upstream load | slow share |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["slow"]:
        change = (r["p99_ms"] / base["p99_ms"] - 1) * 100 if base["p99_ms"] else 0
        extra = (r["attempts_per_call"] - 1) * 100
        lines.append(f"| {r['balancing']} | {r['name']} | {r['calls']} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {change:+.0f} % | "
                     f"{r['hedges']:.0f} | {extra:.1f} % | "
                     f"{100 * r['slow_share']:.1f} % |")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, f"retry-{stamp}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
