"""Retention: deletes messages older than [server] retention_days, with their rule runs, bot answers and media
files, and what belonged to conversations left without messages (store.maintenance.prune).

Once at start and then every `interval` (an hour), when retention_days is above 0, messages received
before now − retention_days are deleted oldest first, one batch per database transaction and per
trip to the database thread, so callbacks keep being stored in between. Their media files are
removed after the rows are committed: a crash in between leaves a stray file, never a message whose
file is gone. Rows still in use are kept whatever their age (see store.maintenance.prune): outbound messages
still pending, media downloads pending, rule runs running and webhooks pending.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterable, Optional

from wecomd.store.maintenance import COUNTS
from wecomd.store.times import utcnow
from wecomd.workers.base import RunDb, Worker, no_events

logger = logging.getLogger(__name__)

BATCH = 500


class Retention(Worker):
    """Prunes old messages at start and every `interval` seconds while retention_days() is above 0."""

    kind = "retention"

    def __init__(self, run_db: RunDb, store, media_dir: Path, retention_days: Callable[[], int], *,
                 clock: Callable[[], datetime] = utcnow, interval: float = 3600.0,
                 batch: int = BATCH, audit_days: Callable[[], int] = lambda: 0) -> None:
        super().__init__(run_db, no_events, clock=clock, poll_interval=interval, max_attempts=1,
                         backoff_base=1.0, backoff_max=interval)
        self.store, self.retention_days, self.audit_days = store, retention_days, audit_days
        self.media_dir = Path(media_dir).absolute()
        self.batch = max(1, int(batch))
        self.last: Optional[dict] = None  # the totals of the last pass that pruned

    async def _pass(self) -> None:
        await self._prune_audit()
        days = int(self.retention_days())
        if days <= 0:
            return
        cutoff = self.clock() - timedelta(days=days)
        totals = dict.fromkeys(COUNTS + ("files",), 0)
        totals["more"], started, batches = True, time.monotonic(), 0
        while totals["more"] and not self._stopping:
            batches += 1
            # Shielded: a stop lets the batch in flight remove the files of the rows it deleted.
            await self._shielded(batches, self._batch(cutoff, totals))
        self.last = dict(totals, cutoff=cutoff)
        level = logging.INFO if totals["messages"] or totals["files"] else logging.DEBUG
        logger.log(level, "retention: deleted %d message(s) received before %s, %d rule run(s), "
                   "%d bot answer(s), %d media file(s), %d read mark(s), %d note(s), %d assignment(s), "
                   "%d takeover(s), %d kf session(s), %d kf code(s), %d kf customer name(s) in %d batch(es), %.1fs",
                   totals["messages"], cutoff.strftime("%Y-%m-%dT%H:%M:%SZ"), totals["rule_runs"],
                   totals["bot_streams"], totals["files"], totals["read_marks"], totals["notes"],
                   totals["assignments"], totals["takeovers"], totals["kf_sessions"], totals["kf_codes"],
                   totals["kf_customers"], totals["batches"], time.monotonic() - started)

    async def _prune_audit(self) -> None:
        """The audit log has its own horizon ([server] audit_retention_days; 0: kept for good):
        retention_days never deletes audit rows."""
        days = int(self.audit_days())
        if days <= 0:
            return
        cutoff = self.clock() - timedelta(days=days)
        deleted = await self.run_db(self.store.audit.prune, cutoff)
        if deleted:
            logger.info("retention: deleted %d audit row(s) older than %s", deleted, cutoff.strftime("%Y-%m-%dT%H:%M:%SZ"))

    async def _batch(self, cutoff: datetime, totals: dict) -> None:
        result = await self.run_db(self.store.maintenance.prune, cutoff, self.batch, max_batches=1)
        totals["files"] += await asyncio.to_thread(self._remove_files, result["media"])
        for key in COUNTS:
            totals[key] += result[key]
        totals["more"] = result["more"]

    def _remove_files(self, relative_paths: Iterable[str]) -> int:
        """Delete the files of pruned messages; a missing one is fine. Return how many went."""
        removed, folders = 0, set()
        root = self.media_dir.resolve()
        for relative in relative_paths:
            path = (root / relative).resolve()
            if Path(relative).is_absolute() or root not in path.parents:
                logger.warning("retention: not deleting %r: outside media_dir", relative)
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning("retention: cannot delete %s: %s", path, exc.strerror or exc)
                continue
            removed += 1
            folders.update(parent for parent in path.parents if root in parent.parents)
        # Emptied <app>/<YYYY-MM> folders go too, deepest first; one still in use is not empty.
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            with suppress(OSError):
                os.rmdir(folder)
        return removed
