"""Messages (table `message`): storing what WeCom delivers once per dedup key, the automatic answers
the rules give, and reading messages back (one, a page, an export, the inbound ones for a replay).

Message JSON carries "automation", the message's rule runs (serialize.AUTOMATION_KEYS), read with
one extra query per call or page (per batch in iter_export).
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import peewee

from wecomd.wecom.messages import Message

from .conversations import Conversations
from .errors import guarded, store_errors
from .media import media_columns
from .models import Models
from .paging import keyset, page_size
from .rule_runs import RuleRuns
from .search import Search, search_text
from .serialize import dumps, json_select, to_json
from .takeovers import PAUSED_SQL
from .times import iso, naive_utc, utcnow


def inbound_row(app: str, message: Message, dedup_key: str, reply: Optional[str],
                now: datetime, fields_text: Optional[str] = None) -> dict[str, Any]:
    """Column values for a newly received message (`fields_text`: its fields' JSON, when the caller
    has it already)."""
    return dict(
        # The conversation: the sender's, or a 智能机器人 group chat's (message.conversation).
        app=app, direction="in", dedup_key=dedup_key, user=message.conversation or message.from_user,
        msgtype=message.msgtype, event=message.event, event_key=message.event_key,
        from_user=message.from_user, to_user=message.to_user,
        agent_id=_text(message.agent_id), msg_id=_text(message.msg_id),
        create_time=message.create_time, received_at=now, content=message.content,
        status="received", fields=fields_text or dumps(message.fields), raw_xml=message.raw or "",
        reply=reply, deliveries=1, updated_at=now,
        search_text=search_text(message.msgtype, message.content, message.fields),
        **media_columns(message.fields))



def answer_row(app: str, user: Optional[str], text: str, rule: Optional[str], now: datetime) -> dict[str, Any]:
    """Column values for an automatic answer (Messages.save_answer)."""
    fields = {"msgtype": "text", "text": {"content": text}}
    return dict(
        app=app, direction="out", user=user, msgtype="text", to_user=user,
        create_time=int(now.replace(tzinfo=timezone.utc).timestamp()), received_at=now,
        content=text, status="sent", fields=dumps(fields), raw_xml="", deliveries=1,
        operator="rule:%s" % rule if rule is not None else None, updated_at=now,
        search_text=search_text("text", text, fields), attempts=0, automatic="passive", rule=rule)

class Messages:
    """The messages of the database `db` (named `name`), through the bound `models`. A new message is
    counted in its conversation (`conversations`); `runs` gives Message JSON its "automation".

    `returning`: the database answers INSERT ... RETURNING (SQLite 3.35 and later, PostgreSQL);
    without it save_inbound reads the row's id back with a SELECT.
    """

    def __init__(self, db: peewee.Database, name: str, models: Models, runs: RuleRuns,
                 conversations: Conversations, returning: bool) -> None:
        self.db, self.name, self.Message = db, name, models.Message
        self.runs, self.conversations, self.returning = runs, conversations, returning
        self._sqlite = isinstance(db, peewee.SqliteDatabase)
        self.search = Search(db, models.Message)
        self._sql_cache: dict = {}
        # Parameters in one statement: SQLite before 3.32 allows 999, later 32,766; PostgreSQL 65,535.
        self._max_params = 999 if self._sqlite and sqlite3.sqlite_version_info < (3, 32) else 30000
        # Every column of a message row, None or its default: a fresh row's JSON starts from it.
        self._blank_row = {column: field.default if not callable(field.default) else None
                           for column, field in self.Message._meta.fields.items()}

    # ------------------------------------------------------------ writing

    @property
    def sqlite(self) -> bool:
        """The database is SQLite (its bulk INSERTs count and index their rows afterwards: migration 0012)."""
        return self._sqlite

    @property
    def one_statement(self) -> bool:
        """save_delivery can be used: the callback path's writer call is one statement (SQLite with
        RETURNING); elsewhere the caller runs the pause read, save_inbound and save_answer."""
        return self.returning and self._sqlite

    @guarded("save the inbound message")
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
        if self.returning:
            row_id, deliveries, kept_reply = cursor.fetchone()
        else:
            row_id, deliveries, kept_reply = self.db.execute_sql(select_sql, (dedup_key,)).fetchone()
        if deliveries != 1 and brief:
            return {"id": row_id, "deliveries": deliveries, "reply": kept_reply}, False
        if deliveries != 1:  # a retry: the stored row as it is now, with its rule runs
            return dict(self.runs.attach([self.Message.get_by_id(row_id)])[0], reply=kept_reply), False
        self.conversations.count_new(app, values["user"], row_id, inbound=True)
        # Just stored: its JSON is what was inserted; it has no rule runs yet.
        row = SimpleNamespace(**{**self._blank_row, **values, "id": row_id})
        return dict(to_json(row), automation=[], reply=kept_reply), True

    def prepare_pulled(self, app: str, entries: list) -> tuple:
        """The messages of a page pulled from WeCom (微信客服's sync_msg) made ready for save_prepared
        without the database (their column values, SQL parameters and each row's JSON but its id),
        so that the caller may do it off the writer thread. `entries` are (message, dedup_key,
        outbound_by); with `outbound_by` a message is an outbound one a human agent (that
        servicer_userid) sent from the WeCom client: stored "sent", by that operator, and counted as
        outbound in its conversation."""
        now = utcnow(whole_seconds=True)
        rows = []
        for message, dedup_key, outbound_by in entries:
            if not dedup_key:
                raise ValueError("a pulled message needs a dedup key")
            # A pulled item's raw text is the JSON of its fields (wecom.kf.parse_item): not made twice.
            values = inbound_row(app, message, dedup_key, None, now, message.raw)
            values.update(operator=None, wecom_msgid=None)  # one column set for the page's one statement
            if outbound_by is not None:
                values.update(direction="out", status="sent", operator=outbound_by, to_user=values["user"],
                              wecom_msgid=values["msg_id"])
            rows.append(values)
        if not rows:
            return (), [], []
        names = tuple(rows[0])
        fields = self.Message._meta.fields
        converters = [_converter(fields[name]) for name in names]
        params = [_params(converters, [row[name] for name in names]) for row in rows]
        shown = [dict(to_json(SimpleNamespace(**{**self._blank_row, **values}), message.fields), automation=[])
                 for values, (message, _, _) in zip(rows, entries)]
        return names, params, [(values["dedup_key"], values["user"], values["direction"], row)
                               for values, row in zip(rows, shown)]

    def save_prepared(self, prepared: tuple) -> list:
        """Store prepare_pulled's messages, each once per dedup key, in the caller's transaction and in
        order; [(row JSON, created)] in the order of its entries.

        One INSERT for the whole page (its rows in one VALUES list: one step of the database, where
        executemany gave each row its own and the interpreter lock back and forth; a dedup key stored
        already is left alone), then one SELECT of the rows it added, and one statement each to count them in their conversations
        and index them for search (on SQLite the per-row triggers stand aside meanwhile: migration
        0012): a page of 1,000 costs the database's own work, not 1,000 round trips through the
        query builder or trigger runs."""
        names, params, rows = prepared
        if not rows:
            return []
        per = max(1, self._max_params // len(names))  # rows a statement: one step, not one per row
        statements = [(self._pulled_sql(names, len(chunk)), [value for row in chunk for value in row])
                      for chunk in (params[start:start + per] for start in range(0, len(params), per))]
        added = {key: row_id for row_id, key in self.insert_in_bulk(statements, '"id", "dedup_key"')}
        result, ids, without_user = [], [], []
        for dedup_key, user, direction, shown in rows:
            row_id = added.pop(dedup_key, None)  # popped: a key twice in one page is stored once
            if row_id is None:
                result.append(({"dedup_key": dedup_key}, False))
                continue
            if user is None:
                without_user.append((shown["app"], row_id, direction == "in"))
            else:
                ids.append(row_id)
            result.append((dict(shown, id=row_id), True))
        self.conversations.count_inserted(ids, without_user)
        self.search.index_inserted(ids + [row_id for _, row_id, _ in without_user])
        return result

    def insert_in_bulk(self, statements: list, columns: str) -> list:
        """Run `statements` ((sql, params) INSERTs into message) in the caller's transaction with
        SQLite's per-row count and index triggers standing aside (migration 0012): `columns` of
        each row they added, oldest first. The caller counts and indexes those rows
        (Conversations.count_inserted, Search.index_inserted) in the same transaction."""
        newest = self.db.execute_sql('SELECT MAX("id") FROM "message"').fetchone()[0] or 0
        cursor = self.db.cursor()
        if self._sqlite:
            cursor.execute('INSERT INTO "bulk_insert" ("active") VALUES (1)')
        for sql, params in statements:
            cursor.execute(sql, params)
        if self._sqlite:
            cursor.execute('DELETE FROM "bulk_insert"')
        return self.db.execute_sql('SELECT %s FROM "message" WHERE "id" > %s ORDER BY "id"'
                                   % (columns, self.db.param), (newest,)).fetchall()

    def _pulled_sql(self, names: tuple, rows: int) -> str:
        """save_prepared's INSERT of `rows` rows at once (a dedup key stored already, or twice among
        them, is left alone), built once per column set and row count."""
        key = ("pulled", names, rows)
        if key not in self._sql_cache:
            fields = self.Message._meta.fields
            columns = ", ".join('"%s"' % fields[n].column_name for n in names)
            marks = "(%s)" % ", ".join([self.db.param] * len(names))
            self._sql_cache[key] = ('INSERT INTO "message" (%s) VALUES %s ON CONFLICT ("dedup_key") DO NOTHING'
                                    % (columns, ", ".join([marks] * rows)))
        return self._sql_cache[key]

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
            if self.returning:
                insert += ' RETURNING "id", "deliveries", "reply"'
            select = 'SELECT "id", "deliveries", "reply" FROM "message" WHERE "dedup_key" = %s' % self.db.param
            cached = self._sql_cache[names] = (insert, select)
        return cached

    @guarded("save the inbound message")
    def save_delivery(self, app: str, message: Message, dedup_key: str, reply: Optional[str] = None,
                      text: Optional[str] = None) -> tuple[dict, bool, bool, Optional[dict]]:
        """The callback path's writer call in one statement, where `one_statement` (SQLite with
        RETURNING): save_inbound with brief=True, the takeover pause of the sender read in the same
        statement and, when the inbox has a ready-made passive reply (`reply`, its `text`) and
        automation is not paused, that reply kept with the message and, for a new message, `text`
        stored as an automatic answer (save_answer). Returns (row, created, paused, the answer's
        JSON or None).

        One statement is atomic on its own: no savepoint, no separate pause SELECT. Every SQL
        statement also hands the GIL to the busy event loop and back, so the callback path's
        several statements cost more than their SQLite work.
        """
        if not dedup_key:
            raise ValueError("an inbound message needs a dedup key")
        now = utcnow(whole_seconds=True)
        user = message.conversation or message.from_user
        values = inbound_row(app, message, dedup_key, None, now)
        # An empty user is never paused (automation.takeover.is_paused): NULL matches no pause.
        pause = (app, user or None, self.Message.updated_at.db_value(now))
        answer = None
        if reply is None:
            names = tuple(values)
            sql, converters = self._delivery_sql(names, False)
            params = _params(converters, values.values())
        else:
            values.update(_INBOUND_EXTRA)
            answer = answer_row(app, user, text or "", None, now)
            names = tuple(values)
            sql, converters = self._delivery_sql(names, True)
            params = _params(converters, values.values())
            at = names.index("reply")
            params[at:at + 1] = [*pause, reply]
            params += _params(converters, [answer.get(name) for name in names])
            params += [*pause, dedup_key]
        params += pause
        row_id = answer_id = None
        for stored_id, deliveries, kept_reply, direction, paused in self.db.execute_sql(sql, params).fetchall():
            if direction == "in":
                row_id, row_deliveries, row_reply, row_paused = stored_id, deliveries, kept_reply, bool(paused)
            else:
                answer_id = stored_id
        if row_deliveries != 1:
            return {"id": row_id, "deliveries": row_deliveries, "reply": row_reply}, False, row_paused, None
        self.conversations.count_new(app, user, row_id, inbound=True)
        row = dict(to_json(SimpleNamespace(**{**self._blank_row, **values, "id": row_id})), automation=[],
                   reply=row_reply)
        if answer_id is None:
            return row, True, row_paused, None
        self.conversations.count_new(app, user, answer_id, inbound=False)
        return row, True, row_paused, dict(
            to_json(SimpleNamespace(**{**self._blank_row, **answer, "id": answer_id})), automation=[])

    def _delivery_sql(self, names: tuple, answered: bool) -> tuple[str, list]:
        """save_delivery's statement and its columns' converters (_converter), built once.

        With an answer it inserts from a SELECT of two rows: SQLite runs a SELECT that reads the
        table it inserts into to its end before inserting, so "no row with this dedup key yet"
        holds for the answer exactly when the message is new.
        """
        cached = self._sql_cache.get((names, answered))
        if cached is None:
            fields = self.Message._meta.fields
            paused = PAUSED_SQL.format(p="?")
            columns = ", ".join('"%s"' % fields[name].column_name for name in names)
            returning = ' RETURNING "id", "deliveries", "reply", "direction", %s' % paused
            conflict = ('ON CONFLICT ("dedup_key") DO UPDATE SET "deliveries" = "message"."deliveries" + 1, '
                        '"updated_at" = excluded."updated_at", "reply" = COALESCE("message"."reply", excluded."reply")')
            if answered:
                inbound = ", ".join("CASE WHEN %s THEN NULL ELSE ? END" % paused if name == "reply" else "?"
                                    for name in names)
                sql = ('INSERT INTO "message" (%s) SELECT %s UNION ALL SELECT %s WHERE NOT %s AND NOT EXISTS '
                       '(SELECT 1 FROM "message" WHERE "dedup_key" = ?) %s%s'
                       % (columns, inbound, ", ".join("?" * len(names)), paused, conflict, returning))
            else:
                sql = 'INSERT INTO "message" (%s) VALUES (%s) %s%s' % (
                    columns, ", ".join("?" * len(names)), conflict, returning)
            cached = self._sql_cache[(names, answered)] = (sql, [_converter(fields[name]) for name in names])
        return cached

    @guarded("save the automatic answer")
    def save_answer(self, app: str, user: str, text: str, rule: Optional[str] = None) -> dict:
        """Store a passive reply (a rule's, or the app's own `reply =` when `rule` is None) as an
        outbound message, in the caller's transaction; return its JSON.

        The row is "sent" at once: WeCom got it in the callback's answer, so the outbox never
        takes it. It is marked automatic ("passive") with its rule, and counted in its
        conversation. On the callback path (the inbox): one INSERT, its SQL built once, and its
        JSON built from the values rather than read back.
        """
        values = answer_row(app, user, text, rule, utcnow(whole_seconds=True))
        model_fields = self.Message._meta.fields
        sql = self._sql_cache.get("answer")
        if sql is None:
            sql = 'INSERT INTO "message" (%s) VALUES (%s)' % (
                ", ".join('"%s"' % model_fields[name].column_name for name in values),
                ", ".join([self.db.param] * len(values)))
            if self.returning:
                sql += ' RETURNING "id"'
            self._sql_cache["answer"] = sql
        cursor = self.db.execute_sql(sql, [model_fields[k].db_value(v) for k, v in values.items()])
        row_id = cursor.fetchone()[0] if self.returning else cursor.lastrowid
        self.conversations.count_new(app, user, row_id, inbound=False)
        return dict(to_json(SimpleNamespace(**{**self._blank_row, **values, "id": row_id})), automation=[])

    @guarded("save the passive reply")
    def save_passive_reply(self, message_id: int, reply: str, text: str, rule: Optional[str] = None,
                           run_id: Optional[int] = None) -> tuple[str, Optional[dict]]:
        """Keep the passive reply (XML) the rules gave an inbound message, and store its `text` as an
        automatic answer (save_answer) linked to the rule run `run_id`; return (the reply kept, the
        answer's JSON).

        The first reply saved wins, as in save_inbound, so every WeCom retry gets the same answer;
        a message that has one already gets no second answer row: (its reply, None). KeyError
        without such an inbound message.
        """
        M = self.Message
        with self.db.atomic():
            row = M.select(M.app, M.user, M.reply).where((M.id == message_id) & (M.direction == "in")).first()
            if row is None:
                raise KeyError("no inbound message with id %r" % (message_id,))
            if row.reply is not None:
                return row.reply, None
            M.update({M.reply: reply, M.updated_at: utcnow(whole_seconds=True)}).where(M.id == message_id).execute()
            answer = self.save_answer(row.app, row.user, text, rule)
            if run_id is not None:
                self.runs.link_answer(run_id, answer["id"])
        return reply, answer

    # ------------------------------------------------------------ reading

    @guarded("read a message")
    def get(self, message_id: int) -> Optional[dict]:
        """Return one message's JSON, or None."""
        row = self.Message.get_or_none(self.Message.id == message_id)
        return self.runs.attach([row])[0] if row is not None else None

    @guarded("read messages")
    def rows(self, ids: Iterable[int]) -> list[dict]:
        """The JSON of the messages `ids` that exist, in the order of their ids."""
        M, ids = self.Message, list(ids)
        found = []
        for start in range(0, len(ids), 500):
            found.extend(M.select().where(M.id.in_(ids[start:start + 500])))
        return self.runs.attach(sorted(found, key=lambda row: row.id))

    @guarded("read messages")
    def raws(self, ids: Iterable[int]) -> dict:
        """{id: the body each message arrived as} of the messages `ids` that exist."""
        M, ids, found = self.Message, list(ids), {}
        for start in range(0, len(ids), 500):
            found.update(M.select(M.id, M.raw_xml).where(M.id.in_(ids[start:start + 500])).tuples())
        return found

    @guarded("read a message")
    def get_raw(self, message_id: int) -> Optional[str]:
        """Return the decrypted XML an inbound message arrived as ("" for outbound), or None."""
        row = self.Message.get_or_none(self.Message.id == message_id)
        return row.raw_xml if row is not None else None

    @guarded("read conversations' newest inbound messages")
    def newest_inbound_fields(self, pairs: Iterable[tuple]) -> dict:
        """{(app, user): the `fields` JSON of that conversation's newest inbound message}, one short
        indexed query per pair (app, user, id): a 智能机器人 conversation's chat type is in there."""
        M, found = self.Message, {}
        for app, user in pairs:
            row = (M.select(M.fields).where((M.app == app) & (M.user == user) & (M.direction == "in"))
                   .order_by(M.id.desc()).first())
            if row is not None:
                found[(app, user)] = json.loads(row.fields or "{}")
        return found

    @guarded("list messages")
    def page(self, app: Optional[str] = None, user: Optional[str] = None,
             msgtype: Optional[str] = None, q: Optional[str] = None,
             before: Optional[int] = None, limit: int = 50) -> tuple[list[dict], Optional[int]]:
        """Return (messages newest first, cursor for the next page or None).

        Keyset paging: pass the cursor back as `before`. `q` is a case-insensitive
        substring of the search text (content, file names, labels, titles, event
        keys...), taken literally: quotes, *, OR, % and _ match themselves.
        """
        limit = page_size(limit)
        M = self.Message
        query = self._select(app, user, msgtype, q)
        if before is not None:
            query = query.where(M.id < before)
        rows, cursor = keyset(list(query.order_by(M.id.desc()).limit(limit + 1)), limit, lambda row: row.id)
        return self.runs.attach(rows), cursor

    def iter_export(self, app: Optional[str] = None, since: Optional[datetime] = None,
                    batch: int = 500, user: Optional[str] = None, msgtype: Optional[str] = None,
                    q: Optional[str] = None) -> Iterator[dict]:
        """Yield message JSON oldest first, reading `batch` rows (and their runs) per query.

        The filters are those of page(); `since` filters on received_at (naive
        datetimes are taken as UTC). Each message carries its "automation" list.
        """
        M = self.Message
        batch = max(1, batch)
        with store_errors(self.name, "export messages"):  # a short q is looked up first (Search)
            query = self._select(app, user, msgtype, q, since).order_by(M.id).limit(batch)
        last_id = 0
        while True:
            with store_errors(self.name, "export messages"):
                rows = list(query.where(M.id > last_id))
                exported = self.runs.attach(rows)
            yield from exported
            if len(rows) < batch:
                return
            last_id = rows[-1].id

    def iter_inbound(self, since: Optional[datetime] = None, app: Optional[str] = None,
                     batch: int = 500) -> Iterator[dict]:
        """Yield inbound messages oldest first as {"id", "app", "raw", "received_at"}.

        For `wecomd rules replay`, which parses `raw` (the decrypted XML) again. Reads `batch`
        rows per query; `since` filters on received_at (naive datetimes are UTC).
        """
        M, batch = self.Message, max(1, int(batch))
        query = M.select(M.id, M.app, M.raw_xml, M.received_at).where(M.direction == "in")
        if app:
            query = query.where(M.app == app)
        if since is not None:
            query = query.where(M.received_at >= naive_utc(since))
        query = query.order_by(M.id).limit(batch)
        last_id = 0
        while True:
            with store_errors(self.name, "read inbound messages"):
                rows = list(query.where(M.id > last_id))
            yield from ({"id": row.id, "app": row.app, "raw": row.raw_xml,
                         "received_at": iso(row.received_at)} for row in rows)
            if len(rows) < batch:
                return
            last_id = rows[-1].id

    @guarded("count messages")
    def count(self) -> int:
        """Return the number of stored messages."""
        return self.Message.select().count()

    def _select(self, app: Union[str, Iterable[str], None] = None, user: Optional[str] = None,
                msgtype: Optional[str] = None, q: Optional[str] = None,
                since: Optional[datetime] = None) -> peewee.ModelSelect:
        """The one filter of page() and iter_export(), unordered, of the columns their Message JSON
        reads (serialize.json_select: named tuples). `app` may be a list: any of them."""
        M = self.Message
        query = json_select(M)
        if isinstance(app, (list, tuple, set, frozenset)):  # an operator limited to some apps
            query = query.where(M.app.in_(sorted(app)))
        elif app:
            query = query.where(M.app == app)
        for column, value in ((M.user, user), (M.msgtype, msgtype)):
            if value:
                query = query.where(column == value)
        if q:
            query = query.where(self.search.matches(q))
        if since is not None:
            query = query.where(M.received_at >= naive_utc(since))
        return query


def _converter(field: peewee.Field) -> tuple[type, Callable[[Any], Any]]:
    """(the type `field.db_value` returns unchanged, db_value): None and values of that type are
    passed as they are, anything else converted, as peewee would (its adapt returns a str, int or
    datetime of that very type as it is)."""
    for kind, same in ((peewee.IntegerField, int), (peewee._StringField, str), (peewee.DateTimeField, datetime)):
        if isinstance(field, kind) and type(field).db_value is peewee.Field.db_value \
                and type(field).adapt is kind.adapt:
            return same, field.db_value
    return type(None), field.db_value


def _params(converters: list, values: Iterable[Any]) -> list:
    """Query parameters of `values` (in the order of `converters`): a call per value was a quarter
    of the callback path's Python on the writer."""
    return [value if value is None or type(value) is same else convert(value)
            for (same, convert), value in zip(converters, values)]


# The inbound row's values of the columns only an automatic answer sets, as the table's defaults give them.
_INBOUND_EXTRA = {"operator": None, "attempts": 0, "automatic": None, "rule": None}


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)
