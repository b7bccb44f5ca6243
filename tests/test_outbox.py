"""Outbox: a real SQLite Store behind the production DbWriter, a real WecomClient and the sandbox WeCom on loopback."""
from __future__ import annotations

import asyncio

import pytest

from support.aio import async_test
from support.harness import WecomHarness
from wecomd.store import Store, StoreError
from wecomd.wecom.api import SEND


class SpyClient:
    """The real client, plus a snapshot of the outbound rows at the moment each send starts."""

    def __init__(self, harness: WecomHarness, gate: asyncio.Event = None) -> None:
        self.harness, self.gate = harness, gate
        self.snapshots: list[list[tuple]] = []
        self.entered = asyncio.Event()

    async def send_text(self, app, to_user, content):
        rows, _ = await self.harness.db(self.harness.store.messages.page, limit=100)
        self.snapshots.append([(row["id"], row["status"]) for row in rows if row["direction"] == "out"])
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return await self.harness.client.send_text(app, to_user, content)


class FlakyStore:
    """The real store, but the named queries ("part.method", e.g. "outbox.due") raise StoreError the
    first `times` calls."""

    def __init__(self, store: Store, times: int = 1, *queries: str) -> None:
        self._store, self.left = store, {query: times for query in queries}
        for query in queries:  # a name that is not a query would inject nothing
            part, method = query.split(".")
            assert callable(getattr(getattr(store, part), method)), query

    def __getattr__(self, name):
        target = getattr(self._store, name)
        if any(query.startswith(name + ".") for query in self.left):
            return _FlakyPart(target, name, self.left)
        return target


class _FlakyPart:
    def __init__(self, part, name: str, left: dict) -> None:
        self._part, self._name, self._left = part, name, left

    def __getattr__(self, method):
        query = "%s.%s" % (self._name, method)
        if self._left.get(query):
            def failing(*args, **kwargs):
                self._left[query] -= 1
                raise StoreError("injected failure of %s" % query)
            return failing
        return getattr(self._part, method)


@async_test
async def test_submit_stores_pending_row_then_sends_it(tmp_path):
    async with WecomHarness(tmp_path) as h:
        spy = SpyClient(h)
        outbox = h.outbox(client=spy)
        rows = await outbox.submit("helpdesk", "zhangsan", "你好，已处理", operator="admin")
        assert len(rows) == 1
        row = rows[0]
        assert (row["direction"], row["status"], row["msgtype"], row["to_user"]) == \
            ("out", "pending", "text", "zhangsan")
        assert row["fields"] == {"msgtype": "text", "text": {"content": "你好，已处理"}, "part": 1, "parts": 1}
        sent = await h.until_status(row["id"], "sent")
        assert spy.snapshots == [[(row["id"], "pending")]]  # committed before the send began
        assert len(h.fake.sent) == 1
        message = h.fake.sent[0]
        assert message["agentid"] == 1000002 and isinstance(message["agentid"], int)
        assert (message["touser"], message["msgtype"], message["text"]) == \
            ("zhangsan", "text", {"content": "你好，已处理"})
        assert sent["msg_id"] == message["msgid"]
        assert (sent["error"], sent["attempts"], sent["operator"]) == (None, 0, "admin")
        assert h.events == [{"type": "message", "message": row},
                            {"type": "status", "id": row["id"], "app": "helpdesk", "status": "sent", "error": None}]


@async_test
async def test_long_text_is_sent_as_ordered_parts(tmp_path):
    content = "\n".join("第%d行：这是一条很长的回复，用来测试按字节拆分。" % i for i in range(100))
    assert len(content.encode("utf-8")) > 4096
    async with WecomHarness(tmp_path) as h:
        rows = await h.outbox().submit("helpdesk", "zhangsan", content)
        count = len(rows)
        assert count > 2
        assert [(r["fields"]["part"], r["fields"]["parts"]) for r in rows] == \
            [(i, count) for i in range(1, count + 1)]
        for row in rows:
            await h.until_status(row["id"], "sent")
        parts = [m["text"]["content"] for m in h.fake.sent]
        assert parts == [r["content"] for r in rows]
        assert all(len(part.encode("utf-8")) <= 2048 for part in parts)
        assert "\n".join(parts) == content  # split at newlines, which are dropped


@async_test
async def test_5000_bytes_without_newlines_make_three_parts(tmp_path):
    content = "企业微信消息" * 278  # 5004 bytes
    async with WecomHarness(tmp_path) as h:
        rows = await h.outbox().submit("helpdesk", "zhangsan", content)
        assert len(rows) == 3
        await h.until_status(rows[-1]["id"], "sent")
        assert "".join(m["text"]["content"] for m in h.fake.sent) == content


@async_test
async def test_busy_is_retried_after_backoff(tmp_path):
    async with WecomHarness(tmp_path) as h:
        h.fake.fail_next(SEND, -1)
        outbox = h.outbox()
        (row,) = await outbox.submit("helpdesk", "zhangsan", "hello")
        pending = await h.until_status(row["id"], "pending", attempts=1)
        assert pending["error"].startswith("errcode -1: system busy")
        assert h.statuses(row["id"]) == [("pending", pending["error"])]
        h.clock.advance(1.9)  # the first backoff is backoff_base ** 1 = 2 s
        outbox.wake()
        await asyncio.sleep(0.15)
        assert h.send_calls() == 1
        h.clock.advance(0.2)
        outbox.wake()
        sent = await h.until_status(row["id"], "sent")
        assert (sent["attempts"], sent["error"], len(h.fake.sent)) == (1, None, 1)


@async_test
async def test_rate_limit_past_max_attempts_fails(tmp_path):
    async with WecomHarness(tmp_path) as h:
        h.fake.fail_next(SEND, 45009, times=10)
        outbox = h.outbox(max_attempts=3)
        (row,) = await outbox.submit("helpdesk", "zhangsan", "hello")
        for attempts in (1, 2):
            await h.until_status(row["id"], "pending", attempts=attempts)
            h.clock.advance(300)
            outbox.wake()
        failed = await h.until_status(row["id"], "failed")
        assert failed["error"].startswith("errcode 45009: api freq out of limit")
        assert "gave up after 3 attempts" in failed["error"]
        assert (h.send_calls(), h.fake.sent) == (3, [])
        assert [status for status, _ in h.statuses(row["id"])] == ["pending", "pending", "failed"]


@async_test
async def test_untrusted_ip_fails_at_once_with_the_hint(tmp_path):
    async with WecomHarness(tmp_path) as h:
        h.fake.fail_next(SEND, 60020)
        outbox = h.outbox()
        (row,) = await outbox.submit("helpdesk", "zhangsan", "hello")
        failed = await h.until_status(row["id"], "failed")
        assert failed["error"].startswith("errcode 60020: not allow to access from your ip")
        assert "企业可信IP" in failed["error"] and failed["attempts"] == 0
        h.clock.advance(3600)
        outbox.wake()
        await asyncio.sleep(0.15)
        assert h.send_calls() == 1


@async_test
async def test_invalid_user_fails(tmp_path):
    async with WecomHarness(tmp_path) as h:
        h.fake.fail_next(SEND, 40003)
        (row,) = await h.outbox().submit("helpdesk", "nobody", "hello")
        failed = await h.until_status(row["id"], "failed")
        assert failed["error"].startswith("errcode 40003:") and "通讯录" in failed["error"]
        assert h.fake.sent == []


@async_test
async def test_partial_delivery_is_sent_with_the_invalid_users(tmp_path):
    async with WecomHarness(tmp_path) as h:
        h.fake.unknown_users = {"ghost"}
        (row,) = await h.outbox().submit("helpdesk", "zhangsan|Ghost", "hello")
        sent = await h.until_status(row["id"], "sent")
        assert sent["error"] == "invaliduser: ghost"
        assert h.statuses(row["id"]) == [("sent", "invaliduser: ghost")]


@async_test
async def test_app_without_secret_fails_naming_the_option(tmp_path):
    async with WecomHarness(tmp_path) as h:
        (row,) = await h.outbox().submit("nosecret", "zhangsan", "hello")
        failed = await h.until_status(row["id"], "failed")
        assert "[app:nosecret] secret" in failed["error"]
        assert h.fake.calls == []


@async_test
async def test_retry_of_a_failed_message_sends_it(tmp_path):
    async with WecomHarness(tmp_path) as h:
        h.fake.fail_next(SEND, 60020)
        outbox = h.outbox()
        (row,) = await outbox.submit("helpdesk", "zhangsan", "hello")
        failed = await h.until_status(row["id"], "failed")
        # the trusted IP is fixed now: nothing injected any more
        retried = await outbox.retry(row["id"])
        assert (retried["status"], retried["error"], retried["attempts"]) == ("pending", None, 0)
        sent = await h.until_status(row["id"], "sent")
        assert len(h.fake.sent) == 1 and sent["msg_id"] == h.fake.sent[0]["msgid"]
        assert h.statuses(row["id"]) == [("failed", failed["error"]), ("pending", None), ("sent", None)]
        with pytest.raises(ValueError):
            await outbox.retry(row["id"])  # sent, not failed


@async_test
async def test_rows_left_pending_are_sent_once_after_a_restart(tmp_path):
    async with WecomHarness(tmp_path) as h:
        first = h.outbox()
        await first.stop()
        submitted = await first.submit("helpdesk", "zhangsan", "queued before the restart")
        stored = await h.db(h.store.outbox.save, "helpdesk", "lisi", "text", "left by a crash",
                            {"msgtype": "text", "text": {"content": "left by a crash"}})
        await asyncio.sleep(0.15)
        assert h.fake.calls == []  # the stopped outbox sends nothing
        second = h.outbox()
        for row in (*submitted, stored):
            await h.until_status(row["id"], "sent")
        for _ in range(3):
            second.wake()
            await asyncio.sleep(0.05)
        assert [(m["touser"], m["text"]["content"]) for m in h.fake.sent] == \
            [("zhangsan", "queued before the restart"), ("lisi", "left by a crash")]


@async_test
async def test_concurrent_submits_and_wakes_send_each_message_once(tmp_path):
    async with WecomHarness(tmp_path) as h:
        outbox = h.outbox()

        async def waker():
            for _ in range(10):
                outbox.wake()
                await asyncio.sleep(0.005)

        results = await asyncio.gather(*(outbox.submit("helpdesk", "user%d" % i, "message %d" % i)
                                         for i in range(4)), waker(), waker())
        rows = [row for result in results[:4] for row in result]
        with pytest.raises(ValueError):
            await outbox.retry(rows[0]["id"])  # pending: nothing to retry, nothing sent twice
        for row in rows:
            await h.until_status(row["id"], "sent")
        await waker()
        await asyncio.sleep(0.1)
        assert sorted(m["text"]["content"] for m in h.fake.sent) == ["message %d" % i for i in range(4)]
        assert h.send_calls() == 4


@async_test
async def test_stop_lets_the_send_in_flight_finish(tmp_path):
    async with WecomHarness(tmp_path) as h:
        gate = asyncio.Event()
        spy = SpyClient(h, gate)
        outbox = h.outbox(client=spy)
        rows = [await outbox.submit("helpdesk", "zhangsan", text) for text in ("one", "two")]
        await spy.entered.wait()
        stopping = asyncio.ensure_future(outbox.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()
        gate.set()
        await stopping
        assert (await h.row(rows[0][0]["id"]))["status"] == "sent"
        assert (await h.row(rows[1][0]["id"]))["status"] == "pending"  # left for the next start
        assert len(h.fake.sent) == 1


@async_test
async def test_store_errors_do_not_stop_the_loop(tmp_path):
    async with WecomHarness(tmp_path) as h:
        flaky = FlakyStore(h.store, 2, "outbox.due")
        outbox = h.outbox(store=flaky)
        (row,) = await outbox.submit("helpdesk", "zhangsan", "hello")
        await h.until_status(row["id"], "sent")
        assert len(h.fake.sent) == 1 and flaky.left == {"outbox.due": 0}


@async_test
async def test_a_sent_message_whose_mark_failed_is_not_sent_again(tmp_path):
    async with WecomHarness(tmp_path) as h:
        flaky = FlakyStore(h.store, 1, "outbox.set_status")
        outbox = h.outbox(store=flaky)
        (row,) = await outbox.submit("helpdesk", "zhangsan", "hello")
        sent = await h.until_status(row["id"], "sent")  # marked on the next pass
        assert sent["msg_id"] == h.fake.sent[0]["msgid"]
        assert len(h.fake.sent) == 1 and h.send_calls() == 1 and flaky.left == {"outbox.set_status": 0}


@async_test
async def test_submit_rejects_unknown_app_and_empty_content(tmp_path):
    async with WecomHarness(tmp_path) as h:
        outbox = h.outbox(start=False)
        for args in (("nope", "zhangsan", "hi"), ("helpdesk", "zhangsan", ""),
                     ("helpdesk", "zhangsan", " \n "), ("helpdesk", "", "hi")):
            with pytest.raises(ValueError):
                await outbox.submit(*args)
        assert await h.db(h.store.messages.count) == 0 and h.events == []


@async_test
async def test_other_msgtypes_send_the_payload_kept_in_fields(tmp_path):
    async with WecomHarness(tmp_path) as h:
        markdown = await h.db(h.store.outbox.save, "helpdesk", "zhangsan", "markdown", "**done**",
                              {"msgtype": "markdown", "markdown": {"content": "**done**"}})
        bare = await h.db(h.store.outbox.save, "helpdesk", "zhangsan", "news", None, {})
        h.outbox()
        await h.until_status(markdown["id"], "sent")
        failed = await h.until_status(bare["id"], "failed")
        assert failed["error"] == "no news payload stored for this message"
        assert [(m["msgtype"], m["markdown"]) for m in h.fake.sent] == [("markdown", {"content": "**done**"})]
