"""The conversation summary (migration 0004, store_conversations) and /api/conversations paging.

The reference throughout is the query the summary replaced: every message grouped by (app, user),
joined to the read marks and takeovers. Whatever happens to the messages (new ones, retried
deliveries, replies, read marks, takeovers, pruning, a migration of an old database), the summary
must give exactly its rows.
"""
from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

import pytest
from peewee import JOIN, Case, SqliteDatabase, fn
from playhouse import migrations

from support.base import WecomdTestCase
from support.peer import CORP_ID
from support.postgres import needs_postgres, postgres_store
from wecomd.wecom import samples
from wecomd.wecom.messages import Message
from wecomd.store import MIGRATIONS_DIR, Store
from wecomd.store.messages import inbound_row

NOW = datetime(2026, 11, 28, 12, 0, 0)
OLD = NOW - timedelta(days=40)
CUTOFF = NOW - timedelta(days=30)
TRIGGERS = ("conversation_tally", "conversation_tally_no_user")


def grouped(store, app=None, now=NOW):
    """The conversations as the pre-0004 query computed them: a GROUP BY over every message."""
    M, R, T = store.models.Message, store.models.ReadMark, store.models.Takeover
    last_id = fn.MAX(M.id)
    after_mark = (M.direction == "in") & (M.id > fn.COALESCE(R.last_read_id, 0))
    paused = (T.app == M.app) & (T.user == M.user) & (T.until > now)
    query = (M.select(M.app, M.user, last_id.alias("last_id"), fn.COUNT(M.id).alias("count"),
                      fn.COUNT(Case(None, [(after_mark, 1)])).alias("unread"),
                      fn.MAX(T.until).alias("paused_until"))
             .join(R, JOIN.LEFT_OUTER, on=(R.app == M.app) & (R.user == M.user))
             .join(T, JOIN.LEFT_OUTER, on=paused, src=M)
             .group_by(M.app, M.user).order_by(last_id.desc()))
    if app:
        query = query.where(M.app == app)
    return [dict(row, paused_until=T.until.python_value(row["paused_until"]) and
                 T.until.python_value(row["paused_until"]).strftime("%Y-%m-%dT%H:%M:%SZ"))
            for row in query.dicts()]


def summary(store, app=None, now=NOW):
    """The same columns from Store.conversations (the summary table)."""
    keys = ("app", "user", "last_id", "count", "unread", "paused_until")
    return [{k: row[k] for k in keys} for row in store.conversations.all(app=app, now=now)]


def assert_same(store):
    for app in (None, "helpdesk", "ops"):
        assert summary(store, app) == grouped(store, app)
    for row in store.conversations.all(now=NOW):
        assert row["last_message"] == store.messages.get(row["last_id"])


def inbound(user="zhangsan", content="hello", msg_id=None, **extra):
    fields = {"ToUserName": "ww0123", "MsgType": "text", "Content": content}
    if user is not None:
        fields["FromUserName"] = user
    return Message(msgtype="text", from_user=user, to_user="ww0123", agent_id="1000002",
                   create_time=1764370000, msg_id=msg_id, content=content, fields=fields,
                   raw="<xml><Content>%s</Content></xml>" % content, **extra)


def receive(store, app="helpdesk", user="zhangsan", content="hello", key=None):
    key = key or "%s|%s|%s|%d" % (app, user, content, store.messages.count())
    return store.messages.save_inbound(app, inbound(user, content), key)


def age(store, message_id, at):
    M = store.models.Message
    M.update(received_at=at).where(M.id == message_id).execute()


def _python_tally(store):
    """Make a SQLite store count new messages the way it does on PostgreSQL: no triggers, one
    precompiled UPSERT from Python after each INSERT."""
    for name in TRIGGERS:
        store.db.execute_sql("DROP TRIGGER %s" % name)
    store.conversations.counted_by_triggers = False


@pytest.fixture(params=["trigger", "python", pytest.param("postgres", marks=needs_postgres)])
def store(request, tmp_path):
    if request.param == "postgres":
        store = postgres_store()
    else:
        store = Store("wecomd.db", base_dir=tmp_path)
        store.migrate()
    if request.param == "python":
        _python_tally(store)
    yield store
    store.close()


# ------------------------------------------------------------------ keeping the summary right

def test_inbound_outbound_and_retried_deliveries(store):
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


def test_read_marks_and_replies(store):
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


def test_takeover_shows_and_ends(store):
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


def test_messages_without_a_sender_form_one_conversation(store):
    receive(store, user=None, content="系统通知 1")
    receive(store, user="zhangsan")
    receive(store, user=None, content="系统通知 2")
    receive(store, app="ops", user=None, content="系统通知 3")
    rows = store.conversations.all()
    assert [(r["app"], r["user"], r["count"], r["unread"]) for r in rows] == [
        ("ops", None, 1, 1), ("helpdesk", None, 2, 2), ("helpdesk", "zhangsan", 1, 1)]
    assert_same(store)


def test_pruning_shrinks_and_deletes_conversations(store):
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


def test_newest_message_pruned_leaves_the_previous_one_last(store):
    first = receive(store, content="first")[0]
    last = receive(store, content="last")[0]
    age(store, last["id"], OLD)
    age(store, first["id"], NOW)
    store.maintenance.prune(CUTOFF)
    [row] = store.conversations.all()
    assert (row["last_id"], row["count"], row["last_message"]["content"]) == (first["id"], 1, "first")
    assert_same(store)


def test_random_histories_match_the_group_by(store):
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
            row = store.messages.save_inbound(app, inbound(user, "m%d" % step), key)[0]
            age(store, row["id"], rng.choice((OLD, NOW)))
        elif action < 0.55 and keys:
            app, user, key = rng.choice(keys)  # a retried delivery (maybe of a pruned message)
            store.messages.save_inbound(app, inbound(user, "again"), key)
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


def test_rebuild_gives_the_same_rows(store):
    for n in range(8):
        receive(store, user="u%d" % (n % 3), app=("helpdesk", "ops")[n % 2])
    store.conversations.mark_read("helpdesk", "u0", 3)
    before = store.conversations.all(now=NOW)
    store.models.Conversation.delete().execute()
    assert store.conversations.rebuild() == len(before)
    assert store.conversations.all(now=NOW) == before


# ------------------------------------------------------------------ the migration

def _at_0003(path):
    store = Store(str(path))
    assert migrations.Runner(store.db, str(MIGRATIONS_DIR)).up("0003_automation")[-1] == "0003_automation"
    return store


def test_migration_backfills_an_existing_database(tmp_path):
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
            M.create(**inbound_row(app, inbound(user, "m%d" % n), "k%d" % n, None, NOW))
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


def test_migration_reverts_and_reapplies(tmp_path):
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


# ------------------------------------------------------------------ reading: pages and plans

def test_pages_follow_the_cursor(store):
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


def test_a_page_is_two_queries(store, caplog):
    for n in range(12):
        receive(store, user="u%d" % (n % 5))
        store.runs.start(n + 1, "helpdesk", "u%d" % (n % 5), "greet", "reply")
    with caplog.at_level(logging.DEBUG, logger="peewee"):
        page, _ = store.conversations.page(limit=3)
    selects = [r for r in caplog.records if r.name == "peewee" and str(r.msg).startswith("('SELECT")]
    assert len(selects) == 2
    assert all(len(row["last_message"]["automation"]) == 1 for row in page)


def test_the_list_is_read_in_index_order(store):
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


# ------------------------------------------------------------------ over HTTP

def msg(user="zhangsan", content="hello", **kw) -> str:
    return samples.build("text", corp_id=CORP_ID, agent_id="1000002", from_user=user, content=content, **kw)


class ConversationsApiTest(WecomdTestCase):
    def test_paging_over_http(self):
        for n in range(5):
            self.assertEqual(self.callback(msg(user="u%d" % n, content="m%d" % n)).code, 200)
        retried = msg(user="u1", content="again", msg_id="7000000000000000001")
        for _ in range(3):  # WeCom retries: one message
            self.assertEqual(self.callback(retried).code, 200)
        status, data = self.api("/api/conversations", headers=self.bearer(), limit="2")
        self.assertEqual(status, 200)
        self.assertEqual([c["user"] for c in data["conversations"]], ["u1", "u4"])
        self.assertEqual(data["conversations"][0]["count"], 4)  # two messages, each with the app's reply
        self.assertEqual(data["next"], data["conversations"][-1]["last_id"])
        users, cursor = [], None
        while True:
            params = {"limit": "2"} if cursor is None else {"limit": "2", "before": str(cursor)}
            status, data = self.api("/api/conversations", headers=self.bearer(), **params)
            self.assertEqual(status, 200)
            users += [c["user"] for c in data["conversations"]]
            cursor = data["next"]
            if cursor is None:
                break
        self.assertEqual(users, ["u1", "u4", "u3", "u2", "u0"])
        # The default page holds them all; unknown apps have none; a bad cursor is refused.
        status, data = self.api("/api/conversations", headers=self.bearer())
        self.assertEqual((len(data["conversations"]), data["next"]), (5, None))
        self.assertEqual(self.api("/api/conversations", headers=self.bearer(), app="quiet")[1],
                         {"conversations": [], "next": None})
        self.assertEqual(self.api("/api/conversations", headers=self.bearer(), before="x")[0], 400)
        self.assertEqual(self.api("/api/conversations", headers=self.bearer(), limit="-1")[0], 400)

    def test_manual_reply_and_read_mark_over_http(self):
        self.callback(msg(user="zhangsan", content="打印机卡纸了"))
        self.callback(msg(user="zhangsan", content="还在吗"))
        convs = self.api("/api/conversations")[1]["conversations"]
        self.assertEqual([(c["count"], c["unread"]) for c in convs], [(4, 2)])  # and the app's 2 replies
        status, _ = self.api("/api/conversations/read", method="POST",
                             body={"app": "helpdesk", "user": "zhangsan", "up_to_id": convs[0]["last_id"]})
        self.assertEqual(status, 204)
        status, sent = self.api("/api/messages", method="POST",
                                body={"app": "helpdesk", "to_user": "zhangsan", "msgtype": "text", "content": "已处理"})
        self.assertEqual(status, 201)
        [conv] = self.api("/api/conversations")[1]["conversations"]
        self.assertEqual((conv["count"], conv["unread"], conv["last_id"]), (5, 0, sent["id"]))
        self.assertEqual(conv["last_message"]["direction"], "out")
        self.assertIsNotNone(conv["paused_until"])  # the manual reply took the conversation over
        self.assertEqual(summary(self.services.store, now=datetime.utcnow()),
                         grouped(self.services.store, now=datetime.utcnow()))
