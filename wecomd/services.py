"""Services: everything one wecomd process owns, built once by `serve`, `demo` and the tests alike."""
from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from wecomd.auth import LoginLimiter
from wecomd.config import AppConfig, Config
from wecomd.crypto import WecomCrypto
from wecomd.live import Hub
from wecomd.media import MediaVault
from wecomd.outbox import Outbox
from wecomd.store import Store
from wecomd.wecom_api import WecomClient

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Inflight:
    """Counts requests being served, so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count = max(0, self.count - 1)
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


class Services:
    """The object graph of one process.

    Every store call goes through `db()`, which runs it on the single worker thread
    that owns the database connection: writes are serialised and the IOLoop stays free.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.server.database)
        self.cryptos = {name: _crypto_for(app) for name, app in config.apps.items()}
        self.inflight = Inflight()
        self.hub = Hub()
        self.login_limiter = LoginLimiter()
        self.cookie_secret = config.admin.cookie_secret or _ephemeral_secret()
        self.wecom = WecomClient(config.wecom.api_base)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wecomd-db")
        self.outbox = Outbox(self.db, self.store, self.wecom, config.apps, self.hub.publish)
        self.media = MediaVault(self.db, self.store, self.wecom, config.apps, config.server.media_dir, self.hub.publish)

    def app(self, name: str) -> AppConfig | None:
        return self.config.apps.get(name)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call on the database thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def message_stored(self, row: dict) -> None:
        """After an inbound message is committed: push it live and fetch its media."""
        self.hub.publish({"type": "message", "message": {k: v for k, v in row.items() if k != "reply"}})
        if (row.get("media") or {}).get("status") == "pending":
            self.media.wake()

    async def start(self) -> None:
        applied = await self.db(self.store.migrate)
        if applied:
            logger.info("database migrated: %s", ", ".join(applied))
        self.outbox.start()
        self.media.start()

    async def close(self) -> None:
        self.hub.close_all()
        await self.outbox.stop()
        await self.media.stop()
        self.wecom.close()
        await self.db(self.store.close)
        self._executor.shutdown(wait=True)


def _crypto_for(app: AppConfig) -> WecomCrypto:
    return WecomCrypto(app.token, app.encoding_aes_key, app.corp_id)


def _ephemeral_secret() -> str:
    logger.warning("[admin] cookie_secret is empty: using a random one, so sign-ins end when wecomd restarts")
    return secrets.token_urlsafe(32)
