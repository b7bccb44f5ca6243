"""KfPullProcess: 微信客服's pulls in a process of their own ([server] kf_pull = process, the default).

A pull stores a backlog (up to 100,000 messages) as fast as the disk lets it. In the daemon's own
interpreter, decoding its pages and its writer thread would take the interpreter lock from the
event loop that answers callbacks. So the daemon starts a child process that runs the KfPuller
(wecomd.kf.pull) with a database connection, a writer thread and an API client of its own, into the
same database (the pull lease and kept pages make that safe, as for two daemons). The daemon:

- hands it each doorbell as it is (`doorbell`: the child commits the token in its own writer and
  pulls; the daemon's callback waits for neither), and the new config on reload;
- hears back, in order, the new messages each page stored, and does the channel's work on them
  (live events, rules, the welcome, names: KfChannel), as for a pull run in the daemon;
- hears when the child starts and ends writing in bulk: pulling, and merging the search index's
  segments of what it stored (`pulling`: callbacks go to the intake journal meanwhile,
  wecomd.intake, and the daemon's own index upkeep waits);
- starts it again when it dies (after RESTART seconds, doubling to RESTART_MAX while it keeps
  dying): its startup pull resumes from the stored cursors and kept pages;
- stops it on close: what it is storing is committed or not at all, and the next start pulls from
  there.

The child exits when the daemon goes away (its end of the pipe closes), and ignores SIGINT (a
terminal's Ctrl-C stops the daemon, which stops the child). Its writer's transactions are reported
to the daemon every REPORT_EVERY seconds (`on_batch`: /metrics, kinds pull_call, pull_bulky and
pull_alone).
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from typing import Any, Awaitable, Callable, Optional

from wecomd.config import AppConfig, Config
from wecomd.kf.pull import KfPuller, OnNew, hand_on_page
from wecomd.store.kf import StoredText, TextRun
from wecomd.store.times import utcnow

logger = logging.getLogger(__name__)

RESTART, RESTART_MAX = 1.0, 30.0  # seconds before a dead child is started again: first, most
REPORT_EVERY = 1.0  # seconds between the child's reports of its database writer's transactions
STOP_WAIT = 15.0  # seconds the child gets to stop before it is terminated
NICE = 10  # the child's scheduling niceness, added to the daemon's


class KfPullProcess:
    """The daemon's side (see the module docstring); the KfPuller's interface for KfChannel."""

    merges_index = True  # the child merges the search index's segments of what it stores, as it pulls

    def __init__(self, run_db: Callable[..., Awaitable[Any]], store: Any, config: Config, on_new: OnNew,
                 on_batch: Optional[Callable[[str, float, list], None]] = None) -> None:
        self.run_db, self.store, self.on_new = run_db, store, on_new
        self.on_batch = on_batch  # the child's writer's transactions, as DbWriter's on_batch (the metrics)
        self._conn: Any = None  # the pipe to the running child
        self._process: Any = None
        self._busy = False
        self._closing = False
        self._stopping = asyncio.Event()  # set by close: ends a wait before starting a child again
        self._supervisor: Optional[asyncio.Task] = None
        self._handing: Optional[asyncio.Future] = None  # the channel's work on the last page reported
        self.started = 0  # children started (/metrics, tests)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.apps = {name: app for name, app in config.apps.items() if app.kf}
        self._send(("config", config))

    def takes_bells(self) -> bool:
        """Whether a doorbell goes to the child as it is (it keeps the token and pulls): while one runs."""
        return self._conn is not None

    async def doorbell(self, app: AppConfig, open_kfid: str, token: Optional[str]) -> None:
        """A callback rang: handed to the running child, which commits its token in its own writer
        and pulls (the daemon waits for neither); while none runs, the token is committed here, and
        the next child's startup pull takes it."""
        if self._conn is not None:
            self._send(("ring", app.name, open_kfid, token))
            return
        await self.run_db(self.store.kf.doorbell, app.name, open_kfid, token, utcnow())
        self.wake(app, open_kfid)

    def wake(self, app: AppConfig, open_kfid: str) -> None:
        """Ask the child to pull the account. While no child runs, the one started next pulls every
        account at its start (the doorbell's pending flag is in the database)."""
        if self._supervisor is None and not self._closing:
            self._supervisor = asyncio.ensure_future(self._supervise())
        self._send(("wake", app.name, open_kfid))

    def pulling(self) -> bool:
        return self._busy

    @property
    def pid(self) -> Optional[int]:
        """The running child's pid (tests, operators)."""
        return self._process.pid if self._process is not None and self._conn is not None else None

    async def start(self) -> None:
        """Start the child; its startup pull catches up what came while the daemon was down."""
        if self._supervisor is None and not self._closing:
            self._supervisor = asyncio.ensure_future(self._supervise())

    def _send(self, message: tuple) -> None:
        if self._conn is None:
            return
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:  # the child is gone: the supervisor starts another
            logger.debug("kf: the pull process did not take %s: %s", message[0], exc)

    async def _supervise(self) -> None:
        loop, delay = asyncio.get_running_loop(), RESTART
        while not self._closing:
            began = loop.time()
            code = await self._run_child()
            if self._closing:
                return
            if loop.time() - began > 2 * RESTART_MAX:  # it ran a while: start again soon
                delay = RESTART
            logger.error("kf: the pull process exited (code %s); starting it again in %.0f s", code, delay)
            try:  # close() ends the wait
                await asyncio.wait_for(self._stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(2 * delay, RESTART_MAX)

    async def _run_child(self) -> Optional[int]:
        """Start a child and serve its pipe until it closes; the child's exit code."""
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of this one's threads
        mine, theirs = context.Pipe()
        process = context.Process(target=child_main, args=(self.config, theirs), name="wecomd-kf-pull", daemon=True)
        process.start()
        theirs.close()
        self._process, self._conn, self.started = process, mine, self.started + 1
        logger.info("kf: pull process %d started", process.pid)
        readable = asyncio.Event()
        loop.add_reader(mine.fileno(), readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                while mine.poll():
                    self._receive(mine.recv())
        except (EOFError, OSError):  # the child closed its end: it exits
            pass
        finally:
            loop.remove_reader(mine.fileno())
            mine.close()
            self._conn, self._busy = None, False
        await loop.run_in_executor(None, process.join, STOP_WAIT)
        if process.exitcode is None:
            process.kill()
            await loop.run_in_executor(None, process.join)
        return process.exitcode

    def _receive(self, message: tuple) -> None:
        kind = message[0]
        if kind == "busy":
            self._busy = bool(message[1])
        elif kind == "writer":
            for batch_kind, seconds, waits in message[1] if self.on_batch is not None else ():
                self.on_batch("pull_" + batch_kind, seconds, waits)
        elif kind == "new":
            _, name, open_kfid, new = message
            app = self.apps.get(name)
            if app is not None:
                self._handing = asyncio.ensure_future(hand_on_page(self.on_new, self._handing, app, open_kfid,
                                                              unpacked(new)))

    async def close(self) -> None:
        """Stop the child (it finishes or undoes what it is storing) and wait for it."""
        self._closing = True
        self._stopping.set()
        self._send(("stop",))
        if self._supervisor is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._supervisor), STOP_WAIT + 5)
            except asyncio.TimeoutError:
                logger.warning("kf: the pull process did not stop in time: killed")
                if self._process is not None:
                    self._process.kill()
                self._supervisor.cancel()
                await asyncio.gather(self._supervisor, return_exceptions=True)
        if self._handing is not None:
            await asyncio.gather(self._handing, return_exceptions=True)


# ---------------------------------------------------------------- the child

def child_main(config: Config, conn: Any) -> None:
    """The child process: a KfPuller of its own until the daemon says stop or goes away."""
    from wecomd import logs

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.setup(config.server.log_level, config.server.log_format, config.server.log_content)
    try:
        os.nice(NICE)  # batch work: the daemon answering callbacks goes first when the CPUs are busy
    except OSError as exc:  # a sandbox that refuses it (a seccomp filter): the pull runs all the same
        logger.warning("kf: the pull process keeps its priority: %s", exc)
    asyncio.run(_child(config, conn))


async def _child(config: Config, conn: Any) -> None:
    from wecomd.store import Store, StoreError
    from wecomd.store.writer import DbWriter
    from wecomd.wecom.api import WecomClient
    from wecomd.workers.search_index import SearchIndex

    loop = asyncio.get_running_loop()
    store = Store(config.server.database)
    batches: list = []  # the writer's transactions not reported yet: (kind, seconds, waits)
    writer = DbWriter(store.db, lambda exc: StoreError("could not commit: %s" % exc),
                      on_batch=lambda kind, seconds, waits: batches.append((kind, seconds, waits)))
    client = WecomClient(config.wecom.api_base)
    stop = asyncio.Event()

    def tell(message: tuple) -> None:
        try:
            conn.send(message)
        except (OSError, ValueError):  # the daemon is gone
            stop.set()

    told = [False]

    def busy(_: bool = False) -> None:
        """Tell the daemon whether this process writes in bulk: pulling, or merging what it stored."""
        now = puller.pulling() or (index is not None and index.merging)
        if now != told[0]:
            told[0] = now
            tell(("busy", now))

    # The index segments of what this process stores, merged while it pulls (a pass begun then goes on
    # to its end); at other times the daemon's upkeep merges.
    index = SearchIndex(writer.run, store.messages.search, on_merging=busy,
                        paused=lambda: not (puller.pulling() or index.merging)) if store.messages.search.fts else None

    async def on_new(app: AppConfig, open_kfid: str, new: list) -> None:
        tell(("new", app.name, open_kfid, packed(new)))
        if index is not None:
            index.wake()

    puller = KfPuller(writer.run, store, client, config, on_new, on_busy=busy)

    rings: set = set()

    async def ring(app: AppConfig, open_kfid: str, token: Optional[str]) -> None:
        """A doorbell the daemon handed over: its token kept, the account pulled (or once more)."""
        try:
            await puller.doorbell(app, open_kfid, token)
        except StoreError as exc:  # only the token is lost: the pull still runs
            logger.warning("kf: %s: the callback's token was not kept: %s", open_kfid, exc)
            puller.wake(app, open_kfid)

    def readable() -> None:
        try:
            while conn.poll():
                message = conn.recv()
                if message[0] == "stop":
                    stop.set()
                elif message[0] == "config":
                    puller.reconfigure(message[1])
                elif message[0] in ("wake", "ring"):
                    app = puller.apps.get(message[1])
                    if app is not None and app.serves_kf(message[2]):
                        if message[0] == "ring":
                            rings.add(asyncio.ensure_future(ring(app, message[2], message[3])))
                            rings.difference_update([task for task in rings if task.done()])
                        else:
                            puller.wake(app, message[2])
        except (EOFError, OSError):  # the daemon is gone
            stop.set()

    def report() -> None:
        """The writer's transactions since the last report, to the daemon's /metrics."""
        count = len(batches)  # the writer's thread may append meanwhile: those go next time
        if count:
            tell(("writer", batches[:count]))
            del batches[:count]

    async def reporting() -> None:
        while not stop.is_set():
            await asyncio.sleep(REPORT_EVERY)
            report()

    loop.add_reader(conn.fileno(), readable)
    if index is not None:
        index.start()
    reporter = asyncio.ensure_future(reporting())
    try:
        await puller.start()
        await stop.wait()
    finally:
        reporter.cancel()
        loop.remove_reader(conn.fileno())
        await asyncio.gather(*rings, return_exceptions=True)
        await puller.close()
        if index is not None:
            await index.stop()
        await writer.run(store.close, alone=True)
        writer.close()
        report()
        client.close()
        conn.close()


# ---------------------------------------------------------------- a page's new messages on the pipe

def packed(new: list) -> list:
    """A page's new messages for the pipe, in order: customers' plain texts in a row (StoredText) as
    one ("t", their ids, their external_userids), anything else as ("d", row, Pulled). Texts are most
    of a backlog; sending their items back whole would hold the daemon's event loop up for
    milliseconds a page, and the channel reads their stored bodies only if it needs them."""
    out: list = []
    for entry in new:
        if not isinstance(entry, StoredText):
            out.append(("d",) + tuple(entry))
            continue
        if not out or out[-1][0] != "t":
            out.append(("t", [], []))
        out[-1][1].append(entry.id)
        out[-1][2].append(entry.item.get("external_userid"))
    return out


def unpacked(new: list) -> list:
    """The entries KfChannel takes (see packed): a TextRun for each run of texts."""
    return [TextRun(entry[1], entry[2]) if entry[0] == "t" else (entry[1], entry[2]) for entry in new]
