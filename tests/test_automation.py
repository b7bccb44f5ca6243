"""Rules on the real server: passive replies, commands, webhooks, hybrid delivery, takeover, reload."""
from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from support.base import WecomdTestCase
from support.cli import wecomd
from support.peer import CORP_ID
from wecomd.wecom import samples
from wecomd.workers import webhooks

PY = sys.executable
RULES = """
[rules]
takeover_minutes = 30
passive_budget = 1.0

[rule:greet]
app = helpdesk
when = text contains 你好
reply = 你好，{from_user}！

[rule:ticket]
when = text matches ^工单\\s*(?P<num>\\d+)$
reply = 工单 {num} 已收到

[rule:fast]
when = click FAST
run = /bin/echo fast {event_key}

[rule:slow]
when = click SLOW
run = %(py)s -c "import time; time.sleep(1.6); print('slow done')"
reply = 开始了

[rule:slowonly]
when = click SLOWONLY
run = %(py)s -c "import time; time.sleep(1.6); print('late result')"

[rule:hang]
when = click HANG
run = %(py)s -c "import time; time.sleep(30)"
timeout = 0.5

[rule:inject]
when = text matches ^echo (.*)$
run = %(py)s -c "import sys; print(repr(sys.argv[1:]))" {1}

[rule:hook]
when = text contains webhook
webhook = http://127.0.0.1:%(port)d/hook
webhook_secret = s3cret-hook-key
"""


class Receiver(web.RequestHandler):
    """A webhook receiver that checks the signature and answers as the test tells it to."""

    def initialize(self, state: dict) -> None:
        self.state = state

    async def post(self) -> None:
        ok = webhooks.verify("s3cret-hook-key", self.request.body, self.request.headers.get(webhooks.SIGNATURE_HEADER, ""))
        self.state["deliveries"].append((ok, json.loads(self.request.body)))
        if self.state["fail"] > 0:
            self.state["fail"] -= 1
            raise web.HTTPError(500)
        await asyncio.sleep(self.state["delay"])
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"reply": self.state["reply"]}) if self.state["reply"] else "{}")


def click(key: str, user: str = "lisi") -> str:
    return samples.build("click", corp_id=CORP_ID, agent_id="1000002", from_user=user, event_key=key)


def text(content: str, user: str = "zhangsan") -> str:
    return samples.build("text", corp_id=CORP_ID, agent_id="1000002", from_user=user, content=content)


class AutomationTest(WecomdTestCase):
    def get_app(self):
        sock, port = bind_unused_port()
        self.hook = {"deliveries": [], "fail": 0, "delay": 0.0, "reply": None}
        self.receiver = HTTPServer(web.Application([("/hook", Receiver, dict(state=self.hook))]))
        self.receiver.add_sockets([sock])
        self.extra_config = RULES % {"py": PY, "port": port}
        return super().get_app()

    def tearDown(self):
        self.receiver.stop()
        super().tearDown()

    def reply_of(self, resp) -> str | None:
        self.assertEqual(resp.code, 200)
        return ET.fromstring(self.peer.read_reply(resp.body)).findtext("Content") if resp.body else None


    def runs(self, message_id: int) -> list:
        return self.db(self.services.store.messages.get, message_id)["automation"]

    # --- replies ----------------------------------------------------------------------------

    def test_keyword_reply_is_the_passive_reply_and_recorded(self):
        self.assertEqual(self.reply_of(self.callback(text("你好呀"))), "你好，zhangsan！")
        [row] = self.inbound()
        [run] = self.runs(row["id"])
        self.assertEqual((run["rule"], run["action"], run["status"], run["path"]), ("greet", "reply", "ok", "passive"))

    def test_regex_named_group_and_default_reply_fallback(self):
        self.assertEqual(self.reply_of(self.callback(text("工单 4711"))), "工单 4711 已收到")
        self.assertEqual(self.reply_of(self.callback(text("something else"))), "已收到")  # the app's reply =

    def test_rule_for_another_app_does_not_fire(self):
        resp = self.callback(text("你好"), app="quiet", agent_id="1000003")
        self.assertEqual((resp.code, resp.body), (200, b""))

    # --- commands ---------------------------------------------------------------------------

    def test_fast_command_output_is_the_passive_reply(self):
        self.assertEqual(self.reply_of(self.callback(click("FAST"))), "fast FAST")
        [run] = self.runs(self.inbound()[0]["id"])
        self.assertEqual((run["action"], run["status"], run["exit_code"], run["path"]), ("run", "ok", 0, "passive"))

    def test_slow_command_after_reply_is_sent_once_through_the_api_despite_retries(self):
        req = self.peer.callback(click("SLOW"))
        first = self.fetch("/callback/helpdesk?" + req.query, method="POST", body=req.body)
        self.assertEqual(self.reply_of(first), "开始了")
        for _ in range(3):  # WeCom retrying the same delivery
            self.assertEqual(self.reply_of(self.fetch("/callback/helpdesk?" + req.query, method="POST", body=req.body)), "开始了")
        self.wait_for(lambda: len(self.fake.sent) >= 1)
        self.io_loop.run_sync(lambda: asyncio.sleep(0.5))
        self.assertEqual([m["text"]["content"] for m in self.fake.sent], ["slow done"])
        [row] = self.inbound()
        self.assertEqual(row["deliveries"], 4)
        runs = {r["action"]: r for r in self.runs(row["id"])}
        self.assertEqual(set(runs), {"reply", "run"})  # the command started once
        self.assertEqual((runs["reply"]["path"], runs["run"]["path"]), ("passive", "api"))
        # Both answers are in the thread once, oldest first: the passive one, then the API one.
        outbound = [(o["content"], o["operator"], o["automatic"], o["rule"], o["status"])
                    for o in reversed(self.rows()) if o["direction"] == "out"]
        self.assertEqual(outbound, [("开始了", "rule:slow", "passive", "slow", "sent"),
                                    ("slow done", "rule:slow", "api", "slow", "sent")])

    def test_command_past_the_budget_gets_an_empty_200_then_the_api(self):
        started = time.monotonic()
        resp = self.callback(click("SLOWONLY"))
        elapsed = time.monotonic() - started
        self.assertEqual((resp.code, resp.body), (200, b""))
        self.assertLess(elapsed, 1.5)  # the budget is 1.0 s, well inside WeCom's 5 s
        self.wait_for(lambda: self.fake.sent)
        self.assertEqual(self.fake.sent[0]["text"]["content"], "late result")
        self.assertEqual(self.fake.sent[0]["touser"], "lisi")

    def test_timeout_kills_the_command_and_tells_the_user(self):
        resp = self.callback(click("HANG"))
        self.assertEqual(self.reply_of(resp), "执行超时（0.5 秒）")
        [run] = self.runs(self.inbound()[0]["id"])
        self.assertEqual((run["status"], run["exit_code"]), ("timeout", None))
        self.assertLess(run["duration_ms"], 5000)

    def test_user_text_is_one_argument_never_shell(self):
        evil = "; rm -rf / && echo $(id) `id` \"q\" 'q'"
        out = self.reply_of(self.callback(text("echo " + evil)))
        self.assertEqual(out, repr([evil]))

    # --- webhooks ---------------------------------------------------------------------------

    def test_webhook_is_signed_and_its_reply_is_passive(self):
        self.hook["reply"] = "来自 webhook"
        self.assertEqual(self.reply_of(self.callback(text("webhook please"))), "来自 webhook")
        [(signed, body)] = self.hook["deliveries"]
        self.assertTrue(signed)
        self.assertEqual((body["rule"], body["app"], body["message"]["content"]), ("hook", "helpdesk", "webhook please"))

    def test_slow_webhook_reply_goes_through_the_api(self):
        self.hook.update(reply="slow hook answer", delay=1.5)
        resp = self.callback(text("webhook slow"))
        self.assertEqual(self.reply_of(resp), "已收到")  # nothing answered in time: the app's own reply =
        self.wait_for(lambda: self.fake.sent)
        self.assertEqual([m["text"]["content"] for m in self.fake.sent], ["slow hook answer"])

    def test_failing_webhook_is_retried_and_answers_once(self):
        self.hook.update(reply="after retry", fail=1)
        self.services.webhooks.backoff_base = 0.1
        self.services.webhooks.poll_interval = 0.1
        resp = self.callback(text("webhook flaky"))
        self.assertEqual(self.reply_of(resp), "已收到")
        self.wait_for(lambda: self.fake.sent)
        self.io_loop.run_sync(lambda: asyncio.sleep(0.5))
        self.assertEqual([m["text"]["content"] for m in self.fake.sent], ["after retry"])
        self.assertEqual(len(self.hook["deliveries"]), 2)

    # --- automatic answers are messages ------------------------------------------------------

    def thread(self, user: str = "zhangsan") -> list:
        """The conversation as /api/messages gives it, oldest first."""
        status, data = self.api("/api/messages", app="helpdesk", user=user)
        self.assertEqual(status, 200)
        return list(reversed(data["messages"]))

    def answers(self, user: str = "zhangsan") -> list:
        return [(m["content"], m["automatic"], m["rule"], m["operator"], m["status"])
                for m in self.thread(user) if m["direction"] == "out"]

    def test_app_reply_is_an_automatic_message_in_the_thread(self):
        self.assertEqual(self.reply_of(self.callback(text("something else"))), "已收到")
        inbound, answer = self.thread()
        self.assertEqual((inbound["direction"], inbound["automatic"], inbound["rule"]), ("in", None, None))
        self.assertEqual((answer["direction"], answer["to_user"], answer["content"]), ("out", "zhangsan", "已收到"))
        # Marked automatic, delivered passively, no rule: the app's own reply =.
        self.assertEqual(self.answers(), [("已收到", "passive", None, None, "sent")])
        self.assertEqual(answer["automation"], [])
        # Delivered in the callback's answer: never the outbox's to send again.
        self.assertEqual(self.db(self.services.store.outbox.due, datetime.now(timezone.utc)), [])
        conv = {c["user"]: c for c in self.api("/api/conversations")[1]["conversations"]}["zhangsan"]
        self.assertEqual((conv["count"], conv["unread"], conv["last_id"]), (2, 1, answer["id"]))

    def test_keyword_rule_reply_names_its_rule(self):
        self.assertEqual(self.reply_of(self.callback(text("你好呀"))), "你好，zhangsan！")
        self.assertEqual(self.answers(), [("你好，zhangsan！", "passive", "greet", "rule:greet", "sent")])
        inbound, answer = self.thread()
        [run] = inbound["automation"]
        self.assertEqual(self.db(self.services.store.runs.get, run["id"])["reply_message_id"], answer["id"])
        self.assertEqual(self.db(self.services.store.outbox.due, datetime.now(timezone.utc)), [])

    def test_retries_store_no_second_answer(self):
        for content in ("retry me", "你好 retry"):  # the app's reply; a rule's
            req = self.peer.callback(text(content))
            for _ in range(3):
                resp = self.fetch("/callback/helpdesk?" + req.query, method="POST", body=req.body)
                self.assertIn(self.reply_of(resp), ("已收到", "你好，zhangsan！"))
        self.assertEqual([r["deliveries"] for r in reversed(self.inbound())], [3, 3])
        self.assertEqual(self.answers(), [("已收到", "passive", None, None, "sent"),
                                          ("你好，zhangsan！", "passive", "greet", "rule:greet", "sent")])

    def test_no_answer_while_paused_or_for_events(self):
        self.callback(click("NOTHING"))  # events get no app reply
        self.assertEqual(self.answers("lisi"), [])
        self.api("/api/messages", method="POST", body={"app": "helpdesk", "to_user": "zhangsan", "content": "我来"})
        resp = self.callback(text("something"))
        self.assertEqual((resp.code, resp.body), (200, b""))
        self.assertEqual([a[:4] for a in self.answers()], [("我来", None, None, "admin")])  # only the operator's

    def test_app_reply_is_stored_in_the_messages_own_writer_call(self):
        """The common case stays one commit: the message, its reply and its answer row together."""
        names, real = [], self.services.writer.run

        async def spy(fn, *args, **kwargs):
            names.append(fn.__name__)
            return await real(fn, *args, **kwargs)

        self.services.writer.run = spy
        self.assertEqual(self.reply_of(self.callback(text("one commit"))), "已收到")
        self.services.writer.run = real
        self.assertEqual([n for n in names if not n.startswith("due_")], ["store_answered"])
        self.assertEqual(len(self.answers()), 1)

    def test_live_feed_gets_the_automatic_answers(self):
        headers = self.session()
        ws = self.io_loop.run_sync(lambda: self.ws_connect(headers))
        self.callback(text("live fallback"))
        self.callback(text("你好 live"))
        seen = []

        async def read_until_two_answers():
            while len([e for e in seen if e["message"]["direction"] == "out"]) < 2:
                raw = await asyncio.wait_for(ws.read_message(), 5)
                self.assertIsNotNone(raw, "socket closed")
                seen.extend(e for e in json.loads(raw) if e.get("type") == "message")

        self.io_loop.run_sync(read_until_two_answers)
        ws.close()
        answers = [(e["message"]["content"], e["message"]["automatic"], e["message"]["rule"])
                   for e in seen if e["message"]["direction"] == "out"]
        self.assertEqual(answers, [("已收到", "passive", None), ("你好，zhangsan！", "passive", "greet")])
        self.assertTrue(all("reply" not in e["message"] for e in seen))

    def test_export_includes_automatic_answers(self):
        self.callback(text("export me"))
        self.callback(text("你好 export"))
        self.callback(click("SLOWONLY"))
        self.wait_for(lambda: self.fake.sent)
        jsonl = wecomd("export", "-c", str(self.config.path))
        self.assertEqual(jsonl.returncode, 0, jsonl.stderr)
        rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
        self.assertEqual([(r["content"], r["automatic"], r["rule"]) for r in rows if r["direction"] == "out"],
                         [("已收到", "passive", None), ("你好，zhangsan！", "passive", "greet"),
                          ("late result", "api", "slowonly")])
        table = wecomd("export", "-c", str(self.config.path), "--format", "csv")
        rows = list(csv.DictReader(io.StringIO(table.stdout)))
        self.assertEqual([(r["content"], r["automatic"], r["rule"]) for r in rows if r["direction"] == "out"],
                         [("已收到", "passive", ""), ("你好，zhangsan！", "passive", "greet"),
                          ("late result", "api", "slowonly")])

    # --- takeover ---------------------------------------------------------------------------

    def test_operator_reply_pauses_automation_and_resume_restores_it(self):
        status, _ = self.api("/api/messages", method="POST", body={"app": "helpdesk", "to_user": "zhangsan", "content": "我来处理"})
        self.assertEqual(status, 201)
        conv = {c["user"]: c for c in self.api("/api/conversations")[1]["conversations"]}
        self.assertTrue(conv["zhangsan"]["paused_until"])
        resp = self.callback(text("你好"))
        self.assertEqual((resp.code, resp.body), (200, b""))  # neither the rule nor the app's reply
        run = self.runs(self.inbound()[0]["id"])[0]
        self.assertEqual((run["rule"], run["status"]), ("greet", "skipped"))
        self.hook["reply"] = None
        self.callback(text("webhook while paused"))
        self.wait_for(lambda: self.hook["deliveries"])  # webhooks still forward
        status, _ = self.api("/api/takeover/resume", method="POST", body={"app": "helpdesk", "user": "zhangsan"})
        self.assertEqual(status, 204)
        self.assertEqual(self.reply_of(self.callback(text("你好 again"))), "你好，zhangsan！")

    # --- visibility and reload -------------------------------------------------------------

    def test_rules_api_lists_hits_and_never_secrets(self):
        self.callback(text("你好"))
        self.callback(text("你好 2"))
        status, data = self.api("/api/rules")
        self.assertEqual(status, 200)
        by_name = {r["name"]: r for r in data["rules"]}
        self.assertEqual(by_name["greet"]["hits"], 2)
        self.assertTrue(by_name["greet"]["last_fired"].endswith("Z"))
        self.assertEqual(by_name["fast"]["hits"], 0)
        self.assertNotIn("s3cret-hook-key", json.dumps(data))

    def test_reload_refuses_a_bad_config_and_applies_a_good_one(self):
        path = self.config.path
        good = path.read_text(encoding="utf-8")
        path.write_text(good.replace("when = text contains 你好", "when = text resembles 你好"), encoding="utf-8")
        with self.assertLogs("wecomd.services", level="ERROR") as logs:
            self.assertFalse(self.services.reload({}))
        self.assertIn("resembles", logs.output[0])
        self.assertEqual(self.reply_of(self.callback(text("你好"))), "你好，zhangsan！")  # old rules kept
        path.write_text(good.replace("reply = 你好，{from_user}！", "reply = 您好，{from_user}"), encoding="utf-8")
        self.assertTrue(self.services.reload({}))
        self.assertEqual(self.reply_of(self.callback(text("你好 new"))), "您好，zhangsan")
