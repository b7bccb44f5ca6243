"""Assignment, open/closed state and internal notes over HTTP (issue #11 item 6): on a real server with
real callbacks, each refusal with nothing stored, the audit log, the live events, the export."""
from __future__ import annotations

import asyncio
import csv
import io
import json

from tornado.httpclient import HTTPRequest
from tornado.testing import gen_test
from tornado.websocket import websocket_connect

from support.base import WecomdTestCase
from support.cli import wecomd
from support.peer import CORP_ID
from wecomd.wecom import samples

PASSWORD = "pw-" + "x" * 12


def text(content: str, user: str = "zhangsan", agent_id: str = "1000002") -> str:
    return samples.build("text", corp_id=CORP_ID, agent_id=agent_id, from_user=user, content=content)


class AssignTestCase(WecomdTestCase):
    def as_(self, name, role, apps=None):
        """A signed-in account's (headers, xsrf)."""
        self.add_operator(name, role, PASSWORD, apps)
        return self.login(name, PASSWORD), self.xsrf

    def call(self, session, path, method="GET", body=None, **params):
        headers, xsrf = session
        self.xsrf = xsrf  # self.api sends self.xsrf with a cookie: this session's
        return self.api(path, method=method, body=body, headers=dict(headers), **params)

    def stored(self):
        """What the writes could have changed: state rows, notes (the audit log is checked apart)."""
        models = self.services.store.models
        return (self.db(lambda: list(models.ConversationState.select().dicts())),
                self.db(lambda: list(models.Note.select().dicts())))

    def audit(self, actor):
        return [(a["action"], a["target"], a["detail"]) for a in
                self.db(self.services.store.audit.page, actor=actor)[0] if a["action"] != "login"]


class AssignTest(AssignTestCase):
    def test_assign_close_and_note_as_an_operator(self):
        self.callback(text("打印机坏了"))
        li = self.as_("li", "operator")
        status, state = self.call(li, "/api/conversations/assign", "POST",
                                  {"app": "helpdesk", "user": "zhangsan", "assignee": "li"})
        self.assertEqual(status, 200)
        self.assertEqual((state["assignee"], state["state"], state["updated_by"]), ("li", "open", "li"))
        status, state = self.call(li, "/api/conversations/state", "POST",
                                  {"app": "helpdesk", "user": "zhangsan", "state": "closed"})
        self.assertEqual((status, state["state"], state["assignee"]), (200, "closed", "li"))
        self.assertEqual(self.call(li, "/api/conversations/state", app="helpdesk", user="zhangsan")[1], state)
        status, note = self.call(li, "/api/notes", "POST", {"app": "helpdesk", "user": "zhangsan",
                                                           "text": "他的打印机是 HP 的"})
        self.assertEqual((status, note["author"], note["text"]), (201, "li", "他的打印机是 HP 的"))
        status, notes = self.call(li, "/api/notes", app="helpdesk", user="zhangsan")
        self.assertEqual((status, notes), (200, {"notes": [note], "next": None}))
        [conv] = self.call(li, "/api/conversations")[1]["conversations"]
        self.assertEqual((conv["assignee"], conv["state"]), ("li", "closed"))
        self.assertEqual(self.audit("li"), [
            ("note", "conversation:helpdesk/zhangsan", {"note_id": note["id"]}),
            ("state", "conversation:helpdesk/zhangsan", {"state": "closed"}),
            ("assign", "conversation:helpdesk/zhangsan", {"assignee": "li"}),
        ])
        # A note is never a message and never goes to WeCom.
        self.assertNotIn("他的打印机是 HP 的", json.dumps(self.rows(), ensure_ascii=False))
        self.assertEqual(self.fake.sent, [])
        # Unassign: null.
        status, state = self.call(li, "/api/conversations/assign", "POST",
                                  {"app": "helpdesk", "user": "zhangsan", "assignee": None})
        self.assertEqual((status, state["assignee"]), (200, None))

    def test_an_inbound_message_reopens_a_closed_conversation(self):
        self.callback(text("第一次"), app="quiet", agent_id="1000003")
        status, _ = self.api("/api/conversations/state", "POST", {"app": "quiet", "user": "zhangsan", "state": "closed"})
        self.assertEqual(status, 200)
        self.assertEqual(self.api("/api/conversations")[1]["conversations"][0]["state"], "closed")
        self.callback(text("又来了"), app="quiet", agent_id="1000003")
        [conv] = self.api("/api/conversations")[1]["conversations"]
        self.assertEqual((conv["state"], conv["last_message"]["content"]), ("open", "又来了"))
        self.assertEqual(self.api("/api/conversations/state", app="quiet", user="zhangsan")[1]["state"], "open")

    def test_filters_mine_unassigned_unread_and_all(self):
        for user in ("u1", "u2", "u3"):
            self.callback(text("hi", user=user), app="quiet", agent_id="1000003")
        li = self.as_("li", "operator")
        self.call(li, "/api/conversations/assign", "POST", {"app": "quiet", "user": "u1", "assignee": "li"})
        self.call(li, "/api/conversations/assign", "POST", {"app": "quiet", "user": "u2", "assignee": "admin"})
        u3 = [c for c in self.api("/api/conversations")[1]["conversations"] if c["user"] == "u3"][0]
        self.call(li, "/api/conversations/read", "POST", {"app": "quiet", "user": "u3", "up_to_id": u3["last_id"]})

        def users(session, show, **params):
            status, data = self.call(session, "/api/conversations", filter=show, **params)
            self.assertEqual(status, 200, data)
            return [c["user"] for c in data["conversations"]]

        self.assertEqual(users(li, "mine"), ["u1"])
        self.assertEqual(users(self.admin(), "mine"), ["u2"])  # the admin's own
        self.assertEqual(users(li, "unassigned"), ["u3"])
        self.assertEqual(users(li, "unread"), ["u2", "u1"])
        self.assertEqual(users(li, "all"), ["u3", "u2", "u1"])
        self.assertEqual(users(li, ""), ["u3", "u2", "u1"])
        self.assertEqual(users(li, "mine", app="helpdesk"), [])
        status, page = self.call(li, "/api/conversations", filter="all", limit="1", before=str(u3["last_id"]))
        self.assertEqual([c["user"] for c in page["conversations"]], ["u2"])
        self.assertEqual(self.call(li, "/api/conversations", filter="closed")[0], 400)
        # A token's "mine" is its operator's.
        from wecomd import accounts
        raw, digest = accounts.new_token()
        self.db(self.services.store.operators.add_token, "li", digest, None, "admin")
        status, data = self.api("/api/conversations", headers=self.bearer(raw), filter="mine")
        self.assertEqual([c["user"] for c in data["conversations"]], ["u1"])

    def admin(self):
        return self.login(), self.xsrf

    def test_assignees_are_enabled_accounts_and_the_bootstrap_admin(self):
        self.add_operator("li", "operator", PASSWORD)
        self.add_operator("hr1", "operator", PASSWORD, ["quiet"])
        self.add_operator("old", "operator", PASSWORD)
        self.db(self.services.store.operators.update, "old", disabled=True)
        viewer = self.as_("ann", "viewer")
        self.assertEqual(self.call(viewer, "/api/assignees"), (200, {"assignees": ["admin", "ann", "hr1", "li"]}))
        self.assertEqual(self.call(viewer, "/api/assignees", app="helpdesk")[1]["assignees"], ["admin", "ann", "li"])
        # The account list itself stays the admins'.
        self.assertEqual(self.call(viewer, "/api/operators")[0], 403)

    def test_bad_requests_store_nothing(self):
        self.callback(text("hi"))
        before = self.stored()
        bad = [
            ("/api/conversations/assign", {"app": "helpdesk", "user": "zhangsan", "assignee": "nobody"}, 400),
            ("/api/conversations/assign", {"app": "helpdesk", "user": "zhangsan", "assignee": 7}, 400),
            ("/api/conversations/assign", {"app": "helpdesk", "user": "", "assignee": None}, 400),
            ("/api/conversations/assign", {"app": "helpdesk", "user": "ghost", "assignee": "admin"}, 404),
            ("/api/conversations/state", {"app": "helpdesk", "user": "zhangsan", "state": "snoozed"}, 400),
            ("/api/conversations/state", {"app": "helpdesk", "user": "ghost", "state": "closed"}, 404),
            ("/api/conversations/state", {"app": "help\x00desk", "user": "zhangsan", "state": "closed"}, 400),
            ("/api/notes", {"app": "helpdesk", "user": "zhangsan", "text": "   "}, 400),
            ("/api/notes", {"app": "helpdesk", "user": "zhangsan", "text": "x" * 10001}, 400),
            ("/api/notes", {"app": "helpdesk", "user": "zhangsan", "text": ["x"]}, 400),
            ("/api/notes", {"app": "helpdesk", "user": "ghost", "text": "hello"}, 404),
            ("/api/notes", {"app": ["helpdesk"], "user": "zhangsan", "text": "hello"}, 400),
        ]
        for path, body, expected in bad:
            status, data = self.api(path, "POST", body)
            self.assertEqual(status, expected, (path, body, data))
        self.assertEqual(self.api("/api/notes", app="helpdesk")[0], 400)
        self.assertEqual(self.api("/api/conversations/state", user="zhangsan")[0], 400)
        self.assertEqual(self.stored(), before)
        self.assertEqual(self.audit("admin"), [])


class RefusalTest(AssignTestCase):
    def writes(self, app="helpdesk"):
        return [
            ("/api/conversations/assign", {"app": app, "user": "zhangsan", "assignee": "admin"}),
            ("/api/conversations/state", {"app": app, "user": "zhangsan", "state": "closed"}),
            ("/api/notes", {"app": app, "user": "zhangsan", "text": "内部"}),
        ]

    def test_a_viewer_reads_but_cannot_assign_close_or_note(self):
        self.callback(text("hi"))
        self.api("/api/notes", "POST", {"app": "helpdesk", "user": "zhangsan", "text": "admin 的备注"})
        before = self.stored()
        viewer = self.as_("ann", "viewer")
        for path, body in self.writes():
            status, data = self.call(viewer, path, "POST", body)
            self.assertEqual(status, 403, path)
            self.assertIn("ann is a viewer", data["error"])
        self.assertEqual(self.stored(), before)
        self.assertEqual(self.audit("ann"), [])
        self.assertEqual(self.fake.sent, [])
        # Reading is a viewer's.
        self.assertEqual([n["text"] for n in self.call(viewer, "/api/notes", app="helpdesk", user="zhangsan")[1]["notes"]],
                         ["admin 的备注"])
        self.assertEqual(self.call(viewer, "/api/conversations/state", app="helpdesk", user="zhangsan")[0], 200)
        self.assertEqual(self.call(viewer, "/api/conversations", filter="mine")[1]["conversations"], [])

    def test_an_account_limited_to_an_app_is_refused_the_others(self):
        self.callback(text("hi"))
        self.callback(text("hi", agent_id="1000003"), app="quiet")
        self.api("/api/notes", "POST", {"app": "quiet", "user": "zhangsan", "text": "quiet 的备注"})
        before = self.stored()
        scoped = self.as_("hr1", "operator", ["helpdesk"])
        for path, body in self.writes("quiet"):
            self.assertEqual(self.call(scoped, path, "POST", body)[0], 403, path)
        self.assertEqual(self.stored(), before)
        self.assertEqual(self.call(scoped, "/api/notes", app="quiet", user="zhangsan")[0], 403)
        self.assertEqual(self.call(scoped, "/api/conversations/state", app="quiet", user="zhangsan")[0], 403)
        self.assertEqual(self.call(scoped, "/api/assignees", app="quiet")[0], 403)
        self.assertEqual(self.call(scoped, "/api/export", notes="1")[1].decode().count("quiet"), 0)
        # An account that does not see the app cannot be given its conversation either.
        self.add_operator("qt", "operator", PASSWORD, ["quiet"])
        status, _ = self.call(scoped, "/api/conversations/assign", "POST",
                              {"app": "helpdesk", "user": "zhangsan", "assignee": "qt"})
        self.assertEqual(status, 400)
        # Its own app works.
        for path, body in self.writes("helpdesk"):
            self.assertIn(self.call(scoped, path, "POST", body)[0], (200, 201), path)
        self.assertEqual([c["user"] for c in self.call(scoped, "/api/conversations", filter="mine")[1]["conversations"]],
                         [])  # assigned to the bootstrap admin, not to hr1


class LiveTest(AssignTestCase):
    async def events(self, ws, count, timeout=5.0):
        found = []
        while len(found) < count:
            frame = json.loads(await asyncio.wait_for(ws.read_message(), timeout))
            found += [event for event in frame if event["type"] in ("assignment", "note")]
        return found

    @gen_test
    async def test_assignments_and_notes_arrive_live_within_the_app_scope(self):
        for app, agent in (("helpdesk", "1000002"), ("quiet", "1000003")):
            req = self.peer.callback(text("hi", agent_id=agent))
            await self.http_client.fetch(self.get_url("/callback/%s?%s" % (app, req.query)), method="POST", body=req.body)
        await self.services.db(self.services.store.operators.add, "hr1", "viewer", "h", ["quiet"])
        from wecomd import accounts
        token, digest = accounts.new_token()
        await self.services.db(self.services.store.operators.add_token, "hr1", digest, None, "admin")
        url = "ws://127.0.0.1:%d/api/live" % self.get_http_port()
        everyone = await websocket_connect(HTTPRequest(url, headers=self.bearer()))  # the config's api_token
        scoped = await websocket_connect(HTTPRequest(url, headers={"Authorization": "Bearer " + token}))

        async def post(path, body):
            resp = await self.http_client.fetch(self.get_url(path), method="POST", body=json.dumps(body),
                                                headers={**self.bearer(), "Content-Type": "application/json"})
            return json.loads(resp.body)

        await post("/api/conversations/assign", {"app": "helpdesk", "user": "zhangsan", "assignee": "admin"})
        note = await post("/api/notes", {"app": "helpdesk", "user": "zhangsan", "text": "看一下"})
        await post("/api/conversations/state", {"app": "quiet", "user": "zhangsan", "state": "closed"})
        events = await self.events(everyone, 3)
        self.assertEqual(events[0], {"type": "assignment", "app": "helpdesk", "user": "zhangsan", "assignee": "admin",
                                     "state": "open", "updated_by": "api", "updated_at": events[0]["updated_at"]})
        self.assertEqual(events[1], {"type": "note", "app": "helpdesk", "user": "zhangsan", "note": note})
        self.assertEqual((events[2]["type"], events[2]["app"], events[2]["state"]), ("assignment", "quiet", "closed"))
        # The account limited to quiet gets quiet's event only.
        [only] = await self.events(scoped, 1)
        self.assertEqual((only["app"], only["state"]), ("quiet", "closed"))
        with self.assertRaises(asyncio.TimeoutError):
            await self.events(scoped, 1, timeout=0.5)
        everyone.close()
        scoped.close()


class ExportTest(AssignTestCase):
    def setUp(self):
        super().setUp()
        self.callback(text("第一条"), app="quiet", agent_id="1000003")
        self.api("/api/notes", "POST", {"app": "quiet", "user": "zhangsan", "text": "=内部备注"})
        self.callback(text("第二条"), app="quiet", agent_id="1000003")

    def test_the_download_leaves_notes_out_unless_asked(self):
        status, body = self.api("/api/export")
        self.assertEqual(status, 200)
        self.assertNotIn("内部备注", body.decode())
        self.assertEqual(self.api("/api/export", notes="0")[1], body)
        status, body = self.api("/api/export", notes="1", app="quiet", user="zhangsan")
        rows = [json.loads(line) for line in body.decode().splitlines()]
        self.assertEqual([r.get("content") or r.get("text") for r in rows], ["第一条", "=内部备注", "第二条"])
        self.assertEqual((rows[1]["type"], rows[1]["author"]), ("note", "admin"))
        status, body = self.api("/api/export", notes="1", format="csv")
        cells = list(csv.DictReader(io.StringIO(body.decode())))
        self.assertEqual([(c["direction"], c["content"]) for c in cells],
                         [("in", "第一条"), ("note", "'=内部备注"), ("in", "第二条")])  # formula-escaped too
        self.assertEqual(cells[1]["from_user"], "admin")
        self.assertEqual(self.api("/api/export", notes="yes")[0], 400)
        self.assertEqual(self.api("/api/export", notes="1", q="第一")[0], 400)

    def test_the_command_leaves_notes_out_unless_asked(self):
        plain = wecomd("export", "-c", str(self.config.path))
        self.assertEqual(plain.returncode, 0, plain.stderr)
        self.assertNotIn("内部备注", plain.stdout)
        self.assertEqual(len(plain.stdout.splitlines()), 2)
        noted = wecomd("export", "--notes", "--app", "quiet", "-c", str(self.config.path))
        self.assertEqual(noted.returncode, 0, noted.stderr)
        rows = [json.loads(line) for line in noted.stdout.splitlines()]
        self.assertEqual([r.get("type") for r in rows], [None, "note", None])
        refused = wecomd("export", "--notes", "--type", "text", "-c", str(self.config.path))
        self.assertEqual(refused.returncode, 2)
        self.assertIn("--notes", refused.stderr)
