"""Outbox: durable delivery of outbound messages through the WeCom send API.

Every message is stored as `pending` before anything is sent, and one background task sends the
due rows one at a time in id order (so the parts of a long reply arrive in order), then records
the outcome: `sent` with WeCom's msgid, another attempt later with exponential backoff for
transient errors (-1, 45009, network), or `failed` with an error the operator can act on.

Delivery guarantee. A row is marked sent right after WeCom accepts it, but the send and the mark
are not one transaction: if the process dies in that window, the row is still pending after the
restart and that one message is sent again; with `[wecom] duplicate_check_interval` set, every
send carries WeCom's enable_duplicate_check, and WeCom drops that resend. Nothing else ever sends twice: one task sends, a
per-id in-flight set stops a second pass (or a retry) from taking a row being sent, and a row
whose "sent" mark could not be written is kept in memory and never sent again while the process
lives. A second process sending from the same database is not guarded against.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from datetime import datetime
from typing import Callable, Dict, Mapping, Optional, Tuple

from wecomd.config import AppConfig, Config
from wecomd.live import message_event, status_event
from wecomd.store import StoreError
from wecomd.store.times import utcnow
from wecomd.wecom.api import WecomApiError, split_text
from wecomd.workers.base import RETRY_KINDS, Publish, RunDb, Worker, error_text, no_secret_error

logger = logging.getLogger(__name__)

BATCH = 50


class Outbox(Worker):
    """Durable delivery of outbound messages through the WeCom send API."""

    kind = "outbox"

    def __init__(self, run_db: RunDb, store, client, apps: Mapping[str, AppConfig], publish: Publish,
                 *, clock: Callable[[], datetime] = utcnow, poll_interval: float = 1.0,
                 max_attempts: int = 8, backoff_base: float = 2.0, backoff_max: float = 300.0,
                 duplicate_check: int = 0,
                 on_sent: Callable[[], None] = lambda: None,
                 on_send_error: Callable[[Optional[int]], None] = lambda errcode: None) -> None:
        super().__init__(run_db, publish, clock=clock, poll_interval=poll_interval,
                         max_attempts=max_attempts, backoff_base=backoff_base, backoff_max=backoff_max)
        self.store, self.client, self.apps = store, client, apps
        self.duplicate_check = duplicate_check  # [wecom] duplicate_check_interval; 0: off
        # Metrics hooks: each message WeCom accepted; each failed send with its errcode (None: no answer).
        self._on_sent, self._on_send_error = on_sent, on_send_error
        self._intake: Optional[asyncio.Lock] = None  # made on first use, on the running loop
        # WeCom accepted these but the "sent" mark failed: id -> (error, msgid). Never resent.
        self._unmarked: Dict[int, Tuple[Optional[str], Optional[str]]] = {}

    def reconfigure(self, config: Config) -> None:
        """A reload: the apps and [wecom] duplicate_check_interval of `config`, from the next send on."""
        self.apps, self.duplicate_check = config.apps, config.wecom.duplicate_check_interval

    async def submit(self, app: str, to_user: str, content: str,
                     operator: Optional[str] = None, rule: Optional[str] = None) -> list[dict]:
        """Store a text reply as pending rows (one per 2048-byte part), wake the sender, return them.

        With `rule`, the rows are that rule's automatic answer (marked automatic "api"). ValueError for an unknown app, no recipient or empty content. Every part is committed
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
                    rows.append(await self.run_db(self.store.outbox.save, app, to_user, "text", part,
                                                  fields, operator=operator, rule=rule,
                                                  automatic="api" if rule is not None else None))
            except StoreError:
                await self._abandon(rows, len(parts))
                raise
        for row in rows:
            self._publish(message_event(row))
        self.wake()
        return rows

    async def retry(self, message_id: int) -> dict:
        """Queue a failed message again; ValueError unless it failed."""
        row = await self.run_db(self.store.outbox.retry, message_id)
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
                row = await self.run_db(self.store.outbox.set_status, row["id"], "failed",
                                        "not sent: storing all %d parts failed" % parts)
                self._publish_status(row)

    async def _pass(self) -> None:
        await self._mark_unmarked()
        while not self._stopping:
            async with self._lock():
                rows = await self.run_db(self.store.outbox.due, self.clock(), BATCH)
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
            self._on_send_error(exc.errcode)
            if exc.kind in RETRY_KINDS:
                return await self._attempt_failed(row, error_text(exc), exc.errcode)
            return await self._fail(row, error_text(exc, with_hint=True), exc.errcode)
        except Exception as exc:  # not the client's contract; treat as transient, keep the row
            logger.exception("send id=%s app=%s: unexpected error", row["id"], row["app"])
            self._on_send_error(None)
            return await self._attempt_failed(row, error_text(exc), None)
        self._on_sent()
        await self._sent(row, answer or {})

    async def _send(self, app: AppConfig, row: dict) -> dict:
        fields = row.get("fields") or {}
        # The same JSON on every attempt: with the check on, WeCom drops a resend of what it delivered.
        check = (dict(enable_duplicate_check=1, duplicate_check_interval=self.duplicate_check)
                 if self.duplicate_check else {})
        if row["msgtype"] == "text":
            content = row.get("content") or (fields.get("text") or {}).get("content", "")
            return await self.client.send_text(app, row["to_user"], content, **check)
        # Other types keep WeCom's payload object in fields under their msgtype (§8.2).
        return await self.client.send(app, {"touser": row["to_user"], "msgtype": row["msgtype"],
                                            row["msgtype"]: fields[row["msgtype"]], **check})

    async def _sent(self, row: dict, answer: dict) -> None:
        error = _partial_delivery(answer)
        msgid = answer.get("msgid") or None
        self._unmarked[row["id"]] = (error, msgid)
        await self._mark_sent(row["id"], error, msgid)

    async def _mark_sent(self, message_id: int, error: Optional[str], msgid: Optional[str]) -> None:
        try:
            updated = await self.run_db(self.store.outbox.set_status, message_id, "sent", error, msgid)
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
        updated = await self.run_db(self.store.outbox.record_attempt, row["id"], error,
                                    self._next_attempt(attempts))
        self._publish_status(updated)

    async def _fail(self, row: dict, error: str, errcode: Optional[int]) -> None:
        logger.warning("send id=%s app=%s outcome=failed errcode=%s", row["id"], row["app"], errcode)
        updated = await self.run_db(self.store.outbox.set_status, row["id"], "failed", error)
        self._publish_status(updated)

    def _publish_status(self, row: dict) -> None:
        self._publish(status_event(row))


def _partial_delivery(answer: dict) -> Optional[str]:
    """errcode 0 with invaliduser etc. means some recipients got nothing (wecom-protocol.md §8.2)."""
    parts = ["%s: %s" % (key, answer[key]) for key in
             ("invaliduser", "unlicenseduser", "invalidparty", "invalidtag") if answer.get(key)]
    return "; ".join(parts) or None
