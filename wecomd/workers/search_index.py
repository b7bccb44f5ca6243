"""SearchIndex: the full-text index's upkeep (SQLite): its segments merged a small step at a time.

FTS5 no longer merges inside the writes that add to the index (migration 0014), where a callback
could wait tens of milliseconds for it. This worker merges instead, a step (store.search.merge_step,
MERGE_PAGES pages) per writer call, so a callback waits for one step at most; it goes on while
there is merging to do (a 微信客服 backlog being stored makes plenty: the kf channel wakes it after
each page) and looks again every POLL seconds. While the 微信客服 pull process pulls, that process
merges what it stores and the daemon's worker waits (`paused`), so the two do not take turns at
the write lock.
"""
from __future__ import annotations

from datetime import datetime
from typing import Callable

from wecomd.store.times import utcnow
from wecomd.workers.base import RunDb, Worker, no_events

POLL = 0.5  # seconds between looks while there is nothing to merge (a look with nothing to do is cheap)
STEPS = 10_000  # steps at most in one pass, then a look at the stop flag and the next pass


class SearchIndex(Worker):
    kind = "search index"

    def __init__(self, run_db: RunDb, search, *, clock: Callable[[], datetime] = utcnow,
                 interval: float = POLL, paused: Callable[[], bool] = lambda: False,
                 on_merging: Callable[[bool], None] = lambda merging: None) -> None:
        super().__init__(run_db, no_events, clock=clock, poll_interval=interval, max_attempts=1,
                         backoff_base=2.0, backoff_max=interval)
        self.search = search
        self.paused = paused  # True: another process merges now (the 微信客服 pull process, while it pulls)
        self.on_merging = on_merging  # told when a pass starts merging (True) and when it is done (False)
        self.merging = False
        self.steps = 0  # merge steps that merged something (tests, benchmarks)

    async def _pass(self) -> None:
        try:
            for _ in range(STEPS):
                if self._stopping or self.paused() or not await self.run_db(self.search.merge_step):
                    return
                self.steps += 1
                self._merging(True)
        finally:
            self._merging(False)

    def _merging(self, now: bool) -> None:
        if now != self.merging:
            self.merging = now
            self.on_merging(now)
