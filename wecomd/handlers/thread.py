"""The thread panel's routes (its view: static/thread.js): a conversation's messages (the
conversations panel's search too), manual replies and their retries, media, resuming automation."""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tornado import web

from wecomd.handlers.args import ID, int_arg, message_filters
from wecomd.handlers.base import ApiHandler
from wecomd.workers.media import MEDIA_CSP, serving_type


class MessagesHandler(ApiHandler):
    async def get(self) -> None:
        filters = message_filters(self)
        rows, cursor = await self.services.read(
            self.services.store.messages.page, before=int_arg(self, "before"), limit=int_arg(self, "limit") or 50, **filters
        )
        self.write_json({"messages": await self.services.directory.annotate(rows), "next": cursor})

    async def post(self) -> None:
        body = self.json_body()
        app, to_user, content = body.get("app"), body.get("to_user"), body.get("content")
        if body.get("msgtype", "text") != "text":
            raise web.HTTPError(400, "only msgtype \"text\" can be sent from here")
        if not isinstance(app, str) or self.services.app(app) is None:
            raise web.HTTPError(400, "unknown app %r", app)
        self.check_app(app)
        if not isinstance(to_user, str) or not to_user.strip():
            raise web.HTTPError(400, "to_user is required")
        if not isinstance(content, str) or not content.strip():
            raise web.HTTPError(400, "content is required")
        rows = await self.services.outbox.submit(app, to_user.strip(), content, operator=self.current_user)
        # Human takeover: automation leaves this user to the operator for a while.
        await self.services.takeover.operator_replied(app, to_user.strip(), self.current_user)
        first = dict(rows[0])
        if len(rows) > 1:
            first["parts"] = [row["id"] for row in rows]
        await self.audit("reply", "conversation:%s/%s" % (app, to_user.strip()),
                         dict(message_ids=[row["id"] for row in rows]))
        self.write_json(first, status=201)


class MessageHandler(ApiHandler):
    async def get(self, message_id: str) -> None:
        row = await self.services.read(self.services.store.messages.get, int(message_id))
        if row is None:
            raise web.HTTPError(404, "no message %s", message_id)
        self.check_app(row["app"])
        self.write_json((await self.services.directory.annotate([row]))[0])


class RetryHandler(ApiHandler):
    async def post(self, message_id: str) -> None:
        if self.identity.apps is not None:  # an account limited to some apps retries only theirs
            row = await self.services.read(self.services.store.messages.get, int(message_id))
            if row is not None:
                self.check_app(row["app"])
        try:
            row = await self.services.outbox.retry(int(message_id))
        except KeyError:
            raise web.HTTPError(404, "no outbound message %s", message_id)
        except ValueError as exc:
            raise web.HTTPError(409, "%s", exc)
        await self.audit("retry", "message:%s" % message_id)
        self.write_json(row)


class MediaHandler(ApiHandler):
    async def get(self, message_id: str) -> None:
        if self.identity.apps is not None:  # an account limited to some apps sees only their media
            row = await self.services.read(self.services.store.messages.get, int(message_id))
            if row is not None:
                self.check_app(row["app"])
        media = await self.services.read(self.services.store.media.get, int(message_id))
        if not media or media.get("status") != "stored":
            raise web.HTTPError(404, "no downloaded media for message %s (%s)", message_id,
                                (media or {}).get("status") or "none")
        path = self.services.media.path_for(media)
        # Only allow-listed raster images, audio and video are shown; the rest is a download.
        mime, inline = serving_type(media.get("type"))
        self.set_header("Content-Type", mime)
        self.set_header("Content-Disposition", _disposition(inline, media, message_id))
        self.set_header("Content-Security-Policy", MEDIA_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "private, max-age=86400")
        await self.stream_file(str(path))


class IdOutOfRangeHandler(ApiHandler):
    """/api/messages/N, /api/messages/N/retry and /api/media/N with an N of 19 or more digits."""

    role = "viewer"  # it only ever answers 400

    def _refuse(self, *args: str) -> None:
        raise web.HTTPError(400, "a message id has at most 18 digits")

    get = post = _refuse


class ResumeHandler(ApiHandler):
    """The thread's "resume now" button: automation answers this user again at once."""

    async def post(self) -> None:
        body = self.json_body()
        app, user = body.get("app"), body.get("user")
        if not isinstance(app, str) or not isinstance(user, str) or not user:
            raise web.HTTPError(400, "send {\"app\": str, \"user\": str}")
        self.check_app(app)
        await self.services.takeover.resume(app, user)
        await self.audit("resume", "conversation:%s/%s" % (app, user))
        self.set_status(204)
        self.finish()


def _disposition(inline: bool, media: dict, message_id: str) -> str:
    """inline or attachment, with an ASCII filename and the UTF-8 one (RFC 6266)."""
    name = media.get("name") or "media-%s" % message_id
    ascii_name = "".join(c if c.isascii() and c.isalnum() or c in "._-" else "_" for c in name)[:100]
    return "%s; filename=\"%s\"; filename*=UTF-8''%s" % (
        "inline" if inline else "attachment", ascii_name, quote(name[:100], safe=""))


def routes(services: Any) -> list:
    kw = dict(services=services)
    return [
        (r"/api/messages", MessagesHandler, kw),
        (r"/api/messages/%s" % ID, MessageHandler, kw),
        (r"/api/messages/%s/retry" % ID, RetryHandler, kw),
        (r"/api/media/%s" % ID, MediaHandler, kw),
        (r"/api/(?:messages|media)/[0-9]{19,}(?:/retry)?", IdOutOfRangeHandler, kw),
        (r"/api/takeover/resume", ResumeHandler, kw),
    ]
