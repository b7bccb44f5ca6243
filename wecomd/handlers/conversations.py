"""The conversations panel's routes (its view: static/conversations.js): the conversation list,
read marks and the export download. Its search results come from /api/messages (handlers/thread.py)."""
from __future__ import annotations

import os
import tempfile
from typing import Any

from tornado import web

from wecomd import exporting
from wecomd.handlers.args import int_arg, is_id, message_filters
from wecomd.handlers.base import ApiHandler
from wecomd.store import CONVERSATION_PAGE


class ConversationsHandler(ApiHandler):
    async def get(self) -> None:
        rows, cursor = await self.services.read(
            self.services.store.conversations.page, app=self.app_scope(self.get_query_argument("app", None) or None),
            before=int_arg(self, "before"), limit=int_arg(self, "limit") or CONVERSATION_PAGE)
        self.write_json({"conversations": await self.services.directory.annotate(rows), "next": cursor})


class ReadHandler(ApiHandler):
    role = "viewer"  # marking what one has read is reading, whatever the role

    async def post(self) -> None:
        body = self.json_body()
        app, user, up_to = body.get("app"), body.get("user"), body.get("up_to_id")
        if not isinstance(app, str) or not isinstance(user, str) or not is_id(up_to):
            raise web.HTTPError(400, "send {\"app\": str, \"user\": str, \"up_to_id\": int}")
        self.check_app(app)
        await self.services.db(self.services.store.conversations.mark_read, app, user, up_to)
        self.set_status(204)
        self.finish()


class ExportHandler(ApiHandler):
    """The dashboard's download button: the same query and writer as `wecomd export`."""

    async def get(self) -> None:
        fmt = self.get_query_argument("format", "jsonl")
        if fmt not in ("jsonl", "csv"):
            raise web.HTTPError(400, "format must be jsonl or csv")
        fd, path = tempfile.mkstemp(prefix="wecomd-export-", suffix="." + fmt)
        os.close(fd)
        try:
            corps = {name: app.corp_id for name, app in self.services.config.apps.items()}
            await self.services.read(_export_to_file, self.services.store, path, fmt, message_filters(self), corps)
            self.set_header("Content-Type", "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson")
            self.set_header("Content-Disposition", 'attachment; filename="wecomd-export.%s"' % fmt)
            await self.stream_file(path)
        finally:
            os.unlink(path)


def _export_to_file(store: Any, path: str, fmt: str, filters: dict, corps: dict) -> int:
    """The export, each message with its user's name from the contact cache (`corps`: app -> corp_id)."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        return exporting.write(store.contacts.with_names(store.messages.iter_export(**filters), corps), out, fmt)


def routes(services: Any) -> list:
    kw = dict(services=services)
    return [
        (r"/api/conversations", ConversationsHandler, kw),
        (r"/api/conversations/read", ReadHandler, kw),
        (r"/api/export", ExportHandler, kw),
    ]
