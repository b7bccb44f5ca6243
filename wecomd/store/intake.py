"""The callback intake journal (docs/kf.md, "Callbacks while a pull runs").

While another writer keeps the main SQLite database busy (a 微信客服 backlog being pulled), a
callback is recorded in a small SQLite file of its own, `<database>.intake`, committed durably
there (synchronous=FULL) and answered; its commit never waits for the main file's write lock nor
flushes the pull's pages. The daemon then applies each entry to the main database, in order, once:
`once` runs an entry's store call and writes its sequence number to `intake_applied` (migration
0016) in the same transaction, so a crash either applied an entry, mark included, or not at all, and
the replay at start takes up exactly the entries not applied.

- `Journal`: the file: entries appended (the callback's decrypted body, as WeCom sent it), read in
  order, forgotten once applied; its generation (a random id written when the file is made, so
  that a new file's sequence numbers never pass for an old one's).
- `Applied`: the main database's side: the last sequence number applied per journal generation.
"""
from __future__ import annotations

import secrets
from typing import Any, Callable, List, Optional, Tuple

import peewee

from .errors import guarded

# wal_autocheckpoint 0: a callback's commit never runs a checkpoint; the applier runs them (checkpoint).
JOURNAL_PRAGMAS = {"journal_mode": "wal", "synchronous": "full", "busy_timeout": 5000, "wal_autocheckpoint": 0}
SUFFIX = ".intake"  # the journal's file: the database's path with this added


def journal_path(database_file: Optional[str]) -> Optional[str]:
    """The journal file of a SQLite database file; None for an in-memory one (or no file)."""
    if not database_file or database_file == ":memory:":
        return None
    return database_file + SUFFIX


class Journal:
    """The journal file (see the module docstring). Its statements are tiny: the daemon runs them on
    its event loop (a thread hop costs a callback more than the commit), checkpoints aside."""

    def __init__(self, path: str) -> None:
        self.path = self.name = path
        self.db = peewee.SqliteDatabase(path, pragmas=JOURNAL_PRAGMAS)

    @guarded("open the intake journal")
    def open(self) -> str:
        """Create the file's tables when new; its generation."""
        self.db.execute_sql("CREATE TABLE IF NOT EXISTS entry (seq INTEGER PRIMARY KEY, "
                            "kind TEXT NOT NULL, app TEXT NOT NULL, body TEXT NOT NULL, at TEXT NOT NULL)")
        self.db.execute_sql("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.execute_sql("INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', ?)",
                            (secrets.token_hex(8),))
        return self.db.execute_sql("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]

    @guarded("record a callback in the intake journal")
    def append(self, kind: str, app: str, body: str, at: str) -> int:
        """Keep one callback, committed durably before this returns; its sequence number."""
        with self.db.atomic():
            return self.db.execute_sql("INSERT INTO entry (kind, app, body, at) VALUES (?, ?, ?, ?)",
                                       (kind, app, body, at)).lastrowid

    @guarded("read the intake journal")
    def after(self, seq: int, limit: int = 100) -> List[dict]:
        """The entries after `seq`, oldest first, at most `limit`."""
        cursor = self.db.execute_sql("SELECT seq, kind, app, body, at FROM entry WHERE seq > ? ORDER BY seq LIMIT ?",
                                     (seq, limit))
        return [dict(zip(("seq", "kind", "app", "body", "at"), row)) for row in cursor.fetchall()]

    @guarded("read the intake journal")
    def last(self) -> int:
        """The newest entry's sequence number; 0 when there is none."""
        return self.db.execute_sql("SELECT COALESCE(MAX(seq), 0) FROM entry").fetchone()[0]

    @guarded("forget applied intake entries")
    def forget(self, upto: int) -> int:
        """Delete the entries before `upto` (applied, as `upto` is); how many went. Entry `upto` stays,
        so that the next sequence number follows it: a number is never given twice."""
        with self.db.atomic():
            return self.db.execute_sql("DELETE FROM entry WHERE seq < ?", (upto,)).rowcount

    @guarded("checkpoint the intake journal")
    def checkpoint(self) -> None:
        """Copy the journal's WAL into its file and start the WAL again (PASSIVE: never waits for a
        commit). Its own connection: run it on another thread, off the callbacks' way."""
        self.db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")

    @guarded("close the intake journal")
    def close(self) -> None:
        self.db.close()


class Applied:
    """`intake_applied`: per journal generation, the last entry applied to this database."""

    def __init__(self, db: peewee.Database, name: str, model: Any) -> None:
        self.db, self.name, self.Applied = db, name, model

    @guarded("read the intake journal's progress")
    def seq(self, journal: str) -> int:
        row = self.Applied.get_or_none(self.Applied.journal == journal)
        return row.seq if row is not None else 0

    @guarded("record an intake entry as applied")
    def mark(self, journal: str, seq: int) -> None:
        (self.Applied.insert(journal=journal, seq=seq)
         .on_conflict(conflict_target=[self.Applied.journal], update={self.Applied.seq: seq}).execute())


def once(store: Any, stamp: Tuple[str, int], fn: Callable[..., Any], *args: Any) -> Tuple[bool, Any]:
    """A writer call: apply one journal entry, `stamp` (generation, seq), by `fn(*args)` and mark it
    applied in the same transaction: (True, fn's result); (False, None) when it was applied before."""
    journal, seq = stamp
    if store.intake.seq(journal) >= seq:
        return False, None
    result = fn(*args)
    store.intake.mark(journal, seq)
    return True, result
