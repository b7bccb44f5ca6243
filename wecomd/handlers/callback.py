"""/callback/<app>: WeCom URL verification (GET) and message receipt (POST)."""
from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from tornado import web

from wecomd import crypto, messages
from wecomd.handlers.base import BaseHandler
from wecomd.store import StoreError

logger = logging.getLogger(__name__)

# Crypto failures that mean "not from WeCom" (403); every other one means a malformed request (400).
_FORBIDDEN = (crypto.SignatureError, crypto.ReceiveIdError)


@web.stream_request_body
class CallbackHandler(BaseHandler):
    """Verify, decrypt, parse and durably store a callback before answering 200."""

    def prepare(self) -> None:
        super().prepare()
        self._started = time.monotonic()
        self._chunks: list[bytes] = []
        self._size = 0
        name = self.path_kwargs["app"]
        self.wecom_app = self.services.app(name)
        if self.wecom_app is None:
            raise web.HTTPError(404, "unknown app %r", name)
        self.crypto = self.services.cryptos[name]
        max_body = self.services.config.server.max_body
        declared = self.request.headers.get("Content-Length", "0")
        if declared.isdigit() and int(declared) > max_body:
            raise web.HTTPError(413, "body larger than max_body (%d bytes)", max_body)
        # An outer bound for chunked bodies; the exact limit is enforced in data_received.
        self.request.connection.set_max_body_size(2 * max_body + 65536)

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.services.config.server.max_body:
            self._chunks.append(chunk)

    def get(self, app: str) -> None:
        sig, ts, nonce, echostr = self._query("msg_signature", "timestamp", "nonce", "echostr")
        self._check_timestamp(ts)
        plain = self._crypto_call(self.crypto.verify_url, sig, ts, nonce, echostr)
        logger.info("verify app=%s outcome=ok latency=%.1fms", app, self._elapsed_ms())
        # The bare plaintext and nothing else: no quotes, JSON, BOM or newline (protocol §2).
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(plain)

    async def post(self, app: str) -> None:
        if self._size > self.services.config.server.max_body:
            raise web.HTTPError(413, "body larger than max_body (%d bytes)", self.services.config.server.max_body)
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
        row, created = await self._store(app, message)
        self._log_callback(app, message, row, created)
        reply = row.get("reply")
        if not reply:
            self.set_status(200)
            return self.finish()
        self.set_header("Content-Type", "application/xml; charset=utf-8")
        self.finish(self.crypto.encrypt_reply(reply, str(int(time.time())), _nonce()))

    async def _store(self, app: str, message: messages.Message) -> tuple[dict, bool]:
        reply = _default_reply(self.wecom_app, message)
        try:
            return await self.services.db(
                self.services.store.save_inbound, app, message, messages.dedup_key(message), reply
            )
        except StoreError as exc:
            # Non-200 on purpose: WeCom retries, so nothing unstored is ever acknowledged.
            logger.error("callback app=%s outcome=store-failed error=%s", app, exc)
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
        if not ts.isdigit():
            raise web.HTTPError(400, "timestamp is not an integer")
        window = self.services.config.server.timestamp_window
        skew = abs(time.time() - int(ts))
        if window and skew > window:
            logger.warning(
                "callback app=%s rejected: timestamp %ds off this server's clock (window %ds); is NTP running?",
                self.path_kwargs["app"], skew, window,
            )
            raise web.HTTPError(403, "timestamp outside timestamp_window")

    def _crypto_call(self, fn: Any, *args: str) -> bytes:
        try:
            return fn(*args)
        except crypto.CryptoError as exc:
            status = 403 if isinstance(exc, _FORBIDDEN) else 400
            logger.warning("callback app=%s rejected: %s (%d)", self.path_kwargs["app"], exc, exc.code)
            raise web.HTTPError(status, "%s (%d)", exc, exc.code)

    def _log_callback(self, app: str, message: messages.Message, row: dict, created: bool) -> None:
        kind = message.msgtype if message.msgtype != "event" else "event:%s" % message.event
        outcome = "stored" if created else "duplicate delivery=%d" % row.get("deliveries", 0)
        logger.info(
            "callback app=%s type=%s from=%s id=%s outcome=%s latency=%.1fms",
            app, kind, message.from_user, row.get("id"), outcome, self._elapsed_ms(),
        )

    def _elapsed_ms(self) -> float:
        return (time.monotonic() - self._started) * 1000


def _default_reply(app: Any, message: messages.Message) -> str | None:
    """The app's configured text reply, for ordinary messages only (events get an empty 200)."""
    if not app.reply or message.msgtype == "event" or not message.from_user:
        return None
    return messages.reply_text(message.from_user, app.corp_id, app.reply)


def _nonce() -> str:
    return str(secrets.randbelow(10**10))


def routes(services: Any) -> list:
    return [(r"/callback/(?P<app>[A-Za-z0-9_-]+)/?", CallbackHandler, dict(services=services))]
