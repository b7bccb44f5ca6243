"""微信客服's pulls in a process of their own ([server] kf_pull = process, the default; wecomd.kf.process):
the real daemon on a loopback port, its SQLite file, the sandbox WeCom on another port, and the
child process the daemon starts, which pulls from the sandbox into the same file."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
from unittest import mock

from support.base import WecomdTestCase
from support.config import kf_app_section
from support.peer import CORP_ID
from wecomd.kf import process as processmod
from wecomd.wecom import kf as kfproto
from wecomd.wecom import samples
from wecomd.wecom.simulate_kf import callback_plaintext

KFID, ALICE, BOB = "wkSupport01", "wmAliceExternal0001", "wmBobExternal0002"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class KfProcessTest(WecomdTestCase):
    extra_config = kf_app_section(more="kf_accounts = %s" % KFID) + """
[rule:price]
app = kefu
when = text contains 价格
reply = 价格表在官网：example.com/price

[rule:hello]
app = kefu
when = text equals 您好
reply = 您好，{user_name}！
"""

    def prepare_fake(self, fake) -> None:
        self.kf = fake.kf
        self.kf.add_account(KFID, "售后客服")
        self.kf.add_customer(ALICE, "爱丽丝")
        self.kf.add_customer(BOB, "鲍勃")

    def setUp(self) -> None:
        super().setUp()
        self.puller = self.services.kf.puller
        self.assertIsInstance(self.puller, processmod.KfPullProcess)
        # The child's startup pull of the configured account (nothing there yet).
        self.wait_for(lambda: self.puller.pid and self.kf.sync_calls and not self.puller.pulling(), timeout=30)

    def ring(self, token: str):
        return self.callback(callback_plaintext(CORP_ID, KFID, token), app="kefu")

    def kept_token(self) -> str:
        model = self.services.store.models.KfCursor
        return self.db(lambda: model.get(model.open_kfid == KFID).token)

    def test_the_child_pulls_and_the_daemon_shows_answers_and_names_what_it_stored(self):
        pid = self.puller.pid
        self.assertNotEqual(pid, os.getpid())
        self.assertTrue(alive(pid))

        headers = self.login()

        async def watch():
            ws = await self.ws_connect(headers)
            item, token = self.kf.push(KFID, ALICE, "价格多少？")
            request = self.peer.callback(callback_plaintext(CORP_ID, KFID, token))
            resp = await self.http_client.fetch(self.get_url("/callback/kefu?" + request.query), method="POST",
                                                body=request.body)
            self.assertEqual((resp.code, resp.body), (200, b""))
            while True:  # the live event, pushed by the daemon for a row the child stored
                for event in json.loads(await asyncio.wait_for(ws.read_message(), 10)):
                    if event.get("type") == "message" and event["message"].get("msg_id") == item["msgid"]:
                        ws.close()
                        return item, event["message"]

        item, live = self.io_loop.run_sync(watch, timeout=20)
        self.assertEqual((live["from_user"], live["content"]), (kfproto.conversation_key(KFID, ALICE), "价格多少？"))
        row = self.stored_msg(item["msgid"])
        self.assertEqual((row["app"], row["direction"]), ("kefu", "in"))
        # The rule ran in the daemon and answered through kf/send_msg.
        sent = self.wait_for(lambda: self.kf.sent)
        self.assertEqual((sent[0]["touser"], sent[0]["text"]["content"]), (ALICE, "价格表在官网：example.com/price"))
        # The nickname resolved by the daemon (customer/batchget) for the new customer.
        named = self.wait_for(lambda: self.db(self.services.store.kf.customers, [ALICE]).get(ALICE))
        self.assertEqual(named["nickname"], "爱丽丝")
        self.assertEqual(self.puller.pid, pid)  # the same child all along
        # The child's writer's transactions (its page kept with the cursor, its slices) in the
        # daemon's /metrics, reported within a second.
        def pulled_transactions(kind: str) -> float:
            scraped = self.fetch("/metrics", headers=self.bearer()).body.decode()
            found = re.search(r'^wecomd_db_transaction_seconds_count\{kind="%s"\} (\S+)$' % kind, scraped, re.M)
            return float(found.group(1)) if found else 0.0
        self.wait_for(lambda: pulled_transactions("pull_bulky") > 0)
        self.assertGreater(pulled_transactions("pull_call"), 0)  # the lease, the doorbell's token

    def test_callbacks_while_the_child_pulls_are_journaled_and_applied(self):
        self.fake.latency = 0.5  # WeCom answers slowly: the pull runs for a while
        _, token = self.kf.push(KFID, ALICE, "在吗")
        self.assertEqual(self.ring(token).code, 200)
        self.wait_for(self.puller.pulling)
        second, token2 = self.kf.push(KFID, BOB, "你好")
        xml = samples.build("text", corp_id=CORP_ID, agent_id="1000002", content="我也有个问题",
                            msg_id="7100000000000000001")
        with self.assertLogs("wecomd.handlers.callback", logging.INFO) as logs:
            self.assertEqual(self.ring(token2).code, 200)
            app_answer = self.callback(xml)
        self.assertEqual((app_answer.code, app_answer.body), (200, b""))
        self.assertIn("outcome=kf pull", logs.output[0])
        self.assertIn("outcome=journaled", logs.output[1])
        self.assertEqual(self.services.intake.recorded, 1)  # the app's message; the doorbell went to the child
        self.assertTrue(self.puller.pulling())
        self.stored_msg("7100000000000000001")
        self.stored_msg(second["msgid"], timeout=20)  # the doorbell made the child pull once more
        self.wait_for(lambda: not self.puller.pulling() and not self.services.intake.active(), timeout=20)
        self.assertEqual(self.kf.sync_calls[-1]["token"], token2)
        self.assertEqual(self.kept_token(), token2)  # kept by the child

    def test_a_pull_process_that_dies_is_started_again_and_pulls(self):
        old = self.puller.pid
        with self.assertLogs("wecomd.kf.process", logging.ERROR) as logs:
            os.kill(old, signal.SIGKILL)
            self.wait_for(lambda: self.puller.pid and self.puller.pid != old, timeout=20)
        self.assertIn("the pull process exited (code -9)", logs.output[0])
        self.assertFalse(alive(old))
        item, token = self.kf.push(KFID, ALICE, "重启后")
        self.assertEqual(self.ring(token).code, 200)
        self.stored_msg(item["msgid"], timeout=20)
        self.assertEqual(self.puller.started, 2)
        scraped = self.fetch("/metrics", headers=self.bearer()).body.decode()
        self.assertIn("wecomd_kf_pull_process_up 1.0", scraped)
        self.assertIn("wecomd_kf_pull_process_starts 2.0", scraped)  # a restart shows
        self.assertIn("wecomd_intake_pending 0.0", scraped)

    def test_a_doorbell_while_no_child_runs_is_kept_by_the_daemon_and_pulled_by_the_next(self):
        self.fake.latency = 0.3
        old = self.puller.pid
        os.kill(old, signal.SIGKILL)
        self.wait_for(lambda: not self.puller.takes_bells(), timeout=10)  # the daemon saw it go
        item, token = self.kf.push(KFID, ALICE, "没人在的时候")
        self.assertEqual(self.ring(token).code, 200)
        self.assertEqual(self.kept_token(), token)  # committed before the 200
        self.stored_msg(item["msgid"], timeout=30)  # the next child's startup pull
        self.assertNotEqual(self.puller.pid, old)

    def test_close_stops_the_child(self):
        pid = self.puller.pid
        self.io_loop.run_sync(self.services.close)
        self.assertFalse(alive(pid))
        self.assertIsNone(self.puller.pid)
        self.services = type(self.services)(self.config)  # for tearDown, which closes it
        self.io_loop.run_sync(self.services.start)

    def test_a_rule_greets_a_new_customer_by_the_nickname_wecom_knows(self):
        item, token = self.kf.push(KFID, BOB, "您好")
        self.assertEqual(self.ring(token).code, 200)
        sent = self.wait_for(lambda: [m for m in self.kf.sent if m["touser"] == BOB])
        # Never seen before: the nickname is asked of customer/batchget before the answer goes out.
        self.assertEqual(sent[0]["text"]["content"], "您好，鲍勃！")

    def test_the_name_is_looked_up_only_for_a_rule_that_uses_it(self):
        runner, asked = self.services.rule_runner, []
        name_of = runner.name_of

        async def counted(app, user):
            asked.append(user)
            return await name_of(app, user)

        runner.name_of = counted
        _, token = self.kf.push(KFID, ALICE, "价格多少")  # its rule does not use {user_name}
        self.assertEqual(self.ring(token).code, 200)
        self.wait_for(lambda: len([m for m in self.kf.sent if m["touser"] == ALICE]) == 1)
        self.assertEqual(asked, [])
        _, token = self.kf.push(KFID, ALICE, "您好")
        self.assertEqual(self.ring(token).code, 200)
        sent = self.wait_for(lambda: [m for m in self.kf.sent if m["touser"] == ALICE][1:])
        self.assertEqual(sent[0]["text"]["content"], "您好，爱丽丝！")
        self.assertEqual(asked, [kfproto.conversation_key(KFID, ALICE)])

    def test_a_reload_reaches_the_child(self):
        other = "wkSupport02"
        self.kf.add_account(other, "第二个客服")
        path = self.config.path
        path.write_text(path.read_text(encoding="utf-8").replace(
            "kf_accounts = %s" % KFID, "kf_accounts = %s, %s" % (KFID, other)), encoding="utf-8")
        self.assertTrue(self.services.reload({}))
        item, token = self.kf.push(other, ALICE, "第二个账号")
        self.assertEqual(self.callback(callback_plaintext(CORP_ID, other, token), app="kefu").code, 200)
        row = self.stored_msg(item["msgid"], timeout=20)  # the child serves the account the reload added
        self.assertEqual(row["from_user"], kfproto.conversation_key(other, ALICE))

    def test_close_while_waiting_to_start_the_child_again_does_not_wait_for_it(self):
        self.io_loop.run_sync(self.services.close)
        with mock.patch.object(processmod, "RESTART", 30.0):
            self.services = type(self.services)(self.config)
            self.io_loop.run_sync(self.services.start)
        puller = self.services.kf.puller
        self.wait_for(lambda: puller.pid, timeout=30)
        os.kill(puller.pid, signal.SIGKILL)
        self.wait_for(lambda: not puller.takes_bells(), timeout=10)  # gone; the next one in 30 s
        started = time.monotonic()
        self.io_loop.run_sync(self.services.close, timeout=60)
        self.assertLess(time.monotonic() - started, 5.0)
        self.services = type(self.services)(self.config)  # for tearDown, which closes it
        self.io_loop.run_sync(self.services.start)
