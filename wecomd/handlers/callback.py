"""/callback/<app>: WeCom URL verification (GET) and message receipt (POST)."""
from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import Any, Optional

from tornado import web

from wecomd import metrics

from wecomd.wecom import crypto

from wecomd.wecom import messages

from wecomd.wecom import replies

from wecomd.automation import rules
from wecomd.automation.runner import default_reply, store_answered, store_inbound
from wecomd.handlers.base import BaseHandler
from wecomd.store import StoreError

logger = logging.getLogger(__name__)

# Crypto failures that mean "not from WeCom" (403); every other one means a malformed request (400).
_FORBIDDEN = (crypto.SignatureError, crypto.ReceiveIdError)
# ASCII digits only: str.isdigit() also takes '²' and '٣', which int() then refuses or misreads;
# 20 digits hold any 64-bit value, and int() refuses strings past 4,300 digits anyway.
_UNSIGNED = re.compile(r"[0-9]{1,20}\Z")


@web.stream_request_body
class CallbackHandler(BaseHandler):
    """Verify, decrypt, parse and durably store a callback before answering 200.

    Every request, accepted or not, ends in exactly one log line (see `on_finish`);
    the application's access log leaves these requests to it.
    """

    public = True  # WeCom signs its requests; that is this endpoint's authentication

    def check_xsrf_cookie(self) -> None:
        pass  # see `public`: the message signature, not a cookie, proves the sender

    def prepare(self) -> None:
        # First: a refusal in BaseHandler.prepare (a cross-site request) is logged with these.
        self._chunks: list[bytes] = []
        self._size = 0
        self._outcome: dict[str, Any] = {"type": "verify" if self.request.method == "GET" else "-"}
        super().prepare()
        name = self.path_kwargs["app"]
        self.wecom_app = self.services.app(name)
        if self.wecom_app is None:
            raise web.HTTPError(404, "unknown app %r", name)
        self.crypto = self.services.cryptos[name]
        declared = self.request.headers.get("Content-Length", "0")
        if _UNSIGNED.match(declared) and int(declared) > self._max_body:
            # The answer closes the connection, so the body is never read: no outer limit to trip.
            self.request.connection.set_max_body_size(int(declared))
            raise web.HTTPError(413, "body larger than max_body (%d bytes)", self._max_body)
        # An outer bound for chunked bodies; the exact limit is enforced in data_received.
        self.request.connection.set_max_body_size(2 * self._max_body + 65536)

    @property
    def _max_body(self) -> int:
        return self.services.config.server.max_body

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._size += len(chunk)
        if self._size <= self._max_body:
            self._chunks.append(chunk)
            return
        # A chunked body past max_body: answer 413 now, before the outer bound would cut the
        # connection without an answer. Tornado then drops the rest and closes the connection.
        self._chunks = []
        error = web.HTTPError(413, "body larger than max_body (%d bytes)", self._max_body)
        self.send_error(413, exc_info=(web.HTTPError, error, None))

    def on_connection_close(self) -> None:
        super().on_connection_close()
        # BaseHandler's skips RequestHandler's, which ends _execute's wait for a streamed body.
        web.RequestHandler.on_connection_close(self)

    def get(self, app: str) -> None:
        sig, ts, nonce, echostr = self._query("msg_signature", "timestamp", "nonce", "echostr")
        self._check_timestamp(ts)
        plain = self._crypto_call(self.crypto.verify_url, sig, ts, nonce, echostr)
        self._outcome["outcome"] = "verified"
        # The bare plaintext and nothing else: no quotes, JSON, BOM or newline (protocol §2).
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(plain)

    async def post(self, app: str) -> None:
        if self._size > self._max_body:
            raise web.HTTPError(413, "body larger than max_body (%d bytes)", self._max_body)
        sig, ts, nonce = self._query("msg_signature", "timestamp", "nonce")
        self._check_timestamp(ts)
        try:
            envelope = messages.parse_envelope(b"".join(self._chunks))
        except messages.MessageError as exc:
            raise web.HTTPError(400, "bad envelope: %s", exc)
        plain = self._crypto_call(self.crypto.decrypt_message, sig, ts, nonce, envelope.encrypt)
        try:
            message = messages.parse(plain)
        except messages.MessageError as exc:
            raise web.HTTPError(400, "bad message XML: %s", exc)
        kind = message.msgtype if message.msgtype != "event" else "event:%s" % message.event
        self._outcome.update(type=kind, sender=message.from_user)
        matches = rules.select(self.services.rules, app, message)
        row, created, paused, answer = await self._store(app, message, matches)
        self._outcome.update(id=row.get("id"), outcome="stored" if created else "duplicate delivery=%d" % row.get("deliveries", 0))
        if created:
            self.services.message_stored(row)
        if answer is not None:  # the app's own reply, stored as an automatic answer with the message
            self.services.hub.publish({"type": "message", "message": answer})
        # Only a new message runs the rules; a retry gets the reply of the first delivery.
        if created and matches:
            reply = await self._first_delivery(row, message, matches, paused)
        else:
            reply = row.get("reply") if created else await self._retry(row)
        if not reply:
            self.set_status(200)
            return self.finish()
        self.set_header("Content-Type", "application/xml; charset=utf-8")
        self.finish(self.crypto.encrypt_reply(reply, str(int(time.time())), _nonce()))

    async def _first_delivery(self, row: dict, message: messages.Message, matches: list, paused: bool) -> Optional[str]:
        pending = self.services.first_deliveries
        answer = pending[row["id"]] = asyncio.get_running_loop().create_future()
        try:
            reply = await self._automate(row, message, matches, paused)
            answer.set_result(reply)
            return reply
        finally:
            if not answer.done():
                answer.set_result(None)
            pending.pop(row["id"], None)

    async def _retry(self, row: dict) -> Optional[str]:
        first = self.services.first_deliveries.get(row["id"])
        if first is None:
            return row.get("reply")
        budget = self.services.config.rules_settings.passive_budget
        try:
            return await asyncio.wait_for(asyncio.shield(first), budget + 1.0)
        except asyncio.TimeoutError:
            return None

    async def _automate(self, row: dict, message: messages.Message, matches: list, paused: bool) -> Optional[str]:
        """Run the matched rules, and save the passive reply for WeCom's retries, and as an
        automatic answer in the thread."""
        try:
            answer = await self.services.automation.handle(self.wecom_app, row, message, matches, paused)
            if answer is None or not message.from_user:
                return None
            reply = replies.reply_text(message.from_user, self.wecom_app.corp_id, answer.text)
            kept, stored = await self.services.db(self.services.store.save_passive_reply, row["id"], reply,
                                                  answer.text, answer.rule, answer.run_id)
            if stored is not None:
                self.services.hub.publish({"type": "message", "message": stored})
            return kept
        except StoreError as exc:
            # The message itself is stored: acknowledge it, without an answer we could not record.
            self._outcome["detail"] = "automation: %s" % exc
            return None

    async def _store(self, app: str, message: messages.Message, matches: list) -> tuple:
        """One writer call: (row, created, paused, answer). With no rule to run, the app's own reply
        is decided now and saved with the message, and stored as its automatic answer (`answer`,
        None for a retry), so the common case costs one commit."""
        text = None if matches else default_reply(self.wecom_app, message, matches)
        key = messages.dedup_key(message)
        try:
            if text and message.from_user:
                reply = replies.reply_text(message.from_user, self.wecom_app.corp_id, text)
                return await self.services.db(store_answered, self.services.store, app, message, key, reply, text)
            return await self.services.db(store_inbound, self.services.store, app, message, key)
        except StoreError as exc:
            # Non-200 on purpose: WeCom retries, so nothing unstored is ever acknowledged.
            self._outcome["detail"] = str(exc)
            raise web.HTTPError(503, "message could not be stored")

    def _query(self, *names: str) -> list[str]:
        values = []
        for name in names:
            # strip=False: a raw '+' arrives as a space, and stripping would lose it (protocol §9.1).
            value = self.get_query_argument(name, None, strip=False)
            if not value:
                raise web.HTTPError(400, "missing query parameter %s", name)
            values.append(value)
        return values

    def _check_timestamp(self, ts: str) -> None:
        if not _UNSIGNED.match(ts):
            raise web.HTTPError(400, "timestamp is not an integer of at most 20 ASCII digits")
        window = self.services.config.server.timestamp_window
        skew = int(time.time()) - int(ts)
        if window and abs(skew) > window:
            self._outcome["detail"] = "timestamp %+ds from this server's clock; is NTP running?" % -skew
            self._outcome["failure"] = "timestamp"
            raise web.HTTPError(403, "timestamp outside timestamp_window")

    def _crypto_call(self, fn: Any, *args: str) -> bytes:
        try:
            return fn(*args)
        except crypto.CryptoError as exc:
            self._outcome["failure"] = metrics.crypto_reason(exc)
            status = 403 if isinstance(exc, _FORBIDDEN) else 400
            raise web.HTTPError(status, "%s (%d)", exc, exc.code)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            self._outcome.setdefault("reason", exc.log_message % exc.args if exc.args else exc.log_message)
        super().write_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, web.HTTPError):  # rejections are in this request's own line
            super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        super().on_finish()
        self._log_line()

    def _log_line(self) -> None:
        """The request's one log line, and its metrics."""
        status = self.get_status()
        out = getattr(self, "_outcome", {})
        outcome = out.get("outcome", "rejected" if status < 500 else "failed")
        latency = self.request.request_time()
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        extra = "".join(" %s=%s" % (key, out[key]) for key in ("reason", "detail") if key in out)
        # No path_kwargs when Tornado refused the method (405) before decoding them.
        app = getattr(self, "path_kwargs", {}).get("app")
        logger.log(
            level, "callback app=%s type=%s from=%s id=%s status=%d outcome=%s%s latency=%.1fms",
            app or "-", out.get("type", "-"), out.get("sender") or "-", out.get("id") or "-",
            status, outcome, extra, 1000.0 * latency,
        )
        # A configured app's name, never what an unknown request put in the path (bounded labels).
        self.services.metrics.callback(
            app if app in self.services.config.apps else metrics.UNKNOWN_APP, out.get("type", "-"),
            outcome.split(" ", 1)[0], latency, metrics.failure_reason(status, out.get("failure")))
        if status >= 400:  # kept for `wecomd doctor`; rate-limited, written off the request path
            self.services.failures.record(app, self.request.method, status, out, self.request.remote_ip)


def _nonce() -> str:
    return str(secrets.randbelow(10**10))


def routes(services: Any) -> list:
    return [(r"/callback/(?P<app>[A-Za-z0-9_-]+)/?", CallbackHandler, dict(services=services))]
