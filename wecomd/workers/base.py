"""Worker: the background loop shared by the outbox, the media vault and the rule runs' senders (RunWorker:
webhooks, group robots), and its helpers."""
from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Optional, Set

from wecomd.live import message_event
from wecomd.store import StoreError
from wecomd.wecom.api import WecomApiError

logger = logging.getLogger(__name__)

RunDb = Callable[..., Awaitable[Any]]
Publish = Callable[[dict], None]
RETRY_KINDS = ("retry", "token")  # "token": the client's one refresh did not help; try later


def error_text(exc: Exception, with_hint: bool = False) -> str:
    """The error text stored on a row: "errcode N: errmsg", plus " — hint" for the operator."""
    if isinstance(exc, WecomApiError):
        text = "errcode %s: %s" % (exc.errcode, exc.errmsg) if exc.errcode is not None else str(exc.errmsg)
        if with_hint and exc.hint:
            text = "%s — %s" % (text, exc.hint)
        return text
    return "%s: %s" % (type(exc).__name__, exc)


def no_secret_error(app: str, purpose: str) -> str:
    return "[app:%s] secret is empty: set it (or WECOMD_APP_%s_SECRET) to %s" % (
        app, app.upper().replace("-", "_"), purpose)


def no_events(event: dict) -> None:
    """The `publish` of a worker that publishes nothing (retention, the search index's upkeep): the
    dashboard learns of what they did on its next fetch."""


class Worker:
    """One background task that works through rows that are due, woken early by `wake()`.

    Subclasses implement `_pass()`. A unit of work started with `_shielded()` is allowed to finish
    when `stop()` cancels the loop, so a send or download in flight is never cut in half.
    """

    kind = "worker"

    def __init__(self, run_db: RunDb, publish: Publish, *, clock: Callable[[], datetime],
                 poll_interval: float, max_attempts: int, backoff_base: float,
                 backoff_max: float) -> None:
        self.run_db, self.publish_fn, self.clock = run_db, publish, clock
        self.poll_interval, self.max_attempts = poll_interval, max(1, int(max_attempts))
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self._inflight: Set[int] = set()
        self._task: Optional[asyncio.Task] = None
        self._current: Optional[asyncio.Future] = None
        self._wakeup: Optional[asyncio.Event] = None
        self._stopping = False

    def wake(self) -> None:
        """Look for due rows now rather than at the next poll."""
        if self._wakeup is not None:
            self._wakeup.set()

    def start(self) -> None:
        """Start the background task; its first pass picks up rows left by a previous run."""
        if self._task is not None:
            return
        self._stopping = False
        self._wakeup = asyncio.Event()  # created on the running loop (Python 3.9 binds at creation)
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Let the unit in flight finish, then end the task. Rows not yet handled stay due."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        if self._current is not None:
            await asyncio.gather(self._current, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()  # a wake during the pass below triggers another pass at once
            try:
                await self._pass()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                logger.warning("%s: database unavailable, trying again in %ss: %s",
                               self.kind, self.poll_interval, exc)
            except Exception:  # the loop must never die; the row stays due
                logger.exception("%s: unexpected error, trying again in %ss", self.kind, self.poll_interval)
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)

    async def _pass(self) -> None:
        raise NotImplementedError

    async def _shielded(self, message_id: int, work: Awaitable[None]) -> None:
        """Run one row's work unless it is in flight already; a cancelled loop lets it finish."""
        if message_id in self._inflight:
            return
        self._inflight.add(message_id)

        async def guarded() -> None:
            try:
                await work
            finally:
                self._inflight.discard(message_id)

        self._current = asyncio.ensure_future(guarded())
        await asyncio.shield(self._current)

    def _next_attempt(self, attempts: int) -> datetime:
        delay = min(self.backoff_max, self.backoff_base ** attempts)
        return self.clock() + timedelta(seconds=delay)

    def _publish(self, event: dict) -> None:
        try:
            self.publish_fn(event)
        except Exception:  # a broken subscriber must not stop deliveries
            logger.exception("%s: publishing a %s event failed", self.kind, event.get("type"))


class RunWorker(Worker):
    """A Worker that delivers rule runs (webhooks, group robots): a run's end is stored and its
    triggering message pushed again, so the dashboard shows the run's new status. Subclasses set
    `self.store`."""

    store: Any

    async def _finish(self, run: dict, status: str, **values: Any) -> None:
        updated = await self.run_db(self.store.runs.finish, run["id"], status, **values)
        await self._publish_message(updated)

    async def _publish_message(self, run: dict) -> None:
        """Push the triggering message again, so the dashboard shows the run's new status."""
        try:
            message = await self.run_db(self.store.messages.get, run["message_id"])
        except StoreError as exc:
            logger.warning("%s run=%s: reading its message to publish failed: %s", self.kind, run["id"], exc)
            return
        if message is not None:
            self._publish(message_event(message))
