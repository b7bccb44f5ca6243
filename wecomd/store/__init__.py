"""Storage: the peewee models, the database connection and every query wecomd runs."""
from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Iterator, Optional, Union
from urllib.parse import urlparse

import peewee
from peewee import SqliteDatabase
from playhouse import db_url, migrations

from wecomd.wecom.messages import Message
from .automation import AutomationQueries
from .conversations import ConversationQueries
from .failures import FailureQueries
from .maintenance import MaintenanceQueries
from .models import MEDIA_STATUSES, OUTBOUND_STATUSES, Message as MessageRecord, Models
from .errors import StoreError, guarded as _guarded, store_errors
from .messages import inbound_row
from .paging import page_size as _page_size
from .search import Search, search_text
from .serialize import dumps, to_json
from .times import naive_utc, utcnow
from .sessions import SessionQueries

__all__ = ["Store", "StoreError", "search_text", "MEDIA_STATUSES", "OUTBOUND_STATUSES"]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# synchronous=full: a commit reaches the disk before save_inbound returns and the
# callback answers 200, so an acknowledged message survives a power cut.
SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1,
                  "busy_timeout": 5000}


class Store(ConversationQueries, MaintenanceQueries, AutomationQueries, FailureQueries, SessionQueries):
    """wecomd's messages, conversations, rule runs and takeover pauses in one database, opened
    from a path or a URL.

    peewee keeps one connection per thread; the server calls a Store from a single
    worker thread, which also gives it serialized writes. The conversation list and read
    marks live in store_conversations.ConversationQueries, backup and prune in
    store_maintenance.MaintenanceQueries, the rule-run and takeover queries in
    store_automation.AutomationQueries, the callback failure log in
    store_failures.FailureQueries, the dashboard's sessions in store_sessions.SessionQueries.

    Message JSON carries "automation", the message's rule runs (serialize.AUTOMATION_KEYS),
    read with one extra query per call or page (per batch in iter_export).
    """

    def __init__(self, url: str, base_dir: Union[str, Path, None] = None) -> None:
        try:
            self.db, self.name = _open_database(url, Path(base_dir or "."))
        except (RuntimeError, ValueError, peewee.PeeweeException) as exc:
            # Only the scheme: a database URL may carry a password.
            raise StoreError("cannot open %s database: %s" % (urlparse(url).scheme or "sqlite", exc)) from exc
        self.models = Models.bound_to(self.db)
        self.Message, self.ReadMark, self.Conversation = self.models.Message, self.models.ReadMark, self.models.Conversation
        self.RuleRun, self.Takeover = self.models.RuleRun, self.models.Takeover
        self.CallbackFailure, self.Session = self.models.CallbackFailure, self.models.Session
        self.search = Search(self.db, self.Message)
        self._sql_cache: dict = {}
        # INSERT ... RETURNING: SQLite 3.35 and later, and PostgreSQL.
        self._returning = not isinstance(self.db, SqliteDatabase) or sqlite3.sqlite_version_info >= (3, 35)
        # Every column of a message row, None or its default: a fresh row's JSON starts from it.
        self._blank_row = {name: field.default if not callable(field.default) else None
                           for name, field in self.Message._meta.fields.items()}

    def __repr__(self) -> str:
        return "<Store %s>" % self.name

    def _failures(self, action: str):
        return store_errors(self.name, action)

    @_guarded("apply migrations")
    def migrate(self) -> list[str]:
        """Apply pending migrations from wecomd/store/migrations; return their names."""
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

    @_guarded("write to the database")
    def check_writable(self) -> None:
        """Raise StoreError unless a write can be committed now; changes nothing (store_health)."""
        from .health import check_writable
        check_writable(self)

    # ------------------------------------------------------------ writing messages

    @_guarded("save the inbound message")
    def save_inbound(self, app: str, message: Message, dedup_key: str,
                     reply: Optional[str] = None, brief: bool = False) -> tuple[dict, bool]:
        """Store an inbound message once per dedup key; return (row JSON, created).

        A repeated key (WeCom retrying a callback) adds one to `deliveries` of the
        existing row instead. The result carries "reply", the passive reply saved
        with the first delivery that had one, so every retry gets the same answer.
        A message with a MediaId is stored with media status "pending" for the
        media vault. A new message is counted in its conversation in the same
        transaction (on SQLite by a trigger, inside the one INSERT). The transaction
        is committed (fsynced, synchronous=full) before returning.

        `brief`: a retry's result is only {"id", "deliveries", "reply"}, what answering a retry
        needs (the inbox); reading the whole row back with its rule runs costs a retry three
        times the INSERT of a new message, and retries come when the daemon is slow already.
        """
        if not dedup_key:
            raise ValueError("an inbound message needs a dedup key")
        values = inbound_row(app, message, dedup_key, reply, utcnow(whole_seconds=True))
        insert_sql, select_sql = self._upsert_sql(tuple(values))
        fields = self.Message._meta.fields
        # One statement: atomic on its own, so the writer runs it without a savepoint.
        cursor = self.db.execute_sql(insert_sql, [fields[k].db_value(v) for k, v in values.items()])
        if self._returning:
            row_id, deliveries, kept_reply = cursor.fetchone()
        else:
            row_id, deliveries, kept_reply = self.db.execute_sql(select_sql, (dedup_key,)).fetchone()
        if deliveries != 1 and brief:
            return {"id": row_id, "deliveries": deliveries, "reply": kept_reply}, False
        if deliveries != 1:  # a retry: the stored row as it is now, with its rule runs
            return dict(self._json([self.Message.get_by_id(row_id)])[0], reply=kept_reply), False
        self._count_new(app, values["user"], row_id, inbound=True)  # SQLite: the INSERT's trigger did
        # Just stored: its JSON is what was inserted; it has no rule runs yet.
        row = SimpleNamespace(**{**self._blank_row, **values, "id": row_id})
        return dict(to_json(row), automation=[], reply=kept_reply), True

    def _upsert_sql(self, names: tuple) -> tuple[str, str]:
        """The SQL of save_inbound, built once per column set: generating it with peewee's query
        builder on every callback cost more than the database work itself."""
        cached = self._sql_cache.get(names)
        if cached is None:
            fields = self.Message._meta.fields
            columns = ", ".join('"%s"' % fields[n].column_name for n in names)
            marks = ", ".join([self.db.param] * len(names))
            insert = ('INSERT INTO "message" (%s) VALUES (%s) ON CONFLICT ("dedup_key") DO UPDATE SET '
                      '"deliveries" = "message"."deliveries" + 1, "updated_at" = excluded."updated_at", '
                      '"reply" = COALESCE("message"."reply", excluded."reply")' % (columns, marks))
            if self._returning:
                insert += ' RETURNING "id", "deliveries", "reply"'
            select = 'SELECT "id", "deliveries", "reply" FROM "message" WHERE "dedup_key" = %s' % self.db.param
            cached = self._sql_cache[names] = (insert, select)
        return cached

    @_guarded("save the outbound message")
    def save_outbound(self, app: str, to_user: str, msgtype: str, content: Optional[str],
                      fields: dict, operator: Optional[str] = None,
                      status: str = "pending", automatic: Optional[str] = None,
                      rule: Optional[str] = None) -> dict:
        """Store a message sent to `to_user` (a manual or delayed reply); return its JSON.

        `automatic` ("api": a rule's answer the outbox sends) and `rule` mark an automatic answer.
        """
        _check_status(status)
        now = utcnow(whole_seconds=True)
        with self.db.atomic():
            row = self.Message.create(
                app=app, direction="out", user=to_user, msgtype=msgtype, to_user=to_user,
                create_time=int(now.replace(tzinfo=timezone.utc).timestamp()),
                received_at=now, content=content, status=status, fields=dumps(fields),
                operator=operator, updated_at=now, automatic=automatic, rule=rule,
                search_text=search_text(msgtype, content, fields))
            self._count_new(app, to_user, row.id, inbound=False)
            row = self.Message.get_by_id(row.id)
        return self._json([row])[0]

    # ------------------------------------------------------------ outbox

    @_guarded("update the delivery status")
    def set_status(self, message_id: int, status: str, error: Optional[str] = None,
                   wecom_msgid: Optional[str] = None) -> dict:
        """Set an outbound message's delivery status; KeyError if there is no such row.

        "sent" and "failed" are final: they clear the retry schedule.
        """
        _check_status(status)
        M = self.Message
        changes = {M.status: status, M.error: error, M.updated_at: utcnow(whole_seconds=True)}
        if status != "pending":
            changes[M.next_attempt_at] = None
        if wecom_msgid is not None:
            changes[M.wecom_msgid] = str(wecom_msgid)
        return self._update_outbound(message_id, changes)

    @_guarded("list due outbound messages")
    def due_outbound(self, now: datetime, limit: int = 50) -> list[dict]:
        """Pending outbound messages whose next attempt is due at `now`, oldest first."""
        M = self.Message
        query = M.select().where((M.direction == "out") & (M.status == "pending") & self._due(now))
        return self._json(query.order_by(M.id).limit(_page_size(limit)))

    @_guarded("record a delivery attempt")
    def record_attempt(self, message_id: int, error: Optional[str],
                       next_attempt_at: Optional[datetime]) -> dict:
        """Count one failed send of a pending outbound message and schedule the next.

        The status stays "pending"; KeyError without such a row, ValueError unless pending.
        """
        M = self.Message
        changes = {M.attempts: M.attempts + 1, M.error: error,
                   M.next_attempt_at: naive_utc(next_attempt_at), M.updated_at: utcnow(whole_seconds=True)}
        return self._update_outbound(message_id, changes, only_if="pending")

    @_guarded("retry the outbound message")
    def retry_outbound(self, message_id: int) -> dict:
        """Put a failed outbound message back in the outbox, due now, with a fresh count.

        KeyError without such a message; ValueError for an inbound or not-failed one.
        """
        M = self.Message
        changes = {M.status: "pending", M.error: None, M.next_attempt_at: None,
                   M.attempts: 0, M.updated_at: utcnow(whole_seconds=True)}
        if self._row(message_id).direction != "out":
            raise ValueError("message %r is inbound, not an outbound message" % (message_id,))
        return self._update_outbound(message_id, changes, only_if="failed")

    def _update_outbound(self, message_id: int, changes: dict,
                         only_if: Optional[str] = None) -> dict:
        M = self.Message
        with self.db.atomic():
            row = M.get_or_none((M.id == message_id) & (M.direction == "out"))
            if row is None:
                raise KeyError("no outbound message with id %r" % (message_id,))
            if only_if is not None and row.status != only_if:
                raise ValueError("message %r is %s, not %s" % (message_id, row.status, only_if))
            M.update(changes).where(M.id == message_id).execute()
            row = M.get_by_id(message_id)
        return self._json([row])[0]

    # ------------------------------------------------------------ media

    @_guarded("list due media downloads")
    def due_media(self, now: datetime, limit: int = 20) -> list[dict]:
        """Inbound messages whose media is pending and due at `now`, oldest first."""
        M = self.Message
        query = M.select().where((M.direction == "in") & (M.media_status == "pending") & self._due(now))
        return self._json(query.order_by(M.id).limit(_page_size(limit)))

    @_guarded("update the media status")
    def set_media(self, message_id: int, status: str, path: Optional[str] = None,
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
        return self._json([row])[0]

    @_guarded("read the media status")
    def get_media(self, message_id: int) -> Optional[dict]:
        """{status, path, size, type, name, error} of a message's media, or None without media."""
        row = self.Message.get_or_none(self.Message.id == message_id)
        if row is None or row.media_status is None:
            return None
        return {"status": row.media_status, "path": row.media_path, "size": row.media_size,
                "type": row.media_type, "name": row.media_name, "error": row.media_error}

    def _due(self, now: datetime):
        M = self.Message
        return M.next_attempt_at.is_null() | (M.next_attempt_at <= naive_utc(now))

    # ------------------------------------------------------------ reading

    @_guarded("read a message")
    def get(self, message_id: int) -> Optional[dict]:
        """Return one message's JSON, or None."""
        row = self.Message.get_or_none(self.Message.id == message_id)
        return self._json([row])[0] if row is not None else None

    @_guarded("read a message")
    def get_raw(self, message_id: int) -> Optional[str]:
        """Return the decrypted XML an inbound message arrived as ("" for outbound), or None."""
        row = self.Message.get_or_none(self.Message.id == message_id)
        return row.raw_xml if row is not None else None

    def _row(self, message_id: int) -> MessageRecord:
        row = self.Message.get_or_none(self.Message.id == message_id)
        if row is None:
            raise KeyError("no message with id %r" % (message_id,))
        return row

    @_guarded("list messages")
    def messages(self, app: Optional[str] = None, user: Optional[str] = None,
                 msgtype: Optional[str] = None, q: Optional[str] = None,
                 before: Optional[int] = None, limit: int = 50) -> tuple[list[dict], Optional[int]]:
        """Return (messages newest first, cursor for the next page or None).

        Keyset paging: pass the cursor back as `before`. `q` is a case-insensitive
        substring of the search text (content, file names, labels, titles, event
        keys...), taken literally: quotes, *, OR, % and _ match themselves.
        """
        limit = _page_size(limit)
        M = self.Message
        query = self._select(app, user, msgtype, q)
        if before is not None:
            query = query.where(M.id < before)
        rows = list(query.order_by(M.id.desc()).limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return self._json(rows), (rows[-1].id if more else None)

    def iter_export(self, app: Optional[str] = None, since: Optional[datetime] = None,
                    batch: int = 500, user: Optional[str] = None, msgtype: Optional[str] = None,
                    q: Optional[str] = None) -> Iterator[dict]:
        """Yield message JSON oldest first, reading `batch` rows (and their runs) per query.

        The filters are those of messages(); `since` filters on received_at (naive
        datetimes are taken as UTC). Each message carries its "automation" list.
        """
        M = self.Message
        batch = max(1, batch)
        with self._failures("export messages"):  # a short q is looked up first (_matches)
            query = self._select(app, user, msgtype, q, since).order_by(M.id).limit(batch)
        last_id = 0
        while True:
            with self._failures("export messages"):
                rows = list(query.where(M.id > last_id))
                exported = self._json(rows)
            yield from exported
            if len(rows) < batch:
                return
            last_id = rows[-1].id

    def _json(self, rows: Iterable[MessageRecord]) -> list[dict]:
        """Message JSON of rows, with their "automation" lists read in one query."""
        rows = list(rows)
        runs = self._runs_for([row.id for row in rows])
        return [dict(to_json(row), automation=runs[row.id]) for row in rows]

    def _select(self, app: Optional[str] = None, user: Optional[str] = None,
                msgtype: Optional[str] = None, q: Optional[str] = None,
                since: Optional[datetime] = None) -> peewee.ModelSelect:
        """The one filter of messages() and iter_export(), unordered."""
        M = self.Message
        query = M.select()
        for column, value in ((M.app, app), (M.user, user), (M.msgtype, msgtype)):
            if value:
                query = query.where(column == value)
        if q:
            query = query.where(self.search.matches(q))
        if since is not None:
            query = query.where(M.received_at >= naive_utc(since))
        return query

    @_guarded("count messages")
    def count(self) -> int:
        """Return the number of stored messages."""
        return self.Message.select().count()


def sqlite_file(url: str, base_dir: Path = Path(".")) -> Optional[str]:
    """The file of a SQLite path or sqlite:// URL, relative ones taken from base_dir (":memory:" as
    is); None for any other database URL."""
    if "://" not in url:
        return str(base_dir / Path(url).expanduser())
    if "sqlite" not in urlparse(url).scheme:
        return None
    path = db_url.parse(url)["database"]  # sqlite:///rel/path, sqlite:////abs/path
    return path if path == ":memory:" else str(base_dir / Path(path).expanduser())


def _open_database(url: str, base_dir: Path) -> tuple[peewee.Database, str]:
    """Open (lazily) a path or db URL; relative SQLite paths are taken from base_dir."""
    path = sqlite_file(url, base_dir)
    if path is None:
        parsed = urlparse(url)
        return db_url.connect(url), "%s://%s%s" % (parsed.scheme, parsed.hostname or "", parsed.path)
    if "://" not in url:
        return SqliteDatabase(path, pragmas=SQLITE_PRAGMAS), path
    return db_url.connect(url, database=path, pragmas=SQLITE_PRAGMAS), path


def _check_status(status: str) -> None:
    if status not in OUTBOUND_STATUSES:
        raise ValueError("status must be one of %s, not %r" % (", ".join(OUTBOUND_STATUSES), status))
