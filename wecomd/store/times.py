"""Times as wecomd keeps them: naive UTC datetimes in the database, ISO 8601 with "Z" in JSON.

`utcnow` is the one clock of the daemon's own code (the store, the workers, sign-in sessions, the
failure log); workers and sessions take it as their default `clock`, so tests can inject another.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional


def utcnow(whole_seconds: bool = False) -> datetime:
    """Now, in naive UTC.

    `whole_seconds` for the moments a row records (received_at, updated_at, started_at,
    finished_at, a failure's `at`, a takeover's start): their JSON shows whole seconds, and an
    outbound message's create_time (Unix seconds) is its received_at. Due times (next_attempt_at)
    and session expiry keep the microseconds, so a 0.1 s backoff is not rounded to a second.
    """
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=0) if whole_seconds else now


def naive_utc(moment: Optional[datetime]) -> Optional[datetime]:
    """Aware datetimes converted to naive UTC; naive ones are taken as UTC already."""
    if moment is not None and moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def iso(moment: Optional[datetime]) -> Optional[str]:
    """A stored time as JSON shows it: "2026-11-28T12:00:00Z" (whole seconds), or None."""
    if moment is None:
        return None
    if moment.tzinfo is None and moment.year >= 1000:  # the same text, at a fifth of strftime's cost
        return moment.isoformat(timespec="seconds") + "Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def from_iso(text: Optional[str]) -> Optional[datetime]:
    """The naive UTC datetime of a time as JSON shows it (iso's text), or None for none."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ") if text else None
