#!/usr/bin/env python3
"""What a global rate limit (SPEC section 8) costs per call, and how exactly it holds.

    python3 bench/global_limit.py [--build-dir build]       # ~3 minutes
    python3 bench/global_limit.py --seconds 5

Starts a redis-server on a free loopback port (no persistence; stopped by PID), one
bulwark-demo-upstream, and Bulwark sidecars (workers: 1, one route on Demo/Echo).

Cost: one sidecar with the route's limit local, then global (on the same Redis), with a
limit far above the load so nothing is rejected; bulwark-bench closed loop at 1 and at 64
calls in flight for --seconds each. Reported: p50 / p99 and QPS of each, and the Redis round
trips (bulwark_redis_requests_total: refills and heartbeats) per 1000 calls.

Accuracy: 1, 3 and 6 sidecars sharing one global limit (--limit calls/s, burst limit/10),
each offered an uneven share of twice the limit, open loop (bulwark-bench --rate), for
--seconds. Reported: the calls the sidecars admitted together over rate x seconds + burst
(SPEC: within 5 %), and per sidecar what it was offered and admitted. The sidecars and the
loads are started together; every load starts at one shared wall-clock time
(--start_at_unix) a second after the sidecars are up.

Results: bench/results/global-limit-<date>.md and a gnuplot chart -<date>.png when gnuplot
is installed (bench/README.md, section "Global rate limits").
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import fetch, free_port, metric_sum, start, stop, wait_port


def log(msg):
    print(f"global_limit: {msg}", file=sys.stderr, flush=True)


CONFIG = """listener: {{ address: "127.0.0.1:{port}" }}
admin: {{ address: "127.0.0.1:{admin}" }}
workers: 1
{redis}clusters:
  - name: demo
    endpoints: ["127.0.0.1:{upstream}"]
routes:
  - name: echo
    match: {{ service: bulwark.demo.v1.Demo, method: Echo }}
    cluster: demo
    rate_limit:
      requests_per_second: {rate}
      burst: {burst}
{global_}"""


class Sidecar:
    def __init__(self, bins, tmp, name, upstream, rate, burst, redis_port):
        self.port, self.admin = free_port(), free_port()
        redis = (f'redis:\n  - name: main\n    address: "127.0.0.1:{redis_port}"\n'
                 if redis_port else "")
        global_ = ("      global: { redis: main, domain: bench, on_redis_error: LOCAL }\n"
                   if redis_port else "")
        path = os.path.join(tmp, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(CONFIG.format(port=self.port, admin=self.admin, upstream=upstream,
                                  rate=rate, burst=burst, redis=redis, global_=global_))
        self.proc = start([bins["bulwark"], "--config", path], os.path.join(tmp, f"{name}.log"))
        if not wait_port(self.port, self.proc) or not wait_port(self.admin, self.proc):
            sys.exit(f"sidecar {name} did not start: see {tmp}/{name}.log")

    def metrics(self):
        return fetch(f"http://127.0.0.1:{self.admin}/metrics")


def bench(bins, port, out, extra, timeout):
    subprocess.run([bins["bench"], f"--target=127.0.0.1:{port}", "--rpc=echo",
                    "--progress=false", "--deadline=1s", f"--json={out}"] + extra,
                   check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def median(values):
    v = sorted(values)
    return v[len(v) // 2]


def cost(args, bins, tmp, upstream, redis_port):
    """Wall clock: rounds interleaved (local, global, local, ...), medians reported."""
    samples = {}
    for rnd in range(args.rounds):
        for kind in ("local", "global"):
            sc = Sidecar(bins, tmp, f"cost-{kind}-{rnd}", upstream, 1000000, 100000,
                         redis_port if kind == "global" else 0)
            time.sleep(0.5)  # the first refill answered
            for inflight in (1, 64):
                before = sc.metrics()
                rep = bench(bins, sc.port,
                            os.path.join(tmp, f"cost-{kind}-{inflight}-{rnd}.json"),
                            [f"--concurrency={inflight}", f"--duration={args.seconds}s",
                             "--warmup=1s"], args.seconds + 60)
                after = sc.metrics()
                trips = (metric_sum(after, "bulwark_redis_requests_total")
                         - metric_sum(before, "bulwark_redis_requests_total"))
                calls = rep["calls"] + rep.get("warmup_calls", 0)
                samples.setdefault((kind, inflight), []).append({
                    "qps": rep["qps"], "p50": rep["latency_us"]["p50"] / 1000,
                    "p99": rep["latency_us"]["p99"] / 1000,
                    "trips_per_1000": 1000 * trips / calls if calls else 0})
            stop(sc.proc)
    rows = []
    for (kind, inflight), runs in samples.items():
        rows.append({"kind": kind, "inflight": inflight,
                     **{k: median([r[k] for r in runs]) for k in runs[0]},
                     "p99_all": [r["p99"] for r in runs]})
    rows.sort(key=lambda r: (r["inflight"], r["kind"] != "local"))
    return rows


PEER = """listener: {{ address: "127.0.0.1:${{PORT}}" }}
admin: {{ address: "127.0.0.1:${{ADMIN_PORT}}" }}
workers: 1
{redis}clusters:
  - name: demo
    endpoints: ["127.0.0.1:${{UPSTREAM_PORT}}"]
routes:
  - name: echo
    match: {{ prefix: "/" }}
    cluster: demo
    rate_limit:
      requests_per_second: 1000000
      burst: 100000
{global_}"""


def instructions(args, tmp, redis_port, kind):
    """callgrind instructions per 100-byte call at 64 in flight (bench/profile.sh)."""
    path = os.path.join(tmp, f"peer-{kind}.yaml")
    with open(path, "w") as f:
        f.write(PEER.format(
            redis=(f'redis:\n  - name: main\n    address: "127.0.0.1:{redis_port}"\n'
                   if kind == "global" else ""),
            global_=("      global: { redis: main, domain: cg, on_redis_error: LOCAL }\n"
                     if kind == "global" else "")))
    env = dict(os.environ, PEER_YAML=path, BUILD_DIR=args.build_dir)
    out = subprocess.run(["bash", os.path.join(os.path.dirname(__file__), "profile.sh"),
                          "100", "5000", "bulwark"], env=env, check=True, timeout=1800,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "instructions per call" in line:
            dump = out.split("callgrind file: ")[-1].strip()
            if dump and os.path.exists(dump):
                os.remove(dump)  # raw dumps are not kept
            return int(line.split(":")[1].split()[0])
    sys.exit("profile.sh printed no figure:\n" + out)


def accuracy(args, bins, tmp, upstream, redis_port, n):
    limit, burst = args.limit, max(1, args.limit // 10)
    sidecars = [Sidecar(bins, tmp, f"acc{n}-{i}", upstream, limit, burst, redis_port)
                for i in range(n)]
    # Uneven shares of twice the limit: weights 1, 2, 3, ...
    weights = list(range(1, n + 1))
    offered = [2 * limit * w / sum(weights) for w in weights]
    start_at = time.time() + 2.0
    procs = []
    for i, (sc, rate) in enumerate(zip(sidecars, offered)):
        out = os.path.join(tmp, f"acc{n}-{i}.json")
        argv = [bins["bench"], f"--target=127.0.0.1:{sc.port}", "--rpc=echo",
                "--progress=false", "--deadline=1s", f"--json={out}", f"--rate={rate:.1f}",
                f"--duration={args.seconds}s", f"--start_at_unix={start_at:.3f}",
                "--max_outstanding=2000"]
        procs.append((subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL), out))
    admitted, per = 0, []
    for (p, out), rate in zip(procs, offered):
        p.wait(timeout=args.seconds + 60)
        with open(out) as f:
            rep = json.load(f)
        ok = rep["status"].get("OK", 0)
        admitted += ok
        per.append((rate, ok))
    replicas = metric_sum(sidecars[0].metrics(), "bulwark_rate_limit_global_replicas")
    for sc in sidecars:
        stop(sc.proc)
    bound = limit * args.seconds + burst
    return {"n": n, "limit": limit, "burst": burst, "admitted": admitted, "bound": bound,
            "ratio": admitted / bound, "per": per, "replicas": replicas}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--limit", type=int, default=1000, help="the shared limit, calls/s")
    ap.add_argument("--sidecars", default="1,3,6")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the cost rows")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    bins = {
        "bulwark": os.path.join(args.build_dir, "sidecar", "bulwark"),
        "upstream": os.path.join(args.build_dir, "tools", "bulwark-demo-upstream"),
        "bench": os.path.join(args.build_dir, "tools", "bulwark-bench"),
    }
    for b in bins.values():
        if not os.access(b, os.X_OK):
            sys.exit(f"missing {b}: build first")
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        sys.exit("redis-server is missing (apt-get install redis-server)")
    tmp = tempfile.mkdtemp(prefix="bulwark-global-")
    redis_port = free_port()
    redis = start([redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no"], os.path.join(tmp, "redis.log"))
    if not wait_port(redis_port, redis):
        sys.exit("redis-server did not start")
    up_port = free_port()
    up = start([bins["upstream"], f"--port={up_port}"], os.path.join(tmp, "upstream.log"))
    if not wait_port(up_port, up):
        sys.exit("upstream did not start")

    cg = {}
    if not args.no_callgrind:
        for kind in ("local", "global"):
            log(f"callgrind: {kind} limit")
            cg[kind] = instructions(args, tmp, redis_port, kind)
    log("cost: local vs global limit")
    cost_rows = cost(args, bins, tmp, up_port, redis_port)
    acc_rows = []
    for n in (int(x) for x in args.sidecars.split(",") if x):
        log(f"accuracy: {n} sidecar(s)")
        acc_rows.append(accuracy(args, bins, tmp, up_port, redis_port, n))

    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    cmd = "python3 bench/global_limit.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# Global rate limits ({stamp})", "",
             f"Command: `{cmd.strip()}`. One redis-server, one demo upstream, sidecars with "
             "workers: 1; bulwark-bench on the same 2-core machine (loopback).", "",
             "## Cost per call: the same route with its limit local, then global", "",
             f"Limit far above the load (nothing rejected); closed loop, {args.seconds} s per row, "
             f"{args.rounds} interleaved rounds, medians (each round's p99 in brackets).", ""]
    if cg:
        lines += [f"callgrind (`PEER_YAML=... bench/profile.sh 100 5000 bulwark`, 64 in flight, "
                  f"100-byte calls): local {cg['local']} instructions per call, global "
                  f"{cg['global']} ({100 * (cg['global'] / cg['local'] - 1):+.1f} %).", ""]
    lines += ["| limit | in flight | calls/s | p50 ms | p99 ms | Redis round trips per 1000 calls |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in cost_rows:
        p99s = ", ".join(f"{v:.2f}" for v in r["p99_all"])
        lines.append(f"| {r['kind']} | {r['inflight']} | {r['qps']:.0f} | {r['p50']:.3f} | "
                     f"{r['p99']:.3f} ({p99s}) | {r['trips_per_1000']:.2f} |")
    lines += ["", "## Accuracy: sidecars sharing one global limit", "",
              f"Limit {args.limit}/s, burst {max(1, args.limit // 10)}; each sidecar offered an "
              f"uneven share (1 : 2 : ... : n) of twice the limit, open loop, {args.seconds} s. "
              "Bound: rate x seconds + burst; SPEC: admitted within 5 % of it.", "",
              "| sidecars | offered calls/s (each) | admitted (each) | admitted in all | bound | "
              "admitted / bound | replicas seen |",
              "| ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for a in acc_rows:
        lines.append(f"| {a['n']} | {', '.join(f'{r:.0f}' for r, _ in a['per'])} | "
                     f"{', '.join(str(ok) for _, ok in a['per'])} | {a['admitted']} | "
                     f"{a['bound']} | {100 * a['ratio']:.1f} % | {a['replicas']:.0f} |")
    os.makedirs(args.out_dir, exist_ok=True)
    md = os.path.join(args.out_dir, f"global-limit-{stamp}.md")
    png = None
    if shutil.which("gnuplot"):
        dat = os.path.join(tmp, "acc.dat")
        with open(dat, "w") as f:
            for a in acc_rows:
                f.write(f"{a['n']} {a['admitted'] / args.seconds:.1f} {args.limit} "
                        f"{2 * args.limit}\n")
        png = os.path.join(args.out_dir, f"global-limit-{stamp}.png")
        script = f"""set terminal pngcairo size 720,400
set output '{png}'
set title 'Calls/s admitted by sidecars sharing a global limit of {args.limit}/s (offered 2x)'
set xlabel 'sidecars'
set ylabel 'admitted calls/s'
set yrange [0:{args.limit * 2.4}]
set xtics (1,3,6)
set boxwidth 0.6
set style fill solid 0.6
plot '{dat}' using 1:2 with boxes title 'admitted, all sidecars', \\
     '{dat}' using 1:3 with linespoints lw 2 title 'limit', \\
     '{dat}' using 1:4 with linespoints lw 1 dt 2 title 'offered, all sidecars'
"""
        subprocess.run(["gnuplot"], input=script.encode(), check=True, timeout=60)
        lines += ["", f"![accuracy]({os.path.basename(png)})"]
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    log(f"wrote {md}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
