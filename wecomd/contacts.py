"""The contact directory: the names, departments and positions behind UserIDs, for the dashboard.

A UserID is resolved through the app's `user/get`, its department ids through `department/list`
(one list per corp, kept as long as the contacts), and the result is cached in the database
(store.contacts) for `[wecom] contact_refresh_hours`. Only what the dashboard shows asks: the
UserIDs of a page being read (`annotate`), and the senders of live events (`annotate_event`); the
callback path never waits for it. At most one request per user is in flight; a failed lookup
(no permission, 60011; an unknown user, 60111; no secret) is cached with its reason like a name, so
it is asked again only after the refresh time, and the UserID is shown meanwhile.

When a name arrives it is pushed live as a "contact" event ({"type": "contact", "app", "user",
"user_name"}), so open dashboards replace the UserID without reloading.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Dict, Iterable, Mapping, Optional, Tuple

from wecomd.config import AppConfig, Config
from wecomd.store import StoreError
from wecomd.store.contacts import counterpart
from wecomd.store.times import from_iso
from wecomd.wecom import kf as kfproto
from wecomd.wecom.errcodes import WecomApiError

logger = logging.getLogger(__name__)

USER_GET, DEPARTMENT_LIST = "/cgi-bin/user/get", "/cgi-bin/department/list"
MAX_CACHED = 20000  # names kept in memory; the database keeps them all

Key = Tuple[str, str]  # (corp_id, userid)


class Directory:
    """One per process, built by Services; see the module docstring."""

    def __init__(self, store: Any, read: Callable[..., Awaitable[Any]], write: Callable[..., Awaitable[Any]],
                 client: Any, config: Config, publish: Callable[[dict], None],
                 clock: Callable[[], datetime], max_cached: int = MAX_CACHED) -> None:
        self.store, self._read, self._write, self.client = store, read, write, client
        self.publish, self.clock, self.max_cached = publish, clock, max_cached
        self.reconfigure(config)
        self._known: "OrderedDict[Key, Tuple[Optional[str], datetime]]" = OrderedDict()  # -> (name, fetched_at)
        self._inflight: Dict[Key, asyncio.Future] = {}
        self._departments: Dict[str, Tuple[float, Dict[int, str]]] = {}  # corp -> (monotonic, id -> name)
        self._tasks: set = set()
        self._department_lock: Optional[asyncio.Lock] = None  # made on first use, on the running loop
        self.calls = 0  # WeCom requests made, for the benchmark's and the closing note's figures

    def reconfigure(self, config: Config) -> None:
        self.apps: Mapping[str, AppConfig] = config.apps
        self.refresh = timedelta(hours=config.wecom.contact_refresh_hours)

    # ------------------------------------------------------------ reading names

    def name(self, app: str, userid: Optional[str]) -> Optional[str]:
        """The cached name of `userid` in `app`'s corp, from memory; None when not known (yet)."""
        key = self._key(app, userid)
        known = self._known.get(key) if key else None
        return known[0] if known else None

    def annotate_event(self, event: dict) -> dict:
        """A live message event with "user_name" from memory (unless its publisher named it, as the
        微信客服 channel does); an unknown user is looked up in the background (a "contact" event
        follows). Other events pass unchanged."""
        message = event.get("message")
        if isinstance(message, dict) and "direction" in message and message.get("user_name") is None:
            user = counterpart(message)
            message["user_name"] = self.name(message.get("app"), user)
            if message["user_name"] is None:
                self.lookup_later(message.get("app"), user)
        return event

    async def annotate(self, rows: Iterable[dict]) -> list:
        """Message or Conversation JSON rows with "user_name": from memory, else from the database
        (one query per corp), else null; unknown and stale users are looked up in the background."""
        rows = list(rows)
        missing: Dict[str, set] = {}
        for row in rows:
            key = self._key(row.get("app"), counterpart(row))
            if key and key not in self._known:
                missing.setdefault(key[0], set()).add(key[1])
        for corp, users in missing.items():
            try:
                found = await self._read(self.store.contacts.get_many, corp, users)
            except StoreError as exc:
                logger.warning("contacts: cannot read the cache: %s", exc)
                continue
            for userid, contact in found.items():
                self._remember((corp, userid), contact["name"], _parse(contact["fetched_at"]))
        for row in rows:
            user = counterpart(row)
            row["user_name"] = self.name(row.get("app"), user)
            self.lookup_later(row.get("app"), user)
        return rows

    async def contact(self, app: str, userid: str) -> Optional[dict]:
        """Everything cached of `userid` (name, departments, position, the last error), looked up
        first when unknown or stale; None when it cannot be known."""
        key = self._key(app, userid)
        if key is None:
            return None
        found = (await self._read(self.store.contacts.get_many, key[0], [userid])).get(userid)
        if found is not None:
            self._remember(key, found["name"], _parse(found["fetched_at"]))
        if found is None or self._stale(key):
            return await self.lookup(app, userid) or found
        return found

    # ------------------------------------------------------------ looking up

    def lookup_later(self, app: Optional[str], userid: Optional[str]) -> None:
        """Start a lookup of `userid` unless it is fresh in memory or already being looked up."""
        key = self._key(app, userid)
        if key is None or key in self._inflight or not self._stale(key):
            return
        task = asyncio.ensure_future(self.lookup(app, userid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def lookup(self, app: str, userid: str) -> Optional[dict]:
        """Ask WeCom about `userid` through `app` (once per user at a time); the cached contact, or
        None when nothing could be stored. Never raises."""
        key = self._key(app, userid)
        if key is None:
            return None
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future = self._inflight[key] = asyncio.get_running_loop().create_future()
        try:
            contact = await self._fetch(self.apps[app], userid)
        except Exception:  # never a reason to lose anything: the UserID is shown
            logger.exception("contacts: looking up %s failed", userid)
            contact = None
        finally:
            self._inflight.pop(key, None)
        future.set_result(contact)
        return contact

    async def _fetch(self, app: AppConfig, userid: str) -> Optional[dict]:
        now = self.clock()
        if not app.secret:
            fields: dict = dict(errcode=-2, error="[app:%s] has no secret: names need user/get" % app.name)
        else:
            try:
                self.calls += 1
                user = await self.client.call(app, "GET", USER_GET, params={"userid": userid})
                departments = await self._department_names(app)
                fields = dict(name=user.get("name") or None, position=user.get("position") or None,
                              departments=[departments.get(d, str(d)) for d in user.get("department") or []])
            except WecomApiError as exc:
                fields = dict(errcode=exc.errcode if exc.errcode is not None else -1,
                              error="errcode %s: %s" % (exc.errcode, exc.errmsg) if exc.errcode is not None
                              else str(exc.errmsg))
                logger.info("contacts: %s of app %s: %s", userid, app.name, fields["error"])
        try:
            contact = await self._write(self.store.contacts.save, app.corp_id, userid, now, **fields)
        except StoreError as exc:
            logger.warning("contacts: cannot cache %s: %s", userid, exc)
            return None
        self._remember((app.corp_id, userid), contact["name"], now)
        if contact["name"]:
            for name in (n for n, a in self.apps.items() if a.corp_id == app.corp_id):
                self.publish({"type": "contact", "app": name, "user": userid, "user_name": contact["name"]})
        return contact

    async def _department_names(self, app: AppConfig) -> Dict[int, str]:
        """id -> name of the departments `app` may see, asked once per corp and refresh time; {} when
        the app may not list them (the ids are shown then)."""
        if self._department_lock is None:
            self._department_lock = asyncio.Lock()
        async with self._department_lock:  # users looked up together share one list
            cached = self._departments.get(app.corp_id)
            if cached is not None and time.monotonic() - cached[0] < self.refresh.total_seconds():
                return cached[1]
            return await self._list_departments(app)

    async def _list_departments(self, app: AppConfig) -> Dict[int, str]:
        try:
            self.calls += 1
            answer = await self.client.call(app, "GET", DEPARTMENT_LIST)
            names = {int(d["id"]): str(d.get("name") or d["id"]) for d in answer.get("department") or []
                     if isinstance(d, dict) and "id" in d}
        except (WecomApiError, ValueError, TypeError) as exc:
            logger.info("contacts: department/list of app %s: %s", app.name, exc)
            names = {}
        self._departments[app.corp_id] = (time.monotonic(), names)
        return names

    # ------------------------------------------------------------ memory

    def _key(self, app: Optional[str], userid: Optional[str]) -> Optional[Key]:
        config = self.apps.get(app) if app else None
        # "sys": WeCom's own system events; "OPEN_KFID/EXTERNAL_USERID": a 微信客服 customer, named by
        # wecomd.kf (customer/batchget), not the address book.
        if config is None or not userid or userid == "sys" or "/" in userid:
            return None
        return config.corp_id, userid

    def _stale(self, key: Key) -> bool:
        known = self._known.get(key)
        return known is None or self.clock() - known[1] >= self.refresh

    def _remember(self, key: Key, name: Optional[str], fetched_at: datetime) -> None:
        self._known[key] = (name, fetched_at)
        self._known.move_to_end(key)
        while len(self._known) > self.max_cached:
            self._known.popitem(last=False)

    async def close(self) -> None:
        """Wait for the lookups in flight (they only write the cache)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _parse(text: Optional[str]) -> datetime:
    return from_iso(text) or datetime.min


async def user_name(directory: Directory, kf: Any, app: str, user: Optional[str]) -> Optional[str]:
    """The name the console shows for `user` of `app` ({user_name} in rules): a 微信客服 customer's
    nickname (kf: the KfChannel; looked up when not cached), a member's contact name when this
    process knows it (never a lookup on the way to a passive reply); None when not known."""
    if not user:
        return None
    conversation = kfproto.split_key(user)
    if conversation is not None and app in kf.apps:
        return await kf.nickname(kf.apps[app], conversation[1])
    return directory.name(app, user)
