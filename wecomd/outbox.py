"""Outbox: durable delivery of outbound messages through the WeCom send API.

Every message is stored as `pending` before anything is sent, and one background task sends the
due rows one at a time in id order (so the parts of a long reply arrive in order), then records
the outcome: `sent` with WeCom's msgid, another attempt later with exponential backoff for
transient errors (-1, 45009, network), or `failed` with an error the operator can act on.

Delivery guarantee. A row is marked sent right after WeCom accepts it, but the send and the mark
are not one transaction: if the process dies in that window, the row is still pending after the
restart and that one message is sent again. Nothing else ever sends twice: one task sends, a
per-id in-flight set stops a second pass (or a retry) from taking a row being sent, and a row
whose "sent" mark could not be written is kept in memory and never sent again while the process
lives. A second process sending from the same database is not guarded against.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional, Set, Tuple

from wecomd.config import AppConfig
from wecomd.store import StoreError
from wecomd.wecom_api import WecomApiError, split_text

logger = logging.getLogger(__name__)

RunDb = Callable[..., Awaitable[Any]]
Publish = Callable[[dict], None]
BATCH = 50
RETRY_KINDS = ("retry", "token")  # "token": the client's one refresh did not help; try later


def utcnow() -> datetime:
    """The default clock: naive UTC, as the store keeps times."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def describe(exc: Exception, with_hint: bool = False) -> str:
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


class Outbox(Worker):
    """Durable delivery of outbound messages through the WeCom send API."""

    kind = "outbox"

    def __init__(self, run_db: RunDb, store, client, apps: Mapping[str, AppConfig], publish: Publish,
                 *, clock: Callable[[], datetime] = utcnow, poll_interval: float = 1.0,
                 max_attempts: int = 8, backoff_base: float = 2.0, backoff_max: float = 300.0) -> None:
        super().__init__(run_db, publish, clock=clock, poll_interval=poll_interval,
                         max_attempts=max_attempts, backoff_base=backoff_base, backoff_max=backoff_max)
        self.store, self.client, self.apps = store, client, apps
        self._intake: Optional[asyncio.Lock] = None  # made on first use, on the running loop
        # WeCom accepted these but the "sent" mark failed: id -> (error, msgid). Never resent.
        self._unmarked: Dict[int, Tuple[Optional[str], Optional[str]]] = {}

    async def submit(self, app: str, to_user: str, content: str,
                     operator: Optional[str] = None) -> list[dict]:
        """Store a text reply as pending rows (one per 2048-byte part), wake the sender, return them.

        ValueError for an unknown app, no recipient or empty content. Every part is committed
        before the sender may take any of them.
        """
        if app not in self.apps:
            raise ValueError("unknown app %r" % (app,))
        if not to_user or not str(to_user).strip():
            raise ValueError("to_user is empty")
        if not content or not content.strip():
            raise ValueError("content is empty")
        parts = split_text(content)
        rows = []
        async with self._lock():
            try:
                for number, part in enumerate(parts, 1):
                    fields = {"msgtype": "text", "text": {"content": part}, "part": number,
                              "parts": len(parts)}
                    rows.append(await self.run_db(self.store.save_outbound, app, to_user, "text", part,
                                                  fields, operator=operator))
            except StoreError:
                await self._abandon(rows, len(parts))
                raise
        for row in rows:
            self._publish({"type": "message", "message": row})
        self.wake()
        return rows

    async def retry(self, message_id: int) -> dict:
        """Queue a failed message again; ValueError unless it failed."""
        row = await self.run_db(self.store.retry_outbound, message_id)
        self._publish_status(row)
        self.wake()
        return row

    def _lock(self) -> asyncio.Lock:
        if self._intake is None:
            self._intake = asyncio.Lock()
        return self._intake

    async def _abandon(self, rows: list, parts: int) -> None:
        """Storing a later part failed: fail the stored ones, so no reply goes out half-told."""
        for row in rows:
            with suppress(StoreError):
                row = await self.run_db(self.store.set_status, row["id"], "failed",
                                        "not sent: storing all %d parts failed" % parts)
                self._publish_status(row)

    async def _pass(self) -> None:
        await self._mark_unmarked()
        while not self._stopping:
            async with self._lock():
                rows = await self.run_db(self.store.due_outbound, self.clock(), BATCH)
            todo = sorted((row for row in rows if row["id"] not in self._unmarked), key=lambda r: r["id"])
            for row in todo:
                if self._stopping:
                    return
                await self._shielded(row["id"], self._deliver(row))
            if len(rows) < BATCH or not todo:
                return

    async def _deliver(self, row: dict) -> None:
        app = self.apps.get(row["app"])
        if app is None:
            return await self._fail(row, "app %r is no longer configured" % row["app"], None)
        if not app.secret:
            return await self._fail(row, no_secret_error(app.name, "send through the WeCom API"), None)
        if row["msgtype"] != "text" and not isinstance((row.get("fields") or {}).get(row["msgtype"]), dict):
            return await self._fail(row, "no %s payload stored for this message" % row["msgtype"], None)
        try:
            answer = await self._send(app, row)
        except WecomApiError as exc:
            if exc.kind in RETRY_KINDS:
                return await self._attempt_failed(row, describe(exc), exc.errcode)
            return await self._fail(row, describe(exc, with_hint=True), exc.errcode)
        except Exception as exc:  # not the client's contract; treat as transient, keep the row
            logger.exception("send id=%s app=%s: unexpected error", row["id"], row["app"])
            return await self._attempt_failed(row, describe(exc), None)
        await self._sent(row, answer or {})

    async def _send(self, app: AppConfig, row: dict) -> dict:
        fields = row.get("fields") or {}
        if row["msgtype"] == "text":
            content = row.get("content") or (fields.get("text") or {}).get("content", "")
            return await self.client.send_text(app, row["to_user"], content)
        # Other types keep WeCom's payload object in fields under their msgtype (§8.2).
        return await self.client.send(app, {"touser": row["to_user"], "msgtype": row["msgtype"],
                                            row["msgtype"]: fields[row["msgtype"]]})

    async def _sent(self, row: dict, answer: dict) -> None:
        error = _partial_delivery(answer)
        msgid = answer.get("msgid") or None
        self._unmarked[row["id"]] = (error, msgid)
        await self._mark_sent(row["id"], error, msgid)

    async def _mark_sent(self, message_id: int, error: Optional[str], msgid: Optional[str]) -> None:
        try:
            updated = await self.run_db(self.store.set_status, message_id, "sent", error, msgid)
        except StoreError as exc:
            logger.warning("send id=%s: WeCom accepted it but marking it sent failed (kept in memory, "
                           "will not resend): %s", message_id, exc)
            return
        except KeyError:  # deleted meanwhile: nothing left to mark
            self._unmarked.pop(message_id, None)
            return
        self._unmarked.pop(message_id, None)
        logger.info("send id=%s app=%s outcome=sent%s", message_id, updated["app"],
                    " (partial)" if error else "")
        self._publish_status(updated)

    async def _mark_unmarked(self) -> None:
        for message_id, (error, msgid) in list(self._unmarked.items()):
            await self._mark_sent(message_id, error, msgid)

    async def _attempt_failed(self, row: dict, error: str, errcode: Optional[int]) -> None:
        attempts = int(row.get("attempts") or 0) + 1
        if attempts >= self.max_attempts:
            return await self._fail(row, "%s (gave up after %d attempts)" % (error, attempts), errcode)
        logger.warning("send id=%s app=%s outcome=retry attempt=%d errcode=%s",
                       row["id"], row["app"], attempts, errcode)
        updated = await self.run_db(self.store.record_attempt, row["id"], error,
                                    self._next_attempt(attempts))
        self._publish_status(updated)

    async def _fail(self, row: dict, error: str, errcode: Optional[int]) -> None:
        logger.warning("send id=%s app=%s outcome=failed errcode=%s", row["id"], row["app"], errcode)
        updated = await self.run_db(self.store.set_status, row["id"], "failed", error)
        self._publish_status(updated)

    def _publish_status(self, row: dict) -> None:
        self._publish({"type": "status", "id": row["id"], "status": row["status"], "error": row["error"]})


def _partial_delivery(answer: dict) -> Optional[str]:
    """errcode 0 with invaliduser etc. means some recipients got nothing (wecom-protocol.md §8.2)."""
    parts = ["%s: %s" % (key, answer[key]) for key in
             ("invaliduser", "unlicenseduser", "invalidparty", "invalidtag") if answer.get(key)]
    return "; ".join(parts) or None
