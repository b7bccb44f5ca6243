"""The callback intake journal (wecomd.intake, store.intake): while a 微信客服 pull runs, callbacks are
committed to a SQLite file of their own and answered, then applied to the database once each; a
stop leaves nothing behind that the next start does not apply, and nothing is applied twice."""
from __future__ import annotations

import asyncio
import logging
from unittest import mock

import pytest

from support.base import WecomdTestCase
from support.bot import BOT, BotTestCase
from support.config import kf_app_section
from support.kf import SlowSync
from support.peer import CORP_ID
from support.store import migrations_from
from wecomd import app as appmod
from wecomd import intake
from wecomd.services import Services
from wecomd.store import MIGRATIONS_DIR, migrations
from wecomd.store.intake import Journal, journal_path, once
from wecomd.wecom import samples
from wecomd.wecom.sandbox_kf import KfRefusal
from wecomd.wecom.simulate_kf import callback_plaintext

KFID, ALICE = "wkSupport01", "wmAliceExternal0001"


def text(content: str, msg_id: str, user: str = "zhangsan") -> str:
    return samples.build("text", corp_id=CORP_ID, agent_id="1000002", from_user=user, content=content, msg_id=msg_id)


# ---------------------------------------------------------------- the file and the mark

def test_the_journal_keeps_entries_in_order_and_never_gives_a_number_twice(tmp_path):
    journal = Journal(str(tmp_path / "wecomd.db.intake"))
    generation = journal.open()
    assert [journal.append("app", "helpdesk", "<xml>%d</xml>" % n, "2026-12-04T09:00:00") for n in range(3)] == [1, 2, 3]
    journal.close()

    again = Journal(journal.path)
    assert again.open() == generation  # the same file: the same generation
    assert [(e["seq"], e["body"]) for e in again.after(0)] == [(1, "<xml>0</xml>"), (2, "<xml>1</xml>"), (3, "<xml>2</xml>")]
    assert [e["seq"] for e in again.after(1, limit=1)] == [2]
    assert again.forget(3) == 2 and [e["seq"] for e in again.after(0)] == [3] and again.after(3) == []
    assert again.last() == 3  # the newest applied entry stays: the numbers go on from it
    assert again.append("kf", "kefu", "<xml/>", "2026-12-04T09:00:01") == 4
    again.checkpoint()  # the WAL's pages into the file (a callback's commit never checkpoints)
    assert [e["seq"] for e in again.after(3)] == [4]
    again.close()

    for name in ("wecomd.db.intake", "wecomd.db.intake-wal", "wecomd.db.intake-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    fresh = Journal(journal.path)
    assert fresh.open() != generation  # a new file: its numbers never pass for the old one's
    fresh.close()


def test_the_journal_sits_beside_a_sqlite_file_and_there_is_none_in_memory():
    assert journal_path("/var/lib/wecomd/wecomd.db") == "/var/lib/wecomd/wecomd.db.intake"
    assert journal_path(":memory:") is None and journal_path(None) is None


def test_once_applies_an_entry_in_the_transaction_of_its_mark(sqlite_store):
    store, calls = sqlite_store, []

    def effect(value):
        calls.append(value)
        store.db.execute_sql("CREATE TABLE IF NOT EXISTS effect (value TEXT)")
        store.db.execute_sql("INSERT INTO effect VALUES (?)", (value,))
        return value.upper()

    with store.db.atomic():
        assert once(store, ("gen-a", 1), effect, "one") == (True, "ONE")
    with store.db.atomic():
        assert once(store, ("gen-a", 1), effect, "one") == (False, None)  # applied: not run again
    assert calls == ["one"] and store.intake.seq("gen-a") == 1 and store.intake.seq("gen-b") == 0

    def fails(value):
        effect(value)
        raise ValueError("the effect failed")

    with pytest.raises(ValueError):
        with store.db.atomic():
            once(store, ("gen-a", 2), fails, "two")
    assert store.intake.seq("gen-a") == 1  # rolled back with the effect: the entry is applied later
    assert [r[0] for r in store.db.execute_sql("SELECT value FROM effect")] == ["one"]


def test_0016_makes_intake_applied_and_reverts(sqlite_store):
    runner = migrations.Runner(sqlite_store.db, str(MIGRATIONS_DIR))
    assert "intake_applied" in sqlite_store.db.get_tables()
    assert runner.down("0016_intake") == migrations_from("0016_intake")[::-1]  # and those after it
    assert "intake_applied" not in sqlite_store.db.get_tables()
    assert sqlite_store.migrate() == migrations_from("0016_intake")
    sqlite_store.intake.mark("gen", 7)
    sqlite_store.intake.mark("gen", 8)
    assert sqlite_store.intake.seq("gen") == 8


# ---------------------------------------------------------------- the daemon

class IntakeTest(WecomdTestCase):
    server_settings = {"kf_pull": "inline"}  # held by SlowSync; the pull process's own: tests/test_kf_process.py
    extra_config = kf_app_section(more="kf_accounts = %s" % KFID) + """
[rule:price]
app = helpdesk
when = text contains 价格
reply = 价格表在官网
"""

    def prepare_fake(self, fake) -> None:
        self.kf = fake.kf
        self.kf.add_account(KFID, "售后客服")
        self.kf.add_customer(ALICE, "爱丽丝")

    def setUp(self) -> None:
        super().setUp()
        self.wait_for(lambda: self.kf.sync_calls and not self.services.kf.puller.pulling())  # the startup pull

    def pull_running(self, delay: float = 1.5) -> None:
        """A customer writes and rings: the pull runs for `delay` seconds (held on its way to WeCom)."""
        self.services.kf.puller.client = SlowSync(self.services.kf.puller.client, delay)
        _, token = self.kf.push(KFID, ALICE, "在吗")
        self.assertEqual(self.callback(callback_plaintext(CORP_ID, KFID, token), app="kefu").code, 200)
        self.assertTrue(self.services.kf.puller.pulling() and self.services.intake.active())

    def journal(self) -> Journal:
        return self.services.intake.journal

    def test_during_a_pull_app_callbacks_are_journaled_answered_at_once_and_applied_once_each(self):
        self.services.intake.forget_every = 3  # applied entries forgotten from the file once there are 3
        self.pull_running()
        with self.assertLogs("wecomd.handlers.callback", logging.INFO) as logs:
            first = self.callback(text("你好", "7000000000000000001"))
            retry = self.callback(text("你好", "7000000000000000001"))  # WeCom's retry of the same message
            priced = self.callback(text("价格多少", "7000000000000000002", user="lisi"))
        for resp in (first, retry, priced):
            self.assertEqual((resp.code, resp.body), (200, b""))  # empty: the answers go out by the API
        self.assertEqual([line.count("outcome=journaled") for line in logs.output], [1, 1, 1])
        self.assertTrue(self.services.kf.puller.pulling())  # all of that while the pull ran

        rows = self.wait_for(lambda: len(self.inbound()) == 3 and self.inbound())  # 2 + the kf customer's
        by_id = {r["msg_id"]: r for r in rows}
        self.assertEqual(by_id["7000000000000000001"]["deliveries"], 2)  # the retry counted, stored once
        self.assertEqual(by_id["7000000000000000002"]["content"], "价格多少")
        # The app's `reply =` and the rule's answer, through message/send (no passive reply any more).
        sent = self.wait_for(lambda: len(self.fake.sent) == 2 and self.fake.sent)
        self.assertEqual(sorted((m["touser"], m["text"]["content"]) for m in sent),
                         [("lisi", "价格表在官网"), ("zhangsan", "已收到")])
        self.wait_for(lambda: not self.services.kf.puller.pulling())
        self.wait_for(lambda: not self.services.intake.active())
        intake = self.services.intake
        self.assertEqual((intake.recorded, intake.applied), (3, 3))  # the doorbell came before the pull ran
        self.assertEqual(self.db(self.services.store.intake.seq, intake.generation), intake.applied)
        self.assertEqual(self.journal().after(intake.applied), [])  # forgotten, but for the newest
        self.assertEqual([e["seq"] for e in self.journal().after(0)], [intake.applied])

    def test_a_pull_waiting_to_try_again_leaves_callbacks_on_their_usual_path(self):
        def busy(body):
            self.kf.sync_calls.append(dict(body))
            raise KfRefusal(-1, "system busy")

        self.kf.sync_msg = busy  # WeCom refuses: the loop waits 5 s between tries
        _, token = self.kf.push(KFID, ALICE, "在吗")
        self.assertEqual(self.callback(callback_plaintext(CORP_ID, KFID, token), app="kefu").code, 200)
        puller = self.services.kf.puller
        self.wait_for(lambda: KFID in puller._loops and not puller.pulling())
        with self.assertLogs("wecomd.handlers.callback", logging.INFO) as logs:
            resp = self.callback(text("你好", "7000000000000000021"))
        self.assertEqual(resp.code, 200)
        self.assertNotEqual(resp.body, b"")  # the passive reply (reply = 已收到), as without a pull
        self.assertIn("outcome=stored", logs.output[0])
        self.assertIn("7000000000000000021", [r["msg_id"] for r in self.rows()])
        self.assertEqual(self.services.intake.recorded, 0)

    def test_a_doorbell_during_a_pull_is_journaled_and_its_token_kept_when_applied(self):
        self.pull_running()
        item, token = self.kf.push(KFID, ALICE, "还在吗")
        with self.assertLogs("wecomd.handlers.callback", logging.INFO) as logs:
            self.assertEqual(self.callback(callback_plaintext(CORP_ID, KFID, token), app="kefu").code, 200)
        self.assertIn("outcome=kf pull", logs.output[0])
        self.assertGreaterEqual(self.services.intake.recorded, 1)
        self.stored_msg(item["msgid"])
        self.wait_for(lambda: not self.services.kf.puller.pulling())
        self.assertEqual(self.kf.sync_calls[-1]["token"], token)  # the pull once more, with the journaled token

    def test_a_callback_the_journal_cannot_commit_is_refused_and_not_stored(self):
        self.pull_running()
        self.journal().db.execute_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON entry BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
        resp = self.callback(text("你好", "7000000000000000003"))
        self.assertEqual(resp.code, 503)  # WeCom delivers it again
        self.wait_for(lambda: not self.services.kf.puller.pulling())
        self.assertNotIn("7000000000000000003", [r["msg_id"] for r in self.rows()])

    def test_what_a_stop_left_in_the_journal_is_applied_at_start_and_nothing_twice(self):
        intake, store = self.services.intake, self.services.store
        generation = intake.generation
        path = self.journal().path
        self.io_loop.run_sync(self.services.close)
        # A stop left three callbacks in the journal; the first was applied just before it (its mark
        # committed with its message), the other two not.
        journal = Journal(path)
        self.assertEqual(journal.open(), generation)
        bodies = [text("一", "7000000000000000011"), text("二", "7000000000000000012"),
                  text("价格呢", "7000000000000000013", user="lisi")]
        seqs = [journal.append("app", "helpdesk", body, "2026-12-04T09:00:00") for body in bodies]
        journal.close()
        from wecomd.inbox import apply_inbound
        from wecomd.wecom.messages import dedup_key, parse
        message = parse(bodies[0])
        with store.db.atomic():
            once(store, (generation, seqs[0]), apply_inbound, store, "helpdesk", message, dedup_key(message))
        store.close()

        self.services = Services(self.config)
        self.services.intake.forget_every = 1
        with self.assertLogs("wecomd.intake", logging.WARNING) as logs:
            self.io_loop.run_sync(self.services.start)
        self.assertIn("2 callback(s) in the journal were not applied", logs.output[0])
        rows = {r["msg_id"]: r for r in self.inbound()}  # applied before start returned
        self.assertEqual([rows[m]["deliveries"] for m in ("7000000000000000011", "7000000000000000012",
                                                           "7000000000000000013")], [1, 1, 1])
        self.assertEqual(self.services.intake.applied, seqs[-1])
        sent = self.wait_for(lambda: len(self.fake.sent) == 2 and self.fake.sent)
        self.assertEqual(sorted((m["touser"], m["text"]["content"]) for m in sent),
                         [("lisi", "价格表在官网"), ("zhangsan", "已收到")])  # entry 1's was before the stop
        self.assertEqual([e["seq"] for e in self.services.intake.journal.after(0)], [seqs[-1]])  # the rest forgotten


class BotIntakeTest(BotTestCase):
    """智能机器人 messages while a pull runs: journaled, answered with their stream open and empty,
    then answered into that stream once applied (WeCom's polls read it)."""

    server_settings = IntakeTest.server_settings
    prepare_fake = IntakeTest.prepare_fake
    pull_running = IntakeTest.pull_running

    def setUp(self) -> None:
        self.extra_config = BOT % 30 + IntakeTest.extra_config
        WecomdTestCase.setUp(self)
        self.wait_for(lambda: self.kf.sync_calls and not self.services.kf.puller.pulling())  # the startup pull

    def test_a_bot_message_during_a_pull_is_journaled_and_its_answer_comes_into_its_stream(self):
        self.pull_running()
        payload = self.message("明天天气怎么样")
        with self.assertLogs("wecomd.handlers.callback", logging.INFO) as logs:
            first = self.frame(self.post(payload))
        self.assertIn("outcome=journaled", logs.output[0])
        stream_id = first["stream"]["id"]
        self.assertEqual(first["stream"], {"id": stream_id, "finish": False, "content": ""})
        self.assertEqual(self.poll(stream_id)["stream"]["finish"], False)  # still waiting: WeCom polls on
        self.assertEqual(self.frame(self.post(payload))["stream"]["id"], stream_id)  # WeCom's retry: the same
        self.assertTrue(self.services.kf.puller.pulling())  # all of that while the pull ran

        # The user rates the answer before it is even applied: journaled too, answered empty.
        feedback = {"msgid": "fb-1", "aibotid": "AIBOT", "chattype": "single", "from": {"userid": "zhangsan"},
                    "msgtype": "event", "event": {"eventtype": "feedback_event", "feedback_event": {
                        "id": stream_id, "type": 1}}}
        with self.assertLogs("wecomd.handlers.callback", logging.INFO) as logs:
            resp = self.post(feedback)
        self.assertEqual((resp.code, resp.body), (200, b""))
        self.assertIn("outcome=journaled", logs.output[0])

        self.wait_for(lambda: not self.services.intake.active())
        self.assertEqual(self.poll(stream_id)["stream"], {"id": stream_id, "finish": True, "content": "今天晴，25 度"})
        # Applied in order: the answer's stream first, then the feedback kept with it.
        self.assertEqual(self.db(self.services.store.bot_streams.get, stream_id)["feedback"]["type"], 1)
        rows = [r for r in self.inbound() if r["app"] == "assistant" and r["msgtype"] == "text"]
        self.assertEqual([(r["content"], r["deliveries"]) for r in rows], [("明天天气怎么样", 2)])
        answers = [m["content"] for m in self.rows() if m["direction"] == "out" and m["app"] == "assistant"]
        self.assertEqual(answers, ["今天晴，25 度"])  # one answer, in the thread

    def test_a_journaled_message_nothing_answers_ends_its_stream_and_events_keep_their_path(self):
        self.pull_running()
        first = self.frame(self.post(self.message("随便说说")))
        stream_id = first["stream"]["id"]
        self.assertFalse(first["stream"]["finish"])
        with self.assertLogs("wecomd.handlers.callback", logging.INFO) as logs:
            welcome = self.frame(self.post({"msgid": "ev-1", "aibotid": "AIBOT", "chattype": "single",
                                            "from": {"userid": "lisi"}, "msgtype": "event",
                                            "event": {"eventtype": "enter_chat"}}))
        self.assertIn("outcome=stored", logs.output[0])  # its welcome is in the answer to the callback itself
        self.assertEqual(welcome["text"]["content"], "你好，我是助手")
        self.wait_for(lambda: not self.services.intake.active())
        self.assertEqual(self.poll(stream_id)["stream"], {"id": stream_id, "finish": True, "content": ""})
        self.assertIn("随便说说", [r["content"] for r in self.inbound()])

    def test_a_bot_message_a_stop_left_in_the_journal_is_answered_into_its_stream_at_start(self):
        self.pull_running(delay=3.0)
        self.services.intake._apply_all = _never  # the stop comes before the applier gets to it
        first = self.frame(self.post(self.message("后天天气呢", msgid="bot-left-1")))
        stream_id = first["stream"]["id"]
        self.assertFalse(first["stream"]["finish"])
        generation = self.services.intake.generation
        self.io_loop.run_sync(self.services.close)
        self.services = Services(self.config)
        self.io_loop.run_sync(self.services.start)  # applied before it serves
        self.http_server.request_callback = appmod.make_app(self.services)  # the new daemon serves the port
        self.assertEqual(self.services.intake.generation, generation)
        self.assertEqual(self.poll(stream_id)["stream"], {"id": stream_id, "finish": True, "content": "今天晴，25 度"})
        rows = [r for r in self.inbound() if r["app"] == "assistant"]
        self.assertEqual([(r["msg_id"], r["deliveries"]) for r in rows], [("bot-left-1", 1)])

    def test_a_stop_while_a_bot_message_is_applied_lets_its_answer_start_first(self):
        self.pull_running(delay=3.0)
        receive, stored = self.services.inbox.receive, []

        async def slow_receive(*args, **kwargs):
            inbound = await receive(*args, **kwargs)
            if kwargs.get("stamp") is not None:  # stored with its journal mark; its stream still to start
                stored.append(inbound.id)
                await asyncio.sleep(0.5)
            return inbound

        self.services.inbox.receive = slow_receive
        stream_id = self.frame(self.post(self.message("大后天天气呢", msgid="bot-cut-1")))["stream"]["id"]
        self.wait_for(lambda: stored)
        self.io_loop.run_sync(self.services.close)  # while the entry is half applied
        self.services = Services(self.config)
        self.io_loop.run_sync(self.services.start)
        self.http_server.request_callback = appmod.make_app(self.services)
        self.assertEqual(self.poll(stream_id)["stream"], {"id": stream_id, "finish": True, "content": "今天晴，25 度"})


class BotWebhookIntakeTest(BotTestCase):
    """A journaled 智能机器人 message whose rule waits for a webhook (within the passive budget) does
    not hold up the journal: the entries after it are applied meanwhile, and the webhook's reply still
    comes into the message's stream."""

    server_settings = IntakeTest.server_settings
    prepare_fake = IntakeTest.prepare_fake
    pull_running = IntakeTest.pull_running

    def get_app(self):
        from tornado import httpserver, netutil, web

        release = self.release = asyncio.Event()  # set by the test: until then the webhook keeps its answer

        class Slow(web.RequestHandler):
            async def post(self):
                await release.wait()
                self.finish({"reply": "订单已发货"})

        sockets = netutil.bind_sockets(0, "127.0.0.1")
        self.hook_server = httpserver.HTTPServer(web.Application([("/hook", Slow)]))
        self.hook_server.add_sockets(sockets)
        self.extra_config += ("\n[rule:order]\napp = assistant\nwhen = text contains 订单\n"
                              "webhook = http://127.0.0.1:%d/hook\n" % sockets[0].getsockname()[1])
        return super().get_app()

    def setUp(self) -> None:
        self.extra_config = BOT % 30 + IntakeTest.extra_config
        WecomdTestCase.setUp(self)
        self.wait_for(lambda: self.kf.sync_calls and not self.services.kf.puller.pulling())  # the startup pull

    def tearDown(self) -> None:
        self.release.set()
        self.hook_server.stop()
        super().tearDown()

    def test_a_webhook_rules_wait_does_not_hold_up_the_entries_after_it(self):
        self.pull_running(delay=3.0)
        stream_id = self.frame(self.post(self.message("我的订单到哪了")))["stream"]["id"]
        self.assertEqual(self.callback(text("你好", "7000000000000000031")).code, 200)  # journaled after it
        # Applied while the webhook still keeps its answer: sooner than the passive budget (3.5 s),
        # which the entry before it waited for in the applier before.
        self.wait_for(lambda: "你好" in [r["content"] for r in self.inbound()], timeout=3.0)
        self.assertEqual(self.poll(stream_id)["stream"], {"id": stream_id, "finish": False, "content": ""})
        self.release.set()  # within the budget: the reply is the stream's answer, as without a pull
        self.wait_for(lambda: self.poll(stream_id)["stream"]["finish"])
        self.assertEqual(self.poll(stream_id)["stream"]["content"], "订单已发货")
        answers = [m["content"] for m in self.rows() if m["direction"] == "out" and m["app"] == "assistant"]
        self.assertEqual(answers, ["订单已发货"])


    def test_a_retry_while_the_webhook_keeps_its_reply_gets_the_same_stream_and_one_answer(self):
        self.pull_running(delay=3.0)
        payload = self.message("订单发了吗", msgid="bot-hook-retry")
        stream_id = self.frame(self.post(payload))["stream"]["id"]
        self.wait_for(lambda: "订单发了吗" in [r["content"] for r in self.inbound()])  # stored, waiting
        self.assertEqual(self.frame(self.post(payload))["stream"]["id"], stream_id)  # WeCom's retry, journaled
        self.wait_for(lambda: [r["deliveries"] for r in self.inbound() if r["msg_id"] == "bot-hook-retry"] == [2])
        self.assertFalse(self.poll(stream_id)["stream"]["finish"])  # both still wait for the one webhook
        self.release.set()
        self.wait_for(lambda: self.poll(stream_id)["stream"]["finish"])
        self.assertEqual(self.poll(stream_id)["stream"]["content"], "订单已发货")
        self.wait_for(lambda: not self.services.bots._answering)
        answers = [m["content"] for m in self.rows() if m["direction"] == "out" and m["app"] == "assistant"]
        self.assertEqual(answers, ["订单已发货"])

    def test_a_stop_waits_for_a_webhook_within_its_limit_then_cuts_it_off(self):
        self.services.webhooks.request_timeout = 2.0  # the stop waits for a delivery in flight: not 10 s here
        self.pull_running(delay=3.0)
        stream_id = self.frame(self.post(self.message("订单呢", msgid="bot-hook-cut")))["stream"]["id"]
        self.wait_for(lambda: "订单呢" in [r["content"] for r in self.inbound()])  # stored; the webhook keeps its reply
        with mock.patch.object(intake, "STOP_WAIT", 0.5), \
                self.assertLogs("wecomd.intake", logging.WARNING) as logs:
            self.io_loop.run_sync(self.services.close, timeout=10)  # never answered: cut off, not hung
        self.assertIn("1 answer(s) of entries applied did not finish within 0 s: cut off", logs.output[-1])
        self.services = Services(self.config)
        self.io_loop.run_sync(self.services.start)
        self.http_server.request_callback = appmod.make_app(self.services)
        # Stored once with its mark, so never applied again; its stream was never started.
        self.assertEqual(self.poll(stream_id)["stream"], {"id": stream_id, "finish": True, "content": ""})
        self.assertEqual([r["msg_id"] for r in self.inbound() if r["app"] == "assistant"], ["bot-hook-cut"])

async def _never() -> None:
    """Intake._apply_all that applies nothing (a stop came first)."""
