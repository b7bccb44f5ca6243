"""Quick replies: saved snippets the reply box inserts when one types "/" (static/compose.js).

- GET /api/quick-replies: the shared ones and the caller's own;
- POST /api/quick-replies {shortcut, text, team?}: a new one, the caller's own, or with team: true one
  shared with everyone (admins);
- POST /api/quick-replies/N {shortcut?, text?}, DELETE /api/quick-replies/N: change or delete one's
  own (an operator's), or a shared one (admins).

The text may hold {user_name} and {from_user}, which the reply box fills in when it inserts the
snippet. Another operator's own quick replies are nobody else's business: they answer 404.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from tornado import web

from wecomd.handlers.args import ID
from wecomd.handlers.base import ApiHandler
from wecomd.store import ShortcutTaken

MAX_TEXT = 10_000  # characters; a longer reply is sent in parts anyway
# What follows "/" in the reply box: letters (any script), digits, "_", "-" and ".", up to 32.
_SHORTCUT = re.compile(r"[\w.-]{1,32}\Z")


class QuickReplyHandler(ApiHandler):
    def check_shortcut(self, value: Any) -> str:
        if not isinstance(value, str) or not _SHORTCUT.match(value):
            raise web.HTTPError(400, "shortcut: 1 to 32 letters, digits, _, - or . (no spaces)")
        return value

    def check_text(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT or "\x00" in value:
            raise web.HTTPError(400, "text: non-empty, at most %d characters", MAX_TEXT)
        return value

    def may_change(self, reply: Optional[dict]) -> dict:
        """The quick reply if this caller may change it: their own, or a shared one for an admin."""
        if reply is None or (not reply["team"] and reply["owner"] != self.current_user):
            raise web.HTTPError(404, "no quick reply of yours with this id")
        if reply["team"] and not self.identity.can("admin"):
            raise web.HTTPError(403, "%s is a %s; changing a shared quick reply needs admin",
                                self.current_user, self.identity.role)
        return reply


class QuickRepliesHandler(QuickReplyHandler):
    async def get(self) -> None:
        rows = await self.services.read(self.services.store.quick_replies.visible, self.current_user)
        self.write_json({"quick_replies": rows})

    async def post(self) -> None:
        body = self.json_body()
        shortcut, text = self.check_shortcut(body.get("shortcut")), self.check_text(body.get("text"))
        shared = body.get("team", False)
        if not isinstance(shared, bool):
            raise web.HTTPError(400, "team: true (shared with everyone) or false")
        if shared and not self.identity.can("admin"):
            raise web.HTTPError(403, "%s is a %s; a shared quick reply needs admin", self.current_user,
                                self.identity.role)
        try:
            row = await self.services.db(self.services.store.quick_replies.add, shortcut, text,
                                         None if shared else self.current_user)
        except ShortcutTaken as exc:
            raise web.HTTPError(409, "%s", exc)
        await self.audit("quick_reply_add", "quick_reply:%d" % row["id"], {"shortcut": shortcut, "team": shared})
        self.write_json(row, status=201)


class QuickReplyItemHandler(QuickReplyHandler):
    async def post(self, reply_id: str) -> None:
        body = self.json_body()
        shortcut = self.check_shortcut(body["shortcut"]) if "shortcut" in body else None
        text = self.check_text(body["text"]) if "text" in body else None
        self.may_change(await self.services.read(self.services.store.quick_replies.get, int(reply_id)))
        try:
            row = await self.services.db(self.services.store.quick_replies.update, int(reply_id), shortcut, text)
        except KeyError:
            raise web.HTTPError(404, "no quick reply %s", reply_id)
        except ShortcutTaken as exc:
            raise web.HTTPError(409, "%s", exc)
        await self.audit("quick_reply_change", "quick_reply:%s" % reply_id, {"shortcut": row["shortcut"]})
        self.write_json(row)

    async def delete(self, reply_id: str) -> None:
        self.may_change(await self.services.read(self.services.store.quick_replies.get, int(reply_id)))
        try:
            row = await self.services.db(self.services.store.quick_replies.delete, int(reply_id))
        except KeyError:
            raise web.HTTPError(404, "no quick reply %s", reply_id)
        await self.audit("quick_reply_delete", "quick_reply:%s" % reply_id, {"shortcut": row["shortcut"]})
        self.set_status(204)
        self.finish()


def routes(services: Any) -> list:
    kw = dict(services=services)
    return [
        (r"/api/quick-replies", QuickRepliesHandler, kw),
        (r"/api/quick-replies/%s" % ID, QuickReplyItemHandler, kw),
    ]
