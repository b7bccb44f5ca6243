"""The dashboard's sign-in sessions (table `session`, migration 0006), kept for wecomd.auth.Sessions.

One row per sign-in. The cookie holds a random token; the row holds only its SHA-256, so a copy of the
database (a backup) opens no session. `credential` is a fingerprint of the user's password hash at
sign-in: a session whose user has since changed password no longer holds. Expired rows are deleted
whenever a session is created or the sessions are loaded.
"""
from __future__ import annotations

from datetime import datetime

from .errors import guarded
from .models import Session

SESSION_FIELDS = ("token_hash", "user", "credential", "client", "created_at", "expires_at")


class Sessions:
    """The sessions of the database `name`, through the bound model `Session`."""

    def __init__(self, name: str, Session: type[Session]) -> None:
        self.name, self.Session = name, Session

    @guarded("save a session")
    def create(self, row: dict, now: datetime) -> None:
        """Insert a session (SESSION_FIELDS), deleting the expired ones first."""
        self.Session.delete().where(self.Session.expires_at <= now).execute()
        self.Session.insert(**{name: row[name] for name in SESSION_FIELDS}).execute()

    @guarded("read sessions")
    def live(self, now: datetime) -> list[dict]:
        """Delete the expired sessions; return the others (SESSION_FIELDS each)."""
        S = self.Session
        S.delete().where(S.expires_at <= now).execute()
        return list(S.select(*[getattr(S, name) for name in SESSION_FIELDS]).dicts())

    @guarded("end a session")
    def end(self, token_hash: str) -> int:
        """Delete one session; returns how many rows went (0 or 1)."""
        return self.Session.delete().where(self.Session.token_hash == token_hash).execute()
