"""Dashboard at scale: seed N stored messages, then time the dashboard's queries over HTTP.

    python bench/scale.py [--messages 1000000] [--users 2000] [--keep DIR]

Seeds a fresh wecomd database (the real schema, migrations and FTS triggers) with N realistic
inbound messages in large transactions, starts `wecomd serve` on it, and times over HTTP (api
token) 30 requests each of: /api/conversations, a /api/messages page, one user's thread, and a
Chinese full-text search. Prints p50/p95 per query, the server's peak RSS and the database size
per message.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load import AES_KEY, CORP_ID, TOKEN, free_port, peak_rss_mb, wait_http  # noqa: E402

API_TOKEN = "bench-api-token-0123456789abcdef0123456789"
WORDS = ("服务器", "宕机", "打印机", "卡纸", "请假", "报销", "审批", "会议室", "投影仪", "网络", "VPN", "密码",
         "重置", "邮箱", "周报", "合同", "发票", "出差", "快递", "电脑", "hello", "deploy", "wiki", "ticket")


def seed(db: Path, count: int, users: int) -> float:
    """Insert `count` messages with the real schema (created by `wecomd serve`'s migrations)."""
    rng = random.Random(42)
    conn = sqlite3.connect(str(db))
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=off")  # seeding only: the daemon itself runs synchronous=full
    start = datetime(2026, 1, 1)
    started = time.monotonic()
    sql = ('INSERT INTO message (app, direction, dedup_key, user, msgtype, from_user, to_user, agent_id, msg_id, '
           'create_time, received_at, content, status, fields, raw, deliveries, updated_at, search_text, attempts) '
           'VALUES (?, "in", ?, ?, "text", ?, ?, "1000002", ?, ?, ?, ?, "received", ?, ?, 1, ?, ?, 0)')
    batch = []
    for i in range(count):
        user = "user%04d" % rng.randrange(users)
        text = "".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) + " #%d" % i
        when = start + timedelta(seconds=i * 20)
        stamp = when.strftime("%Y-%m-%d %H:%M:%S")
        fields = json.dumps({"ToUserName": CORP_ID, "FromUserName": user, "CreateTime": str(int(when.timestamp())),
                             "MsgType": "text", "Content": text, "MsgId": str(7 * 10 ** 18 + i),
                             "AgentID": "1000002"}, ensure_ascii=False, separators=(",", ":"))
        raw = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[%s]]></FromUserName>"
               "<CreateTime>%d</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[%s]]></Content>"
               "<MsgId>%d</MsgId><AgentID>1000002</AgentID></xml>" % (CORP_ID, user, int(when.timestamp()), text, 7 * 10 ** 18 + i))
        batch.append(("bench", "msg:1000002:%s:%d" % (user, 7 * 10 ** 18 + i), user, user, CORP_ID,
                      str(7 * 10 ** 18 + i), int(when.timestamp()), stamp, text, fields, raw, stamp, text))
        if len(batch) == 20000:
            conn.executemany(sql, batch)
            conn.commit()
            batch = []
    if batch:
        conn.executemany(sql, batch)
        conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.monotonic() - started


def timed(url: str, n: int = 30) -> list:
    headers = {"Authorization": "Bearer " + API_TOKEN}
    times = []
    for _ in range(n):
        started = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            resp.read()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--keep", help="work in this directory and keep it")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="wecomd-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = work / "wecomd.conf"
    conf.write_text("[server]\nlisten = 127.0.0.1:%d\ndatabase = scale.db\n\n[admin]\napi_token = %s\n\n"
                    "[app:bench]\ncorp_id = %s\nagent_id = 1000002\ntoken = %s\nencoding_aes_key = %s\n"
                    % (port, API_TOKEN, CORP_ID, TOKEN, AES_KEY), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "wecomd", "serve", "-c", str(conf)]
    db = work / "scale.db"
    if not db.exists():
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http("http://127.0.0.1:%d/healthz" % port, proc)  # creates the schema by migrating
        proc.terminate()
        proc.wait(30)
        print("seeded %d messages from %d users in %.0f s" % (args.messages, args.users, seed(db, args.messages, args.users)))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = "http://127.0.0.1:%d" % port
        wait_http(base + "/healthz", proc)
        with sqlite3.connect(str(db)) as conn:
            total = conn.execute("SELECT COUNT(*) FROM message").fetchone()[0]
        queries = {
            "conversations": "/api/conversations",
            "messages page": "/api/messages?limit=50",
            "older page": "/api/messages?limit=50&before=%d" % (total // 2),
            "user thread": "/api/messages?app=bench&user=user0042&limit=50",
            "search 3+ chars": "/api/messages?limit=50&q=" + urllib.parse.quote("打印机卡纸"),
            "search 2 chars": "/api/messages?limit=50&q=" + urllib.parse.quote("宕机"),
        }
        print("\n%d messages; times over HTTP from a client on the same machine (30 requests each):" % total)
        print("%-18s %9s %9s %9s" % ("query", "p50 ms", "p95 ms", "max ms"))
        for name, path in queries.items():
            times = timed(base + path)
            p95 = sorted(times)[int(len(times) * 0.95) - 1]
            print("%-18s %9.1f %9.1f %9.1f" % (name, statistics.median(times), p95, max(times)))
        size = sum(f.stat().st_size for f in work.glob("scale.db*"))
        print("\nserver peak RSS %.0f MB; database %.0f MB, %.0f bytes per message (with FTS index)"
              % (peak_rss_mb(proc.pid), size / 2 ** 20, size / max(1, total)))
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
