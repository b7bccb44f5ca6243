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

Besides text: markdown, textcard and news keep WeCom's payload in the row's fields; an image, voice,
video or file is written to the media vault (media_dir/<app>/<YYYY-MM>/out-...) before its row is
stored, and uploaded through media/upload when it is sent. WeCom's per-member limit (30 a minute,
1,000 an hour) drops what goes over it without an error, so a message that would break it stays
pending, marked "throttled", until the window has room (throttle.MemberWindows). A sent message can
be recalled through message/recall within 24 hours.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from wecomd.config import AppConfig, Config
from wecomd.kf.send import KfRefused
from wecomd.live import message_event, status_event
from wecomd.store import StoreError
from wecomd.store.times import iso, utcnow
from wecomd.wecom import outbound
from wecomd.wecom.api import WecomApiError, split_text
from wecomd.workers.base import RETRY_KINDS, Publish, RunDb, Worker, error_text, no_secret_error
from wecomd.workers.media import safe_name, write_atomically
from wecomd.workers.throttle import MemberWindows, members

logger = logging.getLogger(__name__)

BATCH = 50
RECALL_WINDOW = timedelta(hours=24)  # message/recall takes back only what was sent within a day
# A media_id lives 3 days (§8.3); one uploaded longer ago than this is uploaded again.
MEDIA_ID_LIFE = timedelta(days=3) - timedelta(hours=1)
EXPIRED_MEDIA = 40007  # invalid or expired media_id
THROTTLED = "throttled"  # the error/note of a message held back by the per-member limit


class RecallRefused(ValueError):
    """The message cannot be recalled (not sent, no msgid, older than 24 hours, a recall under way)."""


class Outbox(Worker):
    """Durable delivery of outbound messages through the WeCom send API."""

    kind = "outbox"

    def __init__(self, run_db: RunDb, store, client, apps: Mapping[str, AppConfig], publish: Publish,
                 *, clock: Callable[[], datetime] = utcnow, poll_interval: float = 1.0,
                 max_attempts: int = 8, backoff_base: float = 2.0, backoff_max: float = 300.0,
                 duplicate_check: int = 0, media_dir: Union[str, Path, None] = None,
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
        self._unmarked: Dict[int, Tuple[str, Optional[str], Optional[str]]] = {}  # id -> (status, error, msgid)
        self.media_dir = Path(media_dir).absolute() if media_dir is not None else None
        self.windows = MemberWindows(lambda: self.clock())
        self._seeded = False  # the per-member windows know the sends of before a restart
        self._recalling: set = set()
        self.kf: Optional[Any] = None  # wecomd.kf.send.KfSender: rows to 微信客服 customers (set by Services)

    def reconfigure(self, config: Config) -> None:
        """A reload: the apps and [wecom] duplicate_check_interval of `config`, from the next send on."""
        self.apps, self.duplicate_check = config.apps, config.wecom.duplicate_check_interval

    async def submit(self, app: str, to_user: str, content: str,
                     operator: Optional[str] = None, rule: Optional[str] = None) -> list[dict]:
        """Store a text reply as pending rows (one per 2048-byte part), wake the sender, return them.

        With `rule`, the rows are that rule's automatic answer (marked automatic "api"). ValueError for an unknown app, no recipient or empty content. Every part is committed
        before the sender may take any of them.
        """
        self._check_target(app, to_user)
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

    async def submit_payload(self, app: str, to_user: str, msgtype: str, payload: dict,
                             operator: Optional[str] = None) -> dict:
        """Store a markdown, textcard or news message (its payload checked by wecom.outbound already)
        as one pending row, wake the sender, return it. ValueError for an unknown app or no recipient."""
        self._check_target(app, to_user)
        fields = {"msgtype": msgtype, msgtype: payload}
        async with self._lock():
            row = await self.run_db(self.store.outbox.save, app, to_user, msgtype,
                                    outbound.summary(msgtype, payload), fields, operator=operator)
        self._publish(message_event(row))
        self.wake()
        return row

    async def submit_file(self, app: str, to_user: str, msgtype: str, body: bytes, filename: Optional[str],
                          operator: Optional[str] = None, details: Optional[dict] = None) -> dict:
        """Keep a file in the media vault and store it as a pending image, voice, video or file message.

        WeCom's upload limits are checked first (outbound.UploadRefused names the one broken): a
        refused file is neither written nor stored. `details`: a video's title and description.
        """
        self._check_target(app, to_user)
        mime = outbound.check_upload(msgtype, body, filename)
        if self.media_dir is None:
            raise ValueError("no media_dir to keep files in")
        name = safe_name({"msgtype": msgtype, "fields": {"FileName": filename}}, mime, filename)
        # "out-" and a random part: the row's id is not known yet, and no two files may share a name.
        relative = "%s/%s/out-%s-%s" % (app, self.clock().strftime("%Y-%m"), secrets.token_hex(6), name)
        path = self.media_dir / relative
        await asyncio.to_thread(write_atomically, path, body)
        fields = {"msgtype": msgtype, msgtype: dict(details or {}), "FileName": name}
        media = {"path": relative, "size": len(body), "type": mime, "name": name}
        try:
            async with self._lock():
                row = await self.run_db(self.store.outbox.save, app, to_user, msgtype, None, fields,
                                        operator=operator, media=media)
        except BaseException:
            with suppress(OSError):
                os.unlink(path)  # nothing refers to it
            raise
        self._publish(message_event(row))
        self.wake()
        return row

    async def recall(self, message_id: int) -> dict:
        """Take back a sent message through message/recall; the row, now "recalled".

        KeyError without such an outbound message; RecallRefused (or the store's ValueError) when it
        was not sent, has no msgid or was sent more than 24 hours ago; WecomApiError when WeCom refuses.
        """
        if message_id in self._recalling:
            raise RecallRefused("a recall of message %d is under way" % message_id)
        self._recalling.add(message_id)
        try:
            row = await self.run_db(self.store.outbox.recallable, message_id, self.clock() - RECALL_WINDOW)
            app = self.apps.get(row["app"])
            if app is None or not app.secret:
                raise RecallRefused("app %r is not configured with a secret: nothing can be recalled" % row["app"])
            if self.kf is not None and self.kf.is_kf(row["to_user"]):  # kf/recall_msg, within 2 minutes
                await self.kf.recall(app, row)
            else:
                await self.client.recall(app, row["msg_id"])
            updated = await self.run_db(self.store.outbox.set_status, message_id, "recalled", row["error"],
                                        only_if="sent")
        finally:
            self._recalling.discard(message_id)
        logger.info("recall id=%s app=%s outcome=recalled", message_id, row["app"])
        self._publish_status(updated)
        return updated

    def _check_target(self, app: str, to_user: str) -> None:
        if app not in self.apps:
            raise ValueError("unknown app %r" % (app,))
        if not to_user or not str(to_user).strip():
            raise ValueError("to_user is empty")

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
            if todo and not self._seeded:  # before the first send: what went out in the last hour counts
                self.windows.seed(await self.run_db(self.store.outbox.sent_since, self.clock() - timedelta(hours=1)))
                self._seeded = True
            for row in todo:
                if self._stopping:
                    return
                free = self.windows.free_at(row["app"], row["to_user"])
                if free is not None:
                    await self._throttle(row, free)
                    continue
                await self._shielded(row["id"], self._deliver(row))
            if len(rows) < BATCH or not todo:
                return

    async def _throttle(self, row: dict, until: datetime) -> None:
        """Hold a message back until its recipients' window has room: still pending, no attempt counted."""
        logger.info("send id=%s app=%s outcome=throttled until=%s", row["id"], row["app"], iso(until))
        try:
            updated = await self.run_db(self.store.outbox.throttle, row["id"], until, THROTTLED)
        except (KeyError, ValueError):  # deleted or no longer pending meanwhile
            return
        if row.get("error") != THROTTLED:
            self._publish_status(updated)

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
            if exc.errcode == EXPIRED_MEDIA and row["msgtype"] in outbound.UPLOAD_TYPES:
                # Our cached media_id expired early: forget it, and the next attempt uploads again.
                with suppress(StoreError, KeyError):
                    await self.run_db(self.store.outbox.remember_upload, row["id"], None, None)
                return await self._attempt_failed(row, error_text(exc), exc.errcode)
            if exc.kind in RETRY_KINDS:
                return await self._attempt_failed(row, error_text(exc), exc.errcode)
            return await self._fail(row, error_text(exc, with_hint=True), exc.errcode)
        except StoredFileError as exc:  # the vault lost the file: no attempt can succeed
            return await self._fail(row, str(exc), None)
        except KfRefused as exc:  # outside the reply window, or a human agent serves the session
            return await self._fail(row, str(exc), exc.errcode)
        except Exception as exc:  # not the client's contract; treat as transient, keep the row
            logger.exception("send id=%s app=%s: unexpected error", row["id"], row["app"])
            self._on_send_error(None)
            return await self._attempt_failed(row, error_text(exc), None)
        self._on_sent()
        await self._sent(row, answer or {})

    async def _send(self, app: AppConfig, row: dict) -> dict:
        if self.kf is not None and self.kf.is_kf(row["to_user"]):  # a 微信客服 customer: kf/send_msg
            media_id = await self._media_id(app, row) if row["msgtype"] in outbound.UPLOAD_TYPES else None
            return await self.kf.send(app, row, media_id)
        fields = row.get("fields") or {}
        # The same JSON on every attempt: with the check on, WeCom drops a resend of what it delivered.
        check = (dict(enable_duplicate_check=1, duplicate_check_interval=self.duplicate_check)
                 if self.duplicate_check else {})
        if row["msgtype"] == "text":
            content = row.get("content") or (fields.get("text") or {}).get("content", "")
            return await self.client.send_text(app, row["to_user"], content, **check)
        payload = fields[row["msgtype"]]
        if row["msgtype"] in outbound.UPLOAD_TYPES:
            payload = {**payload, "media_id": await self._media_id(app, row)}
        # Other types keep WeCom's payload object in fields under their msgtype (§8.2).
        return await self.client.send(app, {"touser": row["to_user"], "msgtype": row["msgtype"],
                                            row["msgtype"]: payload, **check})

    async def _media_id(self, app: AppConfig, row: dict) -> str:
        """The media_id of an outbound file: the one uploaded for an earlier attempt while it is younger
        than 3 days less an hour, else a new media/upload of the stored file.

        Kept in the row (fields "upload") rather than uploaded on every attempt: a retry after a busy
        or rate-limited send does not upload up to 20 MB again, and the payload stays the same JSON,
        so WeCom's duplicate check still drops a resend after a crash between send and mark.
        """
        upload = (row.get("fields") or {}).get("upload") or {}
        uploaded = _parse_time(upload.get("uploaded_at"))
        if upload.get("media_id") and uploaded is not None and self.clock() - uploaded < MEDIA_ID_LIFE:
            return upload["media_id"]
        media = await self.run_db(self.store.media.get, row["id"])
        body = await asyncio.to_thread(_read_stored, self.media_dir, (media or {}).get("path"))
        started = self.clock()
        media_id = await self.client.upload_media(app, row["msgtype"], body, media.get("name") or "file",
                                                  media.get("type") or "application/octet-stream")
        with suppress(StoreError, KeyError):  # not kept: the next attempt uploads again
            await self.run_db(self.store.outbox.remember_upload, row["id"], media_id, started)
        return media_id

    async def _sent(self, row: dict, answer: dict) -> None:
        error = _partial_delivery(answer)
        msgid = answer.get("msgid") or None
        # errcode 0, but every recipient in invaliduser/unlicenseduser: nobody got it (§8.2).
        status = "failed" if error and not _delivered_to_anyone(row["to_user"], answer) else "sent"
        self.windows.record(row["app"], row["to_user"])
        self._unmarked[row["id"]] = (status, error, msgid)
        await self._mark_sent(row["id"], status, error, msgid)

    async def _mark_sent(self, message_id: int, status: str, error: Optional[str], msgid: Optional[str]) -> None:
        try:
            updated = await self.run_db(self.store.outbox.set_status, message_id, status, error, msgid)
        except StoreError as exc:
            logger.warning("send id=%s: WeCom accepted it but marking it sent failed (kept in memory, "
                           "will not resend): %s", message_id, exc)
            return
        except KeyError:  # deleted meanwhile: nothing left to mark
            self._unmarked.pop(message_id, None)
            return
        self._unmarked.pop(message_id, None)
        logger.info("send id=%s app=%s outcome=%s%s", message_id, updated["app"], status,
                    " (not delivered: %s)" % error if error else "")
        self._publish_status(updated)

    async def _mark_unmarked(self) -> None:
        for message_id, (status, error, msgid) in list(self._unmarked.items()):
            await self._mark_sent(message_id, status, error, msgid)

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


class StoredFileError(Exception):
    """An outbound file is not in the media vault (any more)."""


def _partial_delivery(answer: dict) -> Optional[str]:
    """errcode 0 with invaliduser etc. means some recipients got nothing (wecom-protocol.md §8.2):
    WeCom's own words, e.g. "unlicenseduser: zhangsan"."""
    parts = ["%s: %s" % (key, answer[key]) for key in
             ("invaliduser", "unlicenseduser", "invalidparty", "invalidtag") if answer.get(key)]
    return "; ".join(parts) or None


def _delivered_to_anyone(to_user: str, answer: dict) -> bool:
    """False when every member of `to_user` is among the invalid or unlicensed users WeCom named."""
    missed = set()
    for key in ("invaliduser", "unlicenseduser"):
        missed.update(members(str(answer.get(key) or "")))
    return not set(members(to_user)) <= missed


def _read_stored(media_dir: Optional[Path], relative: Optional[str]) -> bytes:
    """The bytes of a file kept under media_dir; StoredFileError when it is gone or its path leaves it."""
    if media_dir is None or not relative:
        raise StoredFileError("the message's file is not in the media vault")
    root = media_dir.resolve()
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or root not in path.parents:
        raise StoredFileError("the stored media path %r is outside media_dir" % (relative,))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StoredFileError("the message's file cannot be read from the media vault: %s" % exc) from None


def _parse_time(value: object) -> Optional[datetime]:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.rstrip("Z"))
    except ValueError:
        return None
