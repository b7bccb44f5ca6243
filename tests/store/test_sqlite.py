"""SQLite specifics: the file and its pragmas (durability: synchronous=FULL), query plans, and the
failures of opening, reading and writing it."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import datetime

import pytest

from support.store import BIG_MSG_ID, save, text
from wecomd.store import Store, StoreError

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
