"""`wecomd doctor`'s backlog checks: what waits to be stored, read from the files only (never
written, so safe while wecomd serves).

- `kf-pull:OPEN_KFID`, per 微信客服 account in `kf_cursor`: when it was last pulled, the process
  pulling it now (its lease) and the pages it kept and has not stored as messages yet (`kf_page`);
  a warning when a callback rang more than STALE ago and no pull has covered it, when the process
  holding the lease is gone, or when kept pages wait with no pull running.
- `intake`: the callback intake journal (`<database>.intake`, docs/kf.md "Callbacks while a pull
  runs"): the entries recorded and how many are not applied to the database yet; a warning when
  the oldest of those is older than STALE (while wecomd runs, the log says why).
"""
from __future__ import annotations

import os
import sqlite3
import urllib.parse
from datetime import datetime, timedelta
from typing import List, Optional

import peewee

from wecomd.cli.doctor.check import Check
from wecomd.kf.pull import owner_gone, owner_pid
from wecomd.store.intake import journal_path
from wecomd.store.times import iso, naive_utc, utcnow

STALE = timedelta(minutes=5)  # a callback not pulled for, or an entry not applied, this long: warn
_ERRORS = (peewee.PeeweeException, sqlite3.Error, OSError)
_RUNNING = "is `wecomd serve` running? its log says why (lines with \"kf:\" or \"intake:\")"


def check_kf_pulls(db: Optional[peewee.Database], now: Optional[datetime] = None) -> List[Check]:
    """One line per 微信客服 account wecomd has pulled or been rung for (none before the first)."""
    if db is None:
        return []
    now = now or utcnow()
    try:
        if not db.table_exists("kf_cursor"):
            return []
        rows = db.execute_sql("SELECT open_kfid, app, cursor, pending, token_at, lease_owner, lease_until, pulled_at "
                              "FROM kf_cursor ORDER BY id").fetchall()
        kept = dict(db.execute_sql("SELECT open_kfid, COUNT(*) FROM kf_page GROUP BY open_kfid").fetchall())
    except _ERRORS as exc:
        return [Check("kf-pull", "warn", "cannot read the 微信客服 cursors: %s" % exc)]
    return [_pull_check(row, kept.get(row[0], 0), now) for row in rows]


def _pull_check(row: tuple, pages: int, now: datetime) -> Check:
    open_kfid, app, cursor, pending, token_at, owner, until, pulled_at = row
    name = "kf-pull:%s" % open_kfid
    pulled = "last pulled %s" % _shown(pulled_at) if pulled_at else "never pulled yet"
    waiting = "%d page(s) kept and not stored as messages yet" % pages if pages else "nothing kept to store"
    until_at = _parsed(until)
    if owner and until_at is not None and until_at >= now:
        if owner_gone(owner):
            return Check(name, "warn", "app %s: the process that held its pull (pid %s) is gone; %s; %s"
                         % (app, owner_pid(owner), pulled, waiting),
                         "wecomd takes the pull over at once when it next pulls (its start, or a callback); "
                         "the lease runs out by itself at %s" % _shown(until))
        pid = owner_pid(owner)
        return Check(name, "info", "app %s: being pulled now (%s); %s; %s" % (
            app, "process %d" % pid if pid else "by %s" % owner.rpartition(":")[0], pulled, waiting))
    rang = _parsed(token_at)
    if pending and rang is not None and now - rang > STALE:
        return Check(name, "warn", "app %s: a callback rang at %s and no pull has covered it since; %s; %s"
                     % (app, _shown(token_at), pulled, waiting), _RUNNING + "; a pull that failed is tried "
                     "again every 5 s while it is pending")
    if pages:
        return Check(name, "warn", "app %s: %s, and no pull is running; %s" % (app, waiting, pulled),
                     "the next pull stores them first (at wecomd's start, or the next callback); " + _RUNNING)
    rung = "a callback rang at %s: its pull is due" % _shown(token_at) if pending and token_at else waiting
    return Check(name, "ok", "app %s: %s%s; %s" % (app, pulled, "" if cursor or not pulled_at else " (no cursor)", rung))


def check_intake(database_file: Optional[str], db: Optional[peewee.Database],
                 now: Optional[datetime] = None) -> List[Check]:
    """The intake journal beside a SQLite database file: recorded entries and those not applied."""
    path = journal_path(database_file)
    if path is None or db is None or not os.path.exists(path):
        return []
    now = now or utcnow()
    try:
        journal = sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(path), uri=True, timeout=5)
        try:
            generation = journal.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            applied = _applied(db, generation[0]) if generation else 0
            total = journal.execute("SELECT COUNT(*) FROM entry").fetchone()[0]
            waiting, oldest = journal.execute("SELECT COUNT(*), MIN(at) FROM entry WHERE seq > ?",
                                              (applied,)).fetchone()
        finally:
            journal.close()
    except _ERRORS as exc:
        return [Check("intake", "warn", "%s: cannot read it: %s" % (path, exc),
                      "run doctor as the service user (the journal is the service user's, beside the database)")]
    if not waiting:
        return [Check("intake", "ok", "%s: nothing waits to be applied (%d entr%s kept, applied)"
                      % (path, total, "y" if total == 1 else "ies"))]
    message = "%s: %d callback(s) recorded and not applied to the database yet, the oldest at %s" % (
        path, waiting, _shown(oldest))
    oldest_at = _parsed(oldest)
    if oldest_at is not None and now - oldest_at > STALE:
        return [Check("intake", "warn", message, "wecomd applies them in order while it runs and at its start; "
                      + _RUNNING + ", e.g. \"cannot be applied\" for an entry it leaves in the file")]
    return [Check("intake", "info", message + " (a 微信客服 pull is storing; they follow it)")]


def _applied(db: peewee.Database, generation: str) -> int:
    if not db.table_exists("intake_applied"):
        return 0
    row = db.execute_sql("SELECT seq FROM intake_applied WHERE journal = ?", (generation,)).fetchone()
    return row[0] if row else 0


def _parsed(value: Optional[str]) -> Optional[datetime]:
    """A time as the database or the journal holds it (UTC, naive or with a Z), naive UTC."""
    if not value:
        return None
    try:
        return naive_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        return None


def _shown(value: Optional[str]) -> str:
    """A stored time as JSON shows it (store.times.iso); the text as it is if it is no time."""
    return iso(_parsed(value)) or str(value)
