"""The store behind the production DbWriter, as Services runs it, for tests of the workers
(outbox, media, webhooks, retention) without HTTP.

    async with StoreHarness(tmp_path) as h:        # a migrated SQLite file in tmp_path
        row = await h.db(h.store.messages.get, 1)           # on the writer thread, committed when it returns
        worker = h.start(Retention(h.db, h.store, ..., clock=h.clock))  # stopped on exit
        await h.until(predicate)                   # poll an async predicate

WecomHarness adds the sandbox WeCom on loopback, a real WecomClient and `outbox()`.
Subclass either for a worker's own helpers.
"""
from __future__ import annotations

from typing import Any, Callable

from support.aio import FakeClock, until
from support.database import migrated_sqlite
from support.peer import AES_KEY, CORP_ID, TOKEN
from wecomd.config import AppConfig
from wecomd.store import Store, StoreError
from wecomd.store.writer import DbWriter
from wecomd.wecom import sandbox
from wecomd.wecom.api import SEND, WecomClient
from wecomd.wecom.sandbox import FakeWecom
from wecomd.workers.outbox import Outbox

APPS = {
    "helpdesk": AppConfig("helpdesk", CORP_ID, "1000002", TOKEN, AES_KEY, "helpdesk-secret", ""),
    "nosecret": AppConfig("nosecret", CORP_ID, "1000003", TOKEN, AES_KEY, "", ""),
}


class StoreHarness:
    """A migrated Store on tmp_path/wecomd.db (support.database's copy) whose calls run on the
    production DbWriter (group commit, one savepoint per call), a fake clock, the live events the
    workers publish, and the workers to stop on exit."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.clock = FakeClock()
        self.events: list[dict] = []
        self.workers: list = []

    async def __aenter__(self):
        migrated_sqlite(self.tmp_path)
        self.store = Store("wecomd.db", base_dir=self.tmp_path)
        # The same writer and error wrapping as Services; migrations run alone, as at start-up
        # (on the copy they apply nothing).
        self.writer = DbWriter(self.store.db, lambda exc: StoreError("could not commit: %s" % exc))
        await self.writer.run(self.store.migrate, alone=True)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop_workers()
        await self.writer.run(self.store.close, alone=True)
        self.writer.close()

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store call on the writer thread; it returns once its transaction is committed.
        The `db` callable the workers take."""
        return await self.writer.run(fn, *args, **kwargs)

    def start(self, worker, start: bool = True):
        """Keep `worker` to stop on exit; start it unless told not to."""
        self.workers.append(worker)
        if start:
            worker.start()
        return worker

    async def stop_workers(self) -> None:
        while self.workers:
            await self.workers.pop(0).stop()

    async def until(self, predicate, timeout: float = 5.0):
        return await until(predicate, timeout)


class WecomHarness(StoreHarness):
    """StoreHarness plus the sandbox WeCom on loopback (`fake`) and a real WecomClient on it."""

    def __init__(self, tmp_path) -> None:
        super().__init__(tmp_path)
        self.fake = FakeWecom()

    async def __aenter__(self):
        await super().__aenter__()
        self.server, self.base_url = await sandbox.start(self.fake)
        self.client = WecomClient(self.base_url)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop_workers()
        self.client.close()
        self.server.stop()
        await super().__aexit__(*exc_info)

    def outbox(self, start: bool = True, store=None, client=None, **options) -> Outbox:
        settings = dict(clock=self.clock, poll_interval=0.05, backoff_base=2.0, **options)
        outbox = Outbox(self.db, store or self.store, client or self.client, APPS, self.events.append, **settings)
        return self.start(outbox, start)

    async def row(self, message_id: int) -> dict:
        return await self.db(self.store.messages.get, message_id)

    async def until_status(self, message_id: int, status: str, attempts=None) -> dict:
        async def check():
            row = await self.row(message_id)
            if row["status"] == status and (attempts is None or row["attempts"] == attempts):
                return row
        return await self.until(check)

    def send_calls(self) -> int:
        return sum(1 for path, _ in self.fake.calls if path == SEND)

    def statuses(self, message_id: int) -> list[tuple]:
        return [(e["status"], e["error"]) for e in self.events if e["type"] == "status" and e["id"] == message_id]
