"""Upkeep across the tables: the online backup of a SQLite database, and pruning old messages with
what hangs on them (retention)."""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlparse

import peewee
from peewee import SqliteDatabase, fn

from .backup import copy_sqlite
from .conversations import Conversations
from .errors import StoreError, guarded
from .models import OPEN_RUN_STATUSES, Models
from .times import naive_utc


# What prune counts: the rows it deleted, by kind, and the batches it took.
COUNTS = ("messages", "rule_runs", "bot_streams", "read_marks", "notes", "assignments", "takeovers",
          "kf_sessions", "kf_codes", "kf_customers", "batches")


class Maintenance:
    """Backup and prune of the database `db` (named `name`, its file for a SQLite one), through the
    bound `models`; pruned messages are taken off their `conversations`."""

    def __init__(self, db: peewee.Database, name: str, models: Models, conversations: Conversations) -> None:
        self.db, self.name, self.conversations = db, name, conversations
        self.Message, self.ReadMark = models.Message, models.ReadMark
        self.RuleRun, self.Takeover = models.RuleRun, models.Takeover
        self.BotStream, self.Note, self.ConversationState = models.BotStream, models.Note, models.ConversationState
        self.KfSession, self.KfCode, self.KfCustomer = models.KfSession, models.KfCode, models.KfCustomer

    @guarded("back up the database")
    def backup(self, target: Union[str, Path], pages: int = 1024) -> dict:
        """Copy the live SQLite database into the new file `target`, safely while wecomd writes.

        The copy is one consistent snapshot taken without blocking the writer, checked, and
        renamed into place (backup.copy_sqlite); a file at `target` is replaced. Returns
        {"path", "bytes", "messages", "pages", "steps", "seconds"}. ValueError for a database
        that is not a SQLite file (back up PostgreSQL with pg_dump) or a `target` that is the
        live database itself; StoreError when the database file is missing or the copy fails.
        It reads through this thread's connection, which must not be inside a transaction: call
        it from a Store of its own (`wecomd backup`), not through the daemon's database thread.
        """
        if not isinstance(self.db, SqliteDatabase) or self.name == ":memory:":
            kind = urlparse(self.name).scheme or "in-memory"
            raise ValueError("online backup works on a SQLite file only, not a %s database; "
                             "use that database's own tools (pg_dump for PostgreSQL)" % kind)
        target = Path(target).expanduser().absolute()
        if target.exists() and target.resolve() == Path(self.name).resolve():
            raise ValueError("the backup file must not be the live database %s" % self.name)
        if not Path(self.name).is_file():
            raise StoreError("%s: no database file to back up" % self.name)
        started = time.monotonic()
        result = copy_sqlite(self.db.connection(), target, pages)
        return dict(result, seconds=time.monotonic() - started)

    @guarded("delete old messages")
    def prune(self, before: datetime, batch: int = 500, max_batches: Optional[int] = None) -> dict:
        """Delete messages received before `before`, with their rule runs and the 智能机器人 answers
        streamed to them, `batch` per transaction.

        Kept whatever their age, because something still works on them: outbound messages still
        pending, messages whose media download is pending, and messages with a rule run still
        running or a webhook still pending. Their search index rows go with them (the FTS delete
        trigger), and their conversations lose them in the same transaction (a conversation left
        without messages is deleted). Once no old message is left, what belonged to conversations
        left without messages goes too (read marks; notes, assignments and 微信客服 sessions last
        changed before `before`), and so do takeover pauses that ended before `before`, 微信客服
        event codes that expired before it, and the nicknames fetched before it of customers with
        no session left.

        With `max_batches`, stops after that many batches: a caller sharing the database thread
        asks for one at a time so other writes get in between. Returns the counts
        (COUNTS: "messages", "rule_runs", "bot_streams" ... "batches"), "media": the media_path of each
        deleted message that had a file (relative to media_dir; removing the files, now that the
        rows are committed, is the caller's job), and "more": True when max_batches stopped it.
        A StoreError keeps the batches committed before it deleted, and loses their paths:
        callers that remove files ask for one batch at a time.
        """
        before, batch = naive_utc(before), max(1, int(batch))
        result: dict = dict.fromkeys(COUNTS, 0)
        result.update(media=[], more=False)
        rounds = 0
        while self._prune_batch(before, batch, result) == batch:
            rounds += 1
            if max_batches is not None and rounds >= max_batches:
                result["more"] = True
                return result
        self._prune_leftovers(before, result)
        return result

    def _prune_batch(self, before: datetime, batch: int, result: dict) -> int:
        M, RR = self.Message, self.RuleRun
        busy_run = RR.select(RR.id).where((RR.message_id == M.id) & RR.status.in_(OPEN_RUN_STATUSES))
        old = ((M.received_at < before) & ~((M.direction == "out") & (M.status == "pending"))
               & (M.media_status.is_null() | (M.media_status != "pending")) & ~fn.EXISTS(busy_run))
        with self.db.atomic():
            rows = list(M.select(M.id, M.media_path).where(old)
                        .order_by(M.received_at, M.id).limit(batch).tuples())
            ids = [message_id for message_id, _ in rows]
            if ids:
                removed = self.conversations.before_delete(ids)
                result["rule_runs"] += RR.delete().where(RR.message_id.in_(ids)).execute()
                result["bot_streams"] += self.BotStream.delete().where(self.BotStream.message_id.in_(ids)).execute()
                result["messages"] += M.delete().where(M.id.in_(ids)).execute()
                self.conversations.after_delete(removed)
        if ids:
            result["batches"] += 1
            result["media"] += [path for _, path in rows if path]
        return len(ids)

    def _prune_leftovers(self, before: datetime, result: dict) -> None:
        M, R, T, N, CS = self.Message, self.ReadMark, self.Takeover, self.Note, self.ConversationState
        KS, KC, KU = self.KfSession, self.KfCode, self.KfCustomer

        def no_messages(app: Any, user: Any) -> Any:  # the conversation (app, user) has none left
            return ~fn.EXISTS(M.select(M.id).where((M.app == app) & (M.user == user)))

        with self.db.atomic():
            result["read_marks"] = R.delete().where(no_messages(R.app, R.user)).execute()
            result["notes"] = N.delete().where((N.created_at < before) & no_messages(N.app, N.user)).execute()
            result["assignments"] = CS.delete().where((CS.updated_at < before) & no_messages(CS.app, CS.user)).execute()
            result["takeovers"] = T.delete().where(T.until < before).execute()
            customer = KS.open_kfid.concat("/").concat(KS.external_userid)  # its conversation's user
            result["kf_sessions"] = KS.delete().where((KS.updated_at < before)
                                                      & no_messages(KS.app, customer)).execute()
            result["kf_codes"] = KC.delete().where(KC.expires_at < before).execute()
            sessions = KS.select(KS.id).where(KS.external_userid == KU.external_userid)
            result["kf_customers"] = KU.delete().where((KU.fetched_at < before) & ~fn.EXISTS(sessions)).execute()
