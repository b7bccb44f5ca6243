"""Store tests on real SQLite files (and Postgres when TEST_POSTGRES_URL names one)."""
import json
import logging
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from playhouse import migrations
from playhouse.schema_diff import diff_models
from support.postgres import needs_postgres, postgres_store
from support.samples import SAMPLES

from wecomd.wecom.messages import Message, parse
from wecomd.store import MIGRATIONS_DIR, Store, StoreError, search_text
from wecomd.store.messages import inbound_row

MESSAGE_KEYS = {"id", "app", "direction", "msgtype", "event", "event_key", "from_user", "to_user",
                "agent_id", "msg_id", "create_time", "received_at", "content", "status", "error",
                "fields"}
ROW_KEYS = MESSAGE_KEYS | {"deliveries", "operator", "attempts", "media", "automation", "automatic", "rule"}
MEDIA_KEYS = {"status", "size", "type", "name", "error"}
AUTOMATION_KEYS = {"id", "rule", "action", "status", "path", "exit_code", "duration_ms", "output",
                   "error", "started_at", "finished_at"}
RUN_KEYS = AUTOMATION_KEYS | {"message_id", "app", "user", "reply_message_id", "url", "payload",
                              "attempts", "next_attempt_at"}
BIG_MSG_ID = "7357159753458634752"  # above 2**53: a JSON number would lose digits


def text(user="zhangsan", content="hello", msg_id=None, raw=None, **extra):
    fields = {"ToUserName": "ww0123", "FromUserName": user, "MsgType": "text", "Content": content}
    return Message(msgtype="text", from_user=user, to_user="ww0123", agent_id="1000002",
                   create_time=1764370000, msg_id=msg_id, content=content, fields=fields,
                   raw=raw or "<xml><Content>%s</Content></xml>" % content, **extra)


def click(user="zhangsan", key="RUN_BACKUP"):
    return Message(msgtype="event", from_user=user, to_user="ww0123", agent_id="1000002",
                   create_time=1764370001, event="click", event_key=key,
                   fields={"Event": "click", "EventKey": key})


def save(store, app="helpdesk", user="zhangsan", content="hello", key=None):
    key = key or "%s|%s|%s|%d" % (app, user, content, store.messages.count())
    return store.messages.save_inbound(app, text(user, content), key)[0]



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
        _set_received_at(store, {1: january, 2: january}, default=march)
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
            selects_after_first = _selects(caplog)
            rest = list(exported)
        assert first["content"] == "m0" and len(rest) == 4
        assert selects_after_first == 2  # the first batch and its rule runs
        assert _selects(caplog, "message") == 3  # 2 + 2 + 1 rows
        assert _selects(caplog, "rule_run") == 3  # one per batch

    def test_count(self, store):
        assert store.messages.count() == 0
        save(store)
        store.outbox.save("helpdesk", "zhangsan", "text", "hi", {})
        assert store.messages.count() == 2

    def test_migrate_twice_applies_nothing(self, store):
        assert store.migrate() == []

    def test_app_models_match_migrations(self, store):
        models = [store.models.Message, store.models.ReadMark, store.models.Conversation, store.models.RuleRun, store.models.Takeover]
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

    # ---- search

    def test_search_chinese_english_and_short_queries(self, store):
        save(store, content="我们的服务器宕机了")
        save(store, content="Deploy the STAGING server, please")
        save(store, content="服务正常")
        assert _contents(store, q="服务器") == ["我们的服务器宕机了"]
        assert _contents(store, q="宕机") == ["我们的服务器宕机了"]  # 2 characters: LIKE
        assert _contents(store, q="服务") == ["服务正常", "我们的服务器宕机了"]
        assert _contents(store, q="staging SERVER") == ["Deploy the STAGING server, please"]
        assert _contents(store, q="de") == ["Deploy the STAGING server, please"]
        assert _contents(store, q="服务器坏了") == []
        assert _contents(store, q="") == _contents(store)

    def test_search_operators_are_literal(self, store):
        for content in ('say "hi" now', "say hi now", "a*b", "axb", "this OR that", "this that",
                        "x AND y", "NEAR(a b)", "col:val", "-minus", "100%", "1000"):
            save(store, content=content)
        assert _contents(store, q='"hi"') == ['say "hi" now']
        assert _contents(store, q='say "hi') == ['say "hi" now']
        assert _contents(store, q='"') == ['say "hi" now']
        assert _contents(store, q="a*b") == ["a*b"]
        assert _contents(store, q="a*") == ["a*b"]
        assert _contents(store, q="s OR t") == ["this OR that"]
        assert _contents(store, q="x AND y") == ["x AND y"]
        assert _contents(store, q="NEAR(a") == ["NEAR(a b)"]
        assert _contents(store, q="col:val") == ["col:val"]
        assert _contents(store, q="-minus") == ["-minus"]
        assert _contents(store, q="0%") == ["100%"]

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
        assert _contents(store, msgtype="text", q="服务器已") == ["服务器已恢复"]
        assert _contents(store, app="ops", q="宕机") == ["工单25：服务器宕机", "工单15：服务器宕机",
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

    def test_search_text_follows_updates(self, store):
        row, _ = store.messages.save_inbound("helpdesk", text(content="磁盘空间不足"), "k1")
        store.messages.save_inbound("helpdesk", text(content="磁盘空间不足"), "k1")  # a retry: an upsert
        out = store.outbox.save("helpdesk", "zhangsan", "text", "正在清理磁盘", {})
        store.outbox.set_status(out["id"], "failed", error="errcode 60020")
        store.outbox.retry(out["id"])
        store.outbox.record_attempt(out["id"], "timeout", None)
        store.outbox.set_status(out["id"], "sent", wecom_msgid="m1")
        assert _contents(store, q="磁盘空间") == ["磁盘空间不足"]
        assert _contents(store, q="磁盘") == ["正在清理磁盘", "磁盘空间不足"]
        M = store.models.Message
        M.update(search_text="内存不足").where(M.id == row["id"]).execute()
        assert _contents(store, q="磁盘空间") == []
        assert [m["id"] for m in store.messages.page(q="内存不足")[0]] == [row["id"]]
        M.delete().where(M.id == row["id"]).execute()
        assert store.messages.page(q="内存不足")[0] == []

    # ---- conversations and read marks

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

    def test_conversations_take_two_queries(self, store, caplog):
        for n in range(12):
            save(store, app="helpdesk", user="user%d" % (n % 4), content="m%d" % n)
        for n in range(4):
            store.conversations.mark_read("helpdesk", "user%d" % n, n)
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            rows = store.conversations.all()
        assert len(rows) == 4 and _selects(caplog) == 2

    # ---- outbox

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
        assert _next_attempt_at(store, a["id"]) is None
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

    # ---- media

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
        assert store.media.due(later) == [] and _next_attempt_at(store, voice["id"]) is None
        assert set(store.messages.get(voice["id"])["media"]) == MEDIA_KEYS
        with pytest.raises(ValueError):
            store.media.record(voice["id"], "downloaded")
        with pytest.raises(KeyError):
            store.media.record(424242, "stored")

    # ---- export

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

    # ---- rule runs

    def test_start_run_and_finish_run(self, store):
        message = save(store, content="deploy")
        run = store.runs.start(message["id"], "helpdesk", "zhangsan", "deploy", "run")
        assert set(run) == RUN_KEYS
        assert (run["message_id"], run["app"], run["user"], run["rule"], run["action"], run["status"]) == \
            (message["id"], "helpdesk", "zhangsan", "deploy", "run", "running")
        assert (run["path"], run["finished_at"], run["attempts"], run["next_attempt_at"]) == (None, None, 0, None)
        assert _recent(run["started_at"])
        done = store.runs.finish(run["id"], "ok", exit_code=0, duration_ms=12.5, output="done\n")
        assert (done["status"], done["exit_code"], done["duration_ms"], done["output"]) == ("ok", 0, 12.5, "done\n")
        assert _recent(done["finished_at"]) and done["error"] is None and done["path"] is None
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
        assert store.runs.for_messages([message["id"]])[message["id"]] == [_public(store.runs.get(run["id"]))]

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
        assert automation[0] == _public(store.runs.get(reply["id"]))
        page, _ = store.messages.page()
        assert [m["automation"] for m in page] == [[], automation]
        assert [m["automation"] for m in store.messages.iter_export(batch=1)] == [automation, []]
        assert store.conversations.all()[0]["last_message"] == store.messages.get(second["id"])
        retried, created = store.messages.save_inbound("helpdesk", text(content="one"), _key_of(store, first["id"]))
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
            assert (_selects(caplog, "message"), _selects(caplog, "rule_run")) == (2, 2)
            caplog.clear()
            conversations = store.conversations.all()
            assert _selects(caplog) == 2
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
        assert _selects(caplog) == 1
        assert found == {a["id"]: [_public(runs[0]), _public(runs[2])], b["id"]: [],
                         c["id"]: [_public(runs[1])], 424242: []}
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
        assert _recent(stats["deploy"]["last_fired"]) and stats["paused"]["last_fired"] is None
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

    # ---- takeover

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
        assert store.takeovers.paused_until("helpdesk", "zhangsan", noon + timedelta(hours=1)) == noon + timedelta(hours=2)

    def test_conversations_show_paused_until(self, store, caplog):
        noon = datetime(2026, 11, 28, 12, 0, 0)
        for user in ("zhangsan", "lisi", "wangwu"):
            save(store, user=user)
        store.takeovers.pause("helpdesk", "zhangsan", noon + timedelta(minutes=30), "admin")
        store.takeovers.pause("helpdesk", "lisi", noon - timedelta(minutes=1), "admin")  # over
        store.takeovers.pause("ops", "wangwu", noon + timedelta(hours=1), "admin")  # another app
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            rows = store.conversations.all(now=noon)
        assert _selects(caplog) == 2
        assert {r["user"]: r["paused_until"] for r in rows} == \
            {"zhangsan": "2026-11-28T12:30:00Z", "lisi": None, "wangwu": None}
        assert [r["count"] for r in rows] == [1, 1, 1]
        later = store.conversations.all(app="helpdesk", now=noon + timedelta(hours=1))
        assert [r["paused_until"] for r in later] == [None, None, None]
        store.takeovers.pause("helpdesk", "wangwu", datetime(2999, 1, 1), "admin")
        assert {r["user"]: r["paused_until"] for r in store.conversations.all()}["wangwu"] == "2999-01-01T00:00:00Z"

    # ---- replay

    def test_iter_inbound(self, store, caplog):
        for n in range(5):
            store.messages.save_inbound("ops" if n == 3 else "helpdesk", text(content="m%d" % n, raw="<xml>%d</xml>" % n),
                               "k%d" % n)
        store.outbox.save("helpdesk", "zhangsan", "text", "out", {})
        _set_received_at(store, {1: datetime(2026, 1, 1)}, default=datetime(2026, 3, 1))
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            everything = list(store.messages.iter_inbound(batch=2))
        assert _selects(caplog) == 3
        assert everything[0] == {"id": 1, "app": "helpdesk", "raw": "<xml>0</xml>",
                                 "received_at": "2026-01-01T00:00:00Z"}
        assert [r["raw"] for r in everything] == ["<xml>%d</xml>" % n for n in range(5)]
        assert [r["id"] for r in store.messages.iter_inbound(since=datetime(2026, 2, 1))] == [2, 3, 4, 5]
        assert [r["id"] for r in store.messages.iter_inbound(since=datetime(2026, 2, 1), app="helpdesk")] == [2, 3, 5]
        assert [r["id"] for r in store.messages.iter_inbound(app="ops")] == [4]


class TestSqliteStore(StoreTests):
    @pytest.fixture
    def store(self, sqlite_store):
        return sqlite_store


class TestSqliteStoreWithoutReturning(StoreTests):
    """SQLite before 3.35 (Debian 11's 3.34) has no INSERT ... RETURNING: save_inbound reads back."""

    @pytest.fixture
    def store(self, sqlite_store):
        sqlite_store.messages.returning = False
        return sqlite_store


@needs_postgres
class TestPostgresStore(StoreTests):
    @pytest.fixture
    def store(self):
        store = postgres_store()
        yield store
        store.close()


def _set_received_at(store, by_id, default):
    # Ages rows in place, as a clock injected into the store would.
    M = store.models.Message
    M.update(received_at=default).execute()
    for message_id, value in by_id.items():
        M.update(received_at=value).where(M.id == message_id).execute()


def _from(name):
    """Every migration from `name` on, in order: what migrating a database at the one before applies."""
    names = sorted(path.stem for path in MIGRATIONS_DIR.glob("[0-9]*.py"))
    return names[names.index(name):]


def _selects(caplog, table=None):
    """SELECT statements peewee logged, all of them or those reading FROM `table`."""
    return sum(1 for r in caplog.records
               if r.name == "peewee" and str(r.msg).startswith("('SELECT")
               and (table is None or 'FROM "%s"' % table in str(r.msg)))


def _recent(iso_time):
    moment = datetime.strptime(iso_time, "%Y-%m-%dT%H:%M:%SZ")
    return abs(moment - datetime.now(timezone.utc).replace(tzinfo=None)) < timedelta(minutes=1)


def _public(run):
    """A run as it appears in Message JSON "automation"."""
    return {key: run[key] for key in AUTOMATION_KEYS}


def _key_of(store, message_id):
    M = store.models.Message
    return M.select(M.dedup_key).where(M.id == message_id).scalar()


def _contents(store, **filters):
    return [m["content"] for m in store.messages.page(limit=500, **filters)[0]]


def _next_attempt_at(store, message_id):
    M = store.models.Message
    return M.select(M.next_attempt_at).where(M.id == message_id).scalar()


# Search text, a pure function.

@pytest.mark.parametrize("msgtype, content, fields, expected", [
    ("text", "你好", {"Content": "你好"}, "你好"),
    ("text", None, {"Content": "旧行"}, "旧行"),
    ("location", None, {"Label": "人民广场", "Poiname": "广场"}, "人民广场\n广场"),
    ("link", None, {"Title": "T", "Description": "D", "Url": "https://u", "PicUrl": "p"}, "T\nD\nhttps://u"),
    ("file", None, {"FileName": "a.pdf", "MediaId": "m"}, "a.pdf"),
    ("event", None, {"Event": "scancode_push", "EventKey": "K",
                     "ScanCodeInfo": {"ScanType": "qrcode", "ScanResult": "R"}}, "scancode_push\nK\nR"),
    ("event", None, {"Event": "location_select", "EventKey": "",
                     "SendLocationInfo": {"Label": "L"}}, "location_select\nL"),
    ("image", None, {"PicUrl": "https://p", "MediaId": "m"}, None),
    ("text", "回复", {"text": {"content": "回复"}}, "回复"),  # outbound
    ("hologram", None, {"Projection": {"Color": "teal"}}, None),
    ("link", None, {"Title": {"unexpected": "object"}, "Url": ["a", "b"]}, None),
])
def test_search_text(msgtype, content, fields, expected):
    assert search_text(msgtype, content, fields) == expected


# SQLite specifics: FTS5, migration 0002.

def test_long_queries_use_the_fts_index(sqlite_store, caplog):
    save(sqlite_store, content="我们的服务器宕机了")
    # A short query that is rare among the newest messages uses the index too (0004).
    for q, uses_fts in (("服务器", True), ("SERVER down", True), ("宕机", True), ("宕机\n", False)):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            sqlite_store.messages.page(app="helpdesk", user="zhangsan", q=q)
        (sql, params), = [r.msg for r in caplog.records
                          if str(r.msg).startswith("('SELECT") and 'FROM "message"' in str(r.msg)
                          and "ORDER BY" in str(r.msg)]
        plan = " ".join(r[3] for r in sqlite_store.db.execute_sql("EXPLAIN QUERY PLAN " + sql, params))
        assert ("SCAN message_fts VIRTUAL TABLE INDEX 0:M" in plan) is uses_fts, plan
        assert "message_app_user_id" in plan


def test_short_queries_rare_through_the_index_common_by_a_scan(sqlite_store, caplog):
    """One- and two-character queries: the same answers as a LIKE scan, found through the trigrams
    that start with them when rare, by the newest-first scan when common among the newest."""
    texts = ["我们的服务器宕机了", "宕机", "机", "Hello", "a", "ab ", "x\"y", "100%", "a_b", "A*B", "火锅 了"]
    for n, content in enumerate(texts):
        save(sqlite_store, content=content)
    for _ in range(12):
        save(sqlite_store, content="好的，收到")

    def like(q):
        M = sqlite_store.models.Message
        rows = M.select(M.content).where(M.search_text.contains(q)).order_by(M.id.desc())
        return [row.content for row in rows]

    queries = ["宕机", "机", "宕", "火锅", "锅", "了", "he", "LL", "o", "a", "ab", "b ", " ", "\"", "x\"", "%",
               "0%", "_", "a_", "*", "A*", "好", "收到", "，", "无", "zz", "的服"]
    for q in queries:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            found = [m["content"] for m in sqlite_store.messages.page(q=q, limit=500)[0]]
        assert found == like(q), q
        page = [str(r.msg) for r in caplog.records if "ORDER BY" in str(r.msg) and 'FROM "message"' in str(r.msg)]
        through_index = "MATCH" in page[-1] or "WHERE 0 = 1" in page[-1]  # no trigram starts with q
        assert through_index is (q not in ("好", "收到", "，")), q  # common: a LIKE scan
    assert sqlite_store.messages.page(q="火锅", app="ops")[0] == []


def test_fts_index_stays_consistent(sqlite_store):
    row = save(sqlite_store, content="服务器宕机")
    sqlite_store.messages.save_inbound("helpdesk", text(content="x"), "k-retry")
    sqlite_store.messages.save_inbound("helpdesk", text(content="x"), "k-retry")
    out = sqlite_store.outbox.save("helpdesk", "zhangsan", "text", "收到", {})
    sqlite_store.outbox.set_status(out["id"], "failed", error="e")
    sqlite_store.outbox.retry(out["id"])
    sqlite_store.media.record(row["id"], "stored", path="p")
    M = sqlite_store.models.Message
    M.update(search_text=None).where(M.id == row["id"]).execute()
    M.delete().where(M.id == out["id"]).execute()
    # rank 1: also compare the index with the content of `message`
    sqlite_store.db.execute_sql("INSERT INTO message_fts(message_fts, rank) VALUES ('integrity-check', 1)")
    assert sqlite_store.messages.page(q="服务器")[0] == []


def test_upgrade_from_0001_keeps_rows_and_makes_them_searchable(tmp_path):
    path = tmp_path / "old.db"
    store = Store(str(path))
    assert migrations.Runner(store.db, str(MIGRATIONS_DIR)).up("0001_initial") == ["0001_initial"]
    old = [("in", "text", "我们的服务器宕机了", {"Content": "我们的服务器宕机了"}),
           ("in", "location", None, {"Label": "上海市黄浦区人民广场"}),
           ("in", "file", None, {"MediaId": "m1", "FileName": "报价单.xlsx"}),
           ("in", "event", None, {"Event": "click", "EventKey": "RUN_BACKUP"}),
           ("in", "text", "no fields", {}),
           ("out", "text", "服务器已重启", {"text": {"content": "服务器已重启"}})]
    for n, (direction, msgtype, content, fields) in enumerate(old):
        store.db.execute_sql(
            "INSERT INTO message (app, direction, dedup_key, user, msgtype, received_at, content,"
            " status, fields, raw, deliveries, operator, updated_at) VALUES"
            " ('helpdesk', ?, ?, 'zhangsan', ?, '2026-01-01 00:00:00', ?, ?, ?, '<xml/>', 2, ?,"
            " '2026-01-01 00:00:00')",
            (direction, "k%d" % n if direction == "in" else None, msgtype, content,
             "received" if direction == "in" else "sent",
             json.dumps(fields, ensure_ascii=False), "admin" if direction == "out" else None))
    store.close()

    store = Store(str(path))
    assert store.migrate() == _from("0002_dashboard")
    rows = list(store.messages.iter_export())
    assert [(m["direction"], m["msgtype"], m["content"], m["fields"]) for m in rows] == \
        [(d, t, c, f) for d, t, c, f in old]
    assert all(m["deliveries"] == 2 and m["attempts"] == 0 for m in rows)
    assert rows[-1]["operator"] == "admin" and rows[-1]["status"] == "sent"
    assert [m["media"] for m in rows] == [None, None, {"status": "pending", "size": None, "type": None,
                                                       "name": "报价单.xlsx", "error": None}, None, None, None]
    assert _contents(store, q="服务器") == ["服务器已重启", "我们的服务器宕机了"]
    assert _contents(store, q="人民广场") == [None]
    assert _contents(store, q="报价单") == [None]
    assert [m["msgtype"] for m in store.messages.page(q="run_backup")[0]] == ["event"]
    assert [r["unread"] for r in store.conversations.all()] == [5]
    new, _ = store.messages.save_inbound("helpdesk", text(content="新的服务器告警"), "k-new")
    assert new["id"] == len(old) + 1
    assert _contents(store, q="服务器")[0] == "新的服务器告警"
    store.db.execute_sql("INSERT INTO message_fts(message_fts, rank) VALUES ('integrity-check', 1)")
    store.close()


def test_0002_reverts_and_reapplies(sqlite_store):
    save(sqlite_store, content="服务器宕机")
    runner = migrations.Runner(sqlite_store.db, str(MIGRATIONS_DIR))
    assert runner.down("0002_dashboard") == _from("0002_dashboard")[::-1]
    tables = sqlite_store.db.get_tables()
    assert "message_fts" not in tables and "conversation_read" not in tables
    assert "search_text" not in {c.name for c in sqlite_store.db.get_columns("message")}
    assert sqlite_store.migrate() == _from("0002_dashboard")
    assert _contents(sqlite_store, q="服务器") == ["服务器宕机"]


def test_upgrade_from_0002_keeps_rows_and_adds_automation(tmp_path):
    path = tmp_path / "old.db"
    store = Store(str(path))
    assert migrations.Runner(store.db, str(MIGRATIONS_DIR)).up("0002_dashboard") == \
        ["0001_initial", "0002_dashboard"]
    now = datetime(2026, 11, 1, 9, 0, 0)
    for n, message in enumerate((text(content="服务器宕机了"), click(), text(user="lisi", content="hi"))):
        store.models.Message.create(**inbound_row("helpdesk", message, "k%d" % n, "<xml>r</xml>", now))
    store.models.Message.create(app="helpdesk", direction="out", user="zhangsan", msgtype="text", to_user="zhangsan",
                         received_at=now, content="已处理", status="sent", fields="{}", updated_at=now,
                         search_text="已处理", operator="admin")
    store.models.ReadMark.create(app="helpdesk", user="zhangsan", last_read_id=1)
    assert "rule_run" not in store.db.get_tables()
    store.close()

    store = Store(str(path))
    assert store.migrate() == _from("0003_automation")
    rows = list(store.messages.iter_export())
    assert [(m["id"], m["direction"], m["msgtype"], m["content"]) for m in rows] == \
        [(1, "in", "text", "服务器宕机了"), (2, "in", "event", None), (3, "in", "text", "hi"),
         (4, "out", "text", "已处理")]
    assert all(m["automation"] == [] for m in rows)
    assert rows[3]["operator"] == "admin"
    assert [(c["user"], c["unread"], c["paused_until"]) for c in store.conversations.all()] == \
        [("zhangsan", 1, None), ("lisi", 1, None)]
    assert _contents(store, q="服务器") == ["服务器宕机了"]
    assert [r["raw"] for r in store.messages.iter_inbound()] == \
        ["<xml><Content>服务器宕机了</Content></xml>", "", "<xml><Content>hi</Content></xml>"]
    run = store.runs.start(1, "helpdesk", "zhangsan", "outage", "webhook", status="pending", payload="{}")
    store.takeovers.pause("helpdesk", "zhangsan", datetime(2999, 1, 1), "admin")
    assert [r["id"] for r in store.messages.get(1)["automation"]] == [run["id"]]
    assert store.conversations.all()[0]["paused_until"] == "2999-01-01T00:00:00Z"
    models = [store.models.Message, store.models.ReadMark, store.models.Conversation, store.models.RuleRun, store.models.Takeover]
    assert not diff_models(store.db, models), str(diff_models(store.db, models))
    store.close()


def test_automation_queries_use_their_indexes(sqlite_store, caplog):
    def plan(call):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            call()
        (sql, params), = [r.msg for r in caplog.records if 'FROM "rule_run"' in str(r.msg)]
        return " ".join(r[3] for r in sqlite_store.db.execute_sql("EXPLAIN QUERY PLAN " + sql, params))

    assert "USING INDEX rulerun_message_id (message_id=?)" in plan(lambda: sqlite_store.runs.for_messages([1, 2]))
    assert "USING INDEX rulerun_action_status_next_attempt_at (action=? AND status=?" in \
        plan(lambda: sqlite_store.runs.due_webhooks(datetime(2026, 1, 1)))


def test_0003_reverts_and_reapplies(sqlite_store):
    message = save(sqlite_store, content="服务器宕机")
    sqlite_store.runs.start(message["id"], "helpdesk", "zhangsan", "r", "reply")
    runner = migrations.Runner(sqlite_store.db, str(MIGRATIONS_DIR))
    assert runner.down("0003_automation") == _from("0003_automation")[::-1]
    assert not {"rule_run", "takeover"} & set(sqlite_store.db.get_tables())
    assert sqlite_store.migrate() == _from("0003_automation")
    assert sqlite_store.messages.get(message["id"])["automation"] == []
    assert _contents(sqlite_store, q="服务器") == ["服务器宕机"]


def test_0007_marks_earlier_rule_answers_and_reverts(tmp_path):
    store = Store(str(tmp_path / "old.db"))
    assert migrations.Runner(store.db, str(MIGRATIONS_DIR)).up("0005_failures")[-1] == "0005_failures"
    for operator in ("rule:backup", "admin", None):
        store.db.execute_sql(
            "INSERT INTO message (app, direction, user, msgtype, to_user, received_at, content, status,"
            " fields, raw, deliveries, operator, updated_at) VALUES ('helpdesk', 'out', 'lisi', 'text',"
            " 'lisi', '2026-01-01 00:00:00', 'x', 'sent', '{}', '', 1, ?, '2026-01-01 00:00:00')", (operator,))
    assert "0007_automatic_replies" in store.migrate()
    rows = list(store.messages.iter_export())
    assert [(m["operator"], m["automatic"], m["rule"]) for m in rows] == \
        [("rule:backup", "api", "backup"), ("admin", None, None), (None, None, None)]
    runner = migrations.Runner(store.db, str(MIGRATIONS_DIR))
    assert runner.down("0007_automatic_replies")[-1] == "0007_automatic_replies"
    assert not {"automatic", "rule"} & {c.name for c in store.db.get_columns("message")}
    assert store.migrate()[-1] == "0007_automatic_replies"
    assert store.messages.save_answer("helpdesk", "lisi", "已收到")["id"] == 4  # the triggers survived
    assert [c["count"] for c in store.conversations.all()] == [4]
    store.close()


# SQLite specifics: the file, pragmas, query plans and failures.

def test_migrate_creates_schema_and_history(tmp_path):
    store = Store("wecomd.db", base_dir=tmp_path)
    assert store.migrate() == _from("0001_initial")
    assert store.migrate() == []
    store.close()
    conn = sqlite3.connect(tmp_path / "wecomd.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    history = [r[0] for r in conn.execute("SELECT name FROM schema_migration")]
    conn.close()
    assert {"message", "schema_migration", "conversation_read", "message_fts", "rule_run",
            "takeover"} <= tables
    assert {"message_dedup_key", "message_app_user_id", "message_received_at",
            "message_direction_status_next_attempt_at", "message_media_status", "message_msgtype",
            "conversationread_app_user", "rulerun_message_id", "rulerun_rule_started_at",
            "rulerun_action_status_next_attempt_at", "takeover_app_user"} <= indexes
    assert "message_direction_status" not in indexes  # a prefix of the outbox index
    assert history == _from("0001_initial")


def test_pragmas_on_the_live_connection(sqlite_store):
    def pragma(name):
        return sqlite_store.db.execute_sql("PRAGMA %s" % name).fetchone()[0]

    assert pragma("journal_mode") == "wal"
    assert pragma("synchronous") == 2  # FULL
    assert pragma("foreign_keys") == 1
    assert pragma("busy_timeout") == 5000


def test_saved_row_is_visible_to_another_process(sqlite_store):
    row, _ = sqlite_store.messages.save_inbound("helpdesk", text(msg_id=BIG_MSG_ID), "k1")
    assert not sqlite_store.db.in_transaction()
    script = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
              "print(json.dumps(c.execute('SELECT id, msg_id, deliveries FROM message').fetchall()))")
    out = subprocess.run([sys.executable, "-c", script, sqlite_store.name],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert json.loads(out) == [[row["id"], BIG_MSG_ID, 1]]


def test_thread_query_uses_the_conversation_index(sqlite_store):
    plan_sql = "EXPLAIN QUERY PLAN SELECT * FROM message WHERE app = ? AND user = ? ORDER BY id DESC"
    literal = " ".join(r[3] for r in sqlite_store.db.execute_sql(plan_sql, ("a", "u")))
    M = sqlite_store.models.Message
    sql, params = sqlite_store.messages._select(app="a", user="u").order_by(M.id.desc()).sql()
    generated = " ".join(r[3] for r in sqlite_store.db.execute_sql("EXPLAIN QUERY PLAN " + sql, params))
    for plan in (literal, generated):
        assert "USING INDEX message_app_user_id (app=? AND user=?)" in plan
        assert "TEMP B-TREE" not in plan


def test_relative_paths_and_urls(tmp_path):
    for url, expected in [("rel.db", tmp_path / "rel.db"),
                          ("sqlite:///url.db", tmp_path / "url.db"),
                          ("sqlite:///" + str(tmp_path / "abs.db"), tmp_path / "abs.db")]:
        store = Store(url, base_dir=tmp_path)
        store.migrate()
        store.close()
        assert store.name == str(expected) and expected.is_file()


def test_database_path_that_is_a_directory_fails(tmp_path):
    (tmp_path / "wecomd.db").mkdir()
    store = Store("wecomd.db", base_dir=tmp_path)
    with pytest.raises(StoreError, match="could not apply migrations"):
        store.migrate()
    with pytest.raises(StoreError, match="wecomd.db"):
        store.health.ping()


def test_database_in_missing_directory_fails(tmp_path):
    store = Store(str(tmp_path / "missing" / "wecomd.db"))
    with pytest.raises(StoreError):
        store.messages.save_inbound("helpdesk", text(), "k1")


def test_read_only_connection_fails_and_keeps_nothing(sqlite_store):
    # Root ignores file modes, so make SQLite itself refuse writes.
    save(sqlite_store, content="before")
    sqlite_store.db.execute_sql("PRAGMA query_only = 1")
    with pytest.raises(StoreError, match="readonly"):
        sqlite_store.messages.save_inbound("helpdesk", text(), "k-new")
    with pytest.raises(StoreError):
        sqlite_store.outbox.save("helpdesk", "zhangsan", "text", "hi", {})
    assert sqlite_store.messages.count() == 1
    assert not sqlite_store.db.in_transaction()


def test_ping_before_migrate_fails(tmp_path):
    store = Store("wecomd.db", base_dir=tmp_path)
    with pytest.raises(StoreError, match="no such table"):
        store.health.ping()
    store.migrate()
    store.health.ping()


def test_unknown_url_scheme_fails():
    with pytest.raises(StoreError, match="unsupported scheme"):
        Store("nosuchdb://host/name")
