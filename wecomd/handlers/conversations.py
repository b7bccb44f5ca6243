"""The conversations panel's routes (its view: static/conversations.js): the conversation list,
read marks and the export download. Its search results come from /api/messages (handlers/thread.py);
assigning, closing and notes are handlers/assignments.py's."""
from __future__ import annotations

import os
import tempfile
from typing import Any

from tornado import web

from wecomd import exporting
from wecomd.handlers.args import int_arg, is_id, message_filters
from wecomd.handlers.base import ApiHandler
from wecomd.store import CONVERSATION_PAGE

FILTERS = ("all", "mine", "unassigned", "unread")  # store.conversations.CONVERSATION_FILTERS


class ConversationsHandler(ApiHandler):
    """GET ?app=&filter=mine|unassigned|all|unread&before=&limit=: mine is what is assigned to the
    one asking (their account, or the token's operator)."""

    async def get(self) -> None:
        show = self.get_query_argument("filter", "") or "all"
        if show not in FILTERS:
            raise web.HTTPError(400, "filter must be one of %s", ", ".join(FILTERS))
        rows, cursor = await self.services.read(
            self.services.store.conversations.page, app=self.app_scope(self.get_query_argument("app", None) or None),
            before=int_arg(self, "before"), limit=int_arg(self, "limit") or CONVERSATION_PAGE,
            show=show, me=self.current_user)
        rows = await self.services.bots.annotate_conversations(rows)
        rows = await self.services.kf.annotate(await self.services.directory.annotate(rows))
        await self.write_page("conversations", rows, cursor)


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
    """The dashboard's download button: the same query and writer as `wecomd export`; internal
    notes only with notes=1 (as `--notes`)."""

    async def get(self) -> None:
        fmt = self.get_query_argument("format", "jsonl")
        if fmt not in ("jsonl", "csv"):
            raise web.HTTPError(400, "format must be jsonl or csv")
        notes = self.get_query_argument("notes", "0")
        if notes not in ("0", "1"):
            raise web.HTTPError(400, "notes must be 0 or 1")
        filters = message_filters(self)
        if notes == "1" and ("msgtype" in filters or "q" in filters):
            raise web.HTTPError(400, "notes=1 cannot be combined with msgtype or q (they select messages)")
        fd, path = tempfile.mkstemp(prefix="wecomd-export-", suffix="." + fmt)
        os.close(fd)
        try:
            corps = {name: app.corp_id for name, app in self.services.config.apps.items()}
            await self.services.read(_export_to_file, self.services.store, path, fmt, filters, corps, notes == "1")
            self.set_header("Content-Type", "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson")
            self.set_header("Content-Disposition", 'attachment; filename="wecomd-export.%s"' % fmt)
            await self.stream_file(path)
        finally:
            os.unlink(path)


def _export_to_file(store: Any, path: str, fmt: str, filters: dict, corps: dict, notes: bool = False) -> int:
    """The export, each message with its user's name from the contact cache (`corps`: app -> corp_id),
    with the internal notes of the same app and user when `notes`."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        rows = store.contacts.with_names(store.messages.iter_export(**filters), corps)
        if notes:
            rows = exporting.with_notes(rows, store.notes.iter_export(filters.get("app"), filters.get("user")))
        return exporting.write(rows, out, fmt)


def routes(services: Any) -> list:
    kw = dict(services=services)
    return [
        (r"/api/conversations", ConversationsHandler, kw),
        (r"/api/conversations/read", ReadHandler, kw),
        (r"/api/export", ExportHandler, kw),
    ]
