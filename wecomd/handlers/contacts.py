"""GET /api/contact?app=&user=: who a UserID is (name, departments, position), for the thread header.

Answered from the contact directory's cache; an unknown or stale one is looked up at once (the
directory asks WeCom once per user however many ask), so the header can show the name on first
open. A lookup WeCom refused is answered with its reason and the UserID stays what is shown.
"""
from __future__ import annotations

from typing import Any

from tornado import web

from wecomd.handlers.base import ApiHandler


class ContactHandler(ApiHandler):
    async def get(self) -> None:
        app, user = self.get_query_argument("app", ""), self.get_query_argument("user", "")
        if self.services.app(app) is None or not user:
            raise web.HTTPError(400, "send ?app=<a configured app>&user=<UserID>")
        self.check_app(app)
        contact = await self.services.kf.contact(app, user)  # a 微信客服 customer: the cached nickname
        if contact is None:
            contact = await self.services.directory.contact(app, user)
        self.write_json(contact or {"userid": user, "name": None, "departments": [], "position": None,
                                    "errcode": None, "error": None, "fetched_at": None})


def routes(services: Any) -> list:
    return [(r"/api/contact", ContactHandler, dict(services=services))]
