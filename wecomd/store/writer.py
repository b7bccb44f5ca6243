"""DbWriter: the one thread that owns the database connection, committing queued calls together.

Every store call of the daemon runs here, in arrival order (bulky calls aside: below). Calls
that are queued while a transaction is being committed are run together in the next one (group
commit): each in its own savepoint, so one failing call does not undo the others, and each
caller's future resolves only after the transaction holding its call is durably committed. Under
load one fsync then covers many callbacks; when idle a call is run and committed at once, with no
added wait.

On SQLite a batch starts with BEGIN IMMEDIATE: the write lock is taken (waiting at most
busy_timeout) once per batch, so while another process holds the database locked the whole batch
fails after one wait instead of one wait per call. The writer waits for that lock itself, trying
again every fraction of a millisecond to 2 ms, not in SQLite's busy handler, whose sleeps grow to
100 ms and so would start the batch long after the other process let go. A database that refuses
the write lock for another reason (read-only) still runs the batch in a plain BEGIN: its reads
work, its writes fail one by one.

A call marked `bulky` (storing a whole page pulled from WeCom, milliseconds) runs in a transaction
of its own, and ordinary calls waiting in the queue go before the bulky calls waiting there (the
bulky ones keep their order among themselves). A callback's call then waits for at most the one
bulky call already running, never for pages queued before it or for a page's transaction to take
it in. Two calls waiting at once come from different coroutines (a caller awaits its call), so
neither depends on the other's effects.

A bulky call also marked `redoable` (what it writes can be made again from what is durable
already: a slice of a 微信客服 page kept with its cursor) is committed on SQLite without waiting for
the disk (synchronous=NORMAL for its transaction only). A crash may undo it, never partly, and the
next commit that waits for the disk (any callback's) makes it durable too: WAL commits are ordered.

A bulky call also marked `resumable` is asked, through its `pause` keyword (a callable), whether
ordinary calls are waiting; it may then stop at a consistent point, commit what it did, and return
Paused(part of its result). The writer runs the ordinary calls waiting and calls it again with the
same arguments (it must skip what it did already: a 微信客服 slice stores each message once by its
msgid), before any other bulky call; the caller gets the parts joined. A callback then waits for a
few rows of a slice, not for the slice. When the call fails after a pause, the error carries the
parts done (`partial`).

A call marked with `single_write` (its only write is one SQL statement) runs without a savepoint
on SQLite, which rolls a failed statement back on its own; PostgreSQL aborts the whole
transaction on any error, so there every call keeps its savepoint.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import peewee

logger = logging.getLogger(__name__)

MAX_BATCH = 256
LOCK_POLL = (0.0002, 0.002)  # seconds between tries for SQLite's write lock held elsewhere: first, most
_STOP = object()


@dataclass(frozen=True)
class Paused:
    """What a resumable call returns when it stopped for the ordinary calls waiting: its result so far."""

    part: list


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    alone: bool = False  # run outside any batch transaction (migrations, close)
    result: Any = field(default=None)
    error: Optional[BaseException] = None
    parts: list = field(default_factory=list)  # a resumable call's results before its pauses
    queued: float = field(default_factory=time.perf_counter)  # when `run` queued it
    started: bool = False  # its first batch began (a resumed call's wait is counted once)


def bulky(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a long store call (see the module docstring): it runs in a transaction of its own, after
    the ordinary calls waiting with it."""
    fn.bulky = True  # type: ignore[attr-defined]
    return fn


def redoable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a bulky store call whose writes can be made again after a crash (see the module
    docstring): its transaction's commit does not wait for the disk."""
    fn.redoable = True  # type: ignore[attr-defined]
    return fn


def resumable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a bulky store call that may pause for waiting ordinary calls (see the module docstring):
    it takes `pause` and returns Paused(part) when it stopped early, its (list) result otherwise."""
    fn.resumable = True  # type: ignore[attr-defined]
    return fn


def single_write(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a store call whose only write is a single SQL statement (see the module docstring)."""
    fn.single_write = True  # type: ignore[attr-defined]
    return fn


class DbWriter:
    """Runs store calls on one thread; see the module docstring for the commit rules."""

    def __init__(self, db: peewee.Database, wrap_error: Callable[[Exception], Exception], max_batch: int = MAX_BATCH,
                 on_batch: Optional[Callable[[str, float, list], None]] = None) -> None:
        self.db, self.wrap_error, self.max_batch = db, wrap_error, max_batch
        # on_batch(kind, seconds, waits), on this thread after each transaction (the metrics):
        # kind "call" (ordinary calls grouped), "bulky" or "alone"; the transaction's seconds; and
        # how long each call in it waited in the queue (a resumed call's wait once).
        self.on_batch = on_batch
        self._immediate = isinstance(db, peewee.SqliteDatabase)
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="wecomd-db", daemon=True)
        self._thread.start()
        self.batches = 0  # transactions committed, for the benchmark's figures
        self.calls = 0
        self.pauses = 0  # resumable calls that stopped for ordinary ones
        self._ordinary = 0  # ordinary calls queued and not started (for `pause`), under _count_lock
        self._count_lock = threading.Lock()
        self._busy: tuple = (None, 0)  # (the writer's connection, its busy_timeout in ms)

    async def run(self, fn: Callable[..., Any], *args: Any, alone: bool = False, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` on the database thread; return once its result is committed."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, args, kwargs, loop, loop.create_future(), alone)
        if not alone and not getattr(fn, "bulky", False):
            with self._count_lock:
                self._ordinary += 1
        self._queue.put(job)
        return await job.future

    def ordinary_waiting(self) -> bool:
        """Whether ordinary calls are queued and not started: a resumable call's `pause`."""
        return self._ordinary > 0

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join()

    def _loop(self) -> None:
        waiting: deque = deque()  # taken from the queue, not run yet
        while True:
            if not waiting:
                waiting.append(self._queue.get())
            self._take_queued(waiting)
            job = waiting[0]
            if job is _STOP:
                return
            if job.alone:
                self._run_alone(waiting.popleft())
                continue
            paused = self._run_batch(self._next_batch(waiting))
            if paused is not None:  # after the ordinary calls waiting, before the other bulky ones
                waiting.appendleft(paused)

    def _take_queued(self, waiting: deque) -> None:
        while True:
            try:
                waiting.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _next_batch(self, waiting: deque) -> list:
        """The ordinary calls at the front of `waiting` (up to max_batch, passing over bulky ones,
        stopping at a stop or a call that runs alone); else the first bulky call, by itself."""
        batch, passed = [], []
        while waiting and len(batch) < self.max_batch:
            job = waiting[0]
            if job is _STOP or job.alone:
                break
            waiting.popleft()
            (passed if getattr(job.fn, "bulky", False) else batch).append(job)
        waiting.extendleft(reversed(passed))
        if batch:
            with self._count_lock:
                self._ordinary -= len(batch)
        return batch or [waiting.popleft()]

    def _run_alone(self, job: _Job) -> None:
        started = time.perf_counter()
        try:
            job.result = job.fn(*job.args, **job.kwargs)
        except BaseException as exc:  # delivered to the caller, never lost on this thread
            job.error = exc
        self._observe("alone", started, [job])
        _resolve(job)

    def _observe(self, kind: str, started: float, batch: list) -> None:
        """Report a transaction to on_batch (never fails the batch)."""
        waits = [started - job.queued for job in batch if not job.started]
        for job in batch:
            job.started = True
        if self.on_batch is not None:
            try:
                self.on_batch(kind, time.perf_counter() - started, waits)
            except Exception:
                logger.exception("database writer: reporting a batch failed")

    def _run_batch(self, batch: list) -> Optional[_Job]:
        """Run and commit `batch`; the resumable call in it that paused, to be called again."""
        started = time.perf_counter()
        relaxed = self._immediate and len(batch) == 1 and getattr(batch[0].fn, "redoable", False)
        try:
            if relaxed:
                self.db.execute_sql("PRAGMA synchronous = NORMAL")
            with ExitStack() as stack:
                self._begin(stack)
                for job in batch:
                    self._run_in_savepoint(job)
        except Exception as exc:  # no write lock, or the commit failed: nothing of this batch is durable
            exc = _original(exc)
            logger.error("database commit failed for %d call(s): %s", len(batch), exc)
            error = self.wrap_error(exc)
            for job in batch:
                job.result, job.error = None, error
        finally:
            if relaxed:
                self._full_sync()
        self.batches += 1
        job = batch[0]
        self._observe("bulky" if getattr(job.fn, "bulky", False) else "call", started, batch)
        if getattr(job.fn, "resumable", False):
            if job.error is None and isinstance(job.result, Paused):
                job.parts += job.result.part  # committed: called again after the ordinary calls waiting
                self.pauses += 1
                return job
            if job.error is not None:
                with contextlib.suppress(AttributeError):  # what the parts before stored reaches the caller
                    job.error.partial = job.parts  # type: ignore[attr-defined]
            elif job.parts:
                job.result = job.parts + job.result
        self.calls += len(batch)
        _resolve_all(batch)
        return None

    def _full_sync(self) -> None:
        try:
            self.db.execute_sql("PRAGMA synchronous = FULL")
        except Exception:  # the next batches must never commit without the disk: stop them all
            logger.critical("database writer: cannot restore synchronous=FULL; stopping")
            raise

    def _begin(self, stack: ExitStack) -> None:
        """Open the batch's transaction in `stack`; see the module docstring."""
        if self._immediate:
            try:
                self._begin_immediate(stack)
                return
            except peewee.OperationalError as exc:
                if "locked" in str(exc).lower():  # still locked after busy_timeout: fail the batch
                    raise
        stack.enter_context(self.db.atomic())

    def _begin_immediate(self, stack: ExitStack) -> None:
        """BEGIN IMMEDIATE, waiting for another connection's write lock (another process: a `wecomd`
        command, a second daemon) for up to the connection's busy_timeout, in waits of LOCK_POLL
        rather than in SQLite's busy handler, whose sleeps grow to 100 ms: the batch then starts
        within a millisecond or two of the lock's release. The busy_timeout is back in force once
        the lock is taken, for the statements in the batch and for the calls run alone."""
        conn = self.db.connection()
        if conn is not self._busy[0]:  # a new connection: its busy_timeout (the pragma set on opening)
            self._busy = (conn, conn.execute("PRAGMA busy_timeout").fetchone()[0])
        waited_ms = self._busy[1]
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            deadline, pause = time.monotonic() + waited_ms / 1000.0, LOCK_POLL[0]
            while True:
                try:
                    stack.enter_context(self.db.atomic(lock_type="IMMEDIATE"))
                    return
                except peewee.OperationalError as exc:
                    if "locked" not in str(exc).lower() or time.monotonic() >= deadline:
                        raise
                time.sleep(pause)
                pause = min(2 * pause, LOCK_POLL[1])
        finally:
            conn.execute("PRAGMA busy_timeout = %d" % waited_ms)

    def _run_in_savepoint(self, job: _Job) -> None:
        try:
            if self._immediate and getattr(job.fn, "single_write", False):
                job.result = job.fn(*job.args, **job.kwargs)
                return
            kwargs = dict(job.kwargs, pause=self.ordinary_waiting) if getattr(job.fn, "resumable", False) \
                else job.kwargs
            with self.db.atomic():
                job.result = job.fn(*job.args, **kwargs)
        except Exception as exc:
            job.error = exc


def _original(exc: Exception) -> Exception:
    """When SQLite has rolled a failed COMMIT back itself (disk full, I/O error), peewee's own
    ROLLBACK fails too and hides the real error behind "no transaction is active": report the first."""
    original = exc
    while "no transaction is active" in str(original) and isinstance(original.__context__, Exception):
        original = original.__context__
    return original


def _settle(jobs: list) -> None:
    for job in jobs:
        if job.future.cancelled():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)


def _resolve(job: _Job) -> None:
    _resolve_all([job])


def _resolve_all(jobs: list) -> None:
    """Hand results back with one wake-up per event loop, not one per call."""
    loops: dict = {}
    for job in jobs:
        loops.setdefault(job.loop, []).append(job)
    for loop, mine in loops.items():
        try:
            loop.call_soon_threadsafe(_settle, mine)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass
