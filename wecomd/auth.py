"""Operator sign-in: password and API-token checks, session values, failed-login rate limiting."""
from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from typing import Callable, Optional

from wecomd.config import AdminConfig
from wecomd.passwords import verify_password

SESSION_COOKIE = "wecomd_session"
SESSION_DAYS = 7


def check_login(admin: AdminConfig, username: str, password: str) -> bool:
    """True when both match; always runs the password hash so timing tells nothing."""
    name_ok = hmac.compare_digest(username.encode(), admin.username.encode())
    password_ok = bool(admin.password_hash) and verify_password(password, admin.password_hash)
    return name_ok and password_ok


def check_api_token(admin: AdminConfig, header: Optional[str]) -> bool:
    """True for `Authorization: Bearer <api_token>` when an api_token is configured."""
    if not admin.api_token or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), admin.api_token.encode())


def session_value(admin: AdminConfig) -> str:
    """What the signed session cookie holds: the user and a fingerprint of the password hash,
    so that changing the password ends every existing session."""
    return "%s|%s" % (admin.username, _fingerprint(admin))


def session_user(admin: AdminConfig, value: Optional[bytes]) -> Optional[str]:
    """The operator named by a verified cookie value, or None when it no longer holds."""
    if not value:
        return None
    user, _, fingerprint = value.decode("utf-8", "replace").rpartition("|")
    if user == admin.username and hmac.compare_digest(fingerprint, _fingerprint(admin)):
        return user
    return None


def _fingerprint(admin: AdminConfig) -> str:
    return hashlib.sha256(admin.password_hash.encode()).hexdigest()[:16]


class LoginLimiter:
    """Failed sign-ins per client address: `max_failures` within `window` seconds lock it out.

    Memory is bounded: at most `max_clients` addresses are remembered, oldest dropped first.
    """

    def __init__(self, max_failures: int = 5, window: float = 300.0, max_clients: int = 10000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window, self.max_clients = max_failures, window, max_clients
        self._clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may try now."""
        recent = self._recent(client)
        if len(recent) < self.max_failures:
            return 0.0
        return max(0.0, recent[0] + self.window - self._clock())

    def failed(self, client: str) -> None:
        recent = self._recent(client)
        recent.append(self._clock())
        self._failures[client] = recent[-self.max_failures:]
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _recent(self, client: str) -> list[float]:
        cutoff = self._clock() - self.window
        return [t for t in self._failures.get(client, []) if t > cutoff]
