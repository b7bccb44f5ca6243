"""Takeover pauses (table `takeover`): automation paused for one user of one app while an operator
answers by hand (wecomd.automation.takeover decides when)."""
from __future__ import annotations

from datetime import datetime
from typing import Optional

import peewee
from peewee import EXCLUDED

from .errors import guarded
from .models import Takeover
from .times import naive_utc

# Whether automation is paused for (app, user) at a time ({p}: the database's parameter mark),
# as an SQL expression: Messages.save_delivery reads it inside the message's INSERT.
PAUSED_SQL = 'EXISTS (SELECT 1 FROM "takeover" WHERE "app" = {p} AND "user" = {p} AND "until" > {p})'


class Takeovers:
    """The pauses in the database `db` (named `name`), through the bound model `Takeover`."""

    def __init__(self, db: peewee.Database, name: str, Takeover: type[Takeover]) -> None:
        self.db, self.name, self.Takeover = db, name, Takeover
        # On every callback: plain SQL rather than the query builder, which costs more than the lookup.
        self._until_sql = 'SELECT "until" FROM "takeover" WHERE "app" = {0} AND "user" = {0} AND "until" > {0}' \
            .format(db.param)

    @guarded("pause automation")
    def pause(self, app: str, user: str, until: datetime, operator: Optional[str] = None) -> None:
        """Pause automation for (app, user) until `until`; never shortens a later pause."""
        T = self.Takeover
        with self.db.atomic():
            T.insert(app=app, user=user, until=naive_utc(until), operator=operator).on_conflict(
                conflict_target=[T.app, T.user],
                update={T.until: EXCLUDED.until, T.operator: EXCLUDED.operator},
                where=EXCLUDED.until > T.until).execute()

    @guarded("resume automation")
    def resume(self, app: str, user: str) -> None:
        """End a pause of (app, user) now; nothing happens without one."""
        T = self.Takeover
        with self.db.atomic():
            T.delete().where((T.app == app) & (T.user == user)).execute()

    @guarded("read the takeover pause")
    def paused_until(self, app: str, user: str, now: datetime) -> Optional[datetime]:
        """When the pause of (app, user) ends (naive UTC), or None when absent or over at `now`."""
        until = self.Takeover.until
        row = self.db.execute_sql(self._until_sql, (app, user, until.db_value(naive_utc(now)))).fetchone()
        return until.python_value(row[0]) if row else None
