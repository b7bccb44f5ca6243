"""The 智能机器人's streams (table `bot_stream`, migration 0010): the answer so far of each stream id.

A stream is created with the first delivery of a message (its id is derived from the message, so a
retry finds the same one), its content replaced as the answer grows (never shortened), and finished
once. A message's response_url is claimed in one UPDATE, so it is called at most once, by whichever
process claims it first.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Optional

import peewee

from .errors import guarded
from .models import BotStream
from .times import iso, naive_utc

RESPONSE_URL_LIFETIME = timedelta(hours=1)  # wecom-aibot.md §6


def stream_json(row: BotStream) -> dict:
    return dict(stream_id=row.stream_id, bot=row.bot, message_id=row.message_id, content=row.content,
                finished=bool(row.finished), notice=row.notice, source=row.source, feedback_id=row.feedback_id,
                feedback=json.loads(row.feedback) if row.feedback else None,
                response_state=row.response_state, response_error=row.response_error,
                deadline_at=iso(row.deadline_at), created_at=iso(row.created_at), updated_at=iso(row.updated_at))


def answer_json(row: BotStream) -> dict:
    """The public part of a stream: never its response_url (a one-use credential)."""
    return dict(stream_id=row.stream_id, finished=bool(row.finished), notice=row.notice, source=row.source,
                feedback=json.loads(row.feedback) if row.feedback else None,
                response_state=row.response_state, response_error=row.response_error)


class BotStreams:
    """The streams of the database `db` (named `name`)."""

    def __init__(self, db: peewee.Database, name: str, BotStream: type[BotStream]) -> None:
        self.db, self.name, self.BotStream = db, name, BotStream

    @guarded("start a bot stream")
    def start(self, stream_id: str, bot: str, message_id: int, now: datetime, deadline_at: datetime,
              content: str = "", finished: bool = False, source: Optional[str] = None,
              feedback_id: Optional[str] = None, response_url: Optional[str] = None) -> tuple[dict, bool]:
        """Create the stream unless it exists; (its JSON, created). A retry of the message gets the
        stream its first delivery started."""
        S = self.BotStream
        with self.db.atomic():
            row = S.get_or_none(S.stream_id == stream_id)
            if row is not None:
                return stream_json(row), False
            S.insert(stream_id=stream_id, bot=bot, message_id=message_id, content=content, finished=int(finished),
                     source=source, feedback_id=feedback_id, response_url=response_url,
                     deadline_at=naive_utc(deadline_at), created_at=naive_utc(now), updated_at=naive_utc(now)).execute()
        return self.get(stream_id), True

    @guarded("read a bot stream")
    def get(self, stream_id: str) -> Optional[dict]:
        row = self.BotStream.get_or_none(self.BotStream.stream_id == stream_id)
        return stream_json(row) if row is not None else None

    @guarded("read a message's bot stream")
    def of_message(self, message_id: int) -> Optional[dict]:
        S = self.BotStream
        row = S.select().where(S.message_id == message_id).order_by(S.id).first()
        return stream_json(row) if row is not None else None

    @guarded("read the answers of messages")
    def answers(self, message_ids: list) -> dict:
        """{message id: what the console shows of its answer}: where it came from, how it ended, the
        feedback it got and how its response_url went; one query (message_id is indexed)."""
        S, found = self.BotStream, {}
        ids = [int(i) for i in message_ids]
        if not ids:
            return found
        for row in S.select().where(S.message_id.in_(ids)).order_by(S.id):
            found[row.message_id] = answer_json(row)
        return found

    @guarded("update a bot stream")
    def update(self, stream_id: str, content: str, now: datetime) -> bool:
        """Replace an unfinished stream's content; False when it is finished already (a late piece
        after the deadline closed it: the caller keeps the rest for the response_url)."""
        S = self.BotStream
        with self.db.atomic():
            return bool(S.update(content=content, updated_at=naive_utc(now))
                        .where((S.stream_id == stream_id) & (S.finished == 0)).execute())

    @guarded("finish a bot stream")
    def finish(self, stream_id: str, content: Optional[str], now: datetime, notice: Optional[str] = None,
               response_needed: bool = False) -> Optional[dict]:
        """Finish a stream (its final content, unless None: keep what it has); with `response_needed`
        (closed before the answer was complete) mark its response_url pending. Returns the stream, or
        None when it was finished already."""
        S = self.BotStream
        changes: dict = {S.finished: 1, S.updated_at: naive_utc(now)}
        if content is not None:
            changes[S.content] = content
        if notice is not None:
            changes[S.notice] = notice
        if response_needed:
            changes[S.response_state] = "pending"
        with self.db.atomic():
            done = S.update(changes).where((S.stream_id == stream_id) & (S.finished == 0)).execute()
        return self.get(stream_id) if done else None

    @guarded("claim a response_url")
    def claim_response(self, stream_id: str, now: datetime) -> Optional[str]:
        """The stream's response_url, claimed for one call (state pending -> sent), or None: no url,
        used already, or older than an hour (then marked expired)."""
        S = self.BotStream
        with self.db.atomic():
            row = S.get_or_none(S.stream_id == stream_id)
            if row is None or not row.response_url or row.response_state not in (None, "pending"):
                return None
            if naive_utc(now) - row.created_at >= RESPONSE_URL_LIFETIME:
                S.update(response_state="expired", response_error="response_url older than one hour: not called") \
                    .where(S.id == row.id).execute()
                return None
            claimed = S.update(response_state="sent", updated_at=naive_utc(now)) \
                .where((S.id == row.id) & ((S.response_state.is_null()) | (S.response_state == "pending"))).execute()
            return row.response_url if claimed else None

    @guarded("record a response_url failure")
    def response_failed(self, stream_id: str, error: str, now: datetime) -> None:
        """The one call to the response_url failed: kept as failed, never called again."""
        S = self.BotStream
        with self.db.atomic():
            S.update(response_state="failed", response_error=error[:1000], updated_at=naive_utc(now)) \
                .where(S.stream_id == stream_id).execute()

    @guarded("store feedback")
    def feedback(self, feedback_id: str, feedback: dict, now: datetime) -> Optional[dict]:
        """Keep a feedback_event with the stream whose first frame carried `feedback_id`."""
        S = self.BotStream
        with self.db.atomic():
            S.update(feedback=json.dumps(feedback, ensure_ascii=False), updated_at=naive_utc(now)) \
                .where(S.feedback_id == feedback_id).execute()
            row = S.get_or_none(S.feedback_id == feedback_id)
        return stream_json(row) if row is not None else None

    @guarded("list unfinished bot streams")
    def unfinished(self) -> list[dict]:
        """Streams never finished (a restart cut them off): their answers are gone with the process."""
        S = self.BotStream
        return [stream_json(row) for row in S.select().where(S.finished == 0)]
