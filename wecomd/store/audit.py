"""The audit log (table `audit`, migration 0008): who did what, when, to what.

Rows are only ever added; the retention worker deletes them only past `[server]
audit_retention_days` (0, the default: kept for good), never with the messages.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Iterator, Optional

import peewee

from .errors import guarded, store_errors
from .models import AuditEvent
from .paging import keyset, page_size
from .times import iso, naive_utc, utcnow


def audit_json(row: AuditEvent) -> dict:
    return dict(id=row.id, at=iso(row.at), actor=row.actor, action=row.action, target=row.target,
                detail=json.loads(row.detail) if row.detail else None, client=row.client)


class Audit:
    """The audit log of the database `db` (named `name`)."""

    def __init__(self, db: peewee.Database, name: str, AuditEvent: type[AuditEvent]) -> None:
        self.db, self.name, self.AuditEvent = db, name, AuditEvent

    @guarded("write the audit log")
    def record(self, actor: str, action: str, target: Optional[str] = None, detail: Optional[dict] = None,
               client: Optional[str] = None, at: Optional[datetime] = None) -> int:
        """Add one row; returns its id. Runs in the caller's transaction (with what it records)."""
        return self.AuditEvent.insert(
            at=naive_utc(at) if at is not None else utcnow(whole_seconds=True), actor=actor, action=action,
            target=target, detail=json.dumps(detail, ensure_ascii=False, sort_keys=True) if detail else None,
            client=client).execute()

    def _select(self, actor: Optional[str], action: Optional[str], target: Optional[str],
                since: Optional[datetime], until: Optional[datetime]) -> peewee.ModelSelect:
        A = self.AuditEvent
        query = A.select()
        if actor:
            query = query.where(A.actor == actor)
        if action:
            query = query.where(A.action == action)
        if target:
            query = query.where(A.target == target)
        if since is not None:
            query = query.where(A.at >= naive_utc(since))
        if until is not None:
            query = query.where(A.at < naive_utc(until))
        return query

    @guarded("read the audit log")
    def page(self, actor: Optional[str] = None, action: Optional[str] = None, target: Optional[str] = None,
             since: Optional[datetime] = None, until: Optional[datetime] = None, before: Optional[int] = None,
             limit: int = 50) -> tuple[list[dict], Optional[int]]:
        """(rows newest first, the cursor of the next page or None); pass the cursor back as `before`."""
        limit = page_size(limit)
        A = self.AuditEvent
        query = self._select(actor, action, target, since, until)
        if before is not None:
            query = query.where(A.id < int(before))
        rows = list(query.order_by(A.id.desc()).limit(limit + 1))
        page, cursor = keyset(rows, limit, lambda row: row.id)
        return [audit_json(row) for row in page], cursor

    def iter_all(self, actor: Optional[str] = None, action: Optional[str] = None, target: Optional[str] = None,
                 since: Optional[datetime] = None, until: Optional[datetime] = None,
                 batch: int = 1000) -> Iterator[dict]:
        """Every matching row, oldest first, read `batch` at a time (an export of any size)."""
        A = self.AuditEvent
        after = 0
        while True:
            with store_errors(self.name, "read the audit log"):
                rows = list(self._select(actor, action, target, since, until)
                            .where(A.id > after).order_by(A.id).limit(batch))
            yield from (audit_json(row) for row in rows)
            if len(rows) < batch:
                return
            after = rows[-1].id

    @guarded("prune the audit log")
    def prune(self, before: datetime) -> int:
        """Delete the rows older than `before`; returns how many went."""
        A = self.AuditEvent
        with self.db.atomic():
            return A.delete().where(A.at < naive_utc(before)).execute()

