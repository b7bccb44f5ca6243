"""Operator sign-in: server-side sessions, the metrics token, failed-login backoff, and the
bounded thread pool that runs the password hash off the event loop.

The sign-in policy (README, "The dashboard"; docs/operations.md, "Sign-in floods"):

- A client address that has not failed (no failed attempt in its current streak) always gets its
  password checked: the right password from a fresh address is never refused.
- Per client address: its first `free` failures cost nothing; after them it must wait `base` seconds,
  then twice as long after each further failure (1 s, 2 s, 4 s ...), at most `cap`, before its next
  attempt is checked. Meanwhile it gets 429 with Retry-After, right password or not.
- Per account: once an account has `account_free` failures in its streak (from any addresses), each
  further one doubles a wait that every client that has itself failed must also sit out. An attacker
  with many addresses gets one guess per new address, then waits with the rest; the admin signing in
  from an address that has not failed is never held back by it.
- A streak is forgotten `forget` seconds after its last failure; a success clears its client's.
- At most `workers` checks run at once and `max_waiting` more wait, at most `per_client` of them from
  one address; beyond that a sign-in gets 503 (Retry-After: 1) at once.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Optional, TypeVar

from wecomd.config import AdminConfig
from wecomd.store.times import utcnow

SESSION_COOKIE = "wecomd_session"
SESSION_DAYS = 7

T = TypeVar("T")


def check_metrics_token(admin: AdminConfig, header: Optional[str]) -> bool:
    """True for `Authorization: Bearer <metrics_token>` when one is configured; only /metrics asks."""
    if not admin.metrics_token or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), admin.metrics_token.encode())


# --- sessions ---------------------------------------------------------------------------------

class Sessions:
    """Signed-in sessions, stored server-side (table `session`, wecomd.store.sessions).

    The signed cookie carries a random token; a session holds only while its row does, so signing out
    (`end`) stops a copied cookie at once. The rows are also kept in memory, loaded at start and
    changed with the table, so checking a request's session costs no database query; the process is
    the database's only writer.
    """

    def __init__(self, db: Callable[..., Awaitable[Any]], store: Any, days: float = SESSION_DAYS,
                 clock: Callable[[], datetime] | None = None) -> None:
        self._db, self._store, self.days = db, store, days
        self._clock = clock or utcnow
        self._live: dict[str, dict] = {}  # token hash -> row

    async def load(self) -> int:
        """Read the unexpired sessions (the expired are deleted); returns how many."""
        rows = await self._db(self._store.sessions.live, self._clock())
        self._live = {row["token_hash"]: row for row in rows}
        return len(self._live)

    async def begin(self, user: str, credential: str, client: str) -> str:
        """Store a new session of `user`; returns the token for the cookie."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        row = dict(token_hash=_digest(token), user=user, credential=credential, client=client[:64],
                   created_at=now, expires_at=now + timedelta(days=self.days))
        await self._db(self._store.sessions.create, row, now)
        self._live = {h: r for h, r in self._live.items() if r["expires_at"] > now}
        self._live[row["token_hash"]] = row
        return token

    def lookup(self, token: Any) -> Optional[tuple[str, str]]:
        """(user, credential) of a live session, or None (no such session, or expired). Whether the
        account still holds (enabled, same password) is wecomd.accounts' question."""
        if isinstance(token, bytes):
            token = token.decode("ascii", "replace")
        if not token:
            return None
        row = self._live.get(_digest(token))
        if row is None or row["expires_at"] <= self._clock():
            return None
        return row["user"], row["credential"]

    async def end(self, token: Any) -> bool:
        """Sign a session out; False when there was none."""
        if isinstance(token, bytes):
            token = token.decode("ascii", "replace")
        if not token:
            return False
        digest = _digest(token)
        known = self._live.pop(digest, None) is not None
        await self._db(self._store.sessions.end, digest)
        return known

    @property
    def count(self) -> int:
        return len(self._live)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


# --- failed sign-ins ------------------------------------------------------------------------

@dataclass
class _Streak:
    failures: int = 0
    last: float = 0.0  # clock() of the last failure


class LoginLimiter:
    """Exponential backoff of failed sign-ins, per client address and per account (the module's
    docstring has the policy). Memory is bounded: at most `max_clients` addresses and `max_accounts`
    account names are remembered, the least recently failed dropped first."""

    def __init__(self, free: int = 3, base: float = 1.0, cap: float = 900.0, account_free: int = 10,
                 forget: float = 3600.0, max_clients: int = 10000, max_accounts: int = 1000,
                 clock: Callable[[], float] | None = None) -> None:
        self.free, self.base, self.cap = free, base, cap
        self.account_free, self.forget = account_free, forget
        self.max_clients, self.max_accounts = max_clients, max_accounts
        self._clock = clock or time.monotonic
        self._clients: OrderedDict[str, _Streak] = OrderedDict()
        self._accounts: OrderedDict[str, _Streak] = OrderedDict()

    def delay(self, failures: int, free: int) -> float:
        """The wait after `failures` failures of which the first `free` are free."""
        if failures < free:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(failures - free, 64))

    def retry_after(self, client: str, account: str) -> float:
        """Seconds until `client` may try to sign in to `account`; 0 when it may try now."""
        now = self._clock()
        mine = self._streak(self._clients, client, now)
        if mine is None:
            return 0.0  # a client that has not failed is never held back
        wait = mine.last + self.delay(mine.failures, self.free) - now
        theirs = self._streak(self._accounts, account, now)
        if theirs is not None:
            wait = max(wait, theirs.last + self.delay(theirs.failures, self.account_free) - now)
        return max(0.0, wait)

    def failed(self, client: str, account: str) -> None:
        now = self._clock()
        for table, key, bound in ((self._clients, client, self.max_clients),
                                  (self._accounts, account, self.max_accounts)):
            streak = self._streak(table, key, now) or _Streak()
            streak.failures += 1
            streak.last = now
            table[key] = streak
            table.move_to_end(key)
            while len(table) > bound:
                table.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """The client's streak ends; the account's does not (an attack on it may go on)."""
        self._clients.pop(client, None)

    def _streak(self, table: OrderedDict, key: str, now: float) -> Optional[_Streak]:
        streak = table.get(key)
        if streak is not None and now - streak.last > self.forget:
            del table[key]
            return None
        return streak


# --- the password hash, off the event loop ------------------------------------------------------

class Busy(Exception):
    """Too many password checks are waiting; try again shortly."""


class PasswordChecker:
    """Runs password checks (scrypt: tens of milliseconds and 16 MiB each) on `workers` threads, so
    the event loop keeps serving callbacks. At most `max_waiting` checks wait for a thread, and one
    client address has at most `per_client` checks running or waiting (parallel guesses cannot outrun
    its backoff); beyond either, `check` raises Busy at once rather than queueing without bound."""

    def __init__(self, workers: int = 2, max_waiting: int = 64, per_client: int = 2) -> None:
        self.workers, self.max_waiting, self.per_client = workers, max_waiting, per_client
        self.pending = 0  # running or waiting
        self._by_client: dict[str, int] = {}
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wecomd-login")

    async def check(self, client: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a worker thread, for `client`; Busy when too many are waiting."""
        if self.pending >= self.workers + self.max_waiting or self._by_client.get(client, 0) >= self.per_client:
            raise Busy()
        self.pending += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))
        finally:
            self.pending -= 1
            self._by_client[client] -= 1
            if not self._by_client[client]:
                del self._by_client[client]

    def close(self) -> None:
        self._executor.shutdown(wait=True)
