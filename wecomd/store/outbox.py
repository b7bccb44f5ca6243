"""The outbox (outbound rows of `message`): messages sent to users, waiting, retried or done, for the
outbox worker (wecomd.workers.outbox). An outbound message is "pending" until WeCom took it ("sent")
or the worker gave up ("failed"); a failed one can be put back, a sent one taken back ("recalled").

An outbound file (image, voice, video, file) is in the media vault from the start: its row carries
media_status "stored" and the file's path, as an inbound one does once downloaded."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Optional

import peewee

from .conversations import Conversations
from .errors import guarded
from .models import OUTBOUND_STATUSES, Message
from .paging import page_size
from .rule_runs import RuleRuns
from .search import search_text
from .serialize import dumps
from .times import iso, naive_utc, utcnow


class Outbox:
    """The outbound messages of the database `db` (named `name`), through the bound model `Message`;
    a new one is counted in its conversation (`conversations`), and `runs` gives the Message JSON
    it returns its "automation"."""

    def __init__(self, db: peewee.Database, name: str, Message: type[Message], runs: RuleRuns,
                 conversations: Conversations) -> None:
        self.db, self.name, self.Message = db, name, Message
        self.runs, self.conversations = runs, conversations

    @guarded("save the outbound message")
    def save(self, app: str, to_user: str, msgtype: str, content: Optional[str], fields: dict,
             operator: Optional[str] = None, status: str = "pending", automatic: Optional[str] = None,
             rule: Optional[str] = None, media: Optional[dict] = None) -> dict:
        """Store a message sent to `to_user` (a manual or delayed reply); return its JSON.

        `automatic` ("api": a rule's answer the outbox sends) and `rule` mark an automatic answer.
        `media` ({path, size, type, name}) is the file of an outbound image, voice, video or file,
        already written under media_dir.
        """
        _check_status(status)
        now = utcnow(whole_seconds=True)
        stored = {}
        if media is not None:
            stored = dict(media_status="stored", media_path=media["path"], media_size=media["size"],
                          media_type=media["type"], media_name=media["name"])
        with self.db.atomic():
            row = self.Message.create(
                app=app, direction="out", user=to_user, msgtype=msgtype, to_user=to_user,
                create_time=int(now.replace(tzinfo=timezone.utc).timestamp()),
                received_at=now, content=content, status=status, fields=dumps(fields),
                operator=operator, updated_at=now, automatic=automatic, rule=rule,
                search_text=search_text(msgtype, content, fields), **stored)
            self.conversations.count_new(app, to_user, row.id, inbound=False)
            row = self.Message.get_by_id(row.id)
        return self.runs.attach([row])[0]

    @guarded("update the delivery status")
    def set_status(self, message_id: int, status: str, error: Optional[str] = None,
                   wecom_msgid: Optional[str] = None, only_if: Optional[str] = None) -> dict:
        """Set an outbound message's delivery status; KeyError if there is no such row, ValueError
        when `only_if` names another status than the row's.

        "sent", "failed" and "recalled" are final: they clear the retry schedule.
        """
        _check_status(status)
        M = self.Message
        changes = {M.status: status, M.error: error, M.updated_at: utcnow(whole_seconds=True)}
        if status != "pending":
            changes[M.next_attempt_at] = None
        if wecom_msgid is not None:
            changes[M.wecom_msgid] = str(wecom_msgid)
        return self._update(message_id, changes, only_if=only_if)

    @guarded("list due outbound messages")
    def due(self, now: datetime, limit: int = 50) -> list[dict]:
        """Pending outbound messages whose next attempt is due at `now`, oldest first."""
        M = self.Message
        due = M.next_attempt_at.is_null() | (M.next_attempt_at <= naive_utc(now))
        query = M.select().where((M.direction == "out") & (M.status == "pending") & due)
        return self.runs.attach(query.order_by(M.id).limit(page_size(limit)))

    @guarded("record a delivery attempt")
    def record_attempt(self, message_id: int, error: Optional[str],
                       next_attempt_at: Optional[datetime]) -> dict:
        """Count one failed send of a pending outbound message and schedule the next.

        The status stays "pending"; KeyError without such a row, ValueError unless pending.
        """
        M = self.Message
        changes = {M.attempts: M.attempts + 1, M.error: error,
                   M.next_attempt_at: naive_utc(next_attempt_at), M.updated_at: utcnow(whole_seconds=True)}
        return self._update(message_id, changes, only_if="pending")

    @guarded("keep the media_id of the outbound file")
    def remember_upload(self, message_id: int, media_id: Optional[str], uploaded_at: Optional[datetime]) -> None:
        """Keep (or with None, forget) the media_id media/upload gave an outbound file, with when it was
        uploaded, in the row's fields ("upload"): the next attempt reuses it while it lives (3 days)."""
        M = self.Message
        with self.db.atomic():
            row = M.get_or_none((M.id == message_id) & (M.direction == "out"))
            if row is None:
                raise KeyError("no outbound message with id %r" % (message_id,))
            fields = json.loads(row.fields or "{}")
            fields.pop("upload", None)
            if media_id is not None:
                fields["upload"] = {"media_id": media_id, "uploaded_at": iso(naive_utc(uploaded_at))}
            M.update({M.fields: dumps(fields)}).where(M.id == message_id).execute()

    @guarded("hold back the outbound message")
    def throttle(self, message_id: int, until: datetime, note: str = "throttled") -> dict:
        """Keep a pending message back until `until` (WeCom's per-member limit is full), noted on it;
        no attempt is counted. KeyError without such a row, ValueError unless pending."""
        M = self.Message
        changes = {M.error: note, M.next_attempt_at: naive_utc(until), M.updated_at: utcnow(whole_seconds=True)}
        return self._update(message_id, changes, only_if="pending")

    @guarded("list recent sends")
    def sent_since(self, since: datetime) -> list[tuple]:
        """(app, to_user, when) of the messages sent through the API since `since`, oldest first: what
        counts towards WeCom's per-member limit after a restart (the time a row was marked sent)."""
        M = self.Message
        query = (M.select(M.app, M.to_user, M.updated_at)
                 .where((M.direction == "out") & M.status.in_(("sent", "recalled"))
                        & (M.automatic.is_null() | (M.automatic != "passive"))
                        & (M.updated_at >= naive_utc(since)))
                 .order_by(M.updated_at))
        return [(row.app, row.to_user, row.updated_at) for row in query]

    @guarded("check the message can be recalled")
    def recallable(self, message_id: int, sent_after: datetime) -> dict:
        """The JSON of a sent message WeCom can still recall: sent (marked so) after `sent_after`, with
        WeCom's msgid. KeyError without such an outbound message; ValueError saying why not."""
        M = self.Message
        row = M.get_or_none((M.id == message_id) & (M.direction == "out"))
        if row is None:
            raise KeyError("no outbound message with id %r" % (message_id,))
        if row.status != "sent":
            raise ValueError("message %r is %s: only a sent message can be recalled" % (message_id, row.status))
        if row.automatic == "passive" or not row.wecom_msgid:
            raise ValueError("message %r has no WeCom msgid (a passive reply is not recallable)" % (message_id,))
        # A sent row is written once more, by the recall: updated_at is when it was marked sent.
        if row.updated_at < naive_utc(sent_after):
            raise ValueError("message %r was sent more than 24 hours ago: WeCom no longer recalls it"
                             % (message_id,))
        return self.runs.attach([row])[0]

    @guarded("retry the outbound message")
    def retry(self, message_id: int) -> dict:
        """Put a failed outbound message back in the outbox, due now, with a fresh count.

        KeyError without such a message; ValueError for an inbound or not-failed one.
        """
        M = self.Message
        changes = {M.status: "pending", M.error: None, M.next_attempt_at: None,
                   M.attempts: 0, M.updated_at: utcnow(whole_seconds=True)}
        row = M.get_or_none(M.id == message_id)
        if row is None:
            raise KeyError("no message with id %r" % (message_id,))
        if row.direction != "out":
            raise ValueError("message %r is inbound, not an outbound message" % (message_id,))
        return self._update(message_id, changes, only_if="failed")

    @guarded("count the outbox")
    def depth(self) -> int:
        """How many outbound messages are pending (waiting to be sent or retried): one COUNT, for /metrics."""
        M = self.Message
        return M.select().where((M.direction == "out") & (M.status == "pending")).count()

    def _update(self, message_id: int, changes: dict, only_if: Optional[str] = None) -> dict:
        M = self.Message
        with self.db.atomic():
            row = M.get_or_none((M.id == message_id) & (M.direction == "out"))
            if row is None:
                raise KeyError("no outbound message with id %r" % (message_id,))
            if only_if is not None and row.status != only_if:
                raise ValueError("message %r is %s, not %s" % (message_id, row.status, only_if))
            M.update(changes).where(M.id == message_id).execute()
            row = M.get_by_id(message_id)
        return self.runs.attach([row])[0]


def _check_status(status: str) -> None:
    if status not in OUTBOUND_STATUSES:
        raise ValueError("status must be one of %s, not %r" % (", ".join(OUTBOUND_STATUSES), status))
