"""/callback/<bot>: a 智能机器人's URL verification (GET) and callbacks (POST), JSON in and out.

The same path namespace as the apps' callbacks: a name configured as a [bot:NAME] is routed here
(BotNames matches against the config of the moment, so a reload that adds a bot needs no new
route), every other name goes on to the app callback. The transport is the app callback's (limits,
the signature, the timestamp window, one log line and the metrics per request); only the envelope
(JSON), the receive-id ("") and the answer (an encrypted JSON stream frame) differ. What a message
becomes is wecomd.bots'.
"""
from __future__ import annotations

from typing import Any, Optional

from tornado import httputil, routing, web

from wecomd.handlers.callback import CallbackHandler
from wecomd.inbox import NotStored
from wecomd.wecom import bot as botproto, crypto, envelopes
from wecomd.wecom.messages import MessageError

PATH = r"/callback/(?P<app>[A-Za-z0-9_-]+)/?$"


class BotNames(routing.PathMatches):
    """/callback/NAME where NAME is a bot of the running config."""

    def __init__(self, services: Any) -> None:
        super().__init__(PATH)
        self.services = services

    def match(self, request: httputil.HTTPServerRequest) -> Optional[dict]:
        found = super().match(request)
        name = found["path_kwargs"].get("app") if found is not None else None  # bytes, undecoded yet
        if not name or name.decode("utf-8", "replace") not in self.services.config.bots:
            return None
        return found


@web.stream_request_body
class BotCallbackHandler(CallbackHandler):
    """The app callback's transport with the bot's envelope, receive-id and answers."""

    def _endpoint(self, name: str) -> None:
        self.wecom_app = self.services.bots.bot(name)
        if self.wecom_app is None:  # removed by a reload since the route matched
            raise web.HTTPError(404, "unknown bot %r", name)
        self.crypto = self.services.cryptos[name]

    async def post(self, app: str) -> None:
        if self._size > self._max_body:
            raise web.HTTPError(413, "body larger than max_body (%d bytes)", self._max_body)
        sig, ts, nonce = self._query("msg_signature", "timestamp", "nonce")
        self._check_timestamp(ts)
        try:
            envelope = envelopes.parse_json(b"".join(self._chunks))
        except MessageError as exc:
            raise web.HTTPError(400, "bad envelope: %s", exc)
        plain = self._crypto_call(self.crypto.decrypt_message, sig, ts, nonce, envelope.encrypt)
        try:
            message = botproto.parse(plain)
        except MessageError as exc:
            raise web.HTTPError(400, "bad bot message: %s", exc)
        if self.wecom_app.aibotid and message.agent_id != self.wecom_app.aibotid:
            raise web.HTTPError(403, "aibotid %r is not this bot's", message.agent_id)
        kind = message.msgtype if message.msgtype != "event" else "event:%s" % message.event
        self._outcome.update(type=kind, sender=message.from_user)
        try:
            answer, self._outcome["outcome"] = await self.services.bots.handle(self.wecom_app, message)
        except NotStored as exc:
            self._outcome["detail"] = str(exc)
            raise web.HTTPError(503, "message could not be stored")
        if answer is None:
            self.set_status(200)
            return self.finish()
        # The request's own timestamp and nonce: WeCom checks the nonce (wecom-aibot.md §1).
        try:
            body = botproto.reply_envelope(self.crypto, answer, ts, nonce)
        except crypto.CryptoError as exc:  # a nonce that cannot be echoed (not 1-64 letters or digits)
            raise web.HTTPError(400, "%s", exc)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(body)


def routes(services: Any) -> list:
    return [routing.Rule(BotNames(services), BotCallbackHandler, dict(services=services))]
