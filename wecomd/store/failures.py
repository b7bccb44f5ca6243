"""The callback failure log (table `callback_failure`, migration 0005): the last verification and
callback requests answered with an error, written by wecomd.failures, read by `wecomd doctor`.

`Failures` works on a model bound to any connection: doctor reads through a read-only one of its own.
"""
from __future__ import annotations

from typing import Optional, Sequence

from peewee import fn

from .errors import guarded
from .models import CallbackFailure
from .times import iso


class Failures:
    """The failure log of the database `name`, through the bound model `CallbackFailure`."""

    def __init__(self, name: str, CallbackFailure: type[CallbackFailure]) -> None:
        self.name, self.CallbackFailure = name, CallbackFailure

    @guarded("record callback failures")
    def record(self, rows: Sequence[dict], keep: Optional[int] = None) -> int:
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
    def recent(self, limit: int = 20, app: Optional[str] = None) -> list[dict]:
        """The newest `limit` failures (of `app`, if given), newest first."""
        F = self.CallbackFailure
        query = F.select().order_by(F.id.desc()).limit(max(1, int(limit)))
        if app:
            query = query.where(F.app == app)
        return [failure_json(row) for row in query]

    @guarded("count callback failures")
    def totals(self) -> dict:
        """{"recorded": rows kept, "skipped": failures the rate limit left out between them, "first": ISO
        of the oldest row kept or None}."""
        F = self.CallbackFailure
        recorded, skipped, first = F.select(fn.COUNT(F.id), fn.SUM(F.skipped), fn.MIN(F.at)).scalar(as_tuple=True)
        return {"recorded": recorded or 0, "skipped": skipped or 0,
                "first": iso(F.at.python_value(first)) if first else None}


def failure_json(row: CallbackFailure) -> dict:
    return {"id": row.id, "at": iso(row.at), "app": row.app, "kind": row.kind, "status": row.status,
            "category": row.category, "reason": row.reason, "remote_ip": row.remote_ip,
            "skipped": row.skipped}
