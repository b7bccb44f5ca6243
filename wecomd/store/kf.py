"""微信客服 (kf) storage (migration 0011): each account's pull cursor and lease, each customer's session
state and reply window, the send_msg_on_event codes and the customers' nicknames.

The heart is `stage_page`: the items of one kf/sync_msg page and that page's next_cursor are one
transaction (a small one), so a crash between pages loses nothing and stores nothing twice: the
restart pulls again from the cursor of the last page that was committed. `store_slice` then stores
the kept page as messages, a slice per transaction, each message once by its msgid; a crash
between slices leaves the page in `kf_page` (`kept_pages`), and the next pull stores it again,
which adds only what was missing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable, List, Optional, Union

import peewee

from wecomd.wecom.kf import item_json
from wecomd.wecom.messages import Message

from .errors import guarded
from .writer import Paused, bulky, redoable, resumable
from .messages import Messages
from .models import Models
from .times import iso, naive_utc, utcnow


TEXT_STEP = 50  # store_texts' rows between two looks at the callbacks waiting (docs/kf.md, Speed)


class LeaseLost(Exception):
    """Another process took the account's pull over (its lease ran out): this page is not stored."""


@dataclass(frozen=True)
class Pulled:
    """One sync_msg item as the channel decoded it (wecomd.kf.pull): the message to store and what it
    changes. `session` is (open_kfid, external_userid) of the customer it concerns, if any."""

    message: Message
    dedup_key: str
    session: Optional[tuple] = None
    outbound_by: Optional[str] = None  # origin 5: the servicer who wrote it from the WeCom client
    customer_at: Optional[datetime] = None  # origin 3: the customer wrote (its send_time)
    state: Optional[int] = None  # the session's new service_state, when the item tells it
    servicer: Optional[str] = None
    code: Optional[tuple] = None  # (kind, code, expires_at) for send_msg_on_event
    failed_msgid: Optional[str] = None  # msg_send_fail: the msgid of our send that did not arrive
    failure: Optional[str] = None
    recalled_msgid: Optional[str] = None


@dataclass(frozen=True)
class StoredText:
    """A customer's plain text item stored by store_texts: the new row's id and the item as pulled
    (the channel reads the row and decodes the item only when something needs them)."""

    id: int
    item: dict


@dataclass(frozen=True)
class TextRun:
    """StoredTexts in a row as the pull process reports them (wecomd.kf.process): the rows' ids and
    their customers' external_userids, in order. The channel reads the rows and decodes the bodies
    stored with them only when something needs them."""

    ids: list
    customers: list


# store_texts' rows: the columns inbound_row gives a customer's text item (wecomd.kf.items.plain_text)
# and Messages.prepare_pulled keeps: its JSON as `fields` and `raw`, the conversation and sender
# OPEN_KFID/EXTERNAL_USERID, the account as to_user, the content searched as it is.
_TEXTS_SQL = """INSERT INTO "message" ("app", "direction", "dedup_key", "user", "msgtype", "from_user", "to_user",
 "msg_id", "create_time", "received_at", "content", "status", "fields", "raw", "deliveries", "updated_at", "search_text")
SELECT ?, 'in', 'kf:' || json_extract(j.value, '$.msgid'),
 json_extract(j.value, '$.open_kfid') || '/' || json_extract(j.value, '$.external_userid'), 'text',
 json_extract(j.value, '$.open_kfid') || '/' || json_extract(j.value, '$.external_userid'),
 json_extract(j.value, '$.open_kfid'), json_extract(j.value, '$.msgid'), json_extract(j.value, '$.send_time'), ?,
 json_extract(j.value, '$.text.content'), 'received', j.value, j.value, 1, ?, json_extract(j.value, '$.text.content')
FROM json_each(?) AS j WHERE true ORDER BY j.key ON CONFLICT ("dedup_key") DO NOTHING"""

# What store_texts' new rows change in their sessions, as _sessions_change folds it: the customer's
# newest message (send_time) resets the sends of the reply window, and reopens an ended session.
# The new rows are those from the first one's id on (one writer, in its transaction); NOT INDEXED:
# read by their ids, not the whole table through the (app, user) index.
_TEXT_SESSIONS_SQL = """INSERT INTO "kf_session" ("app", "open_kfid", "external_userid", "last_customer_at", "sends",
 "updated_at")
SELECT "app", "to_user", substr("user", length("to_user") + 2), datetime(MAX("create_time"), 'unixepoch'), 0, ?
FROM "message" NOT INDEXED WHERE "id" >= ? GROUP BY "app", "to_user", "user"
ON CONFLICT ("open_kfid", "external_userid") DO UPDATE SET
 "sends" = CASE WHEN excluded."last_customer_at" >= COALESCE("last_customer_at", '') THEN 0 ELSE "sends" END,
 "last_customer_at" = CASE WHEN excluded."last_customer_at" >= COALESCE("last_customer_at", '')
  THEN excluded."last_customer_at" ELSE "last_customer_at" END,
 "service_state" = CASE WHEN "service_state" = 4 THEN 0 ELSE "service_state" END,
 "updated_at" = excluded."updated_at"
"""


def session_json(row) -> dict:
    return dict(app=row.app, open_kfid=row.open_kfid, external_userid=row.external_userid,
                service_state=row.service_state, servicer_userid=row.servicer_userid,
                last_customer_at=iso(row.last_customer_at), sends=row.sends, state_at=iso(row.state_at))


class Kf:
    """The 微信客服 tables of the database `db` (named `name`)."""

    def __init__(self, db: peewee.Database, name: str, models: Models, messages: Messages) -> None:
        self.db, self.name, self.messages = db, name, messages
        self.Cursor, self.Session, self.Code, self.Customer = models.KfCursor, models.KfSession, models.KfCode, models.KfCustomer
        self.Page = models.KfPage
        self.Message = models.Message

    # ------------------------------------------------------------ the pull: cursor, token, lease

    @guarded("record a 微信客服 callback")
    def doorbell(self, app: str, open_kfid: str, token: Optional[str], now: datetime) -> None:
        """A kf_msg_or_event callback: keep its token and mark the account pending (a pull is due)."""
        C, now = self.Cursor, naive_utc(now)
        with self.db.atomic():
            changed = C.update(app=app, token=token, token_at=now, pending=1, updated_at=now) \
                .where(C.open_kfid == open_kfid).execute()
            if not changed:
                C.insert(open_kfid=open_kfid, app=app, token=token, token_at=now, pending=1, updated_at=now) \
                    .on_conflict_ignore().execute()

    @guarded("claim a 微信客服 pull")
    def claim(self, open_kfid: str, app: str, owner: str, now: datetime, until: datetime,
              dead_owner: Optional[str] = None) -> Optional[dict]:
        """Take the account's pull for `owner` until `until`, unless another process holds an unexpired
        lease (`dead_owner`'s is taken all the same: the caller knows that process is gone):
        {"cursor", "token", "token_at"} or None. Clears `pending`: a callback after this sets it
        again, and the pull runs once more (release says so)."""
        C, naive = self.Cursor, naive_utc(now)
        with self.db.atomic():
            if C.get_or_none(C.open_kfid == open_kfid) is None:
                C.insert(open_kfid=open_kfid, app=app, updated_at=naive).on_conflict_ignore().execute()
            free = (C.lease_owner.is_null() | (C.lease_until < naive) | (C.lease_owner == owner))
            if dead_owner:
                free = free | (C.lease_owner == dead_owner)
            taken = C.update(lease_owner=owner, lease_until=naive_utc(until), pending=0) \
                .where((C.open_kfid == open_kfid) & free).execute()
            if not taken:
                return None
            row = C.get(C.open_kfid == open_kfid)
        return {"cursor": row.cursor, "token": row.token, "token_at": iso(row.token_at)}

    @bulky  # its commit writes the page (a few hundred KB): the callbacks waiting go first
    @guarded("keep a 微信客服 page")
    def stage_page(self, app: str, open_kfid: str, owner: str, items: list, next_cursor: Optional[str],
                   now: datetime, until: datetime, answer: Optional[str] = None) -> Optional[int]:
        """One sync_msg page's items (as WeCom sent them) and its next_cursor in one transaction, the
        lease extended to `until`: the id of the kept page, which store_slice then stores as
        messages (None for an empty page). LeaseLost, with nothing kept, when another process holds
        the account's pull. One row and one statement, not a thousand rows and their indexes.
        `answer`: sync_msg's answer as it came, whose msg_list SQLite keeps (on SQLite) instead of
        `items` encoded again."""
        C, naive = self.Cursor, naive_utc(now)
        with self.db.atomic():
            kept = C.update(cursor=next_cursor, pulled_at=naive, updated_at=naive, lease_until=naive_utc(until)) \
                .where((C.open_kfid == open_kfid) & (C.lease_owner == owner)).execute()
            if not kept:
                raise LeaseLost(open_kfid)
            if not items:
                return None
            if answer is not None and self.texts_in_sql:
                return self.db.execute_sql(
                    'INSERT INTO "kf_page" ("app", "open_kfid", "items", "created_at") '
                    "VALUES (?, ?, json_extract(?, '$.msg_list'), ?)", (app, open_kfid, answer, naive)).lastrowid
            return self.Page.insert(app=app, open_kfid=open_kfid, items=item_json(items), created_at=naive).execute()

    @redoable  # the page is kept durably with its cursor: a slice a crash undid is stored again
    @bulky
    @guarded("store a 微信客服 page")
    def store_slice(self, app: str, page_id: int, items: List[Pulled], now: datetime, last: bool = False,
                    prepared: Optional[tuple] = None) -> list:
        """Store items of the kept page `page_id` (decoded; `prepared` is prepare(app, items) when the
        caller did it off the writer thread) as messages, each once by its msgid, and what they
        change, in one transaction; the `last` slice deletes the page. The (row, Pulled) of each
        message stored for the first time: storing a slice again (after a crash, or by a second
        process) stores and changes nothing twice."""
        naive = naive_utc(now)
        with self.db.atomic():
            if last:
                self.Page.delete().where(self.Page.id == page_id).execute()
            new = []
            stored = self.messages.save_prepared(prepared if prepared is not None else self.prepare(app, items))
            for item, (row, created) in zip(items, stored):
                if created:
                    self._apply(app, item, row, naive)
                    new.append((row, item))
            self._sessions_change(app, [item for _, item in new if item.session is not None], naive)
        return new

    @property
    def texts_in_sql(self) -> bool:
        """store_texts can be used (SQLite, with its JSON functions); elsewhere every item goes
        through decode and store_slice."""
        return self.messages.sqlite

    @resumable  # callbacks wait for TEXT_STEP rows at most, not for the slice
    @redoable
    @bulky
    @guarded("store a 微信客服 page")
    def store_texts(self, app: str, page_id: int, items: list, now: datetime, last: bool = False,
                    pause: Optional[Callable[[], bool]] = None) -> Union[list, Paused]:
        """Store customers' plain text items of the kept page `page_id` (each one wecomd.kf.items.plain_text)
        as store_slice would, in one transaction, by SQL alone: the rows are made from the items' JSON
        by SQLite (json_each), each once by its msgid, and their sessions' reply windows move on in one
        statement, so a slice costs no Python per message. The StoredText of each message stored for
        the first time, in order; the `last` slice deletes the page.

        TEXT_STEP items at a time: when `pause` (the writer's) says ordinary calls wait, it stops there
        and returns Paused(what it stored); called again, it skips those (stored already)."""
        naive = naive_utc(now)
        stamp = utcnow(whole_seconds=True)  # received_at and updated_at, as Messages.prepare_pulled
        by_msgid = {item["msgid"]: item for item in reversed(items)}  # a msgid twice: its first item
        new: list = []
        with self.db.atomic():
            for first in range(0, len(items), TEXT_STEP):
                if first and pause is not None and pause():
                    return Paused(new)
                added = self._insert_texts(app, items[first:first + TEXT_STEP], naive, stamp)
                new += [StoredText(row_id, by_msgid[msgid]) for row_id, msgid in added]
            if last:
                self.Page.delete().where(self.Page.id == page_id).execute()
        return new

    def _insert_texts(self, app: str, items: list, naive: datetime, stamp: datetime) -> list:
        """store_texts' statements for some items: (id, msgid) of each row added."""
        added = self.messages.insert_in_bulk([(_TEXTS_SQL, (app, stamp, stamp, item_json(items)))], '"id", "msg_id"')
        ids = [row_id for row_id, _ in added]
        self.messages.conversations.count_inserted(ids)
        self.messages.search.index_inserted(ids)
        if ids:
            self.db.execute_sql(_TEXT_SESSIONS_SQL, (naive, ids[0]))
        return added

    def prepare(self, app: str, items: List[Pulled]) -> tuple:
        """store_slice's work that needs no database (Messages.prepare_pulled)."""
        return self.messages.prepare_pulled(app, [(item.message, item.dedup_key, item.outbound_by) for item in items])

    @guarded("read the 微信客服 pages kept")
    def kept_pages(self, open_kfid: str) -> list:
        """The account's pages kept and not wholly stored (a crash came between), oldest first:
        {"id", "app", "items"}."""
        P = self.Page
        return [dict(id=row.id, app=row.app, items=json.loads(row.items))
                for row in P.select().where(P.open_kfid == open_kfid).order_by(P.id)]

    @guarded("read a 微信客服 pull lease")
    def holder(self, open_kfid: str, now: datetime) -> Optional[str]:
        """The process holding the account's pull (an unexpired lease), or None."""
        C = self.Cursor
        row = C.get_or_none((C.open_kfid == open_kfid) & (C.lease_until >= naive_utc(now)))
        return row.lease_owner if row is not None else None

    @guarded("release a 微信客服 pull")
    def release(self, open_kfid: str, owner: str, now: datetime) -> bool:
        """Give the lease back; True when a callback came during the pull (pull once more)."""
        C = self.Cursor
        with self.db.atomic():
            row = C.get_or_none(C.open_kfid == open_kfid)
            C.update(lease_owner=None, lease_until=None, updated_at=naive_utc(now)) \
                .where((C.open_kfid == open_kfid) & (C.lease_owner == owner)).execute()
        return bool(row is not None and row.pending)

    @guarded("read 微信客服 cursors")
    def cursors(self) -> list:
        """Every account pulled so far or rung for: {"open_kfid", "app", "cursor", "pending", "pulled_at"}."""
        C = self.Cursor
        return [dict(open_kfid=row.open_kfid, app=row.app, cursor=row.cursor, pending=bool(row.pending),
                     pulled_at=iso(row.pulled_at)) for row in C.select().order_by(C.id)]

    # ------------------------------------------------------------ what an item changes

    def _apply(self, app: str, item: Pulled, row: dict, now: datetime) -> None:
        if item.code is not None:
            kind, code, expires_at = item.code
            open_kfid, external = item.session or (None, None)
            self.Code.insert(code=code, kind=kind, open_kfid=open_kfid or "", external_userid=external,
                             message_id=row["id"], expires_at=naive_utc(expires_at), created_at=now) \
                .on_conflict_ignore().execute()
        M = self.Message
        if item.failed_msgid:
            M.update(status="failed", error=item.failure, updated_at=now) \
                .where((M.direction == "out") & (M.wecom_msgid == item.failed_msgid)).execute()
        if item.recalled_msgid:
            M.update(status="recalled", updated_at=now) \
                .where(((M.msg_id == item.recalled_msgid) | (M.wecom_msgid == item.recalled_msgid))
                       & (M.app == app)).execute()

    def _sessions_change(self, app: str, items: List[Pulled], now: datetime) -> None:
        """What a page's new items change in their customers' sessions, in order, folded into one
        read and one write per session (a page of 1,000 messages touches a few hundred at most):
        the customer's newest message (which resets the sends of the reply window, and reopens an
        ended session as untouched) and the state a session event tells."""
        if not items:
            return
        S, param = self.Session, self.db.param
        keys = list(dict.fromkeys(item.session for item in items))
        known = {}  # read as the database gives them: peewee's conversions cost more than the read
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            for kfid in {k[0] for k in chunk}:
                externals = [k[1] for k in chunk if k[0] == kfid]
                sql = ('SELECT "id", "external_userid", "last_customer_at", "sends", "service_state", '
                       '"servicer_userid", "state_at" FROM "kf_session" WHERE "open_kfid" = %s AND '
                       '"external_userid" IN (%s)' % (param, ", ".join([param] * len(externals))))
                for row in self.db.execute_sql(sql, [kfid] + externals):
                    known[(kfid, row[1])] = row
        folded: dict = {}
        for item in items:
            row = known.get(item.session)
            state = folded.get(item.session) or {
                "last_customer_at": row[2] if row else None, "sends": row[3] if row else 0,
                "service_state": row[4] if row else None, "servicer_userid": row[5] if row else None,
                "state_at": row[6] if row else None}
            if item.customer_at is not None:
                at = naive_utc(item.customer_at)
                if _not_before(at, state["last_customer_at"]):
                    state.update(last_customer_at=at, sends=0)
                if state["service_state"] == 4:  # a customer message after the end opens a new session
                    state["service_state"] = 0
            if item.state is not None:
                state.update(service_state=item.state, servicer_userid=item.servicer, state_at=now)
            folded[item.session] = state
        names = ("last_customer_at", "sends", "service_state", "servicer_userid", "state_at", "updated_at")
        fields = S._meta.fields
        convert = [fields[name].db_value for name in names]
        updates, inserts = [], []
        for key, state in folded.items():
            values = [to_db(value) for to_db, value in zip(convert, [*(state[n] for n in names[:-1]), now])]
            if key in known:
                updates.append(values + [known[key][0]])
            else:
                inserts.append([app, key[0], key[1]] + values)
        cursor = self.db.cursor()  # two statements for the page: the query builder per session cost more
        if updates:
            cursor.executemany('UPDATE "kf_session" SET %s WHERE "id" = %s' % (
                ", ".join('"%s" = %s' % (name, param) for name in names), param), updates)
        if inserts:
            columns = ("app", "open_kfid", "external_userid") + names
            cursor.executemany('INSERT INTO "kf_session" (%s) VALUES (%s) ON CONFLICT ("open_kfid", "external_userid") '
                               'DO UPDATE SET %s' % (", ".join('"%s"' % c for c in columns),
                                                     ", ".join([param] * len(columns)),
                                                     ", ".join('"%s" = excluded."%s"' % (n, n) for n in names)),
                               inserts)

    # ------------------------------------------------------------ sessions and the reply window

    @guarded("read a 微信客服 session")
    def session(self, open_kfid: str, external_userid: str) -> Optional[dict]:
        S = self.Session
        row = S.get_or_none((S.open_kfid == open_kfid) & (S.external_userid == external_userid))
        return session_json(row) if row is not None else None

    @guarded("read 微信客服 sessions")
    def sessions(self, keys: Iterable[tuple]) -> dict:
        """{(open_kfid, external_userid): session} for the keys that have one."""
        S, found, wanted = self.Session, {}, set(keys)
        by_account: dict = {}
        for open_kfid, external in wanted:
            by_account.setdefault(open_kfid, []).append(external)
        for open_kfid, externals in by_account.items():  # one query per account and 500 customers
            for start in range(0, len(externals), 500):
                query = S.select().where((S.open_kfid == open_kfid) & S.external_userid.in_(externals[start:start + 500]))
                for row in query.namedtuples():  # not model instances: a page of conversations asks for 500
                    found[(row.open_kfid, row.external_userid)] = session_json(row)
        return found

    @guarded("set a 微信客服 session state")
    def set_state(self, app: str, open_kfid: str, external_userid: str, state: Optional[int],
                  servicer: Optional[str], now: datetime) -> dict:
        S, naive = self.Session, naive_utc(now)
        with self.db.atomic():
            changed = S.update(service_state=state, servicer_userid=servicer, state_at=naive, updated_at=naive) \
                .where((S.open_kfid == open_kfid) & (S.external_userid == external_userid)).execute()
            if not changed:
                S.insert(app=app, open_kfid=open_kfid, external_userid=external_userid, service_state=state,
                         servicer_userid=servicer, state_at=naive, updated_at=naive).on_conflict_ignore().execute()
        return self.session(open_kfid, external_userid)

    @guarded("count a 微信客服 send")
    def count_send(self, open_kfid: str, external_userid: str, now: datetime) -> None:
        """One more message sent to the customer since they last wrote (WeCom allows 5)."""
        S = self.Session
        with self.db.atomic():
            S.update(sends=S.sends + 1, updated_at=naive_utc(now)) \
                .where((S.open_kfid == open_kfid) & (S.external_userid == external_userid)).execute()

    # ------------------------------------------------------------ send_msg_on_event codes

    @guarded("use a 微信客服 event code")
    def use_code(self, kinds: Iterable[str], open_kfid: str, external_userid: Optional[str], now: datetime,
                 message_id: Optional[int] = None) -> Optional[dict]:
        """Claim the newest unused, unexpired code of one of `kinds` for the customer (or for the
        event `message_id`), at most once: {"code", "kind", "expires_at"} or None."""
        K, naive = self.Code, naive_utc(now)
        with self.db.atomic():
            query = K.select().where(K.kind.in_(list(kinds)) & K.used_at.is_null() & (K.expires_at > naive)
                                     & (K.open_kfid == open_kfid))
            if message_id is not None:
                query = query.where(K.message_id == message_id)
            if external_userid is not None:
                query = query.where(K.external_userid == external_userid)
            row = query.order_by(K.id.desc()).first()
            if row is None:
                return None
            if not K.update(used_at=naive).where((K.id == row.id) & K.used_at.is_null()).execute():
                return None
        return {"code": row.code, "kind": row.kind, "expires_at": iso(row.expires_at), "message_id": row.message_id}

    @guarded("keep a 微信客服 event code")
    def add_code(self, kind: str, code: str, open_kfid: str, external_userid: Optional[str], expires_at: datetime,
                 now: datetime, message_id: Optional[int] = None) -> None:
        with self.db.atomic():
            self.Code.insert(code=code, kind=kind, open_kfid=open_kfid, external_userid=external_userid,
                             message_id=message_id, expires_at=naive_utc(expires_at),
                             created_at=naive_utc(now)).on_conflict_ignore().execute()

    # ------------------------------------------------------------ customers' names

    @guarded("read 微信客服 customers")
    def customers(self, ids: Iterable[str]) -> dict:
        """{external_userid: {"nickname", "avatar", "invalid", "fetched_at", ...}} of those cached."""
        K, found, ids = self.Customer, {}, list(dict.fromkeys(ids))
        columns = (K.external_userid, K.nickname, K.avatar, K.gender, K.scene, K.scene_param, K.invalid, K.fetched_at)
        for start in range(0, len(ids), 500):
            query = K.select(*columns).where(K.external_userid.in_(ids[start:start + 500])).tuples()
            for external, nickname, avatar, gender, scene, scene_param, invalid, fetched_at in query:
                found[external] = dict(nickname=nickname, avatar=avatar, gender=gender, scene=scene,
                                       scene_param=scene_param, invalid=bool(invalid), fetched_at=iso(fetched_at))
        return found

    @guarded("cache 微信客服 customers")
    def save_customers(self, found: Iterable[dict], invalid: Iterable[str], now: datetime) -> None:
        """Keep what customer/batchget answered: each customer's nickname, avatar and entry scene, and
        the ids it could not resolve (shown as the id itself)."""
        K, naive = self.Customer, naive_utc(now)
        rows = []
        for customer in found:
            context = customer.get("enter_session_context") or {}
            rows.append(dict(external_userid=customer["external_userid"], nickname=customer.get("nickname"),
                             avatar=customer.get("avatar"), gender=customer.get("gender"),
                             unionid=customer.get("unionid"), scene=context.get("scene"),
                             scene_param=_text(context.get("scene_param")), invalid=0, fetched_at=naive))
        gone = [dict(external_userid=external, invalid=1, fetched_at=naive) for external in invalid]
        columns = [K.nickname, K.avatar, K.gender, K.unionid, K.scene, K.scene_param, K.invalid, K.fetched_at]
        with self.db.atomic():  # one statement per 100 (customer/batchget's batch): the last answer wins
            for batch, keep in ((rows, columns), (gone, [K.invalid, K.fetched_at])):  # an invalid id keeps its old name
                for start in range(0, len(batch), 100):
                    K.insert_many(batch[start:start + 100]).on_conflict(
                        conflict_target=[K.external_userid], preserve=keep).execute()


def _not_before(at: datetime, stored) -> bool:
    """Whether `at` is at or after a time read straight from the database: SQLite's text (as
    peewee stores it, "YYYY-MM-DD HH:MM:SS[.ffffff]", which sorts as it reads) or a datetime."""
    if stored is None:
        return True
    if isinstance(stored, str):
        return at.isoformat(" ") >= stored
    return at >= stored


def _text(value) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
