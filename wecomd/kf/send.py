"""KfSender: what the outbox sends to a 微信客服 customer goes out through kf/send_msg, within WeCom's
reply window (wecom-kf.md §5):

- only within 48 hours of the customer's last message, and at most 5 messages until they write
  again; a send outside the window is refused here, before any call, and the message shows why;
- each send carries a deterministic msgid derived from the outbox row, so a resend after a crash
  between WeCom's answer and our "sent" mark is refused by WeCom (the msgid is used) instead of
  delivered twice; that refusal means WeCom has it, and the row is marked sent;
- 95018 (a human agent serves the session) fails the message "taken by a human agent", never
  retried, and records the session as human-served.

`on_event` answers an event code (a welcome_code within its 20 seconds) with send_msg_on_event.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Optional

from wecomd.config import AppConfig
from wecomd.store.times import from_iso, utcnow
from wecomd.wecom import kf as kfproto
from wecomd.wecom.api import WecomApiError

logger = logging.getLogger(__name__)

SEND_MSG = "/cgi-bin/kf/send_msg"
SEND_ON_EVENT = "/cgi-bin/kf/send_msg_on_event"
RECALL_MSG = "/cgi-bin/kf/recall_msg"
RECALL_WINDOW = timedelta(minutes=2)  # kf/recall_msg takes back only what was sent within 2 minutes
TAKEN_BY_HUMAN = "taken by a human agent (WeCom 95018: the session is in human reception): not sent, not retried"


KF_SENDABLE = ("text", "image", "voice", "video", "file", "msgmenu", "link", "miniprogram", "location",
               "business_card")


class KfRefused(Exception):
    """A send that must not be tried (again): the reason is shown on the message."""

    def __init__(self, reason: str, errcode: Optional[int] = None) -> None:
        super().__init__(reason)
        self.errcode = errcode


class KfSender:
    """One per process (Services); the outbox hands it the rows addressed to kf conversations."""

    def __init__(self, run_db: Callable[..., Awaitable[Any]], read: Callable[..., Awaitable[Any]], store: Any,
                 client: Any, clock: Callable[[], datetime] = utcnow,
                 changed: Optional[Callable[[str, str], Awaitable[None]]] = None) -> None:
        self.run_db, self.read, self.store, self.client, self.clock = run_db, read, store, client, clock
        self.changed = changed  # told when a send changed a session (its count, or a human took it)

    @staticmethod
    def is_kf(to_user: Optional[str]) -> bool:
        return bool(to_user) and kfproto.split_key(to_user) is not None

    async def refusal(self, to_user: str) -> Optional[str]:
        """Why a message to this kf conversation cannot go out now (None: it may)."""
        open_kfid, external = kfproto.split_key(to_user)
        session = await self.read(self.store.kf.session, open_kfid, external) or {}
        return kfproto.window_refusal(from_iso(session.get("last_customer_at")), int(session.get("sends") or 0),
                                      self.clock())

    async def send(self, app: AppConfig, row: dict, media_id: Optional[str] = None) -> dict:
        """Send one outbox row (an image, voice, video or file with the `media_id` the outbox uploaded);
        WeCom's answer ({"msgid"}). KfRefused when it must not be (re)tried; WecomApiError for the
        outbox's usual retry rules."""
        open_kfid, external = kfproto.split_key(row["to_user"])
        why = await self.refusal(row["to_user"])
        if why is not None:
            raise KfRefused("outside WeCom's reply window: %s" % why)
        msgid = kfproto.send_msgid(row["id"])
        fields = row.get("fields") or {}
        msgtype = row["msgtype"]
        if msgtype == "text":
            body = {"content": row.get("content") or ""}
        elif msgtype in kfproto.MEDIA_TYPES and media_id:
            body = {"media_id": media_id}
        else:
            body = fields.get(msgtype)
        if msgtype not in KF_SENDABLE or not isinstance(body, dict):
            raise KfRefused("微信客服 takes text, images, voice, video and files (and menus, links, mini programs) "
                            "through this console, not %s" % msgtype)
        try:
            answer = await self.client.call(app, "POST", SEND_MSG, json_body=kfproto.send_msg_payload(
                open_kfid, external, msgid, msgtype, body))
        except WecomApiError as exc:
            if exc.errcode == kfproto.HUMAN_SERVING:
                await self.run_db(self.store.kf.set_state, app.name, open_kfid, external, 3, None, self.clock())
                await self._changed(open_kfid, external)
                raise KfRefused(TAKEN_BY_HUMAN, exc.errcode)
            if exc.errcode in kfproto.MSGID_USED:  # our own earlier attempt got through: WeCom has it
                logger.info("kf: send id=%s: msgid %s was used already: WeCom has it", row["id"], msgid)
                return {"msgid": msgid}
            raise
        await self.run_db(self.store.kf.count_send, open_kfid, external, self.clock())
        await self._changed(open_kfid, external)
        return {"msgid": answer.get("msgid") or msgid}

    async def _changed(self, open_kfid: str, external: str) -> None:
        if self.changed is not None:
            await self.changed(open_kfid, external)

    async def on_event(self, app: AppConfig, code: str, message_id: int, content: str) -> dict:
        """send_msg_on_event: the text answering an event code (used once, within its lifetime);
        `message_id` is the stored outbound row's, for its msgid."""
        return await self.client.call(app, "POST", SEND_ON_EVENT, json_body=kfproto.on_event_payload(
            code, kfproto.event_msgid(message_id), "text", {"content": content}))

    async def recall(self, app: AppConfig, row: dict) -> dict:
        """kf/recall_msg: take back a message sent through send_msg within the last 2 minutes
        (it still counts toward the 5). ValueError past that, with nothing called."""
        if self.clock() - from_iso(row["received_at"]) > RECALL_WINDOW:
            raise ValueError("微信客服 takes back only messages sent within the last 2 minutes")
        open_kfid, _ = kfproto.split_key(row["to_user"])
        return await self.client.call(app, "POST", RECALL_MSG, json_body={"open_kfid": open_kfid, "msgid": row["msg_id"]})
