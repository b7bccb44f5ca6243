"""Human takeover: after an operator answers a user by hand, automation leaves that user to them.

For `[rules] takeover_minutes` after a manual reply, the rules' replies and commands are skipped for
that (app, user) (each recorded as a skipped run, with PAUSED as its reason) and the app's own
`reply =` is not sent; webhooks still forward. The pause lives in the database, so it outlasts a
restart; the dashboard's "resume now" ends it early.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Optional

from wecomd.config import Config, RulesConfig
from wecomd.store.times import utcnow

PAUSED = "automation paused: an operator replied by hand (human takeover)"


class Takeover:
    """Pauses and resumes automation per conversation; one per process, owned by `Services`."""

    def __init__(self, run_db: Callable[..., Awaitable[Any]], store: Any, config: Config) -> None:
        self.run_db, self.store = run_db, store
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.settings = config.rules_settings

    async def operator_replied(self, app: str, user: str, operator: Optional[str]) -> Optional[datetime]:
        """An operator answered `user` by hand: pause automation for them; returns until when (None:
        takeover is off)."""
        until = pause_until(self.settings)
        if until is not None:
            await self.run_db(self.store.takeovers.pause, app, user, until, operator)
        return until

    async def resume(self, app: str, user: str) -> None:
        """The thread's "resume now": automation answers this user again at once."""
        await self.run_db(self.store.takeovers.resume, app, user)


def is_paused(store: Any, app: str, user: Optional[str], now: Optional[datetime] = None) -> bool:
    """Whether automation is paused for (app, user); a store call, run inside the writer call that
    stores the message, so the answer and the message are one decision."""
    return bool(user) and store.takeovers.paused_until(app, user, now or utcnow(whole_seconds=True)) is not None


def pause_until(settings: RulesConfig, now: Optional[datetime] = None) -> Optional[datetime]:
    """When automation resumes after an operator's manual reply now; None when takeover is off."""
    if settings.takeover_minutes <= 0:
        return None
    return (now or utcnow(whole_seconds=True)) + timedelta(minutes=settings.takeover_minutes)
