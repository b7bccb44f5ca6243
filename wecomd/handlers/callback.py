"""/callback/<app>: WeCom URL verification (GET) and message receipt (POST).

The handler is the "app" channel's transport: HTTP, limits, crypto and parsing. What happens to a
parsed message (storage, the live feed, media, rules, the passive reply) is the inbox's.
"""
from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

from tornado import web

from wecomd import metrics
from wecomd.handlers.base import BaseHandler
from wecomd.inbox import NotStored
from wecomd.wecom import crypto, envelopes, messages

logger = logging.getLogger(__name__)

# Crypto failures that mean "not from WeCom" (403); every other one means a malformed request (400).
_FORBIDDEN = (crypto.SignatureError, crypto.ReceiveIdError)
# ASCII digits only: str.isdigit() also takes '²' and '٣', which int() then refuses or misreads;
# 20 digits hold any 64-bit value, and int() refuses strings past 4,300 digits anyway.
_UNSIGNED = re.compile(r"[0-9]{1,20}\Z")


@web.stream_request_body
class CallbackHandler(BaseHandler):
    """Verify, decrypt and parse a callback; answer 200 only once the inbox has stored it durably.

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
        self._endpoint(self.path_kwargs["app"])
        declared = self.request.headers.get("Content-Length", "0")
        if _UNSIGNED.match(declared) and int(declared) > self._max_body:
            # The answer closes the connection, so the body is never read: no outer limit to trip.
            self.request.connection.set_max_body_size(int(declared))
            raise web.HTTPError(413, "body larger than max_body (%d bytes)", self._max_body)
        # An outer bound for chunked bodies; the exact limit is enforced in data_received.
        self.request.connection.set_max_body_size(2 * self._max_body + 65536)

    def _endpoint(self, name: str) -> None:
        """Find the app this callback is for, and its crypto; 404 without one."""
        self.wecom_app = self.services.app(name)
        if self.wecom_app is None:
            raise web.HTTPError(404, "unknown app %r", name)
        self.crypto = self.services.cryptos[name]

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
            envelope = envelopes.parse_xml(b"".join(self._chunks))
        except messages.MessageError as exc:
            raise web.HTTPError(400, "bad envelope: %s", exc)
        plain = self._crypto_call(self.crypto.decrypt_message, sig, ts, nonce, envelope.encrypt)
        try:
            message = messages.parse(plain)
        except messages.MessageError as exc:
            raise web.HTTPError(400, "bad message XML: %s", exc)
        kind = message.msgtype if message.msgtype != "event" else "event:%s" % message.event
        self._outcome.update(type=kind, sender=message.from_user)
        if self.services.kf.handles(self.wecom_app, message):
            return await self._kf_doorbell(message)
        try:
            inbound = await self.services.inbox.receive("app", self.wecom_app, message)
        except NotStored as exc:
            # Non-200 on purpose: WeCom retries, so nothing unstored is ever acknowledged.
            self._outcome["detail"] = str(exc)
            raise web.HTTPError(503, "message could not be stored")
        self._outcome.update(id=inbound.id, outcome="journaled" if inbound.journaled else "stored" if inbound.created
                             else "duplicate delivery=%d" % inbound.deliveries)
        if inbound.detail:
            self._outcome["detail"] = inbound.detail
        if not inbound.reply:
            self.set_status(200)
            return self.finish()
        self.set_header("Content-Type", "application/xml; charset=utf-8")
        self.finish(self.crypto.encrypt_reply(inbound.reply, str(int(time.time())), _nonce()))

    async def _kf_doorbell(self, message: Any) -> None:
        """微信客服's kf_msg_or_event: its token kept (committed) and the pull woken; an empty 200 at
        once, the pulling happens after (wecomd.kf)."""
        try:
            served = await self.services.kf.doorbell(self.wecom_app, message)
        except NotStored as exc:  # non-200: WeCom rings again
            self._outcome["detail"] = str(exc)
            raise web.HTTPError(503, "the callback could not be recorded")
        self._outcome.update(outcome="kf pull" if served else "kf account not served")
        self.set_status(200)
        self.finish()

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
            app if app in self.services.config.apps or app in self.services.config.bots else metrics.UNKNOWN_APP, out.get("type", "-"),
            outcome.split(" ", 1)[0], latency, metrics.failure_reason(status, out.get("failure")))
        if status >= 400:  # kept for `wecomd doctor`; rate-limited, written off the request path
            self.services.failures.record(app, self.request.method, status, out, self.request.remote_ip)


def _nonce() -> str:
    return str(secrets.randbelow(10**10))


def routes(services: Any) -> list:
    return [(r"/callback/(?P<app>[A-Za-z0-9_-]+)/?", CallbackHandler, dict(services=services))]
