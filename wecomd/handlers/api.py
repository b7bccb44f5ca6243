"""/api/*: apps, conversations, messages, manual replies, media and export, as JSON."""
from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Optional
from urllib.parse import quote

from tornado import web

from wecomd import exporting
from wecomd.handlers.base import ApiHandler
from wecomd.handlers.dashboard import public_apps
from wecomd.workers.media import MEDIA_CSP, serving_type
from wecomd.store import CONVERSATION_PAGE

# A message id in a path: ASCII digits, at most 18 of them so that it always fits the database's
# 64-bit integers (longer ones are answered 400 by IdOutOfRangeHandler, not passed to SQLite).
ID = r"([0-9]{1,18})"
_ID_ARG = re.compile(r"[0-9]{1,18}\Z")


class AppsHandler(ApiHandler):
    def get(self) -> None:
        self.write_json({"apps": public_apps(self.services.config.apps)})


class ConversationsHandler(ApiHandler):
    async def get(self) -> None:
        rows, cursor = await self.services.read(
            self.services.store.conversations.page, app=self.get_query_argument("app", None) or None,
            before=_int_arg(self, "before"), limit=_int_arg(self, "limit") or CONVERSATION_PAGE)
        self.write_json({"conversations": rows, "next": cursor})


class ReadHandler(ApiHandler):
    async def post(self) -> None:
        body = self.json_body()
        app, user, up_to = body.get("app"), body.get("user"), body.get("up_to_id")
        if not isinstance(app, str) or not isinstance(user, str) or not _is_id(up_to):
            raise web.HTTPError(400, "send {\"app\": str, \"user\": str, \"up_to_id\": int}")
        await self.services.db(self.services.store.conversations.mark_read, app, user, up_to)
        self.set_status(204)
        self.finish()


class MessagesHandler(ApiHandler):
    async def get(self) -> None:
        filters = message_filters(self)
        rows, cursor = await self.services.read(
            self.services.store.messages.page, before=_int_arg(self, "before"), limit=_int_arg(self, "limit") or 50, **filters
        )
        self.write_json({"messages": rows, "next": cursor})

    async def post(self) -> None:
        body = self.json_body()
        app, to_user, content = body.get("app"), body.get("to_user"), body.get("content")
        if body.get("msgtype", "text") != "text":
            raise web.HTTPError(400, "only msgtype \"text\" can be sent from here")
        if not isinstance(app, str) or self.services.app(app) is None:
            raise web.HTTPError(400, "unknown app %r", app)
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
        self.write_json(first, status=201)


class MessageHandler(ApiHandler):
    async def get(self, message_id: str) -> None:
        row = await self.services.read(self.services.store.messages.get, int(message_id))
        if row is None:
            raise web.HTTPError(404, "no message %s", message_id)
        self.write_json(row)


class RetryHandler(ApiHandler):
    async def post(self, message_id: str) -> None:
        try:
            row = await self.services.outbox.retry(int(message_id))
        except KeyError:
            raise web.HTTPError(404, "no outbound message %s", message_id)
        except ValueError as exc:
            raise web.HTTPError(409, "%s", exc)
        self.write_json(row)


class MediaHandler(ApiHandler):
    async def get(self, message_id: str) -> None:
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


class ExportHandler(ApiHandler):
    """The dashboard's download button: the same query and writer as `wecomd export`."""

    async def get(self) -> None:
        fmt = self.get_query_argument("format", "jsonl")
        if fmt not in ("jsonl", "csv"):
            raise web.HTTPError(400, "format must be jsonl or csv")
        fd, path = tempfile.mkstemp(prefix="wecomd-export-", suffix="." + fmt)
        os.close(fd)
        try:
            await self.services.read(_export_to_file, self.services.store, path, fmt, message_filters(self))
            self.set_header("Content-Type", "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson")
            self.set_header("Content-Disposition", 'attachment; filename="wecomd-export.%s"' % fmt)
            await self.stream_file(path)
        finally:
            os.unlink(path)


def _export_to_file(store: Any, path: str, fmt: str, filters: dict) -> int:
    with open(path, "w", encoding="utf-8", newline="") as out:
        return exporting.write(store.messages.iter_export(**filters), out, fmt)


class IdOutOfRangeHandler(ApiHandler):
    """/api/messages/N, /api/messages/N/retry and /api/media/N with an N of 19 or more digits."""

    def _refuse(self, *args: str) -> None:
        raise web.HTTPError(400, "a message id has at most 18 digits")

    get = post = _refuse


def message_filters(handler: web.RequestHandler) -> dict:
    """app, user, msgtype and q from the query string; empty ones are left out."""
    names = ("app", "user", "msgtype", "q")
    return {name: value for name in names if (value := handler.get_query_argument(name, "").strip())}


def _int_arg(handler: web.RequestHandler, name: str) -> Optional[int]:
    """A cursor or page size from the query string: ASCII digits, at most 18 (str.isdigit() would
    take '²', and a number past 2**63 overflows the database's integers)."""
    value = handler.get_query_argument(name, "")
    if not value:
        return None
    if not _ID_ARG.match(value):
        raise web.HTTPError(400, "%s must be a positive integer of at most 18 digits", name)
    return int(value)


def _is_id(value: Any) -> bool:
    """A JSON number usable as a message id: an integer (not true/false) within 64 bits."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 63


def _disposition(inline: bool, media: dict, message_id: str) -> str:
    """inline or attachment, with an ASCII filename and the UTF-8 one (RFC 6266)."""
    name = media.get("name") or "media-%s" % message_id
    ascii_name = "".join(c if c.isascii() and c.isalnum() or c in "._-" else "_" for c in name)[:100]
    return "%s; filename=\"%s\"; filename*=UTF-8''%s" % (
        "inline" if inline else "attachment", ascii_name, quote(name[:100], safe=""))


def routes(services: Any) -> list:
    kw = dict(services=services)
    return [
        (r"/api/apps", AppsHandler, kw),
        (r"/api/conversations", ConversationsHandler, kw),
        (r"/api/conversations/read", ReadHandler, kw),
        (r"/api/messages", MessagesHandler, kw),
        (r"/api/messages/%s" % ID, MessageHandler, kw),
        (r"/api/messages/%s/retry" % ID, RetryHandler, kw),
        (r"/api/media/%s" % ID, MediaHandler, kw),
        (r"/api/(?:messages|media)/[0-9]{19,}(?:/retry)?", IdOutOfRangeHandler, kw),
        (r"/api/export", ExportHandler, kw),
    ]
