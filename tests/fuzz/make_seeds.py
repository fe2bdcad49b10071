#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into tests/fuzz/<name>_corpus/.

Seeds are meaningful starting points (a valid gRPC exchange, a config that loads, a
breaker cycle) from which libFuzzer mutates; the files are committed, and this script
says how each was made. Run from anywhere: python3 tests/fuzz/make_seeds.py. It only
writes the files named here (seed-*), so saved findings in the corpora are kept.
"""
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def write(target, name, data):
    corpus = os.path.join(HERE, target + "_corpus")
    os.makedirs(corpus, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(corpus, "seed-" + name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------
# h2_session: HTTP/2 frames as a client sends them after the preface (which the
# target prepends when the first byte is even: a frame length's first byte is 0).

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9)
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


def hpack_string(s):
    s = s.encode() if isinstance(s, str) else s
    assert len(s) < 127
    return bytes([len(s)]) + s


def literal(name, value):
    """Literal header field without indexing, new name (RFC 7541 6.2.2)."""
    return b"\x00" + hpack_string(name) + hpack_string(value)


def grpc_headers(path, extra=(), content_type="application/grpc", method="POST"):
    block = literal(":method", method) + literal(":scheme", "http")
    block += literal(":path", path) + literal(":authority", "bulwark.test")
    block += literal("content-type", content_type) + literal("te", "trailers")
    for name, value in extra:
        block += literal(name, value)
    return block


def message(payload, announced=None):
    if isinstance(payload, str):
        payload = payload.encode()
    length = len(payload) if announced is None else announced
    return b"\x00" + struct.pack(">I", length) + payload


SETTINGS_FRAME = frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 100))


def unary(path, body=message("hello"), extra=(), stream=1):
    return (frame(HEADERS, END_HEADERS, stream, grpc_headers(path, extra)) +
            frame(DATA, END_STREAM, stream, body))


def h2_seeds():
    s = SETTINGS_FRAME
    write("h2_session", "unary-unimplemented", s + unary("/pkg.Svc/Method"))
    write("h2_session", "collect", s + unary("/fuzz.Svc/Collect",
                                             message("one") + message("two")))
    write("h2_session", "collect-too-large",
          s + unary("/fuzz.Svc/Collect", message("x" * 16, announced=4096)))
    write("h2_session", "collect-headers-only",
          s + frame(HEADERS, END_HEADERS | END_STREAM, 1,
                    grpc_headers("/fuzz.Svc/Collect")))
    write("h2_session", "shared", s + unary("/fuzz.Svc/Shared"))
    write("h2_session", "later-with-timeout",
          s + unary("/fuzz.Svc/Later", extra=[("grpc-timeout", "1n")]))
    write("h2_session", "forward",
          s + unary("/fuzz.Svc/Forward", extra=[("grpc-timeout", "100m"),
                                                ("authorization", "Bearer x")]))
    # Two streams interleaved; one reset by the client, plus PING and WINDOW_UPDATE.
    mixed = s + frame(HEADERS, END_HEADERS, 1, grpc_headers("/fuzz.Svc/Later"))
    mixed += frame(HEADERS, END_HEADERS, 3, grpc_headers("/fuzz.Svc/Collect"))
    mixed += frame(DATA, 0, 3, message("part"))
    mixed += frame(PING, 0, 0, b"12345678")
    mixed += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20))
    mixed += frame(RST_STREAM, 0, 1, struct.pack(">I", 0x8))
    mixed += frame(DATA, END_STREAM, 3, message("rest"))
    write("h2_session", "two-streams-reset", mixed)
    # A header block split into HEADERS + CONTINUATION.
    block = grpc_headers("/fuzz.Svc/Shared")
    write("h2_session", "continuation",
          s + frame(HEADERS, 0, 1, block[:20]) +
          frame(CONTINUATION, END_HEADERS, 1, block[20:]) +
          frame(DATA, END_STREAM, 1, message("c")))
    # Not gRPC: a wrong content-type (415) and a GET.
    write("h2_session", "not-grpc",
          s + frame(HEADERS, END_HEADERS | END_STREAM, 1,
                    grpc_headers("/pkg.Svc/M", content_type="text/plain")) +
          frame(HEADERS, END_HEADERS | END_STREAM, 3,
                    grpc_headers("/pkg.Svc/M", method="GET")))
    # HPACK indexed fields (static table) and incremental indexing (dynamic table).
    indexed = bytes([0x83, 0x86, 0x84])  # :method POST, :scheme http, :path /
    indexed += b"\x41" + hpack_string("bulwark.test")  # :authority, indexed name
    indexed += b"\x5f" + hpack_string("application/grpc")  # content-type (31)
    indexed += b"\x40" + hpack_string("x-key") + hpack_string("v")
    write("h2_session", "hpack-indexed",
          s + frame(HEADERS, END_HEADERS | END_STREAM, 1, indexed) +
          frame(HEADERS, END_HEADERS | END_STREAM, 3, indexed + bytes([0xbe])))
    # A header list over the worker's 4 KiB limit.
    big = [("x-big-%d" % i, "v" * 100) for i in range(50)]
    write("h2_session", "header-list-too-large",
          s + frame(HEADERS, END_HEADERS | END_STREAM, 1,
                    grpc_headers("/pkg.Svc/M", extra=big)))
    write("h2_session", "goaway",
          s + unary("/fuzz.Svc/Later", stream=1) +
          frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0)))
    write("h2_session", "settings-ack-ping",
          s + frame(SETTINGS, ACK, 0) + frame(PING, ACK, 0, b"\0" * 8))
    # Odd first byte: no preface, the server sees HTTP/1.1.
    write("h2_session", "http1", "GET / HTTP/1.1\r\nHost: x\r\n\r\n")


# ---------------------------------------------------------------------------
# config: YAML text.

def config_seeds():
    os.makedirs(os.path.join(HERE, "config_corpus"), exist_ok=True)
    shutil.copyfile(os.path.join(ROOT, "examples", "bulwark.yaml"),
                    os.path.join(HERE, "config_corpus", "seed-example-bulwark.yaml"))
    minimal = """\
clusters:
  - name: c
    endpoints: ["127.0.0.1:50051"]
routes:
  - name: all
    cluster: c
"""
    write("config", "minimal.yaml", minimal)
    write("config", "every-policy.yaml", """\
listener: {address: "127.0.0.1:15000", max_message_bytes: 1024}
admin: {address: "127.0.0.1:15001"}
workers: 2
drain_timeout: 1.5s
clusters:
  - name: c
    endpoints: ["127.0.0.1:50051", "localhost:50052"]
    load_balancing: LEAST_REQUEST
    health_check: {mode: WATCH, interval: 250ms, timeout: 100ms, jitter: 0.5}
routes:
  - name: exact
    match: {service: a.B, method: M}
    cluster: c
    timeout: 2s
    rate_limit: {requests_per_second: 0.5, burst: 1, key_header: x-client, max_keys: 10}
    circuit_breaker:
      consecutive_failures: 0
      failure_rate: 0.25
      slow_call_duration: 10ms
      slow_call_rate: 0.5
      failure_codes: [UNAVAILABLE, 4, INTERNAL]
      shadow: true
    singleflight: {enabled: true, key_headers: [authorization, x-tenant]}
    concurrency: {max_in_flight: 1, max_queued: 0, queue_timeout: 0s}
  - name: prefix
    match: {prefix: /a.}
    cluster: c
""")
    write("config", "unknown-field.yaml", minimal.replace("cluster: c", "clustr: c"))
    write("config", "bad-values.yaml", """\
clusters:
  - name: c
    endpoints: ["not-an-address", "127.0.0.1:99999"]
routes:
  - name: r
    cluster: missing
    timeout: -1s
    rate_limit: {requests_per_second: -3, burst: 0}
    concurrency: {max_in_flight: 0}
  - name: r
    match: {service: "", method: M, prefix: x}
    cluster: c
    singleflight: {enabled: true}
""")
    write("config", "wrong-types.yaml", """\
clusters: {name: c}
routes:
  - [1, 2, 3]
  - name: {nested: map}
    cluster: 7
workers: "many"
drain_timeout: yesterday
""")
    write("config", "two-documents.yaml", minimal + "---\n" + minimal)
    write("config", "anchors.yaml", """\
clusters:
  - &c {name: c, endpoints: ["127.0.0.1:1"]}
routes:
  - &r {name: a, cluster: c, match: {service: a.B}}
  - {<<: *r, name: b}
  - *r
""")
    write("config", "missing-files.yaml", minimal + """\
descriptor_sets: [missing.pb]
listener:
  address: "127.0.0.1:0"
  tls: {cert_file: cert.pem, key_file: key.pem, client_ca_file: ca.pem}
""")
    write("config", "empty.yaml", "")
    write("config", "scalar.yaml", "just a string\n")
    write("config", "invalid-yaml.yaml", "routes: [unclosed\n  - {a: }\n")


# ---------------------------------------------------------------------------
# route_match: the paths themselves.

def route_seeds():
    for i, path in enumerate([
            "/shop.v1.Orders/GetOrder", "/shop.v1.Orders/ListOrders",
            "/shop.v1.Carts/AddItem", "/shop.v1.Payments/Pay", "/a/b", "/a.B/M",
            "/a.B/", "/a.Bc/M", "/x/", "/x", "/p.Q/R", "/p.Q/S", "/p.Q/R/x", "/p/x",
            "/p/", "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
            "/z.Z/Z", "/", "", "shop.v1.Orders/GetOrder"]):
        write("route_match", "%02d" % i, path)


# ---------------------------------------------------------------------------
# grpc_framing: [max selector][8 chunk sizes][timeout text length][stream].

def framing_seeds():
    def seed(name, selector, chunks, text_len, stream):
        write("grpc_framing", name, bytes([selector] + chunks + [text_len]) + stream)
    two = message("hello") + message("") + message("world!")
    seed("two-messages-bytewise", 6, [1] * 8, 0, two)
    seed("two-messages-chunks", 7, [3, 0, 5, 7, 1, 64, 2, 9], 0, two)
    seed("too-large", 4, [2, 3, 1, 1, 1, 1, 1, 1], 0, message("a") + message("", 17))
    seed("max-zero", 0, [5] * 8, 0, message("") + message("x"))
    seed("timeout-hours", 6, [4] * 8, 9, b"99999999H" + message("t"))
    seed("timeout-ms", 6, [4] * 8, 4, b"250m" + b"\x00" * 8)
    seed("percent", 6, [4] * 8, 2, "5S caf\u00e9 100% \x01\x7f\n".encode())


# ---------------------------------------------------------------------------
# singleflight_key: [4 x 12 cut bytes][payload size][payload][hash][ops...].

def singleflight_seeds():
    cuts = bytes([5, 3, 2, 4, 3, 2, 0, 0, 0, 0, 0, 0,  # "/a.B/", "M.."...
                  4, 4, 2, 4, 3, 2, 0, 0, 0, 0, 0, 0,
                  5, 3, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0,
                  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    payload = b"/a.B/Mmsgauthtok"
    head = cuts + bytes([len(payload)]) + payload

    def join(key, rejoin=False):
        return bytes([0, key, 0 if rejoin else 1])

    def leave(caller):
        return bytes([2, caller])

    def complete(caller):
        return bytes([4, caller])

    def abandon(caller, drop):
        return bytes([5, caller, 1 if drop else 0])

    ops = join(0) + join(0) + join(1) + join(0, rejoin=True) + leave(1) + complete(0)
    ops += join(1) + leave(2) + leave(4) + abandon(2, True) + bytes([6, 3, 7, 0])
    write("singleflight_key", "flights-real-hash", head + b"\x01" + ops)
    write("singleflight_key", "flights-colliding-hash", head + b"\x00" + ops)
    write("singleflight_key", "keys-only", head)


# ---------------------------------------------------------------------------
# policies: [policy][options...][ops...].

def policies_seeds():
    # Token bucket: rate 1/s (index 2), burst 2 (index 2); take x3, wait 1s, take x2,
    # stale clock, take.
    take = bytes([3])
    wait_1s = bytes([0, 4, 1])
    write("policies", "bucket", bytes([0, 2, 2]) + take * 3 + wait_1s + take * 2 +
          bytes([2, 0, 5]) + take)
    write("policies", "bucket-never-refills", bytes([0, 0, 1]) + take * 3 + wait_1s + take)
    # Breaker: 3 in a row opens, open 10ms, 1 probe; fail x3, wait, probe succeeds.
    options = bytes([4, 0, 21, 5, 3, 2, 0, 0])  # cf=3, rate 0, min 20, 1s, 10ms, 1, -, 0
    acquire = bytes([3])

    def record(index, outcome):
        return bytes([4, index, outcome])

    cycle = acquire * 3 + record(0, 1) + record(0, 1) + record(0, 1) + acquire
    cycle += bytes([0, 2, 20]) + acquire + acquire + record(0, 0) + acquire
    write("policies", "breaker-cycle", bytes([1]) + options + cycle)
    write("policies", "breaker-probe-fails", bytes([1]) + options + acquire * 3 +
          record(0, 1) * 3 + bytes([0, 2, 20]) + acquire + record(0, 1) + acquire +
          bytes([7, 1]))
    # Limiter: 1 slot, 2 queued, 50ms; acquire x4, release, wait 60ms, cancel.
    write("policies", "limiter", bytes([2, 0, 2, 2]) + bytes([0, 0, 1]) * 4 +
          bytes([2, 0, 0]) + bytes([4, 2, 60]) + bytes([3, 0]) + bytes([0, 2, 1]))
    write("policies", "limiter-infinite-queue", bytes([2, 1, 4, 4]) +
          bytes([0, 0, 1]) * 6 + bytes([2, 0, 1]) * 3 + bytes([3, 1]))


if __name__ == "__main__":
    h2_seeds()
    config_seeds()
    route_seeds()
    framing_seeds()
    singleflight_seeds()
    policies_seeds()
