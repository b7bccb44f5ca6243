"""The store's behaviour, the same on every database: `StoreTests` holds the tests, and each backend
below runs all of them (PostgreSQL when TEST_POSTGRES_URL names one).

The conversation summary (migration 0004) is checked against the query it replaced throughout:
every message grouped by (app, user), joined to the read marks and takeovers. Whatever happens to
the messages (new ones, retried deliveries, replies, read marks, takeovers, pruning), the summary
must give exactly its rows.
"""
from __future__ import annotations

import json
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from peewee import JOIN, SqliteDatabase
from playhouse.schema_diff import diff_models

from support.postgres import needs_postgres, postgres_store
from support.samples import SAMPLES
from support.store import (AUTOMATION_KEYS, BIG_MSG_ID, CUTOFF, MEDIA_KEYS, NOW, OLD, ROW_KEYS, RUN_KEYS,
                           age, assert_same, click, contents_of, drop_triggers, grouped, is_recent, key_of,
                           next_attempt_at_of, public_run, receive, save, selects, set_received_at, text)
from wecomd.inbox import store_answered, store_inbound
from wecomd.wecom.messages import parse


class StoreTests:
    """Behaviour every database backend must show; subclasses provide the `store` fixture."""

    def test_save_inbound_new_and_retried(self, store):
        row, created = store.messages.save_inbound("helpdesk", text(msg_id=BIG_MSG_ID), "k1",
                                                   reply="<xml>A</xml>")
        assert created is True
        assert row["deliveries"] == 1 and row["reply"] == "<xml>A</xml>"
        for attempt in range(3):
            again, created = store.messages.save_inbound("helpdesk", text(msg_id=BIG_MSG_ID), "k1",
                                                         reply="<xml>B%d</xml>" % attempt)
            assert created is False
        assert again["id"] == row["id"]
        assert again["deliveries"] == 4
        assert again["reply"] == "<xml>A</xml>"
        assert store.messages.count() == 1
        assert store.messages.get(row["id"])["deliveries"] == 4

    def test_a_new_rows_json_is_the_stored_row(self, store):
        # save_inbound builds a new row's JSON from the values it inserted, without reading it back.
        for message, key in ((text(msg_id=BIG_MSG_ID), "k1"), (click(), "e1")):
            row, created = store.messages.save_inbound("helpdesk", message, key, reply="<xml>A</xml>")
            assert created is True
            assert {k: v for k, v in row.items() if k != "reply"} == store.messages.get(row["id"])

    def test_reply_saved_by_a_retry_when_first_had_none(self, store):
        store.messages.save_inbound("helpdesk", click(), "e1")
        row, created = store.messages.save_inbound("helpdesk", click(), "e1", reply="<xml>late</xml>")
        assert (created, row["reply"], row["deliveries"]) == (False, "<xml>late</xml>", 2)

    def test_distinct_keys_make_distinct_rows(self, store):
        first, _ = store.messages.save_inbound("helpdesk", text(), "k1")
        second, created = store.messages.save_inbound("helpdesk", text(), "k2")
        assert created is True
        assert second["id"] > first["id"]
        assert store.messages.count() == 2

    def test_empty_dedup_key_is_refused(self, store):
        with pytest.raises(ValueError):
            store.messages.save_inbound("helpdesk", text(), "")

    def test_message_json_shape_and_round_trip(self, store):
        fields = {"MsgType": "text", "Content": "你好，世界",
                  "PicList": {"item": [{"PicMd5Sum": "a1"}, {"PicMd5Sum": "b2"}]},
                  "ScanCodeInfo": {"ScanType": "qrcode", "ScanResult": "扫码结果"}}
        message = text(content="你好，世界", msg_id=BIG_MSG_ID, raw="<xml>secret raw</xml>")
        message.fields = fields
        saved, _ = store.messages.save_inbound("helpdesk", message, "k1", reply="<xml/>")
        assert set(saved) == ROW_KEYS | {"reply"}
        got = store.messages.get(saved["id"])
        assert set(got) == ROW_KEYS
        assert got == {k: v for k, v in saved.items() if k != "reply"}
        assert got["fields"] == fields
        assert got["msg_id"] == BIG_MSG_ID and isinstance(got["msg_id"], str)
        assert (got["direction"], got["status"], got["error"]) == ("in", "received", None)
        assert (got["from_user"], got["to_user"], got["agent_id"]) == ("zhangsan", "ww0123", "1000002")
        assert got["create_time"] == 1764370000
        assert got["content"] == "你好，世界"
        received = datetime.strptime(got["received_at"], "%Y-%m-%dT%H:%M:%SZ")
        assert abs(received - datetime.now(timezone.utc).replace(tzinfo=None)) < timedelta(minutes=1)
        assert "secret raw" not in json.dumps(got, ensure_ascii=False)
        assert store.messages.get_raw(saved["id"]) == "<xml>secret raw</xml>"

    def test_event_columns(self, store):
        row, _ = store.messages.save_inbound("helpdesk", click(key="RUN_BACKUP"), "e1")
        assert (row["msgtype"], row["event"], row["event_key"]) == ("event", "click", "RUN_BACKUP")
        assert row["msg_id"] is None and row["content"] is None

    def test_get_missing_is_none(self, store):
        assert store.messages.get(424242) is None
        assert store.messages.get_raw(424242) is None

    def test_save_outbound(self, store):
        row = store.outbox.save("helpdesk", "zhangsan", "text", "收到", {"text": {"content": "收到"}},
                                operator="admin")
        assert set(row) == ROW_KEYS
        assert (row["direction"], row["status"], row["from_user"], row["to_user"]) == \
            ("out", "pending", None, "zhangsan")
        assert row["fields"] == {"text": {"content": "收到"}}
        assert row["content"] == "收到" and row["msg_id"] is None
        assert store.messages.get(row["id"]) == row

    def test_set_status_transitions(self, store):
        row = store.outbox.save("helpdesk", "zhangsan", "text", "hi", {})
        failed = store.outbox.set_status(row["id"], "failed", error="errcode 81013: user invalid")
        assert (failed["status"], failed["error"]) == ("failed", "errcode 81013: user invalid")
        sent = store.outbox.set_status(row["id"], "sent", wecom_msgid="msgid-abc")
        assert (sent["status"], sent["error"], sent["msg_id"]) == ("sent", None, "msgid-abc")
        assert store.messages.get(row["id"]) == sent

    def test_set_status_refuses_bad_input(self, store):
        inbound, _ = store.messages.save_inbound("helpdesk", text(), "k1")
        outbound = store.outbox.save("helpdesk", "zhangsan", "text", "hi", {})
        with pytest.raises(KeyError):
            store.outbox.set_status(424242, "sent")
        with pytest.raises(KeyError):
            store.outbox.set_status(inbound["id"], "sent")
        with pytest.raises(ValueError):
            store.outbox.set_status(outbound["id"], "delivered")
        assert store.messages.get(inbound["id"])["status"] == "received"

    def test_messages_filters(self, store):
        save(store, app="helpdesk", user="zhangsan", content="100% sure")
        save(store, app="helpdesk", user="zhangsan", content="1000 sure")
        save(store, app="helpdesk", user="lisi", content="a_b")
        save(store, app="helpdesk", user="lisi", content="axb HELLO")
        save(store, app="ops", user="zhangsan", content="你好世界")
        store.messages.save_inbound("ops", click("wangwu"), "e1")

        def contents(**filters):
            return [m["content"] for m in store.messages.page(**filters)[0]]

        assert contents(app="ops") == [None, "你好世界"]
        assert contents(user="lisi") == ["axb HELLO", "a_b"]
        assert contents(app="helpdesk", user="zhangsan") == ["1000 sure", "100% sure"]
        assert contents(msgtype="event") == [None]
        assert contents(q="100%") == ["100% sure"]
        assert contents(q="a_b") == ["a_b"]
        assert contents(q="hello") == ["axb HELLO"]
        assert contents(q="好世") == ["你好世界"]
        assert contents(app="helpdesk", q="sure", user="lisi") == []

    def test_messages_keyset_paging(self, store):
        for n in range(120):
            save(store, user="user%d" % (n % 3), content="m%d" % n)
        seen, sizes, cursor = [], [], None
        while True:
            page, cursor = store.messages.page(before=cursor, limit=50)
            sizes.append(len(page))
            seen.extend(m["id"] for m in page)
            if cursor is None:
                break
            assert cursor == page[-1]["id"]
        assert sizes == [50, 50, 20]
        assert seen == sorted(seen, reverse=True)
        assert len(set(seen)) == 120 and store.messages.count() == 120

    def test_messages_exact_page_has_no_next(self, store):
        for n in range(50):
            save(store, content="m%d" % n)
        page, cursor = store.messages.page(limit=50)
        assert len(page) == 50 and cursor is None
        with pytest.raises(ValueError):
            store.messages.page(limit=0)

    def test_conversations(self, store):
        save(store, app="helpdesk", user="zhangsan", content="one")
        save(store, app="helpdesk", user="lisi", content="two")
        save(store, app="ops", user="zhangsan", content="three")
        save(store, app="helpdesk", user="zhangsan", content="four")
        reply = store.outbox.save("helpdesk", "zhangsan", "text", "five", {})
        rows = store.conversations.all()
        assert [(r["app"], r["user"], r["count"]) for r in rows] == [
            ("helpdesk", "zhangsan", 3), ("ops", "zhangsan", 1), ("helpdesk", "lisi", 1)]
        assert rows[0]["last_id"] == reply["id"]
        assert rows[0]["last_message"] == store.messages.get(reply["id"])
        assert rows[2]["last_message"]["content"] == "two"
        assert [r["user"] for r in store.conversations.all(app="helpdesk")] == ["zhangsan", "lisi"]
        assert store.conversations.all(app="nobody") == []

    def test_iter_export_order_app_and_since(self, store):
        for n in range(5):
            save(store, app="helpdesk" if n != 2 else "ops", content="m%d" % n)
        january, march = datetime(2026, 1, 1), datetime(2026, 3, 1)
        set_received_at(store, {1: january, 2: january}, default=march)
        everything = list(store.messages.iter_export(batch=2))
        assert [m["content"] for m in everything] == ["m0", "m1", "m2", "m3", "m4"]
        since = datetime(2026, 2, 1)
        assert [m["id"] for m in store.messages.iter_export(since=since)] == [3, 4, 5]
        aware = datetime(2026, 2, 1, 8, 0, tzinfo=timezone(timedelta(hours=8)))
        assert [m["id"] for m in store.messages.iter_export(since=aware, batch=1)] == [3, 4, 5]
        assert [m["id"] for m in store.messages.iter_export(app="helpdesk", since=since)] == [4, 5]
        assert everything[0]["received_at"] == "2026-01-01T00:00:00Z"

    def test_iter_export_reads_in_batches(self, store, caplog):
        for n in range(5):
            save(store, content="m%d" % n)
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            exported = store.messages.iter_export(batch=2)
            first = next(exported)
            selects_after_first = selects(caplog)
            rest = list(exported)
        assert first["content"] == "m0" and len(rest) == 4
        assert selects_after_first == 2  # the first batch and its rule runs
        assert selects(caplog, "message") == 3  # 2 + 2 + 1 rows
        assert selects(caplog, "rule_run") == 3  # one per batch

    def test_count(self, store):
        assert store.messages.count() == 0
        save(store)
        store.outbox.save("helpdesk", "zhangsan", "text", "hi", {})
        assert store.messages.count() == 2

    def test_migrate_twice_applies_nothing(self, store):
        assert store.migrate() == []

    def test_app_models_match_migrations(self, store):
        models = store.models.all()
        assert not diff_models(store.db, models), str(diff_models(store.db, models))

    def test_used_from_a_single_worker_thread(self, store):
        store.close()  # the fixture's connection belongs to the test thread
        with ThreadPoolExecutor(max_workers=1) as db_thread:
            assert db_thread.submit(store.migrate).result() == []
            row, created = db_thread.submit(store.messages.save_inbound, "helpdesk", text(), "k1").result()
            assert created is True
            page, cursor = db_thread.submit(store.messages.page, app="helpdesk").result()
            assert [m["id"] for m in page] == [row["id"]] and cursor is None
            db_thread.submit(store.health.ping).result()
            db_thread.submit(store.close).result()
        assert store.db.is_closed()

    def test_search_chinese_english_and_short_queries(self, store):
        save(store, content="我们的服务器宕机了")
        save(store, content="Deploy the STAGING server, please")
        save(store, content="服务正常")
        assert contents_of(store, q="服务器") == ["我们的服务器宕机了"]
        assert contents_of(store, q="宕机") == ["我们的服务器宕机了"]  # 2 characters: LIKE
        assert contents_of(store, q="服务") == ["服务正常", "我们的服务器宕机了"]
        assert contents_of(store, q="staging SERVER") == ["Deploy the STAGING server, please"]
        assert contents_of(store, q="de") == ["Deploy the STAGING server, please"]
        assert contents_of(store, q="服务器坏了") == []
        assert contents_of(store, q="") == contents_of(store)

    def test_search_operators_are_literal(self, store):
        for content in ('say "hi" now', "say hi now", "a*b", "axb", "this OR that", "this that",
                        "x AND y", "NEAR(a b)", "col:val", "-minus", "100%", "1000"):
            save(store, content=content)
        assert contents_of(store, q='"hi"') == ['say "hi" now']
        assert contents_of(store, q='say "hi') == ['say "hi" now']
        assert contents_of(store, q='"') == ['say "hi" now']
        assert contents_of(store, q="a*b") == ["a*b"]
        assert contents_of(store, q="a*") == ["a*b"]
        assert contents_of(store, q="s OR t") == ["this OR that"]
        assert contents_of(store, q="x AND y") == ["x AND y"]
        assert contents_of(store, q="NEAR(a") == ["NEAR(a b)"]
        assert contents_of(store, q="col:val") == ["col:val"]
        assert contents_of(store, q="-minus") == ["-minus"]
        assert contents_of(store, q="0%") == ["100%"]

    def test_search_combined_with_filters_and_paging(self, store):
        for n in range(30):
            save(store, app="ops" if n % 5 == 0 else "helpdesk", user="user%d" % (n % 3),
                 content="工单%d：服务器宕机" % n if n % 2 else "工单%d：一切正常" % n)
        store.outbox.save("helpdesk", "user1", "text", "服务器已恢复", {})
        ids, cursor = [], None
        while True:
            page, cursor = store.messages.page(app="helpdesk", user="user1", q="服务器", before=cursor, limit=2)
            ids.extend(m["id"] for m in page)
            if cursor is None:
                break
        # helpdesk (n % 5), user1 (n % 3 == 1), 服务器 (odd n): 1, 7, 13, 19, then the reply
        assert [store.messages.get(i)["content"] for i in ids] == [
            "服务器已恢复", "工单19：服务器宕机", "工单13：服务器宕机", "工单7：服务器宕机", "工单1：服务器宕机"]
        assert contents_of(store, msgtype="text", q="服务器已") == ["服务器已恢复"]
        assert contents_of(store, app="ops", q="宕机") == ["工单25：服务器宕机", "工单15：服务器宕机",
                                                         "工单5：服务器宕机"]

    def test_search_covers_locations_links_files_and_events(self, store):
        for n, (kind, xml) in enumerate(SAMPLES.items()):
            store.messages.save_inbound("helpdesk", parse(xml), "sample-%d" % n)

        def kinds(q):
            return sorted(m["msgtype"] + ":" + (m["event"] or "") for m in store.messages.page(q=q, limit=500)[0])

        assert kinds("人民广场") == ["event:location_select", "location:"]
        assert kinds("黄浦") == ["event:location_select", "location:"]  # 2 characters: LIKE
        assert kinds("q3") == ["link:"]
        assert kinds("季度报告") == ["link:"]
        assert kinds("Q3 SUMMARY") == ["link:"]
        assert kinds("lang=zh") == ["link:"]
        assert kinds("报价单 v2") == ["file:"]
        assert kinds("asset/42") == ["event:scancode_push"]
        assert kinds("6901234567892") == ["event:scancode_waitmsg"]
        assert kinds("RUN_BACKUP") == ["event:click"]
        assert kinds("部署一下") == ["text:"]

    def test_pages_give_each_message_as_reading_it_alone_does(self, store):
        # Pages and the conversation list read serialize.JSON_COLUMNS as named tuples; get() reads the
        # whole row as a model: every kind of message, with media, automation and a failed send.
        for n, (kind, xml) in enumerate(SAMPLES.items()):
            store.messages.save_inbound("helpdesk", parse(xml), "sample-%d" % n)
        row = save(store, user="lisi", content="查订单")
        run = store.runs.start(row["id"], "helpdesk", "lisi", "lookup", "webhook", "pending", url="http://x/")
        store.runs.finish(run["id"], "failed", error="boom")
        out = store.outbox.save("helpdesk", "lisi", "text", "订单已发货", {"text": {"content": "订单已发货"}})
        store.outbox.set_status(out["id"], "failed", error="errcode 60020")
        paged = store.messages.page(limit=500)[0]
        assert len(paged) == len(SAMPLES) + 2
        assert paged == [store.messages.get(m["id"]) for m in paged]
        assert any(m["media"] for m in paged) and any(m["automation"] for m in paged)
        assert list(store.messages.iter_export()) == paged[::-1]
        for conversation in store.conversations.all():
            assert conversation["last_message"] == store.messages.get(conversation["last_id"])

    def test_search_text_follows_updates(self, store):
        row, _ = store.messages.save_inbound("helpdesk", text(content="磁盘空间不足"), "k1")
        store.messages.save_inbound("helpdesk", text(content="磁盘空间不足"), "k1")  # a retry: an upsert
        out = store.outbox.save("helpdesk", "zhangsan", "text", "正在清理磁盘", {})
        store.outbox.set_status(out["id"], "failed", error="errcode 60020")
        store.outbox.retry(out["id"])
        store.outbox.record_attempt(out["id"], "timeout", None)
        store.outbox.set_status(out["id"], "sent", wecom_msgid="m1")
        assert contents_of(store, q="磁盘空间") == ["磁盘空间不足"]
        assert contents_of(store, q="磁盘") == ["正在清理磁盘", "磁盘空间不足"]
        M = store.models.Message
        M.update(search_text="内存不足").where(M.id == row["id"]).execute()
        assert contents_of(store, q="磁盘空间") == []
        assert [m["id"] for m in store.messages.page(q="内存不足")[0]] == [row["id"]]
        M.delete().where(M.id == row["id"]).execute()
        assert store.messages.page(q="内存不足")[0] == []

    def test_conversations_unread_and_mark_read(self, store):
        first = save(store, app="helpdesk", user="zhangsan", content="one")
        save(store, app="helpdesk", user="lisi", content="two")
        save(store, app="ops", user="zhangsan", content="three")
        second = save(store, app="helpdesk", user="zhangsan", content="four")
        store.outbox.save("helpdesk", "zhangsan", "text", "five", {})

        def unread():
            return {(r["app"], r["user"]): r["unread"] for r in store.conversations.all()}

        assert unread() == {("helpdesk", "zhangsan"): 2, ("helpdesk", "lisi"): 1, ("ops", "zhangsan"): 1}
        assert store.conversations.mark_read("helpdesk", "zhangsan", first["id"]) is None
        assert unread()[("helpdesk", "zhangsan")] == 1
        last = store.conversations.all(app="helpdesk")[0]["last_id"]
        store.conversations.mark_read("helpdesk", "zhangsan", last)
        assert unread() == {("helpdesk", "zhangsan"): 0, ("helpdesk", "lisi"): 1, ("ops", "zhangsan"): 1}
        store.conversations.mark_read("helpdesk", "zhangsan", first["id"])  # never backwards
        assert unread()[("helpdesk", "zhangsan")] == 0
        store.outbox.save("helpdesk", "zhangsan", "text", "six", {})
        assert unread()[("helpdesk", "zhangsan")] == 0  # outbound is never unread
        save(store, app="helpdesk", user="zhangsan", content="seven")
        assert unread()[("helpdesk", "zhangsan")] == 1
        assert [r["unread"] for r in store.conversations.all(app="ops")] == [1]
        assert second["id"] < last
        with pytest.raises(ValueError):
            store.conversations.mark_read("helpdesk", "zhangsan", -1)

    def test_conversations_take_three_queries(self, store, caplog):
        for n in range(12):
            save(store, app="helpdesk", user="user%d" % (n % 4), content="m%d" % n)
        for n in range(4):
            store.conversations.mark_read("helpdesk", "user%d" % n, n)
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            rows = store.conversations.all()
        assert len(rows) == 4 and selects(caplog) == 3  # the conversations, their newest messages, their runs

    def test_due_outbound_and_record_attempt(self, store):
        now = datetime(2026, 11, 28, 12, 0, 0)
        save(store, content="inbound is never due")
        a, b, c = (store.outbox.save("helpdesk", "zhangsan", "text", t, {}) for t in "abc")
        assert [m["id"] for m in store.outbox.due(now)] == [a["id"], b["id"], c["id"]]
        assert [m["id"] for m in store.outbox.due(now, limit=2)] == [a["id"], b["id"]]
        tried = store.outbox.record_attempt(a["id"], "errcode -1: system busy", now + timedelta(seconds=60))
        assert (tried["status"], tried["attempts"], tried["error"]) == ("pending", 1, "errcode -1: system busy")
        assert [m["id"] for m in store.outbox.due(now)] == [b["id"], c["id"]]
        assert [m["id"] for m in store.outbox.due(now + timedelta(seconds=60))] == [a["id"], b["id"], c["id"]]
        aware = datetime(2026, 11, 28, 20, 2, tzinfo=timezone(timedelta(hours=8)))
        assert store.outbox.record_attempt(a["id"], "again", aware)["attempts"] == 2
        assert a["id"] not in [m["id"] for m in store.outbox.due(now + timedelta(seconds=60))]
        assert a["id"] in [m["id"] for m in store.outbox.due(now + timedelta(seconds=120))]
        store.outbox.set_status(b["id"], "sent", wecom_msgid="m1")
        store.outbox.set_status(a["id"], "failed", error="gave up")
        assert [m["id"] for m in store.outbox.due(now + timedelta(days=1))] == [c["id"]]
        assert next_attempt_at_of(store, a["id"]) is None
        assert store.messages.get(a["id"])["attempts"] == 2

    def test_retry_outbound(self, store):
        row = store.outbox.save("helpdesk", "zhangsan", "text", "hi", {}, operator="admin")
        store.outbox.record_attempt(row["id"], "timeout", datetime(2999, 1, 1))
        store.outbox.set_status(row["id"], "failed", error="errcode 81013: user invalid")
        retried = store.outbox.retry(row["id"])
        assert (retried["status"], retried["error"], retried["attempts"]) == ("pending", None, 0)
        assert retried["operator"] == "admin"
        assert [m["id"] for m in store.outbox.due(datetime(2000, 1, 1))] == [row["id"]]
        assert store.messages.get(row["id"]) == retried

    def test_wrong_outbox_transitions_raise(self, store):
        inbound = save(store)
        pending = store.outbox.save("helpdesk", "zhangsan", "text", "p", {})
        sent = store.outbox.save("helpdesk", "zhangsan", "text", "s", {}, status="sent")
        for message_id in (pending["id"], sent["id"], inbound["id"]):
            with pytest.raises(ValueError):
                store.outbox.retry(message_id)
        with pytest.raises(KeyError):
            store.outbox.retry(424242)
        with pytest.raises(ValueError):
            store.outbox.record_attempt(sent["id"], "late", None)
        for message_id in (inbound["id"], 424242):
            with pytest.raises(KeyError):
                store.outbox.record_attempt(message_id, "no", None)
        assert store.messages.get(pending["id"]) == pending and store.messages.get(sent["id"]) == sent
        assert store.messages.get(inbound["id"])["attempts"] == 0

    def test_inbound_media_is_pending(self, store):
        image, _ = store.messages.save_inbound("helpdesk", parse(SAMPLES["image"]), "img")
        assert image["media"] == {"status": "pending", "size": None, "type": None, "name": None,
                                  "error": None}
        document, _ = store.messages.save_inbound("helpdesk", parse(SAMPLES["file"]), "file")
        assert document["media"]["name"] == "报价单 v2.xlsx"
        plain = save(store)
        assert plain["media"] is None and store.media.get(plain["id"]) is None
        out = store.outbox.save("helpdesk", "zhangsan", "text", "hi", {})
        assert out["media"] is None
        assert store.media.get(424242) is None
        again, created = store.messages.save_inbound("helpdesk", parse(SAMPLES["image"]), "img")
        assert created is False and again["media"]["status"] == "pending"

    def test_due_media_and_set_media(self, store):
        now = datetime(2026, 11, 28, 12, 0, 0)
        image, _ = store.messages.save_inbound("helpdesk", parse(SAMPLES["image"]), "img")
        voice, _ = store.messages.save_inbound("helpdesk", parse(SAMPLES["voice"]), "voice")
        save(store)
        assert [m["id"] for m in store.media.due(now)] == [image["id"], voice["id"]]
        assert [m["id"] for m in store.media.due(now, limit=1)] == [image["id"]]
        later = now + timedelta(minutes=5)
        tried = store.media.record(voice["id"], "pending", error="errcode 40007: invalid media_id",
                                   next_attempt_at=later)
        assert tried["attempts"] == 1 and tried["media"]["error"] == "errcode 40007: invalid media_id"
        assert [m["id"] for m in store.media.due(now)] == [image["id"]]
        assert [m["id"] for m in store.media.due(later)] == [image["id"], voice["id"]]
        stored = store.media.record(image["id"], "stored", path="2026/11/28/1.jpg", size=2048,
                                    mime="image/jpeg", name="1.jpg")
        assert stored["media"] == {"status": "stored", "size": 2048, "type": "image/jpeg",
                                   "name": "1.jpg", "error": None}
        assert stored["attempts"] == 0 and "2026/11/28" not in json.dumps(stored)
        assert store.media.get(image["id"]) == {"status": "stored", "path": "2026/11/28/1.jpg",
                                                "size": 2048, "type": "image/jpeg", "name": "1.jpg",
                                                "error": None}
        failed = store.media.record(voice["id"], "failed", error="media expired")
        assert failed["media"]["status"] == "failed" and failed["attempts"] == 1
        assert store.media.due(later) == [] and next_attempt_at_of(store, voice["id"]) is None
        assert set(store.messages.get(voice["id"])["media"]) == MEDIA_KEYS
        with pytest.raises(ValueError):
            store.media.record(voice["id"], "downloaded")
        with pytest.raises(KeyError):
            store.media.record(424242, "stored")

    def test_iter_export_shares_the_messages_filter(self, store):
        for n in range(40):
            save(store, user="user%d" % (n % 2), content="日志%d %s" % (n, "服务器宕机" if n % 3 else "正常"))
        store.outbox.save("helpdesk", "user1", "text", "服务器已重启", {})
        for filters in (dict(q="服务器", user="user1"), dict(q="宕机"), dict(msgtype="text", q="日志1"),
                        dict(app="nobody"), {}):
            newest_first = store.messages.page(limit=500, **filters)[0]
            exported = list(store.messages.iter_export(batch=3, **filters))
            assert exported == newest_first[::-1], filters
        assert len(list(store.messages.iter_export(q="服务器", user="user1"))) == 14

    def test_save_passive_reply_keeps_the_first_and_stores_one_answer(self, store):
        row, _ = store.messages.save_inbound("helpdesk", text(), "k1")
        run = store.runs.start(row["id"], "helpdesk", "zhangsan", "greet", "reply")
        kept, answer = store.messages.save_passive_reply(row["id"], "<xml>A</xml>", "A", "greet", run["id"])
        assert kept == "<xml>A</xml>"
        assert (answer["direction"], answer["content"], answer["automatic"], answer["rule"]) == \
            ("out", "A", "passive", "greet")
        assert store.runs.get(run["id"])["reply_message_id"] == answer["id"]
        assert store.messages.save_passive_reply(row["id"], "<xml>B</xml>", "B") == ("<xml>A</xml>", None)
        again, created = store.messages.save_inbound("helpdesk", text(), "k1", reply="<xml>C</xml>")
        assert (created, again["reply"]) == (False, "<xml>A</xml>")
        assert [m["content"] for m in store.messages.page()[0] if m["direction"] == "out"] == ["A"]
        for message_id in (answer["id"], 424242):
            with pytest.raises(KeyError):
                store.messages.save_passive_reply(message_id, "<xml/>", "x")

    def test_save_answer_is_a_sent_automatic_message(self, store):
        save(store, content="hi")
        answer = store.messages.save_answer("helpdesk", "zhangsan", "已收到")
        assert answer == store.messages.get(answer["id"])  # its JSON is built from the values inserted
        assert set(answer) == ROW_KEYS
        assert (answer["direction"], answer["status"], answer["to_user"], answer["content"]) == \
            ("out", "sent", "zhangsan", "已收到")
        assert (answer["automatic"], answer["rule"], answer["operator"]) == ("passive", None, None)
        ruled = store.messages.save_answer("helpdesk", "zhangsan", "你好", rule="greet")
        assert (ruled["automatic"], ruled["rule"], ruled["operator"]) == ("passive", "greet", "rule:greet")
        assert store.outbox.due(datetime.now(timezone.utc)) == []  # never the outbox's to send
        [conv] = store.conversations.all()
        assert (conv["count"], conv["unread"], conv["last_id"]) == (3, 1, ruled["id"])
        assert [m["id"] for m in store.messages.page(q="已收到")[0]] == [answer["id"]]
        api = store.outbox.save("helpdesk", "zhangsan", "text", "later", {}, operator="rule:slow",
                                automatic="api", rule="slow")
        assert (api["automatic"], api["rule"], api["status"]) == ("api", "slow", "pending")

    def test_the_callback_paths_writer_calls_store_the_message_and_the_apps_answer_once(self, store):
        # inbox.store_answered / store_inbound: one statement on SQLite with RETURNING
        # (Messages.save_delivery), the pause read, save_inbound and save_answer elsewhere.
        row, created, paused, answer = store_answered(store, "helpdesk", text(msg_id=BIG_MSG_ID), "k1",
                                                      "<xml>A</xml>", "已收到")
        assert (created, paused, row["reply"], row["deliveries"]) == (True, False, "<xml>A</xml>", 1)
        assert {k: v for k, v in row.items() if k != "reply"} == store.messages.get(row["id"])
        assert answer == store.messages.get(answer["id"]) and answer["id"] > row["id"]
        assert (answer["direction"], answer["to_user"], answer["content"], answer["automatic"], answer["rule"]) == \
            ("out", "zhangsan", "已收到", "passive", None)
        for attempt in (2, 3):  # retries: brief, the first reply kept, no second answer
            again = store_answered(store, "helpdesk", text(msg_id=BIG_MSG_ID), "k1", "<xml>B</xml>", "B")
            assert again == ({"id": row["id"], "deliveries": attempt, "reply": "<xml>A</xml>"}, False, False, None)
        new, created, paused, none = store_inbound(store, "helpdesk", click(), "e1")
        assert (created, paused, none, new["reply"]) == (True, False, None, None)
        assert store_inbound(store, "helpdesk", click(), "e1") == \
            ({"id": new["id"], "deliveries": 2, "reply": None}, False, False, None)
        assert [m["content"] for m in store.messages.page()[0] if m["direction"] == "out"] == ["已收到"]
        assert store.messages.count() == 3
        assert_same(store)

    def test_the_callback_paths_writer_calls_honour_the_takeover_pause(self, store):
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        store.takeovers.pause("helpdesk", "zhangsan", now + timedelta(minutes=30), "admin")
        store.takeovers.pause("helpdesk", "over", now - timedelta(minutes=1), "admin")
        row, created, paused, answer = store_answered(store, "helpdesk", text(), "k1", "<xml>A</xml>", "A")
        assert (created, paused, answer, row["reply"]) == (True, True, None, None)
        again = store_answered(store, "helpdesk", text(), "k1", "<xml>A</xml>", "A")
        assert again == ({"id": row["id"], "deliveries": 2, "reply": None}, False, True, None)
        assert store_inbound(store, "helpdesk", click(), "e1")[1:] == (True, True, None)
        assert store_inbound(store, "ops", click(), "e2")[1:] == (True, False, None)  # another app
        for user in ("lisi", "over"):  # not paused, or a pause that is over
            row, created, paused, answer = store_answered(store, "helpdesk", text(user), "k-" + user,
                                                          "<xml>A</xml>", "A")
            assert (created, paused, row["reply"], answer["to_user"]) == (True, False, "<xml>A</xml>", user)
        store.takeovers.pause("helpdesk", "", now + timedelta(minutes=30), "admin")
        nobody, created, paused, _ = store_inbound(store, "helpdesk", text(""), "k-empty")
        assert (created, paused) == (True, False)  # no sender: never paused
        assert [m["to_user"] for m in store.messages.page()[0] if m["direction"] == "out"] == ["over", "lisi"]
        assert_same(store)

    def test_start_run_and_finish_run(self, store):
        message = save(store, content="deploy")
        run = store.runs.start(message["id"], "helpdesk", "zhangsan", "deploy", "run")
        assert set(run) == RUN_KEYS
        assert (run["message_id"], run["app"], run["user"], run["rule"], run["action"], run["status"]) == \
            (message["id"], "helpdesk", "zhangsan", "deploy", "run", "running")
        assert (run["path"], run["finished_at"], run["attempts"], run["next_attempt_at"]) == (None, None, 0, None)
        assert is_recent(run["started_at"])
        done = store.runs.finish(run["id"], "ok", exit_code=0, duration_ms=12.5, output="done\n")
        assert (done["status"], done["exit_code"], done["duration_ms"], done["output"]) == ("ok", 0, 12.5, "done\n")
        assert is_recent(done["finished_at"]) and done["error"] is None and done["path"] is None
        # only the given values change
        again = store.runs.finish(run["id"], "failed", error="late failure", path="api", reply_message_id=7)
        assert (again["exit_code"], again["duration_ms"], again["output"]) == (0, 12.5, "done\n")
        assert (again["status"], again["error"], again["path"], again["reply_message_id"]) == \
            ("failed", "late failure", "api", 7)
        assert store.runs.get(run["id"]) == again and store.runs.get(424242) is None

    def test_start_run_refuses_bad_input(self, store):
        message = save(store)
        with pytest.raises(KeyError):
            store.runs.start(424242, "helpdesk", "zhangsan", "r", "reply")
        with pytest.raises(ValueError):
            store.runs.start(message["id"], "helpdesk", "zhangsan", "r", "email")
        with pytest.raises(ValueError):
            store.runs.start(message["id"], "helpdesk", "zhangsan", "r", "reply", status="done")
        run = store.runs.start(message["id"], "helpdesk", "zhangsan", "r", "reply")
        for status in ("running", "pending", "done"):
            with pytest.raises(ValueError):
                store.runs.finish(run["id"], status)
        with pytest.raises(ValueError):
            store.runs.finish(run["id"], "ok", path="carrier pigeon")
        with pytest.raises(ValueError):
            store.runs.set_path(run["id"], "fax")
        for call in (lambda: store.runs.finish(424242, "ok"), lambda: store.runs.set_path(424242, "api")):
            with pytest.raises(KeyError):
                call()
        assert store.runs.for_messages([message["id"]])[message["id"]] == [public_run(store.runs.get(run["id"]))]

    def test_skipped_run_is_finished_at_once(self, store):
        message = save(store)
        run = store.runs.start(message["id"], "helpdesk", "zhangsan", "r", "reply", status="skipped")
        assert run["status"] == "skipped" and run["finished_at"] == run["started_at"]

    def test_webhook_payload_keeps_its_exact_bytes(self, store):
        message = save(store)
        body = json.dumps({"message": {"content": "你好 \"q\" \\ \u2028"}}, ensure_ascii=False).encode("utf-8")
        run = store.runs.start(message["id"], "helpdesk", "zhangsan", "hook", "webhook", status="pending",
                               url="https://example.test/hook?token=t", payload=body)
        assert run["payload"].encode("utf-8") == body
        assert store.runs.get(run["id"])["payload"].encode("utf-8") == body
        assert (run["url"], run["finished_at"]) == ("https://example.test/hook?token=t", None)
        automation = store.messages.get(message["id"])["automation"]
        assert "url" not in automation[0] and "payload" not in automation[0]

    def test_set_run_path(self, store):
        message = save(store)
        run = store.runs.start(message["id"], "helpdesk", "zhangsan", "r", "reply")
        passive = store.runs.set_path(run["id"], "passive")
        assert (passive["path"], passive["reply_message_id"], passive["status"]) == ("passive", None, "running")
        out = store.outbox.save("helpdesk", "zhangsan", "text", "hi", {})
        api = store.runs.set_path(run["id"], "api", reply_message_id=out["id"])
        assert (api["path"], api["reply_message_id"]) == ("api", out["id"])
        assert store.runs.set_path(run["id"], "none")["reply_message_id"] == out["id"]

    def test_message_json_carries_its_automation(self, store):
        first, second = save(store, content="one"), save(store, content="two")
        assert first["automation"] == [] and store.messages.get(first["id"])["automation"] == []
        reply = store.runs.start(first["id"], "helpdesk", "zhangsan", "greet", "reply")
        store.runs.finish(reply["id"], "ok", path="passive", output="hi")
        hook = store.runs.start(first["id"], "helpdesk", "zhangsan", "notify", "webhook", status="pending",
                                url="https://x.test/", payload="{}")
        automation = store.messages.get(first["id"])["automation"]
        assert [(r["id"], r["rule"], r["action"], r["status"], r["path"]) for r in automation] == \
            [(reply["id"], "greet", "reply", "ok", "passive"), (hook["id"], "notify", "webhook", "pending", None)]
        assert all(set(r) == AUTOMATION_KEYS for r in automation)
        assert automation[0] == public_run(store.runs.get(reply["id"]))
        page, _ = store.messages.page()
        assert [m["automation"] for m in page] == [[], automation]
        assert [m["automation"] for m in store.messages.iter_export(batch=1)] == [automation, []]
        assert store.conversations.all()[0]["last_message"] == store.messages.get(second["id"])
        retried, created = store.messages.save_inbound("helpdesk", text(content="one"), key_of(store, first["id"]))
        assert created is False and retried["automation"] == automation
        assert store.outbox.save("helpdesk", "zhangsan", "text", "x", {})["automation"] == []

    def test_messages_read_runs_with_one_query_per_page(self, store, caplog):
        rows = [save(store, user="user%d" % (n % 3), content="m%d" % n) for n in range(12)]
        for row in rows[::2]:
            for rule in ("a", "b"):
                store.runs.start(row["id"], "helpdesk", row["from_user"], rule, "reply")
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            page, cursor = store.messages.page(limit=5)
            store.messages.page(before=cursor, limit=5)
            assert (selects(caplog, "message"), selects(caplog, "rule_run")) == (2, 2)
            caplog.clear()
            conversations = store.conversations.all()
            assert (selects(caplog), selects(caplog, "rule_run")) == (3, 1)
        assert [len(m["automation"]) for m in page] == [0, 2, 0, 2, 0]
        assert {c["last_message"]["id"]: len(c["last_message"]["automation"]) for c in conversations} == \
            {rows[-1]["id"]: 0, rows[-2]["id"]: 2, rows[-3]["id"]: 0}
        assert [c["last_message"] for c in conversations] == [store.messages.get(c["last_id"]) for c in conversations]

    def test_runs_for(self, store, caplog):
        a, b, c = save(store), save(store), save(store)
        runs = [store.runs.start(m["id"], "helpdesk", "zhangsan", rule, "reply")
                for m, rule in ((a, "x"), (c, "y"), (a, "z"))]
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            found = store.runs.for_messages([a["id"], b["id"], c["id"], 424242])
        assert selects(caplog) == 1
        assert found == {a["id"]: [public_run(runs[0]), public_run(runs[2])], b["id"]: [],
                         c["id"]: [public_run(runs[1])], 424242: []}
        assert store.runs.for_messages([]) == {}

    def test_rule_stats(self, store):
        one, two, three = save(store), save(store), save(store)
        assert store.runs.stats() == {}
        for message in (one, one, two):  # one message firing twice is one hit
            store.runs.start(message["id"], "helpdesk", "zhangsan", "deploy", "run")
        runs = [store.runs.start(m["id"], "helpdesk", "zhangsan", "notify", "webhook", status="pending")
                for m in (one, two, three)]
        for run, status in zip(runs, ("failed", "timeout", "ok")):
            store.runs.finish(run["id"], status)
        store.runs.start(three["id"], "helpdesk", "zhangsan", "deploy", "run", status="error")
        store.runs.start(three["id"], "helpdesk", "zhangsan", "paused", "reply", status="skipped")
        stats = store.runs.stats()
        assert {rule: (s["hits"], s["failures"]) for rule, s in stats.items()} == \
            {"deploy": (3, 1), "notify": (3, 2), "paused": (0, 0)}
        assert is_recent(stats["deploy"]["last_fired"]) and stats["paused"]["last_fired"] is None
        R = store.models.RuleRun
        R.update(started_at=datetime(2026, 1, 2, 3, 4, 5)).where(R.rule == "notify").execute()
        assert store.runs.stats()["notify"]["last_fired"] == "2026-01-02T03:04:05Z"

    def test_interrupt_running(self, store):
        message = save(store)
        running = [store.runs.start(message["id"], "helpdesk", "zhangsan", "r%d" % n, "run") for n in range(2)]
        pending = store.runs.start(message["id"], "helpdesk", "zhangsan", "hook", "webhook", status="pending")
        done = store.runs.finish(store.runs.start(message["id"], "helpdesk", "zhangsan", "d", "run")["id"], "ok")
        now = datetime(2026, 11, 28, 12, 0, 0)
        assert store.runs.interrupt_running(now) == 2
        for run in running:
            after = store.runs.get(run["id"])
            assert (after["status"], after["error"], after["finished_at"]) == \
                ("error", "interrupted: wecomd stopped while it ran", "2026-11-28T12:00:00Z")
        assert store.runs.get(pending["id"]) == pending and store.runs.get(done["id"]) == done
        assert store.runs.interrupt_running(now) == 0

    def test_due_webhooks_and_record_run_attempt(self, store):
        now = datetime(2026, 11, 28, 12, 0, 0)
        message = save(store)
        a, b, c = (store.runs.start(message["id"], "helpdesk", "zhangsan", rule, "webhook", status="pending",
                                    url="https://x.test/", payload="{}") for rule in "abc")
        store.runs.start(message["id"], "helpdesk", "zhangsan", "cmd", "run")  # running, not a webhook
        assert [r["id"] for r in store.runs.due_webhooks(now)] == [a["id"], b["id"], c["id"]]
        assert [r["id"] for r in store.runs.due_webhooks(now, limit=2)] == [a["id"], b["id"]]
        later = now + timedelta(seconds=30)
        tried = store.runs.record_webhook_attempt(a["id"], "HTTP 500 Internal Server Error", later)
        assert (tried["status"], tried["attempts"], tried["error"], tried["next_attempt_at"]) == \
            ("pending", 1, "HTTP 500 Internal Server Error", "2026-11-28T12:00:30Z")
        assert [r["id"] for r in store.runs.due_webhooks(now)] == [b["id"], c["id"]]
        assert [r["id"] for r in store.runs.due_webhooks(later)] == [a["id"], b["id"], c["id"]]
        aware = datetime(2026, 11, 28, 20, 1, tzinfo=timezone(timedelta(hours=8)))  # 12:01 UTC
        assert store.runs.record_webhook_attempt(a["id"], "again", aware)["attempts"] == 2
        assert a["id"] not in [r["id"] for r in store.runs.due_webhooks(later)]
        store.runs.finish(b["id"], "ok")
        failed = store.runs.finish(a["id"], "failed", error="gave up")
        assert (failed["attempts"], failed["next_attempt_at"]) == (2, None)
        assert [r["id"] for r in store.runs.due_webhooks(now + timedelta(days=1))] == [c["id"]]
        with pytest.raises(ValueError):
            store.runs.record_webhook_attempt(a["id"], "late", None)
        with pytest.raises(KeyError):
            store.runs.record_webhook_attempt(424242, "no", None)

    def test_takeover_pause_extend_never_shorten_resume(self, store):
        noon = datetime(2026, 11, 28, 12, 0, 0)
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon) is None
        assert store.takeovers.pause("helpdesk", "zhangsan", noon + timedelta(minutes=30), "admin") is None
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon) == noon + timedelta(minutes=30)
        assert store.takeovers.paused_until("helpdesk", "lisi", noon) is None
        assert store.takeovers.paused_until("ops", "zhangsan", noon) is None
        store.takeovers.pause("helpdesk", "zhangsan", noon + timedelta(minutes=45), "alice")  # extends
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon) == noon + timedelta(minutes=45)
        store.takeovers.pause("helpdesk", "zhangsan", noon + timedelta(minutes=10), "bob")  # never shortens
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon) == noon + timedelta(minutes=45)
        T = store.models.Takeover
        assert T.get(T.user == "zhangsan").operator == "alice"
        aware = datetime(2026, 11, 28, 21, 0, tzinfo=timezone(timedelta(hours=8)))  # 13:00 UTC
        store.takeovers.pause("helpdesk", "zhangsan", aware, None)
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon) == datetime(2026, 11, 28, 13, 0)
        store.takeovers.resume("helpdesk", "zhangsan")
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon) is None
        store.takeovers.resume("helpdesk", "zhangsan")  # nothing to resume: no error
        store.takeovers.pause("helpdesk", "zhangsan", noon + timedelta(minutes=5), "admin")  # a fresh, shorter pause
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon) == noon + timedelta(minutes=5)

    def test_takeover_expires(self, store):
        noon = datetime(2026, 11, 28, 12, 0, 0)
        store.takeovers.pause("helpdesk", "zhangsan", noon, "admin")
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon - timedelta(seconds=1)) == noon
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon) is None
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon + timedelta(hours=1)) is None
        store.takeovers.pause("helpdesk", "zhangsan", noon + timedelta(hours=2), "admin")  # an expired pause renews
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon + timedelta(hours=1)) == \
            noon + timedelta(hours=2)

    def test_conversations_show_paused_until(self, store, caplog):
        noon = datetime(2026, 11, 28, 12, 0, 0)
        for user in ("zhangsan", "lisi", "wangwu"):
            save(store, user=user)
        store.takeovers.pause("helpdesk", "zhangsan", noon + timedelta(minutes=30), "admin")
        store.takeovers.pause("helpdesk", "lisi", noon - timedelta(minutes=1), "admin")  # over
        store.takeovers.pause("ops", "wangwu", noon + timedelta(hours=1), "admin")  # another app
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            rows = store.conversations.all(now=noon)
        assert selects(caplog) == 3  # the pauses come with the conversations: no query of their own
        assert {r["user"]: r["paused_until"] for r in rows} == \
            {"zhangsan": "2026-11-28T12:30:00Z", "lisi": None, "wangwu": None}
        assert [r["count"] for r in rows] == [1, 1, 1]
        later = store.conversations.all(app="helpdesk", now=noon + timedelta(hours=1))
        assert [r["paused_until"] for r in later] == [None, None, None]
        store.takeovers.pause("helpdesk", "wangwu", datetime(2999, 1, 1), "admin")
        assert {r["user"]: r["paused_until"] for r in store.conversations.all()}["wangwu"] == "2999-01-01T00:00:00Z"

    def test_iter_inbound(self, store, caplog):
        for n in range(5):
            store.messages.save_inbound("ops" if n == 3 else "helpdesk",
                                        text(content="m%d" % n, raw="<xml>%d</xml>" % n), "k%d" % n)
        store.outbox.save("helpdesk", "zhangsan", "text", "out", {})
        set_received_at(store, {1: datetime(2026, 1, 1)}, default=datetime(2026, 3, 1))
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            everything = list(store.messages.iter_inbound(batch=2))
        assert selects(caplog) == 3
        assert everything[0] == {"id": 1, "app": "helpdesk", "raw": "<xml>0</xml>",
                                 "received_at": "2026-01-01T00:00:00Z"}
        assert [r["raw"] for r in everything] == ["<xml>%d</xml>" % n for n in range(5)]
        assert [r["id"] for r in store.messages.iter_inbound(since=datetime(2026, 2, 1))] == [2, 3, 4, 5]
        assert [r["id"] for r in store.messages.iter_inbound(since=datetime(2026, 2, 1), app="helpdesk")] == [2, 3, 5]
        assert [r["id"] for r in store.messages.iter_inbound(app="ops")] == [4]

    # ---- the conversation summary: always what grouping the messages gives

    def test_inbound_outbound_and_retried_deliveries(self, store):
        assert store.conversations.all() == []
        first, created = receive(store, content="一", key="k1")
        assert created
        for _ in range(3):  # WeCom retrying the callback: the same message, counted once
            again, created = receive(store, content="一", key="k1")
            assert not created and again["id"] == first["id"]
        receive(store, user="lisi", content="二")
        receive(store, app="ops", content="三")
        reply = store.outbox.save("helpdesk", "zhangsan", "text", "收到", {})
        store.outbox.set_status(reply["id"], "sent", wecom_msgid="m1")
        rows = store.conversations.all(now=NOW)
        assert [(r["app"], r["user"], r["count"], r["unread"], r["last_id"]) for r in rows] == [
            ("helpdesk", "zhangsan", 2, 1, reply["id"]), ("ops", "zhangsan", 1, 1, rows[1]["last_id"]),
            ("helpdesk", "lisi", 1, 1, rows[2]["last_id"])]
        assert rows[0]["last_message"]["status"] == "sent"
        assert_same(store)


    def test_read_marks_and_replies(self, store):
        ids = [receive(store, content="m%d" % n)[0]["id"] for n in range(5)]
        store.conversations.mark_read("helpdesk", "zhangsan", ids[2])
        assert [r["unread"] for r in store.conversations.all()] == [2]
        store.conversations.mark_read("helpdesk", "zhangsan", ids[0])  # never backwards
        assert [r["unread"] for r in store.conversations.all()] == [2]
        store.outbox.save("helpdesk", "zhangsan", "text", "人工回复", {}, operator="admin")
        assert [(r["count"], r["unread"]) for r in store.conversations.all()] == [(6, 2)]
        store.conversations.mark_read("helpdesk", "zhangsan", ids[-1] + 10 ** 6)  # a mark past every message
        receive(store, content="later")  # its id is below the mark: read, as the GROUP BY says
        assert [(r["count"], r["unread"]) for r in store.conversations.all()] == [(7, 0)]
        store.conversations.mark_read("helpdesk", "nobody", 5)  # a mark without a conversation adds none
        store.conversations.mark_read("ops", "lisi", 1)
        receive(store, app="ops", user="lisi")  # a new conversation after an old mark
        assert_same(store)


    def test_takeover_shows_and_ends(self, store):
        receive(store, user="zhangsan")
        receive(store, user="lisi")
        store.takeovers.pause("helpdesk", "zhangsan", NOW + timedelta(minutes=30), "admin")
        store.takeovers.pause("helpdesk", "lisi", NOW - timedelta(minutes=1), "admin")  # over
        assert {r["user"]: r["paused_until"] for r in store.conversations.all(now=NOW)} == \
            {"zhangsan": "2026-11-28T12:30:00Z", "lisi": None}
        assert_same(store)
        store.takeovers.resume("helpdesk", "zhangsan")
        assert [r["paused_until"] for r in store.conversations.all(now=NOW)] == [None, None]
        assert_same(store)


    def test_messages_without_a_sender_form_one_conversation(self, store):
        receive(store, user=None, content="系统通知 1")
        receive(store, user="zhangsan")
        receive(store, user=None, content="系统通知 2")
        receive(store, app="ops", user=None, content="系统通知 3")
        rows = store.conversations.all()
        assert [(r["app"], r["user"], r["count"], r["unread"]) for r in rows] == [
            ("ops", None, 1, 1), ("helpdesk", None, 2, 2), ("helpdesk", "zhangsan", 1, 1)]
        assert_same(store)


    def test_pruning_shrinks_and_deletes_conversations(self, store):
        gone = [receive(store, user="lisi", content="lisi %d" % n)[0] for n in range(3)]
        kept_old = store.outbox.save("helpdesk", "zhangsan", "text", "still pending", {})  # in use: kept
        old = receive(store, user="zhangsan", content="old")[0]
        new = receive(store, user="zhangsan", content="new")[0]
        nameless = receive(store, user=None, content="old, no sender")[0]
        store.conversations.mark_read("helpdesk", "zhangsan", old["id"])
        for row in gone + [kept_old, old, nameless]:
            age(store, row["id"], OLD)
        age(store, new["id"], NOW)

        result = store.maintenance.prune(CUTOFF, batch=2)

        assert result["messages"] == 5
        rows = store.conversations.all(now=NOW)
        assert [(r["user"], r["count"], r["unread"], r["last_id"]) for r in rows] == \
            [("zhangsan", 2, 1, new["id"])]
        assert_same(store)
        age(store, new["id"], OLD)
        store.outbox.set_status(kept_old["id"], "sent")
        store.maintenance.prune(CUTOFF)
        assert store.conversations.all() == [] and grouped(store) == []


    def test_newest_message_pruned_leaves_the_previous_one_last(self, store):
        first = receive(store, content="first")[0]
        last = receive(store, content="last")[0]
        age(store, last["id"], OLD)
        age(store, first["id"], NOW)
        store.maintenance.prune(CUTOFF)
        [row] = store.conversations.all()
        assert (row["last_id"], row["count"], row["last_message"]["content"]) == (first["id"], 1, "first")
        assert_same(store)


    def test_random_histories_match_the_group_by(self, store):
        """Many random steps of everything that changes conversations; after each, the summary is
        exactly what grouping the messages gives."""
        rng = random.Random(20261128)
        users = ["u%d" % n for n in range(6)] + [None]
        keys = []
        for step in range(250):
            action = rng.random()
            app, user = rng.choice(("helpdesk", "ops")), rng.choice(users)
            if action < 0.45:
                key = "k%d" % step
                keys.append((app, user, key))
                row = store.messages.save_inbound(app, text(user, "m%d" % step), key)[0]
                age(store, row["id"], rng.choice((OLD, NOW)))
            elif action < 0.55 and keys:
                app, user, key = rng.choice(keys)  # a retried delivery (maybe of a pruned message)
                store.messages.save_inbound(app, text(user, "again"), key)
            elif action < 0.7 and user is not None:
                row = store.outbox.save(app, user, "text", "reply %d" % step, {}, operator="admin",
                                        status=rng.choice(("pending", "sent")))
                age(store, row["id"], rng.choice((OLD, NOW)))
            elif action < 0.85 and user is not None:
                store.conversations.mark_read(app, user, rng.randrange(0, step + 5))
            elif action < 0.92 and user is not None:
                store.takeovers.pause(app, user, NOW + timedelta(minutes=rng.choice((-5, 5))), "admin")
            else:
                store.maintenance.prune(CUTOFF, batch=rng.choice((1, 3, 500)))
            if step % 10 == 0:
                assert_same(store)
        assert_same(store)


    def test_rebuild_gives_the_same_rows(self, store):
        for n in range(8):
            receive(store, user="u%d" % (n % 3), app=("helpdesk", "ops")[n % 2])
        store.conversations.mark_read("helpdesk", "u0", 3)
        before = store.conversations.all(now=NOW)
        store.models.Conversation.delete().execute()
        assert store.conversations.rebuild() == len(before)
        assert store.conversations.all(now=NOW) == before


    def test_pages_follow_the_cursor(self, store):
        for n in range(7):
            receive(store, user="u%d" % n, app=("helpdesk", "ops")[n % 2])
        everything = store.conversations.all(now=NOW)
        seen, cursor = [], None
        while True:
            page, cursor = store.conversations.page(before=cursor, limit=3, now=NOW)
            seen += page
            if cursor is None:
                break
            assert cursor == page[-1]["last_id"]
        assert seen == everything
        page, cursor = store.conversations.page(app="ops", limit=2, now=NOW)
        assert [r["user"] for r in page] == ["u5", "u3"] and cursor == page[-1]["last_id"]
        assert store.conversations.page(app="ops", before=cursor, now=NOW) == ([everything[-2]], None)
        assert store.conversations.page(limit=10 ** 6)[1] is None  # capped at 500, not refused
        with pytest.raises(ValueError):
            store.conversations.page(limit=0)


    def test_a_page_is_three_queries(self, store, caplog):
        for n in range(12):
            receive(store, user="u%d" % (n % 5))
            store.runs.start(n + 1, "helpdesk", "u%d" % (n % 5), "greet", "reply")
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            page, _ = store.conversations.page(limit=3)
        selects = [r for r in caplog.records if r.name == "peewee" and str(r.msg).startswith("('SELECT")]
        assert len(selects) == 3  # whatever the page's size: the conversations, their newest messages, their runs
        assert all(len(row["last_message"]["automation"]) == 1 for row in page)


    def test_the_list_is_read_in_index_order(self, store):
        if not isinstance(store.db, SqliteDatabase):
            pytest.skip("SQLite's query plan")
        receive(store)

        def plan(sql_of):
            query = sql_of()
            sql, params = query.sql()
            return " | ".join(r[-1] for r in store.db.execute_sql("EXPLAIN QUERY PLAN " + sql, params))

        C, T = store.models.Conversation, store.models.Takeover
        base = lambda: C.select(C.last_id).join(T, JOIN.LEFT_OUTER, on=(T.app == C.app) & (T.user == C.user))  # noqa: E731
        everything = plan(lambda: base().order_by(C.last_id.desc()).limit(101))
        one_app = plan(lambda: base().where((C.app == "ops") & (C.last_id < 9)).order_by(C.last_id.desc()).limit(101))
        assert "conversation_last_id" in everything and "TEMP B-TREE" not in everything
        assert "conversation_app_last_id (app=? AND last_id<?)" in one_app and "TEMP B-TREE" not in one_app


class TestSqlite(StoreTests):
    """SQLite as the daemon opens it: the 0004 triggers count a new message inside its INSERT."""

    @pytest.fixture
    def store(self, sqlite_store):
        return sqlite_store


class TestSqliteWithoutReturning(StoreTests):
    """SQLite before 3.35 (Debian 11's 3.34) has no INSERT ... RETURNING: save_inbound reads back."""

    @pytest.fixture
    def store(self, sqlite_store):
        sqlite_store.messages.returning = False
        return sqlite_store


class TestSqliteWithoutTriggers(StoreTests):
    """SQLite counting new messages the way PostgreSQL does: the UPSERT from Python after the INSERT."""

    @pytest.fixture
    def store(self, sqlite_store):
        drop_triggers(sqlite_store)
        return sqlite_store


@needs_postgres
class TestPostgres(StoreTests):
    @pytest.fixture
    def store(self):
        store = postgres_store()
        yield store
        store.close()


def test_message_json_reads_only_the_columns_pages_select():
    from wecomd.store.models import Message
    from wecomd.store.serialize import JSON_COLUMNS, to_json

    class Recorder:
        """A row with media that notes each column read."""

        def __init__(self, direction: str) -> None:
            self.direction, self.read = direction, {"direction"}

        def __getattr__(self, name):
            self.read.add(name)
            return {"fields": "{}", "media_status": "stored"}.get(name)

    inbound, outbound = Recorder("in"), Recorder("out")
    to_json(inbound)
    to_json(outbound)
    assert inbound.read | outbound.read == set(JSON_COLUMNS)  # all it needs, and nothing more selected
    assert set(JSON_COLUMNS) <= set(Message._meta.fields)
