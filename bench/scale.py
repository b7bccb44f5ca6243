"""Dashboard at scale: seed N stored messages, then time the dashboard's queries over HTTP.

    python bench/scale.py [--messages 1000000] [--users 3000] [--keep DIR]

Seeds a fresh wecomd database with N realistic messages (bench/seed.py: the real schema,
migrations and triggers; several apps, thousands of users, every common message kind, Chinese
text, replies and read marks), starts `wecomd serve` on it, and times over HTTP (api token) 40
requests each of: /api/conversations (its first page, another page, one app's), a /api/messages
page and an older one, one user's thread, and Chinese searches (common and rare, of three
characters and more or of two). Prints p50/p95 per query, the
server's peak RSS and the database size per message. With --keep DIR an already seeded
DIR/scale.db is used again as it is.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load import AES_KEY, TOKEN, free_port, peak_rss_mb, wait_http  # noqa: E402
from seed import APPS, CORP_ID, seed  # noqa: E402

API_TOKEN = "bench-api-token-0123456789abcdef0123456789"
REQUESTS = 40


def timed(url: str, n: int = REQUESTS) -> tuple:
    """Milliseconds of `n` sequential requests, and the rows the last answer listed."""
    headers = {"Authorization": "Bearer " + API_TOKEN}
    times, body = [], b"{}"
    for _ in range(n):
        started = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            body = resp.read()
        times.append((time.perf_counter() - started) * 1000)
    data = json.loads(body)
    return times, len(data.get("conversations", data.get("messages", [])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--keep", help="work in this directory and keep it")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="wecomd-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = work / "wecomd.conf"
    conf.write_text("[server]\nlisten = 127.0.0.1:%d\ndatabase = scale.db\n\n[admin]\napi_token = %s\n\n"
                    % (port, API_TOKEN) + "".join(
                        "[app:%s]\ncorp_id = %s\nagent_id = %s\ntoken = %s\nencoding_aes_key = %s\n\n"
                        % (name, CORP_ID, agent, TOKEN, AES_KEY) for name, agent, _ in APPS), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "wecomd", "serve", "-c", str(conf)]
    db = work / "scale.db"
    if not db.exists():
        print("seeded %d messages from %d users in %.0f s" % (args.messages, args.users, seed(db, args.messages, args.users)))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = "http://127.0.0.1:%d" % port
        wait_http(base + "/healthz", proc)
        with sqlite3.connect(str(db)) as conn:
            total = conn.execute("SELECT COUNT(*) FROM message").fetchone()[0]
            conversations = conn.execute("SELECT COUNT(*) FROM conversation").fetchone()[0]
            # A busy user's thread, and a cursor in the middle of the conversation list.
            app, user = conn.execute("SELECT app, user FROM conversation ORDER BY messages DESC LIMIT 1").fetchone()
            middle = conn.execute("SELECT last_id FROM conversation ORDER BY last_id DESC LIMIT 1 OFFSET ?",
                                  (conversations // 2,)).fetchone()[0]
        quote = urllib.parse.quote
        queries = {
            "conversations": "/api/conversations",
            "conv. page 2": "/api/conversations?before=%d" % middle,
            "conv. one app": "/api/conversations?app=hr",
            "messages page": "/api/messages?limit=50",
            "older page": "/api/messages?limit=50&before=%d" % (total // 2),
            "user thread": "/api/messages?app=%s&user=%s&limit=50" % (quote(app), quote(user)),
            "search 3+ chars": "/api/messages?limit=50&q=" + quote("打印机卡纸"),
            "search common": "/api/messages?limit=50&q=" + quote("服务器"),
            "search 2 chars": "/api/messages?limit=50&q=" + quote("宕机"),
            "search rare 2 ch.": "/api/messages?limit=50&q=" + quote("纪要"),
            "search no match": "/api/messages?limit=50&q=" + quote("火锅"),
        }
        print("\n%d messages in %d conversations; times over HTTP from a client on the same machine "
              "(%d requests each):" % (total, conversations, REQUESTS))
        print("%-18s %9s %9s %9s %7s" % ("query", "p50 ms", "p95 ms", "max ms", "rows"))
        for name, path in queries.items():
            times, rows = timed(base + path)
            p95 = sorted(times)[int(len(times) * 0.95) - 1]
            print("%-18s %9.1f %9.1f %9.1f %7d" % (name, statistics.median(times), p95, max(times), rows))
        size = sum(f.stat().st_size for f in work.glob("scale.db*"))
        print("\nserver peak RSS %.0f MB; database %.0f MB, %.0f bytes per message (with the FTS index "
              "and the conversation summary)" % (peak_rss_mb(proc.pid), size / 2 ** 20, size / max(1, total)))
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
