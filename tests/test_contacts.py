"""The contact directory on a real server and the sandbox WeCom: names instead of UserIDs in the
conversation list, the thread, the live feed, search and exports; one WeCom request per user however
many ask; errors never block and are cached with their reason; refreshed after contact_refresh_hours."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta

from tornado.testing import gen_test

from support.base import WecomdTestCase
from wecomd.contacts import Directory

_MSG_IDS = iter(range(7500000000000000001, 7600000000000000000))


def text_xml(sender: str, content: str = "你好") -> str:
    return ("<xml><ToUserName><![CDATA[ww0123456789abcdef]]></ToUserName><FromUserName><![CDATA[%s]]>"
            "</FromUserName><CreateTime>1764370000</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            "<Content><![CDATA[%s]]></Content><MsgId>%d</MsgId><AgentID>1000002</AgentID></xml>"
            % (sender, content, next(_MSG_IDS)))


def user_gets(fake) -> list:
    return [query["userid"] for path, query in fake.calls if path == "/cgi-bin/user/get"]


class ContactsTest(WecomdTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake.departments = [{"id": 1, "name": "总部", "parentid": 0}, {"id": 7, "name": "IT 支持部", "parentid": 1}]
        self.fake.users.update({"zhangsan": {"name": "张三", "department": [7], "position": "工程师"},
                                "lisi": {"name": "李四", "department": [1, 7]}})

    def names(self) -> dict:
        _, data = self.api("/api/conversations")
        return {c["user"]: c["user_name"] for c in data["conversations"]}

    def test_names_appear_in_the_list_the_thread_search_and_the_export(self):
        for user in ("zhangsan", "lisi", "wangwu"):
            self.assertEqual(self.callback(text_xml(user, "打印机坏了")).code, 200)
        self.assertEqual(self.names(), {"zhangsan": None, "lisi": None, "wangwu": None})  # cold: UserIDs
        self.wait_for(lambda: len(user_gets(self.fake)) == 3)
        self.wait_for(lambda: self.names() == {"zhangsan": "张三", "lisi": "李四", "wangwu": None})
        status, contact = self.api("/api/contact", app="helpdesk", user="zhangsan")
        self.assertEqual((status, contact["name"], contact["departments"], contact["position"]),
                         (200, "张三", ["IT 支持部"], "工程师"))
        _, page = self.api("/api/messages", user="zhangsan")
        self.assertEqual({m["user_name"] for m in page["messages"]}, {"张三"})  # inbound and the answer
        _, found = self.api("/api/messages", q="张三")
        self.assertEqual({m["from_user"] for m in found["messages"] if m["direction"] == "in"}, {"zhangsan"})
        _, body = self.api("/api/export")
        exported = [json.loads(line) for line in body.decode().splitlines()]
        self.assertEqual({(m["from_user"], m["user_name"]) for m in exported if m["direction"] == "in"},
                         {("zhangsan", "张三"), ("lisi", "李四"), ("wangwu", None)})
        # Asked once each, however many pages asked; departments listed once for the corp.
        self.assertEqual(sorted(user_gets(self.fake)), ["lisi", "wangwu", "zhangsan"])
        self.assertEqual(sum(1 for path, _ in self.fake.calls if path == "/cgi-bin/department/list"), 1)

    def test_no_permission_is_cached_with_its_reason_and_never_blocks(self):
        self.fake.hidden_users.add("zhangsan")
        self.assertEqual(self.callback(text_xml("zhangsan")).code, 200)
        status, contact = self.api("/api/contact", app="helpdesk", user="zhangsan")
        self.assertEqual((status, contact["name"], contact["errcode"]), (200, None, 60011))
        self.assertEqual(self.names(), {"zhangsan": None})
        self.assertEqual(self.db(self.services.store.contacts.errors)[0]["errcode"], 60011)
        self.api("/api/conversations")
        self.assertEqual(user_gets(self.fake), ["zhangsan"])  # not asked again before the refresh time

    def test_the_contact_route_refuses_bad_input_and_other_apps(self):
        self.assertEqual(self.api("/api/contact", app="nosuch", user="x")[0], 400)
        self.assertEqual(self.api("/api/contact", app="helpdesk")[0], 400)
        self.add_operator("hr1", "viewer", "pw-" + "x" * 12, ["quiet"])
        headers = self.login("hr1", "pw-" + "x" * 12)
        self.assertEqual(self.api("/api/contact", app="helpdesk", user="zhangsan", headers=headers)[0], 403)
        self.assertEqual(user_gets(self.fake), [])

    @gen_test
    async def test_live_events_carry_the_name_and_a_contact_event_follows_a_lookup(self):
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect
        from support.config import API_TOKEN

        url = "ws://127.0.0.1:%d/api/live" % self.get_http_port()
        ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": "Bearer " + API_TOKEN}))
        self.services.publish({"type": "message", "message": {"id": 1, "app": "helpdesk", "direction": "in",
                                                               "from_user": "lisi", "to_user": "x"}})
        first = json.loads(await ws.read_message())
        self.assertEqual(first[0]["message"]["user_name"], None)
        events = []
        while not any(e["type"] == "contact" for e in events):
            events += json.loads(await ws.read_message())
        self.assertIn({"type": "contact", "app": "helpdesk", "user": "lisi", "user_name": "李四"}, events)
        self.services.publish({"type": "message", "message": {"id": 2, "app": "helpdesk", "direction": "in",
                                                               "from_user": "lisi", "to_user": "x"}})
        again = json.loads(await ws.read_message())
        self.assertEqual(again[0]["message"]["user_name"], "李四")
        ws.close()


class DirectoryTest(WecomdTestCase):
    @gen_test
    async def test_one_request_per_user_in_flight_and_a_refresh_after_the_configured_hours(self):
        self.fake.users["zhangsan"] = {"name": "张三"}
        now = [datetime(2026, 12, 3, 8, 0, 0)]
        directory = Directory(self.services.store, self.services.read, self.services.db, self.services.wecom,
                              self.config, lambda event: None, lambda: now[0])
        rows = [{"app": "helpdesk", "user": "zhangsan"} for _ in range(20)]
        await asyncio.gather(*(directory.lookup("helpdesk", "zhangsan") for _ in range(10)),
                             directory.annotate(rows))
        await directory.close()
        self.assertEqual(user_gets(self.fake), ["zhangsan"])
        self.fake.users["zhangsan"] = {"name": "张三丰"}
        now[0] += timedelta(hours=self.config.wecom.contact_refresh_hours - 1)
        await directory.annotate([{"app": "helpdesk", "user": "zhangsan"}])
        await directory.close()
        self.assertEqual(user_gets(self.fake), ["zhangsan"])  # still fresh
        now[0] += timedelta(hours=2)
        await directory.annotate([{"app": "helpdesk", "user": "zhangsan"}])
        await directory.close()
        self.assertEqual(user_gets(self.fake), ["zhangsan", "zhangsan"])
        self.assertEqual(directory.name("helpdesk", "zhangsan"), "张三丰")


class UserNameRuleTest(WecomdTestCase):
    extra_config = """
[rule:greet]
app = helpdesk
when = text contains 你好
reply = 你好，{user_name}！
"""

    def test_user_name_in_a_passive_reply_is_the_contact_name_once_known_else_the_userid(self):
        self.fake.users.update({"zhangsan": {"name": "张三", "department": [1]}})
        first = self.peer.read_reply(self.callback(text_xml("zhangsan", "你好")).body)
        self.assertIn("你好，zhangsan！", first)  # not known yet: never looked up on the way to a passive reply
        self.io_loop.run_sync(lambda: self.services.directory.lookup("helpdesk", "zhangsan"))  # as the console does
        second = self.peer.read_reply(self.callback(text_xml("zhangsan", "你好 again")).body)
        self.assertIn("你好，张三！", second)
        unknown = self.peer.read_reply(self.callback(text_xml("nobody", "你好")).body)
        self.assertIn("你好，nobody！", unknown)
