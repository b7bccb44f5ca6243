"""Storage: `Store` opens wecomd's database from a path or URL, migrates it, and holds the queries of
each table as its parts.

peewee keeps one connection per thread; the daemon calls a Store from the writer thread
(store/writer.py: one connection, serialized writes, group commit) and a reader thread.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Union
from urllib.parse import urlparse

import peewee
from playhouse import migrations

from .assignments import Assignments
from .audit import Audit
from .bot_streams import BotStreams
from .contacts import Contacts
from .conversations import CONVERSATION_PAGE, Conversations
from .database import open_database, sqlite_file, supports_returning
from .errors import StoreError, guarded
from .failures import Failures
from .health import Health
from .intake import Applied
from .kf import Kf
from .maintenance import Maintenance
from .media import Media
from .messages import Messages
from .models import Models
from .notes import Notes
from .operators import OperatorExists, Operators
from .outbox import Outbox
from .quick_replies import QuickReplies, ShortcutTaken
from .rule_runs import RuleRuns
from .search import search_text
from .sessions import Sessions
from .takeovers import Takeovers

__all__ = ["Store", "StoreError", "OperatorExists", "ShortcutTaken", "CONVERSATION_PAGE", "MIGRATIONS_DIR", "search_text", "sqlite_file"]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class Store:
    """wecomd's database, opened (lazily) from a SQLite path or a database URL, with one part per table:

    - `messages`: inbound messages stored once per dedup key, automatic answers, reading them back;
    - `outbox`: outbound messages and their delivery; `media`: the media downloads of messages;
    - `conversations`: the conversation list and read marks; `runs`: rule runs and the webhook
      queue; `takeovers`: automation paused while an operator answers;
    - `failures`: the callback failure log; `sessions`: the dashboard's sign-ins;
    - `operators`: operator accounts and their API tokens; `audit`: the audit log;
      `contacts`: the contact directory's cache of names and departments; `bot_streams`: the
      智能机器人's streamed answers;
    - `assignments`: who a conversation is assigned to, open or closed; `notes`: internal notes;
      `quick_replies`: the reply box's saved snippets;
    - `maintenance`: backup and pruning; `health`: the probes behind /healthz;
    - `kf`: 微信客服's cursors, pages, sessions, codes and customers; `intake`: the callback
      journal's entries applied here (the journal file itself: store.intake.Journal).

    Each part gets the database, its name (for StoreError messages) and the models it reads, bound to
    this database (`models`): two stores in one process never share them.
    """

    def __init__(self, url: str, base_dir: Union[str, Path, None] = None) -> None:
        try:
            self.db, self.name = open_database(url, Path(base_dir or "."))
        except (RuntimeError, ValueError, peewee.PeeweeException) as exc:
            # Only the scheme: a database URL may carry a password.
            raise StoreError("cannot open %s database: %s" % (urlparse(url).scheme or "sqlite", exc)) from exc
        db, name, models = self.db, self.name, Models.bound_to(self.db)
        self.file = name if isinstance(db, peewee.SqliteDatabase) else None  # a SQLite database's file
        self.models = models
        self.runs = RuleRuns(db, name, models.RuleRun, models.Message)
        self.conversations = Conversations(db, name, models, self.runs)
        self.messages = Messages(db, name, models, self.runs, self.conversations, supports_returning(db))
        self.outbox = Outbox(db, name, models.Message, self.runs, self.conversations)
        self.media = Media(db, name, models.Message, self.runs)
        self.takeovers = Takeovers(db, name, models.Takeover)
        self.failures = Failures(name, models.CallbackFailure)
        self.sessions = Sessions(name, models.Session)
        self.operators = Operators(db, name, models.Operator, models.ApiToken)
        self.audit = Audit(db, name, models.AuditEvent)
        self.contacts = Contacts(db, name, models.Contact)
        self.bot_streams = BotStreams(db, name, models.BotStream)
        self.assignments = Assignments(db, name, models)
        self.notes = Notes(db, name, models)
        self.quick_replies = QuickReplies(db, name, models.QuickReply)
        self.maintenance = Maintenance(db, name, models, self.conversations)
        self.health = Health(db, name, models.Message)
        self.kf = Kf(db, name, models, self.messages)  # 微信客服: cursors, sessions, codes, customers
        self.intake = Applied(db, name, models.IntakeApplied)  # the callback journal's entries applied

        # The old method names, for the modules being rewritten now (#10); they go with them.

    def __repr__(self) -> str:
        return "<Store %s>" % self.name

    @guarded("apply migrations")
    def migrate(self) -> list[str]:
        """Apply pending migrations from wecomd/store/migrations; return their names."""
        applied = migrations.run(self.db, str(MIGRATIONS_DIR))
        for name in applied:
            logger.info("applied migration %s to %s", name, self.name)
        return applied

    @guarded("close the database")
    def close(self) -> None:
        """Close the calling thread's connection (call it on the thread that used it)."""
        self.db.close()
