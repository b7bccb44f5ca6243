"""Quick replies (table `quick_reply`, migration 0008): saved snippets for the reply box, shared with
everyone (`owner` NULL) or one operator's own. A shortcut names one snippet among those its reader
sees: it is unique among the shared ones and among each operator's own."""
from __future__ import annotations

from typing import Optional

import peewee

from .errors import guarded
from .models import QuickReply
from .times import iso, utcnow


class ShortcutTaken(ValueError):
    """Another quick reply of the same owner (or another shared one) has this shortcut."""


def quick_reply_json(row: QuickReply) -> dict:
    return dict(id=row.id, shortcut=row.shortcut, text=row.text, team=row.owner is None, owner=row.owner,
                created_at=iso(row.created_at), updated_at=iso(row.updated_at))


class QuickReplies:
    """The quick replies of the database `db` (named `name`)."""

    def __init__(self, db: peewee.Database, name: str, QuickReply: type[QuickReply]) -> None:
        self.db, self.name, self.QuickReply = db, name, QuickReply

    @guarded("read quick replies")
    def visible(self, operator: str) -> list[dict]:
        """The shared quick replies and `operator`'s own, by shortcut (shared first on a tie)."""
        Q = self.QuickReply
        query = Q.select().where(Q.owner.is_null() | (Q.owner == operator))
        rows = sorted(query, key=lambda row: (row.shortcut, row.owner is not None, row.id))
        return [quick_reply_json(row) for row in rows]

    @guarded("read a quick reply")
    def get(self, reply_id: int) -> Optional[dict]:
        row = self.QuickReply.get_or_none(self.QuickReply.id == reply_id)
        return quick_reply_json(row) if row is not None else None

    @guarded("add a quick reply")
    def add(self, shortcut: str, text: str, owner: Optional[str]) -> dict:
        """A new quick reply, shared when `owner` is None; ShortcutTaken when its owner has the shortcut."""
        Q, now = self.QuickReply, utcnow(whole_seconds=True)
        with self.db.atomic():
            self._check_free(shortcut, owner)
            reply_id = Q.insert(shortcut=shortcut, text=text, owner=owner, created_at=now, updated_at=now).execute()
            return quick_reply_json(Q.get_by_id(reply_id))

    @guarded("change a quick reply")
    def update(self, reply_id: int, shortcut: Optional[str] = None, text: Optional[str] = None) -> dict:
        """Change a quick reply's shortcut and/or text; KeyError without it, ShortcutTaken as in add."""
        Q = self.QuickReply
        with self.db.atomic():
            row = Q.get_or_none(Q.id == reply_id)
            if row is None:
                raise KeyError("no quick reply %r" % (reply_id,))
            changes = {Q.updated_at: utcnow(whole_seconds=True)}
            if shortcut is not None and shortcut != row.shortcut:
                self._check_free(shortcut, row.owner)
                changes[Q.shortcut] = shortcut
            if text is not None:
                changes[Q.text] = text
            Q.update(changes).where(Q.id == reply_id).execute()
            return quick_reply_json(Q.get_by_id(reply_id))

    @guarded("delete a quick reply")
    def delete(self, reply_id: int) -> dict:
        """Delete a quick reply; the JSON it had. KeyError without it."""
        Q = self.QuickReply
        with self.db.atomic():
            row = Q.get_or_none(Q.id == reply_id)
            if row is None:
                raise KeyError("no quick reply %r" % (reply_id,))
            Q.delete().where(Q.id == reply_id).execute()
            return quick_reply_json(row)

    def _check_free(self, shortcut: str, owner: Optional[str]) -> None:
        Q = self.QuickReply
        same_owner = Q.owner.is_null() if owner is None else Q.owner == owner
        if Q.select().where((Q.shortcut == shortcut) & same_owner).exists():
            raise ShortcutTaken("the shortcut %r is taken%s" % (shortcut, "" if owner is None else " (yours)"))
