"""Process and metrics helpers shared by the bench scripts (retry.py, global_limit.py).

Every process started through start() runs in its own session and is stopped by PID (SIGTERM,
then SIGKILL) at exit, on Ctrl-C and on SIGTERM.
"""

import atexit
import signal
import socket
import subprocess
import time
import urllib.request

_started = []


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


def start(argv, log_path):
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _started.append(proc)
    return proc


def stop(proc):
    _stop(proc)
    if proc in _started:
        _started.remove(proc)


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


def fetch(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode(errors="replace")


def metric_sum(text, name, contains=""):
    """The sum of every series `name{...}` of an exposition whose line contains `contains`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and contains in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
