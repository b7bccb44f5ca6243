"""The callback failure log: the last verification and callback requests answered with an error, each
with its exact reason, kept in the database so that `wecomd doctor` (another process) can list them.

The request path only pays for a call to `record`, made once a failed request is answered: it checks
a token bucket (RATE a second, BURST at once, so a flood of junk requests cannot flood the database),
queues a row and returns. One task at a time writes the queued rows through the database thread
(wecomd.store.writer), pruning the table to its newest KEEP rows every PRUNE_EVERY rows. Failures the rate
limit leaves out are counted on the next row recorded (`skipped`). Nothing here raises into a
handler: a row that cannot be written is logged and dropped.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional

from tornado import httputil

from wecomd import metrics
from wecomd.store.times import utcnow

logger = logging.getLogger(__name__)

RATE, BURST = 5.0, 20  # rows a second, and at once
KEEP, PRUNE_EVERY = 1000, 100
MAX_PENDING = 200  # rows waiting for the database thread; beyond that they are skipped too
REASON_CHARS = 500
LOG_EVERY = 60.0  # seconds between warnings about skipped or lost rows

# What to do about each failure category (metrics.FAILURE_REASONS); `wecomd doctor` shows these.
HINTS: Mapping[str, str] = {
    "signature": "the Token in WeCom (接收消息 → 设置API接收) differs from [app:NAME] token, or a proxy "
                 "changed the query string (decoded %2B twice, turned '+' into a space); scanners' junk "
                 "requests fail this way too",
    "receive_id": "the message is meant for another corp: check [app:NAME] corp_id (企业ID) and that "
                  "encoding_aes_key is this app's",
    "decrypt": "the EncodingAESKey in WeCom differs from [app:NAME] encoding_aes_key: copy it again "
               "(43 characters)",
    "timestamp": "this server's clock is off: enable NTP (timedatectl set-ntp true); [server] "
                 "timestamp_window sets the skew accepted",
    "malformed": "not a request from WeCom (a probe or scanner), or a proxy altered it: WeCom sends "
                 "msg_signature, timestamp and nonce (and echostr to verify the URL)",
    "unknown_app": "the URL path names no configured app: WeCom's callback URL must end in /callback/ "
                   "and the name of an [app:...] section (see the config check for the apps)",
    "too_large": "the body is larger than [server] max_body",
    "store": "the database could not take the message (see the database check); WeCom retries",
    "internal": "an error inside wecomd: see its log for the traceback",
}


class FailureRecorder:
    """Records failed callback requests for `wecomd doctor`; see the module docstring.

    `run_db(fn, *args)` runs a store call on the database thread (DbWriter.run). `recorded`, `dropped`
    (left out by the rate limit or a full queue) and `lost` (the write failed) count rows.
    """

    def __init__(self, run_db: Callable[..., Awaitable[Any]], store: Any, rate: float = RATE,
                 burst: int = BURST, keep: int = KEEP, clock: Callable[[], float] = time.monotonic) -> None:
        self._run_db, self._store, self._clock = run_db, store, clock
        self.rate, self.burst, self.keep = rate, burst, keep
        self._allowance, self._checked = float(burst), clock()
        self._pending: List[dict] = []
        self._task: Optional[asyncio.Future] = None
        self._since_prune = PRUNE_EVERY  # the first write after a start prunes
        self._skipped = 0  # left out since the last row queued
        self._warned: Dict[str, float] = {}
        self._closed = False
        self.recorded = self.dropped = self.lost = 0

    def record(self, app: Optional[str], method: str, status: int, outcome: Mapping[str, Any],
               remote_ip: Optional[str]) -> None:
        """Queue one request answered with `status` >= 400; `outcome` is the handler's (reason, detail,
        failure). Returns at once and never raises."""
        try:
            if self._closed:
                return
            if len(self._pending) >= MAX_PENDING or not self._allow():
                self._drop()
                return
            self._pending.append(self._row(app, method, status, outcome or {}, remote_ip))
            if self._task is None or self._task.done():
                self._task = asyncio.ensure_future(self._flush())
        except Exception:  # never into the handler's on_finish
            logger.exception("could not queue a callback failure for the failure log")

    async def close(self, timeout: float = 5.0) -> None:
        """Stop taking rows and write the queued ones (before the database thread stops)."""
        self._closed = True
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(self._task, timeout)
            except asyncio.TimeoutError:
                logger.warning("callback failure log: %d row(s) not written at shutdown", len(self._pending))

    def _allow(self) -> bool:
        now = self._clock()
        self._allowance = min(float(self.burst), self._allowance + (now - self._checked) * self.rate)
        self._checked = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True

    def _drop(self) -> None:
        self.dropped += 1
        self._skipped += 1
        self._warn("skipped", "callback failures arrive faster than %g a second: the failure log skips "
                   "some (%d so far; each row counts those skipped before it)", self.rate, self.dropped)

    def _row(self, app: Optional[str], method: str, status: int, outcome: Mapping[str, Any],
             remote_ip: Optional[str]) -> dict:
        reason = str(outcome.get("reason") or httputil.responses.get(status, "HTTP %d" % status))
        if outcome.get("detail"):
            reason = "%s: %s" % (reason, outcome["detail"])
        row = {"at": utcnow(whole_seconds=True), "app": str(app or "-")[:64],
               "kind": "verify" if method in ("GET", "HEAD") else "callback", "status": int(status),
               "category": metrics.failure_reason(status, outcome.get("failure")) or "malformed",
               "reason": reason[:REASON_CHARS], "remote_ip": str(remote_ip)[:64] if remote_ip else None,
               "skipped": self._skipped}
        self._skipped = 0
        return row

    async def _flush(self) -> None:
        while self._pending:
            rows, self._pending = self._pending, []
            self._since_prune += len(rows)
            keep = None
            if self._since_prune >= PRUNE_EVERY:
                keep, self._since_prune = self.keep, 0
            try:
                await self._run_db(self._store.failures.record, rows, keep)
                self.recorded += len(rows)
            except Exception as exc:
                self.lost += len(rows)
                self._warn("lost", "could not write %d callback failure(s) to the failure log: %s",
                           len(rows), exc)

    def _warn(self, key: str, message: str, *args: Any) -> None:
        now = self._clock()
        if now - self._warned.get(key, float("-inf")) >= LOG_EVERY:
            self._warned[key] = now
            logger.warning(message, *args)
