"""SQLite's online backup into one checked, fsynced file (Maintenance.backup, `wecomd backup`)."""
from __future__ import annotations

import os
import sqlite3
import tempfile
from contextlib import suppress
from pathlib import Path


def copy_sqlite(source: sqlite3.Connection, target: Path, pages: int = 1024) -> dict:
    """Copy the database of `source` (an open connection outside any transaction) into `target`.

    The copy is made with SQLite's online backup API, `pages` pages per step, all inside one read
    transaction on `source`. In WAL mode a reader never blocks the writer, and the snapshot it
    holds keeps other connections' commits from restarting the copy: without it, a daemon that
    commits between two steps sends the backup back to page one, for ever under steady traffic.

    The copy goes to a temporary file beside `target` (mode 0600), is switched to a rollback
    journal so that it is one self-contained file, must pass `PRAGMA integrity_check` (and the
    FTS5 index check when it has message_fts), is fsynced, and only then renamed to `target`,
    replacing any file there. Returns {"path", "bytes", "messages", "pages", "steps"}; raises
    sqlite3.Error (sqlite3.DatabaseError for a damaged copy) or OSError, leaving no temp file.
    """
    target = Path(target).absolute()
    fd, temp = tempfile.mkstemp(dir=str(target.parent), prefix=".%s." % target.name, suffix=".partial")
    os.close(fd)
    try:
        copied = _backup_into(source, temp, max(1, int(pages)))
        _fsync(temp)
        os.replace(temp, str(target))
    except BaseException:
        for leftover in (temp, temp + "-journal", temp + "-wal", temp + "-shm"):
            with suppress(OSError):
                os.unlink(leftover)
        raise
    with suppress(OSError):
        _fsync(str(target.parent), directory=True)
    return dict(copied, path=str(target), bytes=target.stat().st_size)


def _backup_into(source: sqlite3.Connection, path: str, pages: int) -> dict:
    copy = sqlite3.connect(path, isolation_level=None)
    try:
        steps = []
        source.execute("BEGIN")
        try:
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the snapshot
            source.backup(copy, pages=pages, progress=lambda *_: steps.append(1))
        finally:
            source.execute("ROLLBACK")
        copy.execute("PRAGMA journal_mode=delete")
        problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("the copy fails integrity_check: %s" % "; ".join(problems[:5]))
        tables = {row[0] for row in copy.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "message_fts" in tables:
            copy.execute("INSERT INTO message_fts(message_fts) VALUES ('integrity-check')")
        messages = copy.execute("SELECT count(*) FROM message").fetchone()[0] if "message" in tables else 0
        return {"messages": messages, "pages": copy.execute("PRAGMA page_count").fetchone()[0],
                "steps": len(steps)}
    finally:
        copy.close()


def _fsync(path: str, directory: bool = False) -> None:
    """Flush a file to disk, or a directory so that a rename in it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot fsync a directory; a file must be flushed
            raise
    finally:
        os.close(fd)
