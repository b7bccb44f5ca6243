"""The contact directory's cache (table `contact`, migration 0008): what WeCom's user/get and
department/list said about a UserID, with when, or why it could not say (wecomd.contacts fills it).

Rows are keyed by (corp_id, userid). A failed lookup keeps its errcode and error, with name NULL, so
the UserID is shown and `wecomd doctor` can say why once.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Iterable, Iterator, Optional

import peewee
from peewee import EXCLUDED

from .errors import guarded, store_errors
from .models import Contact
from .times import iso, naive_utc

CONTACT_FIELDS = ("name", "departments", "position", "errcode", "error")


def contact_json(row: Contact) -> dict:
    return dict(corp_id=row.corp_id, userid=row.userid, name=row.name,
                departments=json.loads(row.departments) if row.departments else [], position=row.position,
                errcode=row.errcode, error=row.error, fetched_at=iso(row.fetched_at))


class Contacts:
    """The cached contacts of the database `db` (named `name`)."""

    def __init__(self, db: peewee.Database, name: str, Contact: type[Contact]) -> None:
        self.db, self.name, self.Contact = db, name, Contact

    @guarded("read contacts")
    def get_many(self, corp_id: str, userids: Iterable[str]) -> dict[str, dict]:
        """userid -> contact JSON for those of `userids` that are cached (any age)."""
        wanted = sorted({u for u in userids if u})
        C, found = self.Contact, {}
        for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit, with room
            query = C.select().where((C.corp_id == corp_id) & C.userid.in_(wanted[start:start + 500]))
            found.update({row.userid: contact_json(row) for row in query})
        return found

    @guarded("save a contact")
    def save(self, corp_id: str, userid: str, fetched_at: datetime, name: Optional[str] = None,
             departments: Optional[list] = None, position: Optional[str] = None,
             errcode: Optional[int] = None, error: Optional[str] = None) -> dict:
        """Insert or replace what is known of (corp_id, userid); returns its JSON. A failed lookup
        (errcode set) keeps a name learned before: a lost permission does not hide a known name."""
        C = self.Contact
        update = {C.fetched_at: EXCLUDED.fetched_at, C.errcode: EXCLUDED.errcode, C.error: EXCLUDED.error}
        if errcode is None:
            update.update({C.name: EXCLUDED.name, C.departments: EXCLUDED.departments,
                           C.position: EXCLUDED.position})
        with self.db.atomic():
            C.insert(corp_id=corp_id, userid=userid, name=name,
                     departments=json.dumps(departments, ensure_ascii=False) if departments is not None else None,
                     position=position, errcode=errcode, error=error, fetched_at=naive_utc(fetched_at)) \
                .on_conflict(conflict_target=[C.corp_id, C.userid], update=update).execute()
        return self.get_many(corp_id, [userid])[userid]

    @guarded("search contacts")
    def userids_named(self, text: str, limit: int = 200) -> list[str]:
        """The UserIDs whose cached name contains `text` (case-insensitive), for `q=` search."""
        C = self.Contact  # contains() escapes % and _: the text is taken literally
        query = C.select(C.userid).where(C.name.contains(text)).distinct().limit(limit)
        return [row.userid for row in query]

    @guarded("read contact errors")
    def errors(self) -> list[dict]:
        """One row per errcode of failed lookups: {errcode, error (the newest), count}, most frequent first."""
        C = self.Contact
        query = (C.select(C.errcode, peewee.fn.MAX(C.error).alias("error"), peewee.fn.COUNT(C.id).alias("count"))
                 .where(C.errcode.is_null(False)).group_by(C.errcode).order_by(peewee.fn.COUNT(C.id).desc()))
        return [dict(errcode=row.errcode, error=row.error, count=row.count) for row in query]

    def with_names(self, rows: Iterable[dict], corp_of: dict, batch: int = 500) -> Iterator[dict]:
        """`rows` (Message JSON) with "user_name" from the cache, `batch` at a time (an export of any
        size); `corp_of` maps an app to its corp_id."""
        chunk: list = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= batch:
                yield from self._named(chunk, corp_of)
                chunk = []
        yield from self._named(chunk, corp_of)

    def _named(self, rows: list, corp_of: dict) -> list:
        by_corp: dict = {}
        for row in rows:
            by_corp.setdefault(corp_of.get(row.get("app")), set()).add(counterpart(row))
        names: dict = {}
        with store_errors(self.name, "read contacts"):
            for corp, users in by_corp.items():
                if corp is not None:
                    names.update({(corp, u): c["name"] for u, c in self.get_many(corp, users).items()})
        for row in rows:
            row["user_name"] = names.get((corp_of.get(row.get("app")), counterpart(row)))
        return rows


def counterpart(row: dict) -> Optional[str]:
    """The conversation's user of a Message JSON (its sender inbound, its recipient outbound) or a
    Conversation JSON."""
    if "direction" not in row:
        return row.get("user")
    return row.get("from_user") if row["direction"] == "in" else row.get("to_user")
