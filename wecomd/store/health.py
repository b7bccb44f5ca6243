"""The database's health behind /healthz: can it be read (Health.ping), and can it take a write right
now (Health.check_writable)?

Reading is not enough: a database that is locked by another process, read-only, or on a full disk
still answers SELECTs while every callback fails with 503. The probe therefore

1. on SQLite, checks the free space of the database's directory: below MIN_FREE_BYTES the next
   commits (WAL growth, checkpoints) fail, so the database counts as full;
2. writes: on SQLite it sets the header field `application_id` to the value it already has. That
   takes the write lock and dirties page 1, so the commit that follows (the writer's, which runs
   the probe like any other call) appends a real frame to the WAL and fsyncs it, yet no data
   changes: nothing is left behind in the database. Elsewhere it runs an UPDATE that matches no
   row, which a read-only connection or transaction still refuses.

A probe that fails raises StoreError (from OSError or a database error). Once the trouble is gone
the next probe succeeds: nothing is remembered between probes.
"""
from __future__ import annotations

import errno
import os

import peewee
from peewee import SQL

from .errors import guarded
from .models import Message

MIN_FREE_BYTES = 1 << 20  # 1 MiB


def human_size(count: float) -> str:
    """A byte count as people read it: "512 bytes", "3.4 KiB" ... "12.0 GiB" (free space, file sizes)."""
    if count < 1024:
        return "%d bytes" % count
    for unit in ("KiB", "MiB"):
        count /= 1024
        if count < 1024:
            return "%.1f %s" % (count, unit)
    return "%.1f GiB" % (count / 1024)


class Health:
    """The probes of the database `db` (named `name`: its file for a SQLite one), reading the bound
    model `Message`."""

    def __init__(self, db: peewee.Database, name: str, Message: type[Message]) -> None:
        self.db, self.name, self.Message = db, name, Message

    @guarded("read the database")
    def ping(self) -> None:
        """Raise StoreError unless the message table can be read."""
        self.Message.select(self.Message.id).limit(1).execute()

    @guarded("write to the database")
    def check_writable(self) -> None:
        """Raise StoreError unless the database can take (and, run by the writer, commit) a write now;
        changes nothing."""
        if not isinstance(self.db, peewee.SqliteDatabase):
            M = self.Message
            M.update(id=M.id).where(SQL("1 = 0")).execute()
            return
        check_free_space(self.name)
        value = self.db.execute_sql("PRAGMA application_id").fetchone()[0]
        self.db.execute_sql("PRAGMA application_id = %d" % int(value))


def check_free_space(path: str, minimum: int = MIN_FREE_BYTES) -> None:
    """Raise OSError(ENOSPC) when the filesystem holding the database file `path` is (nearly) full."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    directory = os.path.dirname(os.path.abspath(path))
    stat = os.statvfs(directory)
    # root may use the blocks reserved for it (ext4: 5%); everyone else only the available ones.
    free = stat.f_frsize * (stat.f_bfree if os.geteuid() == 0 else stat.f_bavail)
    if free < minimum:
        raise OSError(errno.ENOSPC, "disk full: %d KiB free on %s (wecomd needs at least %d KiB)"
                      % (free // 1024, directory, minimum // 1024))
