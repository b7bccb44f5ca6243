"""Load benchmark: wecomd's callback path against bare Tornado and the protocol-only server, in one run.

    python bench/load.py [--seconds 10] [--connections 16] [--messages 40000] [--rounds 1]
                         [--source DIR]

Each round, on this machine, one server after the other (never two at once):
1. wecomd: writes a temp config (one app with a passive text reply, SQLite WAL, synchronous=FULL)
   and starts `wecomd serve` on a fresh database. N distinct encrypted callbacks, made with wechatpy
   (an implementation independent of wecomd's), are driven by wrk (C, keep-alive connections, a
   separate process) through bench/wrk_callbacks.lua: verify, decrypt, parse, store durably, encrypted
   reply. Every acknowledged message must be stored exactly once.
2. wecomd, duplicate path: the same process is sent the SAME callbacks again, only those it stored
   in step 1, as WeCom's retries are. Each must be answered without a second row; the replay rate
   against the new-message rate is the duplicate path's figure (it should be at least 1).
3. bench/hello_server.py: a bare Tornado handler that reads the POST body and answers; the ceiling.
4. bench/protocol_server.py: bare Tornado doing only the protocol work (verify, decrypt, parse,
   encrypt the reply; nothing stored or logged); the issue #10 target is wecomd >= 0.75 x its rate.

Prints requests/s, p50/p99 latency, CPU per request (and the event loop thread's share of it), peak
RSS, the ratios wecomd / protocol-only, wecomd / hello and replay / new of each round, and with
--rounds > 1 their median and range. Ratios are what to compare: other load on the machine moves
absolute rates, and the servers of one round run within a minute of each other. Under such load
wecomd's rate suffers more than the single-threaded servers' (each callback waits for the writer
thread and a commit, each a wake-up to be scheduled): the ratio of CPU per request, also printed,
is steadier, and is where the rate ratio tends when both are CPU-bound.

--source DIR runs wecomd and the protocol-only server from another checkout (for instance
`git archive HEAD | tar -x -C /tmp/head`: a committed state while the working tree is being edited).
Needs wrk (Debian package `wrk`) and wechatpy (the test extra). bench/profile_callback.py shows
where a callback's time goes under the same load.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
CORP_ID = "ww0123456789abcdef"
TOKEN = "BenchToken0123456789"
AES_KEY = "".join(random.Random(7).choice(string.ascii_letters + string.digits) for _ in range(43))
TEXT = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[user%d]]></FromUserName>"
        "<CreateTime>%d</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[压测消息 %d]]></Content>"
        "<MsgId>%d</MsgId><AgentID>1000002</AgentID></xml>")
MSG_ID_BASE = 7_000_000_000_000_000_000  # callback i carries MsgId MSG_ID_BASE + i


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(path: Path, count: int) -> None:
    """N distinct callbacks, one per line: `path?query<TAB>body`, encrypted with wechatpy."""
    from wechatpy.crypto import _get_signature
    from wechatpy.enterprise.crypto import PrpCrypto

    key = base64.b64decode(AES_KEY + "=")
    now = int(time.time())
    with open(path, "w", encoding="utf-8") as out:
        for i in range(count):
            plain = TEXT % (CORP_ID, i % 500, now, i, MSG_ID_BASE + i)
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


def source_env(source: Path = ROOT) -> dict:
    """The environment that imports wecomd from the checkout `source`: PYTHONPATH comes before the
    editable install's finder; run it with cwd=source too, as `python -m` and `-c` put the current
    directory first."""
    return {**os.environ, "PYTHONPATH": str(source)}


def wecomd_command(conf: Path) -> list:
    return [sys.executable, "-m", "wecomd", "serve", "-c", str(conf)]


def start_wecomd(conf: Path, url: str, log: Path, source: Path = ROOT) -> subprocess.Popen:
    """`wecomd serve -c conf` from the checkout `source`, its output appended to `log`; returns once
    `url` answers /healthz."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(wecomd_command(conf), stdout=out, stderr=subprocess.STDOUT, env=source_env(source),
                                cwd=str(source))
    wait_http(url + "/healthz", proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def cpu_seconds(pid: int) -> float:
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict:
    """{thread id: CPU seconds} of every thread of `pid`; the main thread's id is the pid."""
    result = {}
    for task in Path("/proc/%d/task" % pid).iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        result[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return result


def peak_rss_mb(pid: int) -> float:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wrk_command(url: str, seconds: float, connections: int, data: Path) -> list:
    # Two wrk threads: this machine has two cores, and wrk's share of them is part of every server's run.
    return ["wrk", "-t2", "-c%d" % connections, "-d%ds" % seconds, "--timeout", "10s",
            "-s", str(ROOT / "bench" / "wrk_callbacks.lua"), url, "--", str(data), "2"]


def wrk_result(stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def run_wrk(url: str, args: argparse.Namespace, data: Path, pid: int) -> dict:
    """Drive `url` with the callbacks of `data`; the figures, with the server's CPU over the run."""
    cpu0 = thread_cpu_seconds(pid)
    out = subprocess.run(wrk_command(url, args.seconds, args.connections, data), capture_output=True,
                         text=True, check=True).stdout
    cpu1 = thread_cpu_seconds(pid)
    result = wrk_result(out)
    used = {tid: cpu1[tid] - cpu0.get(tid, 0.0) for tid in cpu1}
    result["cpu_s"] = sum(used.values())
    result["loop_cpu_s"] = used.get(pid, 0.0)
    result["rss_mb"] = peak_rss_mb(pid)
    return result


def measure(name: str, cmd: list, url: str, args: argparse.Namespace, data: Path, env: Optional[dict] = None,
            log: Path = Path(os.devnull), cwd: Path = ROOT) -> dict:
    """Start a server, run wrk against it once, stop it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out, env=env, cwd=str(cwd))
    try:
        wait_http(url.rsplit("/callback", 1)[0] + "/healthz", proc)
        result = run_wrk(url, args, data, proc.pid)
    finally:
        stop(proc)
    result["name"] = name
    return result


def inbound_counts(db: Path) -> tuple:
    """(inbound rows, duplicate dedup keys, total deliveries, max deliveries, automatic answers)."""
    with sqlite3.connect(str(db)) as conn:
        rows, dups, deliveries, most = conn.execute(
            "SELECT COUNT(*), COUNT(*) - COUNT(DISTINCT dedup_key), COALESCE(SUM(deliveries), 0), "
            "MAX(deliveries) FROM message WHERE direction = 'in'").fetchone()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(message)")}
        # A checkout from before automatic answers (migration 0007, --source) stores none: None.
        answers = conn.execute("SELECT COUNT(*) FROM message WHERE direction = 'out' AND automatic = 'passive'"
                               ).fetchone()[0] if "automatic" in columns else None
    return rows, dups, deliveries, most, answers


def settle(db: Path, quiet: float = 1.0, limit: float = 30.0) -> tuple:
    """inbound_counts once they stop changing: requests in flight when wrk stopped are still being
    stored (and answered to a closed connection) for a moment."""
    previous, deadline = None, time.monotonic() + limit
    while time.monotonic() < deadline:
        counts = inbound_counts(db)
        if counts == previous:
            break
        previous = counts
        time.sleep(quiet)
    return previous


def fsync_ms(directory: Path, count: int = 50) -> tuple:
    """(p50, p90) milliseconds of an fdatasync after a 4 KiB append in `directory`: what each group
    commit waits for at synchronous=FULL, on this disk at this moment."""
    probe, times = directory / "fsync.probe", []
    fd = os.open(str(probe), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fdatasync(fd)
            times.append(1e3 * (time.perf_counter() - started))
    finally:
        os.close(fd)
        probe.unlink()
    times.sort()
    return times[len(times) // 2], times[len(times) * 9 // 10]


def verify_new(db: Path, acknowledged: int, in_flight: int) -> tuple:
    """Every acknowledged message stored exactly once, with its app's automatic answer."""
    rows, dups, _, most, answers = settle(db)
    ok = dups == 0 and most == 1 and acknowledged <= rows <= acknowledged + in_flight and answers in (rows, None)
    return ok, ("%s: %d acknowledged, %d stored (the difference were in flight when wrk stopped), duplicate "
                "rows %d, max deliveries per message %s, automatic answers %s" % (
                    "OK" if ok else "FAILED", acknowledged, rows, dups, most, answers))


def verify_replay(db: Path, before: tuple, acknowledged: int, in_flight: int) -> tuple:
    """A replay adds no answer of its own, and each acknowledged retry counts one more delivery.
    Rows may still grow by the new messages that were in flight when the first phase's wrk stopped
    (answered to a closed connection, stored after its check): at most one per connection."""
    rows, dups, deliveries, most, answers = settle(db)
    retries = (deliveries - rows) - (before[2] - before[0])
    late = rows - before[0]
    ok = (dups == 0 and answers in (rows, None) and 0 <= late <= in_flight
          and acknowledged <= retries <= acknowledged + in_flight)
    return ok, ("%s: %d retries acknowledged, %d counted as deliveries, no row or answer added (%d new messages "
                "from the first phase stored late), max deliveries per message %s" % (
                    "OK" if ok else "FAILED", acknowledged, retries, late, most))


def stored_msg_ids(db: Path) -> list:
    with sqlite3.connect(str(db)) as conn:
        return [int(row[0]) for row in conn.execute(
            "SELECT msg_id FROM message WHERE direction = 'in' ORDER BY id")]


def write_replay(data: Path, target: Path, msg_ids: list) -> int:
    """The callbacks of `data` whose messages are stored (by MsgId), in the order they were stored."""
    with open(data, encoding="utf-8") as src:
        lines = src.readlines()
    with open(target, "w", encoding="utf-8") as out:
        for msg_id in msg_ids:
            out.write(lines[msg_id - MSG_ID_BASE])
    return len(msg_ids)


def writer_line(log: Path) -> str:
    lines = [line for line in log.read_text("utf-8", "replace").splitlines() if "database writer:" in line]
    return lines[-1].split("database writer: ", 1)[1] if lines else "-"


def run_wecomd(work: Path, data: Path, args: argparse.Namespace) -> tuple:
    """New messages, then the same ones replayed, on one wecomd process: (new, replay, checks)."""
    port = free_port()
    conf = write_config(work, port)
    url, log, db = "http://127.0.0.1:%d" % port, work / "wecomd.log", work / "bench.db"
    proc = start_wecomd(conf, url, log, args.source)
    checks = []
    try:
        new = run_wrk(url + "/callback/bench", args, data, proc.pid)
        ok, text = verify_new(db, new["ok"], args.connections)
        checks.append((ok, "new messages, exactly once: " + text))
        if new["wrapped"]:
            checks.append((False, "%d requests repeated a message: raise --messages above %d"
                           % (new["wrapped"], new["requests"])))
        before = inbound_counts(db)
        replay_data = work / "replay.txt"
        write_replay(data, replay_data, stored_msg_ids(db))
        replay = run_wrk(url + "/callback/bench", args, replay_data, proc.pid)
        ok, text = verify_replay(db, before, replay["ok"], args.connections)
        checks.append((ok, "replayed (already stored) messages: " + text))
    finally:
        stop(proc)
    checks.append((True, "group commit: %s" % writer_line(log)))
    new["name"], replay["name"] = "wecomd new", "wecomd replay"
    return new, replay, checks


def run_round(work: Path, data: Path, args: argparse.Namespace) -> dict:
    conditions = (os.getloadavg()[0],) + fsync_ms(work)
    new, replay, checks = run_wecomd(work, data, args)
    port = free_port()
    hello = measure("bare tornado", [sys.executable, str(ROOT / "bench" / "hello_server.py"), str(port)],
                    "http://127.0.0.1:%d/callback/bench" % port, args, data)
    port = free_port()
    protocol = measure("protocol only", [sys.executable, str(args.source / "bench" / "protocol_server.py"),
                                         str(port), TOKEN, AES_KEY, CORP_ID],
                       "http://127.0.0.1:%d/callback/bench" % port, args, data, source_env(args.source),
                       cwd=args.source)
    return {"servers": (new, replay, hello, protocol), "checks": checks, "conditions": conditions,
            "ratios": {"wecomd / protocol only": new["rps"] / protocol["rps"],
                       "wecomd / bare tornado": new["rps"] / hello["rps"],
                       "protocol only / bare tornado": protocol["rps"] / hello["rps"],
                       "replay / new": replay["rps"] / new["rps"],
                       # What the rate ratio tends to when both are CPU-bound; steadier on a busy machine.
                       "CPU per request protocol only / wecomd": (protocol["cpu_s"] / max(protocol["requests"], 1))
                       / (new["cpu_s"] / max(new["requests"], 1))}}


def print_round(number: int, result: dict) -> None:
    print("\nround %d (load average %.1f; fsync of a 4 KiB append p50 %.1f ms, p90 %.1f ms)"
          % ((number,) + result["conditions"]))
    print("%-15s %8s %8s %8s %12s %9s %9s %8s" % ("", "req/s", "p50 ms", "p99 ms", "CPU us/req", "loop CPU",
                                                 "peak RSS", "non-200"))
    for r in result["servers"]:
        requests = max(r["requests"], 1)
        print("%-15s %8.0f %8.2f %8.2f %12.0f %8.0f%% %7.1fMB %8d" % (
            r["name"], r["rps"], r["p50_us"] / 1000, r["p99_us"] / 1000, 1e6 * r["cpu_s"] / requests,
            100 * r["loop_cpu_s"] / max(r["cpu_s"], 1e-9), r["rss_mb"], r["non200"] + r["errors"]))
    print("  " + "   ".join("%s %.2f" % item for item in result["ratios"].items()))
    for ok, text in result["checks"]:
        print("  " + text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="per server and phase (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections (default 16)")
    parser.add_argument("--messages", type=int, default=40000,
                        help="distinct callbacks; more than wecomd stores in --seconds (default 40000)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every server this many times (default 1)")
    parser.add_argument("--source", type=Path, default=ROOT,
                        help="checkout to run wecomd and bench/protocol_server.py from (default: this one)")
    args = parser.parse_args()
    args.source = args.source.resolve()
    found = subprocess.run([sys.executable, "-c", "import wecomd; print(wecomd.__file__)"], env=source_env(args.source),
                           cwd=str(args.source), capture_output=True, text=True, check=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="wecomd-load-"))
    data = work / "callbacks.txt"
    started = time.monotonic()
    generate(data, args.messages)
    print("generated %d distinct callbacks with wechatpy in %.1fs; wecomd from %s; %d connections, %d s per "
          "phase, wrk -t2, %d CPUs, load average %.1f" % (args.messages, time.monotonic() - started, found,
                                                         args.connections, args.seconds, os.cpu_count() or 0,
                                                         os.getloadavg()[0]))
    results = []
    for number in range(1, args.rounds + 1):
        round_dir = work / ("round%d" % number)
        round_dir.mkdir()
        results.append(run_round(round_dir, data, args))
        print_round(number, results[-1])
    if len(results) > 1:
        print("\nover %d rounds: median (min-max)" % len(results))
        for name in results[0]["ratios"]:
            values = [r["ratios"][name] for r in results]
            print("  %-40s %.2f (%.2f-%.2f)" % (name, statistics.median(values), min(values), max(values)))
        for index, r in enumerate(results[0]["servers"]):
            values = [res["servers"][index]["rps"] for res in results]
            print("  %-40s %.0f req/s (%.0f-%.0f)" % (r["name"], statistics.median(values), min(values), max(values)))
    return 0 if all(ok for r in results for ok, _ in r["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
