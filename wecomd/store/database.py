"""Opening the database: a SQLite path or a database URL, SQLite's pragmas, and what the database
can do (RETURNING)."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import peewee
from peewee import SqliteDatabase
from playhouse import db_url

# synchronous=full: a commit reaches the disk before save_inbound returns and the
# callback answers 200, so an acknowledged message survives a power cut.
SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1,
                  "busy_timeout": 5000}


def open_database(url: str, base_dir: Path) -> tuple[peewee.Database, str]:
    """Open (lazily) a path or db URL; relative SQLite paths are taken from base_dir. Returns the
    database and its name: the file of a SQLite one, else the URL without its password."""
    path = sqlite_file(url, base_dir)
    if path is None:
        parsed = urlparse(url)
        return db_url.connect(url), "%s://%s%s" % (parsed.scheme, parsed.hostname or "", parsed.path)
    if "://" not in url:
        return SqliteDatabase(path, pragmas=SQLITE_PRAGMAS), path
    return db_url.connect(url, database=path, pragmas=SQLITE_PRAGMAS), path


def sqlite_file(url: str, base_dir: Path = Path(".")) -> Optional[str]:
    """The file of a SQLite path or sqlite:// URL, relative ones taken from base_dir (":memory:" as
    is); None for any other database URL."""
    if "://" not in url:
        return str(base_dir / Path(url).expanduser())
    if "sqlite" not in urlparse(url).scheme:
        return None
    path = db_url.parse(url)["database"]  # sqlite:///rel/path, sqlite:////abs/path
    return path if path == ":memory:" else str(base_dir / Path(path).expanduser())


def supports_returning(db: peewee.Database) -> bool:
    """INSERT ... RETURNING: SQLite 3.35 and later, and PostgreSQL."""
    return not isinstance(db, SqliteDatabase) or sqlite3.sqlite_version_info >= (3, 35)
