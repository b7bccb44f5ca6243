"""DbWriter: one thread, calls in order, group commit with a savepoint per call."""
from __future__ import annotations

import asyncio
import sqlite3

import peewee
import pytest

from wecomd.store import StoreError
from wecomd.store.writer import DbWriter, single_write


@pytest.fixture
def db(tmp_path):
    database = peewee.SqliteDatabase(str(tmp_path / "w.db"), pragmas={"journal_mode": "wal", "synchronous": "full"})
    writer = DbWriter(database, lambda exc: StoreError(str(exc)))
    asyncio.run(writer.run(lambda: database.execute_sql("CREATE TABLE t (v INTEGER UNIQUE)"), alone=True))
    yield database, writer, tmp_path / "w.db"
    writer.close()


def insert(database, value):
    database.execute_sql("INSERT INTO t (v) VALUES (?)", (value,))
    return value


def test_concurrent_calls_share_commits_and_each_is_durable_when_answered(db):
    database, writer, path = db
    seen_by_other_connection = []

    async def one(i):
        await writer.run(insert, database, i)
        # answered: it must already be committed, visible to a separate connection
        with sqlite3.connect(str(path)) as other:
            seen_by_other_connection.append(other.execute("SELECT 1 FROM t WHERE v = ?", (i,)).fetchone() is not None)

    async def main():
        await asyncio.gather(*(one(i) for i in range(300)))

    asyncio.run(main())
    assert all(seen_by_other_connection) and len(seen_by_other_connection) == 300
    assert writer.calls >= 300
    assert writer.batches < writer.calls  # group commit happened
    with sqlite3.connect(str(path)) as other:
        assert other.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 300


def test_a_failing_call_does_not_undo_the_others_in_its_batch(db):
    database, writer, path = db

    async def main():
        return await asyncio.gather(*(writer.run(insert, database, v) for v in (1, 2, 2, 3)), return_exceptions=True)

    results = asyncio.run(main())
    assert results[:2] == [1, 2] and results[3] == 3
    assert isinstance(results[2], peewee.IntegrityError)
    with sqlite3.connect(str(path)) as other:
        assert sorted(r[0] for r in other.execute("SELECT v FROM t")) == [1, 2, 3]


@single_write
def insert_one_statement(database, value):
    return insert(database, value)


def test_a_failing_single_write_call_runs_without_savepoint_and_spares_its_batch(db):
    database, writer, path = db
    statements = []

    def trace(callback):  # on the writer thread: peewee keeps one connection per thread
        database.connection().set_trace_callback(callback)

    async def main(fn):
        await writer.run(trace, statements.append, alone=True)
        try:
            return await asyncio.gather(*(writer.run(fn, database, v) for v in (1, 2, 2, 3)),
                                        return_exceptions=True)
        finally:
            await writer.run(trace, None, alone=True)

    results = asyncio.run(main(insert_one_statement))
    assert results[:2] == [1, 2] and results[3] == 3
    assert isinstance(results[2], peewee.IntegrityError)  # SQLite undid that one statement only
    assert any(s.startswith("INSERT") for s in statements)
    assert not [s for s in statements if s.upper().startswith("SAVEPOINT")]
    # The same calls unmarked each get a savepoint: the trace sees them.
    statements.clear()
    asyncio.run(main(lambda database, v: insert(database, v + 10)))
    assert [s for s in statements if s.upper().startswith("SAVEPOINT")]
    with sqlite3.connect(str(path)) as other:
        assert sorted(r[0] for r in other.execute("SELECT v FROM t")) == [1, 2, 3, 11, 12, 13]


def test_a_failed_commit_fails_every_call_of_the_batch(db):
    database, writer, path = db
    asyncio.run(writer.run(database.execute_sql, "PRAGMA query_only = 1"))

    async def main():
        return await asyncio.gather(*(writer.run(insert, database, v) for v in (10, 11)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, Exception) for r in results)
    asyncio.run(writer.run(database.execute_sql, "PRAGMA query_only = 0"))
    assert asyncio.run(writer.run(insert, database, 12)) == 12


def test_calls_run_in_order_on_one_thread(db):
    database, writer, _ = db
    import threading

    order, threads = [], set()

    def record(i):
        order.append(i)
        threads.add(threading.get_ident())

    async def main():
        await asyncio.gather(*(writer.run(record, i) for i in range(50)))

    asyncio.run(main())
    assert order == list(range(50))
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_alone_calls_run_outside_a_transaction(db):
    database, writer, _ = db
    assert asyncio.run(writer.run(lambda: database.in_transaction(), alone=True)) is False
    assert asyncio.run(writer.run(lambda: database.in_transaction())) is True


def test_a_bulky_call_runs_alone_after_the_ordinary_calls_waiting_with_it(db):
    """Pages of a 微信客服 pull (bulky) queued around a callback's call: the callback commits in a batch
    of its own before them, whether it came before or after them, instead of waiting for a page in
    the same transaction; the pages keep their order."""
    import threading
    import time

    from wecomd.store.writer import bulky

    database, writer, path = db
    gate = threading.Event()
    order: list = []

    def blocker():
        gate.wait(5)

    @bulky
    def page(value):
        time.sleep(0.3)
        insert(database, value)
        order.append(value)

    async def main():
        first = asyncio.ensure_future(writer.run(blocker))
        await asyncio.sleep(0.05)  # the writer is busy: what follows queues up
        light = asyncio.ensure_future(writer.run(insert, database, 1))
        heavy = asyncio.ensure_future(writer.run(page, 2))
        after = asyncio.ensure_future(writer.run(insert, database, 3))
        second = asyncio.ensure_future(writer.run(page, 4))
        await asyncio.sleep(0.05)
        for name, future in (("light", light), ("page", heavy), ("after", after), ("second", second)):
            future.add_done_callback(lambda _, name=name: answered.setdefault(name, time.monotonic()))
        gate.set()
        await asyncio.gather(first, light, heavy, after, second)

    answered: dict = {}
    asyncio.run(main())
    # Both light calls were committed before the first page ran its 0.3 s (with it they would be
    # answered with it), and the pages ran one after the other, in order.
    assert answered["page"] - answered["light"] > 0.2 and answered["page"] - answered["after"] > 0.2, answered
    assert answered["second"] - answered["page"] > 0.2 and order == [2, 4], (answered, order)
    with sqlite3.connect(str(path)) as other:
        assert sorted(v for (v,) in other.execute("SELECT v FROM t")) == [1, 2, 3, 4]


def test_a_redoable_bulky_call_alone_commits_without_waiting_for_the_disk(db):
    """A slice of a kept 微信客服 page (bulky and redoable) commits with synchronous=NORMAL; every other
    transaction, before and after it and when it fails, with FULL (2)."""
    from wecomd.store.writer import bulky, redoable

    database, writer, path = db

    def synchronous():
        return database.execute_sql("PRAGMA synchronous").fetchone()[0]

    @redoable
    @bulky
    def slice_of_a_page(value):
        insert(database, value)
        return synchronous()

    @redoable
    @bulky
    def failing_slice():
        raise RuntimeError("no")

    async def main():
        before = await writer.run(synchronous)
        during = await writer.run(slice_of_a_page, 1)
        with pytest.raises(RuntimeError):
            await writer.run(failing_slice)
        return before, during, await writer.run(synchronous)

    assert asyncio.run(main()) == (2, 1, 2)
    with sqlite3.connect(str(path)) as other:
        assert [v for (v,) in other.execute("SELECT v FROM t")] == [1]


def test_a_resumable_call_pauses_for_the_ordinary_calls_waiting_and_is_resumed_first(db):
    """A resumable bulky call that sees ordinary calls waiting stops, commits what it did, and is
    called again once they ran, before the bulky calls queued after it; its caller gets the parts
    joined. A failure after a pause carries the parts done."""
    import threading

    from wecomd.store.writer import Paused, bulky, resumable

    database, writer, path = db
    log, started, go_on = [], threading.Event(), threading.Event()

    @resumable
    @bulky
    def rows(values, pause=None, fail_at=None, hold=1):
        done = []
        for value in values:
            if database.execute_sql("SELECT 1 FROM t WHERE v = ?", (value,)).fetchone():
                continue  # stored by an earlier part
            if done and pause is not None and pause():
                return Paused(done)
            if value == fail_at:
                raise ValueError("refused")
            insert(database, value)
            log.append(("bulky", value))
            done.append(value)
            if value == hold:  # hold this part until a callback waits
                started.set()
                go_on.wait(5)
        return done

    @bulky
    def later():
        log.append(("later", None))
        return "later"

    def ordinary(value):
        log.append(("ordinary", value))
        return insert(database, value)

    async def main():
        first = asyncio.ensure_future(writer.run(rows, [1, 2, 3, 4]))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        queued = asyncio.ensure_future(writer.run(later))
        callback = asyncio.ensure_future(writer.run(ordinary, 100))
        while not writer.ordinary_waiting():
            await asyncio.sleep(0.001)
        go_on.set()
        return await asyncio.gather(first, callback, queued)

    assert asyncio.run(main()) == [[1, 2, 3, 4], 100, "later"]
    assert log == [("bulky", 1), ("ordinary", 100), ("bulky", 2), ("bulky", 3), ("bulky", 4), ("later", None)]
    assert writer.pauses == 1 and not writer.ordinary_waiting()

    async def failing():
        started.clear()
        go_on.clear()
        job = asyncio.ensure_future(writer.run(rows, [1, 5, 6, 7], fail_at=6, hold=5))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        callback = asyncio.ensure_future(writer.run(ordinary, 200))
        while not writer.ordinary_waiting():
            await asyncio.sleep(0.001)
        go_on.set()
        return await asyncio.gather(job, callback, return_exceptions=True)

    log.clear()
    error, answered = asyncio.run(failing())
    assert answered == 200 and isinstance(error, ValueError)
    assert error.partial == [5]  # stored before the pause: the caller still learns of it
    with sqlite3.connect(str(path)) as other:
        assert sorted(r[0] for r in other.execute("SELECT v FROM t")) == [1, 2, 3, 4, 5, 100, 200]


def test_each_transaction_and_each_calls_wait_are_reported_by_kind(db):
    """on_batch (the metrics): ordinary calls queued together are one "call" transaction with a wait
    for each; a bulky call is a "bulky" one; a resumed call's wait counts once; a call run alone is
    "alone". Waits and times are never negative, and a reporter that fails stops nothing."""
    import threading

    from wecomd.store.writer import Paused, bulky, resumable

    database, writer, _ = db
    reports: list = []
    writer.on_batch = lambda *report: reports.append(report)
    started, go_on = threading.Event(), threading.Event()

    @resumable
    @bulky
    def rows(values, pause=None):
        done = []
        for value in values:
            if database.execute_sql("SELECT 1 FROM t WHERE v = ?", (value,)).fetchone():
                continue
            if done and pause is not None and pause():
                return Paused(done)
            insert(database, value)
            done.append(value)
            started.set()
            go_on.wait(5)
        return done

    async def main():
        bulk = asyncio.ensure_future(writer.run(rows, [1, 2]))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        calls = [asyncio.ensure_future(writer.run(insert, database, v)) for v in (10, 11, 12)]
        while not writer.ordinary_waiting():
            await asyncio.sleep(0.001)
        go_on.set()
        return await asyncio.gather(bulk, *calls)

    asyncio.run(writer.run(lambda: database.execute_sql("CREATE TABLE u (v INTEGER)"), alone=True))
    assert asyncio.run(main()) == [[1, 2], 10, 11, 12]
    kinds = [(kind, len(waits)) for kind, _, waits in reports]
    # created alone; the bulky call's first part (paused); the three calls together; its second part
    assert kinds == [("alone", 1), ("bulky", 1), ("call", 3), ("bulky", 0)], kinds
    assert all(seconds >= 0 and all(w >= 0 for w in waits) for _, seconds, waits in reports)

    writer.on_batch = lambda *report: 1 / 0  # a broken reporter: logged, the call still answered
    assert asyncio.run(writer.run(insert, database, 20)) == 20
