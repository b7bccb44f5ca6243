"""微信客服 session control for the console (wecomd.kf.channel):

- GET /api/kf/session?app=&user=: the session of a kf conversation as WeCom has it now
  (service_state/get): {service_state, servicer_userid, transitions, servicers, last_customer_at,
  sends, ...}; `transitions` are the states WeCom documents as reachable from this one;
- POST /api/kf/session {app, user, service_state, servicer_userid?, message?}: move it
  (service_state/trans): 1 to the bot, 2 to the queue, 3 to a human agent (a servicer who is 接待中),
  4 to end it; `message` answers the msg_code WeCom returns (send_msg_on_event), once.
  409 for a move WeCom does not document from the current state; 502 when WeCom refuses.
Writes are audited ("kf_session") and need an operator.
"""
from __future__ import annotations

from typing import Any, Optional

from tornado import web

from wecomd.handlers.assignments import ConversationHandler
from wecomd.kf.channel import SessionRefused
from wecomd.wecom.kf import TEXT_LIMIT
from wecomd.wecom.errcodes import WecomApiError
from wecomd.workers.base import error_text

UNREACHABLE = (OSError,)


class KfSessionHandler(ConversationHandler):
    def kf_app(self, app: str) -> Any:
        config = self.services.app(app)
        if config is None or not config.kf:
            raise web.HTTPError(404, "%r is not an app with 微信客服 (kf = yes)", app)
        return config

    async def get(self) -> None:
        app, user = self.conversation()
        config = self.kf_app(app)
        session = await self._call(self.services.kf.session(config, user))
        if session is not None:
            self.write_json(session)

    async def post(self) -> None:
        body = self.json_body()
        app, user = self.conversation(body)
        config = self.kf_app(app)
        state, servicer = body.get("service_state"), body.get("servicer_userid")
        if not isinstance(state, int) or isinstance(state, bool) or state not in (1, 2, 3, 4):
            raise web.HTTPError(400, "service_state: 1 (bot), 2 (queue), 3 (human) or 4 (end)")
        if servicer is not None and (not isinstance(servicer, str) or not servicer.strip()):
            raise web.HTTPError(400, "servicer_userid: a UserID, or absent")
        message = body.get("message")
        if message is not None and (not isinstance(message, str) or not message.strip()
                                    or len(message.encode("utf-8")) > TEXT_LIMIT):
            raise web.HTTPError(400, "message: text of 1 to %d bytes, or absent", TEXT_LIMIT)
        session = await self._call(self.services.kf.move(config, user, state, servicer, message,
                                                         operator=self.current_user))
        if session is None:
            return
        await self.audit("kf_session", self.target(app, user), {"service_state": state, "servicer_userid": servicer,
                                                                "message": bool(message)})
        self.write_json(session)

    async def _call(self, work: Any) -> Optional[dict]:
        """The session, or None once a 502 with WeCom's own words was written (the operator sees why;
        it is not a server fault)."""
        try:
            return await work
        except SessionRefused as exc:
            raise web.HTTPError(409, "%s", exc)
        except WecomApiError as exc:
            self.write_json({"error": "WeCom refused: %s" % error_text(exc, with_hint=True)}, status=502)
        except UNREACHABLE as exc:
            self.write_json({"error": "WeCom could not be reached: %s" % exc}, status=502)
        return None


def routes(services: Any) -> list:
    return [(r"/api/kf/session", KfSessionHandler, dict(services=services))]
