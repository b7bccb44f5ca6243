"""An experiment for the next step of 微信客服's Speed targets (docs/kf.md): kf pages stored by a
second process on the same SQLite file while `wecomd serve` answers callbacks.

    python bench/kf_store_elsewhere.py [--messages 60000] [--slice 50] [--gap 0]

`wecomd serve` runs as in bench/kf_pull.py, with app text callbacks at 20/s (timed before and during,
as the load process saw them and as the server logged its own time). A second process opens the same
database with wecomd's store and keeps and stores kf pages as the daemon's pull does (stage_page,
then store_slice `--slice` items a transaction, each slice committed with synchronous=NORMAL, BEGIN
IMMEDIATE), decoding and preparing the items itself, as fast as it can, pausing `--gap` seconds
after each slice. No live events or rules run for what it stores.

It shows what a process of its own would give the pull (its own interpreter lock), and what the
callbacks then meet instead: SQLite's write lock, which the daemon's writer waits for in short tries
(DbWriter._begin_immediate; before, in SQLite's busy handler, whose sleeps of 1, 2, 5, 10 ms and up
to 100 ms made a tail of hundreds of milliseconds).
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kf_pull as bench  # noqa: E402  (its server, load process and figures)


def storer(db_path: Path, count: int, slice_size: int, gap: float, out) -> None:
    from wecomd.kf import items
    from wecomd.store import Store

    store, now = Store(str(db_path)), datetime.utcnow()
    store.kf.claim(bench.KFID, "kefu", "experiment", now, now + timedelta(hours=1))
    backlog = [{"msgid": "exp-%07d" % i, "send_time": int(time.time()) - 3600, "origin": 3, "msgtype": "text",
                "open_kfid": bench.KFID, "external_userid": "wmExp%05d" % (i % 2000),
                "text": {"content": "积压消息 %d：订单什么时候发货？" % i}} for i in range(count)]
    started = time.perf_counter()
    for first in range(0, count, 1000):
        page = backlog[first:first + 1000]
        with store.db.atomic("IMMEDIATE"):
            page_id = store.kf.stage_page("kefu", bench.KFID, "experiment", page, "C%d" % first, now,
                                          now + timedelta(hours=1))
        for start in range(0, len(page), slice_size):
            decoded = [items.decode(item, now) for item in page[start:start + slice_size]]
            prepared = store.kf.prepare("kefu", decoded)
            store.db.execute_sql("PRAGMA synchronous = NORMAL")
            with store.db.atomic("IMMEDIATE"):
                store.kf.store_slice("kefu", page_id, decoded, now, start + slice_size >= len(page), prepared)
            store.db.execute_sql("PRAGMA synchronous = FULL")
            if gap:
                time.sleep(gap)
    out.put(time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--slice", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds the storer pauses after each slice")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wecomd-bench-kf-elsewhere-"))
    port = bench.free_port()
    # inline: the daemon pulls nothing itself and does not know of the storer, so its callbacks are
    # stored as usual, waiting for the storer's write lock (what this measures), never journaled.
    server, log = bench.start_server(work, port, bench.free_port(), "inline")
    try:
        bench.wait_healthy(port, server, log)
        stop, pulling, results = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Queue()
        load = multiprocessing.Process(target=bench.load_process, args=(port, 20.0, "unused", pulling, stop, results),
                                       daemon=True)
        load.start()
        time.sleep(3.0)  # callbacks alone first
        out = multiprocessing.Queue()
        started, started_wall = time.monotonic(), time.time()
        process = multiprocessing.Process(target=storer, args=(work / "wecomd.db", args.messages, args.slice,
                                                               args.gap, out))
        process.start()
        seconds = out.get(timeout=900)
        process.join(30)
        ended, ended_wall = time.monotonic(), time.time()
        stop.set()
        outcome = results.get(timeout=120)
        load.join(30)
    finally:
        server.terminate()
        server.wait(30)
    print("the second process stored %d messages in %.2f s: %.0f messages/s (slices of %d, %.1f ms apart)"
          % (args.messages, seconds, args.messages / seconds, args.slice, 1000 * args.gap))
    bench.print_callbacks(outcome, log, (started, ended), (started_wall, ended_wall), "the second process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
