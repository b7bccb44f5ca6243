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


# --- rich outbound: files, cards, recall, the per-member limit, partial failures (#11 item 8) ------

def _png() -> bytes:
    from wecomd.wecom.sandbox import sample_png
    return sample_png(8, 8)


@async_test
async def test_a_file_is_kept_in_the_vault_uploaded_then_sent_with_its_media_id(tmp_path):
    async with WecomHarness(tmp_path) as h:
        outbox = h.outbox(media_dir=tmp_path / "media")
        row = await outbox.submit_file("helpdesk", "zhangsan", "image", _png(), "屏幕截图.png", operator="li")
        assert (row["status"], row["msgtype"], row["operator"]) == ("pending", "image", "li")
        assert row["media"] == {"status": "stored", "size": len(_png()), "type": "image/png",
                                "name": "屏幕截图.png", "error": None}
        stored = await h.db(h.store.media.get, row["id"])
        assert stored["path"].startswith("helpdesk/2026-11/out-") and stored["path"].endswith("-屏幕截图.png")
        assert (tmp_path / "media" / stored["path"]).read_bytes() == _png()
        sent = await h.until_status(row["id"], "sent")
        (upload,) = h.fake.uploads
        assert (upload["type"], upload["filename"], upload["size"]) == ("image", "屏幕截图.png", len(_png()))
        assert h.fake.media[upload["media_id"]][0] == _png()  # what WeCom got is the stored file
        (message,) = h.fake.sent
        assert (message["msgtype"], message["image"]) == ("image", {"media_id": upload["media_id"]})
        assert sent["msg_id"] == message["msgid"] and sent["error"] is None


@async_test
async def test_a_retry_reuses_the_media_id_while_it_lives_then_uploads_again(tmp_path):
    async with WecomHarness(tmp_path) as h:
        outbox = h.outbox(media_dir=tmp_path / "media")
        h.fake.fail_next(SEND, -1, times=2)
        row = await outbox.submit_file("helpdesk", "zhangsan", "file", b"%PDF-1.4 report", "报告.pdf")
        await h.until_status(row["id"], "pending", attempts=1)
        assert len(h.fake.uploads) == 1
        h.clock.advance(2.1)
        outbox.wake()
        await h.until_status(row["id"], "pending", attempts=2)
        assert len(h.fake.uploads) == 1  # the same media_id, the same JSON on the second attempt
        first, second = [body for path, body in h.fake.calls if path == SEND]
        assert first == second
        h.clock.advance(3 * 86400)  # the media_id has expired by now: upload again
        outbox.wake()
        sent = await h.until_status(row["id"], "sent")
        assert len(h.fake.uploads) == 2
        assert h.fake.sent[0]["file"] == {"media_id": h.fake.uploads[1]["media_id"]}
        assert sent["fields"]["upload"]["media_id"] == h.fake.uploads[1]["media_id"]


@async_test
async def test_an_expired_media_id_is_forgotten_and_uploaded_again(tmp_path):
    async with WecomHarness(tmp_path) as h:
        outbox = h.outbox(media_dir=tmp_path / "media")
        h.fake.fail_next(SEND, 40007)
        row = await outbox.submit_file("helpdesk", "zhangsan", "voice", b"#!AMR\n" + bytes(64), "voice.amr")
        pending = await h.until_status(row["id"], "pending", attempts=1)
        assert pending["error"].startswith("errcode 40007") and "upload" not in pending["fields"]
        h.clock.advance(2.1)
        outbox.wake()
        await h.until_status(row["id"], "sent")
        assert len(h.fake.uploads) == 2


@async_test
async def test_a_file_breaking_a_limit_is_neither_written_nor_stored(tmp_path):
    from wecomd.wecom.outbound import UploadRefused
    async with WecomHarness(tmp_path) as h:
        outbox = h.outbox(media_dir=tmp_path / "media")
        for msgtype, body in (("image", b"GIF89a" + bytes(32)), ("image", b"\x89PNG"), ("voice", bytes(2 * 2**20 + 1)),
                              ("video", b"not an mp4 at all")):
            with pytest.raises(UploadRefused):
                await outbox.submit_file("helpdesk", "zhangsan", msgtype, body, "x")
        assert not (tmp_path / "media").exists() or list((tmp_path / "media").rglob("*")) == []
        assert await h.db(h.store.messages.count) == 0 and h.events == [] and h.fake.calls == []


@async_test
async def test_markdown_textcard_and_news_go_out_as_their_payloads(tmp_path):
    from wecomd.wecom import outbound
    async with WecomHarness(tmp_path) as h:
        outbox = h.outbox()
        card = outbound.textcard({"title": "工单已关闭", "description": "<div class=\"gray\">今天</div>",
                                  "url": "https://example.com/t/1", "btntxt": "查看"})
        news = outbound.news({"articles": [{"title": "VPN 指南", "url": "https://example.com/vpn"}]})
        rows = [await outbox.submit_payload("helpdesk", "zhangsan", "markdown", outbound.markdown("**好了**")),
                await outbox.submit_payload("helpdesk", "zhangsan", "textcard", card),
                await outbox.submit_payload("helpdesk", "zhangsan", "news", news)]
        for row in rows:
            await h.until_status(row["id"], "sent")
        assert [(m["msgtype"], m[m["msgtype"]]) for m in h.fake.sent] == [
            ("markdown", {"content": "**好了**"}), ("textcard", card), ("news", news)]
        assert [row["content"] for row in rows] == ["**好了**", "工单已关闭\n<div class=\"gray\">今天</div>", "VPN 指南"]


@async_test
async def test_recall_within_24_hours_and_every_refusal(tmp_path):
    from wecomd.store.times import utcnow
    async with WecomHarness(tmp_path) as h:
        h.clock.now = utcnow()  # the store marks "sent" by the real clock
        outbox = h.outbox()
        (row,) = await outbox.submit("helpdesk", "zhangsan", "发错了")
        sent = await h.until_status(row["id"], "sent")
        recalled = await outbox.recall(row["id"])
        assert (recalled["status"], recalled["msg_id"]) == ("recalled", sent["msg_id"])
        assert h.fake.recalled == [sent["msg_id"]]
        assert h.statuses(row["id"])[-1] == ("recalled", None)
        with pytest.raises(ValueError, match="recalled: only a sent message"):
            await outbox.recall(row["id"])
        await outbox.stop()
        (pending,) = await outbox.submit("helpdesk", "zhangsan", "还没发")
        with pytest.raises(ValueError, match="pending"):
            await outbox.recall(pending["id"])
        passive = await h.db(h.store.outbox.save, "helpdesk", "zhangsan", "text", "自动", {}, status="sent",
                             automatic="passive")
        with pytest.raises(ValueError, match="no WeCom msgid"):
            await outbox.recall(passive["id"])
        with pytest.raises(KeyError):
            await outbox.recall(10**9)
        outbox = h.outbox()
        (late,) = await outbox.submit("helpdesk", "zhangsan", "昨天的")
        await h.until_status(late["id"], "sent")
        h.clock.advance(24 * 3600 + 2)
        with pytest.raises(ValueError, match="more than 24 hours"):
            await outbox.recall(late["id"])
        assert len(h.fake.recalled) == 1 and [p for p, _ in h.fake.calls].count("/cgi-bin/message/recall") == 1


@async_test
async def test_recall_refused_by_wecom_keeps_the_message_sent(tmp_path):
    from wecomd.store.times import utcnow
    from wecomd.wecom.api import RECALL, WecomApiError
    async with WecomHarness(tmp_path) as h:
        h.clock.now = utcnow()
        outbox = h.outbox()
        (row,) = await outbox.submit("helpdesk", "zhangsan", "hello")
        await h.until_status(row["id"], "sent")
        h.fake.fail_next(RECALL, 40058, "invalid msgid")
        with pytest.raises(WecomApiError):
            await outbox.recall(row["id"])
        assert (await h.row(row["id"]))["status"] == "sent"


@async_test
async def test_the_31st_message_in_a_minute_waits_throttled_then_goes_out(tmp_path):
    async with WecomHarness(tmp_path) as h:
        outbox = h.outbox()
        rows = [(await outbox.submit("helpdesk", "zhangsan", "消息 %d" % i))[0] for i in range(31)]
        other = (await outbox.submit("helpdesk", "lisi", "another member has room"))[0]
        await h.until_status(rows[29]["id"], "sent")
        await h.until_status(other["id"], "sent")
        held = await h.row(rows[30]["id"])
        assert (held["status"], held["error"], held["attempts"]) == ("pending", "throttled", 0)
        assert h.statuses(rows[30]["id"]) == [("pending", "throttled")]
        assert h.send_calls() == 31  # 30 to zhangsan, 1 to lisi: WeCom never saw the 31st
        h.clock.advance(59)
        outbox.wake()
        await asyncio.sleep(0.15)
        assert (await h.row(rows[30]["id"]))["status"] == "pending" and h.send_calls() == 31
        h.clock.advance(1.5)
        outbox.wake()
        sent = await h.until_status(rows[30]["id"], "sent")
        assert (sent["error"], sent["attempts"]) == (None, 0)
        assert [m["text"]["content"] for m in h.fake.sent if m["touser"] == "zhangsan"] == \
            ["消息 %d" % i for i in range(31)]


@async_test
async def test_sends_before_a_restart_count_towards_the_limit(tmp_path):
    from wecomd.store.times import utcnow
    async with WecomHarness(tmp_path) as h:
        h.clock.now = utcnow()
        first = h.outbox()
        rows = [(await first.submit("helpdesk", "zhangsan", "%d" % i))[0] for i in range(30)]
        await h.until_status(rows[-1]["id"], "sent")
        await first.stop()
        second = h.outbox()
        (more,) = await second.submit("helpdesk", "zhangsan", "after the restart")
        async def throttled():
            row = await h.row(more["id"])
            return row if row["error"] == "throttled" else None
        held = await h.until(throttled)
        await asyncio.sleep(0.1)
        assert (held["status"], h.send_calls()) == ("pending", 30)


@async_test
async def test_an_unlicensed_only_recipient_is_a_failure_in_wecoms_words(tmp_path):
    async with WecomHarness(tmp_path) as h:
        h.fake.unlicensed_users = {"zhangsan"}
        outbox = h.outbox()
        (alone,) = await outbox.submit("helpdesk", "zhangsan", "hello")
        failed = await h.until_status(alone["id"], "failed")
        assert failed["error"] == "unlicenseduser: zhangsan" and failed["msg_id"]
        (both,) = await outbox.submit("helpdesk", "zhangsan|lisi", "hello both")
        partial = await h.until_status(both["id"], "sent")
        assert partial["error"] == "unlicenseduser: zhangsan"
        assert h.statuses(alone["id"]) == [("failed", "unlicenseduser: zhangsan")]


def test_member_windows_keep_the_minute_and_the_hour_per_app_and_member():
    from datetime import timedelta

    from support.aio import FakeClock
    from wecomd.workers.throttle import MemberWindows
    clock = FakeClock()
    windows = MemberWindows(clock)
    for _ in range(30):
        windows.record("helpdesk", "ZhangSan")
    assert windows.free_at("helpdesk", "zhangsan") == clock.now + timedelta(minutes=1)
    assert windows.free_at("helpdesk", "lisi|zhangsan") is not None  # one full member holds the message
    assert windows.free_at("other-app", "zhangsan") is None and windows.free_at("helpdesk", "lisi") is None
    clock.advance(60)
    assert windows.free_at("helpdesk", "zhangsan") is None
    for _ in range(33):  # 30 more a minute, up to 1,000 an hour
        for _ in range(30):
            windows.record("helpdesk", "zhangsan")
        clock.advance(60)
    start = clock.now - timedelta(minutes=34)
    assert windows.free_at("helpdesk", "zhangsan") == start + timedelta(hours=1)
    clock.advance(26 * 60)
    assert windows.free_at("helpdesk", "zhangsan") is None
