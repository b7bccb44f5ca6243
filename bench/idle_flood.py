"""Idle-connection flood: callback latency while connections pile up, under a 1,024-file limit.

    python bench/idle_flood.py [--nofile 1024] [--callbacks 300] [--idle 2000] [--half-sent 200] [--rate 500]

1. Starts `wecomd serve` (bench/load.py's config: one app with a passive reply) with RLIMIT_NOFILE
   set to --nofile, soft and hard, as `ulimit -n` or systemd's default would.
2. Measures --callbacks sequential signed callbacks (wechatpy-encrypted, bench/load.py) on fresh
   connections: the baseline.
3. Opens --half-sent requests that send their headers and a few bytes of a 10,000-byte body (from
   four addresses), --idle/2 idle connections from 127.0.0.2 and --idle/2 from 20 more addresses.
4. Measures the callbacks again while a thread keeps opening idle connections from those 20
   addresses, --rate a second (0: as fast as it can); each one past max_connections makes wecomd
   close the connection that has waited longest for a request.
5. Prints p50/p99/max of both runs, the daemon's CPU seconds during the flood, wecomd's connection
   metrics and how many lines it logged.
Needs wechatpy (the test extra). Linux only (127.0.0.x source addresses, /proc).
"""
from __future__ import annotations

import argparse
import collections
import http.client
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load  # noqa: E402  (bench/load.py: the callback generator, config and helpers)

HALF_SENT = (b"POST /callback/bench HTTP/1.1\r\nHost: wecomd\r\nContent-Type: text/xml\r\n"
             b"Content-Length: 10000\r\n\r\n<xml><ToUserName>")


def connect(port: int, source: str) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    return s


def post_all(port: int, lines: list) -> tuple:
    """Each callback on its own connection (as WeCom does): the seconds each answered one took,
    and the errors (no answer within 5 s, WeCom's budget, or not 200)."""
    seconds, errors = [], []
    for line in lines:
        path, body = line.rstrip("\n").split("\t", 1)
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("POST", path, body=body.encode(), headers={"Content-Type": "text/xml"})
            resp = conn.getresponse()
            resp.read()
        except OSError as exc:
            errors.append(repr(exc))
            continue
        finally:
            conn.close()
        if resp.status != 200:
            errors.append("status %d" % resp.status)
            continue
        seconds.append(time.perf_counter() - start)
    return seconds, errors


def summary(result: tuple) -> str:
    seconds, errors = result
    if not seconds:
        return "every one failed: %s" % errors[:3]
    ordered = sorted(seconds)
    pick = lambda q: 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return "n=%d p50=%.1fms p99=%.1fms max=%.1fms, %d failed%s" % (
        len(ordered), pick(0.5), pick(0.99), 1000 * ordered[-1], len(errors), (": %s" % errors[0]) if errors else "")


def metrics(url: str) -> dict:
    # bench/load.py's config has no api_token: read the counters from the log and /proc instead
    # when /metrics is closed; with a token (WECOMD_ADMIN_API_TOKEN) they come from /metrics.
    token = os.environ.get("WECOMD_ADMIN_API_TOKEN")
    if not token:
        return {}
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(request, timeout=5) as resp:
        text = resp.read().decode()
    return {line.split()[0]: line.split()[1] for line in text.splitlines()
            if line.startswith(("wecomd_connections_", "wecomd_accept_errors"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument("--callbacks", type=int, default=300)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--half-sent", type=int, default=200)
    parser.add_argument("--rate", type=float, default=500.0,
                        help="new idle connections a second during the second run; 0: as fast as possible")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the flood
    work = Path(tempfile.mkdtemp(prefix="wecomd-flood-"))
    port = load.free_port()
    url = "http://127.0.0.1:%d" % port
    conf = load.write_config(work, port)
    callbacks = work / "callbacks.txt"
    load.generate(callbacks, 2 * args.callbacks)
    lines = callbacks.read_text(encoding="utf-8").splitlines()
    log = work / "wecomd.log"
    limit = (args.nofile, args.nofile)
    env = {**os.environ, "PYTHONPATH": str(load.ROOT), "WECOMD_ADMIN_API_TOKEN": os.environ.get(
        "WECOMD_ADMIN_API_TOKEN", "bench-metrics-token-0123456789abcdef")}
    os.environ["WECOMD_ADMIN_API_TOKEN"] = env["WECOMD_ADMIN_API_TOKEN"]
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "wecomd", "serve", "-c", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, env=env,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit))
    held: list = []
    try:
        load.wait_http(url + "/healthz", proc)
        baseline = post_all(port, lines[:args.callbacks])
        print("baseline      callbacks: %s" % summary(baseline))

        for n in range(args.half_sent):
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.%d" % (30 + n % 4), 0))
            s.sendall(HALF_SENT)
            held.append(s)
        for n in range(args.idle // 2):
            held.append(connect(port, "127.0.0.2"))
            if n % 100 == 99:
                time.sleep(0.05)  # what the accept queue holds
        for n in range(args.idle - args.idle // 2):
            held.append(connect(port, "127.0.0.%d" % (100 + n % 20)))
            if n % 100 == 99:
                time.sleep(0.05)
        time.sleep(1.0)

        stop = threading.Event()
        churned = [0]

        def churn() -> None:
            # --rate new idle connections a second (0: as fast as possible); this process closes
            # its own oldest ones beyond --idle, long since closed by wecomd to make room.
            recent: collections.deque = collections.deque()
            start = time.monotonic()
            n = 0
            while not stop.is_set():
                recent.append(connect(port, "127.0.0.%d" % (100 + n % 20)))
                if len(recent) > args.idle:
                    recent.popleft().close()
                n += 1
                churned[0] = n
                if args.rate:
                    time.sleep(max(0.0, start + n / args.rate - time.monotonic()))
                elif n % 50 == 0:
                    time.sleep(0.001)
            for s in recent:
                s.close()

        cpu_before = load.cpu_seconds(proc.pid)
        wall_before = time.monotonic()
        flooder = threading.Thread(target=churn, daemon=True)
        flooder.start()
        try:
            during = post_all(port, lines[args.callbacks:])
            counts = metrics(url)  # while the flood is still held
        finally:
            stop.set()
            flooder.join()
        cpu = load.cpu_seconds(proc.pid) - cpu_before
        wall = time.monotonic() - wall_before
        print("during flood  callbacks: %s" % summary(during))
        print("flood: %d half-sent, %d idle held, %d more idle opened during the run (%.0f/s)"
              % (args.half_sent, args.idle, churned[0], churned[0] / wall))
        print("daemon CPU during the run: %.2fs in %.1fs (%.0f%%), RLIMIT_NOFILE %d"
              % (cpu, wall, 100 * cpu / wall, args.nofile))
        for name, value in counts.items():
            print("  %s %s" % (name, value))
        if proc.poll() is not None:
            print("wecomd exited with %s" % proc.returncode)
            return 1
    finally:
        for s in held:
            s.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    print("wecomd logged %d lines (%d tracebacks); log: %s" % (len(text), sum("Traceback" in t for t in text), log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
