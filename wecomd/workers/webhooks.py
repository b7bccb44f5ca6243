"""Webhooks: signed POSTs of a message to an operator's URL, through a durable queue with retries.

A rule with `webhook = URL` has its run stored as `pending`, with the exact body to sign as its
payload, before anything is sent. The orchestrator makes the first try with `attempt()` inside the
passive-reply budget; failed tries are retried by the background loop with exponential backoff
until `max_attempts`, then the run is `failed` with the last error. A 2xx answer of the form
`{"reply": "text"}` (Content-Type application/json) is the rule's reply: `attempt()` returns it,
and a later delivery hands it to `on_reply`, which answers through the send API.

Delivery is at least once: a run whose 2xx could not be recorded (the process died right after
the POST) is sent again after a restart. Receivers can drop repeats by `X-Wecomd-Delivery`, the
run id. The body and the secret are never logged; neither is the URL, which may hold a token.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import string
import time
import urllib.parse
from datetime import datetime
from typing import Awaitable, Callable, Optional, Set, Tuple

from tornado import httpclient

from wecomd import __version__
from wecomd.store import StoreError
from wecomd.store.times import utcnow
from wecomd.workers.base import Publish, RunDb, RunWorker, error_text

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Wecomd-Signature"
DELIVERY_HEADER = "X-Wecomd-Delivery"
RULE_HEADER = "X-Wecomd-Rule"
USER_AGENT = "wecomd/%s" % __version__
BATCH = 20
OUTPUT_LIMIT = 2000  # characters of a 2xx answer kept as the run's output
ERROR_BODY_LIMIT = 200  # characters of a failed answer quoted in the run's error
MAX_RESPONSE_BYTES = 1 << 20
RULE_GONE = "rule no longer configured"
# A header value must be Latin-1: printable ASCII stays, anything else is percent-encoded UTF-8.
_HEADER_SAFE = (string.ascii_letters + string.digits + string.punctuation + " ").replace("%", "")

SecretsFor = Callable[[str], Tuple[Optional[str], Optional[str]]]
OnReply = Callable[[dict, str], Awaitable[None]]


def sign(secret: str, body: bytes) -> str:
    """The X-Wecomd-Signature value: "sha256=" + lowercase hex HMAC-SHA256 of `body` keyed by `secret`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: Optional[str]) -> bool:
    """True when `header` is the signature of `body` with `secret`; compared in constant time."""
    if not isinstance(header, str) or not secret:
        return False
    return hmac.compare_digest(sign(secret, body).encode("ascii"), header.strip().encode("utf-8"))


def body_for(message_json: dict, rule: str, app: str) -> bytes:
    """The body a webhook POSTs: {"app", "message": Message JSON, "rule"} as canonical UTF-8 JSON.

    Canonical: sorted keys, no insignificant whitespace, characters unescaped, so the same
    message always gives the same bytes. The internal passive-reply XML ("reply") is left out.
    """
    message = {key: value for key, value in message_json.items() if key != "reply"}
    document = {"rule": rule, "app": app, "message": message}
    return json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def parse_reply(response_body: bytes, content_type: Optional[str]) -> Optional[str]:
    """The reply text of a webhook's answer, or None; never raises.

    Only a JSON answer (application/json or a +json type) whose object has a non-empty string
    "reply" counts; any other answer is a delivery without a reply.
    """
    try:
        mime = (content_type or "").split(";")[0].strip().lower()
        if mime != "application/json" and not mime.endswith("+json"):
            return None
        document = json.loads(bytes(response_body or b"").decode("utf-8-sig"))
    except Exception:  # undecodable or not JSON at all: no reply
        return None
    reply = document.get("reply") if isinstance(document, dict) else None
    return reply if isinstance(reply, str) and reply.strip() else None


class WebhookSender(RunWorker):
    """Delivers webhook runs: the first try on request (`attempt`), retries in the background.

    `secrets_for(rule)` gives (url, secret) from the current config, (None, None) once the rule is
    gone; a rule without a secret is sent unsigned. `on_reply(run, text)` is awaited when a
    delivery made after `attempt()` returned (a retry, or a first try that outlasted a cancelled
    `attempt()`) answers with a reply.
    """

    kind = "webhook"

    def __init__(self, run_db: RunDb, store, secrets_for: SecretsFor, on_reply: OnReply,
                 publish: Publish, *, http_client: Optional[httpclient.AsyncHTTPClient] = None,
                 clock: Callable[[], datetime] = utcnow, poll_interval: float = 1.0,
                 max_attempts: int = 8, backoff_base: float = 2.0, backoff_max: float = 600.0,
                 request_timeout: float = 10.0) -> None:
        super().__init__(run_db, publish, clock=clock, poll_interval=poll_interval,
                         max_attempts=max_attempts, backoff_base=backoff_base, backoff_max=backoff_max)
        self.store, self.secrets_for, self.on_reply = store, secrets_for, on_reply
        self.request_timeout = request_timeout
        self._http, self._own_http = http_client, http_client is None
        self._deliveries: Set[asyncio.Future] = set()  # attempt() tasks, awaited by stop()
        self._handoffs: Set[asyncio.Future] = set()  # on_reply calls of orphaned first tries

    async def attempt(self, run: dict) -> Tuple[bool, Optional[str]]:
        """POST a pending webhook run now; return (delivered, reply text or None).

        On a 2xx the run is finished "ok"; on a failure one attempt is recorded with its backoff
        and the loop retries later, (False, None). A run the loop is delivering right now is not
        sent twice: (False, None), and its reply, if any, goes to on_reply. When the caller is
        cancelled (a passive-reply budget ran out) the POST still completes and is recorded, and
        a reply goes to on_reply.
        """
        run_id = run["id"]
        if run_id in self._inflight:
            return False, None
        self._inflight.add(run_id)
        task = asyncio.ensure_future(self._deliver_if_due(run))
        self._deliveries.add(task)
        task.add_done_callback(lambda _: (self._inflight.discard(run_id), self._deliveries.discard(task)))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda done: self._hand_off(run, done))
            raise

    async def stop(self) -> None:
        """Stop retrying; let deliveries in flight finish; close the private HTTP client."""
        await super().stop()
        await asyncio.gather(*self._deliveries, *self._handoffs, return_exceptions=True)
        if self._own_http and self._http is not None:
            self._http.close()
            self._http = None

    # ------------------------------------------------------------ the retry loop

    async def _pass(self) -> None:
        while not self._stopping:
            runs = await self.run_db(self.store.runs.due_webhooks, self.clock(), BATCH)
            todo = sorted((run for run in runs if run["id"] not in self._inflight), key=lambda r: r["id"])
            for run in todo:
                if self._stopping:
                    return
                if run["id"] not in self._inflight:  # attempt() may have taken it meanwhile
                    await self._shielded(run["id"], self._retry(run))
            if len(runs) < BATCH or not todo:
                return

    async def _retry(self, run: dict) -> None:
        delivered, reply = await self._deliver_if_due(run)
        if delivered and reply is not None:
            await self._reply(run, reply)

    def _hand_off(self, run: dict, done: asyncio.Future) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        delivered, reply = done.result()
        if delivered and reply is not None:
            handoff = asyncio.ensure_future(self._reply(run, reply))
            self._handoffs.add(handoff)
            handoff.add_done_callback(self._handoffs.discard)

    async def _reply(self, run: dict, reply: str) -> None:
        try:
            await self.on_reply(run, reply)
        except Exception:  # the run stays "ok": the receiver got it; the reply is the caller's to send
            logger.exception("webhook run=%s rule=%s: handling the reply failed", run["id"], run["rule"])

    # ------------------------------------------------------------ one delivery

    async def _deliver_if_due(self, run: dict) -> Tuple[bool, Optional[str]]:
        """Deliver `run` unless someone else tried it since it was read; its id is in flight."""
        try:
            # Read again: the loop and attempt() each see the other's finished tries here.
            current = await self.run_db(self.store.runs.get, run["id"])
            if current is None or current["status"] != "pending" or current["attempts"] != run["attempts"]:
                return False, None
            return await self._deliver(current)
        except StoreError as exc:  # the run stays due; the loop tries again
            logger.warning("webhook run=%s: database unavailable: %s", run["id"], exc)
        except (KeyError, ValueError) as exc:  # deleted, or finished by someone else meanwhile
            logger.warning("webhook run=%s: %s", run["id"], exc)
        return False, None

    async def _deliver(self, run: dict) -> Tuple[bool, Optional[str]]:
        url, secret = self.secrets_for(run["rule"])
        if not url:
            logger.warning("webhook run=%s rule=%s outcome=failed: %s", run["id"], run["rule"], RULE_GONE)
            await self._finish(run, "failed", error=RULE_GONE)
            return False, None
        if run.get("payload") is None:
            await self._finish(run, "failed", error="no webhook body stored for this run")
            return False, None
        started = time.monotonic()
        try:
            response = await self._client().fetch(self._request(run, url, secret), raise_error=False)
        except Exception as exc:  # refused, reset, timed out, bad URL: all worth another try
            error = error_text(exc)
        else:
            duration_ms = round((time.monotonic() - started) * 1000, 1)
            if 200 <= response.code < 300:
                return await self._delivered(run, response, duration_ms)
            error = _http_error(response)
        await self._failed_try(run, error, round((time.monotonic() - started) * 1000, 1))
        return False, None

    def _request(self, run: dict, url: str, secret: Optional[str]) -> httpclient.HTTPRequest:
        body = run["payload"].encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   DELIVERY_HEADER: str(run["id"]),
                   RULE_HEADER: urllib.parse.quote(run["rule"], safe=_HEADER_SAFE)}
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        return httpclient.HTTPRequest(url, method="POST", body=body, headers=headers,
                                      follow_redirects=False, connect_timeout=self.request_timeout,
                                      request_timeout=self.request_timeout)

    def _client(self) -> httpclient.AsyncHTTPClient:
        if self._http is None:  # made on first use, on the running loop
            self._http = httpclient.AsyncHTTPClient(force_instance=True, max_body_size=MAX_RESPONSE_BYTES)
        return self._http

    async def _delivered(self, run: dict, response: httpclient.HTTPResponse,
                         duration_ms: float) -> Tuple[bool, Optional[str]]:
        body = response.body or b""
        reply = parse_reply(body, response.headers.get("Content-Type"))
        logger.info("webhook run=%s rule=%s outcome=ok status=%d %.0fms%s", run["id"], run["rule"],
                    response.code, duration_ms, " reply" if reply is not None else "")
        await self._finish(run, "ok", output=body.decode("utf-8", "replace")[:OUTPUT_LIMIT],
                           duration_ms=duration_ms)
        return True, reply

    async def _failed_try(self, run: dict, error: str, duration_ms: float) -> None:
        attempts = int(run.get("attempts") or 0) + 1
        updated = await self.run_db(self.store.runs.record_webhook_attempt, run["id"], error,
                                    self._next_attempt(attempts))
        if attempts >= self.max_attempts:
            logger.warning("webhook run=%s rule=%s outcome=failed attempts=%d", run["id"], run["rule"], attempts)
            await self._finish(run, "failed", duration_ms=duration_ms,
                               error="%s (gave up after %d attempts)" % (error, attempts))
            return
        logger.warning("webhook run=%s rule=%s outcome=retry attempt=%d", run["id"], run["rule"], attempts)
        await self._publish_message(updated)


def _http_error(response: httpclient.HTTPResponse) -> str:
    error = "HTTP %d %s" % (response.code, response.reason or "")
    excerpt = " ".join((response.body or b"").decode("utf-8", "replace").split())[:ERROR_BODY_LIMIT]
    return "%s: %s" % (error.strip(), excerpt) if excerpt else error.strip()
