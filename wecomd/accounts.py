"""Who is asking, and what they may do: the dashboard's accounts, roles and app scopes.

An Identity comes from one of:
- a session cookie (wecomd.auth.Sessions) of the config file's `[admin]` (the bootstrap admin) or of an
  operator account in the database (`wecomd user`, the Operators page);
- `Authorization: Bearer <token>`: the config's `api_token` (an admin), or an API token an admin
  created for an operator (that operator's role and apps).

Roles are ordered: a viewer reads; an operator also replies, retries, recalls, takes over, resumes,
assigns and writes notes; an admin also manages operators, reads the audit log and creates tokens.
An account limited to some apps never sees the others.

Accounts and tokens are read from the database on every request, so disabling an account, changing its
password or revoking a token holds from the next request, whichever process made the change.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, FrozenSet, Iterable, Optional

from wecomd.config import AdminConfig
from wecomd.passwords import verify_password

ROLES = ("viewer", "operator", "admin")
NAME_PATTERN = r"[A-Za-z0-9._@-]{1,64}"
API_TOKEN_USER = "api"  # the name the config's api_token acts under
# Checked against an unknown account's password so that timing does not tell which names exist.
_DUMMY_HASH = "scrypt$n=16384,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43


@dataclass(frozen=True)
class Identity:
    """A signed-in operator (or token): `apps` None means every app."""

    name: str
    role: str
    apps: Optional[FrozenSet[str]] = None
    via: str = "session"  # "session", "token" (an operator's API token) or "api_token" (the config's)

    def can(self, role: str) -> bool:
        """Whether this identity's role is `role` or above."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def sees(self, app: Optional[str]) -> bool:
        return self.apps is None or app in self.apps

    def visible(self, apps: Iterable[str]) -> list[str]:
        """Those of `apps` this identity may see, in their order."""
        return [app for app in apps if self.sees(app)]

    def json(self) -> dict:
        return dict(name=self.name, role=self.role, apps=sorted(self.apps) if self.apps is not None else None)


def fingerprint(password_hash: str) -> str:
    """What a session remembers of its account's password hash: a new password ends the session."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def new_token() -> tuple[str, str]:
    """A new API token and the hash that is stored of it."""
    token = "wcd_" + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def bearer(header: Optional[str]) -> Optional[str]:
    """The token of `Authorization: Bearer <token>`, or None."""
    if not header or not header.startswith("Bearer "):
        return None
    return header[len("Bearer "):].strip() or None


def _identity(row: dict, via: str) -> Optional[Identity]:
    if row is None or row["disabled"]:
        return None
    return Identity(row["name"], row["role"], frozenset(row["apps"]) if row["apps"] else None, via)


class Accounts:
    """Resolves sessions, tokens and passwords to Identities. `admin()` gives the config's current
    [admin]; `read` runs a read-only store call off the event loop, `write` one on the writer; `clock`
    is the time a token is recorded as used (naive UTC)."""

    def __init__(self, admin: Callable[[], AdminConfig], store: Any, read: Callable[..., Awaitable[Any]],
                 write: Callable[..., Awaitable[Any]], clock: Callable[[], datetime]) -> None:
        self._admin, self._store, self._read, self._write = admin, store, read, write
        self._clock = clock

    def _bootstrap(self, via: str = "session") -> Identity:
        return Identity(self._admin().username, "admin", None, via)

    async def for_session(self, user: str, credential: str) -> Optional[Identity]:
        """The Identity of a session of `user` that remembered `credential`; None once the account is
        gone, disabled or has a new password."""
        admin = self._admin()
        if user == admin.username:
            if admin.password_hash and hmac.compare_digest(fingerprint(admin.password_hash), credential):
                return self._bootstrap()
            return None
        row = await self._read(self._store.operators.get, user, True)
        if row is None or not hmac.compare_digest(fingerprint(row["password_hash"]), credential):
            return None
        return _identity(row, "session")

    async def for_bearer(self, header: Optional[str]) -> Optional[Identity]:
        """The Identity of a bearer token: the config's api_token or an operator's live API token."""
        token = bearer(header)
        if token is None:
            return None
        admin = self._admin()
        if admin.api_token and hmac.compare_digest(token.encode(), admin.api_token.encode()):
            return Identity(API_TOKEN_USER, "admin", None, "api_token")
        if not token.startswith("wcd_"):
            return None
        row = await self._write(self._store.operators.token_owner, token_digest(token), self._clock())
        return _identity(row, "token")

    async def password_hash_of(self, user: str) -> Optional[str]:
        """The password hash to check a sign-in of `user` against; None for no such enabled account."""
        admin = self._admin()
        if user == admin.username:
            return admin.password_hash or None
        row = await self._read(self._store.operators.get, user, True)
        if row is None or row["disabled"]:
            return None
        return row["password_hash"]


def check_password(password: str, password_hash: Optional[str]) -> bool:
    """Slow (scrypt): run it through auth.PasswordChecker. An unknown account costs the same time."""
    ok = verify_password(password, password_hash or _DUMMY_HASH)
    return ok and password_hash is not None
