"""WeCom's per-member send limit, kept by the outbox: at most 30 messages a minute and 1,000 an hour
from one app to one member (wecom-protocol.md §8.2). Over it WeCom answers ok and drops the message
without a word, so the outbox must hold the message back itself rather than send and lose it.
"""
from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Callable, Deque, Dict, Iterable, Optional, Tuple

# (window, most sends in it), per app and member.
WINDOWS: Tuple[Tuple[timedelta, int], ...] = ((timedelta(minutes=1), 30), (timedelta(hours=1), 1000))


def members(to_user: str) -> list[str]:
    """The members a send to `to_user` ("a|b") reaches, as WeCom counts them (lower case)."""
    return sorted({user.lower() for user in str(to_user or "").split("|") if user and user != "@all"})


class MemberWindows:
    """When each (app, member) last received messages, by `clock`; what is still allowed."""

    def __init__(self, clock: Callable[[], datetime],
                 windows: Tuple[Tuple[timedelta, int], ...] = WINDOWS) -> None:
        self.clock, self.windows = clock, windows
        self._longest = max(span for span, _ in windows)
        self._sent: Dict[Tuple[str, str], Deque[datetime]] = {}

    def free_at(self, app: str, to_user: str) -> Optional[datetime]:
        """None when a message to `to_user` may go now; else the moment every member has room again."""
        now, latest = self.clock(), None
        for member in members(to_user):
            times = self._recent((app, member), now)
            for span, most in self.windows:
                inside = [moment for moment in times if moment > now - span]
                if len(inside) >= most:
                    # Room again once the oldest send that fills this window leaves it.
                    free = inside[len(inside) - most] + span
                    latest = free if latest is None or free > latest else latest
        return latest

    def record(self, app: str, to_user: str, moment: Optional[datetime] = None) -> None:
        """One message reached `to_user` (each of its members) at `moment` (now)."""
        moment = moment or self.clock()
        for member in members(to_user):
            self._sent.setdefault((app, member), deque()).append(moment)

    def seed(self, sends: Iterable[Tuple[str, str, datetime]]) -> None:
        """What was sent before this process started ((app, to_user, when), oldest first)."""
        for app, to_user, moment in sends:
            self.record(app, to_user, moment)

    def _recent(self, key: Tuple[str, str], now: datetime) -> Deque[datetime]:
        times = self._sent.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self._longest:
            times.popleft()
        if not times:
            del self._sent[key]
        return times
