"""The team's work on a conversation: who it is assigned to, open or closed, and internal notes.

- GET /api/assignees[?app=]: who a conversation can be assigned to (viewers read it; the account
  list itself, /api/operators, is the admins');
- GET /api/conversations/state?app=&user=: a conversation's assignee and state;
  POST /api/conversations/assign {app, user, assignee|null}, POST /api/conversations/state
  {app, user, state};
- GET /api/notes?app=&user=, POST /api/notes {app, user, text}.

Each write is audited ("assign", "state", "note") and pushed to every open dashboard that may see
the app (live.assignment_event, live.note_event). A note goes to no one outside the dashboard.
"""
from __future__ import annotations

from typing import Any, Optional

from tornado import web

from wecomd import live
from wecomd.handlers.args import int_arg
from wecomd.handlers.base import ApiHandler

MAX_NOTE = 10_000  # characters: a note is for colleagues, not a document
MAX_NAME = 256  # an app name or UserID (WeCom's are 64 at most; a group's chatid is longer)
STATES = ("open", "closed")


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME and "\x00" not in value


class ConversationHandler(ApiHandler):
    """The conversation a request names, in its JSON body or its query, checked against the scope."""

    def conversation(self, body: Optional[dict] = None) -> tuple[str, str]:
        if body is None:
            app, user = self.get_query_argument("app", ""), self.get_query_argument("user", "")
        else:
            app, user = body.get("app"), body.get("user")
        if not _name(app) or not _name(user):
            raise web.HTTPError(400, "name the conversation: app and user, non-empty strings")
        self.check_app(app)
        return app, user

    def target(self, app: str, user: str) -> str:
        return "conversation:%s/%s" % (app, user)

    async def assignees(self, app: Optional[str]) -> list[str]:
        """The bootstrap admin, then every enabled account, by name; with `app`, only those that see it."""
        rows = await self.services.read(self.services.store.operators.all)
        names = [row["name"] for row in rows if not row["disabled"]
                 and (app is None or row["apps"] is None or app in row["apps"])]
        return [self.services.config.admin.username] + [name for name in names
                                                        if name != self.services.config.admin.username]


class AssigneesHandler(ConversationHandler):
    async def get(self) -> None:
        app = self.get_query_argument("app", "") or None
        if app is not None:
            self.check_app(app)
        self.write_json({"assignees": await self.assignees(app)})


class AssignHandler(ConversationHandler):
    async def post(self) -> None:
        body = self.json_body()
        app, user = self.conversation(body)
        assignee = body.get("assignee")
        if assignee is not None and (not isinstance(assignee, str) or assignee not in await self.assignees(app)):
            raise web.HTTPError(400, "assignee: null or the name of an enabled account that sees app %r", app)
        try:
            state = await self.services.db(self.services.store.assignments.assign, app, user, assignee,
                                           self.current_user)
        except KeyError:
            raise web.HTTPError(404, "no conversation %s/%s", app, user)
        await self.audit("assign", self.target(app, user), {"assignee": assignee})
        self.services.publish(live.assignment_event(state))
        self.write_json(state)


class StateHandler(ConversationHandler):
    async def get(self) -> None:
        app, user = self.conversation()
        self.write_json(await self.services.read(self.services.store.assignments.get, app, user))

    async def post(self) -> None:
        body = self.json_body()
        app, user = self.conversation(body)
        if body.get("state") not in STATES:
            raise web.HTTPError(400, "state must be \"open\" or \"closed\"")
        try:
            state = await self.services.db(self.services.store.assignments.set_state, app, user, body["state"],
                                           self.current_user)
        except KeyError:
            raise web.HTTPError(404, "no conversation %s/%s", app, user)
        await self.audit("state", self.target(app, user), {"state": body["state"]})
        self.services.publish(live.assignment_event(state))
        self.write_json(state)


class NotesHandler(ConversationHandler):
    async def get(self) -> None:
        app, user = self.conversation()
        rows, cursor = await self.services.read(self.services.store.notes.page, app, user,
                                                before=int_arg(self, "before"), limit=int_arg(self, "limit") or 100)
        await self.write_page("notes", rows, cursor)

    async def post(self) -> None:
        body = self.json_body()
        app, user = self.conversation(body)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip() or "\x00" in text:
            raise web.HTTPError(400, "text is required")
        if len(text) > MAX_NOTE:
            raise web.HTTPError(400, "text: at most %d characters", MAX_NOTE)
        try:
            note = await self.services.db(self.services.store.notes.add, app, user, self.current_user, text)
        except KeyError:
            raise web.HTTPError(404, "no conversation %s/%s", app, user)
        await self.audit("note", self.target(app, user), {"note_id": note["id"]})
        self.services.publish(live.note_event(note))
        self.write_json(note, status=201)


def routes(services: Any) -> list:
    kw = dict(services=services)
    return [
        (r"/api/assignees", AssigneesHandler, kw),
        (r"/api/conversations/assign", AssignHandler, kw),
        (r"/api/conversations/state", StateHandler, kw),
        (r"/api/notes", NotesHandler, kw),
    ]
