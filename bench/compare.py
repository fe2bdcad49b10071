#!/usr/bin/env python3
"""Bulwark vs nghttpx, HAProxy, nginx and no proxy at all, in one interleaved run.

    python3 bench/compare.py [--build-dir build] [--rounds 3] [--seconds 5]
    python3 bench/compare.py --mode singleflight [--build-dir build]

Every contestant sits between the load generator and one shared bulwark-demo-upstream on
127.0.0.1 (free ports), all started by this script as plain child processes with the
configurations in bench/peers/ (rendered into a temporary directory) and stopped at exit:

    direct            the load generator talks to the demo upstream itself
    nghttpx           nghttpx 1 worker, h2c to the upstream, no via / x-forwarded-proto
    haproxy           HAProxy mode http, proto h2 on bind and server, http-reuse always
    nginx             nginx grpc_pass, keepalive upstream pool, 1 worker process
    bulwark-plain     Bulwark, workers: 1, no policy
    bulwark-2workers  bulwark-plain with workers: 2 (how it scales onto a second core)
    bulwark-tls       bulwark-plain with listener TLS (self-signed EC P-256 certificate made
                      with openssl in the temp dir); h2load and nghttp use https:// (ALPN h2,
                      no verification); bulwark-bench has no TLS, so stream / bidi are n/a
    bulwark-policies  Bulwark, workers: 1, rate_limit / circuit_breaker / singleflight /
                      concurrency configured at limits that admit every call

Workloads (each run bounded by --seconds, after a separate --warmup run):

    lat     100-byte unary Echo, 1 call in flight, 1 connection: p50 / p99 (h2load)
    qps     100-byte unary Echo, 64 in flight over 8 connections: QPS, proxy CPU/call
    big     64 KiB unary Echo, 64 in flight over 8 connections: QPS, proxy CPU/call
    stream  server streaming (bulwark-bench), 8 calls of 1000 x 100 B messages: msg/s
    bidi    bidi ping-pong (bulwark-bench), 1 call of 100 round trips at a time: msg/s

Rounds are interleaved (every contestant once per workload per round); each cell is the
median over rounds with the spread (min-max). Results go to --out-dir as <date>.md,
<date>.json (ignored by git) and, when gnuplot is installed, <date>.png: one bar chart per
measured figure (QPS, CPU per call, latency), each bar the median with its min-max range.
The Markdown is also printed. See bench/README.md for the method.

--mode singleflight: 100 identical concurrent unary calls against a 100 ms upstream, through
Bulwark with singleflight and without: upstream calls (from /metrics) and client p50 / p99.
"""

import argparse
import atexit
import datetime
import getpass
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import statistics
import string
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
PEERS_DIR = os.path.join(BENCH_DIR, "peers")

ECHO_PATH = "/bulwark.demo.v1.Demo/Echo"
USER_AGENT = "bulwark-compare"  # fixed, so every contestant's reply has the same size
CLK_TCK = os.sysconf("SC_CLK_TCK")

ALL_CONTESTANTS = ["direct", "nghttpx", "haproxy", "nginx", "bulwark-plain", "bulwark-2workers",
                   "bulwark-tls", "bulwark-policies"]
# Contestants whose listener speaks TLS: h2load / nghttp reach them with https:// (ALPN h2,
# certificates not verified); bulwark-bench has no TLS option, so no streaming runs.
TLS_CONTESTANTS = {"bulwark-tls"}
ALL_WORKLOADS = ["lat", "qps", "big", "stream", "bidi"]

# Unary workloads run with h2load; streaming ones with bulwark-bench.
WORKLOADS = {
    "lat": dict(tool="h2load", payload=100, clients=1, streams=1,
                title="100 B unary, 1 in flight"),
    "qps": dict(tool="h2load", payload=100, clients=8, streams=8,
                title="100 B unary, 64 in flight / 8 conns"),
    "big": dict(tool="h2load", payload=65536, clients=8, streams=8,
                title="64 KiB unary, 64 in flight / 8 conns"),
    "stream": dict(tool="bench", rpc="server_stream", payload=100, concurrency=8,
                   connections=1, messages=1000,
                   title="server stream, 8 calls x 1000 x 100 B / 1 conn"),
    "bidi": dict(tool="bench", rpc="bidi", payload=100, concurrency=1, connections=1,
                 messages=100, title="bidi ping-pong, 1 call x 100 round trips"),
}

# --------------------------------------------------------------------------------------
# Process bookkeeping: every process this script starts is tracked and stopped at exit.

_started = []  # subprocess.Popen objects, each the leader of its own session


def _stop_all():
    for proc in reversed(_started):
        _stop(proc)
    _started.clear()


def _stop(proc, grace=3.0):
    """SIGTERM, then SIGKILL, to a process this script started and to the children it
    forked (nginx / nghttpx workers): those are found by parent pid and by the process
    group the script created for it (start_new_session), never by name."""
    tree = process_tree(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass
    for pid in tree:
        if pid != proc.pid and _pgrp(pid) == proc.pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pgrp(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


atexit.register(_stop_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def start(argv, log_path, env=None):
    log = open(log_path, "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    log.close()
    _started.append(proc)
    return proc


def run_bounded(argv, timeout, env=None):
    """Runs argv to completion (killed after timeout s); returns (rc, stdout, stderr)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    _started.append(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, grace=1)
        out, err = proc.communicate()
        err = (err or b"") + b"\n[compare.py: killed after %ds]" % timeout
    finally:
        if proc in _started:
            _started.remove(proc)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def dur(seconds):
    """A duration both h2load and absl flags parse."""
    return f"{int(round(seconds * 1000))}ms"


def pinned(cpu, argv):
    return (["taskset", "-c", str(cpu)] + argv) if cpu not in (None, "") else argv


# --------------------------------------------------------------------------------------
# /proc readings

def _children_map():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(rest[1]), []).append(int(entry))
    return children


def process_tree(pid):
    """pid and all its descendants (nginx / nghttpx worker processes)."""
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    """utime + stime of the given processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            ticks += int(rest[11]) + int(rest[12])
        except OSError:
            pass
    return ticks / CLK_TCK


def status_kib(pids, field):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------------------
# gRPC request bodies, encoded by hand (bulwark.demo.v1.EchoRequest)

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def echo_request(payload, delay_ms=0):
    """EchoRequest{payload = 1 (bytes); fault = 2 (Fault{delay_ms = 1 (uint32)})}."""
    msg = b"\x0a" + varint(len(payload)) + payload
    if delay_ms:
        fault = b"\x08" + varint(delay_ms)
        msg += b"\x12" + varint(len(fault)) + fault
    return msg


def grpc_frame(msg):
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def pattern_payload(n, tag):
    seed = (tag + "-").encode()
    return (seed * (n // len(seed) + 1))[:n]


# --------------------------------------------------------------------------------------
# Small helpers

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


def render(template_name, out_path, values):
    with open(os.path.join(PEERS_DIR, template_name)) as f:
        text = string.Template(f.read()).substitute(values)
    with open(out_path, "w") as f:
        f.write(text)
    return out_path


def median_spread(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[idx]


def first_line(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (r.stdout or r.stderr).strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not found"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Tools and peers

PEER_PACKAGES = {"nghttpx": "nghttp2-proxy", "h2load": "nghttp2-client",
                 "nghttp": "nghttp2-client", "haproxy": "haproxy", "nginx": "nginx-light",
                 "openssl": "openssl", "gnuplot": "gnuplot-nox"}


def ensure_tools(contestants, no_install):
    need = {"h2load", "nghttp", "taskset"}
    if contestants:
        need.add("gnuplot")  # the run's chart
    for c in contestants:
        if c in ("nghttpx", "haproxy", "nginx"):
            need.add(c)
        if c in TLS_CONTESTANTS:
            need.add("openssl")
    missing = sorted(t for t in need if shutil.which(t) is None)
    if not missing:
        return
    if no_install or "taskset" in missing:
        sys.exit(f"compare.py: missing {' '.join(missing)} (apt-get install -y "
                 f"{' '.join(sorted({PEER_PACKAGES.get(t, 'util-linux') for t in missing}))})")
    pkgs = sorted({PEER_PACKAGES[t] for t in missing})
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {' '.join(pkgs)} with apt-get")
    cmd = sudo + ["apt-get", "install", "-y", "-q"] + pkgs
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(sudo + ["apt-get", "update", "-q"], env=env)
        if subprocess.run(cmd, env=env).returncode != 0 and "nginx-light" in pkgs:
            pkgs = [p if p != "nginx-light" else "nginx" for p in pkgs]
            subprocess.run(sudo + ["apt-get", "install", "-y", "-q"] + pkgs, env=env)
    still = [t for t in need if shutil.which(t) is None]
    if still:
        sys.exit(f"compare.py: still missing after apt-get: {' '.join(still)}")


class Binaries:
    def __init__(self, build_dir):
        self.build_dir = build_dir
        self.bulwark = os.path.join(build_dir, "sidecar", "bulwark")
        self.upstream = os.path.join(build_dir, "tools", "bulwark-demo-upstream")
        self.bench = os.path.join(build_dir, "tools", "bulwark-bench")

    def check(self, contestants, workloads):
        needed = [self.upstream]
        if any(c.startswith("bulwark") for c in contestants):
            needed.append(self.bulwark)
        for path in needed:
            if not os.access(path, os.X_OK):
                sys.exit(f"compare.py: {path} not found; build it first: cmake -S . -B "
                         f"{self.build_dir} -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo && "
                         f"ninja -C {self.build_dir} bulwark bulwark-demo-upstream "
                         f"bulwark-bench")
        return os.access(self.bench, os.X_OK)


class Upstream:
    def __init__(self, bins, tmp, cpu):
        self.port = free_port()
        self.proc = start(pinned(cpu, [bins.upstream, "--address", "127.0.0.1",
                                       "--port", str(self.port), "--name", "up"]),
                          os.path.join(tmp, "upstream.log"))
        if not wait_port(self.port, self.proc):
            sys.exit(f"compare.py: demo upstream did not start; see {tmp}/upstream.log")

    def cpu(self):
        return cpu_seconds([self.proc.pid])


class Contestant:
    """One proxy (or none, for direct), started once for the whole run."""

    def __init__(self, name, port, proc=None, admin_port=None, config=None):
        self.name = name
        self.port = port
        self.proc = proc
        self.admin_port = admin_port
        self.config = config
        self.idle_rss_kib = None
        self.frame_size = {}     # body size -> expected reply frame bytes (from the probe)
        self.probe = {}          # body size -> probe details
        self.tls = name in TLS_CONTESTANTS
        self.scheme = "https" if self.tls else "http"
        self.tls_seen = None     # TLS protocol / cipher / ALPN h2load reported

    def pids(self):
        return process_tree(self.proc.pid) if self.proc else []

    def alive(self):
        return self.proc is None or self.proc.poll() is None

    def metrics(self):
        if not self.admin_port:
            return ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics",
                                    timeout=5) as r:
            return r.read().decode()


def self_signed_cert(tmp):
    """A self-signed EC P-256 certificate for 127.0.0.1 (subjectAltName IP), made once per
    run with the openssl command; returns (cert_file, key_file)."""
    cert, key = os.path.join(tmp, "tls-cert.pem"), os.path.join(tmp, "tls-key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    rc, out, err = run_bounded(["openssl", "req", "-x509", "-newkey", "ec",
                                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                "-keyout", key, "-out", cert, "-days", "7",
                                "-subj", "/CN=127.0.0.1",
                                "-addext", "subjectAltName=IP:127.0.0.1"], 30)
    if rc != 0:
        sys.exit(f"compare.py: openssl could not make a self-signed certificate:\n{out}{err}")
    return cert, key


def start_contestant(name, bins, tmp, upstream, proxy_cpu, sf_shadow=True):
    if name == "direct":
        return Contestant(name, upstream.port)
    port = free_port()
    values = {"PORT": port, "UPSTREAM_PORT": upstream.port, "TMP": tmp}
    env = None
    admin_port = None
    if name == "nghttpx":
        conf = render("nghttpx.conf", os.path.join(tmp, "nghttpx.conf"), values)
        argv = ["nghttpx", f"--conf={conf}"]
    elif name == "haproxy":
        conf = render("haproxy.cfg", os.path.join(tmp, "haproxy.cfg"), values)
        argv = ["haproxy", "-db", "-f", conf]
    elif name == "nginx":
        ndir = os.path.join(tmp, "nginx")
        os.makedirs(ndir, exist_ok=True)
        values["TMP"] = ndir
        user = pwd.getpwuid(os.geteuid()).pw_name
        # As root, nginx's workers would switch to "nobody"; keep them the current user.
        values["USER_DIRECTIVE"] = f"user {user};" if os.geteuid() == 0 else ""
        conf = render("nginx.conf", os.path.join(ndir, "nginx.conf"), values)
        argv = ["nginx", "-p", ndir, "-c", conf, "-e", os.path.join(ndir, "nginx-error.log")]
    elif name.startswith("bulwark"):
        admin_port = free_port()
        values["ADMIN_PORT"] = admin_port
        values["SF_SHADOW"] = "true" if sf_shadow else "false"
        if name in TLS_CONTESTANTS:
            values["CERT_FILE"], values["KEY_FILE"] = self_signed_cert(tmp)
        template = {"bulwark-plain": "bulwark-plain.yaml",
                    "bulwark-2workers": "bulwark-2workers.yaml",
                    "bulwark-tls": "bulwark-tls.yaml",
                    "bulwark-policies": "bulwark-policies.yaml",
                    "bulwark-singleflight": "bulwark-singleflight.yaml",
                    "bulwark-no-singleflight": "bulwark-no-singleflight.yaml"}[name]
        conf = render(template, os.path.join(tmp, name + ".yaml"), values)
        rc, out, err = run_bounded([bins.bulwark, "--config", conf, "--validate"], 30)
        if rc != 0:
            sys.exit(f"compare.py: {conf} does not validate:\n{out}{err}")
        argv = [bins.bulwark, "--config", conf]
        env = dict(os.environ, BULWARK_LOG_LEVEL="warning")
    else:
        sys.exit(f"compare.py: unknown contestant {name}")
    proc = start(pinned(proxy_cpu, argv), os.path.join(tmp, name + ".log"), env=env)
    if not wait_port(port, proc):
        sys.exit(f"compare.py: {name} did not start listening on {port}; "
                 f"see {tmp}/{name}.log")
    return Contestant(name, port, proc, admin_port, conf)


# --------------------------------------------------------------------------------------
# One call with nghttp: checks grpc-status 0 and learns the reply's DATA size and headers.

def probe(port, body_path, timeout=10, scheme="http"):
    argv = ["nghttp", "-n", "-v", "-t", str(timeout), "-d", body_path,
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-H", f"user-agent: {USER_AGENT}", "-H", "x-compare-probe: 1",
            f"{scheme}://127.0.0.1:{port}{ECHO_PATH}"]
    rc, out, err = run_bounded(argv, timeout + 5)
    sid = None
    m = re.search(r"send HEADERS frame <[^>]*stream_id=(\d+)>", out)
    if m:
        sid = m.group(1)
    blocks, cur, data = [], [], 0
    for line in out.splitlines():
        m = re.search(r"recv \(stream_id=(\d+)\) ([^:]+|:[^:]+): (.*)$", line)
        if m and m.group(1) == sid:
            cur.append((m.group(2), m.group(3)))
            continue
        m = re.search(r"recv HEADERS frame <[^>]*stream_id=(\d+)>", line)
        if m and m.group(1) == sid:
            blocks.append(cur)
            cur = []
            continue
        m = re.search(r"recv DATA frame <length=(\d+), [^>]*stream_id=(\d+)>", line)
        if m and m.group(2) == sid:
            data += int(m.group(1))
    headers = dict(blocks[0]) if blocks else {}
    trailers = dict(blocks[-1]) if len(blocks) > 1 else {}
    status = (trailers or headers).get("grpc-status")
    return {"ok": rc == 0 and status == "0" and data > 0, "grpc_status": status,
            "data_bytes": data, "headers": headers, "trailers": trailers,
            "goaway": "recv GOAWAY" in out, "rc": rc,
            "error": "" if rc == 0 else (err.strip()[-300:] or out.strip()[-300:])}


# --------------------------------------------------------------------------------------
# Load runs

H2LOAD_RE = {
    "seconds": re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s"),
    "requests": re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, "
                           r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"),
    "status": re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx"),
    "data": re.compile(r"\((\d+)\) data"),
    "tls_protocol": re.compile(r"^TLS Protocol: (.+)$", re.M),
    "cipher": re.compile(r"^Cipher: (.+)$", re.M),
    "tls_temp_key": re.compile(r"^Server Temp Key: (.+)$", re.M),
    "alpn": re.compile(r"^Application protocol: (.+)$", re.M),
}


def h2load_argv(cfg, port, body, seconds=None, calls=None, log_file=None, scheme="http"):
    argv = ["h2load", "-t", "1", "-c", str(cfg["clients"]), "-m", str(cfg["streams"]),
            "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-H", f"user-agent: {USER_AGENT}"]
    if seconds is not None:
        argv += ["-D", dur(seconds)]
    if calls is not None:
        argv += ["-n", str(calls)]
    if log_file:
        argv += ["--log-file", log_file]
    return argv + [f"{scheme}://127.0.0.1:{port}{ECHO_PATH}"]


def parse_h2load(out):
    r = {}
    m = H2LOAD_RE["seconds"].search(out)
    if m:
        r["seconds"], r["h2load_rps"] = float(m.group(1)), float(m.group(2))
    m = H2LOAD_RE["requests"].search(out)
    if m:
        (r["total"], r["started"], r["done"], r["succeeded"], r["failed"], r["errored"],
         r["timeout"]) = map(int, m.groups())
    m = H2LOAD_RE["status"].search(out)
    if m:
        r["non_2xx"] = sum(map(int, m.groups()[1:]))
    m = H2LOAD_RE["data"].search(out)
    if m:
        r["data_bytes"] = int(m.group(1))
    for k in ("tls_protocol", "cipher", "tls_temp_key", "alpn"):
        m = H2LOAD_RE[k].search(out)
        if m:
            r[k] = m.group(1).strip()
    return r


def read_latencies(path):
    """Per-request times (µs) of successful (HTTP 200) requests from h2load --log-file."""
    lat = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] == "200":
                    lat.append(int(parts[2]))
    except OSError:
        pass
    lat.sort()
    return lat


class Sampler:
    """CPU of the proxy and the upstream over a window inside a measured run."""

    def __init__(self, contestant, upstream):
        self.contestant = contestant
        self.upstream = upstream

    def sample(self):
        pids = self.contestant.pids()
        return (time.monotonic(), cpu_seconds(pids) if pids else None, self.upstream.cpu())

    @staticmethod
    def rates(a, b):
        dt = b[0] - a[0]
        if dt <= 0:
            return None, None
        proxy = (b[1] - a[1]) / dt if a[1] is not None and b[1] is not None else None
        return proxy, (b[2] - a[2]) / dt


def sampled_run(argv, timeout, window, sampler, env=None):
    """Runs argv; samples CPU at window[0] and window[1] seconds after its start."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    _started.append(proc)
    t0 = time.monotonic()
    a = b = None
    try:
        time.sleep(max(0.0, t0 + window[0] - time.monotonic()))
        if proc.poll() is None:
            a = sampler.sample()
            time.sleep(max(0.0, t0 + window[1] - time.monotonic()))
            if proc.poll() is None:
                b = sampler.sample()
        out, err = proc.communicate(timeout=max(1.0, t0 + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        _stop(proc, grace=1)
        out, err = proc.communicate()
        err = (err or b"") + b"\n[compare.py: killed after timeout]"
    finally:
        if proc in _started:
            _started.remove(proc)
    rates = Sampler.rates(a, b) if a and b else (None, None)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), rates


def run_h2load(args, c, upstream, wl, body, tmp, tag):
    """A warm-up run of --warmup seconds (-D), then the measured run: -n N calls, N sized
    from the warm-up's rate to last about --seconds. A fixed count (not -D) is what makes
    the success check exact: when a -D run stops, calls still in flight may have had part
    of their reply counted in h2load's DATA bytes (seen through proxies on 64 KiB replies),
    and h2load 1.52 does not reset that counter after --warm-up-time either. With -n every
    started call finishes, so DATA bytes must equal N x the reply frame size, and CPU/call
    is the whole run's CPU delta divided by N."""
    cfg = WORKLOADS[wl]
    rc, out, err = run_bounded(pinned(args.loadgen_cpu, h2load_argv(
        cfg, c.port, body, seconds=args.warmup, scheme=c.scheme)), int(args.warmup) + 30)
    warm = parse_h2load(out)
    warm_rate = (warm.get("done") or 0) / args.warmup
    calls = max(int(warm_rate * args.seconds), 10 * cfg["clients"] * cfg["streams"], 100)
    calls -= calls % cfg["clients"]  # h2load splits -n evenly over the connections
    log_file = os.path.join(tmp, f"h2load-{tag}.log")
    argv = pinned(args.loadgen_cpu, h2load_argv(cfg, c.port, body, calls=calls,
                                                log_file=log_file, scheme=c.scheme))
    sampler = Sampler(c, upstream)
    a = sampler.sample()
    rc, out, err = run_bounded(argv, int(3 * args.seconds) + 30)
    b = sampler.sample()
    r = parse_h2load(out)
    r["rc"] = rc
    r["warmup_calls"] = warm.get("done")
    if c.tls:
        c.tls_seen = {k: r[k] for k in ("tls_protocol", "cipher", "tls_temp_key", "alpn")
                      if k in r}
    frame = c.frame_size.get(cfg["payload"])
    problems = []
    if rc != 0:
        problems.append(f"h2load exit {rc}: {err.strip()[-200:]}")
    if r.get("done") != calls:
        problems.append(f"{r.get('done')} of {calls} calls done")
    for k in ("failed", "errored", "timeout", "non_2xx"):
        if r.get(k):
            problems.append(f"{r[k]} {k}")
    expected = calls * (frame or 0)
    r["expected_data_bytes"] = expected
    if r.get("data_bytes") != expected:
        problems.append(f"DATA bytes {r.get('data_bytes')} != {calls} calls x "
                        f"{frame} B reply frames (gRPC errors or GOAWAY?)")
    done = r.get("done") or 0
    qps = done / r["seconds"] if r.get("seconds") else None
    lat = read_latencies(log_file)
    if len(lat) != done:
        problems.append(f"{len(lat)} HTTP 200 lines in the log file for {done} calls")
    try:
        os.unlink(log_file)
    except OSError:
        pass
    proxy_s = (b[1] - a[1]) if a[1] is not None and b[1] is not None else None
    up_s = b[2] - a[2]
    res = {"valid": not problems, "problems": problems, "calls": done, "qps": qps,
           "p50_us": percentile(lat, 0.50), "p99_us": percentile(lat, 0.99),
           "mean_us": statistics.fmean(lat) if lat else None,
           "proxy_cpu_us_per_call": proxy_s / done * 1e6 if proxy_s is not None and done
           else None,
           "upstream_cpu_us_per_call": up_s / done * 1e6 if done else None,
           "proxy_cpu_cores": proxy_s / (b[0] - a[0]) if proxy_s is not None else None,
           "h2load": r}
    return res


def run_bench(args, bins, c, upstream, wl, tmp, tag):
    cfg = WORKLOADS[wl]
    json_path = os.path.join(tmp, f"bench-{tag}.json")
    argv = pinned(args.loadgen_cpu, [
        bins.bench, "--target", f"127.0.0.1:{c.port}", "--rpc", cfg["rpc"],
        "--payload_bytes", str(cfg["payload"]), "--concurrency", str(cfg["concurrency"]),
        "--connections", str(cfg["connections"]), "--stream_messages", str(cfg["messages"]),
        "--duration", dur(args.seconds), "--warmup", dur(args.warmup),
        "--json", json_path, "--progress=false"])
    start_at = args.warmup + min(0.3, args.seconds * 0.1)
    window = (start_at, args.warmup + args.seconds - min(0.2, args.seconds * 0.1))
    rc, out, err, (proxy_rate, up_rate) = sampled_run(
        argv, args.warmup + args.seconds + 60, window, Sampler(c, upstream))
    problems = []
    rep = {}
    try:
        with open(json_path) as f:
            rep = json.load(f)
        os.unlink(json_path)
    except (OSError, ValueError) as e:
        problems.append(f"no JSON report ({e}); rc {rc}: {err.strip()[-200:]}")
    if rc != 0:
        problems.append(f"bulwark-bench exit {rc}: {err.strip()[-200:]}")
    if rep:
        if not rep.get("calls"):
            problems.append("no call completed")
        if rep.get("errors"):
            problems.append(f"{rep['errors']} errors {rep.get('status')} "
                            f"{rep.get('status_messages')}")
        if rep.get("bad_responses"):
            problems.append(f"{rep['bad_responses']} bad responses")
    mps = rep.get("messages_per_s")
    lat = rep.get("ok_latency_us") or {}
    p50_call = lat.get("p50")
    res = {"valid": not problems, "problems": problems, "calls": rep.get("calls"),
           "messages": rep.get("messages"), "msgs_per_s": mps,
           "p50_call_us": p50_call, "p99_call_us": lat.get("p99"),
           "p50_per_msg_us": (p50_call / cfg["messages"]) if p50_call else None,
           "proxy_cpu_us_per_msg": (proxy_rate / mps * 1e6) if proxy_rate is not None
           and mps else None,
           "upstream_cpu_us_per_msg": (up_rate / mps * 1e6) if up_rate is not None
           and mps else None,
           "proxy_cpu_cores": proxy_rate, "bench": rep}
    return res


# --------------------------------------------------------------------------------------
# Formatting

def fmt_num(v, kind):
    if v is None:
        return "—"
    if kind == "qps":
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    if kind == "us":
        return f"{v:.0f}" if v >= 10 else f"{v:.1f}"
    if kind == "ms":
        return f"{v / 1000:.1f}"
    if kind == "cpu":
        return f"{v:.1f}" if v < 100 else f"{v:.0f}"
    if kind == "int":
        return f"{v:.0f}"
    if kind == "mib":
        return f"{v / 1024:.1f}"
    return str(v)


def fmt_cell(stat, kind, invalid=0):
    if stat is None:
        return "invalid" if invalid else "n/a"
    s = fmt_num(stat["median"], kind)
    if stat["n"] > 1:
        s += f" ({fmt_num(stat['min'], kind)}–{fmt_num(stat['max'], kind)})"
    if invalid:
        s += f" ⚠{invalid} invalid"
    return s


def machine_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": os.uname().release,
            "hostname": socket.gethostname(), "loadavg_at_start": load}


def versions(bins, contestants):
    v = {"h2load": first_line(["h2load", "--version"]),
         "bulwark": first_line([bins.bulwark, "--version"])}
    if "nghttpx" in contestants:
        v["nghttpx"] = first_line(["nghttpx", "--version"])
    if "haproxy" in contestants:
        v["haproxy"] = first_line(["haproxy", "-v"])
    if "nginx" in contestants:
        v["nginx"] = first_line(["nginx", "-v"])
    try:
        rev = subprocess.run(["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO_DIR, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        v["bulwark_git"] = rev + (" (work tree modified)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        with open(os.path.join(bins.build_dir, "CMakeCache.txt")) as f:
            cache = f.read()
        m = re.search(r"^CMAKE_BUILD_TYPE:STRING=(.*)$", cache, re.M)
        v["bulwark_build_type"] = m.group(1) if m else "?"
        m = re.search(r"^BULWARK_SANITIZE:\w+=(.+)$", cache, re.M)
        if m and m.group(1).strip() not in ("", "OFF"):
            v["bulwark_build_type"] += f" WITH SANITIZERS ({m.group(1)}): not a perf build"
    except OSError:
        pass
    return v


# --------------------------------------------------------------------------------------
# compare mode

def header_quirks(contestants):
    """Response headers / trailers that differ from the direct path, per contestant."""
    base = None
    for c in contestants:
        if c.name == "direct" and 100 in c.probe:
            base = c.probe[100]
    out = {}
    for c in contestants:
        p = c.probe.get(100)
        if not p or c.name == "direct":
            continue
        notes = []
        if base:
            for part in ("headers", "trailers"):
                added = sorted(set(p[part]) - set(base[part]))
                gone = sorted(set(base[part]) - set(p[part]))
                changed = sorted(k for k in set(p[part]) & set(base[part])
                                 if k not in ("date",) and p[part][k] != base[part][k])
                if added:
                    notes.append(f"{part} added: " + ", ".join(
                        f"`{k}`" if k == "date" else f"`{k}: {p[part][k]}`"
                        for k in added))
                if gone:
                    notes.append(f"{part} dropped: " + ", ".join(f"`{k}`" for k in gone))
                if changed:
                    notes.append(f"{part} changed: " + ", ".join(
                        f"`{k}: {p[part][k]}`" for k in changed))
            if p["data_bytes"] != base["data_bytes"]:
                notes.append(f"reply DATA {p['data_bytes']} B vs {base['data_bytes']} B "
                             f"direct (request headers changed on the way?)")
        out[c.name] = notes
    return out


def compare_mode(args, bins, tmp, cmdline):
    have_bench = bins.check(args.contestants, args.workloads)
    workloads = list(args.workloads)
    info = machine_info()
    vers = versions(bins, args.contestants)

    bodies = {}
    for size in sorted({WORKLOADS[w]["payload"] for w in workloads
                        if WORKLOADS[w]["tool"] == "h2load"} | {100}):
        path = os.path.join(tmp, f"body-{size}.bin")
        with open(path, "wb") as f:
            f.write(grpc_frame(echo_request(pattern_payload(size, "compare"))))
        bodies[size] = path

    upstream = Upstream(bins, tmp, args.upstream_cpu)
    contestants = []
    for name in args.contestants:
        c = start_contestant(name, bins, tmp, upstream, args.proxy_cpu,
                             sf_shadow=args.policies_singleflight == "shadow")
        time.sleep(0.5)
        c.idle_rss_kib = status_kib(c.pids(), "VmRSS") if c.proc else None
        contestants.append(c)
    for c in contestants:
        for size, body in bodies.items():
            p = None
            for _ in range(20):
                p = probe(c.port, body, scheme=c.scheme)
                if p["ok"]:
                    break
                time.sleep(0.25)
            c.probe[size] = p
            if not p["ok"]:
                sys.exit(f"compare.py: probe call through {c.name} failed: {p}")
            c.frame_size[size] = p["data_bytes"]
        log(f"{c.name:17s} port {c.port}  pids {c.pids()}  idle RSS "
            f"{fmt_num(c.idle_rss_kib, 'mib')} MiB  reply frames {c.frame_size}")

    runs = []
    metrics_before = {c.name: c.metrics() for c in contestants if c.admin_port}
    for rnd in range(1, args.rounds + 1):
        for wl in workloads:
            cfg = WORKLOADS[wl]
            if cfg["tool"] == "bench" and not have_bench:
                continue
            for c in contestants:
                if not c.alive():
                    sys.exit(f"compare.py: {c.name} exited; see {tmp}/{c.name}.log")
                if cfg["tool"] == "bench" and c.tls:
                    if rnd == 1:
                        log(f"{wl:6s} {c.name:17s} skipped: bulwark-bench has no TLS "
                            f"option (n/a)")
                    continue
                tag = f"{rnd}-{wl}-{c.name}"
                if cfg["tool"] == "h2load":
                    res = run_h2load(args, c, upstream, wl, bodies[cfg["payload"]], tmp, tag)
                else:
                    res = run_bench(args, bins, c, upstream, wl, tmp, tag)
                res.update(round=rnd, workload=wl, contestant=c.name)
                runs.append(res)
                brief = {k: (round(v, 1) if isinstance(v, float) else v)
                         for k, v in res.items()
                         if k in ("qps", "p50_us", "proxy_cpu_us_per_call", "msgs_per_s",
                                  "p50_per_msg_us", "proxy_cpu_us_per_msg")}
                log(f"round {rnd} {wl:6s} {c.name:17s} "
                    f"{'ok' if res['valid'] else 'INVALID ' + '; '.join(res['problems'])} "
                    f"{brief}")
                time.sleep(args.pause)

    peak = {c.name: (status_kib(c.pids(), "VmHWM") if c.proc else None)
            for c in contestants}
    bulwark_metrics = {}
    for c in contestants:
        if c.admin_port:
            text = c.metrics()
            bulwark_metrics[c.name] = summarize_bulwark_metrics(
                metrics_before.get(c.name, ""), text)
    nginx_errors = ""
    p = os.path.join(tmp, "nginx", "nginx-error.log")
    if os.path.exists(p):
        with open(p) as f:
            nginx_errors = f.read()[-2000:]
    with open("/proc/loadavg") as f:
        info["loadavg_at_end"] = " ".join(f.read().split()[:3])

    summary = {}
    for c in contestants:
        s = summary.setdefault(c.name, {})
        for wl in workloads:
            rs = [r for r in runs if r["contestant"] == c.name and r["workload"] == wl]
            if not rs:
                continue
            ok = [r for r in rs if r["valid"]]
            cell = {"runs": len(rs), "invalid": len(rs) - len(ok)}
            for key in ("qps", "p50_us", "p99_us", "proxy_cpu_us_per_call",
                        "upstream_cpu_us_per_call", "msgs_per_s", "p50_call_us",
                        "p50_per_msg_us", "proxy_cpu_us_per_msg", "upstream_cpu_us_per_msg"):
                vals = [r[key] for r in ok if r.get(key) is not None]
                if vals:
                    cell[key] = median_spread(vals)
            s[wl] = cell
        s["rss_idle_kib"] = c.idle_rss_kib
        s["rss_peak_kib"] = peak[c.name]

    quirks = header_quirks(contestants)
    md = compare_markdown(args, info, vers, cmdline, contestants, workloads, summary,
                          have_bench, quirks, bulwark_metrics, nginx_errors)
    data = {"kind": "compare", "date": args.stamp, "command": cmdline, "machine": info,
            "versions": vers, "settings": settings_dict(args),
            "workloads": {w: WORKLOADS[w] for w in workloads},
            "contestants": {c.name: {"port": c.port, "idle_rss_kib": c.idle_rss_kib,
                                     "peak_rss_kib": peak[c.name],
                                     "reply_frame_bytes": c.frame_size,
                                     "probe": c.probe,
                                     **({"tls": c.tls_seen} if c.tls else {})}
                            for c in contestants},
            "bulwark_metrics": bulwark_metrics, "header_quirks": quirks,
            "summary": summary, "runs": runs, "bulwark_bench_available": have_bench}
    return md, data


# The chart's panels: (workload, key, title, scale to the plotted unit).
CHART_PANELS = [
    ("qps", "qps", "100 B unary, 64 in flight: kQPS (higher is better)", 1e-3),
    ("big", "qps", "64 KiB unary, 64 in flight: QPS (higher is better)", 1.0),
    ("qps", "proxy_cpu_us_per_call", "100 B @64: proxy CPU µs/call (lower is better)", 1.0),
    ("big", "proxy_cpu_us_per_call", "64 KiB @64: proxy CPU µs/call (lower is better)", 1.0),
    ("lat", "p50_us", "100 B, 1 in flight: p50 µs (lower is better)", 1.0),
    ("lat", "p99_us", "100 B, 1 in flight: p99 µs (lower is better)", 1.0),
]


def write_chart(png_path, title, contestants, summary, tmp):
    """One gnuplot bar chart per panel that has data: median bars, min-max error bars."""
    panels = []
    for wl, key, panel_title, scale in CHART_PANELS:
        rows = []
        for name in contestants:
            stat = summary.get(name, {}).get(wl, {}).get(key)
            if stat is None or ("cpu" in key and name == "direct"):
                continue
            rows.append((name, stat["median"] * scale, stat["min"] * scale,
                         stat["max"] * scale))
        if rows:
            panels.append((panel_title, rows))
    if not panels or not shutil.which("gnuplot"):
        return None
    cols = 2
    lines = [f"set terminal pngcairo size 1100,{330 * ((len(panels) + 1) // cols)} "
             f"font 'sans,9'",
             f"set output '{png_path}'",
             f"set multiplot layout {(len(panels) + 1) // cols},{cols} "
             f"title \"{title}\" font 'sans,11'",
             "set termoption noenhanced",
             "set style data histogram", "set style histogram errorbars gap 1 lw 1",
             "set style fill solid 0.6 border -1", "set boxwidth 0.8",
             "set yrange [0:*]", "set grid ytics", "unset key", "set xtics rotate by -25"]
    for i, (panel_title, rows) in enumerate(panels):
        data = os.path.join(tmp, f"chart-{i}.dat")
        with open(data, "w") as f:
            for name, med, lo, hi in rows:
                f.write(f"\"{name}\" {med} {lo} {hi}\n")
        lines += [f"set title \"{panel_title}\"",
                  f"plot '{data}' using 2:3:4:xtic(1) lc rgb '#4878a8'"]
    lines.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(lines).encode(), check=True, timeout=60)
    return png_path


def summarize_bulwark_metrics(before, after):
    def counters(text):
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name_labels, _, value = line.rpartition(" ")
            for prefix in ("bulwark_rejections_total", "bulwark_shadow_rejections_total",
                           "bulwark_requests_total", "bulwark_upstream_requests_total",
                           "bulwark_singleflight_calls_total"):
                if name_labels.startswith(prefix + "{") or name_labels == prefix:
                    try:
                        out[name_labels] = float(value)
                    except ValueError:
                        pass
        return out
    a, b = counters(before), counters(after)
    return {k: b[k] - a.get(k, 0.0) for k in sorted(b) if b[k] - a.get(k, 0.0)}


def settings_dict(args):
    return {"rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup,
            "loadgen_cpu": args.loadgen_cpu, "upstream_cpu": args.upstream_cpu,
            "proxy_cpu": args.proxy_cpu or "unpinned", "build_dir": args.build_dir,
            "policies_singleflight": args.policies_singleflight}


def compare_markdown(args, info, vers, cmdline, contestants, workloads, summary,
                     have_bench, quirks, bulwark_metrics, nginx_errors):
    L = []
    L.append(f"# Bulwark vs peers: {args.stamp}")
    L.append("")
    L.append(f"- Command: `{cmdline}`")
    L.append(f"- Machine: {info['nproc']} CPUs, {info['cpu_model']}, kernel "
             f"{info['kernel']}; load average {info['loadavg_at_start']} at start, "
             f"{info['loadavg_at_end']} at end")
    L.append("- Versions: " + "; ".join(f"{k}: {v}" for k, v in vers.items()))
    L.append(f"- Method: {args.rounds} interleaved round(s) (every contestant once per "
             f"workload per round, in table order); each run is a {args.warmup} s warm-up "
             f"run, then a measured run of about {args.seconds} s (h2load: a fixed call "
             f"count sized from the warm-up's rate; bulwark-bench: --duration). Cells are "
             f"median (min–max) over valid runs. Load generator pinned to CPU "
             f"{args.loadgen_cpu or 'none'}, the demo upstream to CPU "
             f"{args.upstream_cpu or 'none'}, proxies "
             f"{'on CPU ' + str(args.proxy_cpu) if args.proxy_cpu else 'unpinned'}. "
             f"All contestants run at once (idle when not measured) and share one demo "
             f"upstream.")
    L.append("")
    cols = []
    for wl in workloads:
        if wl == "lat":
            cols += [("lat", "p50_us", "us", "p50 µs @1"), ("lat", "p99_us", "us", "p99 µs @1")]
        elif wl == "qps":
            cols += [("qps", "qps", "qps", "QPS @64"),
                     ("qps", "proxy_cpu_us_per_call", "cpu", "CPU µs/call @64")]
        elif wl == "big":
            cols += [("big", "qps", "qps", "64 KiB QPS"),
                     ("big", "proxy_cpu_us_per_call", "cpu", "64 KiB CPU µs/call")]
        elif wl == "stream":
            cols += [("stream", "msgs_per_s", "qps", "stream msg/s"),
                     ("stream", "p50_call_us", "ms", "stream p50 ms/call")]
        elif wl == "bidi":
            cols += [("bidi", "msgs_per_s", "qps", "bidi msg/s"),
                     ("bidi", "p50_per_msg_us", "us", "bidi p50 µs/round trip")]
    L.append("| contestant | " + " | ".join(c[3] for c in cols) +
             " | RSS idle MiB | RSS peak MiB |")
    L.append("| --- " * (len(cols) + 3) + "|")
    for c in contestants:
        s = summary[c.name]
        cells = []
        for wl, key, kind, _ in cols:
            cell = s.get(wl)
            if cell is None:
                cells.append("n/a")
                continue
            if c.name == "direct" and "proxy_cpu" in key:
                cells.append("—")
                continue
            cells.append(fmt_cell(cell.get(key), kind, cell.get("invalid", 0)))
        cells.append(fmt_num(s["rss_idle_kib"], "mib"))
        cells.append(fmt_num(s["rss_peak_kib"], "mib"))
        L.append(f"| {c.name} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Workloads: " + "; ".join(f"**{w}** {WORKLOADS[w]['title']}" for w in workloads)
             + ". Unary runs use h2load (1 thread); a run counts only if every call "
             "completed and the DATA bytes received equal calls × the reply frame size "
             "learned from a probe call with grpc-status 0. Streaming runs use "
             "bulwark-bench (OK status and message counts checked)."
             + ("" if have_bench else " bulwark-bench was not built: stream/bidi are n/a."))
    tls_names = [c.name for c in contestants if c.tls]
    if tls_names:
        L.append(f"TLS ({', '.join(tls_names)}): listener TLS with a self-signed EC P-256 "
                 "certificate (subjectAltName IP:127.0.0.1) made with openssl for this run; "
                 "h2load and the nghttp probe connect with https:// (ALPN h2, no certificate "
                 "check); the upstream side stays h2c. Its CPU µs/call includes the TLS "
                 "handshake once per connection: each measured h2load run opens its "
                 "connections (1 at @1, 8 at @64 and 64 KiB) once, reuses them for all its "
                 "calls, and the CPU delta covers the whole run, handshakes included (the "
                 "warm-up run's connections are not counted). bulwark-bench has no TLS "
                 "option: stream / bidi are n/a for TLS contestants.")
    L.append("CPU µs/call: utime+stime (/proc/PID/stat) of all the proxy's processes "
             "(nginx/nghttpx worker children included): for h2load runs the delta from "
             "just before the run to just after it, divided by its calls (all of which "
             "completed); for bulwark-bench runs the rate over a window inside the "
             "measured time, divided by the message rate (so per message). RSS: VmRSS "
             "after start before any load (idle), VmHWM at the end of the whole run "
             "(peak), summed over the proxy's processes.")
    L.append("")
    L.append("## Upstream CPU per call (µs) — what each proxy makes the upstream pay")
    L.append("")
    ucols = [(w, "upstream_cpu_us_per_call" if WORKLOADS[w]["tool"] == "h2load"
              else "upstream_cpu_us_per_msg") for w in workloads]
    L.append("| contestant | " + " | ".join(
        f"{w} ({'per call' if WORKLOADS[w]['tool'] == 'h2load' else 'per msg'})"
        for w, _ in ucols) + " |")
    L.append("| --- " * (len(ucols) + 1) + "|")
    for c in contestants:
        s = summary[c.name]
        L.append(f"| {c.name} | " + " | ".join(
            fmt_cell((s.get(w) or {}).get(k), "cpu") if s.get(w) else "n/a"
            for w, k in ucols) + " |")
    L.append("")
    extra = [(w, k, kind, t) for w, k, kind, t in
             [("lat", "proxy_cpu_us_per_call", "cpu", "CPU µs/call @1"),
              ("stream", "proxy_cpu_us_per_msg", "cpu", "stream CPU µs/msg"),
              ("bidi", "proxy_cpu_us_per_msg", "cpu", "bidi CPU µs/msg"),
              ("lat", "qps", "qps", "calls/s @1")] if w in workloads]
    if extra:
        L.append("## Other cells")
        L.append("")
        L.append("| contestant | " + " | ".join(e[3] for e in extra) + " |")
        L.append("| --- " * (len(extra) + 1) + "|")
        for c in contestants:
            s = summary[c.name]
            cells = []
            for w, k, kind, _ in extra:
                if c.name == "direct" and "proxy_cpu" in k:
                    cells.append("—")
                else:
                    cells.append(fmt_cell((s.get(w) or {}).get(k), kind)
                                 if s.get(w) else "n/a")
            L.append(f"| {c.name} | " + " | ".join(cells) + " |")
        L.append("")
    L.append("## Peer behaviour seen in this run")
    L.append("")
    for c in contestants:
        notes = list(quirks.get(c.name, []))
        if c.name != "direct" and not notes:
            notes.append("response headers and trailers identical to the direct path")
        if c.tls and c.tls_seen:
            notes.append("TLS as h2load reported: " + ", ".join(
                c.tls_seen[k] for k in ("tls_protocol", "cipher", "tls_temp_key", "alpn")
                if k in c.tls_seen))
        if c.name in bulwark_metrics:
            bm = bulwark_metrics[c.name]
            rej = {k: v for k, v in bm.items() if k.startswith("bulwark_rejections_total")}
            shadow = {k: v for k, v in bm.items()
                      if k.startswith("bulwark_shadow_rejections_total")}
            notes.append("rejections: " + (", ".join(f"{k} {v:.0f}" for k, v in rej.items())
                                           or "none"))
            if shadow:
                notes.append("shadow (counted only): " +
                             ", ".join(f"{k} {v:.0f}" for k, v in shadow.items()))
        bad = [r for r in summary[c.name].values()
               if isinstance(r, dict) and r.get("invalid")]
        if bad:
            notes.append(f"{sum(r['invalid'] for r in bad)} invalid run(s): see the JSON")
        if notes:
            L.append(f"- **{c.name}**: " + "; ".join(notes))
    if nginx_errors.strip():
        L.append(f"- nginx error log (tail): `{nginx_errors.strip().splitlines()[-1][:300]}`")
    L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------------------
# singleflight mode

def metric_sum(metrics_text, prefix, contains=""):
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(prefix) and contains in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def upstream_calls(metrics_text):
    return metric_sum(metrics_text, "bulwark_upstream_requests_total")


def singleflight_mode(args, bins, tmp, cmdline):
    bins.check(["bulwark"], [])
    info = machine_info()
    vers = versions(bins, [])
    shapes = []
    for s in args.sf_shapes.split(","):
        c, m = s.lower().split("x")
        shapes.append((int(c), int(m)))
    upstream = Upstream(bins, tmp, args.upstream_cpu)
    names = ["bulwark-singleflight", "bulwark-no-singleflight"]
    contestants = []
    for name in names:
        c = start_contestant(name, bins, tmp, upstream, args.proxy_cpu)
        contestants.append(c)
    runs = []
    for rnd in range(1, args.rounds + 1):
        for clients, streams in shapes:
            n = clients * streams
            for c in contestants:
                # A payload of its own per run: no flight can span two runs.
                tag = f"sf{rnd}-{clients}x{streams}-{c.name}"
                body = os.path.join(tmp, f"body-{tag}.bin")
                with open(body, "wb") as f:
                    f.write(grpc_frame(echo_request(pattern_payload(100, tag),
                                                    delay_ms=args.sf_delay_ms)))
                # Learn the reply size on a body of the same length, not this one.
                pbody = os.path.join(tmp, f"probe-{tag}.bin")
                with open(pbody, "wb") as f:
                    f.write(grpc_frame(echo_request(pattern_payload(100, "p" + tag[1:]),
                                                    delay_ms=args.sf_delay_ms)))
                p = probe(c.port, pbody)
                if not p["ok"]:
                    sys.exit(f"compare.py: probe through {c.name} failed: {p}")
                before = c.metrics()
                log_file = os.path.join(tmp, f"h2load-{tag}.log")
                cfg = dict(clients=clients, streams=streams)
                rc, out, err = run_bounded(pinned(args.loadgen_cpu, h2load_argv(
                    cfg, c.port, body, calls=n, log_file=log_file)), 60)
                time.sleep(0.2)
                after = c.metrics()
                r = parse_h2load(out)
                lat = read_latencies(log_file)
                problems = []
                if rc != 0:
                    problems.append(f"h2load exit {rc}: {err.strip()[-200:]}")
                if r.get("done") != n or r.get("failed") or r.get("errored"):
                    problems.append(f"{r.get('done')} of {n} done, {r.get('failed')} "
                                    f"failed, {r.get('errored')} errored")
                if r.get("data_bytes") != n * p["data_bytes"]:
                    problems.append(f"DATA bytes {r.get('data_bytes')} != {n} x "
                                    f"{p['data_bytes']}")
                res = {"round": rnd, "shape": f"{clients}x{streams}", "contestant": c.name,
                       "calls": n, "valid": not problems, "problems": problems,
                       "upstream_calls": upstream_calls(after) - upstream_calls(before),
                       "singleflight_followers": metric_sum(
                           after, "bulwark_singleflight_calls_total", 'role="follower"') -
                       metric_sum(before, "bulwark_singleflight_calls_total",
                                  'role="follower"'),
                       "p50_us": percentile(lat, 0.5), "p99_us": percentile(lat, 0.99),
                       "h2load": r}
                runs.append(res)
                log(f"round {rnd} {res['shape']:6s} {c.name:24s} "
                    f"{'ok' if res['valid'] else 'INVALID ' + '; '.join(problems)} "
                    f"upstream calls {res['upstream_calls']:.0f} p50 {res['p50_us']} "
                    f"p99 {res['p99_us']}")
                time.sleep(args.pause)
    summary = {}
    for clients, streams in shapes:
        shape = f"{clients}x{streams}"
        for c in contestants:
            rs = [r for r in runs if r["shape"] == shape and r["contestant"] == c.name]
            ok = [r for r in rs if r["valid"]]
            summary.setdefault(shape, {})[c.name] = {
                "runs": len(rs), "invalid": len(rs) - len(ok),
                **{k: median_spread([r[k] for r in ok if r[k] is not None])
                   for k in ("upstream_calls", "p50_us", "p99_us")}}
    L = [f"# Singleflight: {args.stamp}", "",
         f"- Command: `{cmdline}`",
         f"- Machine: {info['nproc']} CPUs, {info['cpu_model']}; load average "
         f"{info['loadavg_at_start']} at start",
         "- Versions: " + "; ".join(f"{k}: {v}" for k, v in vers.items()),
         f"- {args.rounds} interleaved round(s). Each run: one h2load burst of identical "
         f"unary Echo calls asking the demo upstream for a {args.sf_delay_ms} ms delay "
         f"(Fault.delay_ms), all in flight at once (`-c C -m M -n C×M`); upstream calls "
         f"from Bulwark's `bulwark_upstream_requests_total` before and after; latency "
         f"per call from h2load's --log-file. Cells: median (min–max).", "",
         "| calls (conns × streams) | contestant | upstream calls | client p50 ms | "
         "client p99 ms |", "| --- | --- | --- | --- | --- |"]
    for shape, per in summary.items():
        c_, m_ = shape.split("x")
        for name, cell in per.items():
            inv = cell["invalid"]
            L.append(f"| {int(c_) * int(m_)} ({c_} × {m_}) | {name} | "
                     f"{fmt_cell(cell['upstream_calls'], 'int', inv)} | "
                     f"{fmt_cell(cell['p50_us'], 'ms', inv)} | "
                     f"{fmt_cell(cell['p99_us'], 'ms', inv)} |")
    L.append("")
    md = "\n".join(L)
    data = {"kind": "singleflight", "date": args.stamp, "command": cmdline, "machine": info,
            "versions": vers, "settings": dict(settings_dict(args), sf_shapes=args.sf_shapes,
                                               sf_delay_ms=args.sf_delay_ms),
            "summary": summary, "runs": runs}
    return md, data


# --------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["compare", "singleflight", "all"], default="compare")
    ap.add_argument("--build-dir", default=None,
                    help="CMake build directory holding sidecar/bulwark and tools/ "
                         "(default: build/ in the repository)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5, help="measured time per run")
    ap.add_argument("--warmup", type=float, default=1,
                    help="warm-up run before each measured run, seconds")
    ap.add_argument("--contestants", default=",".join(ALL_CONTESTANTS))
    ap.add_argument("--workloads", default=",".join(ALL_WORKLOADS))
    ap.add_argument("--loadgen-cpu", default="0", help="CPU for h2load / bulwark-bench "
                    "('' = unpinned)")
    ap.add_argument("--upstream-cpu", default="1", help="CPU for the demo upstream "
                    "('' = unpinned)")
    ap.add_argument("--proxy-cpu", default="", help="CPU for the proxy (default unpinned)")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds between runs")
    ap.add_argument("--policies-singleflight", choices=["shadow", "enforce"],
                    default="shadow", help="singleflight mode of bulwark-policies "
                    "(h2load repeats one request body, so enforce coalesces)")
    ap.add_argument("--sf-shapes", default="1x100,10x10",
                    help="singleflight mode: connections x streams per burst")
    ap.add_argument("--sf-delay-ms", type=int, default=100)
    ap.add_argument("--out-dir", default=os.path.join(BENCH_DIR, "results"))
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install missing peers")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args(argv)

    cmdline = "python3 " + " ".join(shlex.quote(a) for a in
                                     [os.path.relpath(__file__)] + sys.argv[1:])
    args.build_dir = os.path.abspath(args.build_dir or os.path.join(REPO_DIR, "build"))
    args.contestants = [c for c in args.contestants.split(",") if c]
    args.workloads = [w for w in args.workloads.split(",") if w]
    for c in args.contestants:
        if c not in ALL_CONTESTANTS:
            ap.error(f"unknown contestant {c}; known: {','.join(ALL_CONTESTANTS)}")
    for w in args.workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}; known: {','.join(ALL_WORKLOADS)}")
    if args.rounds < 1 or args.seconds < 1 or args.warmup < 0.5:
        ap.error("--rounds >= 1, --seconds >= 1 and --warmup >= 0.5 (the warm-up run "
                 "also sizes the measured run)")
    args.stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")

    bins = Binaries(args.build_dir)
    ensure_tools(args.contestants if args.mode != "singleflight" else [], args.no_install)
    tmp = tempfile.mkdtemp(prefix="bulwark-compare-")
    log(f"work dir {tmp}")
    outputs = []
    try:
        if args.mode in ("compare", "all"):
            md, data = compare_mode(args, bins, tmp, cmdline)
            outputs.append((args.stamp, md, data))
            _stop_all()
        if args.mode in ("singleflight", "all"):
            md, data = singleflight_mode(args, bins, tmp, cmdline)
            outputs.append((args.stamp + "-singleflight", md, data))
    finally:
        _stop_all()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, md, data in outputs:
        if data.get("kind") == "compare":
            chart_tmp = tempfile.mkdtemp(prefix="bulwark-chart-")
            try:
                png = write_chart(os.path.join(args.out_dir, name + ".png"),
                                  f"Bulwark vs peers, {name}", list(data["contestants"]),
                                  data["summary"], chart_tmp)
            finally:
                shutil.rmtree(chart_tmp, ignore_errors=True)
            if png:
                md += f"\n\n![Bulwark vs peers]({os.path.basename(png)})"
        with open(os.path.join(args.out_dir, name + ".md"), "w") as f:
            f.write(md + "\n")
        with open(os.path.join(args.out_dir, name + ".json"), "w") as f:
            json.dump(data, f, indent=1, default=str)
        print(md)
        log(f"wrote {os.path.join(args.out_dir, name)}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
