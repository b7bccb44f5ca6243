"""KfPuller: pulls each kf account's new messages with kf/sync_msg, one loop per account at a time.

A kf_msg_or_event callback only rings the bell: `doorbell` keeps its token durably (store.kf) and
wakes the account's loop, and the callback is answered at once; the pulling happens here, never
inside WeCom's 5 seconds. A loop:

1. claims the account's lease in the database (a second process, or a second loop, gets none and
   leaves the pull to the holder, which sees the pending flag and pulls once more);
2. calls sync_msg with the stored cursor, the newest callback token (while it is under 10 minutes
   old) and limit LIMIT (≤ 1000), and keeps calling while has_more is 1, even when msg_list is empty;
3. keeps each page's items and its next_cursor in one transaction (store.kf.stage_page), then
   stores them as messages, SLICE per transaction, while it asks for the next page, and hands the
   new ones to the channel (live, rules), in order; pages a crash left half stored are stored
   first. Customers' plain texts, most of a backlog, are stored by SQL (store.kf.store_texts, on
   SQLite); the rest is decoded here and stored by store.kf.store_slice;
4. releases the lease; a callback that came meanwhile makes it run once more.

`start` pulls every account once (a startup pull), catching up whatever arrived while the daemon
was down, as far as WeCom's 3 days reach.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections import deque
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Dict, Optional

from wecomd.config import AppConfig, Config
from wecomd.kf.items import decode, plain_text
from wecomd.store import StoreError
from wecomd.store.kf import LeaseLost
from wecomd.store.times import from_iso, utcnow
from wecomd.wecom import kf as kfproto
from wecomd.wecom.api import WecomApiError
from wecomd.wecom.messages import MessageError

logger = logging.getLogger(__name__)

SYNC_MSG = "/cgi-bin/kf/sync_msg"
ACCOUNT_LIST = "/cgi-bin/kf/account/list"
# sync_msg's limit (WeCom allows up to 1,000): a page and its cursor are one small transaction (the
# items kept as WeCom sent them), then stored as messages SLICE at a time (docs/kf.md, Speed).
LIMIT = 1000
SLICE = 100  # kept items stored as messages a transaction (texts pause for callbacks: store.kf.TEXT_STEP)
DECODED = 50  # items decoded in Python (not customers' plain texts): at most this many a transaction
STEP = 10  # items decoded and prepared at a time, the event loop free in between
AHEAD = 2  # kept pages waiting to be stored before the pull waits for them
AT_WRITER = 2  # slices handed to the database writer at once: one stored, the next waiting
LEASE = timedelta(seconds=60)  # a pull holds its account this long past each page
TOKEN_LIFE = timedelta(minutes=10)
RETRY_DELAY = 5.0  # seconds before a pull that failed is tried again (while it is still pending)

OnNew = Callable[[AppConfig, str, list], Awaitable[None]]


class KfPuller:
    """One per process, built by Services; see the module docstring."""

    merges_index = False  # the daemon's search index upkeep merges what a pull in the daemon stores
    pid: Optional[int] = None  # no process of its own (KfPullProcess: its child's)
    started = 0  # pull processes started (KfPullProcess)

    def __init__(self, run_db: Callable[..., Awaitable[Any]], store: Any, client: Any, config: Config,
                 on_new: OnNew, clock: Callable[[], datetime] = utcnow,
                 on_busy: Optional[Callable[[bool], None]] = None) -> None:
        self.run_db, self.store, self.client, self.on_new, self.clock = run_db, store, client, on_new, clock
        self.on_busy = on_busy  # told when this process starts pulling (True) and stops (False)
        self._told = False
        self._pulls = 0  # loops pulling now (a loop waiting to try again is not)
        self.owner = lease_owner()  # this process, in the lease
        self._loops: Dict[str, asyncio.Task] = {}
        self._again: set = set()
        self._bells: Dict[str, asyncio.Event] = {}  # open_kfid -> rung while its loop waits to retry
        self.pulls = 0  # sync_msg calls made (tests, benchmarks)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.apps = {name: app for name, app in config.apps.items() if app.kf}

    def app_for(self, open_kfid: str) -> Optional[AppConfig]:
        return next((app for app in self.apps.values() if app.serves_kf(open_kfid)), None)

    async def doorbell(self, app: AppConfig, open_kfid: str, token: Optional[str]) -> None:
        """A callback announced new messages: keep its token (committed before this returns, so the
        callback may be acknowledged) and start or re-run the account's loop."""
        await self.run_db(self.store.kf.doorbell, app.name, open_kfid, token, self.clock())
        self.wake(app, open_kfid)

    def takes_bells(self) -> bool:
        """Whether `doorbell` hands a callback elsewhere without a commit here (KfPullProcess): no."""
        return False

    def pulling(self) -> bool:
        """Whether this process is pulling now (a loop waiting to try again after a failure is not)."""
        return self._pulls > 0

    def wake(self, app: AppConfig, open_kfid: str) -> None:
        loop = self._loops.get(open_kfid)
        if loop is not None and not loop.done():
            self._again.add(open_kfid)  # the running loop pulls once more when this pull ends
            self._bells.setdefault(open_kfid, asyncio.Event()).set()  # or at once, if it waits to retry
            return
        task = asyncio.ensure_future(self._loop(app, open_kfid))
        self._loops[open_kfid] = task
        task.add_done_callback(lambda done, key=open_kfid: self._loops.pop(key, None)
                               if self._loops.get(key) is done else None)

    def _count(self, change: int) -> None:
        """A loop starts or ends pulling (`pulling`; on_busy told when that changes)."""
        self._pulls += change
        busy = self.pulling()
        if self.on_busy is not None and busy != self._told:
            self._told = busy
            self.on_busy(busy)

    async def start(self) -> None:
        """The startup pull: every account this daemon has pulled or been rung for, and every account
        each kf app may manage (kf/account/list), filtered by its kf_accounts."""
        accounts: Dict[str, AppConfig] = {}
        try:
            for row in await self.run_db(self.store.kf.cursors):
                app = self.app_for(row["open_kfid"])
                if app is not None:
                    accounts[row["open_kfid"]] = app
        except StoreError as exc:
            logger.warning("kf: cannot read the cursors for the startup pull: %s", exc)
        for app in self.apps.values():
            for open_kfid in app.kf_accounts:
                accounts.setdefault(open_kfid, app)
            if not app.kf_accounts:
                try:
                    listed = await self.client.call(app, "POST", ACCOUNT_LIST, json_body={"offset": 0, "limit": 100})
                except (WecomApiError, OSError) as exc:
                    logger.warning("kf: app %s: kf/account/list failed: %s", app.name, exc)
                    continue
                for account in listed.get("account_list") or []:
                    if isinstance(account, dict) and account.get("open_kfid"):
                        accounts.setdefault(account["open_kfid"], app)
        for open_kfid, app in accounts.items():
            self.wake(app, open_kfid)

    async def _loop(self, app: AppConfig, open_kfid: str) -> None:
        """Pull until nothing is pending; counted as pulling but while it waits to try again (a pull
        run once more right after one counts as one, never as a pause in between)."""
        self._count(1)
        try:
            await self._pulls_of(app, open_kfid)
        finally:
            self._count(-1)

    async def _pulls_of(self, app: AppConfig, open_kfid: str) -> None:
        while True:
            self._again.discard(open_kfid)
            try:
                pending = await self._pull(app, open_kfid)
            except asyncio.CancelledError:
                raise
            except (WecomApiError, OSError, StoreError) as exc:
                logger.warning("kf: pull of %s failed: %s; trying again in %.0f s", open_kfid, exc, RETRY_DELAY)
                await self._pause(open_kfid)
                continue
            except Exception:  # never let one account's loop die silently
                logger.exception("kf: pull of %s failed unexpectedly", open_kfid)
                return
            if pending is None:  # another process pulls: after it, the pull this loop owes
                await self._pause(open_kfid)
                continue
            if not pending and open_kfid not in self._again:
                return

    async def _pause(self, open_kfid: str) -> None:
        """Wait RETRY_DELAY before trying again, or less: a callback for the account ends the wait."""
        bell = self._bells.setdefault(open_kfid, asyncio.Event())
        bell.clear()
        self._count(-1)
        try:
            await asyncio.wait_for(bell.wait(), RETRY_DELAY)
        except asyncio.TimeoutError:
            pass
        finally:
            self._count(1)

    async def _claim(self, app: AppConfig, open_kfid: str) -> Optional[dict]:
        """The account's lease, or None while another live process holds it. A lease left by a
        process of this host that is gone (killed mid-pull) is taken at once, not after it expires."""
        now = self.clock()
        claim = await self.run_db(self.store.kf.claim, open_kfid, app.name, self.owner, now, now + LEASE)
        if claim is None:
            holder = await self.run_db(self.store.kf.holder, open_kfid, now)
            if holder and owner_gone(holder):
                logger.warning("kf: %s: the pull of %s ended without releasing it (a crash): resuming from "
                               "its last stored page", open_kfid, holder)
                claim = await self.run_db(self.store.kf.claim, open_kfid, app.name, self.owner, now, now + LEASE,
                                          dead_owner=holder)
        return claim

    async def _pull(self, app: AppConfig, open_kfid: str) -> Optional[bool]:
        """Pull until has_more is 0 and store what came; True when a callback came during the pull
        (pull again), None when another process holds the pull (try again later)."""
        claim = await self._claim(app, open_kfid)
        now = self.clock()
        if claim is None:
            logger.info("kf: %s is being pulled by another process", open_kfid)
            return None
        cursor, token = claim["cursor"], _fresh(claim["token"], claim["token_at"], now)
        pages: asyncio.Queue = asyncio.Queue(maxsize=AHEAD)  # pages kept, for _store_pages; None ends it
        failed: list = []  # what stopped _store_pages
        storing = asyncio.ensure_future(self._store_pages(app, open_kfid, pages, failed))
        cancelled = False
        try:
            for kept in await self.run_db(self.store.kf.kept_pages, open_kfid):  # left by a crash mid-page
                await self._queue_page(pages, failed, (kept["id"], kept["items"]))
            while True:
                body: dict = {"open_kfid": open_kfid, "limit": LIMIT}
                if cursor:
                    body["cursor"] = cursor
                if token:
                    body["token"] = token
                self.pulls += 1
                try:  # the answer's text too: the page is kept as it came, not encoded again
                    answer, text = await self.client.call(app, "POST", SYNC_MSG, json_body=body, with_body=True)
                except WecomApiError as exc:
                    if token and exc.errcode in kfproto.TOKEN_ERRORS:  # expired: WeCom takes the pull without one
                        token = None
                        continue
                    raise
                items = answer.get("msg_list") or []
                items = items if isinstance(items, list) else []
                next_cursor = answer.get("next_cursor") or cursor
                now = self.clock()
                page_id = await self.run_db(self.store.kf.stage_page, app.name, open_kfid, self.owner, items,
                                            next_cursor, now, now + LEASE, text)
                if page_id is not None:  # stored as messages while the next page is asked for
                    await self._queue_page(pages, failed, (page_id, items))
                cursor = next_cursor
                if not answer.get("has_more"):
                    break
            await pages.put(None)
            await storing
            if failed:
                raise failed[0]
        except LeaseLost:
            logger.warning("kf: %s: another process took the pull over", open_kfid)
            return False
        except asyncio.CancelledError:  # the daemon stops: what is kept is stored by the next pull
            cancelled = True
            storing.cancel()
            raise
        finally:
            if not cancelled and not storing.done():  # the pull failed: what is kept is stored all the same
                await pages.put(None)
            await asyncio.gather(storing, return_exceptions=True)
            try:
                pending = await self.run_db(self.store.kf.release, open_kfid, self.owner, self.clock())
            except StoreError as exc:  # the lease runs out by itself
                logger.warning("kf: %s: the pull lease was not released: %s", open_kfid, exc)
                pending = False
        return pending

    def _decode(self, items: list, open_kfid: str) -> list:
        """The Pulled of each item that can be stored (a slice's: decoded as it is stored, so that a
        page of 1,000 never holds the event loop up at once)."""
        now, decoded = self.clock(), []
        for item in items:
            try:
                decoded.append(decode(item, now))
            except MessageError as exc:
                logger.warning("kf: %s: an item WeCom sent cannot be stored (%s): skipped", open_kfid, exc)
        return decoded

    async def _prepare(self, app: AppConfig, items: list, open_kfid: str) -> tuple:
        """A slice decoded and its rows prepared (store.kf.prepare) here, not on the writer's thread,
        STEP items at a time with the event loop free in between: callbacks never wait for a slice."""
        decoded, prepared = [], self.store.kf.prepare(app.name, [])
        for first in range(0, len(items), STEP):
            if first:
                await asyncio.sleep(0)
            chunk = self._decode(items[first:first + STEP], open_kfid)
            decoded += chunk
            prepared = _joined(prepared, self.store.kf.prepare(app.name, chunk))
        return decoded, prepared

    @staticmethod
    async def _queue_page(pages: asyncio.Queue, failed: list, page: tuple) -> None:
        """Hand a kept page (id, items) to _store_pages; waits while AHEAD pages
        wait there. What stopped _store_pages is raised here, so the pull stops too."""
        await pages.put(page)
        if failed:
            raise failed[0]

    async def _store_pages(self, app: AppConfig, open_kfid: str, pages: asyncio.Queue, failed: list) -> None:
        """Store the kept pages as messages in order, SLICE items a transaction, with up to AT_WRITER
        slices handed to the writer at once (it never waits for this loop between two slices; the
        callbacks' calls still go before the one waiting), each slice prepared while the ones
        before are stored; and hand each page's new messages on to the channel, in order. After a
        failure (in `failed`) it only drains the queue: the next pull stores the rest (kept_pages).
        What the slices after a failed one stored is handed on all the same: stored again by the
        next pull, it would not be new."""
        handing: Optional[asyncio.Future] = None
        at_writer: deque = deque()  # (future, the page's last slice) with the writer, oldest first
        new: list = []  # the page's new messages so far

        def hand_on() -> None:
            nonlocal handing
            if new:
                handing = asyncio.ensure_future(hand_on_page(self.on_new, handing, app, open_kfid, new[:]))
                new.clear()

        async def settle(keep: int) -> None:
            """Wait until at most `keep` slices are with the writer; a failed one goes into `failed`."""
            while len(at_writer) > keep:
                future, last = at_writer.popleft()
                try:
                    new.extend(await future)
                except Exception as exc:  # StoreError: the page stays kept
                    new.extend(getattr(exc, "partial", ()))  # stored before a pause: new all the same
                    failed.append(exc)
                if last or failed:
                    hand_on()

        try:
            while True:
                page = await pages.get()
                if page is None:
                    await settle(0)
                    return
                if failed:
                    continue
                page_id, items = page
                try:
                    for first in range(0, len(items), SLICE):
                        runs = _runs(items[first:first + SLICE], self.store.kf.texts_in_sql)
                        for n, (texts, run) in enumerate(runs):
                            last = first + SLICE >= len(items) and n == len(runs) - 1
                            if texts:  # customers' plain texts: stored by SQL, no Python per message
                                call: tuple = (self.store.kf.store_texts, app.name, page_id, run, self.clock(), last)
                            else:
                                decoded, prepared = await self._prepare(app, run, open_kfid)
                                call = (self.store.kf.store_slice, app.name, page_id, decoded, self.clock(), last,
                                        prepared)
                            await settle(AT_WRITER - 1)
                            if failed:  # the slices with the writer are stored (or fail) and handed on
                                await settle(0)
                                break
                            at_writer.append((asyncio.ensure_future(self.run_db(*call)), last))
                        if failed:
                            break
                except Exception as exc:  # preparing failed: the page stays kept
                    failed.append(exc)
        finally:
            for future, _ in at_writer:
                await asyncio.gather(future, return_exceptions=True)
            if handing is not None:
                await asyncio.gather(handing, return_exceptions=True)

    async def close(self) -> None:
        """Stop: a page being stored is committed or not at all; the next start pulls from there."""
        for task in list(self._loops.values()):
            task.cancel()
        if self._loops:
            await asyncio.gather(*list(self._loops.values()), return_exceptions=True)


async def hand_on_page(on_new: OnNew, before: Optional[asyncio.Future], app: AppConfig, open_kfid: str,
                  new: list) -> None:
    """The channel's work on one stored page (live events, rules, names), after the page before's
    (`before`); for a pull in the daemon and for the pull process alike."""
    if before is not None:
        await asyncio.gather(before, return_exceptions=True)
    try:
        await on_new(app, open_kfid, new)
    except Exception:  # stored already: the pull goes on; what failed is in the log
        logger.exception("kf: %s: handling %d new message(s) failed", open_kfid, len(new))


def _runs(items: list, texts_in_sql: bool) -> list:
    """A slice as runs of consecutive items stored alike, in order: (True, items) for customers'
    plain texts (wecomd.kf.items.plain_text: store.kf.store_texts), (False, at most DECODED items)
    for the rest (decoded: store.kf.store_slice)."""
    runs: list = []
    for item in items:
        texts = texts_in_sql and plain_text(item)
        if runs and runs[-1][0] == texts and (texts or len(runs[-1][1]) < DECODED):
            runs[-1][1].append(item)
        else:
            runs.append((texts, [item]))
    return runs


def _joined(first: tuple, second: tuple) -> tuple:
    """Two prepared row sets (store.kf.prepare: column names, parameters, rows) as one."""
    if not first[2]:
        return second
    if not second[2]:
        return first
    return first[0], first[1] + second[1], first[2] + second[2]


def lease_owner() -> str:
    """This process in a pull lease: "HOST:PID:random" (the random part tells a reused pid apart)."""
    return "%s:%d:%s" % (socket.gethostname(), os.getpid(), secrets.token_hex(4))


def owner_pid(owner: str) -> Optional[int]:
    """The pid in a lease (lease_owner) when the process was of this host; None otherwise."""
    rest, _, _ = owner.rpartition(":")
    host, _, pid = rest.rpartition(":")
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def owner_gone(owner: str) -> bool:
    """Whether the process named in a lease (lease_owner) was of this host and no longer runs."""
    pid = owner_pid(owner)
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it runs, as another user
        return False
    return False


def _fresh(token: Optional[str], token_at: Optional[str], now: datetime) -> Optional[str]:
    if not token or not token_at:
        return None
    at = from_iso(token_at).replace(tzinfo=now.tzinfo)
    return token if now - at < TOKEN_LIFE else None
