"""Intake: callbacks answered from a journal of their own while a 微信客服 pull keeps the database busy.

A pull stores a backlog as fast as the disk lets it; a callback stored through the same database
then waits for the pull's write lock and for its commit to flush the pull's pages. While a pull
runs (`busy`), and until every entry recorded so far is applied, the channels hand a callback to
`record` instead: it is committed to the journal file (store.intake.Journal: a small commit, made
on the event loop itself, since handing it to a thread and back cost a callback more than the
commit) and answered. The app channel answers it with an empty 200 (its rules' and `reply =`
answers go out through the API once it is applied); 微信客服's doorbell as always; a 智能机器人
user's message with its stream open and empty (its answer comes into that stream once applied).

The applier then takes the entries in order and hands each to its channel's apply function
(`register`): the entry's store call runs in `store.intake.once`, one transaction with its mark, so
a crash never applies an entry twice; entries a crash left unapplied are applied by `start`, before
the daemon serves. An entry whose apply fails on the database is tried again (RETRY seconds later),
never skipped; one that fails otherwise (a defect) is logged and left in the file, and the ones
after it go on. Entries applied are forgotten from the file FORGET at a time. An apply function
may return the entry's remaining work (a task) once the entry is stored with its mark: a
智能机器人's answer waiting for a webhook within the passive budget; the applier then goes on to
the next entry instead of waiting for it. A stop (`close`) lets the entry being applied and that
remaining work finish, within STOP_WAIT, and takes no further entry.

On PostgreSQL (no database-wide write lock) and for an in-memory SQLite database there is no
journal: `active` is always False.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple

from wecomd.config import AppConfig
from wecomd.store import StoreError
from wecomd.store.intake import Journal
from wecomd.store.times import iso, utcnow

logger = logging.getLogger(__name__)

BATCH = 100  # entries read from the journal at a time
FORGET = 200  # entries applied before they are forgotten from the file (and its WAL checkpointed)
RETRY = 1.0  # seconds before an entry the database refused is applied again
STOP_WAIT = 10.0  # seconds a stop waits for the entry being applied (and the work left of those before) to finish

# apply(app's config or None once it is gone from the config, the app's name, the body, (generation, seq)):
# None, or the entry's remaining work once it is stored with its mark (a task the stop waits for)
Apply = Callable[[Optional[AppConfig], str, str, Tuple[str, int]], Awaitable[Optional["asyncio.Future[Any]"]]]


class Intake:
    """One per process, built by Services; see the module docstring."""

    def __init__(self, journal: Optional[Journal], run_db: Callable[..., Awaitable[Any]], store: Any,
                 app_for: Callable[[str], Optional[AppConfig]], busy: Callable[[], bool]) -> None:
        self.journal, self.run_db, self.store, self.app_for, self.busy = journal, run_db, store, app_for, busy
        self.generation: Optional[str] = None  # set by start
        self.recorded = self.applied = 0  # the newest sequence number recorded, and applied
        self._appliers: Dict[str, Apply] = {}
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task] = None
        self._kept = 0  # the first entry that could not be applied (a defect): never forgotten
        self._unforgotten = 0  # entries applied and not forgotten yet
        self.forget_every = FORGET
        self._checkpoints: Optional[ThreadPoolExecutor] = None  # the thread the checkpoints run on
        self._stopping = False  # set by close: no further entry is taken
        self._finishing: set = set()  # the remaining work of entries applied (see Apply)

    def register(self, kind: str, apply: Apply) -> None:
        """How entries of `kind` ("app", "kf", "bot") are applied."""
        self._appliers[kind] = apply

    def active(self) -> bool:
        """Whether a callback goes to the journal now: a pull runs, or entries wait to be applied (so
        that callbacks are applied in the order they came)."""
        return self.generation is not None and (self.pending() > 0 or self.busy())

    def pending(self) -> int:
        """Entries recorded and not applied yet (/metrics)."""
        return self.recorded - self.applied

    async def record(self, kind: str, app: str, body: str) -> int:
        """Commit one callback's body to the journal; its sequence number. StoreError when it could
        not be committed (the callback must not be acknowledged)."""
        assert self.journal is not None
        seq = self.journal.append(kind, app, body, iso(utcnow()))
        self.recorded = max(self.recorded, seq)
        self._wake.set()
        return seq

    async def start(self) -> None:
        """Open the journal and apply what a stop or a crash left in it, before the daemon serves."""
        if self.journal is None:
            return
        self._checkpoints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wecomd-intake")
        self.generation = self.journal.open()
        self.applied = await self.run_db(self.store.intake.seq, self.generation)
        self.recorded = max(self.applied, self.journal.last())
        if self.recorded > self.applied:
            logger.warning("intake: %d callback(s) in the journal were not applied before the last stop: "
                           "applying them", self.recorded - self.applied)
        await self._apply_all()
        if self._finishing:  # their answers too: no process knows their streams as waiting any more
            await asyncio.wait(set(self._finishing))
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._apply_all()
            except StoreError as exc:
                logger.warning("intake: applying the journal failed: %s; trying again in %.0f s", exc, RETRY)
                await asyncio.sleep(RETRY)
                self._wake.set()
            except Exception:  # never let the applier die: the entries stay in the journal
                logger.exception("intake: applying the journal failed unexpectedly")
                await asyncio.sleep(RETRY)
                self._wake.set()

    async def _apply_all(self) -> None:
        """Apply every entry after `applied`, in order; then forget them from the file."""
        assert self.journal is not None and self.generation is not None
        while True:
            entries = self.journal.after(self.applied, BATCH)
            if not entries:
                break
            self._unforgotten += len(entries)
            for entry in entries:
                if self._stopping:  # a stop: the entry being applied was finished; the rest wait for the start
                    return
                apply = self._appliers.get(entry["kind"])
                if apply is None:
                    raise StoreError("intake: entry %d is of unknown kind %r" % (entry["seq"], entry["kind"]))
                try:
                    rest = await apply(self.app_for(entry["app"]), entry["app"], entry["body"],
                                       (self.generation, entry["seq"]))
                    if rest is not None:  # stored; its answer goes on while the next entries are applied
                        self._finishing.add(rest)
                        rest.add_done_callback(self._finishing.discard)
                except StoreError:  # the database refused: the same entry again, later
                    raise
                except Exception:  # it never will apply: the next ones must not wait behind it
                    logger.exception("intake: entry %d (%s, app %s) cannot be applied: it stays in %s",
                                     entry["seq"], entry["kind"], entry["app"], self.journal.path)
                    self._kept = self._kept or entry["seq"]
                self.applied = entry["seq"]
        if self.applied >= self.recorded and self.applied and self._unforgotten >= self.forget_every:
            # Now and then: each forget is a commit the event loop waits for the disk for.
            self._unforgotten = 0
            self.journal.forget(self._kept or self.applied)
            await asyncio.get_running_loop().run_in_executor(self._checkpoints, self.journal.checkpoint)

    async def close(self) -> None:
        """Stop applying (what is left is applied at the next start) and close the file. The entry
        being applied is finished first (within STOP_WAIT): cut off between its store call and the
        rest (its rules, a 智能机器人's stream), its answer would be lost, its mark being committed.
        So is the remaining work of the entries before it (Apply), within the same STOP_WAIT."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_WAIT
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_WAIT)
            except asyncio.TimeoutError:
                logger.warning("intake: the entry being applied did not finish within %.0f s: cut off", STOP_WAIT)
            except Exception:  # the applier's own failure is logged where it happened
                pass
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            if self._finishing:
                _, cut = await asyncio.wait(set(self._finishing), timeout=max(0.0, deadline - loop.time()))
                if cut:
                    logger.warning("intake: %d answer(s) of entries applied did not finish within %.0f s: cut off",
                                   len(cut), STOP_WAIT)
                    for rest in cut:
                        rest.cancel()
                    await asyncio.gather(*cut, return_exceptions=True)
        if self.journal is not None and self._checkpoints is not None:
            await asyncio.get_running_loop().run_in_executor(self._checkpoints, self.journal.close)
            self._checkpoints.shutdown(wait=True)
            self.journal.close()
