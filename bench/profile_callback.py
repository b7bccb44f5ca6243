"""Where a callback's time goes: py-spy samples of wecomd under bench/load.py's load.

    python bench/profile_callback.py [--seconds 24] [--connections 16] [--rate 200] [--source DIR]
                                     [--keep]

1. Starts `wecomd serve` as bench/load.py does (one app with a passive text reply, SQLite WAL,
   synchronous=FULL) and drives it with wrk and the same wechatpy callbacks: first new messages,
   then (phase "replay") the same callbacks again, already stored, as WeCom's retries are; then
   bench/protocol_server.py under the same load (--no-protocol skips it), the floor to compare with.
2. In each phase, after a second of warm-up, samples the process with py-spy three times in a
   row: with --idle (wall time: where each thread waits too, the commit's fsync included), without
   (what runs on a CPU), and with --gil (what holds the GIL, which the two threads share). The
   callbacks stored in each window are counted in the database, so every figure is in microseconds
   per callback.
3. Groups the samples per thread (the event loop, MainThread; the database writer, wecomd-db) by
   what they are: crypto, XML parse, logging, metrics, rules, tornado HTTP ... on the loop; BEGIN,
   each store call's SQL, savepoints, COMMIT, Python on the writer. Then the innermost wecomd
   functions, the most expensive first. "CPU us" is the group's share of the thread's on-CPU
   samples times the thread's CPU time from /proc, per callback; "GIL us" is time holding the GIL;
   "wall us" counts waiting too (for epoll, the writer's queue, the disk, the GIL). The two threads
   share one GIL: only SQLite's own work (statements, COMMIT) runs beside the loop, so the sum of
   both threads' "GIL us" bounds the rate (1e6 / that sum callbacks per second).
4. Splits a message INSERT's time inside SQLite (statement and COMMIT, synchronous=OFF) into the
   row, the FTS index and the conversation summary (triggers dropped one at a time in copies of the
   database), and times COMMIT's fsync at the run's batch size: what py-spy cannot see in SQLite.

py-spy (the bench extra: pip install -e '.[bench]') pauses the process for each sample: rates under
the profiler are a little lower than bench/load.py's. Needs wrk and wechatpy as bench/load.py does.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (bench/load.py: the callback generator, config and helpers)

FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
LOOP, WRITER = "MainThread", "wecomd-db"
ENTRY = ("wecomd/__main__.py", "wecomd/cli/")

# Event loop: the first of these that matches a frame, from the innermost frame outwards, names a
# sample. Standard-library helpers (re, json, uuid, contextlib ...) match nothing and so count for
# their caller; asyncio counts only when nothing else on the stack does.
LOOP_GROUPS = (
    ("idle (epoll wait)", lambda fn, f: f == "selectors.py" and fn.endswith(".select")),
    ("crypto: signature, AES, base64, nonce", lambda fn, f: f.startswith((
        "wecomd/wecom/crypto.py", "Crypto/", "base64.py", "hashlib.py", "secrets.py", "random.py"))),
    ("XML parse: envelope, message, dedup key", lambda fn, f: f.startswith((
        "wecomd/wecom/messages.py", "wecomd/wecom/envelopes.py", "xml/", "defusedxml/", "pyexpat"))),
    ("reply XML", lambda fn, f: f.startswith("wecomd/wecom/replies.py")),
    ("logging: the request's log line", lambda fn, f: f.startswith(("logging/", "wecomd/logs.py"))),
    ("metrics", lambda fn, f: f.startswith(("wecomd/metrics.py", "prometheus_client/"))),
    ("rules, takeover, default reply", lambda fn, f: f.startswith("wecomd/automation/")),
    ("live feed: event, publish", lambda fn, f: f.startswith(("wecomd/live.py", "wecomd/hub.py"))
        or (f.startswith("wecomd/services.py") and "message_stored" in fn)),
    ("store hand-off: writer queue, futures", lambda fn, f: f.startswith("wecomd/store/writer.py")
        or (f.startswith("wecomd/services.py") and fn.endswith(".db"))),
    ("inbox", lambda fn, f: f.startswith("wecomd/inbox.py")),
    ("callback handler, base handler", lambda fn, f: f.startswith("wecomd/handlers/")),
    ("other wecomd", lambda fn, f: f.startswith("wecomd/")),
    ("tornado HTTP: read, parse, route, headers, write", lambda fn, f: f.startswith((
        "tornado/", "email/", "http/", "urllib/", "socket.py", "selectors.py", "asyncio/selector_events.py"))),
)
LOOP_FALLBACK = "asyncio event loop"

# SQL run by these store calls, with what it is (the writer's groups name the call).
STORE_CALLS = {
    "save_inbound": "message INSERT or retry UPDATE; FTS and summary triggers inside",
    "save_answer": "automatic answer INSERT; FTS and summary triggers inside",
    "paused_until": "takeover pause SELECT",
}


@dataclass
class Frame:
    fn: str
    file: str

    @property
    def short(self) -> str:
        return "%s (%s)" % (self.fn, self.file)


def parse_frame(text: str) -> Frame:
    match = FRAME.match(text)
    return Frame(match["fn"], match["file"]) if match else Frame(text, "")


@dataclass
class Profile:
    """Samples of one py-spy record: {thread name: Counter(group)} and Counter(innermost wecomd function)."""

    ticks: Counter = field(default_factory=Counter)
    groups: dict = field(default_factory=lambda: defaultdict(Counter))
    functions: dict = field(default_factory=lambda: defaultdict(Counter))
    tids: dict = field(default_factory=dict)


def loop_group(frames: list) -> str:
    for frame in reversed(frames):
        if frame.file.startswith(ENTRY):  # `wecomd serve` runs the loop: below it is the loop's own work
            continue
        for name, test in LOOP_GROUPS:
            if test(frame.fn, frame.file):
                return name
    return LOOP_FALLBACK


def _store_call(frames: list, index: int) -> str:
    """The wecomd function that ran the SQL at frames[index] (execute_sql), with what it is."""
    for frame in reversed(frames[:index]):
        if frame.file.startswith("wecomd/") and not frame.file.startswith("wecomd/store/writer.py"):
            short = frame.fn.rsplit(".", 1)[-1]
            note = STORE_CALLS.get(short)
            return "SQL: %s%s" % (frame.fn, " (%s)" % note if note else "")
    return "SQL: other"


def writer_group(frames: list) -> str:
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        if frame.file == "peewee.py":
            if frame.fn in ("Database.commit", "_transaction.commit"):
                return "COMMIT (WAL append + fsync)"
            if frame.fn in ("SqliteDatabase.begin", "_transaction._begin", "Database.begin"):
                return "BEGIN IMMEDIATE"
            if frame.fn.startswith("_savepoint") or frame.fn == "Database.savepoint":
                return "SAVEPOINT / RELEASE (one per store call)"
            if frame.fn == "Database.execute_sql":
                caller = frames[index - 1] if index else frame
                if caller.file == "peewee.py" and caller.fn.startswith("_savepoint"):
                    return "SAVEPOINT / RELEASE (one per store call)"
                return _store_call(frames, index)
            continue
        if frame.file.startswith("wecomd/store/writer.py"):
            if frame.fn.endswith(("_resolve_all", "_settle", "_resolve")):
                return "hand results back to the loop"
            if frame.fn == "DbWriter._loop" and index == len(frames) - 1:
                return "idle (waiting for work)"
            continue
        if frame.file.startswith("wecomd/"):
            return "Python in store calls: row values, JSON, fetching RETURNING"
    return "other"


def innermost_wecomd(frames: list) -> str:
    """The innermost wecomd frame, with the library the sample was in below it, if any. The entry
    point (wecomd/__main__.py, wecomd/cli/) does not count: below it is the event loop's own work."""
    for index in range(len(frames) - 1, -1, -1):
        if frames[index].file.startswith("wecomd/") and not frames[index].file.startswith(ENTRY):
            below = frames[index + 1].file.split("/", 1)[0] if index + 1 < len(frames) else ""
            return "%s%s" % (frames[index].fn, " -> %s" % below if below else "")
    # No wecomd frame: name what the event loop was running (its callback), or the loop itself. The
    # outermost frame is the program's (wecomd's __main__, or a bench server's script).
    outside = [f for f in frames[1:] if not f.file.startswith(ENTRY + ("<frozen", "threading.py"))]
    called = [f for f in outside if not f.file.startswith("asyncio/")]
    if called:
        return "(no wecomd frame) %s -> %s" % (called[0].short, called[-1].file.split("/", 1)[0])
    return "(no wecomd frame) %s" % (outside[-1].short if outside else "?")


def read_raw(path: Path) -> Profile:
    """py-spy's --format raw with --threads: `thread (TID): NAME;frame;...;frame COUNT` per line."""
    profile = Profile()
    for line in path.read_text("utf-8", "replace").splitlines():
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        tid, _, name = parts[0].partition(": ")
        name = name or tid
        profile.tids[name] = int(re.sub(r"\D", "", tid) or 0)
        frames = [parse_frame(p) for p in parts[1:]]
        n = int(count)
        profile.ticks[name] += n
        group = (loop_group if name == LOOP else writer_group)(frames)
        profile.groups[name][group] += n
        if not group.startswith("idle"):
            profile.functions[name][innermost_wecomd(frames)] += n
    return profile


def delivered(db: Path) -> int:
    """Deliveries stored so far: a new message adds one, a retry one more to its row."""
    with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as conn:
        return conn.execute("SELECT COALESCE(SUM(deliveries), 0) FROM message WHERE direction = 'in'").fetchone()[0]


@dataclass
class Window:
    profile: Profile
    seconds: float
    callbacks: int
    cpu: dict  # thread id -> CPU seconds in the window


MODES = {"wall": ["--idle"], "cpu": [], "gil": ["--gil"]}


def record(pid: int, db: Optional[Path], out: Path, seconds: int, rate: int, mode: str) -> Window:
    """One py-spy window: every sample ("wall"), running threads only ("cpu"), or only the thread
    holding the GIL ("gil"). Its callbacks are counted in `db`, or (None) left to the caller."""
    cmd = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--threads", "--rate", str(rate),
           "--duration", str(seconds), "-o", str(out)] + MODES[mode]
    before, cpu0, started = delivered(db) if db else 0, load.thread_cpu_seconds(pid), time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed, cpu1, after = time.monotonic() - started, load.thread_cpu_seconds(pid), delivered(db) if db else 0
    cpu = {tid: cpu1[tid] - cpu0.get(tid, 0.0) for tid in cpu1}
    return Window(read_raw(out), elapsed, after - before, cpu)


def profile_phase(name: str, url: str, data: Path, pid: int, db: Optional[Path], work: Path,
                  args: argparse.Namespace) -> dict:
    """wrk on `data` for --seconds; meanwhile a wall, an on-CPU and a GIL py-spy window, one after
    the other. Without a database (the protocol-only server) a window's callbacks are wrk's rate
    times its length."""
    wrk = subprocess.Popen(load.wrk_command(url, args.seconds, args.connections, data), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)  # warm-up: connections open, the first batches committed
        each = max(1, (args.seconds - 3) // 3)
        wall, busy, gil = (record(pid, db, work / ("%s-%s.txt" % (name, mode)), each, args.rate, mode)
                           for mode in ("wall", "cpu", "gil"))
    finally:
        out = wrk.communicate()[0]
    result = load.wrk_result(out)
    if db is None:
        for window in (wall, busy, gil):
            window.callbacks = round(result["rps"] * window.seconds)
    return {"name": name, "wrk": result, "wall": wall, "busy": busy, "gil": gil}


def profile_protocol(data: Path, work: Path, args: argparse.Namespace) -> dict:
    """The same load and windows on bench/protocol_server.py: the floor wecomd is measured against."""
    port = load.free_port()
    cmd = [sys.executable, str(args.source / "bench" / "protocol_server.py"), str(port), load.TOKEN, load.AES_KEY,
           load.CORP_ID]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=load.source_env(args.source),
                            cwd=str(args.source))
    try:
        url = "http://127.0.0.1:%d/callback/bench" % port
        load.wait_http(url.rsplit("/callback", 1)[0] + "/healthz", proc)
        return profile_phase("protocol-only server", url, data, proc.pid, None, work, args)
    finally:
        load.stop(proc)


def _us(samples: int, window: Window, rate: int) -> float:
    return 1e6 * samples / rate / max(window.callbacks, 1)


def report_thread(thread: str, phase: dict, rate: int, top: int) -> None:
    """The thread's groups: share of its on-CPU samples, that share of its CPU time (/proc) per
    callback, time holding the GIL and wall time per callback. On a machine with other load, py-spy
    also counts a thread that is runnable but waiting for a core (or in fsync) as on CPU; /proc's CPU
    time does not, hence the scaling."""
    wall, busy, gil = phase["wall"], phase["busy"], phase["gil"]
    ticks = max(wall.profile.ticks[thread], 1)  # the on-CPU window is as long as the wall one
    groups = busy.profile.groups[thread]
    samples = max(sum(groups.values()), 1)
    tid = wall.profile.tids.get(thread)
    cpu_s = busy.cpu.get(tid, 0.0) if tid else 0.0
    cpu_us = 1e6 * cpu_s / max(busy.callbacks, 1)
    held = sum(gil.profile.groups[thread].values())
    print("\n  %s: CPU %.0f%% of the time (/proc), %.0f us per callback; running or runnable in %.0f%% of "
          "py-spy's samples; holds the GIL %.0f%% of the time" % (
              thread, 100 * cpu_s / busy.seconds, cpu_us, 100 * samples / ticks,
              100 * held / max(gil.seconds * rate, 1)))
    print("    %-62s %7s %8s %8s %8s" % ("per callback", "CPU %", "CPU us", "GIL us", "wall us"))
    names = sorted(set(wall.profile.groups[thread]) | set(groups),
                   key=lambda g: (-groups[g], -wall.profile.groups[thread][g]))
    total_wall = total_gil = 0.0
    for group in names:
        walled, holding = _us(wall.profile.groups[thread][group], wall, rate), _us(gil.profile.groups[thread][group], gil, rate)
        total_wall += walled
        total_gil += holding
        print("    %-62s %6.0f%% %8.0f %8.0f %8.0f" % (group[:62], 100 * groups[group] / samples,
                                                     cpu_us * groups[group] / samples, holding, walled))
    print("    %-62s %6.0f%% %8.0f %8.0f %8.0f" % ("total", 100, cpu_us, total_gil, total_wall))
    print("    innermost wecomd function (-> the library below it): share of CPU samples, CPU us per callback")
    for function, count in busy.profile.functions[thread].most_common(top):
        print("      %5.1f%% %6.0f  %s" % (100 * count / samples, cpu_us * count / samples, function[:104]))


def report_phase(phase: dict, args: argparse.Namespace) -> None:
    w = phase["wrk"]
    print("\n== phase %s: %.0f req/s under the profiler, p50 %.1f ms, p99 %.1f ms, non-200 %d; windows: wall %.1f s "
          "with %d callbacks, on CPU %.1f s with %d" % (
              phase["name"], w["rps"], w["p50_us"] / 1000, w["p99_us"] / 1000, w["non200"] + w["errors"],
              phase["wall"].seconds, phase["wall"].callbacks, phase["busy"].seconds, phase["busy"].callbacks))
    gil = phase["gil"]
    held = sum(sum(groups.values()) for groups in gil.profile.groups.values())
    per_callback = 1e6 * held / args.rate / max(gil.callbacks, 1)
    print("  the GIL is held %.0f%% of the time, %.0f us per callback: at most %.0f callbacks/s on one GIL" % (
        100 * held / max(gil.seconds * args.rate, 1), per_callback, 1e6 / max(per_callback, 1)))
    for thread in (LOOP, WRITER):
        if phase["wall"].profile.ticks[thread]:
            report_thread(thread, phase, args.rate, args.top)
    others = [t for t in phase["wall"].profile.ticks if t not in (LOOP, WRITER)]
    if others:
        print("\n  other threads (samples, wall): %s" % ", ".join("%s %d" % (t, phase["wall"].profile.ticks[t])
                                                                for t in others))


# ------------------------------------------------------------------ inside SQLite: what py-spy cannot see

TRIGGERS = {"FTS index": ("message_fts_insert",), "conversation summary": ("conversation_tally", "conversation_tally_no_user")}


def _timed_inserts(db: Path, rows: list, columns: list, batch: int, drop: tuple, sync: str) -> tuple:
    """Insert `rows` again (new dedup keys) in transactions of `batch` rows, with the triggers `drop`
    dropped, in WAL mode with `sync` (wecomd's is FULL): (statement seconds, COMMIT seconds, commits).
    COMMIT includes what FTS5 writes at the end of a transaction, and with FULL the WAL's fsync."""
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("PRAGMA synchronous=%s" % sync)
        for trigger in drop:
            conn.execute("DROP TRIGGER IF EXISTS %s" % trigger)
        key = columns.index("dedup_key")
        sql = 'INSERT INTO message (%s) VALUES (%s)' % (", ".join('"%s"' % c for c in columns),
                                                       ", ".join("?" * len(columns)))
        copies = [row[:key] + ("%s#copy" % row[key] if row[key] is not None else None,) + row[key + 1:] for row in rows]
        statements = commits = 0.0
        count = 0
        for start in range(0, len(copies), batch):
            conn.execute("BEGIN IMMEDIATE")
            t0 = time.perf_counter()
            for row in copies[start:start + batch]:
                conn.execute(sql, row)
            t1 = time.perf_counter()
            conn.execute("COMMIT")
            commits += time.perf_counter() - t1
            statements += t1 - t0
            count += 1
        return statements, commits, count
    finally:
        conn.close()


def _copy(source_db: Path, copy: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(str(copy) + suffix).unlink(missing_ok=True)
    with sqlite3.connect(str(source_db)) as src, sqlite3.connect(str(copy)) as dst:
        src.backup(dst)
    return copy


def sqlite_split(source_db: Path, work: Path, batch: int, limit: int = 4000) -> None:
    """A message INSERT with its triggers, without each, without both, at `batch` callbacks per
    transaction; each variant in a fresh copy of the run's database."""
    with sqlite3.connect(str(source_db)) as src:
        columns = [row[1] for row in src.execute("PRAGMA table_info(message)") if row[1] != "id"]
        rows = src.execute("SELECT %s FROM message ORDER BY id DESC LIMIT ?" % ", ".join('"%s"' % c for c in columns),
                           (limit,)).fetchall()[::-1]
        inbound = sum(1 for row in rows if row[columns.index("direction")] == "in")
    if not rows or not inbound:
        return
    per_commit = max(1, round(batch * len(rows) / inbound))  # a callback writes its message and its answer
    print("\n== inside SQLite: the run's last %d rows (%d messages and their automatic answers) inserted again into "
          "a copy of its database, %d rows per transaction (the run's %d store calls per commit)"
          % (len(rows), inbound, per_commit, batch))
    print("   %-40s %14s %14s %14s" % ("us per callback (sync OFF, least of 5)", "statements", "COMMIT", "together"))
    variants = [("as stored (both triggers)", ())] + [("without the %s" % k, v) for k, v in TRIGGERS.items()] + [
        ("without both", sum(TRIGGERS.values(), ()))]
    # CPU work inside SQLite, without the fsync (it varies with the disk's other load more than these
    # differ): the least of five, the variants interleaved; other load only ever adds time.
    runs: dict = defaultdict(list)
    for _ in range(5):
        for label, drop in variants:
            statements, commits, _ = _timed_inserts(_copy(source_db, work / "split.db"), rows, columns, per_commit,
                                                    drop, "off")
            runs[label].append((statements, commits))
    figures = {}
    for label, _ in variants:
        statements = min(r[0] for r in runs[label])
        commits = min(r[1] for r in runs[label])
        figures[label] = statements + commits
        print("   %-40s %14.0f %14.0f %14.0f" % (label, 1e6 * statements / inbound, 1e6 * commits / inbound,
                                                1e6 * (statements + commits) / inbound))
    whole = figures["as stored (both triggers)"]
    for name in TRIGGERS:
        print("   %-40s %44.0f" % ("-> the %s" % name, 1e6 * (whole - figures["without the %s" % name]) / inbound))
    print("   %-40s %44.0f" % ("-> the rows and their indexes", 1e6 * figures["without both"] / inbound))
    fsyncs = []
    for _ in range(5):
        _, full, count = _timed_inserts(_copy(source_db, work / "split.db"), rows, columns, per_commit, (), "full")
        fsyncs.append(full / count)
    off = min(r[1] for r in runs[variants[0][0]]) / count
    fsync = statistics.median(fsyncs) - off
    print("   COMMIT's fsync (synchronous=FULL less OFF): %.2f ms per transaction (median of 5, range %.2f-%.2f ms "
          "with FULL); %.0f us per callback at %d callbacks per commit" % (
              1e3 * fsync, 1e3 * min(fsyncs), 1e3 * max(fsyncs), 1e6 * fsync / batch, batch))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=24, help="wrk's run per phase (default 24)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--messages", type=int, default=40000)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    parser.add_argument("--top", type=int, default=12, help="innermost functions listed per thread")
    parser.add_argument("--source", type=Path, default=load.ROOT, help="checkout to run wecomd from")
    parser.add_argument("--no-protocol", dest="protocol", action="store_false",
                        help="skip profiling bench/protocol_server.py under the same load")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (py-spy's raw files)")
    args = parser.parse_args()
    args.source = args.source.resolve()
    if not shutil.which("py-spy"):
        raise SystemExit("needs py-spy: pip install -e '.[bench]'")
    work = Path(tempfile.mkdtemp(prefix="wecomd-profile-"))
    data = work / "callbacks.txt"
    load.generate(data, args.messages)
    port = load.free_port()
    conf = load.write_config(work, port)
    url, log, db = "http://127.0.0.1:%d" % port, work / "wecomd.log", work / "bench.db"
    proc = load.start_wecomd(conf, url, log, args.source)
    checks = []
    try:
        new = profile_phase("new", url + "/callback/bench", data, proc.pid, db, work, args)
        checks.append(load.verify_new(db, new["wrk"]["ok"], args.connections))
        before = load.inbound_counts(db)
        load.write_replay(data, work / "replay.txt", load.stored_msg_ids(db))
        replay = profile_phase("replay", url + "/callback/bench", work / "replay.txt", proc.pid, db, work, args)
        checks.append(load.verify_replay(db, before, replay["wrk"]["ok"], args.connections))
    finally:
        load.stop(proc)
    protocol = profile_protocol(data, work, args) if args.protocol else None
    commits = load.writer_line(log)
    print("wecomd from %s; %d connections; py-spy at %d Hz; group commit over the run: %s"
          % (args.source, args.connections, args.rate, commits))
    for phase in (new, replay, protocol):
        if phase:
            report_phase(phase, args)
    found = re.match(r"(\d+) store calls in (\d+) commits", commits)
    batch = max(1, round(int(found[1]) / int(found[2]))) if found else 8
    sqlite_split(db, work, batch)
    print()
    for ok, text in checks:
        print(text)
    if args.keep:
        print("raw py-spy samples in", work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
