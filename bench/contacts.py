"""Contact names on a cold cache: the first page of 50 conversations, 50 users nobody has looked up.

    python bench/contacts.py [--users 50] [--latency-ms 0,30,80]

For each WeCom round-trip time given (the sandbox waits that long before each answer; qyapi is
typically 20-80 ms away), a fresh wecomd (the same object graph as `serve`, on loopback, SQLite)
with one conversation per user asks for GET /api/conversations?limit=N once and then polls it
every 10 ms until every user has a name. Prints the WeCom calls made (user/get, department/list),
the time from the first request to the last name, and the calls a second, warm page costs (0).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tornado.httpclient import AsyncHTTPClient  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.netutil import bind_sockets  # noqa: E402

from wecomd import app as appmod, config  # noqa: E402
from wecomd.services import Services  # noqa: E402
from wecomd.wecom import sandbox  # noqa: E402
from wecomd.wecom.messages import parse  # noqa: E402
from wecomd.wecom.samples import build  # noqa: E402

TOKEN = "bench-api-token-0123456789"
CONF = """[server]
listen = 127.0.0.1:0
database = bench.db
media_dir = media
log_level = warning

[admin]
username = admin
cookie_secret = bench-cookie-secret-0123456789abcdef
api_token = {token}

[wecom]
api_base = {api}

[app:helpdesk]
corp_id = ww0123456789abcdef
agent_id = 1000002
token = BenchToken0123456789
encoding_aes_key = abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
secret = bench-secret
"""


async def one_run(users: int, latency: float) -> dict:
    fake = sandbox.FakeWecom()
    fake.latency = latency
    fake.departments = [{"id": 1, "name": "总部", "parentid": 0}, {"id": 2, "name": "IT 支持部", "parentid": 1}]
    fake.users = {"user%03d" % n: {"name": "员工%03d" % n, "department": [2]} for n in range(users)}
    api_server, api_base = await sandbox.start(fake)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wecomd.conf"
        path.write_text(CONF.format(token=TOKEN, api=api_base), encoding="utf-8")
        services = Services(config.load(path, {}))
        await services.start()
        for n in range(users):
            message = parse(build("text", corp_id="ww0123456789abcdef", agent_id="1000002",
                                  from_user="user%03d" % n, content="你好 %d" % n))
            await services.db(services.store.messages.save_inbound, "helpdesk", message, "k%d" % n)
        sockets = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(appmod.make_app(services))
        server.add_sockets(sockets)
        url = "http://127.0.0.1:%d/api/conversations?limit=%d" % (sockets[0].getsockname()[1], users)
        client = AsyncHTTPClient()
        headers = {"Authorization": "Bearer " + TOKEN}

        async def names() -> list:
            response = await client.fetch(url, headers=headers)
            return [c["user_name"] for c in json.loads(response.body)["conversations"]]

        started = time.perf_counter()
        first = await names()
        while None in await names():
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        cold = {"user/get": sum(1 for p, _ in fake.calls if p == "/cgi-bin/user/get"),
                "department/list": sum(1 for p, _ in fake.calls if p == "/cgi-bin/department/list")}
        before = len(fake.calls)
        await names()
        warm = len(fake.calls) - before
        server.stop()
        await services.close()
        api_server.stop()
    return dict(latency_ms=latency * 1000, named_on_first_page=users - first.count(None), seconds=elapsed,
                warm_calls=warm, **cold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--latency-ms", default="0,30,80")
    args = parser.parse_args()
    print("%d conversations, %d users nobody has looked up; WeCom calls and time until every name shows"
          % (args.users, args.users))
    print("%10s %9s %16s %18s %14s %17s" % ("rtt ms", "user/get", "department/list", "named at once", "all named s",
                                          "warm page calls"))
    for latency in (float(x) / 1000 for x in args.latency_ms.split(",")):
        r = asyncio.run(one_run(args.users, latency))
        print("%10.0f %9d %16d %18d %14.3f %17d" % (r["latency_ms"], r["user/get"], r["department/list"],
                                                     r["named_on_first_page"], r["seconds"], r["warm_calls"]))


if __name__ == "__main__":
    main()
