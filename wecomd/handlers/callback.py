"""/callback/<app>: WeCom URL verification (GET) and message receipt (POST)."""
from __future__ import annotations

import logging
import secrets
import time
from typing import Any, Optional

from tornado import web

from wecomd import crypto, messages
from wecomd.handlers.base import BaseHandler
from wecomd.store import StoreError

logger = logging.getLogger(__name__)

# Crypto failures that mean "not from WeCom" (403); every other one means a malformed request (400).
_FORBIDDEN = (crypto.SignatureError, crypto.ReceiveIdError)


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
        super().prepare()
        self._chunks: list[bytes] = []
        self._size = 0
        self._outcome: dict[str, Any] = {"type": "verify" if self.request.method == "GET" else "-"}
        name = self.path_kwargs["app"]
        self.wecom_app = self.services.app(name)
        if self.wecom_app is None:
            raise web.HTTPError(404, "unknown app %r", name)
        self.crypto = self.services.cryptos[name]
        declared = self.request.headers.get("Content-Length", "0")
        if declared.isdigit() and int(declared) > self._max_body:
            raise web.HTTPError(413, "body larger than max_body (%d bytes)", self._max_body)
        # An outer bound for chunked bodies; the exact limit is enforced in data_received.
        self.request.connection.set_max_body_size(2 * self._max_body + 65536)

    @property
    def _max_body(self) -> int:
        return self.services.config.server.max_body

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self._max_body:
            self._chunks.append(chunk)

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
        row, created = await self._store(app, message)
        self._outcome.update(id=row.get("id"), outcome="stored" if created else "duplicate delivery=%d" % row.get("deliveries", 0))
        if created:
            self.services.message_stored(row)
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
        if not ts.isdigit():
            raise web.HTTPError(400, "timestamp is not an integer")
        window = self.services.config.server.timestamp_window
        skew = int(time.time()) - int(ts)
        if window and abs(skew) > window:
            self._outcome["detail"] = "timestamp %+ds from this server's clock; is NTP running?" % -skew
            raise web.HTTPError(403, "timestamp outside timestamp_window")

    def _crypto_call(self, fn: Any, *args: str) -> bytes:
        try:
            return fn(*args)
        except crypto.CryptoError as exc:
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
        status = self.get_status()
        out = getattr(self, "_outcome", {})
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        extra = "".join(" %s=%s" % (key, out[key]) for key in ("reason", "detail") if key in out)
        logger.log(
            level, "callback app=%s type=%s from=%s id=%s status=%d outcome=%s%s latency=%.1fms",
            self.path_kwargs.get("app"), out.get("type", "-"), out.get("sender") or "-", out.get("id") or "-",
            status, out.get("outcome", "rejected" if status < 500 else "failed"), extra,
            1000.0 * self.request.request_time(),
        )


def _default_reply(app: Any, message: messages.Message) -> Optional[str]:
    """The app's configured text reply, for ordinary messages only (events get an empty 200)."""
    if not app.reply or message.msgtype == "event" or not message.from_user:
        return None
    return messages.reply_text(message.from_user, app.corp_id, app.reply)


def _nonce() -> str:
    return str(secrets.randbelow(10**10))


def routes(services: Any) -> list:
    return [(r"/callback/(?P<app>[A-Za-z0-9_-]+)/?", CallbackHandler, dict(services=services))]
