"""Store tests on real SQLite files (and Postgres when WECOMD_TEST_POSTGRES_URL names one)."""
import json
import logging
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from playhouse.schema_diff import diff_models

from wecomd.messages import Message
from wecomd.store import Store, StoreError

MESSAGE_KEYS = {"id", "app", "direction", "msgtype", "event", "event_key", "from_user", "to_user",
                "agent_id", "msg_id", "create_time", "received_at", "content", "status", "error",
                "fields"}
ROW_KEYS = MESSAGE_KEYS | {"deliveries"}
BIG_MSG_ID = "7357159753458634752"  # above 2**53: a JSON number would lose digits
PG_URL = os.environ.get("WECOMD_TEST_POSTGRES_URL")


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
    key = key or "%s|%s|%s|%d" % (app, user, content, store.count())
    return store.save_inbound(app, text(user, content), key)[0]


@pytest.fixture
def sqlite_store(tmp_path):
    store = Store("wecomd.db", base_dir=tmp_path)
    store.migrate()
    yield store
    store.close()


class StoreTests:
    """Behaviour every database backend must show; subclasses provide the `store` fixture."""

    def test_save_inbound_new_and_retried(self, store):
        row, created = store.save_inbound("helpdesk", text(msg_id=BIG_MSG_ID), "k1",
                                          reply="<xml>A</xml>")
        assert created is True
        assert row["deliveries"] == 1 and row["reply"] == "<xml>A</xml>"
        for attempt in range(3):
            again, created = store.save_inbound("helpdesk", text(msg_id=BIG_MSG_ID), "k1",
                                                reply="<xml>B%d</xml>" % attempt)
            assert created is False
        assert again["id"] == row["id"]
        assert again["deliveries"] == 4
        assert again["reply"] == "<xml>A</xml>"
        assert store.count() == 1
        assert store.get(row["id"])["deliveries"] == 4

    def test_reply_saved_by_a_retry_when_first_had_none(self, store):
        store.save_inbound("helpdesk", click(), "e1")
        row, created = store.save_inbound("helpdesk", click(), "e1", reply="<xml>late</xml>")
        assert (created, row["reply"], row["deliveries"]) == (False, "<xml>late</xml>", 2)

    def test_distinct_keys_make_distinct_rows(self, store):
        first, _ = store.save_inbound("helpdesk", text(), "k1")
        second, created = store.save_inbound("helpdesk", text(), "k2")
        assert created is True
        assert second["id"] > first["id"]
        assert store.count() == 2

    def test_empty_dedup_key_is_refused(self, store):
        with pytest.raises(ValueError):
            store.save_inbound("helpdesk", text(), "")

    def test_message_json_shape_and_round_trip(self, store):
        fields = {"MsgType": "text", "Content": "你好，世界",
                  "PicList": {"item": [{"PicMd5Sum": "a1"}, {"PicMd5Sum": "b2"}]},
                  "ScanCodeInfo": {"ScanType": "qrcode", "ScanResult": "扫码结果"}}
        message = text(content="你好，世界", msg_id=BIG_MSG_ID, raw="<xml>secret raw</xml>")
        message.fields = fields
        saved, _ = store.save_inbound("helpdesk", message, "k1", reply="<xml/>")
        assert set(saved) == ROW_KEYS | {"reply"}
        got = store.get(saved["id"])
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
        assert store.get_raw(saved["id"]) == "<xml>secret raw</xml>"

    def test_event_columns(self, store):
        row, _ = store.save_inbound("helpdesk", click(key="RUN_BACKUP"), "e1")
        assert (row["msgtype"], row["event"], row["event_key"]) == ("event", "click", "RUN_BACKUP")
        assert row["msg_id"] is None and row["content"] is None

    def test_get_missing_is_none(self, store):
        assert store.get(424242) is None
        assert store.get_raw(424242) is None

    def test_save_outbound(self, store):
        row = store.save_outbound("helpdesk", "zhangsan", "text", "收到", {"text": {"content": "收到"}},
                                  operator="admin")
        assert set(row) == ROW_KEYS
        assert (row["direction"], row["status"], row["from_user"], row["to_user"]) == \
            ("out", "pending", None, "zhangsan")
        assert row["fields"] == {"text": {"content": "收到"}}
        assert row["content"] == "收到" and row["msg_id"] is None
        assert store.get(row["id"]) == row

    def test_set_status_transitions(self, store):
        row = store.save_outbound("helpdesk", "zhangsan", "text", "hi", {})
        failed = store.set_status(row["id"], "failed", error="errcode 81013: user invalid")
        assert (failed["status"], failed["error"]) == ("failed", "errcode 81013: user invalid")
        sent = store.set_status(row["id"], "sent", wecom_msgid="msgid-abc")
        assert (sent["status"], sent["error"], sent["msg_id"]) == ("sent", None, "msgid-abc")
        assert store.get(row["id"]) == sent

    def test_set_status_refuses_bad_input(self, store):
        inbound, _ = store.save_inbound("helpdesk", text(), "k1")
        outbound = store.save_outbound("helpdesk", "zhangsan", "text", "hi", {})
        with pytest.raises(KeyError):
            store.set_status(424242, "sent")
        with pytest.raises(KeyError):
            store.set_status(inbound["id"], "sent")
        with pytest.raises(ValueError):
            store.set_status(outbound["id"], "delivered")
        assert store.get(inbound["id"])["status"] == "received"

    def test_messages_filters(self, store):
        save(store, app="helpdesk", user="zhangsan", content="100% sure")
        save(store, app="helpdesk", user="zhangsan", content="1000 sure")
        save(store, app="helpdesk", user="lisi", content="a_b")
        save(store, app="helpdesk", user="lisi", content="axb HELLO")
        save(store, app="ops", user="zhangsan", content="你好世界")
        store.save_inbound("ops", click("wangwu"), "e1")

        def contents(**filters):
            return [m["content"] for m in store.messages(**filters)[0]]

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
            page, cursor = store.messages(before=cursor, limit=50)
            sizes.append(len(page))
            seen.extend(m["id"] for m in page)
            if cursor is None:
                break
            assert cursor == page[-1]["id"]
        assert sizes == [50, 50, 20]
        assert seen == sorted(seen, reverse=True)
        assert len(set(seen)) == 120 and store.count() == 120

    def test_messages_exact_page_has_no_next(self, store):
        for n in range(50):
            save(store, content="m%d" % n)
        page, cursor = store.messages(limit=50)
        assert len(page) == 50 and cursor is None
        with pytest.raises(ValueError):
            store.messages(limit=0)

    def test_conversations(self, store):
        save(store, app="helpdesk", user="zhangsan", content="one")
        save(store, app="helpdesk", user="lisi", content="two")
        save(store, app="ops", user="zhangsan", content="three")
        save(store, app="helpdesk", user="zhangsan", content="four")
        reply = store.save_outbound("helpdesk", "zhangsan", "text", "five", {})
        rows = store.conversations()
        assert [(r["app"], r["user"], r["count"]) for r in rows] == [
            ("helpdesk", "zhangsan", 3), ("ops", "zhangsan", 1), ("helpdesk", "lisi", 1)]
        assert rows[0]["last_id"] == reply["id"]
        assert rows[0]["last_message"] == store.get(reply["id"])
        assert rows[2]["last_message"]["content"] == "two"
        assert [r["user"] for r in store.conversations(app="helpdesk")] == ["zhangsan", "lisi"]
        assert store.conversations(app="nobody") == []

    def test_iter_export_order_app_and_since(self, store):
        for n in range(5):
            save(store, app="helpdesk" if n != 2 else "ops", content="m%d" % n)
        january, march = datetime(2026, 1, 1), datetime(2026, 3, 1)
        _set_received_at(store, {1: january, 2: january}, default=march)
        everything = list(store.iter_export(batch=2))
        assert [m["content"] for m in everything] == ["m0", "m1", "m2", "m3", "m4"]
        since = datetime(2026, 2, 1)
        assert [m["id"] for m in store.iter_export(since=since)] == [3, 4, 5]
        aware = datetime(2026, 2, 1, 8, 0, tzinfo=timezone(timedelta(hours=8)))
        assert [m["id"] for m in store.iter_export(since=aware, batch=1)] == [3, 4, 5]
        assert [m["id"] for m in store.iter_export(app="helpdesk", since=since)] == [4, 5]
        assert everything[0]["received_at"] == "2026-01-01T00:00:00Z"

    def test_iter_export_reads_in_batches(self, store, caplog):
        for n in range(5):
            save(store, content="m%d" % n)
        with caplog.at_level(logging.DEBUG, logger="peewee"):
            exported = store.iter_export(batch=2)
            first = next(exported)
            selects_after_first = _selects(caplog)
            rest = list(exported)
        assert first["content"] == "m0" and len(rest) == 4
        assert selects_after_first == 1
        assert _selects(caplog) == 3  # 2 + 2 + 1 rows

    def test_count(self, store):
        assert store.count() == 0
        save(store)
        store.save_outbound("helpdesk", "zhangsan", "text", "hi", {})
        assert store.count() == 2

    def test_migrate_twice_applies_nothing(self, store):
        assert store.migrate() == []

    def test_app_models_match_migrations(self, store):
        assert not diff_models(store.db, [store.Message]), str(diff_models(store.db, [store.Message]))

    def test_used_from_a_single_worker_thread(self, store):
        store.close()  # the fixture's connection belongs to the test thread
        with ThreadPoolExecutor(max_workers=1) as db_thread:
            assert db_thread.submit(store.migrate).result() == []
            row, created = db_thread.submit(store.save_inbound, "helpdesk", text(), "k1").result()
            assert created is True
            page, cursor = db_thread.submit(store.messages, app="helpdesk").result()
            assert [m["id"] for m in page] == [row["id"]] and cursor is None
            db_thread.submit(store.ping).result()
            db_thread.submit(store.close).result()
        assert store.db.is_closed()


class TestSqliteStore(StoreTests):
    @pytest.fixture
    def store(self, sqlite_store):
        return sqlite_store


@pytest.mark.skipif(not PG_URL, reason="set WECOMD_TEST_POSTGRES_URL to test against Postgres")
class TestPostgresStore(StoreTests):
    @pytest.fixture
    def store(self):
        store = Store(PG_URL)
        store.db.execute_sql("DROP TABLE IF EXISTS message, schema_migration")
        store.migrate()
        yield store
        store.close()


def _set_received_at(store, by_id, default):
    # Ages rows in place, as a clock injected into the store would.
    M = store.Message
    M.update(received_at=default).execute()
    for message_id, value in by_id.items():
        M.update(received_at=value).where(M.id == message_id).execute()


def _selects(caplog):
    return sum(1 for r in caplog.records
               if r.name == "peewee" and str(r.msg).startswith("('SELECT"))


# SQLite specifics: the file, pragmas, query plans and failures.

def test_migrate_creates_schema_and_history(tmp_path):
    store = Store("wecomd.db", base_dir=tmp_path)
    assert store.migrate() == ["0001_initial"]
    assert store.migrate() == []
    store.close()
    conn = sqlite3.connect(tmp_path / "wecomd.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    history = [r[0] for r in conn.execute("SELECT name FROM schema_migration")]
    conn.close()
    assert {"message", "schema_migration"} <= tables
    assert {"message_dedup_key", "message_app_user_id", "message_received_at",
            "message_direction_status", "message_msgtype"} <= indexes
    assert history == ["0001_initial"]


def test_pragmas_on_the_live_connection(sqlite_store):
    def pragma(name):
        return sqlite_store.db.execute_sql("PRAGMA %s" % name).fetchone()[0]

    assert pragma("journal_mode") == "wal"
    assert pragma("synchronous") == 2  # FULL
    assert pragma("foreign_keys") == 1
    assert pragma("busy_timeout") == 5000


def test_saved_row_is_visible_to_another_process(sqlite_store):
    row, _ = sqlite_store.save_inbound("helpdesk", text(msg_id=BIG_MSG_ID), "k1")
    assert not sqlite_store.db.in_transaction()
    script = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
              "print(json.dumps(c.execute('SELECT id, msg_id, deliveries FROM message').fetchall()))")
    out = subprocess.run([sys.executable, "-c", script, sqlite_store.name],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert json.loads(out) == [[row["id"], BIG_MSG_ID, 1]]


def test_thread_query_uses_the_conversation_index(sqlite_store):
    plan_sql = "EXPLAIN QUERY PLAN SELECT * FROM message WHERE app = ? AND user = ? ORDER BY id DESC"
    literal = " ".join(r[3] for r in sqlite_store.db.execute_sql(plan_sql, ("a", "u")))
    sql, params = sqlite_store._select(app="a", user="u").sql()
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
        store.ping()


def test_database_in_missing_directory_fails(tmp_path):
    store = Store(str(tmp_path / "missing" / "wecomd.db"))
    with pytest.raises(StoreError):
        store.save_inbound("helpdesk", text(), "k1")


def test_read_only_connection_fails_and_keeps_nothing(sqlite_store):
    # Root ignores file modes, so make SQLite itself refuse writes.
    save(sqlite_store, content="before")
    sqlite_store.db.execute_sql("PRAGMA query_only = 1")
    with pytest.raises(StoreError, match="readonly"):
        sqlite_store.save_inbound("helpdesk", text(), "k-new")
    with pytest.raises(StoreError):
        sqlite_store.save_outbound("helpdesk", "zhangsan", "text", "hi", {})
    assert sqlite_store.count() == 1
    assert not sqlite_store.db.in_transaction()


def test_ping_before_migrate_fails(tmp_path):
    store = Store("wecomd.db", base_dir=tmp_path)
    with pytest.raises(StoreError, match="no such table"):
        store.ping()
    store.migrate()
    store.ping()


def test_unknown_url_scheme_fails():
    with pytest.raises(StoreError, match="unsupported scheme"):
        Store("nosuchdb://host/name")
