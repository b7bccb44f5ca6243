"""Group robots (群机器人): the `notify = NAME` rule action, posted to a [group:NAME] robot in the background.

The rule runner stores each notify as a rule run of action "notify", status "pending", whose payload
holds the group's name, the msgtype (text or markdown) and the parts to send (split at
`LIMITS` bytes on character boundaries); nothing is sent on the callback's path. This worker
posts the parts in order to `[wecom] api_base` + /cgi-bin/webhook/send?key=KEY, keeping in the
payload how many went out, so a restart or a retry never sends a part twice.

WeCom lets a robot take 20 messages a minute (an over-limit post gets errcode 45009). The worker
keeps that limit per robot (per key) and lets a run wait for its turn, never dropping it; a 45009
anyway holds the robot back and is retried with backoff until it goes through. Network errors,
HTTP 5xx and "busy" errcodes are retried up to `max_attempts`; 93000 (no robot has this key) and
every other errcode fail the run at once, with WeCom's words and a hint.

The key is a credential: it is never stored (the run's url has it redacted), logged, or put in an
error text (scrubbed from whatever WeCom or the network says).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.parse
from datetime import datetime, timedelta
from typing import Callable, Dict, List, NamedTuple, Optional

from tornado import httpclient

from wecomd import __version__
from wecomd.config import Config, GroupConfig
from wecomd.store import StoreError
from wecomd.store.times import utcnow
from wecomd.wecom.api import split_text
from wecomd.wecom.errcodes import WecomApiError, classify
from wecomd.workers.base import Publish, RunDb, RunWorker, error_text
from wecomd.workers.throttle import MemberWindows

logger = logging.getLogger(__name__)

SEND_PATH = "/cgi-bin/webhook/send"
LIMITS = {"text": 2048, "markdown": 4096}  # bytes of one robot message's content, by msgtype
PER_MINUTE = 20  # messages one robot takes a minute
RATE_LIMITED, INVALID_KEY, BUSY = 45009, 93000, frozenset({-1, 45033})
REDACTED = "***"
BATCH = 20
MAX_RESPONSE_BYTES = 65536
INVALID_KEY_HINT = ("no group robot has this key (or the robot was removed from its group): copy the key "
                    "from the robot's webhook URL into [group:%s] webhook_key")
_WINDOW_APP = "robot"  # MemberWindows keys (app, member): robots are the members here


def redacted_url(api_base: str) -> str:
    """The robot URL as a run keeps and shows it: the key replaced by ***."""
    return "%s%s?key=%s" % (api_base.rstrip("/"), SEND_PATH, REDACTED)


def payload_for(group: str, msgtype: str, text: str) -> str:
    """A notify run's payload: the group, the msgtype and `text` split into the parts to send."""
    parts = split_text(text, LIMITS[msgtype])
    return json.dumps({"group": group, "msgtype": msgtype, "parts": parts, "sent": 0}, ensure_ascii=False)


class _Outcome(NamedTuple):
    ok: bool
    retry: bool = False  # worth another try later (network, HTTP 5xx, WeCom busy)
    limited: bool = False  # 45009: the robot is over WeCom's limit; retried until it goes through
    error: str = ""


class NotifySender(RunWorker):
    """Posts pending notify runs to their group robots, at most `per_minute` a minute per robot."""

    kind = "notify"

    def __init__(self, run_db: RunDb, store, config: Config, publish: Publish, *,
                 http_client: Optional[httpclient.AsyncHTTPClient] = None,
                 clock: Callable[[], datetime] = utcnow, poll_interval: float = 1.0,
                 max_attempts: int = 8, backoff_base: float = 2.0, backoff_max: float = 600.0,
                 request_timeout: float = 10.0, per_minute: int = PER_MINUTE) -> None:
        super().__init__(run_db, publish, clock=clock, poll_interval=poll_interval,
                         max_attempts=max_attempts, backoff_base=backoff_base, backoff_max=backoff_max)
        self.store, self.request_timeout = store, request_timeout
        # Through a lambda, so a test that swaps `clock` moves the window's time too.
        self.windows = MemberWindows(lambda: self.clock(), ((timedelta(minutes=1), per_minute),))
        self._blocked: Dict[str, datetime] = {}  # robot -> until when a 45009 holds it back
        self._http, self._own_http = http_client, http_client is None
        self._seeded = False
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take the groups and api_base of `config`; runs already queued use the new keys."""
        self.api_base = config.wecom.api_base.rstrip("/")
        self.groups: Dict[str, GroupConfig] = dict(config.groups)

    async def stop(self) -> None:
        """Stop posting (the post in flight finishes); close the private HTTP client."""
        await super().stop()
        if self._own_http and self._http is not None:
            self._http.close()
            self._http = None

    # ------------------------------------------------------------ the queue

    async def _pass(self) -> None:
        if not self._seeded:
            await self._seed()
        while not self._stopping:
            runs = await self.run_db(self.store.runs.due_notifies, self.clock(), BATCH)
            for run in runs:
                if self._stopping:
                    return
                # Each run leaves the due set: finished, deferred to its turn, or retried later.
                await self._shielded(run["id"], self._post(run))
            if len(runs) < BATCH:
                return

    async def _seed(self) -> None:
        """What the robots were sent in the last minute before this process started."""
        recent = await self.run_db(self.store.runs.recent_notifies, self.clock() - timedelta(minutes=1))
        for payload, finished in recent:
            document = _document(payload)
            group = self.groups.get(document["group"]) if document else None
            if group is not None:
                for _ in document["parts"]:
                    self.windows.record(_WINDOW_APP, _robot(group), finished)
        self._seeded = True

    def _free_at(self, robot: str) -> Optional[datetime]:
        """None when `robot` may take a message now, else when it may."""
        free = self.windows.free_at(_WINDOW_APP, robot)
        blocked = self._blocked.get(robot)
        if blocked is not None and blocked <= self.clock():
            del self._blocked[robot]
            blocked = None
        return max(filter(None, (free, blocked)), default=None)

    # ------------------------------------------------------------ one run

    async def _post(self, run: dict) -> None:
        try:
            await self._post_parts(run)
        except StoreError as exc:  # the run stays due; the loop tries again
            logger.warning("notify run=%s: database unavailable: %s", run["id"], exc)
        except (KeyError, ValueError) as exc:  # deleted, or finished by someone else meanwhile
            logger.warning("notify run=%s: %s", run["id"], exc)

    async def _post_parts(self, run: dict) -> None:
        document = _document(run.get("payload"))
        if document is None:
            return await self._finish(run, "failed", error="no group robot message stored for this run")
        name, parts, sent = document["group"], document["parts"], document["sent"]
        group = self.groups.get(name)
        if group is None:
            logger.warning("notify run=%s rule=%s outcome=failed: no [group:%s]", run["id"], run["rule"], name)
            return await self._finish(run, "failed", error="[group:%s] is no longer configured" % name)
        if not parts:
            return await self._finish(run, "failed", error="the text is empty: nothing was sent")
        robot, started = _robot(group), time.monotonic()
        while sent < len(parts):
            turn = self._free_at(robot)
            if turn is not None:  # over the robot's limit: the run waits its turn, nothing is dropped
                logger.info("notify run=%s group=%s outcome=queued part=%d/%d", run["id"], name, sent + 1, len(parts))
                await self.run_db(self.store.runs.notify_progress, run["id"], _progress(document, sent), turn)
                return
            outcome = await self._send(group, document["msgtype"], parts[sent])
            if not outcome.ok:
                if sent > document["sent"]:  # keep what went out, so no part is sent twice
                    await self.run_db(self.store.runs.notify_progress, run["id"], _progress(document, sent))
                return await self._failed(run, name, robot, outcome, _elapsed(started))
            self.windows.record(_WINDOW_APP, robot)
            sent += 1
        logger.info("notify run=%s rule=%s group=%s outcome=ok parts=%d", run["id"], run["rule"], name, len(parts))
        output = "sent to group %s" % name + (" in %d parts" % len(parts) if len(parts) > 1 else "")
        await self._finish(run, "ok", output=output, duration_ms=_elapsed(started))

    async def _failed(self, run: dict, name: str, robot: str, outcome: _Outcome, duration_ms: float) -> None:
        if not (outcome.retry or outcome.limited):
            logger.warning("notify run=%s rule=%s group=%s outcome=failed (not retried)", run["id"], run["rule"], name)
            return await self._finish(run, "failed", error=outcome.error, duration_ms=duration_ms)
        attempts = int(run.get("attempts") or 0) + 1
        next_attempt = self._next_attempt(attempts)
        updated = await self.run_db(self.store.runs.record_webhook_attempt, run["id"], outcome.error, next_attempt)
        if outcome.limited:  # WeCom counts this robot's posts from elsewhere too: hold all of them back
            self._blocked[robot] = next_attempt
        elif attempts >= self.max_attempts:  # 45009 never gives up: the limit passes, the post waits
            logger.warning("notify run=%s rule=%s group=%s outcome=failed attempts=%d", run["id"], run["rule"],
                           name, attempts)
            return await self._finish(run, "failed", duration_ms=duration_ms,
                                      error="%s (gave up after %d attempts)" % (outcome.error, attempts))
        logger.warning("notify run=%s rule=%s group=%s outcome=retry attempt=%d", run["id"], run["rule"], name, attempts)
        await self._publish_message(updated)

    async def _send(self, group: GroupConfig, msgtype: str, content: str) -> _Outcome:
        """POST one message to the robot; never raises, and no outcome holds the key."""
        body = json.dumps({"msgtype": msgtype, msgtype: {"content": content}}, ensure_ascii=False).encode("utf-8")
        url = "%s%s?%s" % (self.api_base, SEND_PATH, urllib.parse.urlencode({"key": group.webhook_key}))
        request = httpclient.HTTPRequest(url, method="POST", body=body, follow_redirects=False,
                                         headers={"Content-Type": "application/json; charset=utf-8",
                                                  "User-Agent": "wecomd/%s" % __version__},
                                         connect_timeout=self.request_timeout, request_timeout=self.request_timeout)
        try:
            response = await self._client().fetch(request, raise_error=False)
        except Exception as exc:  # refused, reset, timed out: worth another try
            return _Outcome(False, retry=True, error=_scrub(error_text(exc), group))
        if response.code != 200:
            return _Outcome(False, retry=response.code >= 500 or response.code == 429,
                            error=_scrub("HTTP %d %s" % (response.code, response.reason or ""), group).strip())
        try:
            data = json.loads((response.body or b"").decode("utf-8"))
            errcode = int(data.get("errcode", -1))
        except (ValueError, TypeError, AttributeError):
            return _Outcome(False, retry=True, error="WeCom's answer is not JSON with an errcode")
        if errcode == 0:
            return _Outcome(True)
        hint = INVALID_KEY_HINT % group.name if errcode == INVALID_KEY else classify(errcode)[1]
        error = _scrub(error_text(WecomApiError(errcode, str(data.get("errmsg", "")), hint=hint), with_hint=True), group)
        return _Outcome(False, retry=errcode in BUSY, limited=errcode == RATE_LIMITED, error=error)

    def _client(self) -> httpclient.AsyncHTTPClient:
        if self._http is None:  # made on first use, on the running loop
            self._http = httpclient.AsyncHTTPClient(force_instance=True, max_body_size=MAX_RESPONSE_BYTES)
        return self._http


def _document(payload: Optional[str]) -> Optional[dict]:
    """A notify payload as {"group", "msgtype", "parts", "sent"}, or None when it is not one."""
    try:
        document = json.loads(payload or "")
        parts: List[str] = document["parts"]
        ok = (isinstance(document["group"], str) and document["msgtype"] in LIMITS and isinstance(parts, list)
              and all(isinstance(part, str) for part in parts))
        document["sent"] = max(0, int(document.get("sent") or 0))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return document if ok else None


def _progress(document: dict, sent: int) -> str:
    return json.dumps(dict(document, sent=sent), ensure_ascii=False)


def _robot(group: GroupConfig) -> str:
    """The robot behind a group, for its rate limit: a digest of the key (two groups may share one),
    so no dict holds the key itself."""
    return hashlib.sha256(group.webhook_key.encode("utf-8")).hexdigest()[:24]


def _scrub(text: str, group: GroupConfig) -> str:
    """`text` without the group's key in any form a message could quote it."""
    for form in {group.webhook_key, urllib.parse.quote(group.webhook_key, safe="")}:
        text = text.replace(form, REDACTED)
    return text


def _elapsed(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
