"""Internal notes (table `note`, migrations 0008 and 0009_positions): what operators write to each
other in a conversation's thread. A note is never sent to WeCom and is no message: it is not in the
message table, its search, its counts or the customer-facing export (exporting.with_notes adds them
when asked).

A note keeps its place in the thread as `after_id`, the id of the conversation's newest message
when it was written: the thread and the export show it right after that message, which the
whole-second times could not tell apart from a message of the same second."""
from __future__ import annotations

from datetime import datetime
from typing import Iterable, Iterator, Optional, Union

import peewee
from peewee import fn

from .errors import guarded, store_errors
from .models import Models
from .paging import keyset, page_size
from .times import iso, naive_utc, utcnow

NOTE_PAGE = 100  # notes per page when the caller does not say


def note_json(row: peewee.Model) -> dict:
    return dict(id=row.id, app=row.app, user=row.user, author=row.author, text=row.text,
                created_at=iso(row.created_at), after_id=row.after_id)


class Notes:
    """The internal notes of the database `db` (named `name`)."""

    def __init__(self, db: peewee.Database, name: str, models: Models) -> None:
        self.db, self.name = db, name
        self.Note, self.Message = models.Note, models.Message

    @guarded("add a note")
    def add(self, app: str, user: str, author: str, text: str, now: Optional[datetime] = None) -> dict:
        """Add `author`'s note to the conversation (app, user); its JSON. KeyError when the
        conversation has no message: nothing is stored."""
        M, now = self.Message, now or utcnow(whole_seconds=True)
        with self.db.atomic():
            newest = M.select(fn.MAX(M.id)).where((M.app == app) & (M.user == user)).scalar()
            if newest is None:
                raise KeyError("no conversation %s/%s" % (app, user))
            note_id = self.Note.insert(app=app, user=user, author=author, text=text, created_at=now,
                                       after_id=newest).execute()
            return note_json(self.Note.get_by_id(note_id))

    @guarded("read notes")
    def page(self, app: str, user: str, before: Optional[int] = None,
             limit: int = NOTE_PAGE) -> tuple[list[dict], Optional[int]]:
        """(the conversation's notes newest first, the cursor of the next page or None); pass the
        cursor back as `before`."""
        N, limit = self.Note, page_size(limit)
        query = N.select().where((N.app == app) & (N.user == user))
        if before is not None:
            query = query.where(N.id < before)
        rows = [note_json(row) for row in query.order_by(N.id.desc()).limit(limit + 1)]
        return keyset(rows, limit, lambda row: row["id"])

    def iter_export(self, app: Union[str, Iterable[str], None] = None, user: Optional[str] = None,
                    since: Optional[datetime] = None, batch: int = 500) -> Iterator[dict]:
        """Yield note JSON oldest first (by id, which is creation order, so by after_id too), `batch`
        rows per query; the app, user and since filters as Messages.iter_export's (`app` may be a
        list)."""
        N, batch = self.Note, max(1, int(batch))
        query = N.select()
        if isinstance(app, (list, tuple, set, frozenset)):
            query = query.where(N.app.in_(sorted(app)))
        elif app:
            query = query.where(N.app == app)
        if user:
            query = query.where(N.user == user)
        if since is not None:
            query = query.where(N.created_at >= naive_utc(since))
        query = query.order_by(N.id).limit(batch)
        last_id = 0
        while True:
            with store_errors(self.name, "export notes"):
                rows = [note_json(row) for row in query.where(N.id > last_id)]
            yield from rows
            if len(rows) < batch:
                return
            last_id = rows[-1]["id"]
