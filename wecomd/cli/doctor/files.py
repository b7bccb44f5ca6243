"""`wecomd doctor`'s local checks: the database (opened read-only, never migrated), the callback failure
log in it, and the media directory."""
from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import tempfile
import urllib.parse
from pathlib import Path
from typing import List, Optional, Tuple

import peewee
from playhouse import db_url

from wecomd import failures
from wecomd.config import Config
from wecomd.cli.doctor.check import Check, shown_url
from wecomd.store import MIGRATIONS_DIR, StoreError, sqlite_file
from wecomd.store.contacts import Contacts
from wecomd.store.failures import Failures
from wecomd.store.health import MIN_FREE_BYTES, human_size
from wecomd.store.models import CallbackFailure, Contact, bind

LOW_SPACE = 1 << 30  # 1 GiB free: warn
_ERRORS = (peewee.PeeweeException, sqlite3.Error, OSError)


def check_database(config: Config) -> Tuple[List[Check], Optional[peewee.Database]]:
    """The database's checks, and a read-only connection to it for the failure log (or None)."""
    url = config.server.database
    path = sqlite_file(url)
    if path is None:
        return _check_other(url)
    if not os.path.exists(path):
        folder = os.path.dirname(path)
        if _writable(folder):
            return [Check("database", "warn", "%s does not exist yet" % path,
                          "`wecomd serve` creates it when it starts")], None
        return [Check("database", "fail", "%s does not exist, and its directory %s is missing or not "
                      "writable" % (path, folder), "create the directory for the service user, e.g. "
                      "install -d -o wecomd -m 0750 %s" % folder)], None
    if not os.access(path, os.R_OK):
        return [Check("database", "fail", "%s: not readable by this user%s" % (path, _owner_note(path)),
                      "run doctor as the service user: sudo -u wecomd wecomd doctor -c FILE")], None
    db = peewee.SqliteDatabase("file:%s?mode=ro" % urllib.parse.quote(path), uri=True, timeout=5)
    try:
        checks = _check_sqlite(db, path)
    except _ERRORS as exc:
        db.close()
        return [Check("database", "fail", "%s: cannot read it: %s" % (path, exc),
                      "check the file's permissions, and that it is a wecomd SQLite database")], None
    return checks, db


def _check_sqlite(db: peewee.Database, path: str) -> List[Check]:
    integrity = [row[0] for row in db.execute_sql("PRAGMA quick_check").fetchall()]
    journal = db.execute_sql("PRAGMA journal_mode").fetchone()[0]
    size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    messages = _count(db, "message")
    summary = "%s: SQLite, %s, journal_mode %s, %s message(s)" % (
        path, human_size(size), journal, "no" if messages is None else messages)
    found = [Check("database", "ok", summary)]
    if integrity != ["ok"]:
        found.append(Check("database", "fail", "quick_check: %s" % "; ".join(integrity[:5]),
                           "stop wecomd, restore the last backup (docs/operations.md, Restoring)"))
    else:
        found[0].message += ", quick_check ok"
    if journal.lower() != "wal":
        found.append(Check("database", "warn", "journal_mode is %s, not wal" % journal,
                           "`wecomd serve` switches it to WAL when it opens the database"))
    found.append(_schema(db))
    found.append(_writable_check(path))
    found.append(_space_check("database", os.path.dirname(path)))
    return found


def _check_other(url: str) -> Tuple[List[Check], Optional[peewee.Database]]:
    shown = shown_url(url)
    try:
        db = db_url.connect(url)
        messages = _count(db, "message")
        return [Check("database", "ok", "%s: %s message(s) (integrity, size and write access are "
                      "checked on SQLite only)" % (shown, messages)), _schema(db)], db
    except _ERRORS as exc:
        return [Check("database", "fail", "%s: cannot connect: %s" % (shown, str(exc).strip()),
                      "check the URL, the server and the credentials")], None


def _schema(db: peewee.Database) -> Check:
    known = sorted(p.stem for p in MIGRATIONS_DIR.glob("[0-9]*.py"))
    applied = ([row[0] for row in db.execute_sql("SELECT name FROM schema_migration")]
               if db.table_exists("schema_migration") else [])
    pending = [name for name in known if name not in applied]
    unknown = sorted(set(applied) - set(known))
    message = "schema: %d of %d migrations applied" % (len(known) - len(pending), len(known))
    if unknown:
        return Check("database", "warn", "%s, and %s, which this wecomd does not know" % (message, ", ".join(unknown)),
                     "the database was used by a newer wecomd: run that version (downgrades are not supported)")
    if pending:
        return Check("database", "warn", "%s; pending: %s" % (message, ", ".join(pending)),
                     "`wecomd serve` applies them when it starts: restart it after an upgrade")
    return Check("database", "ok", message)


def _writable_check(path: str) -> Check:
    folder = os.path.dirname(path)
    if _writable(path) and _writable(folder):
        return Check("database", "ok", "writable%s" % _owner_note(path))
    what = path if not _writable(path) else "its directory %s (SQLite writes -wal and -shm files there)" % folder
    return Check("database", "fail", "%s is not writable by this user%s" % (what, _owner_note(path)),
                 "give the service user write access to the file and its directory "
                 "(chown wecomd: FILE DIR), and list the directory in the unit's ReadWritePaths=")


def check_failure_log(db: Optional[peewee.Database], limit: int) -> Tuple[Check, List[dict]]:
    """The newest `limit` recorded callback failures with what to do about each kind of them."""
    if db is None:
        return Check("failures", "skip", "no database to read the failure log from"), []
    try:
        if not db.table_exists("callback_failure"):
            return Check("failures", "skip", "no failure log in this database yet",
                         "`wecomd serve` adds it (migration 0005) when it starts"), []
        log = Failures(str(db.database), bind(CallbackFailure, db))
        rows, totals = log.recent(limit), log.totals()
    except StoreError as exc:  # its message names the database, which doctor has shown already
        return Check("failures", "warn", "cannot read the failure log: %s" % exc.__cause__), []
    except _ERRORS as exc:
        return Check("failures", "warn", "cannot read the failure log: %s" % exc), []
    if not rows:
        return Check("failures", "ok", "no verification or callback failure recorded"), []
    skipped = " (and %d more left out by the rate limit)" % totals["skipped"] if totals["skipped"] else ""
    newest = "; the newest %d" % len(rows) if totals["recorded"] > len(rows) else ""
    check = Check("failures", "info", "%d recorded since %s%s%s, newest first:"
                  % (totals["recorded"], totals["first"], skipped, newest))
    for row in rows:
        check.details.append("%s %s %s %d from %s [%s] %s" % (row["at"], row["app"], row["kind"], row["status"],
                                                             row["remote_ip"] or "?", row["category"], row["reason"]))
    for category in dict.fromkeys(row["category"] for row in rows):
        apps = sorted({row["app"] for row in rows if row["category"] == category})
        hint = failures.HINTS.get(category, "see the log")
        check.details.append("what to do about [%s]: %s" % (category, hint.replace("NAME", "|".join(apps))))
    return check, rows


def check_media(config: Config) -> List[Check]:
    media = config.server.media_dir
    if media.exists() and not media.is_dir():
        return [Check("media", "fail", "%s is not a directory" % media, "point [server] media_dir at a directory")]
    if not media.exists():
        parent = next((p for p in media.parents if p.exists()), Path("/"))
        if not (parent.is_dir() and _writable(str(parent))):
            return [Check("media", "fail", "%s does not exist and cannot be created (%s is not a writable "
                          "directory)" % (media, parent), "create it for the service user: install -d -o "
                          "wecomd -m 0750 %s" % media)]
        return [Check("media", "warn", "%s does not exist yet" % media, "wecomd creates it at the first "
                      "download; to be sure of its owner: install -d -o wecomd -m 0750 %s" % media),
                _space_check("media", str(parent))]
    try:
        fd, probe = tempfile.mkstemp(dir=str(media), prefix=".wecomd-doctor-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return [Check("media", "fail", "%s is not writable by this user: %s%s"
                      % (media, exc.strerror or exc, _owner_note(str(media))),
                      "give the service user write access (chown wecomd: %s), and list it in the unit's "
                      "ReadWritePaths=" % media), _space_check("media", str(media))]
    return [Check("media", "ok", "%s: writable%s" % (media, _owner_note(str(media)))), _space_check("media", str(media))]


def _space_check(name: str, folder: str) -> Check:
    usage = shutil.disk_usage(folder)
    message = "%s free on the filesystem of %s" % (human_size(usage.free), folder)
    if usage.free < MIN_FREE_BYTES:
        return Check(name, "fail", message, "the disk is full: free space, or callbacks fail with 503")
    if usage.free < LOW_SPACE:
        return Check(name, "warn", message, "free space soon; lower [server] retention_days to keep less")
    return Check(name, "ok", message)


def _count(db: peewee.Database, table: str) -> Optional[int]:
    return db.execute_sql('SELECT COUNT(*) FROM "%s"' % table).fetchone()[0] if db.table_exists(table) else None


def _writable(path: str) -> bool:
    return os.path.exists(path) and os.access(path, os.W_OK)


def _owner_note(path: str) -> str:
    """Who owns `path`, when doctor runs as root: root may write anywhere, the service user may not."""
    if os.geteuid() != 0 or not os.path.exists(path):
        return ""
    st = os.stat(path)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    return " (checked as root; owner %s, mode %o: run doctor as the service user to check its access)" % (
        owner, st.st_mode & 0o777)


def check_contacts(db: Optional[peewee.Database]) -> Check:
    """Why the dashboard shows some UserIDs instead of names: the failed contact lookups, once per errcode."""
    if db is None:
        return Check("contacts", "skip", "no database to read the contact cache from")
    try:
        if not db.table_exists("contact"):
            return Check("contacts", "skip", "no contact cache in this database yet",
                         "`wecomd serve` adds it (migration 0008) when it starts")
        errors = Contacts(db, str(db.database), bind(Contact, db)).errors()
    except StoreError as exc:
        return Check("contacts", "warn", "cannot read the contact cache: %s" % exc.__cause__)
    except _ERRORS as exc:
        return Check("contacts", "warn", "cannot read the contact cache: %s" % exc)
    if not errors:
        return Check("contacts", "ok", "no failed contact lookup: the dashboard shows names")
    check = Check("contacts", "warn", "%d user(s) shown by UserID: WeCom refused their lookup"
                  % sum(row["count"] for row in errors),
                  "give the app the address book in its 可见范围 (visible range), or accept UserIDs")
    check.details.extend("errcode %s: %d user(s); e.g. %s" % (row["errcode"], row["count"], row["error"])
                         for row in errors)
    return check
