"""Media of received messages (the media columns of `message`): which downloads are due, and their
outcome, for the media vault (wecomd.workers.media)."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

import peewee

from wecomd.wecom import bot, kf

from .errors import guarded
from .models import MEDIA_STATUSES, Message
from .paging import page_size
from .rule_runs import RuleRuns
from .times import naive_utc, utcnow


def media_id_of(fields: dict) -> Optional[str]:
    """The id media/get downloads a message's media by: an app message's MediaId, or a 微信客服
    item's media_id."""
    return fields.get("MediaId") or kf.media_id(fields)


def media_columns(fields: Optional[dict]) -> dict[str, Optional[str]]:
    """media_status and media_name of a received message: "pending" when it has a MediaId.

    Image, voice, video and file messages carry one (a 微信客服 item its media_id); a file's name is
    known at once.
    """
    fields = fields if isinstance(fields, dict) else {}
    if bot.media_url(fields):  # a 智能机器人's image or file: a URL, not a MediaId
        return {"media_status": "pending", "media_name": None}
    media_id, name = media_id_of(fields), fields.get("FileName")
    if not (isinstance(media_id, str) and media_id.strip()):
        return {"media_status": None, "media_name": None}
    return {"media_status": "pending", "media_name": name if isinstance(name, str) else None}


class Media:
    """The media of the messages in the database `db` (named `name`), through the bound model
    `Message`; `runs` gives the Message JSON it returns its "automation"."""

    def __init__(self, db: peewee.Database, name: str, Message: type[Message], runs: RuleRuns) -> None:
        self.db, self.name, self.Message, self.runs = db, name, Message, runs

    @guarded("list due media downloads")
    def due(self, now: datetime, limit: int = 20) -> list[dict]:
        """Messages whose media is pending and due at `now`, oldest first: inbound ones, and the files
        a 微信客服 agent sent from the WeCom client (pulled, outbound; what the outbox sends is stored
        before it goes out, never pending)."""
        M = self.Message
        due = M.next_attempt_at.is_null() | (M.next_attempt_at <= naive_utc(now))
        query = M.select().where((M.media_status == "pending") & due)
        return self.runs.attach(query.order_by(M.id).limit(page_size(limit)))

    @guarded("update the media status")
    def record(self, message_id: int, status: str, path: Optional[str] = None,
               size: Optional[int] = None, mime: Optional[str] = None,
               name: Optional[str] = None, error: Optional[str] = None,
               next_attempt_at: Optional[datetime] = None) -> dict:
        """Record a media download's outcome; return the Message JSON.

        path, size, mime and name change only when given. "pending" with an error
        counts one failed attempt and keeps the next_attempt_at schedule; "stored"
        and "failed" clear it. KeyError without such a message.
        """
        if status not in MEDIA_STATUSES:
            raise ValueError("media status must be one of %s, not %r" % (", ".join(MEDIA_STATUSES), status))
        M = self.Message
        changes = {M.media_status: status, M.media_error: error, M.updated_at: utcnow(whole_seconds=True),
                   M.next_attempt_at: naive_utc(next_attempt_at) if status == "pending" else None}
        for column, value in ((M.media_path, path), (M.media_size, size),
                              (M.media_type, mime), (M.media_name, name)):
            if value is not None:
                changes[column] = value
        if status == "pending" and error is not None:
            changes[M.attempts] = M.attempts + 1
        with self.db.atomic():
            if not M.update(changes).where(M.id == message_id).execute():
                raise KeyError("no message with id %r" % (message_id,))
            row = M.get_by_id(message_id)
        return self.runs.attach([row])[0]

    @guarded("read the media status")
    def get(self, message_id: int) -> Optional[dict]:
        """{status, path, size, type, name, error} of a message's media, or None without media."""
        row = self.Message.get_or_none(self.Message.id == message_id)
        if row is None or row.media_status is None:
            return None
        return {"status": row.media_status, "path": row.media_path, "size": row.media_size,
                "type": row.media_type, "name": row.media_name, "error": row.media_error}
