"""Live fan-out: N dashboard websockets, callbacks at a fixed rate, callback-ack to receipt latency.

    python bench/fanout.py [--clients 100] [--rate 500] [--seconds 10]

Starts `wecomd serve` (one app, no rules: this measures the live hub, not automation), opens N
signed-in websocket clients to /api/live, then sends
pre-encrypted text callbacks at the given rate from several keep-alive connections. For every
(message, client) pair it records the time from the callback's 200 to the message arriving on
that client. Prints achieved rate, p50/p99/max latency and how many deliveries were missing.
The load generator, the clients and the daemon share this machine's cores, so the figures are
an upper bound on what the daemon alone adds.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parent.parent
CONTENT = re.compile(r'"content": "(fan \d+)"')
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from live_latency import PASSWORD, free_port, login, pct, wait_ready  # noqa: E402
from load import AES_KEY, CORP_ID, TOKEN  # noqa: E402
from wecomd.crypto import WecomCrypto, signature  # noqa: E402
from wecomd.passwords import hash_password  # noqa: E402
from wecomd.simulate import build  # noqa: E402


def callbacks(app: dict, count: int) -> list:
    crypto = WecomCrypto(app["token"], app["encoding_aes_key"], app["corp_id"])
    now, out = str(int(time.time())), []
    for i in range(count):
        xml = build("text", corp_id=app["corp_id"], agent_id=app["agent_id"], content="fan %d" % i,
                    from_user="user%d" % (i % 50))
        encrypted = crypto.encrypt(xml.encode())
        nonce = str(i)
        query = "msg_signature=%s&timestamp=%s&nonce=%s" % (signature(app["token"], now, nonce, encrypted), now, nonce)
        body = "<xml><ToUserName><![CDATA[%s]]></ToUserName><Encrypt><![CDATA[%s]]></Encrypt></xml>" % (app["corp_id"], encrypted)
        out.append(("fan %d" % i, query, body))
    return out


async def run(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="wecomd-fanout-"))
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    conf_path = work / "wecomd.conf"
    conf_path.write_text(
        "[server]\nlisten = 127.0.0.1:%d\ndatabase = fanout.db\n\n[admin]\npassword_hash = %s\ncookie_secret = %s\n\n"
        "[app:demo]\ncorp_id = %s\nagent_id = 1000002\ntoken = %s\nencoding_aes_key = %s\n"
        % (port, hash_password(PASSWORD), "c" * 40, CORP_ID, TOKEN, AES_KEY), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "wecomd", "serve", "-c", str(conf_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        await wait_ready(url, proc)
        app = {"token": TOKEN, "encoding_aes_key": AES_KEY, "corp_id": CORP_ID, "agent_id": "1000002"}
        cookie = await login(url)
        total = args.rate * args.seconds
        requests = callbacks(app, total)
        acked: dict = {}
        received: list = []
        sockets = [await websocket_connect(HTTPRequest("ws://127.0.0.1:%d/api/live" % port, headers={"Cookie": cookie}))
                   for _ in range(args.clients)]

        async def reader(ws):
            while True:
                raw = await ws.read_message()
                if raw is None:
                    return
                # Cheap on purpose (the clients share the machine with the daemon): no full JSON parse.
                found = CONTENT.search(raw)
                if found and '"direction": "in"' in raw:
                    received.append((found.group(1), time.perf_counter()))

        readers = [asyncio.ensure_future(reader(ws)) for ws in sockets]
        client = AsyncHTTPClient(force_instance=True, max_clients=16,
                                 defaults=dict(connect_timeout=120, request_timeout=120))
        interval, started = 1.0 / args.rate, time.perf_counter()

        async def send(i, content, query, body):
            await asyncio.sleep(max(0.0, started + i * interval - time.perf_counter()))
            resp = await client.fetch("%s/callback/demo?%s" % (url, query), method="POST", body=body, raise_error=False)
            if resp.code == 200:
                acked[content] = time.perf_counter()

        await asyncio.gather(*(send(i, *r) for i, r in enumerate(requests)))
        elapsed = time.perf_counter() - started
        await asyncio.sleep(2.0)
        for ws in sockets:
            ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
        lat = [(t - acked[c]) * 1000 for c, t in received if c in acked]
        expected = len(acked) * args.clients
        print("%d websocket clients, %d callbacks in %.1f s (%.0f/s offered %d/s), %d acknowledged"
              % (args.clients, total, elapsed, total / elapsed, args.rate, len(acked)))
        print("callback acknowledged -> received: p50 %.1f ms  p99 %.1f ms  max %.1f ms  (%d deliveries, %d missing)"
              % (pct(lat, 50), pct(lat, 99), max(lat), len(lat), expected - len(lat)))
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=10)
    asyncio.run(run(parser.parse_args()))
