"""The inbound path without HTTP: Inbox.receive on a real SQLite store behind the production
DbWriter, with the rules, takeover and app replies of a real config file."""
from __future__ import annotations

import asyncio
import sys
import xml.etree.ElementTree as ET

import pytest

from support.aio import async_test
from support.config import write_config
from support.harness import StoreHarness
from support.peer import AGENT_ID, CORP_ID
from wecomd import config as configmod
from wecomd.automation.commands import CommandRunner
from wecomd.automation.runner import RuleRunner
from wecomd.automation.takeover import PAUSED, Takeover
from wecomd.inbox import Inbox, NotStored
from wecomd.live import message_event
from wecomd.wecom import messages, samples
from wecomd.workers.outbox import Outbox
from wecomd.workers.webhooks import WebhookSender

RULES = """
[rules]
takeover_minutes = 30
passive_budget = 3.0

[rule:greet]
app = helpdesk
when = text contains 你好
reply = 你好，{from_user}！

[rule:slow]
when = text contains 慢
run = %s -c "import time; time.sleep(0.6); print('first answer')"
""" % sys.executable


class InboxHarness(StoreHarness):
    """StoreHarness plus the pieces Services builds for the inbound path, from a config file in
    tmp_path: the rule runner (its outbox and webhook sender not started: nothing here goes late),
    takeover and the inbox. `calls` names every writer call, `woken` counts media wake-ups."""

    async def __aenter__(self):
        await super().__aenter__()
        self.config = configmod.load(write_config(self.tmp_path, extra=RULES), {})
        self.calls: list[str] = []
        self.woken = 0
        outbox = Outbox(self.db, self.store, None, self.config.apps, self.events.append)
        webhooks = WebhookSender(self.db, self.store, lambda rule: (None, None), self._late, self.events.append)
        self.runner = RuleRunner(self.db, self.store, outbox, webhooks, CommandRunner(), self.config,
                                 self.events.append)
        self.takeover = Takeover(self.db, self.store, self.config)
        self.inbox = Inbox(self.counted_db, self.store, self.runner, self.events.append, self._wake)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.runner.close()
        await super().__aexit__(*exc_info)

    async def counted_db(self, fn, *args, **kwargs):
        self.calls.append(fn.__name__)
        return await self.db(fn, *args, **kwargs)

    async def _late(self, run: dict, text: str) -> None:
        raise AssertionError("no webhook here")

    def _wake(self) -> None:
        self.woken += 1

    def receive(self, message: messages.Message, app: str = "helpdesk"):
        return self.inbox.receive("app", self.config.apps[app], message)

    async def inbound(self) -> list[dict]:
        rows, _ = await self.db(self.store.messages.page)
        return [row for row in rows if row["direction"] == "in"]

    async def answers(self) -> list[tuple]:
        rows, _ = await self.db(self.store.messages.page)
        return [(row["to_user"], row["content"], row["rule"]) for row in reversed(rows) if row["direction"] == "out"]


def text(content: str, user: str = "zhangsan", msg_id: str = "7357159753458634752") -> messages.Message:
    return messages.parse(samples.build("text", corp_id=CORP_ID, agent_id=AGENT_ID, from_user=user,
                                        content=content, msg_id=msg_id, create_time=1764370000).encode())


def content_of(reply: str) -> str:
    """The text of a passive reply (plaintext XML, before the channel encrypts it)."""
    return ET.fromstring(reply).findtext("Content")


@async_test
async def test_a_message_is_stored_once_and_its_retries_are_counted(tmp_path):
    async with InboxHarness(tmp_path) as h:
        first = await h.receive(text("随便说说"))
        assert (first.created, first.deliveries, content_of(first.reply), first.detail) == (True, 1, "已收到", None)
        for attempt in (2, 3):
            again = await h.receive(text("随便说说"))
            assert (again.id, again.created, again.deliveries, again.reply) == (first.id, False, attempt, first.reply)
        (row,) = await h.inbound()
        assert (row["id"], row["deliveries"], row["content"]) == (first.id, 3, "随便说说")
        assert await h.answers() == [("zhangsan", "已收到", None)]  # the retries stored no second answer
        # The common case is one commit; so is each retry.
        assert h.calls == ["store_answered"] * 3


@async_test
async def test_the_database_decides_what_is_a_retry_across_a_restart(tmp_path):
    async with InboxHarness(tmp_path) as h:
        first = await h.receive(text("你好"))
        assert content_of(first.reply) == "你好，zhangsan！"
    async with InboxHarness(tmp_path) as h:  # a new process: nothing of the first in memory
        again = await h.receive(text("你好"))
        assert (again.id, again.created, again.deliveries, again.reply) == (first.id, False, 2, first.reply)
        (row,) = await h.inbound()
        assert [run["rule"] for run in row["automation"]] == ["greet"]  # the rule ran once
        assert h.events == []


@async_test
async def test_a_new_message_is_pushed_live_and_its_media_fetched(tmp_path):
    async with InboxHarness(tmp_path) as h:
        first = await h.receive(text("随便说说"))
        (row,) = await h.inbound()
        answer = await h.db(h.store.messages.get, row["id"] + 1)
        assert h.events == [message_event(dict(row, automation=[])), message_event(answer)]
        assert "reply" not in h.events[0]["message"]  # the passive reply XML is not the dashboard's
        assert h.events[0]["message"]["id"] == first.id and h.woken == 0
        await h.receive(text("随便说说"))
        assert len(h.events) == 2  # a retry changes nothing anyone sees
        image = messages.parse(samples.build("image", corp_id=CORP_ID, agent_id=AGENT_ID).encode())
        await h.receive(image)
        assert h.woken == 1 and h.events[2]["message"]["media"]["status"] == "pending"


@async_test
async def test_a_rule_gives_the_passive_reply(tmp_path):
    async with InboxHarness(tmp_path) as h:
        inbound = await h.receive(text("你好呀"))
        assert content_of(inbound.reply) == "你好，zhangsan！"
        assert ET.fromstring(inbound.reply).findtext("ToUserName") == "zhangsan"
        (row,) = await h.inbound()
        assert [(r["rule"], r["action"], r["status"], r["path"]) for r in row["automation"]] == \
            [("greet", "reply", "ok", "passive")]
        assert await h.answers() == [("zhangsan", "你好，zhangsan！", "greet")]
        assert h.events[-1]["message"]["content"] == "你好，zhangsan！"  # the answer, live
        again = await h.receive(text("你好呀"))
        assert again.reply == inbound.reply  # kept with the message for WeCom's retries


@async_test
async def test_the_apps_own_reply_answers_what_no_rule_does(tmp_path):
    async with InboxHarness(tmp_path) as h:
        assert content_of((await h.receive(text("随便"))).reply) == "已收到"
        quiet = await h.receive(text("随便", msg_id="2"), app="quiet")  # an app without `reply =`
        assert (quiet.created, quiet.reply) == (True, None)
        click = messages.parse(samples.build("click", corp_id=CORP_ID, agent_id=AGENT_ID, event_key="X").encode())
        assert (await h.receive(click)).reply is None  # events get no app reply
        assert await h.answers() == [("zhangsan", "已收到", None)]


@async_test
async def test_a_retry_during_the_first_delivery_gets_the_first_deliverys_reply(tmp_path):
    async with InboxHarness(tmp_path) as h:
        first = asyncio.ensure_future(h.receive(text("慢慢来")))

        async def running():  # stored, and its command started
            rows = await h.inbound()
            return rows and rows[0]["automation"] and rows[0]["automation"][0]["status"] == "running"

        await h.until(running)
        retry = await h.receive(text("慢慢来"))
        first = await first
        assert content_of(first.reply) == "first answer"
        assert (retry.id, retry.created, retry.reply) == (first.id, False, first.reply)
        (row,) = await h.inbound()
        assert [(r["rule"], r["status"], r["path"]) for r in row["automation"]] == [("slow", "ok", "passive")]


@async_test
async def test_takeover_silences_the_rules_and_the_apps_reply(tmp_path):
    async with InboxHarness(tmp_path) as h:
        assert await h.takeover.operator_replied("helpdesk", "zhangsan", "admin") is not None
        paused = await h.receive(text("你好"))
        assert (paused.created, paused.reply) == (True, None)
        assert (await h.receive(text("随便", msg_id="2"))).reply is None
        (_, row) = await h.inbound()  # newest first
        assert [(r["rule"], r["status"], r["error"]) for r in row["automation"]] == [("greet", "skipped", PAUSED)]
        assert content_of((await h.receive(text("随便", user="lisi", msg_id="3"))).reply) == "已收到"  # others
        await h.takeover.resume("helpdesk", "zhangsan")
        assert content_of((await h.receive(text("你好", msg_id="4"))).reply) == "你好，zhangsan！"
        assert await h.answers() == [("lisi", "已收到", None), ("zhangsan", "你好，zhangsan！", "greet")]


@async_test
async def test_a_message_that_cannot_be_stored_is_not_acknowledged(tmp_path):
    async with InboxHarness(tmp_path) as h:
        await h.writer.run(h.store.db.execute_sql, "PRAGMA query_only = 1", alone=True)  # as if read-only
        with pytest.raises(NotStored, match="readonly"):
            await h.receive(text("你好"))
        assert (h.events, h.woken) == ([], 0)
        await h.writer.run(h.store.db.execute_sql, "PRAGMA query_only = 0", alone=True)
        assert await h.inbound() == [] and await h.answers() == []
        inbound = await h.receive(text("你好"))  # WeCom's retry is then the first delivery
        assert (inbound.created, inbound.deliveries, content_of(inbound.reply)) == (True, 1, "你好，zhangsan！")


@async_test
async def test_an_unknown_channel_is_refused(tmp_path):
    async with InboxHarness(tmp_path) as h:
        with pytest.raises(ValueError, match="channel"):
            await h.inbox.receive("fax", h.config.apps["helpdesk"], text("你好"))
        assert await h.inbound() == []
