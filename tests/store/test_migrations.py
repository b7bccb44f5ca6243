"""Migrations (wecomd/store/migrations): a new database gets the whole schema, an existing database of
any earlier version opens and migrates with its rows kept (and made searchable, counted in their
conversations, marked), and each migration reverts and applies again."""
from __future__ import annotations

import json
import random
import sqlite3
from datetime import datetime, timedelta

from playhouse import migrations
from playhouse.schema_diff import diff_models

from support.store import NOW, TRIGGERS, assert_same, click, contents_of, grouped, migrations_from, receive, save, \
    summary, text
from wecomd.store import MIGRATIONS_DIR, Store
from wecomd.store.messages import inbound_row

def test_migrate_creates_schema_and_history(tmp_path):
    store = Store("wecomd.db", base_dir=tmp_path)
    assert store.migrate() == migrations_from("0001_initial")
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
    assert history == migrations_from("0001_initial")


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
    assert store.migrate() == migrations_from("0002_dashboard")
    rows = list(store.messages.iter_export())
    assert [(m["direction"], m["msgtype"], m["content"], m["fields"]) for m in rows] == \
        [(d, t, c, f) for d, t, c, f in old]
    assert all(m["deliveries"] == 2 and m["attempts"] == 0 for m in rows)
    assert rows[-1]["operator"] == "admin" and rows[-1]["status"] == "sent"
    assert [m["media"] for m in rows] == [None, None, {"status": "pending", "size": None, "type": None,
                                                       "name": "报价单.xlsx", "error": None}, None, None, None]
    assert contents_of(store, q="服务器") == ["服务器已重启", "我们的服务器宕机了"]
    assert contents_of(store, q="人民广场") == [None]
    assert contents_of(store, q="报价单") == [None]
    assert [m["msgtype"] for m in store.messages.page(q="run_backup")[0]] == ["event"]
    assert [r["unread"] for r in store.conversations.all()] == [5]
    new, _ = store.messages.save_inbound("helpdesk", text(content="新的服务器告警"), "k-new")
    assert new["id"] == len(old) + 1
    assert contents_of(store, q="服务器")[0] == "新的服务器告警"
    store.db.execute_sql("INSERT INTO message_fts(message_fts, rank) VALUES ('integrity-check', 1)")
    store.close()


def test_0002_reverts_and_reapplies(sqlite_store):
    save(sqlite_store, content="服务器宕机")
    runner = migrations.Runner(sqlite_store.db, str(MIGRATIONS_DIR))
    assert runner.down("0002_dashboard") == migrations_from("0002_dashboard")[::-1]
    tables = sqlite_store.db.get_tables()
    assert "message_fts" not in tables and "conversation_read" not in tables
    assert "search_text" not in {c.name for c in sqlite_store.db.get_columns("message")}
    assert sqlite_store.migrate() == migrations_from("0002_dashboard")
    assert contents_of(sqlite_store, q="服务器") == ["服务器宕机"]


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
    assert store.migrate() == migrations_from("0003_automation")
    rows = list(store.messages.iter_export())
    assert [(m["id"], m["direction"], m["msgtype"], m["content"]) for m in rows] == \
        [(1, "in", "text", "服务器宕机了"), (2, "in", "event", None), (3, "in", "text", "hi"),
         (4, "out", "text", "已处理")]
    assert all(m["automation"] == [] for m in rows)
    assert rows[3]["operator"] == "admin"
    assert [(c["user"], c["unread"], c["paused_until"]) for c in store.conversations.all()] == \
        [("zhangsan", 1, None), ("lisi", 1, None)]
    assert contents_of(store, q="服务器") == ["服务器宕机了"]
    assert [r["raw"] for r in store.messages.iter_inbound()] == \
        ["<xml><Content>服务器宕机了</Content></xml>", "", "<xml><Content>hi</Content></xml>"]
    run = store.runs.start(1, "helpdesk", "zhangsan", "outage", "webhook", status="pending", payload="{}")
    store.takeovers.pause("helpdesk", "zhangsan", datetime(2999, 1, 1), "admin")
    assert [r["id"] for r in store.messages.get(1)["automation"]] == [run["id"]]
    assert store.conversations.all()[0]["paused_until"] == "2999-01-01T00:00:00Z"
    models = store.models.all()
    assert not diff_models(store.db, models), str(diff_models(store.db, models))
    store.close()


def test_0003_reverts_and_reapplies(sqlite_store):
    message = save(sqlite_store, content="服务器宕机")
    sqlite_store.runs.start(message["id"], "helpdesk", "zhangsan", "r", "reply")
    runner = migrations.Runner(sqlite_store.db, str(MIGRATIONS_DIR))
    assert runner.down("0003_automation") == migrations_from("0003_automation")[::-1]
    assert not {"rule_run", "takeover"} & set(sqlite_store.db.get_tables())
    assert sqlite_store.migrate() == migrations_from("0003_automation")
    assert sqlite_store.messages.get(message["id"])["automation"] == []
    assert contents_of(sqlite_store, q="服务器") == ["服务器宕机"]


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
    assert store.migrate() == migrations_from("0007_automatic_replies")
    assert store.messages.save_answer("helpdesk", "lisi", "已收到")["id"] == 4  # the triggers survived
    assert [c["count"] for c in store.conversations.all()] == [4]
    store.close()


def _at_0003(path):
    store = Store(str(path))
    assert migrations.Runner(store.db, str(MIGRATIONS_DIR)).up("0003_automation")[-1] == "0003_automation"
    return store


def test_0004_backfills_the_conversations_of_an_existing_database(tmp_path):
    path = tmp_path / "old.db"
    store = _at_0003(path)
    assert "conversation" not in store.db.get_tables()
    rng = random.Random(3)
    M = store.models.Message
    for n in range(400):
        app, user = rng.choice(("helpdesk", "ops", "hr")), rng.choice(["u%d" % i for i in range(25)] + [None])
        if user is not None and rng.random() < 0.3:
            M.create(app=app, direction="out", user=user, msgtype="text", to_user=user, received_at=NOW,
                     content="reply", status="sent", fields="{}", updated_at=NOW, search_text="reply",
                     operator="admin")
        else:
            M.create(**inbound_row(app, text(user, "m%d" % n), "k%d" % n, None, NOW))
    for n in range(10):
        store.models.ReadMark.insert(app="helpdesk", user="u%d" % n, last_read_id=rng.randrange(400)) \
            .on_conflict_ignore().execute()
    store.models.Takeover.create(app="ops", user="u1", until=NOW + timedelta(hours=1), operator="admin")
    expected = grouped(store)
    store.close()

    store = Store(str(path))
    applied = store.migrate()
    assert applied[0] == "0004_conversations"
    assert summary(store) == expected
    assert summary(store, "hr") == grouped(store, "hr")
    # ... and it is kept from then on, by the triggers the migration added.
    receive(store, app="hr", user="u3")
    store.outbox.save("ops", "u1", "text", "好的", {})
    assert_same(store)
    store.close()


def test_0004_reverts_and_reapplies(tmp_path):
    store = Store("wecomd.db", base_dir=tmp_path)
    store.migrate()
    receive(store, content="one")
    receive(store, user="lisi", content="two")
    before = store.conversations.all(now=NOW)
    runner = migrations.Runner(store.db, str(MIGRATIONS_DIR))
    reverted = runner.down("0004_conversations")
    assert reverted[-1] == "0004_conversations"
    assert "conversation" not in store.db.get_tables()
    triggers = {r[0] for r in store.db.execute_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert not triggers & set(TRIGGERS)
    receive(store, content="three")  # stored while the table is gone: the backfill counts it
    assert store.migrate() == reverted[::-1]
    after = store.conversations.all(now=NOW)
    assert [(r["user"], r["count"]) for r in after] == [("zhangsan", 2), ("lisi", 1)]
    assert after[1] == before[0]
    assert_same(store)
    store.close()


def test_0015_indexes_feedback_id_and_a_feedback_finds_its_stream_by_it(sqlite_store):
    """A feedback_event's stream is found through bot_stream.feedback_id's index, never by scanning
    every stream; the migration reverts and applies again."""
    streams, now = sqlite_store.bot_streams, datetime(2026, 11, 1, 9, 0, 0)
    for n in range(300):
        streams.start("stream-%03d" % n, "assistant", n + 1, now, now + timedelta(minutes=6), content="answer %d" % n,
                      feedback_id="stream-%03d" % n if n % 2 else None)
    plan = " ".join(r[3] for r in sqlite_store.db.execute_sql(
        'EXPLAIN QUERY PLAN UPDATE "bot_stream" SET "feedback" = ? WHERE "feedback_id" = ?', ("{}", "stream-123")))
    assert "USING INDEX botstream_feedback_id" in plan, plan
    rated = streams.feedback("stream-123", {"type": 2, "inaccurate_reason_list": [2]}, now)
    assert (rated["stream_id"], rated["content"], rated["feedback"]["type"]) == ("stream-123", "answer 123", 2)
    assert streams.feedback("stream-124", {"type": 1}, now) is None  # its first frame carried no feedback id
    assert [s["stream_id"] for s in map(streams.get, ("stream-121", "stream-123", "stream-125")) if s["feedback"]] \
        == ["stream-123"]

    assert_index_migration_reverts_and_applies(sqlite_store, "0015_bot_feedback_index", "bot_stream",
                                               "botstream_feedback_id")


def test_0017_an_apps_newest_messages_come_from_an_index_not_a_sort(sqlite_store):
    """The console's list filtered by app reads the app's newest rows from (app, id), never every row
    of the app sorted; the migration reverts and applies again."""
    for n in range(200):
        save(sqlite_store, app="helpdesk" if n % 3 else "kefu", user="u%d" % (n % 7), content="m%d" % n)
    plan = " ".join(r[3] for r in sqlite_store.db.execute_sql(
        'EXPLAIN QUERY PLAN SELECT * FROM "message" WHERE "app" = ? ORDER BY "id" DESC LIMIT 51', ("kefu",)))
    assert "USING INDEX message_app_id" in plan and "TEMP B-TREE" not in plan, plan
    rows, cursor = sqlite_store.messages.page(app="kefu", limit=5)
    assert [r["content"] for r in rows] == ["m198", "m195", "m192", "m189", "m186"] and cursor is not None

    assert_index_migration_reverts_and_applies(sqlite_store, "0017_message_app_index", "message", "message_app_id")


def assert_index_migration_reverts_and_applies(store, migration: str, table: str, index: str) -> None:
    """`migration`, which adds `index` to `table`, reverted (and those after it) and applied again; the
    schema then matches the models."""
    runner = migrations.Runner(store.db, str(MIGRATIONS_DIR))
    assert runner.down(migration) == migrations_from(migration)[::-1]
    assert index not in {i.name for i in store.db.get_indexes(table)}
    assert store.migrate() == migrations_from(migration)
    assert index in {i.name for i in store.db.get_indexes(table)}
    models = store.models.all()
    assert not diff_models(store.db, models), str(diff_models(store.db, models))
