"""微信客服 end to end: the real server on a loopback port, its SQLite file, and the sandbox WeCom's
kf side (wecomd.wecom.sandbox_kf) on another; the customer's messages go into the sandbox and the
kf_msg_or_event callback rings the daemon, which pulls them as it would from WeCom."""
from __future__ import annotations

import asyncio
import time

from support.base import WecomdTestCase
from support.config import kf_app_section
from support.kf import SlowSync
from support.peer import CORP_ID
from wecomd.kf import pull as pullmod
from wecomd.kf.items import plain_text
from wecomd.kf.send import TAKEN_BY_HUMAN
from wecomd.store import StoreError
from wecomd.wecom import kf as kfproto
from wecomd.wecom.sandbox_kf import RECEPTION, STOPPED
from wecomd.wecom.simulate_kf import callback_plaintext

KFID, OTHER = "wkSupport01", "wkNotOurs02"
ALICE, BOB = "wmAliceExternal0001", "wmBobExternal0002"
RULES = """
[rule:price]
app = kefu
when = text contains 价格
reply = 价格表在官网：example.com/price

[rule:welcome]
app = kefu
when = event enter_session
reply = 欢迎光临，请问有什么可以帮您？

[rule:taken]
app = kefu
when = event session_status_change 1
reply = 人工客服已接入，请问有什么可以帮您？

[rule:ended]
app = kefu
when = event session_status_change 3
reply = 本次服务已结束，感谢您的咨询
"""


class KfTestCase(WecomdTestCase):
    app_reply = ""
    server_settings = {"kf_pull": "inline"}  # the pull in the daemon: the tests hold it (SlowSync) and look inside

    def setUp(self) -> None:
        reply = "\nreply = %s" % self.app_reply if self.app_reply else ""
        self.extra_config = kf_app_section(more="kf_accounts = %s%s" % (KFID, reply)) + RULES
        super().setUp()
        # The startup pull of the configured account found nothing: the tests count from here.
        self.wait_for(lambda: self.kf.sync_calls and not self.services.kf.puller._loops)
        del self.kf.sync_calls[:]

    def prepare_fake(self, fake) -> None:
        self.kf = fake.kf
        self.kf.add_account(KFID, "售后客服")
        self.kf.add_servicer(KFID, "zhangsan", RECEPTION)
        self.kf.add_servicer(KFID, "lisi", STOPPED)
        self.kf.add_customer(ALICE, "爱丽丝")
        self.kf.add_customer(BOB, "鲍勃")

    def ring(self, token: str, open_kfid: str = KFID):
        return self.callback(callback_plaintext(CORP_ID, open_kfid, token), app="kefu")

    def say(self, content: str, customer: str = ALICE, **kwargs) -> dict:
        """The customer writes; the callback rings; returns the pushed item (after a 200)."""
        item, token = self.kf.push(KFID, customer, content, **kwargs)
        resp = self.ring(token)
        assert resp.code == 200 and resp.body == b"", (resp.code, resp.body)
        return item

    def kf_rows(self) -> list:
        rows, found = [], None
        while True:
            page, found = self.db(self.services.store.messages.page, app="kefu", before=found, limit=500)
            rows += page
            if found is None:
                return rows

    def key(self, customer: str = ALICE) -> str:
        return kfproto.conversation_key(KFID, customer)


class PullTest(KfTestCase):
    def test_the_callback_is_answered_at_once_and_the_pull_carries_token_cursor_and_limit(self):
        first, token = self.kf.push(KFID, ALICE, "你好")
        resp = self.ring(token)
        self.assertEqual((resp.code, resp.body), (200, b""))
        row = self.stored_msg(first["msgid"])
        self.assertEqual((row["app"], row["from_user"], row["direction"], row["content"]),  # the conversation
                         ("kefu", self.key(), "in", "你好"))
        call = self.kf.sync_calls[0]
        self.assertEqual((call["open_kfid"], call["token"], call["limit"]), (KFID, token, pullmod.LIMIT))
        self.assertLessEqual(pullmod.LIMIT, 1000)
        self.assertEqual(call["cursor"], pullmod_cursor(self.kf, 0))  # where the startup pull left off

        second, token2 = self.kf.push(KFID, ALICE, "在吗")
        self.ring(token2)
        self.stored_msg(second["msgid"])
        cursor = self.db(self.services.store.kf.cursors)[0]["cursor"]
        self.assertEqual(self.kf.sync_calls[-1]["cursor"], pullmod_cursor(self.kf, 1))
        self.assertEqual(self.kf.sync_calls[-1]["token"], token2)
        self.assertTrue(cursor)
        self.assertEqual(len([r for r in self.kf_rows() if r["direction"] == "in"]), 2)

    def test_the_callback_is_answered_even_while_wecom_refuses_the_pull(self):
        refuse = self.kf.sync_msg

        def busy(body):
            self.kf.sync_calls.append(dict(body))
            from wecomd.wecom.sandbox_kf import KfRefusal
            raise KfRefusal(-1, "system busy")

        self.kf.sync_msg = busy
        item, token = self.kf.push(KFID, ALICE, "你好")
        started = time.monotonic()
        resp = self.ring(token)
        self.assertEqual((resp.code, resp.body), (200, b""))
        self.assertLess(time.monotonic() - started, 5)  # never waits for the pull
        self.wait_for(lambda: self.kf.sync_calls)
        self.assertEqual([r for r in self.rows() if r["msg_id"] == item["msgid"]], [])
        self.kf.sync_msg = refuse  # WeCom recovers: the next callback's pull gets it at once
        item2, token2 = self.kf.push(KFID, ALICE, "还在吗")
        rung = time.monotonic()
        self.ring(token2)
        self.stored_msg(item["msgid"])
        self.stored_msg(item2["msgid"])
        # The loop was waiting to retry (RETRY_DELAY): the callback ended the wait.
        self.assertLess(time.monotonic() - rung, pullmod.RETRY_DELAY - 1)

    def test_empty_pages_with_has_more_are_followed(self):
        self.kf.empty_pages = 3
        item = self.say("第一句")
        self.stored_msg(item["msgid"])
        self.assertEqual(len(self.kf.sync_calls), 4)
        # Each call carries the cursor the page before gave.
        self.assertEqual([c.get("cursor") for c in self.kf.sync_calls[1:]],
                         [pullmod_cursor(self.kf, 0)] * 3)

    def test_a_msgid_repeated_on_the_next_page_is_stored_once(self):
        count = pullmod.LIMIT * 3 // 2  # a page and a half
        items = [self.kf.push(KFID, ALICE if i % 2 else BOB, "消息 %d" % i)[0] for i in range(count)]
        self.kf.duplicate_next = True
        last, token = self.kf.push(KFID, ALICE, "最后一句")
        self.ring(token)
        self.wait_for(lambda: len(self.kf_rows()) >= count + 1 or None, timeout=30)
        self.assertGreaterEqual(len(self.kf.sync_calls), 2)
        self.assertTrue(all(c["limit"] == pullmod.LIMIT for c in self.kf.sync_calls))
        # The sandbox gave the first page's last item again at the start of the second.
        self.assertEqual(self.kf.sync_calls[1]["cursor"], pullmod_cursor(self.kf, pullmod.LIMIT - 1))
        msgids = [r["msg_id"] for r in self.kf_rows()]
        self.assertEqual(len(msgids), count + 1)  # each once
        self.assertEqual(set(msgids), {i["msgid"] for i in items} | {last["msgid"]})

    def test_a_slice_the_database_refuses_leaves_its_page_kept_for_the_next_pull(self):
        store_kf = self.services.store.kf
        # Customers' texts are stored by SQL (store_texts) on SQLite, the rest by store_slice.
        name = "store_texts" if store_kf.texts_in_sql else "store_slice"
        real, refused = getattr(store_kf, name), []

        def refuse_once(*args, **kwargs):
            if not refused:
                refused.append(args)
                raise StoreError("database is locked")
            return real(*args, **kwargs)

        setattr(store_kf, name, refuse_once)
        try:
            pushed = [self.kf.push(KFID, ALICE if i % 2 else BOB, "第 %d 句" % i) for i in range(3)]
            self.ring(pushed[-1][1])  # one page of three: its slice is refused, the pull waits to retry
            self.wait_for(lambda: refused)
            kept = self.wait_for(lambda: self.db(store_kf.kept_pages, KFID))
            # The page was kept with its cursor; nothing of it is a message yet.
            self.assertEqual([i["msgid"] for page in kept for i in page["items"]], [i["msgid"] for i, _ in pushed])
            self.assertEqual(self.kf_rows(), [])
            later = self.say("又一句")  # the next pull stores the kept page first, then the new one
            items = [i for i, _ in pushed] + [later]
            for item in items:
                self.stored_msg(item["msgid"])
        finally:
            setattr(store_kf, name, real)
        self.wait_for(lambda: not self.db(store_kf.kept_pages, KFID))
        msgids = [r["msg_id"] for r in self.kf_rows()]
        self.assertEqual(sorted(msgids), sorted(i["msgid"] for i in items))  # each once

    def test_every_stored_message_is_handed_on_once_when_a_slice_fails(self):
        """Two slices are with the writer at once: when the first fails, what the second stored is
        handed on (rules, live events) all the same, and the next pull hands on only the rest."""
        store_kf, puller = self.services.store.kf, self.services.kf.puller
        name = "store_texts" if store_kf.texts_in_sql else "store_slice"
        real, calls, handed = getattr(store_kf, name), [], []
        real_on_new = puller.on_new

        def refuse_first(*args, **kwargs):
            calls.append(args)
            if len(calls) == 1:
                raise StoreError("database is locked")
            return real(*args, **kwargs)

        async def on_new(app, open_kfid, new):
            handed.extend(e.item["msgid"] if hasattr(e, "item") else e[0]["msg_id"] for e in new)
            await real_on_new(app, open_kfid, new)

        old_slice, pullmod.SLICE = pullmod.SLICE, 2
        setattr(store_kf, name, refuse_first)
        puller.on_new = on_new
        try:
            pushed = [self.kf.push(KFID, ALICE, "第 %d 句" % i) for i in range(5)]
            self.ring(pushed[-1][1])  # one page, three slices: the first is refused
            self.wait_for(lambda: len(calls) >= 2)
            later = self.say("又一句")  # the next pull stores the kept page again, then this
            msgids = [i["msgid"] for i, _ in pushed] + [later["msgid"]]
            self.wait_for(lambda: len(handed) >= 6 and not self.db(store_kf.kept_pages, KFID))
            self.io_loop.run_sync(lambda: asyncio.sleep(0.2))  # nothing more is handed on
        finally:
            pullmod.SLICE = old_slice
            setattr(store_kf, name, real)
            puller.on_new = real_on_new
        self.assertEqual(sorted(r["msg_id"] for r in self.kf_rows()), sorted(msgids))  # each stored once
        self.assertEqual(sorted(handed), sorted(msgids))  # each handed on once

    def test_two_callbacks_during_one_pull_make_it_run_once_more(self):
        slow = SlowSync(self.services.kf.puller.client, 0.4)
        self.services.kf.puller.client = slow
        first = self.say("一")
        # The pull is under way (held 0.4 s before it reaches WeCom): two more callbacks ring.
        second, third = self.say("二", customer=BOB), self.say("三")
        for item in (first, second, third):
            self.stored_msg(item["msgid"])
        self.wait_for(lambda: not self.services.kf.puller._loops)
        self.assertEqual(slow.most, 1)  # never two pulls of the account at once
        self.assertEqual(len(self.kf.sync_calls), 2)  # the pull, then once more for the bells it missed
        self.assertEqual(self.kf.sync_calls[1]["cursor"], pullmod_cursor(self.kf, 3))
        self.assertEqual(len(self.kf_rows()), 3)

    def test_a_callback_for_an_account_not_served_is_answered_and_not_pulled(self):
        _, token = self.kf.push(OTHER, ALICE, "你好")
        resp = self.ring(token, open_kfid=OTHER)
        self.assertEqual((resp.code, resp.body), (200, b""))
        time.sleep(0.2)
        self.assertEqual((self.kf.sync_calls, self.kf_rows()), ([], []))

    def test_a_startup_pull_catches_up_from_the_stored_cursor(self):
        item, token = self.kf.push(KFID, ALICE, "停机前")
        self.ring(token)
        self.stored_msg(item["msgid"])
        self.io_loop.run_sync(self.services.close)
        missed = [self.kf.push(KFID, BOB, "停机时 %d" % i)[0] for i in range(3)]  # no callback reaches us
        calls = len(self.kf.sync_calls)
        from wecomd.services import Services

        self.services = Services(self.config)
        self.io_loop.run_sync(self.services.start)
        for m in missed:
            self.wait_for(lambda m=m: any(r["msg_id"] == m["msgid"] for r in self.kf_rows()))
        restart = self.kf.sync_calls[calls]
        self.assertEqual(restart["cursor"], pullmod_cursor(self.kf, 1))  # from the stored cursor
        # No callback rang for these: the token kept is the last callback's, while it lives 10 minutes.
        self.assertEqual(restart.get("token"), token)
        self.assertEqual(len(self.kf_rows()), 4)


def pullmod_cursor(kf, index: int) -> str:
    """The sandbox's cursor after the first `index` items of KFID's log."""
    from wecomd.wecom.sandbox_kf import _cursor

    return _cursor(KFID, index)


class TimelineTest(KfTestCase):
    def test_a_human_agents_reply_from_the_wecom_client_is_outbound_by_that_agent(self):
        asked = self.say("你好，有人吗")
        item, token = self.kf.push(KFID, ALICE, "您好，我是张三", origin=kfproto.ORIGIN_SERVICER,
                                   servicer_userid="zhangsan")
        self.ring(token)
        row = self.stored_msg(item["msgid"])
        self.assertEqual((row["direction"], row["status"], row["operator"], row["to_user"], row["content"]),
                         ("out", "sent", "zhangsan", self.key(), "您好，我是张三"))
        self.stored_msg(asked["msgid"])
        status, answer = self.api("/api/messages", app="kefu", user=self.key())
        self.assertEqual(status, 200)
        self.assertEqual([(m["direction"], m["content"]) for m in reversed(answer["messages"])],
                         [("in", "你好，有人吗"), ("out", "您好，我是张三")])
        session = self.db(self.services.store.kf.session, KFID, ALICE)
        self.assertEqual((session["service_state"], session["servicer_userid"]), (3, "zhangsan"))
        # A human serves now: automation stays silent, even on a rule's keyword.
        price = self.say("价格多少")
        self.stored_msg(price["msgid"])
        time.sleep(0.3)
        self.assertEqual(self.kf.sent, [])

    def test_a_page_mixing_texts_and_other_items_is_stored_in_its_order(self):
        """Customers' plain texts are stored by SQL, the rest by decode: a page mixing them keeps its
        order (ids ascend as the items came), each item once."""
        pushed = [self.kf.push(KFID, ALICE, "第一句")[0],
                  self.kf.push_event(KFID, {"event_type": "enter_session", "external_userid": BOB, "scene": "123"})[0],
                  self.kf.push(KFID, BOB, "第二句")[0], self.kf.push(KFID, ALICE, "第三句")[0],
                  self.kf.push(KFID, ALICE, "您好", origin=kfproto.ORIGIN_SERVICER, servicer_userid="zhangsan")[0],
                  self.kf.push(KFID, ALICE, "菜单", menu_id="101")[0]]
        item, token = self.kf.push(KFID, BOB, "最后一句")
        pushed.append(item)
        self.assertEqual([plain_text(i) for i in pushed], [True, False, True, True, False, False, True])
        self.ring(token)
        self.stored_msg(item["msgid"])
        rows = sorted(self.kf_rows(), key=lambda row: row["id"])
        self.assertEqual([r["msg_id"] for r in rows], [i["msgid"] for i in pushed])
        self.assertEqual([(r["direction"], r["content"]) for r in rows if r["msgtype"] == "text"],
                         [("in", "第一句"), ("in", "第二句"), ("in", "第三句"), ("out", "您好"), ("in", "菜单"),
                          ("in", "最后一句")])
        self.assertEqual([(run[0], len(run[1])) for run in pullmod._runs(pushed, True)],
                         [(True, 1), (False, 1), (True, 2), (False, 2), (True, 1)])
        self.assertEqual(pullmod._runs(pushed, False), [(False, pushed)])  # elsewhere: all decoded
        events, texts = [pushed[1]] * (pullmod.DECODED * 2 + 3), [pushed[0]] * (pullmod.DECODED * 2 + 3)
        self.assertEqual([len(run) for _, run in pullmod._runs(events, True)],  # decoded: smaller transactions
                         [pullmod.DECODED, pullmod.DECODED, 3])
        self.assertEqual([len(run) for _, run in pullmod._runs(texts, True)], [len(texts)])

    def test_events_become_system_messages_and_unknown_types_are_kept_whole(self):
        event, token = self.kf.push_event(KFID, {"event_type": "session_status_change", "change_type": 1,
                                                 "external_userid": ALICE, "new_servicer_userid": "zhangsan"})
        self.ring(token)
        row = self.stored_msg(event["msgid"])
        self.assertEqual((row["msgtype"], row["direction"]), ("event", "in"))
        strange, token = self.kf.push(KFID, ALICE, None, msgtype="hologram", hologram={"frames": 3})
        self.ring(token)
        row = self.stored_msg(strange["msgid"])
        self.assertEqual(row["msgtype"], "hologram")
        self.assertEqual(row["fields"]["hologram"], {"frames": 3})

    def test_media_of_the_customer_and_of_the_agent_is_downloaded(self):
        png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
        photo = self.fake.add_media(png, "image/png", "photo.png")
        item, token = self.kf.push(KFID, ALICE, None, msgtype="image", media_id=photo)
        self.ring(token)
        pdf = self.fake.add_media(b"%PDF-1.4 manual", "application/pdf", "说明书.pdf")
        sent, token = self.kf.push(KFID, ALICE, None, msgtype="file", media_id=pdf,
                                   origin=kfproto.ORIGIN_SERVICER, servicer_userid="zhangsan")
        self.ring(token)
        for pulled, body in ((item, png), (sent, b"%PDF-1.4 manual")):
            row = self.wait_for(lambda p=pulled: next((r for r in self.rows() if r["msg_id"] == p["msgid"]
                                                       and (r["media"] or {}).get("status") == "stored"), None))
            resp = self.fetch("/api/media/%d" % row["id"], headers=self.session())
            self.assertEqual((resp.code, resp.body), (200, body))
        self.assertEqual(row["direction"], "out")

    def test_customers_have_their_nicknames_in_the_list_the_thread_and_search(self):
        self.stored_msg(self.say("你好")["msgid"])
        self.stored_msg(self.say("我是鲍勃", customer=BOB)["msgid"])
        self.wait_for(lambda: len(self.db(self.services.store.kf.customers, [ALICE, BOB])) == 2)
        status, answer = self.api("/api/conversations", app="kefu")
        names = {c["user"]: c["user_name"] for c in answer["conversations"]}
        self.assertEqual(names, {self.key(): "爱丽丝", self.key(BOB): "鲍勃"})
        kf = next(c["kf"] for c in answer["conversations"] if c["user"] == self.key())
        self.assertEqual((kf["open_kfid"], kf["external_userid"]), (KFID, ALICE))
        status, thread = self.api("/api/messages", app="kefu", user=self.key())
        self.assertEqual({m["user_name"] for m in thread["messages"]}, {"爱丽丝"})
        status, found = self.api("/api/messages", q="鲍勃")
        self.assertEqual({m["from_user"] for m in found["messages"]}, {self.key(BOB)})
        # An id WeCom cannot resolve shows as itself.
        stranger = "wmStrangerNotKnown"
        self.kf.customers.pop(stranger, None)
        item, token = self.kf.push(KFID, stranger, "路过")
        self.kf.customers.pop(stranger, None)  # push registered them: make the id unknown to batchget
        self.ring(token)
        self.stored_msg(item["msgid"])
        self.wait_for(lambda: self.db(self.services.store.kf.customers, [stranger]))
        status, answer = self.api("/api/conversations", app="kefu")
        names = {c["user"]: c["user_name"] for c in answer["conversations"]}
        self.assertEqual(names[self.key(stranger)], stranger)


class AnswerTest(KfTestCase):
    def test_a_rule_answers_through_send_msg_with_a_deterministic_msgid(self):
        self.stored_msg(self.say("请问价格")["msgid"])
        self.wait_for(lambda: self.kf.sent)
        sent = self.kf.sent[0]
        self.assertEqual((sent["touser"], sent["open_kfid"], sent["text"]["content"]),
                         (ALICE, KFID, "价格表在官网：example.com/price"))
        out = self.wait_for(lambda: next((r for r in self.kf_rows() if r["direction"] == "out"
                                          and r["status"] == "sent"), None))
        self.assertEqual(sent["msgid"], kfproto.send_msgid(out["id"]))
        self.assertEqual((out["to_user"], out["rule"]), (self.key(), "price"))
        # sync_msg never returns what the API sent: the daemon's own row is the record of it.
        self.assertEqual(len([r for r in self.kf_rows() if r["direction"] == "out"]), 1)

    def test_an_image_from_the_console_is_uploaded_and_sent_through_send_msg(self):
        from support.forms import multipart
        from wecomd.wecom.sandbox import sample_png

        self.stored_msg(self.say("发张图看看")["msgid"])
        body, content_type = multipart({"app": "kefu", "to_user": self.key(), "msgtype": "image"},
                                       ("截图.png", sample_png(), "image/png"))
        headers = dict(self.session(), **{"Content-Type": content_type, "X-XSRFToken": self.xsrf})
        resp = self.fetch("/api/messages", method="POST", body=body, headers=headers)
        self.assertEqual(resp.code, 201, resp.body)
        self.wait_for(lambda: self.kf.sent)
        sent = self.kf.sent[0]
        self.assertEqual((sent["msgtype"], sent["touser"]), ("image", ALICE))
        self.assertEqual(self.fake.media[sent["image"]["media_id"]][0], sample_png())  # the uploaded file

    def test_a_resend_after_a_crash_is_refused_by_wecom_not_delivered_twice(self):
        self.stored_msg(self.say("你好")["msgid"])
        status, answer = self.api("/api/messages", "POST", {"app": "kefu", "to_user": self.key(), "content": "一次"})
        self.wait_for(lambda: next((r for r in self.kf_rows() if r["id"] == answer["id"]
                                    and r["status"] == "sent"), None))
        # As if wecomd had died after WeCom took it but before it was marked sent: pending again.
        self.db(self.services.store.outbox.set_status, answer["id"], "pending")
        self.services.outbox.wake()
        row = self.wait_for(lambda: next((r for r in self.kf_rows() if r["id"] == answer["id"]
                                          and r["status"] == "sent"), None))
        self.assertEqual([s["text"]["content"] for s in self.kf.sent], ["一次"])  # WeCom refused the same msgid
        self.assertEqual(row["msg_id"], kfproto.send_msgid(answer["id"]))

    def test_95018_marks_the_message_taken_by_a_human_and_is_not_retried(self):
        self.stored_msg(self.say("你好")["msgid"])
        # A servicer took the session in the WeCom client; wecomd has not heard of it yet.
        self.kf.session(KFID, ALICE).state = 3
        attempts = []
        send = self.kf.send_msg
        self.kf.send_msg = lambda body: attempts.append(body) or send(body)
        status, answer = self.api("/api/messages", "POST", {"app": "kefu", "to_user": self.key(), "content": "稍等"})
        self.assertEqual(status, 201, answer)
        row = self.wait_for(lambda: next((r for r in self.kf_rows() if r["id"] == answer["id"]
                                          and r["status"] == "failed"), None))
        self.assertEqual(row["error"], TAKEN_BY_HUMAN)
        time.sleep(0.5)
        self.assertEqual(len(attempts), 1)  # no retry
        self.assertEqual(self.db(self.services.store.kf.session, KFID, ALICE)["service_state"], 3)

    def test_five_sends_until_the_customer_writes_again(self):
        self.stored_msg(self.say("你好")["msgid"])
        ids = []
        for i in range(6):
            status, answer = self.api("/api/messages", "POST", {"app": "kefu", "to_user": self.key(),
                                                                "content": "回复 %d" % i})
            self.assertEqual(status, 201)
            ids.append(answer["id"])
            self.wait_for(lambda i=answer["id"]: next((r for r in self.kf_rows() if r["id"] == i
                                                       and r["status"] in ("sent", "failed")), None))
        rows = {r["id"]: r for r in self.kf_rows()}
        self.assertEqual([rows[i]["status"] for i in ids], ["sent"] * 5 + ["failed"])
        self.assertTrue(rows[ids[5]]["error"].startswith("outside WeCom's reply window"), rows[ids[5]]["error"])
        self.assertEqual(len(self.kf.sent), 5)  # the sixth never reached WeCom
        self.stored_msg(self.say("还有问题")["msgid"])
        status, answer = self.api("/api/messages", "POST", {"app": "kefu", "to_user": self.key(), "content": "好的"})
        self.wait_for(lambda: next((r for r in self.kf_rows() if r["id"] == answer["id"]
                                    and r["status"] == "sent"), None))
        self.assertEqual(len(self.kf.sent), 6)

    def test_no_send_48_hours_after_the_customers_last_message(self):
        old = self.say("两天前的问题", send_time=int(time.time()) - 49 * 3600)
        self.stored_msg(old["msgid"])
        status, answer = self.api("/api/messages", "POST", {"app": "kefu", "to_user": self.key(), "content": "抱歉晚了"})
        row = self.wait_for(lambda: next((r for r in self.kf_rows() if r["id"] == answer["id"]
                                          and r["status"] == "failed"), None))
        self.assertIn("48", row["error"])
        self.assertTrue(row["error"].startswith("outside WeCom's reply window"))
        self.assertEqual(self.kf.sent, [])

    def test_the_welcome_code_gets_one_send_msg_on_event_within_20_seconds(self):
        event, token = self.kf.enter_session(KFID, ALICE, scene="qrcode")
        code = event["event"]["welcome_code"]
        started = time.monotonic()
        self.ring(token)
        self.wait_for(lambda: self.kf.event_sends)
        self.assertLess(time.monotonic() - started, 20)
        self.ring(token)  # WeCom rings again for the same event: no second welcome
        time.sleep(0.5)
        self.assertEqual([(s["code"], s["text"]["content"]) for s in self.kf.event_sends],
                         [(code, "欢迎光临，请问有什么可以帮您？")])
        self.assertEqual(self.kf.sent, [])  # not through send_msg
        out = self.wait_for(lambda: next((r for r in self.kf_rows() if r["direction"] == "out"
                                          and r["status"] == "sent"), None))
        self.assertEqual((out["to_user"], out["rule"], out["content"]),
                         (self.key(), "welcome", "欢迎光临，请问有什么可以帮您？"))

    def test_session_status_change_codes_are_answered_once_by_the_matching_rule(self):
        self.stored_msg(self.say("我要找人工")["msgid"])
        taken, token = self.kf.push_event(KFID, {"event_type": "session_status_change", "change_type": 1,
                                                 "external_userid": ALICE, "new_servicer_userid": "zhangsan"})
        self.ring(token)
        self.wait_for(lambda: self.kf.event_sends)
        self.ring(token)  # rung again: the code is used once
        ended, token = self.kf.push_event(KFID, {"event_type": "session_status_change", "change_type": 3,
                                                 "external_userid": ALICE})
        self.ring(token)
        self.wait_for(lambda: len(self.kf.event_sends) >= 2)
        time.sleep(0.3)
        self.assertEqual([(s["kind"], s["code"], s["text"]["content"]) for s in self.kf.event_sends],
                         [("human", taken["event"]["msg_code"], "人工客服已接入，请问有什么可以帮您？"),
                          ("end", ended["event"]["msg_code"], "本次服务已结束，感谢您的咨询")])
        out = [r for r in self.kf_rows() if r["direction"] == "out"]
        self.assertEqual(sorted((r["rule"], r["status"]) for r in out), [("ended", "sent"), ("taken", "sent")])
        self.assertEqual(self.kf.sent, [])  # a human serves: the customer's own message got no send_msg

    def test_a_console_move_answers_its_msg_code_with_the_operators_message_once(self):
        self.stored_msg(self.say("你好")["msgid"])
        status, moved = self.api("/api/kf/session", "POST", {
            "app": "kefu", "user": self.key(), "service_state": 3, "servicer_userid": "zhangsan",
            "message": "您好，我是客服张三"})
        self.assertEqual(status, 200, moved)
        self.assertEqual((moved["sent"]["status"], moved["sent"]["operator"], moved["sent"]["content"]),
                         ("sent", "admin", "您好，我是客服张三"))
        self.assertEqual([(s["kind"], s["text"]["content"]) for s in self.kf.event_sends],
                         [("human", "您好，我是客服张三")])
        # A transfer returns no new code: nothing is sent, the move is made.
        self.kf.add_servicer(KFID, "wangwu", RECEPTION)
        status, moved = self.api("/api/kf/session", "POST", {
            "app": "kefu", "user": self.key(), "service_state": 3, "servicer_userid": "wangwu", "message": "转给王五"})
        self.assertEqual((status, moved["sent"], moved["servicer_userid"]), (200, None, "wangwu"))
        status, moved = self.api("/api/kf/session", "POST", {"app": "kefu", "user": self.key(), "service_state": 4,
                                                            "message": "感谢咨询，再见"})
        self.assertEqual((status, moved["sent"]["status"]), (200, "sent"))
        self.assertEqual([s["kind"] for s in self.kf.event_sends], ["human", "end"])
        self.assertEqual(len(self.db(self.services.store.kf.sessions, [(KFID, ALICE)])), 1)
        status, _ = self.api("/api/kf/session", "POST", {"app": "kefu", "user": self.key(), "service_state": 4,
                                                        "message": ""})
        self.assertEqual(status, 400)

    def test_recall_within_2_minutes_through_kf_recall_msg(self):
        self.stored_msg(self.say("你好")["msgid"])
        status, answer = self.api("/api/messages", "POST", {"app": "kefu", "to_user": self.key(), "content": "发错了"})
        row = self.wait_for(lambda: next((r for r in self.kf_rows() if r["id"] == answer["id"]
                                          and r["status"] == "sent"), None))
        status, recalled = self.api("/api/messages/%d/recall" % row["id"], "POST", {})
        self.assertEqual(status, 200, recalled)
        self.assertEqual(recalled["status"], "recalled")
        self.assertEqual(self.kf.recalled, [self.kf.sent[0]["msgid"]])


class FallbackReplyTest(KfTestCase):
    app_reply = "已收到，客服稍后回复"

    def test_the_apps_reply_answers_what_no_rule_does_through_send_msg(self):
        self.stored_msg(self.say("随便问问")["msgid"])
        self.wait_for(lambda: self.kf.sent)
        self.assertEqual([s["text"]["content"] for s in self.kf.sent], ["已收到，客服稍后回复"])


class SessionApiTest(KfTestCase):
    def test_read_and_move_a_session_along_documented_transitions(self):
        self.stored_msg(self.say("你好")["msgid"])
        status, session = self.api("/api/kf/session", app="kefu", user=self.key())
        self.assertEqual(status, 200, session)
        self.assertEqual((session["service_state"], session["transitions"]), (0, [1, 2, 3]))
        self.assertEqual({s["userid"] for s in session["servicers"]}, {"zhangsan", "lisi"})
        status, moved = self.api("/api/kf/session", "POST", {"app": "kefu", "user": self.key(), "service_state": 1})
        self.assertEqual((status, moved["service_state"]), (200, 1))
        self.assertEqual(self.kf.session(KFID, ALICE).state, 1)
        # lisi is not 接待中: WeCom refuses, and the console says why.
        status, refused = self.api("/api/kf/session", "POST", {"app": "kefu", "user": self.key(),
                                                              "service_state": 3, "servicer_userid": "lisi"})
        self.assertEqual(status, 502)
        self.assertIn("95014", refused["error"])
        status, moved = self.api("/api/kf/session", "POST", {"app": "kefu", "user": self.key(),
                                                            "service_state": 3, "servicer_userid": "zhangsan"})
        self.assertEqual((status, moved["service_state"], moved["servicer_userid"]), (200, 3, "zhangsan"))
        # From 3 only a transfer or the end: back to the bot is refused before WeCom is asked.
        status, refused = self.api("/api/kf/session", "POST", {"app": "kefu", "user": self.key(), "service_state": 1})
        self.assertEqual(status, 409)
        self.assertEqual(self.kf.session(KFID, ALICE).state, 3)
        status, ended = self.api("/api/kf/session", "POST", {"app": "kefu", "user": self.key(), "service_state": 4})
        self.assertEqual((status, ended["service_state"]), (200, 4))
        status, session = self.api("/api/kf/session", app="kefu", user=self.key())
        self.assertEqual(session["transitions"], [])

    def test_a_viewer_may_read_but_not_move_and_bad_bodies_are_400(self):
        self.stored_msg(self.say("你好")["msgid"])
        status, _ = self.api("/api/kf/session", "POST", {"app": "kefu", "user": self.key(), "service_state": 7})
        self.assertEqual(status, 400)
        status, _ = self.api("/api/kf/session", "POST", {"app": "helpdesk", "user": self.key(), "service_state": 1})
        self.assertEqual(status, 404)
        status, _ = self.api("/api/kf/session", "POST", {"app": "kefu", "user": "zhangsan", "service_state": 1})
        self.assertEqual(status, 409)
