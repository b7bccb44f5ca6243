"""Conversations (tables `conversation` and `conversation_read`): the summary behind
/api/conversations, and the dashboard's read marks.

`conversation` holds one row per (app, user) that has messages: the id of its newest message
(`last_id`), how many messages it has, inbound and outbound, and how many of its inbound messages
are unread (after the conversation's read mark; all of them when it was never read). That is what
grouping all messages by (app, user) gives, and it stays so in the transaction of every change:

- a new message, inbound or outbound, is counted by one UPSERT (INSERT ... ON CONFLICT (app,
  user) DO UPDATE). On SQLite it is the body of the 0004 migration's AFTER INSERT trigger, so
  Messages.save_inbound stays one statement, atomic without a savepoint (writer.single_write);
  elsewhere `count_new` runs the same UPSERT, precompiled, after the INSERT. A retried delivery of
  a stored message updates its row instead of inserting one, so it is never counted again;
- `mark_read` counts the conversation's unread messages again from the new mark;
- Maintenance.prune takes the messages it deletes off their conversations (`before_delete`,
  `after_delete`), and deletes the conversations that have none left.

The 0004 migration built the table from the messages already stored; `rebuild` builds it again the
same way. A message without a user (no FromUserName) belongs to the conversation whose user is
NULL, as in a GROUP BY; read marks and takeovers never match it.
"""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import peewee
from peewee import EXCLUDED, JOIN, Case, SqliteDatabase, fn

from .assignments import state_expression
from .errors import guarded
from .models import Models
from .paging import keyset, page_size
from .serialize import json_select
from .times import iso, naive_utc, utcnow

if TYPE_CHECKING:
    from .rule_runs import RuleRuns

CONVERSATION_PAGE = 100  # conversations per page when the caller does not say
# The conversation list's filters: "mine" (assigned to the one asking), "unassigned", "unread", all.
CONVERSATION_FILTERS = ("all", "mine", "unassigned", "unread")


class Conversations:
    """The conversation list of the database `db` (named `name`), through the bound `models`: it
    reads messages, read marks, takeovers and rule runs with the summary."""

    def __init__(self, db: peewee.Database, name: str, models: Models, runs: "RuleRuns") -> None:
        self.db, self.name, self.runs = db, name, runs  # Message JSON's "automation"
        self.Message, self.ReadMark, self.Conversation = models.Message, models.ReadMark, models.Conversation
        self.Takeover = models.Takeover
        self.State = models.ConversationState
        # On SQLite the 0004 migration's triggers count a new message inside its INSERT.
        self.counted_by_triggers = isinstance(db, SqliteDatabase)
        self._sql_cache: dict = {}

    # ------------------------------------------------------------ reading

    @guarded("list conversations")
    def all(self, app: Optional[str] = None, now: Optional[datetime] = None,
            before: Optional[int] = None, limit: Optional[int] = None,
            show: str = "all", me: Optional[str] = None) -> list[dict]:
        """Conversations newest first (by their newest message), all of them unless `limit`.

        Each row: app, user, count, unread (inbound messages after the read mark, all of them
        when never read), last_id, last_message (Message JSON with its "automation"),
        paused_until (ISO "Z" while automation is paused for the user at `now`, else None),
        assignee (an operator's name or None) and state ("open" or "closed"; store/assignments.py).
        `before` keeps those whose last_id is below it; `show` (CONVERSATION_FILTERS) keeps those
        assigned to `me`, the unassigned ones or those with unread messages. Three queries, whatever
        the number of rows: the conversations, their newest messages, and those messages' runs.
        """
        return self._rows(app, before, None if limit is None else page_size(limit), now, show, me)

    @guarded("list conversations")
    def page(self, app: Optional[str] = None, before: Optional[int] = None,
             limit: int = CONVERSATION_PAGE, now: Optional[datetime] = None,
             show: str = "all", me: Optional[str] = None) -> tuple[list[dict], Optional[int]]:
        """(one page of all(), cursor for the next page or None).

        Keyset paging on last_id, as Messages.page pages on id: pass the cursor back as `before`
        (with the same `show`: each filter pages on its own).
        """
        limit = page_size(limit)
        return keyset(self._rows(app, before, limit + 1, now, show, me), limit, lambda row: row["last_id"])

    def _rows(self, app: Optional[str], before: Optional[int], limit: Optional[int],
              now: Optional[datetime], show: str = "all", me: Optional[str] = None) -> list[dict]:
        if show not in CONVERSATION_FILTERS:
            raise ValueError("show must be one of %s, not %r" % (", ".join(CONVERSATION_FILTERS), show))
        C, T, S = self.Conversation, self.Takeover, self.State
        paused = (T.app == C.app) & (T.user == C.user) & (T.until > naive_utc(now or utcnow()))
        # (app, user) is unique in takeover and in conversation_state: the joins add no rows. The
        # order is an index's.
        query = (C.select(C.app, C.user, C.last_id, C.messages.alias("count"), C.unread,
                          T.until.alias("paused_until"), S.assignee,
                          state_expression(S, self.Message).alias("state"))
                 .join(T, JOIN.LEFT_OUTER, on=paused)
                 .join(S, JOIN.LEFT_OUTER, on=(S.app == C.app) & (S.user == C.user), src=C)
                 .order_by(C.last_id.desc()))
        if show == "mine":
            if not me:  # `S.assignee == None` would be IS NULL: the unassigned ones
                raise ValueError("show='mine' needs `me`")
            query = query.where(S.assignee == me)
        elif show == "unassigned":
            query = query.where(S.assignee.is_null())
        elif show == "unread":
            query = query.where(C.unread > 0)
        if isinstance(app, (list, tuple, set, frozenset)):  # an operator limited to some apps
            query = query.where(C.app.in_(sorted(app)))
        elif app:
            query = query.where(C.app == app)
        if before is not None:
            query = query.where(C.last_id < before)
        if limit is not None:
            query = query.limit(limit)
        groups = list(query.dicts())
        M = self.Message
        newest = json_select(M).where(M.id.in_([group["last_id"] for group in groups])) if groups else []
        last = {message["id"]: message for message in self.runs.attach(newest)}
        return [dict(group, last_message=last.get(group["last_id"]),
                     paused_until=iso(T.until.python_value(group["paused_until"])))
                for group in groups]

    # ------------------------------------------------------------ read marks

    @guarded("mark the conversation read")
    def mark_read(self, app: str, user: str, up_to_id: int) -> None:
        """Record that (app, user) is read up to message `up_to_id`; never moves backwards."""
        up_to_id = int(up_to_id)
        if up_to_id < 0:
            raise ValueError("up_to_id must not be negative")
        M, R, C = self.Message, self.ReadMark, self.Conversation
        with self.db.atomic():
            R.insert(app=app, user=user, last_read_id=up_to_id).on_conflict(
                conflict_target=[R.app, R.user],
                update={R.last_read_id: EXCLUDED.last_read_id},
                where=EXCLUDED.last_read_id > R.last_read_id).execute()
            mark = R.select(R.last_read_id).where((R.app == app) & (R.user == user))
            unread = M.select(fn.COUNT(M.id)).where(
                (M.app == app) & (M.user == user) & (M.direction == "in") & (M.id > mark))
            C.update({C.unread: unread}).where((C.app == app) & (C.user == user)).execute()

    # ------------------------------------------------------------ upkeep of the summary

    @guarded("rebuild the conversation list")
    def rebuild(self) -> int:
        """Build `conversation` again from all messages (as the 0004 migration did); return its rows.

        One INSERT ... SELECT ... GROUP BY in one transaction: for repairs, and bulk loads that
        write messages with plain SQL (bench/seed.py).
        """
        M, R, C = self.Message, self.ReadMark, self.Conversation
        after_mark = (M.direction == "in") & (M.id > fn.COALESCE(R.last_read_id, 0))
        groups = (M.select(M.app, M.user, fn.MAX(M.id), fn.COUNT(M.id), fn.COUNT(Case(None, [(after_mark, 1)])))
                  .join(R, JOIN.LEFT_OUTER, on=(R.app == M.app) & (R.user == M.user))
                  .group_by(M.app, M.user))
        with self.db.atomic():
            C.delete().execute()
            C.insert_from(groups, [C.app, C.user, C.last_id, C.messages, C.unread]).execute()
            return C.select().count()

    def count_new(self, app: str, user: Optional[str], message_id: int, inbound: bool) -> None:
        """Count the message `message_id` just inserted in its conversation, in the caller's
        transaction, unless the triggers did already (counted_by_triggers).

        One UPSERT, its SQL built once (it runs on every callback). An inbound message is unread
        unless the conversation's read mark is already at or past it.
        """
        if self.counted_by_triggers:
            return
        if user is None:
            return self._count_without_user(app, message_id, inbound)
        sql = self._sql_cache.get(inbound)
        if sql is None:
            unread = ('CASE WHEN {p} > COALESCE((SELECT r."last_read_id" FROM "conversation_read" AS r '
                      'WHERE r."app" = {p} AND r."user" = {p}), 0) THEN 1 ELSE 0 END') if inbound else "0"
            sql = ('INSERT INTO "conversation" ("app", "user", "last_id", "messages", "unread") '
                   'VALUES ({p}, {p}, {p}, 1, %s) ON CONFLICT ("app", "user") DO UPDATE SET '
                   '"last_id" = CASE WHEN excluded."last_id" > "conversation"."last_id" '
                   'THEN excluded."last_id" ELSE "conversation"."last_id" END, '
                   '"messages" = "conversation"."messages" + 1, '
                   '"unread" = "conversation"."unread" + excluded."unread"' % unread)
            sql = self._sql_cache[inbound] = sql.replace("{p}", self.db.param)
        params = (app, user, message_id, message_id, app, user) if inbound else (app, user, message_id)
        self.db.execute_sql(sql, params)

    def count_inserted(self, ids: Sequence[int], without_user: Iterable[tuple] = ()) -> None:
        """Count the messages `ids` a bulk INSERT just added (the triggers stood aside: migration
        0012), in the caller's transaction: one INSERT ... SELECT ... GROUP BY for the page, the same
        counts, newest id and unread (after the read mark) as one trigger run per row. The rows
        without a user are passed as `without_user`, (app, id, inbound) each, and counted one by one."""
        if ids:
            p = self.db.param
            self.db.execute_sql(_COUNT_INSERTED % ", ".join([p] * len(ids)), list(ids))
        for app, message_id, inbound in without_user:
            self._count_without_user(app, message_id, inbound)

    def _count_without_user(self, app: str, message_id: int, inbound: bool) -> None:
        # NULLs never conflict in a unique index: the conversation of user NULL is found by hand.
        C, unread = self.Conversation, int(inbound)
        newest = Case(None, [(C.last_id < message_id, message_id)], C.last_id)
        changes = {C.last_id: newest, C.messages: C.messages + 1, C.unread: C.unread + unread}
        if not C.update(changes).where((C.app == app) & C.user.is_null()).execute():
            C.insert(app=app, user=None, last_id=message_id, messages=1, unread=unread).execute()

    def before_delete(self, ids: Sequence[int]) -> list[tuple]:
        """Before messages `ids` are deleted: (app, user, messages, unread) they take away, per
        conversation. Pass the result to after_delete once they are gone, in the same transaction."""
        M, R = self.Message, self.ReadMark
        after_mark = (M.direction == "in") & (M.id > fn.COALESCE(R.last_read_id, 0))
        query = (M.select(M.app, M.user, fn.COUNT(M.id), fn.COUNT(Case(None, [(after_mark, 1)])))
                 .join(R, JOIN.LEFT_OUTER, on=(R.app == M.app) & (R.user == M.user))
                 .where(M.id.in_(list(ids))).group_by(M.app, M.user))
        return list(query.tuples())

    def after_delete(self, removed: list[tuple]) -> None:
        """Take deleted messages off their conversations; delete conversations left empty."""
        M, C = self.Message, self.Conversation
        for app, user, count, unread in removed:
            newest = M.select(fn.MAX(M.id)).where((M.app == app) & _same_user(M.user, user))
            C.update({C.messages: C.messages - count, C.unread: C.unread - unread,
                      C.last_id: fn.COALESCE(newest, 0)}) \
                .where((C.app == app) & _same_user(C.user, user)).execute()
        if removed:
            C.delete().where(C.messages <= 0).execute()


# count_inserted's statement: a page's new messages per conversation, upserted once each.
_COUNT_INSERTED = (
    'INSERT INTO "conversation" ("app", "user", "last_id", "messages", "unread") '
    'SELECT m."app", m."user", MAX(m."id"), COUNT(*), SUM(CASE WHEN m."direction" = \'in\' '
    'AND m."id" > COALESCE(r."last_read_id", 0) THEN 1 ELSE 0 END) FROM "message" AS m '
    'LEFT JOIN "conversation_read" AS r ON r."app" = m."app" AND r."user" = m."user" '
    'WHERE m."user" IS NOT NULL AND m."id" IN (%s) GROUP BY m."app", m."user" '
    'ON CONFLICT ("app", "user") DO UPDATE SET '
    '"last_id" = CASE WHEN excluded."last_id" > "conversation"."last_id" THEN excluded."last_id" '
    'ELSE "conversation"."last_id" END, "messages" = "conversation"."messages" + excluded."messages", '
    '"unread" = "conversation"."unread" + excluded."unread"')


def _same_user(column: peewee.Field, user: Optional[str]) -> peewee.Expression:
    return column.is_null() if user is None else column == user
