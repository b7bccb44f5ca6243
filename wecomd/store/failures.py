"""Storage of the callback failure log: the last verification and callback requests answered with an
error (table `callback_failure`, migration 0005), written by wecomd.failures, read by `wecomd doctor`.

`Store` inherits these queries from `FailureQueries`. `recent` and `totals` also work on a model bound
to any connection: doctor reads through a read-only one of its own.
"""
from __future__ import annotations

from typing import Optional, Sequence

import peewee
from peewee import fn

from .models import CallbackFailure, bind
from .errors import guarded
from .times import iso


def bind_model(db: peewee.Database) -> type[CallbackFailure]:
    """A subclass bound to `db` (models.bind)."""
    return bind(CallbackFailure, db)


def recent(model: type[CallbackFailure], limit: int = 20, app: Optional[str] = None) -> list[dict]:
    """The newest `limit` failures (of `app`, if given), newest first."""
    query = model.select().order_by(model.id.desc()).limit(max(1, int(limit)))
    if app:
        query = query.where(model.app == app)
    return [failure_json(row) for row in query]


def totals(model: type[CallbackFailure]) -> dict:
    """{"recorded": rows kept, "skipped": failures the rate limit left out between them, "first": ISO of
    the oldest row kept or None}."""
    recorded, skipped, first = model.select(fn.COUNT(model.id), fn.SUM(model.skipped), fn.MIN(model.at)).scalar(
        as_tuple=True)
    return {"recorded": recorded or 0, "skipped": skipped or 0,
            "first": iso(model.at.python_value(first)) if first else None}


def failure_json(row: CallbackFailure) -> dict:
    return {"id": row.id, "at": iso(row.at), "app": row.app, "kind": row.kind, "status": row.status,
            "category": row.category, "reason": row.reason, "remote_ip": row.remote_ip,
            "skipped": row.skipped}


class FailureQueries:
    """The callback failure log; a part of Store. Expects `CallbackFailure` and `_failures` from Store."""

    CallbackFailure: type[CallbackFailure]

    @guarded("record callback failures")
    def record_failures(self, rows: Sequence[dict], keep: Optional[int] = None) -> int:
        """Insert `rows` (the model's fields, `at` naive UTC); with `keep`, then delete all but the newest
        `keep` rows. Returns how many rows were deleted."""
        F = self.CallbackFailure
        if rows:
            F.insert_many(list(rows)).execute()
        if keep is None:
            return 0
        cutoff = F.select(F.id).order_by(F.id.desc()).limit(1).offset(max(1, int(keep)) - 1)
        return F.delete().where(F.id < cutoff).execute()

    @guarded("read callback failures")
    def recent_failures(self, limit: int = 20, app: Optional[str] = None) -> list[dict]:
        """The newest `limit` failures, newest first (see `recent`)."""
        return recent(self.CallbackFailure, limit, app)
