"""Storage: the peewee models, the database connection and every query wecomd runs."""
from __future__ import annotations

import functools
import json
import logging
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional, Union
from urllib.parse import urlparse

import peewee
from peewee import (EXCLUDED, BigIntegerField, CharField, DateTimeField, IntegerField, Model,
                    SqliteDatabase, TextField, fn)
from playhouse import db_url, migrations

from .messages import Message

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# synchronous=full: a commit reaches the disk before save_inbound returns and the
# callback answers 200, so an acknowledged message survives a power cut.
SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1,
                  "busy_timeout": 5000}
OUTBOUND_STATUSES = ("pending", "sent", "failed")
MAX_PAGE = 500

_FAILURES = (peewee.PeeweeException, migrations.MigrationError, OSError)


class StoreError(Exception):
    """The database could not be opened, read or written."""


class MessageRecord(Model):
    """One stored message, inbound or outbound. Unbound: each Store binds its own subclass."""

    app = CharField()
    direction = CharField(max_length=3)
    dedup_key = TextField(null=True, unique=True)  # NULL for outbound rows
    user = CharField(null=True)  # the conversation counterpart
    msgtype = CharField(index=True)
    event = CharField(null=True)
    event_key = TextField(null=True)
    from_user = CharField(null=True)
    to_user = CharField(null=True)
    agent_id = CharField(null=True)
    msg_id = CharField(null=True)  # text: MsgIds are 64-bit and lose precision as JS numbers
    create_time = BigIntegerField(null=True)
    received_at = DateTimeField(index=True)  # naive UTC
    content = TextField(null=True)
    status = CharField()
    error = TextField(null=True)
    fields = TextField(default="{}")
    raw_xml = TextField(column_name="raw", default="")  # `raw` would shadow Model.raw()
    reply = TextField(null=True)
    deliveries = IntegerField(default=1)
    operator = CharField(null=True)
    wecom_msgid = CharField(null=True)
    updated_at = DateTimeField()

    class Meta:
        table_name = "message"
        indexes = (
            (("app", "user", "id"), False),
            (("direction", "status"), False),
        )


def _bind_models(db: peewee.Database) -> type[MessageRecord]:
    # A per-instance subclass rather than MessageRecord.bind(db): two stores in one
    # process (tests, export next to serve) must not rebind each other's model.
    class BoundMessage(MessageRecord):
        class Meta:
            database = db
            table_name = "message"

    return BoundMessage


def _guarded(action: str):
    """Decorate a Store method so that database failures become StoreError."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            with self._failures(action):
                return method(self, *args, **kwargs)
        return wrapper
    return decorate


class Store:
    """wecomd's messages in one database, opened from a path or a URL.

    peewee keeps one connection per thread; the server calls a Store from a single
    worker thread, which also gives it serialized writes.
    """

    def __init__(self, url: str, base_dir: Union[str, Path, None] = None) -> None:
        try:
            self.db, self.name = _open_database(url, Path(base_dir or "."))
        except (RuntimeError, ValueError, peewee.PeeweeException) as exc:
            # Only the scheme: a database URL may carry a password.
            raise StoreError("cannot open %s database: %s" % (urlparse(url).scheme or "sqlite", exc)) from exc
        self.Message = _bind_models(self.db)

    def __repr__(self) -> str:
        return "<Store %s>" % self.name

    @contextmanager
    def _failures(self, action: str):
        try:
            yield
        except _FAILURES as exc:
            raise StoreError("%s: could not %s: %s" % (self.name, action, exc)) from exc

    @_guarded("apply migrations")
    def migrate(self) -> list[str]:
        """Apply pending migrations from wecomd/migrations; return their names."""
        applied = migrations.run(self.db, str(MIGRATIONS_DIR))
        for name in applied:
            logger.info("applied migration %s to %s", name, self.name)
        return applied

    @_guarded("close the database")
    def close(self) -> None:
        """Close the calling thread's connection (call it on the worker thread)."""
        self.db.close()

    @_guarded("read the database")
    def ping(self) -> None:
        """Raise StoreError unless the message table can be read."""
        self.Message.select(self.Message.id).limit(1).execute()

    @_guarded("save the inbound message")
    def save_inbound(self, app: str, message: Message, dedup_key: str,
                     reply: Optional[str] = None) -> tuple[dict, bool]:
        """Store an inbound message once per dedup key; return (row JSON, created).

        A repeated key (WeCom retrying a callback) adds one to `deliveries` of the
        existing row instead. The result carries "reply", the passive reply saved
        with the first delivery that had one, so every retry gets the same answer.
        The transaction is committed (fsynced, synchronous=full) before returning.
        """
        if not dedup_key:
            raise ValueError("an inbound message needs a dedup key")
        M, now = self.Message, _utcnow()
        insert = M.insert(**_inbound_row(app, message, dedup_key, reply, now)).on_conflict(
            conflict_target=[M.dedup_key],
            update={M.deliveries: M.deliveries + 1, M.updated_at: now,
                    M.reply: fn.COALESCE(M.reply, EXCLUDED.reply)})
        with self.db.atomic():
            insert.execute()
            row = M.get(M.dedup_key == dedup_key)
        return dict(_to_json(row), reply=row.reply), row.deliveries == 1

    @_guarded("save the outbound message")
    def save_outbound(self, app: str, to_user: str, msgtype: str, content: Optional[str],
                      fields: dict, operator: Optional[str] = None,
                      status: str = "pending") -> dict:
        """Store a message sent to `to_user` (a manual or delayed reply); return its JSON."""
        _check_status(status)
        now = _utcnow()
        with self.db.atomic():
            row = self.Message.create(
                app=app, direction="out", user=to_user, msgtype=msgtype, to_user=to_user,
                create_time=int(now.replace(tzinfo=timezone.utc).timestamp()),
                received_at=now, content=content, status=status, fields=_dumps(fields),
                operator=operator, updated_at=now)
            row = self.Message.get_by_id(row.id)
        return _to_json(row)

    @_guarded("update the delivery status")
    def set_status(self, message_id: int, status: str, error: Optional[str] = None,
                   wecom_msgid: Optional[str] = None) -> dict:
        """Set an outbound message's delivery status; KeyError if there is no such row."""
        _check_status(status)
        M = self.Message
        changes = {M.status: status, M.error: error, M.updated_at: _utcnow()}
        if wecom_msgid is not None:
            changes[M.wecom_msgid] = str(wecom_msgid)
        with self.db.atomic():
            query = M.update(changes).where((M.id == message_id) & (M.direction == "out"))
            if not query.execute():
                raise KeyError("no outbound message with id %r" % (message_id,))
            row = M.get_by_id(message_id)
        return _to_json(row)

    @_guarded("read a message")
    def get(self, message_id: int) -> Optional[dict]:
        """Return one message's JSON, or None."""
        row = self.Message.get_or_none(self.Message.id == message_id)
        return _to_json(row) if row is not None else None

    @_guarded("read a message")
    def get_raw(self, message_id: int) -> Optional[str]:
        """Return the decrypted XML an inbound message arrived as ("" for outbound), or None."""
        row = self.Message.get_or_none(self.Message.id == message_id)
        return row.raw_xml if row is not None else None

    @_guarded("list messages")
    def messages(self, app: Optional[str] = None, user: Optional[str] = None,
                 msgtype: Optional[str] = None, q: Optional[str] = None,
                 before: Optional[int] = None, limit: int = 50) -> tuple[list[dict], Optional[int]]:
        """Return (messages newest first, cursor for the next page or None).

        Keyset paging: pass the cursor back as `before`. `q` is a case-insensitive
        substring of the content; % and _ in it match themselves.
        """
        limit = _page_size(limit)
        rows = list(self._select(app, user, msgtype, q, before).limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return [_to_json(row) for row in rows], (rows[-1].id if more else None)

    def _select(self, app=None, user=None, msgtype=None, q=None, before=None):
        M = self.Message
        query = M.select()
        for column, value in ((M.app, app), (M.user, user), (M.msgtype, msgtype)):
            if value:
                query = query.where(column == value)
        if q:
            query = query.where(M.content.contains(q))  # peewee escapes % _ \ for LIKE
        if before is not None:
            query = query.where(M.id < before)
        return query.order_by(M.id.desc())

    @_guarded("list conversations")
    def conversations(self, app: Optional[str] = None) -> list[dict]:
        """One row per (app, user), newest conversation first.

        Each row: app, user, count, last_id and last_message (Message JSON).
        """
        M = self.Message
        last_id = fn.MAX(M.id)
        query = (M.select(M.app, M.user, last_id.alias("last_id"), fn.COUNT(M.id).alias("count"))
                 .group_by(M.app, M.user).order_by(last_id.desc()))
        if app:
            query = query.where(M.app == app)
        groups = list(query.dicts())
        ids = [group["last_id"] for group in groups]
        last = {row.id: row for row in M.select().where(M.id.in_(ids))} if ids else {}
        return [dict(group, last_message=_to_json(last[group["last_id"]])) for group in groups]

    def iter_export(self, app: Optional[str] = None, since: Optional[datetime] = None,
                    batch: int = 500) -> Iterator[dict]:
        """Yield message JSON oldest first, reading `batch` rows per query.

        `since` filters on received_at (naive datetimes are taken as UTC).
        """
        M = self.Message
        query = M.select().order_by(M.id).limit(max(1, batch))
        if app:
            query = query.where(M.app == app)
        if since is not None:
            query = query.where(M.received_at >= _naive_utc(since))
        last_id = 0
        while True:
            with self._failures("export messages"):
                rows = list(query.where(M.id > last_id))
            yield from (_to_json(row) for row in rows)
            if len(rows) < max(1, batch):
                return
            last_id = rows[-1].id

    @_guarded("count messages")
    def count(self) -> int:
        """Return the number of stored messages."""
        return self.Message.select().count()


def _open_database(url: str, base_dir: Path) -> tuple[peewee.Database, str]:
    """Open (lazily) a path or db URL; relative SQLite paths are taken from base_dir."""
    if "://" not in url:
        path = str(base_dir / Path(url).expanduser())
        return SqliteDatabase(path, pragmas=SQLITE_PRAGMAS), path
    parsed = urlparse(url)
    if "sqlite" not in parsed.scheme:
        return db_url.connect(url), "%s://%s%s" % (parsed.scheme, parsed.hostname or "", parsed.path)
    path = db_url.parse(url)["database"]  # sqlite:///rel/path, sqlite:////abs/path
    if path != ":memory:":
        path = str(base_dir / Path(path).expanduser())
    return db_url.connect(url, database=path, pragmas=SQLITE_PRAGMAS), path


def _inbound_row(app: str, message: Message, dedup_key: str, reply: Optional[str],
                 now: datetime) -> dict[str, Any]:
    return dict(
        app=app, direction="in", dedup_key=dedup_key, user=message.from_user,
        msgtype=message.msgtype, event=message.event, event_key=message.event_key,
        from_user=message.from_user, to_user=message.to_user,
        agent_id=_text(message.agent_id), msg_id=_text(message.msg_id),
        create_time=message.create_time, received_at=now, content=message.content,
        status="received", fields=_dumps(message.fields), raw_xml=message.raw or "",
        reply=reply, deliveries=1, updated_at=now)


def _to_json(row: MessageRecord) -> dict:
    """The documented Message JSON (design.md) plus `deliveries`; never the raw XML."""
    return {
        "id": row.id, "app": row.app, "direction": row.direction, "msgtype": row.msgtype,
        "event": row.event, "event_key": row.event_key, "from_user": row.from_user,
        "to_user": row.to_user, "agent_id": row.agent_id,
        # For an outbound row, WeCom's id is the msgid its send API answered with.
        "msg_id": row.msg_id if row.direction == "in" else row.wecom_msgid,
        "create_time": row.create_time, "received_at": _iso(row.received_at),
        "content": row.content, "status": row.status, "error": row.error,
        "fields": json.loads(row.fields or "{}"), "deliveries": row.deliveries,
    }


def _check_status(status: str) -> None:
    if status not in OUTBOUND_STATUSES:
        raise ValueError("status must be one of %s, not %r" % (", ".join(OUTBOUND_STATUSES), status))


def _page_size(limit: int) -> int:
    if int(limit) < 1:
        raise ValueError("limit must be at least 1")
    return min(int(limit), MAX_PAGE)


def _dumps(fields: Optional[dict]) -> str:
    return json.dumps(fields or {}, ensure_ascii=False, separators=(",", ":"))


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _iso(moment: Optional[datetime]) -> Optional[str]:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None
