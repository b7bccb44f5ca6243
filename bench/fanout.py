"""Live fan-out: N dashboard websockets, callbacks at a steady rate, callback-ack to receipt latency.

    python bench/fanout.py [--clients 100] [--rate 500] [--seconds 10] [--client-procs 2]

1. Generates rate x seconds distinct encrypted, signed text callbacks with wechatpy (as
   bench/load.py does: an implementation independent of wecomd's) and starts `wecomd serve` on a
   temp config (one app, no rules, no passive reply: this measures the live hub, not automation).
2. Opens N signed-in websocket clients to /api/live, spread over --client-procs processes (one
   asyncio loop each, Tornado's websocket client), so the clients do not run in the daemon's
   process or in the sender's.
3. A separate sender process posts the callbacks at a steady rate (message i is due at
   start + i/rate) over --connections keep-alive HTTP/1.1 connections and records when each
   callback got its 200.
4. For every (message, client) pair: receipt time minus the callback's 200, all from
   time.monotonic() (CLOCK_MONOTONIC on Linux: one clock for every process on the machine).
   A message can arrive before its 200 (the hub publishes right after the commit, before the
   response is written): such latencies are negative.

Prints p50/p99/max latency, delivered messages/s per client, frames per client, dropped or
disconnected clients, the CPU used by the daemon, the clients and the sender, and the daemon's RSS.
Verifies that every client received every acknowledged message exactly once, in the order the
daemon stored them (message ids increasing) and in the same order as every other client; exits 1
if not. Everything shares this machine's cores: the figures include that contention.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from live_latency import PASSWORD, free_port, login, pct  # noqa: E402
from load import AES_KEY, CORP_ID, TOKEN, cpu_seconds, generate, peak_rss_mb, start_wecomd  # noqa: E402

INDEX = re.compile(r"(\d+)$")  # load.generate's content is "压测消息 <i>"


# ------------------------------------------------------------------ the clients (own processes)

def _events(text: str) -> list:
    """(callback index, message id) of each inbound message in one frame (a list, or one event)."""
    data = json.loads(text)
    out = []
    for event in data if isinstance(data, list) else [data]:
        message = event.get("message") or {}
        if event.get("type") == "message" and message.get("direction") == "in":
            out.append((int(INDEX.search(message["content"]).group(1)), message["id"]))
    return out


async def _receive(port: int, cookie: str, count: int, conn) -> None:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = "ws://127.0.0.1:%d/api/live" % port
    sockets = [await websocket_connect(HTTPRequest(url, headers={"Cookie": cookie})) for _ in range(count)]
    ids: dict = {}  # frame text -> small int: the clients of a process get the same frames
    clients = [([], [], None) for _ in sockets]

    async def read(i: int, ws) -> None:
        keys, times, _ = clients[i]
        while True:
            raw = await ws.read_message()
            if raw is None:
                clients[i] = (keys, times, (ws.close_code, ws.close_reason, time.monotonic()))
                return
            times.append(time.monotonic())
            key = ids.get(raw)
            if key is None:
                key = ids[raw] = len(ids)
            keys.append(key)

    readers = [asyncio.ensure_future(read(i, ws)) for i, ws in enumerate(sockets)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(conn.fileno(), stop.set)
    conn.send("ready")
    await stop.wait()
    conn.recv()
    frames = [_events(text) for text in ids]  # parsed once per distinct frame, after the run
    conn.send({"frames": frames, "clients": clients})
    for reader in readers:
        reader.cancel()


def receiver(port: int, cookie: str, count: int, conn) -> None:
    asyncio.run(_receive(port, cookie, count, conn))


# ------------------------------------------------------------------ the sender (its own process)

async def _send(port: int, requests: list, rate: int, connections: int) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    acked: list = [None] * len(requests)
    refused = [0]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            item = await queue.get()
            if item is None:
                writer.close()
                return
            i, request = item
            writer.write(request)
            status = (await reader.readline()).split()[1]
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            if status == b"200":
                acked[i] = time.monotonic()
            else:
                refused[0] += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(connections)]
    await asyncio.sleep(0.2)  # connected
    started = time.monotonic()
    for i, request in enumerate(requests):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, request))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return {"acked": acked, "refused": refused[0], "started": started, "finished": time.monotonic()}


def sender(port: int, data: str, rate: int, connections: int, conn) -> None:
    requests = []
    for line in Path(data).read_text(encoding="utf-8").splitlines():
        target, body = line.split("\t", 1)
        body = body.encode()
        requests.append(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: text/xml\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (target.encode(), port, len(body), body))
    conn.send("ready")
    conn.recv()
    conn.send(asyncio.run(_send(port, requests, rate, connections)))


# ------------------------------------------------------------------ the run

def start_server(work: Path, port: int) -> subprocess.Popen:
    from wecomd.passwords import hash_password

    conf = work / "wecomd.conf"
    conf.write_text(
        "[server]\nlisten = 127.0.0.1:%d\ndatabase = fanout.db\ntimestamp_window = 0\n\n"
        "[admin]\npassword_hash = %s\ncookie_secret = %s\n\n"
        "[app:bench]\ncorp_id = %s\nagent_id = 1000002\ntoken = %s\nencoding_aes_key = %s\n"
        % (port, hash_password(PASSWORD), "c" * 40, CORP_ID, TOKEN, AES_KEY), encoding="utf-8")
    return start_wecomd(conf, "http://127.0.0.1:%d" % port, work / "wecomd.log")


def analyse(args, sent: dict, results: list, elapsed: float) -> tuple:
    """Latencies, per-client counts and the exactly-once / order checks."""
    acked = {i: t for i, t in enumerate(sent["acked"]) if t is not None}
    latencies, problems, dropped, delivered, frames, reference = [], [], [], [], 0, None
    for result in results:
        for keys, times, closed in result["clients"]:
            seq = []
            for key, at in zip(keys, times):
                for index, message_id in result["frames"][key]:
                    seq.append((index, message_id))
                    if index in acked:
                        latencies.append((at - acked[index]) * 1000)
            frames += len(keys)
            delivered.append(len(seq))
            if closed is not None and closed[2] < sent["finished"] + args.drain - 0.1:
                dropped.append(closed[:2])
            indexes = [i for i, _ in seq]
            if len(set(indexes)) != len(indexes):
                problems.append("a client received a message twice")
            missing = set(acked) - set(indexes)
            if missing:
                problems.append("a client is missing %d acknowledged messages" % len(missing))
            if any(b[1] <= a[1] for a, b in zip(seq, seq[1:])):
                problems.append("a client received messages out of store order")
            reference = reference or indexes
            if indexes != reference:
                problems.append("two clients received messages in different orders")
    return latencies, problems, dropped, delivered, frames, acked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=int, default=500, help="callbacks per second")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--client-procs", type=int, default=2, help="processes the clients are spread over")
    parser.add_argument("--connections", type=int, default=32, help="the sender's keep-alive connections")
    parser.add_argument("--drain", type=float, default=2.0, help="seconds to wait for the last deliveries")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wecomd-fanout-"))
    total = args.rate * args.seconds
    generate(work / "callbacks.txt", total)  # bench/load.py's wechatpy generator
    port = free_port()
    server = start_server(work, port)
    mp = multiprocessing.get_context("spawn")
    children = []
    try:
        cookie = asyncio.run(login("http://127.0.0.1:%d" % port))
        receivers = []
        for n in range(args.client_procs):
            count = args.clients // args.client_procs + (n < args.clients % args.client_procs)
            ours, theirs = mp.Pipe()
            proc = mp.Process(target=receiver, args=(port, cookie, count, theirs), daemon=True)
            proc.start()
            receivers.append(ours)
            children.append(proc)
        ours, theirs = mp.Pipe()
        send_proc = mp.Process(target=sender, args=(port, str(work / "callbacks.txt"), args.rate, args.connections,
                                                    theirs), daemon=True)
        send_proc.start()
        children.append(send_proc)
        for conn in receivers + [ours]:
            if not conn.poll(120):
                raise SystemExit("a client process did not start")
            conn.recv()
        time.sleep(0.5)  # every socket subscribed (open() runs just after the handshake)
        cpu = {proc.pid: cpu_seconds(proc.pid) for proc in children + [server]}
        ours.send("go")
        sent = ours.recv()
        elapsed = sent["finished"] - sent["started"]
        used = {pid: cpu_seconds(pid) - before for pid, before in cpu.items()}
        time.sleep(args.drain)
        results = []
        for conn in receivers:
            conn.send("stop")
            results.append(conn.recv())
        rss = peak_rss_mb(server.pid)
    finally:
        for proc in children:
            proc.kill()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    shutil.rmtree(work, ignore_errors=True)  # kept (with wecomd.log) only when the run failed
    latencies, problems, dropped, delivered, frames, acked = analyse(args, sent, results, elapsed)
    clients = sum(len(r["clients"]) for r in results)
    client_cpu = sum(used[proc.pid] for proc in children[:-1])
    print("%d websocket clients in %d processes; %d callbacks in %.2f s (%.0f/s, offered %d/s), %d acknowledged, "
          "%d refused" % (clients, args.client_procs, total, elapsed, len(acked) / elapsed, args.rate, len(acked),
                          sent["refused"]))
    if latencies:
        print("callback 200 -> client received: p50 %.1f ms  p99 %.1f ms  max %.1f ms  (%d deliveries)"
              % (pct(latencies, 50), pct(latencies, 99), max(latencies), len(latencies)))
    print("delivered per client: %.0f messages/s (min %d, max %d of %d messages); %.1f frames/s per client, "
          "%.1f messages per frame" % (sum(delivered) / len(delivered) / elapsed, min(delivered), max(delivered),
                                       len(acked), frames / clients / elapsed, sum(delivered) / max(1, frames)))
    print("dropped or disconnected clients: %d%s" % (len(dropped), " %s" % dropped[:3] if dropped else ""))
    print("CPU over the %.1f s of sending (share of one core): wecomd %.0f%%, clients %.0f%%, sender %.0f%%; "
          "wecomd peak RSS %.1f MB" % (elapsed, 100 * used[server.pid] / elapsed, 100 * client_cpu / elapsed,
                                       100 * used[send_proc.pid] / elapsed, rss))
    unique = sorted(set(problems))
    print("exactly once, in order: %s" % ("OK (every client got every acknowledged message once, in store order)"
                                          if not unique else "FAILED: " + "; ".join(unique)))
    return 0 if not unique and not dropped else 1


if __name__ == "__main__":
    sys.exit(main())
