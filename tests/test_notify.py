"""Group robots (群机器人) as a rule action: [group:NAME] config, `notify = NAME`, the durable queue in
rule_run, WeCom's 20-a-minute limit, 45009/93000, splitting, and the key never shown."""
from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest

from support.aio import async_test
from support.base import WecomdTestCase
from support.cli import wecomd
from support.config import write_config
from support.harness import StoreHarness
from support.peer import CORP_ID
from wecomd import config
from wecomd.automation import rules as rulesmod
from wecomd.config import GroupConfig
from wecomd.store.times import utcnow
from wecomd.wecom import sandbox, samples
from wecomd.wecom.messages import Message
from wecomd.workers import notify
from wecomd.workers.notify import NotifySender

KEY = "693a91f6-7b2c-4bc4-97a0-0ec2f1fa5aaa"
OTHER_KEY = "0b1c2d3e-0000-4000-8000-00000000dead"
GROUP = "\n[group:ops]\nwebhook_key = %s\n" % KEY


def text(content: str, user: str = "zhangsan") -> str:
    return samples.build("text", corp_id=CORP_ID, agent_id="1000002", from_user=user, content=content)


# --- config -------------------------------------------------------------------------------------

def load(tmp_path, extra: str, environ=None):
    return config.load(write_config(tmp_path, extra=extra), environ or {})


def found(tmp_path, extra: str, environ=None) -> list:
    return config.problems(write_config(tmp_path, extra=extra), environ or {})


def test_a_group_loads_its_key_from_the_file_the_environment_or_a_key_file(tmp_path):
    group = load(tmp_path, GROUP).groups["ops"]
    assert (group.name, group.webhook_key) == ("ops", KEY)
    assert KEY not in repr(load(tmp_path, GROUP))
    env = load(tmp_path, GROUP, {"WECOMD_GROUP_OPS_WEBHOOK_KEY": OTHER_KEY})
    assert env.groups["ops"].webhook_key == OTHER_KEY
    assert env.sources[("group:ops", "webhook_key")] == "environment WECOMD_GROUP_OPS_WEBHOOK_KEY"
    (tmp_path / "ops.key").write_text(OTHER_KEY + "\n", encoding="utf-8")
    from_file = load(tmp_path, "\n[group:ops]\nwebhook_key_file = ops.key\n")
    assert from_file.groups["ops"].webhook_key == OTHER_KEY
    # Only a header in the file: the key from the environment, as with apps.
    header_only = load(tmp_path, "\n[group:ops]\n", {"WECOMD_GROUP_OPS_WEBHOOK_KEY": KEY})
    assert header_only.groups["ops"].webhook_key == KEY


def test_group_problems_are_named_and_never_show_the_key(tmp_path):
    missing = found(tmp_path, "\n[group:ops]\n")
    assert any("[group:ops] webhook_key: missing (required; or webhook_key_file, or "
               "WECOMD_GROUP_OPS_WEBHOOK_KEY in the environment)" in p for p in missing), missing
    url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=" + KEY
    pasted = found(tmp_path, "\n[group:ops]\nwebhook_key = %s\n" % url)
    assert any("[group:ops] webhook_key: the key alone, not the whole webhook URL" in p for p in pasted), pasted
    assert not any(KEY in p for p in pasted)
    spaced = found(tmp_path, "\n[group:ops]\nwebhook_key = abc def%s\n" % KEY)
    assert any("webhook_key: must be 1 to 128 characters" in p for p in spaced) and not any(KEY in p for p in spaced)
    assert any("[group:o/ps]: a group's name is 1 to 64" in p for p in found(tmp_path, "\n[group:o/ps]\nwebhook_key = k\n"))
    assert any("[group:ops] webhok_key: unknown option (did you mean webhook_key?)" in p
               for p in found(tmp_path, GROUP + "webhok_key = x\n"))


def test_rule_notify_options_are_checked(tmp_path):
    def problems_of(rule: str) -> list:
        return found(tmp_path, GROUP + "\n[rule:r]\nwhen = text matches ^紧急(.*)$\n" + rule)

    unknown = problems_of("notify = opz\n")
    assert any("[rule:r] notify: no [group:opz] section (did you mean ops?)" in p for p in unknown), unknown
    assert any("[rule:r] notify_format: must be text or markdown (got 'html')" in p
               for p in problems_of("notify = ops\nnotify_format = html\n"))
    assert any("[rule:r] notify_text: set without a notify" in p for p in problems_of("reply = x\nnotify_text = {1}\n"))
    assert any("[rule:r] notify_format: set without a notify" in p for p in problems_of("reply = x\nnotify_format = text\n"))
    assert any("[rule:r] notify_text: {2}: the regex has 1 group" in p
               for p in problems_of("notify = ops\nnotify_text = {2}\n"))
    assert any("{form_user}: unknown field (did you mean from_user?)" in p
               for p in problems_of("notify = ops\nnotify_text = {form_user}\n"))
    # notify alone is something to do; markdown in any case.
    assert problems_of("notify = ops\nnotify_format = Markdown\nnotify_text = **{1}**\n") == []
    loaded = load(tmp_path, GROUP + "\n[rule:r]\nwhen = any\nnotify = ops\nnotify_format = Markdown\n")
    assert rulesmod.compile_rules(loaded.rules)[0].notify_format == "markdown"


def test_check_refuses_a_rule_that_names_no_group(tmp_path):
    conf = write_config(tmp_path, extra=GROUP + "\n[rule:r]\nwhen = any\nnotify = nobody\n")
    result = wecomd("check", "-c", str(conf))
    assert result.returncode == 1
    assert "[rule:r] notify: no [group:nobody] section" in result.stdout
    assert KEY not in result.stdout + result.stderr
    write_config(tmp_path, extra=GROUP + "\n[rule:r]\nwhen = any\nnotify = ops\n")
    assert wecomd("check", "-c", str(conf)).returncode == 0


# --- what the group is told, and how it is split --------------------------------------------------

def _match(rule_options: dict, content=None, msgtype="text", **fields):
    rule = rulesmod.compile_rules({"r": {"when": "any", "notify": "ops", **rule_options}})[0]
    message = Message(msgtype=msgtype, from_user="lisi", to_user="ww1", agent_id="1000002", create_time=1,
                      msg_id="1", content=content, fields={}, raw="", **fields)
    match = rulesmod.Match(rule)
    return rulesmod.notify_text(match, rulesmod.template_fields(match, "helpdesk", message), message)


def test_the_group_is_told_the_template_else_the_message_else_what_was_sent():
    assert _match({"notify_text": "{from_user}（{app}）：{content}"}, "机房断电") == "lisi（helpdesk）：机房断电"
    assert _match({}, "机房断电") == "机房断电"
    assert _match({}, None, msgtype="image") == "lisi: [image]"
    assert _match({}, None, msgtype="event", event="click", event_key="ALARM") == "lisi: [event click ALARM]"


@pytest.mark.parametrize("msgtype,limit", [("markdown", 4096), ("text", 2048)])
def test_long_texts_are_split_on_utf8_boundaries(msgtype, limit):
    original = "告警" * 3000 + "x"  # 18,001 bytes, no line break: every cut falls inside the text
    document = json.loads(notify.payload_for("ops", msgtype, original))
    parts = document["parts"]
    assert (document["group"], document["msgtype"], document["sent"]) == ("ops", msgtype, 0)
    assert len(parts) == -(-len(original.encode("utf-8")) // (limit - limit % 3))
    assert all(len(part.encode("utf-8")) <= limit for part in parts)
    assert "".join(parts) == original  # no character cut in half, nothing lost or repeated
    # A line break within reach is preferred, so markdown blocks stay whole.
    lines = ["**第 %d 项** 状态正常" % i for i in range(400)]
    split = json.loads(notify.payload_for("ops", msgtype, "\n".join(lines)))["parts"]
    assert [line for part in split for line in part.split("\n")] == lines


def test_a_short_text_is_one_part():
    assert json.loads(notify.payload_for("ops", "text", "你好"))["parts"] == ["你好"]
    assert notify.redacted_url("http://127.0.0.1:9/") == "http://127.0.0.1:9/cgi-bin/webhook/send?key=***"


# --- the worker, on the production writer, against the sandbox ----------------------------------

class Harness(StoreHarness):
    def __init__(self, tmp_path) -> None:
        super().__init__(tmp_path)
        self.fake = sandbox.FakeWecom()
        self.fake.robot_keys.add(KEY)
        self.groups = {"ops": GroupConfig("ops", KEY), "gone": GroupConfig("gone", OTHER_KEY)}

    async def __aenter__(self) -> "Harness":
        await super().__aenter__()
        self.server, self.base_url = await sandbox.start(self.fake)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop_workers()
        self.server.stop()
        await super().__aexit__(*exc_info)

    def sender(self, **options) -> NotifySender:
        settings = {"clock": self.clock, "poll_interval": 0.02, "request_timeout": 5.0, **options}
        cfg = SimpleNamespace(wecom=SimpleNamespace(api_base=self.base_url), groups=self.groups)
        return self.start(NotifySender(self.db, self.store, cfg, self.events.append, **settings))

    async def pending(self, text: str, group: str = "ops", msgtype: str = "text") -> dict:
        message = Message(msgtype="text", from_user="zhangsan", to_user="ww1", agent_id="1000002",
                          create_time=1764370000, msg_id=str(time.monotonic_ns()), content=text,
                          fields={}, raw="<xml/>")
        row, _ = await self.db(self.store.messages.save_inbound, "helpdesk", message, message.msg_id)
        return await self.db(self.store.runs.start, row["id"], "helpdesk", "zhangsan", "alert", "notify",
                             "pending", url=notify.redacted_url(self.base_url),
                             payload=notify.payload_for(group, msgtype, text))

    async def run(self, run_id: int) -> dict:
        return await self.db(self.store.runs.get, run_id)

    async def until_run(self, run_id: int, status: str, attempts=None) -> dict:
        async def check():
            run = await self.run(run_id)
            if run["status"] == status and (attempts is None or run["attempts"] == attempts):
                return run
        return await self.until(check)

    def robot_calls(self) -> int:
        return sum(1 for path, _ in self.fake.calls if path == sandbox.ROBOT_SEND)

    def contents(self) -> list:
        return [m["content"] for m in self.fake.robot_messages]


@async_test
async def test_a_notify_run_is_posted_once_and_finished_ok(tmp_path):
    async with Harness(tmp_path) as h:
        run = await h.pending("机房断电")
        h.sender()
        done = await h.until_run(run["id"], "ok")
        assert h.fake.robot_messages == [{"key": KEY, "msgtype": "text", "content": "机房断电"}]
        assert (done["output"], done["attempts"], done["error"]) == ("sent to group ops", 0, None)
        # The message is pushed again once its run is finished (right after the commit above).
        published = await h.until(lambda: _async([(r["action"], r["status"]) for e in h.events if e["type"] == "message"
                                                  for r in e["message"]["automation"]]))
        assert published == [("notify", "ok")]


@async_test
async def test_a_run_is_finished_even_when_its_message_cannot_be_read_to_push_again(tmp_path, caplog):
    """RunWorker._publish_message: the run's end is stored; a failed read of its message is logged
    with the worker's kind and pushes nothing."""
    from wecomd.store import StoreError

    async with Harness(tmp_path) as h:
        run = await h.pending("机房断电")

        def unreadable(message_id):
            raise StoreError("database is locked")

        h.store.messages.get = unreadable
        with caplog.at_level(logging.WARNING, logger="wecomd.workers.base"):
            h.sender()
            done = await h.until_run(run["id"], "ok")
            await h.until(lambda: _async(any("reading its message" in r.getMessage() for r in caplog.records)))
        assert done["output"] == "sent to group ops"
        assert [r.getMessage() for r in caplog.records if "reading its message" in r.getMessage()] == \
            ["notify run=%d: reading its message to publish failed: database is locked" % run["id"]]
        assert [e for e in h.events if e["type"] == "message"] == []


@async_test
async def test_over_twenty_a_minute_waits_its_turn_and_nothing_is_dropped(tmp_path):
    async with Harness(tmp_path) as h:
        runs = [await h.pending("告警 %d" % i) for i in range(25)]
        sender = h.sender()
        await h.until(lambda: _deferred(h, runs[24]))  # the pass reached the last one
        await _settle(h, sender)
        statuses = [(await h.run(r["id"]))["status"] for r in runs]
        assert statuses == ["ok"] * 20 + ["pending"] * 5
        waiting = await h.run(runs[20]["id"])
        assert waiting["attempts"] == 0 and waiting["error"] is None  # queued, not failed
        assert h.robot_calls() == 20  # nothing was tried over the limit
        h.clock.advance(59)  # the first 20 were sent at the same fake moment: not yet
        sender.wake()
        await _settle(h, sender)
        assert h.robot_calls() == 20
        h.clock.advance(2)
        sender.wake()
        await h.until_run(runs[24]["id"], "ok")
        assert h.contents() == ["告警 %d" % i for i in range(25)]  # in order, each once


@async_test
async def test_the_limit_is_per_robot_and_a_split_run_keeps_its_progress(tmp_path):
    async with Harness(tmp_path) as h:
        h.fake.robot_keys.add(OTHER_KEY)
        long = "\n".join("第 %d 行：%s" % (i, "数据" * 300) for i in range(3))  # 3 parts of text
        run = await h.pending(long)
        other = await h.pending("另一个群", group="gone")
        sender = h.sender(per_minute=2)
        await h.until_run(other["id"], "ok")  # another robot: its own window
        waiting = await h.until(lambda: _deferred(h, run))
        assert waiting["status"] == "pending" and json.loads(waiting["payload"])["sent"] == 2
        h.clock.advance(61)
        sender.wake()
        done = await h.until_run(run["id"], "ok")
        ops = [m["content"] for m in h.fake.robot_messages if m["key"] == KEY]
        assert ops == long.split("\n")  # each part once, in order
        assert done["output"] == "sent to group ops in 3 parts"


@async_test
async def test_45009_is_retried_with_backoff_then_ok(tmp_path):
    async with Harness(tmp_path) as h:
        h.fake.fail_next(sandbox.ROBOT_SEND, 45009)
        run = await h.pending("重试一下")
        sender = h.sender()
        retried = await h.until_run(run["id"], "pending", attempts=1)
        assert retried["error"].startswith("errcode 45009: api freq out of limit")
        assert retried["next_attempt_at"] is not None
        later = await h.pending("排在后面")  # the same robot waits behind WeCom's block too
        sender.wake()
        await h.until(lambda: _deferred(h, later))
        assert h.robot_calls() == 1 and (await h.run(later["id"]))["status"] == "pending"
        h.clock.advance(2)
        sender.wake()
        done = await h.until_run(later["id"], "ok")
        assert (await h.run(run["id"]))["status"] == "ok" and done["attempts"] == 0
        assert h.contents() == ["重试一下", "排在后面"]


@async_test
async def test_45009_is_not_given_up_but_network_errors_are(tmp_path):
    async with Harness(tmp_path) as h:
        h.fake.fail_next(sandbox.ROBOT_SEND, 45009, times=3)
        run = await h.pending("一直限流")
        sender = h.sender(max_attempts=2)
        for attempts in (1, 2, 3):
            await h.until_run(run["id"], "pending", attempts=attempts)
            h.clock.advance(600)
            sender.wake()
        await h.until_run(run["id"], "ok", attempts=3)
        h.fake.fail_next(sandbox.ROBOT_SEND, 0, http_status=502, times=2)
        broken = await h.pending("网关坏了")
        sender.wake()
        await h.until_run(broken["id"], "pending", attempts=1)
        h.clock.advance(600)
        sender.wake()
        failed = await h.until_run(broken["id"], "failed")
        assert failed["error"] == "HTTP 502 Bad Gateway (gave up after 2 attempts)"


@async_test
async def test_93000_fails_at_once_and_is_not_retried(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with Harness(tmp_path) as h:
        run = await h.pending("发到失效的群", group="gone")
        sender = h.sender()
        failed = await h.until_run(run["id"], "failed")
        assert failed["error"].startswith("errcode 93000: invalid webhook url")
        assert "copy the key from the robot's webhook URL into [group:gone] webhook_key" in failed["error"]
        assert failed["attempts"] == 0 and failed["next_attempt_at"] is None
        h.clock.advance(3600)
        sender.wake()
        await _settle(h, sender)
        assert h.robot_calls() == 1
        shown = json.dumps([failed, h.events], default=str, ensure_ascii=False) + caplog.text
        assert OTHER_KEY not in shown and failed["url"].endswith("?key=***")


@async_test
async def test_a_group_removed_from_the_config_fails_its_runs(tmp_path):
    async with Harness(tmp_path) as h:
        run = await h.pending("没有这个群", group="deleted")
        h.sender()
        failed = await h.until_run(run["id"], "failed")
        assert failed["error"] == "[group:deleted] is no longer configured" and h.robot_calls() == 0


@async_test
async def test_a_restart_keeps_the_queue_and_the_minute_already_used(tmp_path):
    async with Harness(tmp_path) as h:
        h.clock.now = utcnow(whole_seconds=True)  # the seed compares with when runs really finished
        first = [await h.pending("第 %d 条" % i) for i in range(3)]
        sender = h.sender(per_minute=3)
        await h.until_run(first[-1]["id"], "ok")
        await sender.stop()
        h.workers.remove(sender)
        queued = await h.pending("重启之后")
        restarted = h.sender(per_minute=3)
        await h.until(lambda: _deferred(h, queued))
        assert (await h.run(queued["id"]))["status"] == "pending" and h.robot_calls() == 3
        h.clock.advance(65)  # past the minute of the sends before the restart, whenever they finished
        restarted.wake()
        await h.until_run(queued["id"], "ok")
        assert h.contents() == ["第 0 条", "第 1 条", "第 2 条", "重启之后"]


async def _async(value):
    return value


async def _deferred(h, run: dict):
    """The run, once the sender has put it back to wait for its turn (still pending, due later)."""
    current = await h.run(run["id"])
    return current if current["status"] == "pending" and current["next_attempt_at"] else None


async def _settle(h, sender) -> None:
    """Let the sender make two more passes over the queue (poll_interval 0.02 s)."""
    import asyncio

    sender.wake()
    await asyncio.sleep(0.15)


# --- the real server ------------------------------------------------------------------------------

RULES = GROUP + """
[group:gone]
webhook_key = %s

[rule:urgent]
when = text contains 紧急
notify = ops
notify_text = {from_user} 报告：{content}
continue = yes

[rule:report]
when = text contains 日报
notify = ops
notify_format = markdown

[rule:stale]
when = text contains 失效
notify = gone
""" % OTHER_KEY


class NotifyServerTest(WecomdTestCase):
    extra_config = RULES

    def setUp(self) -> None:
        super().setUp()
        self.fake.robot_keys.add(KEY)
        self.records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.DEBUG)
        handler.emit = self.records.append
        root = logging.getLogger()
        root.addHandler(handler)
        self.addCleanup(root.removeHandler, handler)
        self.addCleanup(root.setLevel, root.level)
        root.setLevel(logging.DEBUG)

    def reply_of(self, resp) -> str:
        import xml.etree.ElementTree as ET

        self.assertEqual(resp.code, 200)
        return ET.fromstring(self.peer.read_reply(resp.body)).findtext("Content")

    def runs(self, action: str = "notify") -> list:
        status, data = self.api("/api/messages", app="helpdesk", user="zhangsan")
        self.assertEqual(status, 200)
        return [run for m in data["messages"] for run in m["automation"] if run["action"] == action]

    def test_a_matching_message_makes_one_robot_call_with_the_rules_text(self):
        started = time.monotonic()
        # The app's own reply still answers: telling a group is not an answer to the user.
        self.assertEqual(self.reply_of(self.callback(text("紧急：机房断电"))), "已收到")
        self.assertLess(time.monotonic() - started, 2.0)
        self.wait_for(lambda: self.fake.robot_messages)
        run = self.wait_for(lambda: [r for r in self.runs() if r["status"] == "ok"])[0]
        self.assertEqual(self.fake.robot_messages,
                         [{"key": KEY, "msgtype": "text", "content": "zhangsan 报告：紧急：机房断电"}])
        self.assertEqual((run["rule"], run["output"], run["error"]), ("urgent", "sent to group ops", None))
        self.assertEqual(self.db(self.services.store.runs.get, run["id"])["url"],
                         self.config.wecom.api_base + "/cgi-bin/webhook/send?key=***")
        self.callback(text("普通消息"))
        self.io_loop.run_sync(lambda: __import__("asyncio").sleep(0.3))
        self.assertEqual(len(self.fake.robot_messages), 1)  # one call, only for the match
        self.assertKeyNowhere()

    def test_markdown_without_a_template_sends_the_message_split(self):
        report = "\n".join("- **第 %d 项** 正常" % i for i in range(400)) + "\n日报完"
        self.assertEqual(self.reply_of(self.callback(text(report))), "已收到")
        self.wait_for(lambda: [r for r in self.runs() if r["status"] == "ok"])
        parts = [m["content"] for m in self.fake.robot_messages]
        self.assertGreater(len(parts), 1)
        self.assertEqual({m["msgtype"] for m in self.fake.robot_messages}, {"markdown"})
        self.assertTrue(all(len(p.encode("utf-8")) <= 4096 for p in parts))
        self.assertEqual("\n".join(parts), report)

    def test_a_slow_robot_never_holds_up_the_callback(self):
        self.fake.latency = 1.5  # every sandbox answer, the robot's included, waits this long
        started = time.monotonic()
        self.assertEqual(self.reply_of(self.callback(text("紧急：慢"))), "已收到")
        self.assertLess(time.monotonic() - started, 1.0)
        self.wait_for(lambda: self.fake.robot_messages)

    def test_a_takeover_pauses_the_replies_but_the_group_is_still_told(self):
        status, _ = self.api("/api/messages", method="POST",
                             body={"app": "helpdesk", "to_user": "zhangsan", "content": "我来处理"})
        self.assertEqual(status, 201)
        resp = self.callback(text("紧急：还在吗"))
        self.assertEqual((resp.code, resp.body), (200, b""))  # paused: not even the app's reply
        self.wait_for(lambda: self.fake.robot_messages)
        self.assertEqual(self.fake.robot_messages[0]["content"], "zhangsan 报告：紧急：还在吗")

    def test_93000_is_shown_on_the_run_and_in_the_rules_panel(self):
        self.callback(text("失效的群"))
        run = self.wait_for(lambda: [r for r in self.runs() if r["status"] == "failed"])[0]
        self.assertEqual(run["rule"], "stale")
        self.assertTrue(run["error"].startswith("errcode 93000: invalid webhook url"), run["error"])
        self.assertIn("[group:gone] webhook_key", run["error"])
        status, data = self.api("/api/rules")
        self.assertEqual(status, 200)
        stale = next(r for r in data["rules"] if r["name"] == "stale")
        self.assertEqual((stale["notify"], stale["notify_format"], stale["failures"], stale["hits"]),
                         ("gone", "text", 1, 1))
        self.io_loop.run_sync(lambda: __import__("asyncio").sleep(0.3))
        self.assertEqual(sum(1 for path, _ in self.fake.calls if path == sandbox.ROBOT_SEND), 1)
        self.assertKeyNowhere()

    def test_reload_takes_a_new_key_for_queued_runs(self):
        self.fake.robot_keys.clear()
        self.fake.fail_next(sandbox.ROBOT_SEND, 45009)
        self.callback(text("紧急：换钥匙"))
        self.wait_for(lambda: [r for r in self.runs() if r["status"] == "pending"])
        self.fake.robot_keys.add(OTHER_KEY)
        self.assertTrue(self.services.reload({"WECOMD_GROUP_OPS_WEBHOOK_KEY": OTHER_KEY}))
        self.services.notifier.clock = lambda: utcnow() + timedelta(minutes=5)
        self.services.notifier.wake()
        self.wait_for(lambda: [r for r in self.runs() if r["status"] == "ok"])
        self.assertEqual([m["key"] for m in self.fake.robot_messages], [OTHER_KEY])

    def assertKeyNowhere(self) -> None:
        status, rules = self.api("/api/rules")
        _, messages = self.api("/api/messages", app="helpdesk")
        stored = self.db(lambda: list(self.services.store.runs.RuleRun.select().dicts()))
        self.assertTrue(stored)
        logged = "\n".join(record.getMessage() for record in self.records)
        for shown in (json.dumps(rules), json.dumps(messages), json.dumps(stored, default=str), logged):
            self.assertNotIn(KEY, shown)
            self.assertNotIn(OTHER_KEY, shown)
        self.assertTrue(logged)  # the robot calls were logged, without their key
