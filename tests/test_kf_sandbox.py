"""微信客服 in the sandbox WeCom (wecomd.wecom.sandbox_kf) over real loopback HTTP with the real
WecomClient, and `wecomd simulate --kf` against a callback receiver written with wechatpy."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

from defusedxml import ElementTree
from tornado import httpclient, web
from tornado.httpserver import HTTPServer
from tornado.testing import AsyncTestCase, bind_unused_port, gen_test
from wechatpy.enterprise.crypto import WeChatCrypto

from support.config import write_config
from support.peer import AES_KEY, CORP_ID, TOKEN
from wecomd.cli import simulate as simulate_cli
from wecomd.config import AppConfig
from wecomd.wecom import kf as kfproto, sandbox, sandbox_kf
from wecomd.wecom.api import WecomApiError, WecomClient
from wecomd.wecom.sandbox import FakeWecom
from wecomd.wecom.sandbox_kf import (ACCOUNT_LIST, CUSTOMER_BATCHGET, RECALL_MSG, SEND_MSG, SEND_ON_EVENT,
                                     SERVICER_LIST, STATE_GET, STATE_TRANS, SYNC_MSG)

SECRET = "kf-app-secret-0123456789abcdef"
APP = AppConfig(name="helpdesk", corp_id=CORP_ID, agent_id="1000002", token=TOKEN, reply="",
                encoding_aes_key=AES_KEY, secret=SECRET, kf=True)
KFID, CUSTOMER = sandbox_kf.DEMO_ACCOUNT, "wmDemoXiaoming"
HOUR = 3600.0


class SandboxCase(AsyncTestCase):
    """The sandbox with the demo's kf account on a loopback port, and a WecomClient calling it."""

    def setUp(self) -> None:
        super().setUp()
        self.fake = FakeWecom({SECRET: CORP_ID})
        self.kf = self.fake.kf
        sandbox_kf.demo_accounts(self.kf)
        self.server, self.base = self.io_loop.run_sync(lambda: sandbox.start(self.fake))
        self.client = WecomClient(self.base)
        self.http = httpclient.AsyncHTTPClient(force_instance=True)

    def tearDown(self) -> None:
        self.client.close()
        self.http.close()
        self.server.stop()
        self.io_loop.run_sync(self.server.close_all_connections)
        super().tearDown()

    async def call(self, path: str, body=None, method: str = "POST", **params) -> dict:
        return await self.client.call(APP, method, path, json_body=body, params=params or None)

    async def refused(self, path: str, body=None, method: str = "POST", **params) -> int:
        try:
            answer = await self.call(path, body, method, **params)
        except WecomApiError as exc:
            return exc.errcode
        raise AssertionError("%s was accepted: %r" % (path, answer))

    async def send(self, content: str = "您好", customer: str = CUSTOMER, **extra) -> dict:
        return await self.call(SEND_MSG, dict({"touser": customer, "open_kfid": KFID, "msgtype": "text",
                                               "text": {"content": content}}, **extra))

    async def trans(self, state: int, servicer: str = "", customer: str = CUSTOMER) -> dict:
        body = {"open_kfid": KFID, "external_userid": customer, "service_state": state}
        if servicer:
            body["servicer_userid"] = servicer
        return await self.call(STATE_TRANS, body)

    async def state(self, customer: str = CUSTOMER) -> tuple:
        answer = await self.call(STATE_GET, {"open_kfid": KFID, "external_userid": customer})
        return answer["service_state"], answer["servicer_userid"]

    async def pull_all(self, limit: int = 1000, token=None, cursor=None) -> tuple:
        """Pull like the daemon must: loop on has_more, never on the list. (items, pages, last cursor)."""
        items, pages = [], []
        while True:
            body = {"open_kfid": KFID, "limit": limit}
            if token:
                body["token"] = token
            if cursor:
                body["cursor"] = cursor
            answer = await self.call(SYNC_MSG, body)
            pages.append((len(answer["msg_list"]), answer["has_more"]))
            items += answer["msg_list"]
            cursor = answer["next_cursor"]
            assert isinstance(cursor, str) and len(cursor.encode()) <= 64
            if not answer["has_more"]:
                return items, pages, cursor

    async def raw(self, path: str, body: dict) -> tuple:
        response = await self.http.fetch(self.base + path, method="POST", body=json.dumps(body), raise_error=False)
        return response.code, json.loads(response.body)



class KfSandboxTest(SandboxCase):
    # --- accounts and servicers -------------------------------------------------------------------

    @gen_test
    async def test_accounts_and_servicers(self):
        self.kf.add_account("wkOTHER", "门店咨询", manage_privilege=False)
        listed = (await self.call(ACCOUNT_LIST, {"offset": 0, "limit": 100}))["account_list"]
        assert [(a["open_kfid"], a["name"], a["manage_privilege"]) for a in listed] == [
            (KFID, "售后客服", True), ("wkOTHER", "门店咨询", False)]
        assert (await self.call(ACCOUNT_LIST, {"offset": 1, "limit": 1}))["account_list"][0]["open_kfid"] == "wkOTHER"
        servicers = (await self.call(SERVICER_LIST, method="GET", open_kfid=KFID))["servicer_list"]
        assert servicers == [{"userid": "zhangsan", "status": 0}, {"userid": "lisi", "status": 1}]
        assert await self.refused(SERVICER_LIST, method="GET", open_kfid="wkNOPE") == 95004
        assert await self.refused(SERVICER_LIST, method="GET") == 40058
        assert await self.refused(SERVICER_LIST, {"open_kfid": KFID}) == 40058  # GET only
        assert await self.refused(SYNC_MSG, method="GET", open_kfid=KFID) == 40058  # POST only
        response = await self.http.fetch(self.base + SYNC_MSG, method="POST", body="{}", raise_error=False)
        assert json.loads(response.body)["errcode"] == 41001  # no access_token

    # --- sync_msg ---------------------------------------------------------------------------------

    @gen_test
    async def test_pages_follow_has_more_from_a_cursor(self):
        pushed = [self.kf.push(KFID, CUSTOMER, "第%d条" % i) for i in range(5)]
        token = pushed[-1][1]
        items, pages, cursor = await self.pull_all(limit=2, token=token)
        assert pages == [(2, 1), (2, 1), (1, 0)]
        assert [i["msgid"] for i in items] == [item["msgid"] for item, _ in pushed]
        assert items[0]["text"] == {"content": "第0条"} and items[0]["origin"] == 3
        assert items[0]["open_kfid"] == KFID and items[0]["external_userid"] == CUSTOMER
        assert all(call["token"] == token and call["limit"] == 2 for call in self.kf.sync_calls)
        assert "cursor" not in self.kf.sync_calls[0] and self.kf.sync_calls[1]["cursor"]
        assert (await self.pull_all(cursor=cursor))[0] == []  # nothing new after the cursor
        newer, _ = self.kf.push(KFID, CUSTOMER, "还有一条")
        assert [i["msgid"] for i in (await self.pull_all(cursor=cursor))[0]] == [newer["msgid"]]

    @gen_test
    async def test_empty_pages_with_has_more_come_before_the_messages(self):
        pushed = [self.kf.push(KFID, CUSTOMER, text)[0]["msgid"] for text in ("一", "二")]
        self.kf.empty_pages = 2
        items, pages, _ = await self.pull_all()
        assert pages == [(0, 1), (0, 1), (2, 0)]  # a loop on msg_list would have stopped at once
        assert [i["msgid"] for i in items] == pushed and self.kf.empty_pages == 0

    @gen_test
    async def test_duplicate_next_repeats_an_item_on_the_next_page(self):
        pushed = [self.kf.push(KFID, CUSTOMER, text)[0]["msgid"] for text in ("一", "二", "三")]
        self.kf.duplicate_next = True
        items, pages, _ = await self.pull_all(limit=2)
        assert [i["msgid"] for i in items] == [pushed[0], pushed[1], pushed[1], pushed[2]]
        assert list(dict.fromkeys(i["msgid"] for i in items)) == pushed and not self.kf.duplicate_next

    @gen_test
    async def test_without_a_cursor_only_the_last_3_days(self):
        self.kf.push(KFID, CUSTOMER, "太旧了", send_time=int(self.kf.now() - 3 * 24 * HOUR - 60))
        recent, _ = self.kf.push(KFID, CUSTOMER, "新的")
        assert [i["msgid"] for i in (await self.pull_all())[0]] == [recent["msgid"]]

    @gen_test
    async def test_bad_requests(self):
        self.kf.push(KFID, CUSTOMER, "x")
        self.kf.add_account("wkB", "B")
        _, _, cursor = await self.pull_all()
        for body in ({}, {"open_kfid": ""}, {"open_kfid": KFID, "limit": 0}, {"open_kfid": KFID, "limit": 1001},
                     {"open_kfid": KFID, "limit": "many"}, {"open_kfid": KFID, "cursor": "garbage!"},
                     {"open_kfid": KFID, "cursor": "A" * 65}, {"open_kfid": "wkB", "cursor": cursor}):
            assert await self.refused(SYNC_MSG, body) == 40058, body
        assert await self.refused(SYNC_MSG, {"open_kfid": "wkNOPE"}) == 95004
        self.fake.fail_next(SYNC_MSG, 45009)
        assert await self.refused(SYNC_MSG, {"open_kfid": KFID}) == 45009

    @gen_test
    async def test_callback_tokens_live_10_minutes_for_their_account(self):
        _, token = self.kf.push(KFID, CUSTOMER, "x")
        _, other = self.kf.push("wkB", "wmB", "y")
        assert len((await self.pull_all(token=token))[0]) == 1
        assert len((await self.pull_all())[0]) == 1  # the token is optional
        assert await self.refused(SYNC_MSG, {"open_kfid": KFID, "token": "ENCnotissued"}) == 95007
        assert await self.refused(SYNC_MSG, {"open_kfid": KFID, "token": other}) == 95007
        self.kf.advance(9 * 60)
        assert len((await self.pull_all(token=token))[0]) == 1
        self.kf.advance(61)
        assert await self.refused(SYNC_MSG, {"open_kfid": KFID, "token": token}) in kfproto.TOKEN_ERRORS
        _, fresh = self.kf.push(KFID, CUSTOMER, "z")
        assert len((await self.pull_all(token=fresh))[0]) == 2

    # --- send_msg -----------------------------------------------------------------------------------

    @gen_test
    async def test_the_reply_window_48_hours_and_5_messages(self):
        assert await self.refused(SEND_MSG, {"touser": CUSTOMER, "open_kfid": KFID, "msgtype": "text",
                                             "text": {"content": "在吗"}}) == 95001  # never wrote
        self.kf.push(KFID, CUSTOMER, "你好")
        msgids = [(await self.send("第%d条" % i))["msgid"] for i in range(5)]
        assert len(set(msgids)) == 5 and [s["msgid"] for s in self.kf.sent] == msgids
        assert self.kf.sent[0]["text"] == {"content": "第0条"} and self.kf.sent[0]["touser"] == CUSTOMER
        assert await self.refused(SEND_MSG, {"touser": CUSTOMER, "open_kfid": KFID, "msgtype": "text",
                                             "text": {"content": "第6条"}}) == 95002
        self.kf.push(KFID, CUSTOMER, "还有问题")  # writing again opens 5 more
        assert (await self.send("好的"))["msgid"]
        self.kf.advance(48 * HOUR + 1)
        assert await self.refused(SEND_MSG, {"touser": CUSTOMER, "open_kfid": KFID, "msgtype": "text",
                                             "text": {"content": "晚了"}}) == 95001
        assert len(self.kf.sent) == 6

    @gen_test
    async def test_a_msgid_is_used_once_per_account(self):
        self.kf.push(KFID, CUSTOMER, "你好")
        msgid = kfproto.send_msgid(41)
        assert (await self.send(msgid=msgid))["msgid"] == msgid
        assert await self.refused(SEND_MSG, {"touser": CUSTOMER, "open_kfid": KFID, "msgid": msgid,
                                             "msgtype": "text", "text": {"content": "again"}}) in kfproto.MSGID_USED
        assert [s["msgid"] for s in self.kf.sent] == [msgid]
        assert await self.refused(SEND_MSG, {"touser": CUSTOMER, "open_kfid": KFID, "msgid": "bad msgid!",
                                             "msgtype": "text", "text": {"content": "x"}}) == 40058

    @gen_test
    async def test_bodies_send_msg_refuses(self):
        self.kf.push(KFID, CUSTOMER, "你好")
        base = {"touser": CUSTOMER, "open_kfid": KFID}
        assert await self.refused(SEND_MSG, dict(base, msgtype="text", text={"content": "中" * 683})) == 45002
        assert await self.refused(SEND_MSG, dict(base, msgtype="text", text={"content": ""})) == 44004
        assert await self.refused(SEND_MSG, dict(base, msgtype="markdown", markdown={"content": "x"})) == 40008
        assert await self.refused(SEND_MSG, dict(base, msgtype="image", image={"media_id": "nope"})) == 40007
        assert await self.refused(SEND_MSG, {"open_kfid": KFID, "msgtype": "text", "text": {"content": "x"}}) == 40058
        media_id = self.fake.add_media(sandbox.sample_png(4, 4), "image/png", "a.png")
        assert (await self.call(SEND_MSG, dict(base, msgtype="image", image={"media_id": media_id})))["msgid"]
        menu = {"head_content": "满意吗?", "list": [{"type": "click", "click": {"id": "1", "content": "满意"}}]}
        assert (await self.call(SEND_MSG, dict(base, msgtype="msgmenu", msgmenu=menu)))["msgid"]
        assert [s["msgtype"] for s in self.kf.sent] == ["image", "msgmenu"]

    @gen_test
    async def test_no_send_while_a_human_serves_the_session(self):
        self.kf.push(KFID, CUSTOMER, "你好")
        await self.trans(3, "zhangsan")
        assert await self.state() == (3, "zhangsan")
        assert await self.refused(SEND_MSG, {"touser": CUSTOMER, "open_kfid": KFID, "msgtype": "text",
                                             "text": {"content": "机器人"}}) == kfproto.HUMAN_SERVING == 95018
        await self.trans(4)
        assert await self.refused(SEND_MSG, {"touser": CUSTOMER, "open_kfid": KFID, "msgtype": "text",
                                             "text": {"content": "结束了"}}) == 95013
        self.kf.push(KFID, CUSTOMER, "我又来了")  # a customer message makes an ended session new
        assert await self.state() == (0, "")
        assert (await self.send("欢迎回来"))["msgid"]

    @gen_test
    async def test_a_servicer_writing_from_the_client_means_a_human_serves(self):
        self.kf.push(KFID, CUSTOMER, "你好")
        item, _ = self.kf.push(KFID, CUSTOMER, "我是客服小张", origin=5, servicer_userid="zhangsan")
        assert item["servicer_userid"] == "zhangsan" and item["origin"] == 5
        assert await self.state() == (3, "zhangsan")
        assert await self.refused(SEND_MSG, {"touser": CUSTOMER, "open_kfid": KFID, "msgtype": "text",
                                             "text": {"content": "x"}}) == 95018

    # --- send_msg_on_event ------------------------------------------------------------------------

    @gen_test
    async def test_a_welcome_code_works_once_within_20_seconds(self):
        item, _ = self.kf.enter_session(KFID, CUSTOMER, scene="官网", scene_param="from=ad")
        event = item["event"]
        assert item["msgtype"] == "event" and item["origin"] == 4 and "external_userid" not in item
        assert event["event_type"] == "enter_session" and event["external_userid"] == CUSTOMER
        assert event["open_kfid"] == KFID and event["scene"] == "官网" and event["welcome_code"]
        answer = await self.call(SEND_ON_EVENT, kfproto.on_event_payload(
            event["welcome_code"], kfproto.event_msgid(1), "text", {"content": "欢迎光临"}))
        assert answer["msgid"] == "wecomd-ev-1"
        assert [(s["kind"], s["text"]["content"], s["external_userid"]) for s in self.kf.event_sends] == [
            ("welcome", "欢迎光临", CUSTOMER)]
        assert await self.refused(SEND_ON_EVENT, {"code": event["welcome_code"], "msgtype": "text",
                                                  "text": {"content": "again"}}) == 95007
        late = self.kf.enter_session(KFID, CUSTOMER)[0]["event"]["welcome_code"]
        self.kf.advance(21)
        assert await self.refused(SEND_ON_EVENT, {"code": late, "msgtype": "text", "text": {"content": "x"}}) == 95007
        menu_code = self.kf.enter_session(KFID, CUSTOMER)[0]["event"]["welcome_code"]
        assert await self.refused(SEND_ON_EVENT, {"code": menu_code, "msgtype": "link", "link": {"title": "t"}}) == 40008
        menu = {"head_content": "请选择", "list": [{"type": "click", "click": {"id": "1", "content": "查订单"}}]}
        assert (await self.call(SEND_ON_EVENT, {"code": menu_code, "msgtype": "msgmenu", "msgmenu": menu}))["msgid"]
        assert await self.refused(SEND_ON_EVENT, {"code": "never-issued", "msgtype": "text", "text": {"content": "x"}}) == 95007
        assert "welcome_code" not in self.kf.enter_session(KFID, CUSTOMER, welcome_code=False)[0]["event"]
        assert len(self.kf.event_sends) == 2

    # --- service_state ------------------------------------------------------------------------------

    @gen_test
    async def test_trans_only_documented_moves_and_their_msg_codes(self):
        self.kf.add_servicer(KFID, "wangwu")
        assert await self.state() == (4, "")  # not started
        assert await self.refused(STATE_TRANS, {"open_kfid": KFID, "external_userid": CUSTOMER,
                                                "service_state": 1}) == 95016
        self.kf.push(KFID, CUSTOMER, "你好")
        assert await self.state() == (0, "")
        assert await self.trans(1) == {"errcode": 0, "errmsg": "ok"}  # to the bot: no msg_code
        for bad in (0, 4):
            assert await self.refused(STATE_TRANS, {"open_kfid": KFID, "external_userid": CUSTOMER,
                                                    "service_state": bad}) == 95016
        queue_code = (await self.trans(2))["msg_code"]
        assert await self.refused(STATE_TRANS, {"open_kfid": KFID, "external_userid": CUSTOMER,
                                                "service_state": 1}) == 95016  # queued: only to a servicer
        for who in ("lisi", "nobody", ""):  # stopped, unknown, missing
            body = {"open_kfid": KFID, "external_userid": CUSTOMER, "service_state": 3, "servicer_userid": who}
            assert await self.refused(STATE_TRANS, body) == 95014, who
        human_code = (await self.trans(3, "zhangsan"))["msg_code"]
        assert await self.state() == (3, "zhangsan")
        assert await self.refused(SEND_ON_EVENT, {"code": queue_code, "msgtype": "text",
                                                  "text": {"content": "排队中"}}) == 95007  # no longer queued
        assert (await self.call(SEND_ON_EVENT, {"code": human_code, "msgtype": "text",
                                                "text": {"content": "客服小张为您服务"}}))["msgid"]
        for bad in (0, 1, 2):  # never back to the bot or the queue
            assert await self.refused(STATE_TRANS, {"open_kfid": KFID, "external_userid": CUSTOMER,
                                                    "service_state": bad}) == 95016
        assert "msg_code" not in await self.trans(3, "wangwu")  # another servicer: not the first change to 3
        assert await self.state() == (3, "wangwu")
        end_code = (await self.trans(4))["msg_code"]
        assert (await self.call(SEND_ON_EVENT, {"code": end_code, "msgtype": "text",
                                                "text": {"content": "感谢咨询"}}))["msgid"]
        assert [s["kind"] for s in self.kf.event_sends] == ["human", "end"]
        for bad in range(5):
            assert await self.refused(STATE_TRANS, {"open_kfid": KFID, "external_userid": CUSTOMER,
                                                    "service_state": bad}) == 95016
        self.kf.push(KFID, CUSTOMER, "又有问题")  # a new session: its first queue gives a code again
        assert (await self.trans(2))["msg_code"]
        assert await self.refused(STATE_TRANS, {"open_kfid": KFID, "external_userid": CUSTOMER,
                                                "service_state": 7}) == 40058

    @gen_test
    async def test_servicer_actions_arrive_as_events_with_their_codes(self):
        self.kf.push(KFID, CUSTOMER, "你好")
        await self.trans(2)
        taken, _ = self.kf.push_event(KFID, {"event_type": "session_status_change", "external_userid": CUSTOMER,
                                             "change_type": 1, "new_servicer_userid": "zhangsan"})
        assert await self.state() == (3, "zhangsan") and taken["event"]["msg_code"]
        assert (await self.call(SEND_ON_EVENT, {"code": taken["event"]["msg_code"], "msgtype": "text",
                                                "text": {"content": "您好"}}))["msgid"]
        ended, _ = self.kf.push_event(KFID, {"event_type": "session_status_change", "external_userid": CUSTOMER,
                                             "change_type": 3, "old_servicer_userid": "zhangsan"})
        assert await self.state() == (4, "")
        assert (await self.call(SEND_ON_EVENT, {"code": ended["event"]["msg_code"], "msgtype": "text",
                                                "text": {"content": "再见"}}))["msgid"]
        self.kf.push_event(KFID, {"event_type": "servicer_status_change", "servicer_userid": "lisi", "status": 1})
        servicers = (await self.call(SERVICER_LIST, method="GET", open_kfid=KFID))["servicer_list"]
        assert {"userid": "lisi", "status": 0} in servicers
        items = (await self.pull_all())[0]
        assert [i["event"]["event_type"] for i in items if i["msgtype"] == "event"] == [
            "session_status_change", "session_status_change", "servicer_status_change"]

    # --- customers and recalls ----------------------------------------------------------------------

    @gen_test
    async def test_batchget_at_most_100_ids(self):
        self.kf.push(KFID, "wmNewOne", "hi")
        self.kf.enter_session(KFID, "wmDemoLili", scene="小程序", scene_param="p=1")
        assert await self.refused(CUSTOMER_BATCHGET, {"external_userid_list": ["wm%d" % i for i in range(101)]}) == 40058
        assert await self.refused(CUSTOMER_BATCHGET, {"external_userid_list": []}) == 40058
        answer = await self.call(CUSTOMER_BATCHGET, {"external_userid_list": [CUSTOMER, "wmDemoLili", "wmNewOne", "wmUnknown"]})
        by_id = {c["external_userid"]: c for c in answer["customer_list"]}
        assert set(by_id) == {CUSTOMER, "wmDemoLili", "wmNewOne"} and answer["invalid_external_userid"] == ["wmUnknown"]
        assert by_id[CUSTOMER]["nickname"] == "小明" and by_id["wmDemoLili"]["gender"] == 2
        assert by_id["wmNewOne"]["nickname"] and by_id[CUSTOMER]["unionid"] and by_id[CUSTOMER]["avatar"]
        assert all("enter_session_context" not in c for c in answer["customer_list"])
        asked = await self.call(CUSTOMER_BATCHGET, {"external_userid_list": ["wmDemoLili", CUSTOMER],
                                                    "need_enter_session_context": 1})
        contexts = {c["external_userid"]: c["enter_session_context"] for c in asked["customer_list"]}
        assert contexts == {"wmDemoLili": {"scene": "小程序", "scene_param": "p=1"},
                            CUSTOMER: {"scene": "", "scene_param": ""}}
        ok = await self.call(CUSTOMER_BATCHGET, {"external_userid_list": ["wm%d" % i for i in range(100)]})
        assert len(ok["invalid_external_userid"]) == 100

    @gen_test
    async def test_recall_within_2_minutes_and_it_still_counts(self):
        self.kf.push(KFID, CUSTOMER, "你好")
        first = (await self.send("说错了"))["msgid"]
        self.kf.advance(119)
        assert await self.call(RECALL_MSG, {"open_kfid": KFID, "msgid": first}) == {"errcode": 0, "errmsg": "ok"}
        assert self.kf.recalled == [first]
        assert await self.refused(RECALL_MSG, {"open_kfid": KFID, "msgid": first}) == 40058  # once
        assert await self.refused(RECALL_MSG, {"open_kfid": KFID, "msgid": "never-sent"}) == 40058
        late = (await self.send("二"))["msgid"]
        self.kf.advance(121)
        assert await self.refused(RECALL_MSG, {"open_kfid": KFID, "msgid": late}) == 40058
        for text in ("三", "四", "五"):
            await self.send(text)
        assert await self.refused(SEND_MSG, {"touser": CUSTOMER, "open_kfid": KFID, "msgtype": "text",
                                             "text": {"content": "六"}}) == 95002  # the recalled one counted

    # --- the helper endpoints for other processes ---------------------------------------------------

    @gen_test
    async def test_sandbox_push_and_enter_endpoints(self):
        code, pushed = await self.raw("/sandbox/kf/push", {"open_kfid": KFID, "external_userid": CUSTOMER,
                                                           "content": "我要退货"})
        assert code == 200 and pushed["item"]["text"] == {"content": "我要退货"} and pushed["item"]["origin"] == 3
        items = (await self.pull_all(token=pushed["token"]))[0]
        assert [i["msgid"] for i in items] == [pushed["item"]["msgid"]]
        code, servicer = await self.raw("/sandbox/kf/push", {"open_kfid": KFID, "external_userid": CUSTOMER,
                                                             "content": "好的", "origin": 5, "servicer_userid": "zhangsan"})
        assert code == 200 and servicer["item"]["servicer_userid"] == "zhangsan"
        assert await self.state() == (3, "zhangsan")
        code, image = await self.raw("/sandbox/kf/push", {"open_kfid": KFID, "external_userid": CUSTOMER,
                                                          "msgtype": "image", "image": {"media_id": "M1"}})
        assert code == 200 and image["item"]["image"] == {"media_id": "M1"}
        code, entered = await self.raw("/sandbox/kf/enter", {"open_kfid": KFID, "external_userid": "wmDemoAwei",
                                                             "scene": "官网"})
        assert code == 200 and entered["item"]["event"]["welcome_code"] and entered["item"]["event"]["scene"] == "官网"
        code, plain = await self.raw("/sandbox/kf/enter", {"open_kfid": KFID, "external_userid": "wmDemoAwei",
                                                           "welcome_code": False})
        assert code == 200 and "welcome_code" not in plain["item"]["event"]
        for bad in ({}, {"open_kfid": KFID}, {"open_kfid": KFID, "external_userid": "a/b", "content": "x"},
                    {"open_kfid": KFID, "external_userid": CUSTOMER},  # text without content
                    {"open_kfid": KFID, "external_userid": CUSTOMER, "content": "x", "origin": 4}):
            code, answer = await self.raw("/sandbox/kf/push", bad)
            assert code == 400 and answer["error"], bad
        assert len(self.kf.log[KFID]) == 5


# --- wecomd simulate --kf -------------------------------------------------------------------------------


class Receiver(web.RequestHandler):
    """The daemon's side of a callback, written with wechatpy: decrypt, keep, answer an empty 200."""

    def initialize(self, seen: list) -> None:
        self.seen = seen
        self.crypto = WeChatCrypto(TOKEN, AES_KEY, CORP_ID)

    def post(self) -> None:
        args = [self.get_query_argument(n) for n in ("msg_signature", "timestamp", "nonce")]
        self.seen.append(self.crypto.decrypt_message(self.request.body, *args))
        self.set_status(200)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wecomd simulate")
    simulate_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


class SimulateKfTest(SandboxCase):
    def setUp(self) -> None:
        super().setUp()
        self.seen: list = []
        sock, port = bind_unused_port()
        self.receiver = HTTPServer(web.Application([(r"/callback/helpdesk", Receiver, dict(seen=self.seen))]))
        self.receiver.add_sockets([sock])
        self.url = "http://127.0.0.1:%d/callback/helpdesk" % port

    def tearDown(self) -> None:
        self.receiver.stop()
        self.io_loop.run_sync(self.receiver.close_all_connections)
        super().tearDown()

    async def simulate(self, *extra: str, url: str = "") -> tuple:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = await simulate_cli.run(parse(url or self.url, "--token", TOKEN, "--aes-key", AES_KEY,
                                                "--corp-id", CORP_ID, "--no-verify", *extra))
        return code, out.getvalue()

    def callbacks(self) -> list:
        fields = []
        for plaintext in self.seen:
            root = ElementTree.fromstring(plaintext.encode("utf-8"))
            fields.append({child.tag: child.text for child in root})
        return fields

    @gen_test
    async def test_a_customer_message_then_the_doorbell(self):
        code, out = await self.simulate("--kf", KFID, "--customer", "wmDemoLili", "--sandbox", self.base,
                                        "--content", "我的订单还没到", "--enter", "--repeat", "2")
        assert code == 0, out
        callbacks = self.callbacks()
        assert len(callbacks) == 4  # enter_session and the message, each callback sent twice
        for fields in callbacks:
            assert fields["MsgType"] == "event" and fields["Event"] == "kf_msg_or_event"
            assert fields["OpenKfId"] == KFID and fields["ToUserName"] == CORP_ID and fields["Token"]
        assert callbacks[0]["Token"] == callbacks[1]["Token"] != callbacks[2]["Token"] == callbacks[3]["Token"]
        items = (await self.pull_all(token=callbacks[3]["Token"]))[0]  # the daemon's pull, with the token
        assert [i["msgtype"] for i in items] == ["event", "text"]
        assert items[0]["event"]["event_type"] == "enter_session" and items[0]["event"]["welcome_code"]
        assert items[1]["text"]["content"] == "我的订单还没到" and items[1]["external_userid"] == "wmDemoLili"
        assert "kf: text msgid %s" % items[1]["msgid"] in out and "POST kf_msg_or_event #2 try 2/2: 200" in out

    @gen_test
    async def test_the_sandbox_from_the_config(self):
        with tempfile.TemporaryDirectory() as tmp:
            config = write_config(Path(tmp), api_base=self.base)
            code, out = await self.simulate("--kf", KFID, "-c", str(config), "--count", "2")
        assert code == 0, out
        assert len(self.callbacks()) == 2
        assert [i["external_userid"] for i in self.kf.log[KFID]] == ["wmDemoXiaoming"] * 2

    @gen_test
    async def test_usage_and_sandbox_errors(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert (await self.simulate("--kf", KFID))[0] == 2
            assert (await self.simulate("--kf", KFID, "--bot", "--sandbox", self.base))[0] == 2
        assert "--sandbox" in err.getvalue() and "--bot" in err.getvalue()
        code, out = await self.simulate("--kf", KFID, "--sandbox", self.url)  # not a sandbox
        assert code == 1 and "did not take it" in out and self.seen == []
