"""Services: everything one wecomd process owns, built once by `serve`, `demo` and the tests alike."""
from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

from wecomd import config as configmod, logs

from wecomd.automation import rules
from wecomd.auth import LoginLimiter, PasswordChecker, Sessions
from wecomd.automation.runner import Automation
from wecomd.automation.commands import CommandRunner
from wecomd.config import AppConfig, Config
from wecomd.wecom.crypto import WecomCrypto
from wecomd.failures import FailureRecorder
from wecomd.live import Hub
from wecomd.workers.media import MediaVault
from wecomd.metrics import Metrics
from wecomd.workers.outbox import Outbox
from wecomd.workers.retention import Retention
from wecomd.store import Store, StoreError
from wecomd.workers.webhooks import WebhookSender
from wecomd.wecom.api import WecomClient
from wecomd.store.writer import DbWriter

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
        self.rules = rules.compile_rules(config.rules)
        self.inflight = Inflight()
        # message id -> the passive reply of its first delivery, while that is still being worked out,
        # so that a WeCom retry overlapping it gets the same answer (not an empty one).
        self.first_deliveries: dict[int, asyncio.Future] = {}
        self.hub = Hub()
        self.metrics = Metrics(websocket_clients=lambda: self.hub.count,
                               db_commits=lambda: (self.writer.batches, self.writer.calls))
        self.login_limiter = LoginLimiter()
        self.password_checker = PasswordChecker()  # scrypt on its own threads, never on the event loop
        self.cookie_secret = config.admin.cookie_secret or _ephemeral_secret()
        self.wecom = WecomClient(config.wecom.api_base, on_refresh=self.metrics.token_refresh)
        # Writes (and everything on the callback path) go through one writer thread with group
        # commit; the dashboard's reads use their own connection on another thread (SQLite WAL lets
        # them run beside the writer), so a long search never holds up a callback.
        self.writer = DbWriter(self.store.db, lambda exc: StoreError("could not commit: %s" % exc))
        self.sessions = Sessions(self.db, self.store)
        # Callback failures, for `wecomd doctor`: on the writer thread, but not through db(): a row the
        # log cannot write is the log's own loss (logged), not one more wecomd_store_failures_total.
        self.failures = FailureRecorder(self.writer.run, self.store)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wecomd-read")
        self.outbox = Outbox(self.db, self.store, self.wecom, config.apps, self.hub.publish,
                             duplicate_check=config.wecom.duplicate_check_interval,
                             on_sent=self.metrics.sent, on_send_error=self.metrics.send_error)
        self.media = MediaVault(self.db, self.store, self.wecom, config.apps, config.server.media_dir, self.hub.publish)
        self.retention = Retention(self.db, self.store, config.server.media_dir,
                                   lambda: self.config.server.retention_days)
        settings = config.rules_settings
        self.runner = CommandRunner(max_concurrent=settings.max_commands, output_limit=settings.output_limit)
        self.webhooks = WebhookSender(self.db, self.store, self._webhook_target, self._webhook_reply, self.hub.publish)
        self.automation = Automation(self.db, self.store, self.outbox, self.webhooks, self.runner,
                                     lambda: self.rules, lambda: self.config.rules_settings, self.hub.publish)

    def app(self, name: str) -> AppConfig | None:
        return self.config.apps.get(name)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the writer thread; it returns once its transaction is committed."""
        try:
            return await self.writer.run(fn, *args, **kwargs)
        except StoreError:
            self.metrics.store_failed()
            raise

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a read-only store query on the reader thread (the dashboard's lists and searches)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, functools.partial(fn, *args, **kwargs))

    def message_stored(self, row: dict) -> None:
        """After an inbound message is committed: push it live and fetch its media."""
        logger.debug("message id=%s app=%s type=%s from=%s stored: content %s, event_key %s", row.get("id"),
                     row.get("app"), row.get("msgtype"), row.get("from_user"), logs.content(row.get("content") or ""),
                     logs.content(row.get("event_key") or ""))
        self.hub.publish({"type": "message", "message": {k: v for k, v in row.items() if k != "reply"}})
        if (row.get("media") or {}).get("status") == "pending":
            self.media.wake()

    def _webhook_target(self, rule_name: str) -> tuple:
        """(url, secret) of a rule in the current config; (None, None) once it is gone."""
        rule = next((r for r in self.rules if r.name == rule_name), None)
        return (rule.webhook, rule.webhook_secret) if rule else (None, None)

    async def _webhook_reply(self, run: dict, text: str) -> None:
        await self.automation.on_webhook_reply(run, text)

    def reload(self, environ: Any = None) -> bool:
        """Re-read the config file (SIGHUP): apps and rules change in place, connections stay.

        A config with problems is refused and the running one kept. Options that need a new
        socket, database or thread pool ([server]) only take effect after a restart.
        """
        try:
            new = configmod.load(self.config.path, environ)
            new_rules = rules.compile_rules(new.rules)
            cryptos = {name: _crypto_for(app) for name, app in new.apps.items()}
        except (configmod.ConfigError, rules.RuleError, ValueError) as exc:
            logger.error("reload refused, keeping the running config: %s", str(exc).replace("\n", "; "))
            return False
        if new.server != self.config.server or new.admin != self.config.admin:
            logger.warning("reload: [server] and [admin] changes take effect after a restart")
            new = replace(new, server=self.config.server, admin=self.config.admin)
        self.config, self.cryptos, self.rules = new, cryptos, new_rules
        self.outbox.apps = self.media.apps = new.apps
        self.outbox.duplicate_check = new.wecom.duplicate_check_interval
        logger.info("reloaded %s: apps %s; %d rule(s)", new.path, ", ".join(new.apps) or "none", len(new_rules))
        return True

    async def start(self) -> None:
        applied = await self.writer.run(self.store.migrate, alone=True)
        if applied:
            logger.info("database migrated: %s", ", ".join(applied))
        interrupted = await self.db(self.store.interrupt_running, _utcnow())
        if interrupted:
            logger.warning("%d rule action(s) were cut off by the last stop", interrupted)
        await self.sessions.load()
        self.outbox.start()
        self.media.start()
        self.webhooks.start()
        self.retention.start()

    async def close(self) -> None:
        self.hub.close_all()
        await self.automation.close()
        await self.webhooks.stop()
        await self.outbox.stop()
        await self.media.stop()
        await self.retention.stop()
        await self.failures.close()
        self.wecom.close()
        self.password_checker.close()
        await self.read(self.store.close)
        self._reader.shutdown(wait=True)
        await self.writer.run(self.store.close, alone=True)
        self.writer.close()
        logger.info("database writer: %d store calls in %d commits", self.writer.calls, self.writer.batches)


def _crypto_for(app: AppConfig) -> WecomCrypto:
    return WecomCrypto(app.token, app.encoding_aes_key, app.corp_id)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _ephemeral_secret() -> str:
    logger.warning("[admin] cookie_secret is empty: using a random one, so sign-ins end when wecomd restarts")
    return secrets.token_urlsafe(32)
