"""Operator accounts on a real server: roles enforced on every route, app scopes, sessions and tokens
that end with the account, the audit log. The role x route matrix below is what the README lists."""
from __future__ import annotations

import json

from tornado import web
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.testing import gen_test
from tornado.websocket import websocket_connect

from support.base import WecomdTestCase
from wecomd.handlers.base import BaseHandler

PASSWORD = "pw-" + "x" * 12
_MSG_IDS = iter(range(7300000000000000001, 7400000000000000000))


def text_xml(content: str, sender: str = "zhangsan") -> str:
    return ("<xml><ToUserName><![CDATA[ww0123456789abcdef]]></ToUserName><FromUserName><![CDATA[%s]]>"
            "</FromUserName><CreateTime>1764370000</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            "<Content><![CDATA[%s]]></Content><MsgId>%d</MsgId><AgentID>1000002</AgentID></xml>"
            % (sender, content, next(_MSG_IDS)))

# pattern -> {method: the least role}; public routes are test_auth's business.
ROLE_MATRIX = {
    "/metrics$": {"GET": "viewer"},
    "/$": {"GET": "viewer"},
    "/api/apps$": {"GET": "viewer"},
    "/api/me$": {"GET": "viewer"},
    "/api/conversations$": {"GET": "viewer"},
    "/api/conversations/read$": {"POST": "viewer"},
    "/api/export$": {"GET": "viewer"},
    "/api/messages$": {"GET": "viewer", "POST": "operator"},
    "/api/messages/([0-9]{1,18})$": {"GET": "viewer"},
    "/api/messages/([0-9]{1,18})/retry$": {"POST": "operator"},
    "/api/messages/([0-9]{1,18})/recall$": {"POST": "operator"},
    "/api/media/([0-9]{1,18})$": {"GET": "viewer"},
    "/api/(?:messages|media)/[0-9]{19,}(?:/retry|/recall)?$": {"GET": "viewer", "POST": "viewer"},
    "/api/takeover/resume$": {"POST": "operator"},
    "/api/rules$": {"GET": "viewer"},
    "/api/live$": {"GET": "viewer"},
    "/api/operators$": {"GET": "admin", "POST": "admin"},
    "/api/operators/([A-Za-z0-9._@-]{1,64})$": {"GET": "admin", "POST": "admin"},
    "/api/tokens$": {"GET": "admin", "POST": "admin"},
    "/api/tokens/([0-9]{1,18})/revoke$": {"POST": "admin"},
    "/api/audit$": {"GET": "admin"},
    "/api/contact$": {"GET": "viewer"},
    "/api/assignees$": {"GET": "viewer"},
    "/api/conversations/assign$": {"POST": "operator"},
    "/api/conversations/state$": {"GET": "viewer", "POST": "operator"},
    "/api/notes$": {"GET": "viewer", "POST": "operator"},
    "/api/quick-replies$": {"GET": "viewer", "POST": "operator"},
    "/api/quick-replies/([0-9]{1,18})$": {"POST": "operator", "DELETE": "operator"},
    "/api/kf/session$": {"GET": "viewer", "POST": "operator"},
}


class RoleMatrixTest(WecomdTestCase):
    def test_every_private_route_declares_the_role_of_each_method(self):
        seen = {}
        for rule in self._app.wildcard_router.rules:
            handler = rule.target
            if issubclass(handler, web.StaticFileHandler) or handler.public:
                continue
            methods = [m for m in ("GET", "POST", "PUT", "DELETE", "PATCH")
                       if getattr(handler, m.lower()) is not getattr(web.RequestHandler, m.lower())]
            seen[rule.matcher.regex.pattern] = {m: handler.required_role(m) for m in methods}
        self.assertEqual(seen, ROLE_MATRIX)
        self.assertTrue(all(issubclass(rule.target, (BaseHandler, web.StaticFileHandler))
                            for rule in self._app.wildcard_router.rules))


class RolesTest(WecomdTestCase):
    def as_(self, name, role, apps=None):
        self.add_operator(name, role, PASSWORD, apps)
        headers = self.login(name, PASSWORD)
        return headers, self.xsrf

    def call(self, session, path, method="GET", body=None):
        headers, xsrf = session
        headers = dict(headers)
        if method != "GET":
            headers["X-XSRFToken"] = xsrf
        return self.api(path, method=method, body=body, headers=headers)

    def test_a_viewer_reads_and_every_write_is_refused_with_nothing_stored_or_sent(self):
        self.assertEqual(self.callback(text_xml(content="打印机坏了")).code, 200)
        stored = self.rows()
        viewer = self.as_("ann", "viewer")
        self.assertEqual(self.call(viewer, "/api/messages")[0], 200)
        self.assertEqual(self.call(viewer, "/api/conversations")[0], 200)
        self.assertEqual(self.call(viewer, "/api/me")[1], {"name": "ann", "role": "viewer", "apps": None})
        refused = [
            ("/api/messages", {"app": "helpdesk", "to_user": "zhangsan", "content": "好的"}),
            ("/api/messages/%d/retry" % stored[-1]["id"], {}),
            ("/api/takeover/resume", {"app": "helpdesk", "user": "zhangsan"}),
            ("/api/operators", {"name": "x1", "role": "admin", "password": PASSWORD}),
            ("/api/tokens", {"operator": "ann"}),
        ]
        for path, body in refused:
            status, data = self.call(viewer, path, "POST", body)
            self.assertEqual(status, 403, path)
            self.assertIn("ann is a viewer", data["error"])
        self.assertEqual(self.call(viewer, "/api/audit")[0], 403)
        self.assertEqual(self.rows(), stored)
        self.assertEqual(self.fake.sent, [])
        self.assertEqual(self.db(self.services.store.operators.all)[0]["name"], "ann")
        self.assertEqual(len(self.db(self.services.store.operators.all)), 1)

    def test_an_operator_replies_and_it_is_audited_but_cannot_manage_operators(self):
        operator = self.as_("li", "operator")
        status, row = self.call(operator, "/api/messages", "POST", {"app": "helpdesk", "to_user": "zhangsan",
                                                                    "content": "马上处理"})
        self.assertEqual(status, 201)
        self.assertEqual(row["operator"], "li")
        self.wait_for(lambda: self.fake.sent)
        self.assertEqual(self.call(operator, "/api/operators")[0], 403)
        audit, _ = self.db(self.services.store.audit.page, actor="li")
        self.assertEqual([(a["action"], a["target"]) for a in audit],
                         [("takeover", "conversation:helpdesk/zhangsan"), ("reply", "conversation:helpdesk/zhangsan"),
                          ("login", None)])
        self.assertEqual(audit[1]["detail"], {"message_ids": [row["id"]]})
        self.assertTrue(audit[0]["detail"]["until"].endswith("Z"))  # automation paused until then

    def test_an_account_limited_to_an_app_never_sees_the_others(self):
        self.callback(text_xml(content="helpdesk 的消息"), app="helpdesk")
        self.callback(text_xml(content="quiet 的消息"), app="quiet")
        other = [row for row in self.rows() if row["app"] == "quiet"][0]
        scoped = self.as_("hr1", "operator", ["helpdesk"])
        _, page = self.call(scoped, "/api/messages")
        self.assertEqual({m["app"] for m in page["messages"]}, {"helpdesk"})
        _, page = self.call(scoped, "/api/messages?q=" + "消息")
        self.assertEqual({m["app"] for m in page["messages"]}, {"helpdesk"})
        _, convs = self.call(scoped, "/api/conversations")
        self.assertEqual({c["app"] for c in convs["conversations"]}, {"helpdesk"})
        self.assertEqual([a["name"] for a in self.call(scoped, "/api/apps")[1]["apps"]], ["helpdesk"])
        self.assertEqual(self.call(scoped, "/api/messages?app=quiet")[0], 403)
        self.assertEqual(self.call(scoped, "/api/messages/%d" % other["id"])[0], 403)
        self.assertEqual(self.call(scoped, "/api/media/%d" % other["id"])[0], 403)
        status, body = self.call(scoped, "/api/export")
        self.assertEqual(status, 200)
        self.assertEqual({json.loads(line)["app"] for line in body.decode().splitlines()}, {"helpdesk"})
        status, _ = self.call(scoped, "/api/messages", "POST", {"app": "quiet", "to_user": "x", "content": "y"})
        self.assertEqual(status, 403)
        self.assertEqual(self.call(scoped, "/api/takeover/resume", "POST", {"app": "quiet", "user": "x"})[0], 403)
        self.assertEqual(self.fake.sent, [])

    def test_disabling_or_a_new_password_ends_the_sessions_at_the_next_request(self):
        first = self.as_("li", "operator")
        self.assertEqual(self.call(first, "/api/me")[0], 200)
        self.db(self.services.store.operators.update, "li", disabled=True)
        self.assertEqual(self.call(first, "/api/me")[0], 401)
        self.db(self.services.store.operators.update, "li", disabled=False)
        self.assertEqual(self.call(first, "/api/me")[0], 200)  # the same password: the session holds again
        admin = self.session()
        status, _ = self.api("/api/operators/li", "POST", {"password": "another-password"},
                             headers={**admin, "X-XSRFToken": self.xsrf})
        self.assertEqual(status, 200)
        self.assertEqual(self.call(first, "/api/me")[0], 401)
        self.assertEqual(self.call((self.login("li", "another-password"), self.xsrf), "/api/me")[0], 200)
        actions = [a["action"] for a in self.db(self.services.store.audit.page, actor="admin")[0]]
        self.assertIn("operator_change", actions)

    def test_a_disabled_account_cannot_sign_in(self):
        self.add_operator("li", "operator", PASSWORD)
        self.db(self.services.store.operators.update, "li", disabled=True)
        resp = self.fetch("/login", method="POST", body="username=li&password=x", raise_error=False)
        self.assertEqual(resp.code, 403)  # no XSRF: refused before any check
        from support.base import _cookie
        page = self.fetch("/login")
        xsrf = _cookie(page, "_xsrf")
        resp = self.fetch("/login", method="POST", follow_redirects=False, headers={"Cookie": "_xsrf=" + xsrf},
                          body="username=li&password=%s&_xsrf=%s" % (PASSWORD, xsrf))
        self.assertEqual(resp.code, 403)
        failed = self.db(self.services.store.audit.page, action="login_failed")[0]
        self.assertEqual([(a["actor"], a["client"]) for a in failed], [("li", "127.0.0.1")])


class TokensTest(WecomdTestCase):
    def create_token(self, operator):
        admin = self.session()
        status, row = self.api("/api/tokens", "POST", {"operator": operator, "label": "script"},
                               headers={**admin, "X-XSRFToken": self.xsrf})
        self.assertEqual(status, 201)
        return row

    def test_a_token_has_its_operators_role_is_shown_once_and_revocable(self):
        self.add_operator("ann", "viewer", PASSWORD)
        row = self.create_token("ann")
        token = row.pop("token")
        self.assertTrue(token.startswith("wcd_"))
        status, listed = self.api("/api/tokens")
        self.assertEqual(listed["tokens"][0]["id"], row["id"])
        self.assertNotIn(token, json.dumps(listed))
        self.assertEqual(self.api("/api/me", headers=self.bearer(token))[1]["role"], "viewer")
        status, _ = self.api("/api/messages", "POST", {"app": "helpdesk", "to_user": "z", "content": "x"},
                             headers=self.bearer(token))
        self.assertEqual(status, 403)
        self.db(self.services.store.operators.update, "ann", disabled=True)
        self.assertEqual(self.api("/api/me", headers=self.bearer(token))[0], 401)
        self.db(self.services.store.operators.update, "ann", disabled=False)
        status, _ = self.api("/api/tokens/%d/revoke" % row["id"], "POST", {},
                             headers={**self.session(), "X-XSRFToken": self.xsrf})
        self.assertEqual(status, 200)
        self.assertEqual(self.api("/api/me", headers=self.bearer(token))[0], 401)
        actions = [a["action"] for a in self.api("/api/audit", action="")[1]["audit"]]
        self.assertEqual(actions[:2], ["token_revoke", "token_create"])

    def test_the_config_api_token_is_an_admin(self):
        self.assertEqual(self.api("/api/me", headers=self.bearer())[1], {"name": "api", "role": "admin", "apps": None})
        self.assertEqual(self.api("/api/audit", headers=self.bearer())[0], 200)

    @gen_test
    async def test_the_websocket_accepts_an_operators_token_and_scopes_its_events(self):
        await self.services.db(self.services.store.operators.add, "hr1", "viewer", "h", ["helpdesk"])
        from wecomd import accounts
        token, digest = accounts.new_token()
        await self.services.db(self.services.store.operators.add_token, "hr1", digest, None, "admin")
        url = "ws://127.0.0.1:%d/api/live" % self.get_http_port()
        ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": "Bearer " + token}))
        self.services.hub.publish({"type": "message", "message": {"id": 1, "app": "quiet"}})
        self.services.hub.publish({"type": "message", "message": {"id": 2, "app": "helpdesk"}})
        self.services.hub.publish({"type": "status", "id": 3, "app": "quiet", "status": "sent", "error": None})
        self.services.hub.flush()
        frame = json.loads(await ws.read_message())
        self.assertEqual([event["message"]["id"] for event in frame], [2])
        ws.close()
        with self.assertRaises(HTTPClientError) as caught:
            await websocket_connect(HTTPRequest(url, headers={"Authorization": "Bearer wcd_unknown"}))
        self.assertEqual(caught.exception.code, 401)
