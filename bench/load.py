"""Load benchmark: wecomd's callback path against a bare Tornado handler, measured in one run.

    python bench/load.py [--seconds 10] [--connections 16] [--messages 60000]

1. Writes a temp config (one app with a passive text reply, SQLite WAL, synchronous=FULL) and
   starts `wecomd serve` on it.
2. Generates N distinct encrypted callbacks with wechatpy (an implementation independent of
   wecomd's) and drives them with wrk (C, keep-alive connections, a separate process) through
   bench/wrk_callbacks.lua: verify, decrypt, parse, store durably, encrypted reply.
3. Measures a bare Tornado "hello" handler (bench/hello_server.py) the same way: the ceiling; and,
   as a diagnostic, bare Tornado doing only the protocol work (bench/protocol_server.py: verify,
   decrypt, parse, encrypt the reply; nothing stored or logged).
4. Prints requests/s, p50/p99 latency, CPU seconds and peak RSS of each server, the ratio, and
   checks the database afterwards: every acknowledged message stored exactly once.
Needs wrk (Debian package `wrk`) and wechatpy (the test extra).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import string
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORP_ID = "ww0123456789abcdef"
TOKEN = "BenchToken0123456789"
AES_KEY = "".join(random.Random(7).choice(string.ascii_letters + string.digits) for _ in range(43))
TEXT = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[user%d]]></FromUserName>"
        "<CreateTime>%d</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[压测消息 %d]]></Content>"
        "<MsgId>%d</MsgId><AgentID>1000002</AgentID></xml>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(path: Path, count: int) -> None:
    """N distinct callbacks, one per line: `path?query<TAB>body`, encrypted with wechatpy."""
    from wechatpy.crypto import _get_signature
    from wechatpy.enterprise.crypto import PrpCrypto
    import base64

    key = base64.b64decode(AES_KEY + "=")
    now = int(time.time())
    with open(path, "w", encoding="utf-8") as out:
        for i in range(count):
            plain = TEXT % (CORP_ID, i % 500, now, i, 7_000_000_000_000_000_000 + i)
            encrypted = PrpCrypto(key).encrypt(plain, CORP_ID)
            encrypted = encrypted.decode() if isinstance(encrypted, bytes) else encrypted
            nonce = str(100000 + i)
            sig = _get_signature(TOKEN, str(now), nonce, encrypted)
            query = urllib.parse.urlencode({"msg_signature": sig, "timestamp": str(now), "nonce": nonce})
            body = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><Encrypt><![CDATA[%s]]></Encrypt>"
                    "<AgentID><![CDATA[1000002]]></AgentID></xml>" % (CORP_ID, encrypted))
            out.write("/callback/bench?%s\t%s\n" % (query, body))


def write_config(directory: Path, port: int) -> Path:
    conf = directory / "wecomd.conf"
    conf.write_text(
        "[server]\nlisten = 127.0.0.1:%d\ndatabase = bench.db\ntimestamp_window = 0\n\n"
        "[app:bench]\ncorp_id = %s\nagent_id = 1000002\ntoken = %s\nencoding_aes_key = %s\nreply = 已收到\n"
        % (port, CORP_ID, TOKEN, AES_KEY), encoding="utf-8")
    return conf


def wait_http(url: str, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit("server exited with %s" % proc.returncode)
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start: %s" % url)


def start_wecomd(conf: Path, url: str, log: Path) -> subprocess.Popen:
    """`wecomd serve -c conf` from this checkout, its output appended to `log`; returns once `url`
    answers /healthz."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "wecomd", "serve", "-c", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wait_http(url + "/healthz", proc)
    return proc


def cpu_seconds(pid: int) -> float:
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_wrk(url: str, args: argparse.Namespace, script: Path, data: Path) -> dict:
    cmd = ["wrk", "-t2", "-c%d" % args.connections, "-d%ds" % args.seconds, "--timeout", "10s",
           "-s", str(script), url, "--", str(data), "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def measure(name: str, cmd: list, url: str, args, script, data, env=None, log: Path = Path(os.devnull)) -> dict:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out, env=env)
    try:
        wait_http(url.rsplit("/callback", 1)[0] + "/healthz", proc)
        cpu0 = cpu_seconds(proc.pid)
        result = run_wrk(url, args, script, data)
        result["cpu_s"] = cpu_seconds(proc.pid) - cpu0
        result["rss_mb"] = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    result["name"] = name
    return result


def verify(db: Path, acknowledged: int, in_flight: int) -> tuple:
    with sqlite3.connect(str(db)) as conn:
        rows, dup_keys, max_deliveries = conn.execute(
            "SELECT COUNT(*), COUNT(*) - COUNT(DISTINCT dedup_key), MAX(deliveries) FROM message").fetchone()
    ok = dup_keys == 0 and max_deliveries == 1 and acknowledged <= rows <= acknowledged + in_flight
    return ("%s: %d acknowledged, %d stored (the difference were in flight when wrk stopped), "
            "duplicate rows %d, max deliveries per message %s" % ("OK" if ok else "FAILED", acknowledged, rows,
                                                                  dup_keys, max_deliveries)), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--messages", type=int, default=60000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wecomd-load-"))
    data, script = work / "callbacks.txt", ROOT / "bench" / "wrk_callbacks.lua"
    started = time.monotonic()
    generate(data, args.messages)
    print("generated %d distinct callbacks with wechatpy in %.1fs" % (args.messages, time.monotonic() - started))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port = free_port()
    conf = write_config(work, port)
    wecomd = measure("wecomd callback", [sys.executable, "-m", "wecomd", "serve", "-c", str(conf)],
                     "http://127.0.0.1:%d/callback/bench" % port, args, script, data, env, work / "wecomd.log")
    port = free_port()
    hello = measure("bare tornado", [sys.executable, str(ROOT / "bench" / "hello_server.py"), str(port)],
                    "http://127.0.0.1:%d/callback/bench" % port, args, script, data)
    port = free_port()
    protocol = measure("tornado+protocol", [sys.executable, str(ROOT / "bench" / "protocol_server.py"), str(port),
                                            TOKEN, AES_KEY, CORP_ID],
                       "http://127.0.0.1:%d/callback/bench" % port, args, script, data, env)
    print("\n%-16s %10s %9s %9s %8s %9s %8s" % ("", "req/s", "p50 ms", "p99 ms", "CPU s", "peak RSS", "non-200"))
    for r in (wecomd, hello, protocol):
        print("%-16s %10.0f %9.2f %9.2f %8.1f %7.1fMB %8d" % (r["name"], r["rps"], r["p50_us"] / 1000,
                                                            r["p99_us"] / 1000, r["cpu_s"], r["rss_mb"], r["non200"]))
    print("\nratio wecomd / bare tornado: %.2f   (%d connections, %d s, wrk -t2, same machine, same run)"
          % (wecomd["rps"] / hello["rps"], args.connections, args.seconds))
    print("diagnostic: bare tornado plus only verify/decrypt/parse/encrypt (no storage, no log): %.2f of the "
          "ceiling" % (protocol["rps"] / hello["rps"]))
    if wecomd["wrapped"]:
        print("note: %d requests repeated a message (more requests than --messages): counted as retries" % wecomd["wrapped"])
    commits = [line for line in (work / "wecomd.log").read_text("utf-8", "replace").splitlines()
               if "database writer:" in line]
    if commits:
        print("group commit:", commits[-1].split("database writer: ", 1)[1])
    message, ok = verify(work / "bench.db", wecomd["ok"], args.connections)
    print("exactly once:", message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
