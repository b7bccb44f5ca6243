"""Services: everything one wecomd process owns, built once by `serve`, `demo` and the tests alike.

Services only builds the pieces and runs their lifecycle (start, reload, close); what a piece does,
and how it takes a new config on reload (`reconfigure`), is that piece's own business.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, List, TypeVar

from wecomd import config as configmod
from wecomd.accounts import Accounts
from wecomd.auth import LoginLimiter, PasswordChecker, Sessions
from wecomd.automation import rules as rulesmod
from wecomd.automation.commands import CommandRunner
from wecomd.automation.runner import RuleRunner
from wecomd.automation.takeover import Takeover
from wecomd.bots import BotChannel, RuleSources
from wecomd.kf.channel import KfChannel
from wecomd.config import AppConfig, Config
from wecomd.contacts import Directory, user_name
from wecomd.failures import FailureRecorder
from wecomd.inbox import Inbox
from wecomd.intake import Intake
from wecomd.live import Hub
from wecomd.metrics import Metrics
from wecomd.store import Store, StoreError
from wecomd.store.intake import Journal, journal_path
from wecomd.store.times import utcnow
from wecomd.store.writer import DbWriter
from wecomd.wecom.api import WecomClient
from wecomd.wecom.crypto import WecomCrypto
from wecomd.workers.media import MediaVault
from wecomd.workers.notify import NotifySender
from wecomd.workers.outbox import Outbox
from wecomd.workers.retention import Retention
from wecomd.workers.search_index import SearchIndex
from wecomd.workers.webhooks import WebhookSender

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
        self.cryptos = _cryptos(config)
        self.inflight = Inflight()
        self.hub = Hub()
        self.metrics = Metrics(websocket_clients=lambda: self.hub.count,
                               db_commits=lambda: (self.writer.batches, self.writer.calls),
                               intake_pending=lambda: self.intake.pending(),
                               kf_pull=lambda: self.kf.pull_process())
        self.login_limiter = LoginLimiter()
        self.password_checker = PasswordChecker()  # scrypt on its own threads, never on the event loop
        self.cookie_secret = config.admin.cookie_secret or _ephemeral_secret()
        self.wecom = WecomClient(config.wecom.api_base, on_refresh=self.metrics.token_refresh)
        # Writes (and everything on the callback path) go through one writer thread with group
        # commit; the dashboard's reads use their own connection on another thread (SQLite WAL lets
        # them run beside the writer), so a long search never holds up a callback.
        self.writer = DbWriter(self.store.db, lambda exc: StoreError("could not commit: %s" % exc),
                               on_batch=self.metrics.db_batch)
        self.sessions = Sessions(self.db, self.store)
        self.accounts = Accounts(lambda: self.config.admin, self.store, self.read, self.db,
                                 lambda: utcnow(whole_seconds=True))
        # Callback failures, for `wecomd doctor`: on the writer thread, but not through db(): a row the
        # log cannot write is the log's own loss (logged), not one more wecomd_store_failures_total.
        self.failures = FailureRecorder(self.writer.run, self.store)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wecomd-read")
        # Names behind UserIDs for the dashboard; live events get theirs on the way out (publish).
        self.directory = Directory(self.store, self.read, self.db, self.wecom, config, self.hub.publish,
                                   lambda: utcnow(whole_seconds=True))
        self.outbox = Outbox(self.db, self.store, self.wecom, config.apps, self.publish,
                             duplicate_check=config.wecom.duplicate_check_interval, media_dir=config.server.media_dir,
                             on_sent=self.metrics.sent, on_send_error=self.metrics.send_error)
        self.media = MediaVault(self.db, self.store, self.wecom, config.apps, config.server.media_dir, self.publish,
                                bots=config.bots)
        self.retention = Retention(self.db, self.store, config.server.media_dir,
                                   lambda: self.config.server.retention_days,
                                   audit_days=lambda: self.config.server.audit_retention_days)
        # FTS5 merged a step at a time; by the pull process itself while it pulls (wecomd.kf.process)
        self.search_index = SearchIndex(self.db, self.store.messages.search,
                                        paused=lambda: self.kf.puller.merges_index and self.kf.puller.pulling())
        settings = config.rules_settings
        self.commands = CommandRunner(max_concurrent=settings.max_commands, output_limit=settings.output_limit)
        # The webhook sender and the rule runner need each other: the sender asks the runner for a
        # rule's current URL and secret, and hands it the replies of retried deliveries.
        self.webhooks = WebhookSender(self.db, self.store, lambda rule: self.rule_runner.webhook_target(rule),
                                      lambda run, text: self.rule_runner.on_webhook_reply(run, text), self.publish)
        self.notifier = NotifySender(self.db, self.store, config, self.publish)  # group robots (notify =)
        self.rule_runner = RuleRunner(self.db, self.store, self.outbox, self.webhooks, self.commands, config,
                                      self.publish, notifier=self.notifier)
        self.takeover = Takeover(self.db, self.store, config)
        # Callbacks while a 微信客服 pull keeps the database busy: committed to a journal of their own,
        # answered, and applied once each (SQLite only).
        journal = journal_path(self.store.file)
        self.intake = Intake(Journal(journal) if journal else None, self.db, self.store, self.app,
                             busy=lambda: self.kf.puller.pulling())
        self.inbox = Inbox(self.db, self.store, self.rule_runner, self.publish, self.media.wake, intake=self.intake)
        self.bot_sources = RuleSources(self.rule_runner.select, self.read, self.store, config)
        self.bots = BotChannel(self.db, self.read, self.store, self.inbox, self.publish, config, self.bot_sources,
                               intake=self.intake)
        # 微信客服: pulled after each kf_msg_or_event callback, answered through kf/send_msg by the outbox.
        self.kf = KfChannel(self.db, self.read, self.store, self.wecom, self.rule_runner, self.outbox, self.publish,
                            config, self.media.wake, listening=lambda: self.hub.count > 0,
                            wake_index=self.search_index.wake, intake=self.intake,
                            on_pull_batch=self.metrics.db_batch)
        self.outbox.kf = self.kf.sender
        self.rule_runner.name_of = functools.partial(user_name, self.directory, self.kf)  # {user_name} in rules

    @property
    def rules(self) -> List[rulesmod.Rule]:
        """The rules in force, in the order they are tried."""
        return self.rule_runner.rules

    def publish(self, event: dict) -> None:
        """Push a live event to the dashboards, a message's with its user's name (Directory)."""
        if self.hub.count:  # nobody listening: nothing to name (the callback path stays as it was)
            self.hub.publish(self.directory.annotate_event(event))

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

    def reload(self, environ: Any = None) -> bool:
        """Re-read the config file (SIGHUP): apps and rules change in place, connections stay.

        A config with problems is refused and the running one kept. Options that need a new
        socket, database or thread pool ([server]) only take effect after a restart.
        """
        try:
            new = configmod.load(self.config.path, environ)
            new_rules = rulesmod.compile_rules(new.rules)  # refused here, before any piece has changed
            cryptos = _cryptos(new)
        except (configmod.ConfigError, rulesmod.RuleError, ValueError) as exc:
            logger.error("reload refused, keeping the running config: %s", str(exc).replace("\n", "; "))
            return False
        if new.server != self.config.server or new.admin != self.config.admin:
            logger.warning("reload: [server] and [admin] changes take effect after a restart")
            new = replace(new, server=self.config.server, admin=self.config.admin)
        self.config, self.cryptos = new, cryptos
        for piece in (self.rule_runner, self.takeover, self.outbox, self.media, self.directory, self.bots,
                      self.bot_sources, self.notifier, self.kf):
            piece.reconfigure(new)
        logger.info("reloaded %s: apps %s; %d rule(s)", new.path, ", ".join(new.apps) or "none", len(new_rules))
        return True

    async def start(self) -> None:
        applied = await self.writer.run(self.store.migrate, alone=True)
        if applied:
            logger.info("database migrated: %s", ", ".join(applied))
        interrupted = await self.db(self.store.runs.interrupt_running, utcnow(whole_seconds=True))
        if interrupted:
            logger.warning("%d rule action(s) were cut off by the last stop", interrupted)
        await self.sessions.load()
        self.outbox.start()
        self.media.start()
        self.webhooks.start()
        self.notifier.start()
        self.retention.start()
        if self.store.messages.search.fts:
            self.search_index.start()
        await self.intake.start()  # what a stop left in the journal, applied before anything new
        await self.kf.start()  # the startup pull: what came while the daemon was down

    async def close(self) -> None:
        self.hub.close_all()
        await self.intake.close()  # first: the entry being applied finishes with the channels it needs
        await self.bots.close()
        await self.kf.close()
        await self.directory.close()
        await self.rule_runner.close()
        await self.webhooks.stop()
        await self.notifier.stop()
        await self.outbox.stop()
        await self.media.stop()
        await self.retention.stop()
        await self.search_index.stop()
        await self.failures.close()
        self.wecom.close()
        self.password_checker.close()
        await self.read(self.store.close)
        self._reader.shutdown(wait=True)
        await self.writer.run(self.store.close, alone=True)
        self.writer.close()
        logger.info("database writer: %d store calls in %d commits", self.writer.calls, self.writer.batches)


def _cryptos(config: Config) -> dict[str, WecomCrypto]:
    """Each app's and bot's callback crypto, by name (ValueError for a key that is not one). A bot's
    receive-id is the empty string (wecom-aibot.md §1)."""
    cryptos = {name: _crypto_for(app) for name, app in config.apps.items()}
    cryptos.update((name, WecomCrypto(bot.token, bot.encoding_aes_key, "")) for name, bot in config.bots.items())
    return cryptos


def _crypto_for(app: AppConfig) -> WecomCrypto:
    return WecomCrypto(app.token, app.encoding_aes_key, app.corp_id)


def _ephemeral_secret() -> str:
    logger.warning("[admin] cookie_secret is empty: using a random one, so sign-ins end when wecomd restarts")
    return secrets.token_urlsafe(32)
