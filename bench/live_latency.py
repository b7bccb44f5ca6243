"""Latency from a WeCom callback to the dashboard's websocket, measured end to end.

Starts `wecomd demo --no-traffic` on a free port, signs in, opens WS /api/live, then sends N
text callbacks one after another (encrypted and signed as WeCom does) and records, per message:
  callback->ws   from sending the callback until the websocket delivered the message
  ack->ws        from the callback's 200 until the websocket delivered it (negative: pushed first)
Prints p50/p95/p99/max in milliseconds.  Usage: python bench/live_latency.py [N]
"""
from __future__ import annotations

import asyncio
import configparser
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from load import free_port  # noqa: E402  (bench/load.py, beside this file)
from wecomd.wecom.samples import build  # noqa: E402
from wecomd.wecom.simulate import Simulator  # noqa: E402

PASSWORD = "bench-password-1234"


async def wait_ready(url: str, proc: subprocess.Popen) -> None:
    client = AsyncHTTPClient()
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit("wecomd demo exited with %s" % proc.returncode)
        try:
            if (await client.fetch(url + "/healthz", raise_error=False)).code == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("wecomd demo did not start")


async def login(url: str) -> str:
    client = AsyncHTTPClient()
    page = await client.fetch(url + "/login")
    xsrf = re.search(r"_xsrf=([^;]+)", page.headers["Set-Cookie"]).group(1)
    body = urllib.parse.urlencode({"username": "admin", "password": PASSWORD, "_xsrf": xsrf})
    resp = await client.fetch(url + "/login", method="POST", body=body, follow_redirects=False,
                              raise_error=False, headers={"Cookie": "_xsrf=" + xsrf})
    session = [c.split(";")[0] for c in resp.headers.get_list("Set-Cookie") if c.startswith("wecomd_session=")][0]
    return "_xsrf=%s; %s" % (xsrf, session)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def run(n: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="wecomd-bench-"))
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "wecomd", "demo", "--listen", "127.0.0.1:%d" % port,
                             "--dir", str(workdir), "--password", PASSWORD, "--no-traffic"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        await wait_ready(url, proc)
        conf = configparser.RawConfigParser(inline_comment_prefixes=(";",))
        conf.read(workdir / "wecomd.conf", encoding="utf-8")
        app = conf["app:demo"]
        cookie = await login(url)
        ws = await websocket_connect(HTTPRequest("ws://127.0.0.1:%d/api/live" % port, headers={"Cookie": cookie}))
        sim = Simulator(url + "/callback/demo", token=app["token"], aes_key=app["encoding_aes_key"],
                        corp_id=app["corp_id"], agent_id=app["agent_id"])
        to_ws, ack_to_ws, pending = [], [], []

        async def inbound(content: str) -> dict:
            """The first event for the new message; skip others (updates as the demo's rules finish)."""
            while True:
                while pending:
                    event = pending.pop(0)
                    message = event.get("message") or {}
                    if message.get("content") == content and message.get("direction") == "in":
                        return event
                pending.extend(json.loads(await ws.read_message()))  # a frame is a list of events

        for i in range(n):
            xml = build("text", corp_id=app["corp_id"], agent_id=app["agent_id"], content="bench %d" % i)
            sent = time.perf_counter()
            reader = asyncio.ensure_future(inbound("bench %d" % i))
            [result] = await sim.send(xml)
            acked = time.perf_counter()
            event = await reader
            received = time.perf_counter()
            assert result.status == 200 and event["message"]["content"] == "bench %d" % i, (result, event)
            to_ws.append((received - sent) * 1000)
            ack_to_ws.append((received - acked) * 1000)
        sim.close()
        ws.close()
        print("callback -> websocket over %d messages (wecomd demo, SQLite synchronous=FULL, loopback):" % n)
        for name, values in (("callback->ws", to_ws), ("ack->ws", ack_to_ws)):
            print("  %-13s p50 %6.2f ms  p95 %6.2f ms  p99 %6.2f ms  max %6.2f ms  mean %6.2f ms" % (
                name, pct(values, 50), pct(values, 95), pct(values, 99), max(values), statistics.mean(values)))
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    asyncio.run(run(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
