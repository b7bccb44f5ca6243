"""Who looks after a conversation, and whether it is open (table `conversation_state`, migrations
0008 and 0009_positions).

A conversation (app, user) without a row is unassigned and open. `assign` and `set_state` write
the row; nothing else does.

An inbound message reopens a closed conversation, and that is derived, not written: closing stores
the id of the conversation's newest message (`closed_last_id`), and the state reads "closed" only
while no inbound message has a higher id (`state_expression`, one EXISTS on the message index
(app, user, id)). The callback path stores a message in one statement (Messages.save_inbound, on
the writer thread, with group commit); writing the state there would add a statement to every
callback for the rare case of a closed conversation. Reading it costs a probe of the index for
closed conversations only, on the dashboard's reader thread. A reply (outbound) never reopens.

This needs message ids that only grow. PostgreSQL's sequence never goes back; SQLite gives a new
row the highest id plus one, so ids go back only if the newest messages of the whole database are
deleted (retention pruning everything, when nothing arrived for `retention_days`): a conversation
closed before that stays closed until someone opens it.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import peewee
from peewee import SQL, Case, fn

from .errors import guarded
from .models import CONVERSATION_STATES, Models
from .times import iso, utcnow


def state_expression(S: Any, M: Any) -> peewee.Node:
    """The SQL of a conversation's state, "open" or "closed", for a query that has the state row
    `S` (LEFT JOINed: no row is open) and can see the Message model `M`."""
    reopened = fn.EXISTS(M.select(SQL("1")).where(
        (M.app == S.app) & (M.user == S.user) & (M.direction == "in") & (M.id > S.closed_last_id)))
    return Case(None, [((S.state == "closed") & ~reopened, "closed")], "open")


class Assignments:
    """Conversation assignment and open/closed state of the database `db` (named `name`)."""

    def __init__(self, db: peewee.Database, name: str, models: Models) -> None:
        self.db, self.name = db, name
        self.State, self.Message = models.ConversationState, models.Message

    @guarded("read a conversation's assignment")
    def get(self, app: str, user: str) -> dict:
        """{"app", "user", "assignee", "state", "updated_at", "updated_by"}; a conversation never
        assigned nor closed (or one that does not exist) is unassigned and open."""
        S = self.State
        row = (S.select(S.assignee, state_expression(S, self.Message).alias("state"), S.updated_at, S.updated_by)
               .where((S.app == app) & (S.user == user)).dicts().first())
        if row is None:
            return dict(app=app, user=user, assignee=None, state="open", updated_at=None, updated_by=None)
        return dict(app=app, user=user, assignee=row["assignee"], state=row["state"],
                    updated_at=iso(S.updated_at.python_value(row["updated_at"])), updated_by=row["updated_by"])

    @guarded("assign a conversation")
    def assign(self, app: str, user: str, assignee: Optional[str], by: str,
               now: Optional[datetime] = None) -> dict:
        """Assign (app, user) to `assignee` (None: unassign), by the operator `by`; get()'s JSON.
        KeyError when the conversation has no message: nothing is stored."""
        S, now = self.State, now or utcnow(whole_seconds=True)
        with self.db.atomic():
            self._newest(app, user)
            S.insert(app=app, user=user, assignee=assignee, state="open", updated_at=now, updated_by=by) \
                .on_conflict(conflict_target=[S.app, S.user],
                             update={S.assignee: assignee, S.updated_at: now, S.updated_by: by}).execute()
            return self.get(app, user)

    @guarded("open or close a conversation")
    def set_state(self, app: str, user: str, state: str, by: str, now: Optional[datetime] = None) -> dict:
        """Mark (app, user) "open" or "closed", by the operator `by`; get()'s JSON. Closing
        remembers the newest message, so the next inbound message reopens it. KeyError when the
        conversation has no message, ValueError for another state: nothing is stored."""
        if state not in CONVERSATION_STATES:
            raise ValueError("state must be one of %s, not %r" % (", ".join(CONVERSATION_STATES), state))
        S, now = self.State, now or utcnow(whole_seconds=True)
        with self.db.atomic():
            newest = self._newest(app, user)
            closed_last_id = newest if state == "closed" else None
            S.insert(app=app, user=user, assignee=None, state=state, closed_last_id=closed_last_id,
                     updated_at=now, updated_by=by) \
                .on_conflict(conflict_target=[S.app, S.user],
                             update={S.state: state, S.closed_last_id: closed_last_id, S.updated_at: now,
                                     S.updated_by: by}).execute()
            return self.get(app, user)

    def _newest(self, app: str, user: str) -> int:
        """The id of the conversation's newest message (on the index (app, user, id)); KeyError without one."""
        M = self.Message
        newest = M.select(fn.MAX(M.id)).where((M.app == app) & (M.user == user)).scalar()
        if newest is None:
            raise KeyError("no conversation %s/%s" % (app, user))
        return newest
