"""Conversation assignment, open/closed state and internal notes (store/assignments.py, store/notes.py,
the conversation list's filters), the same on every database: `AssignmentStoreTests` holds the
tests and each backend runs them (PostgreSQL when TEST_POSTGRES_URL names one)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from playhouse import migrations

from support.postgres import needs_postgres, postgres_store
from support.store import NOW, drop_triggers, save
from wecomd import exporting
from wecomd.store import MIGRATIONS_DIR, Store


def listed(store, show="all", me=None, app=None):
    return [(c["user"], c["assignee"], c["state"]) for c in store.conversations.all(app=app, show=show, me=me)]


class AssignmentStoreTests:
    """Subclasses provide the `store` fixture."""

    def test_a_conversation_is_unassigned_and_open_until_changed(self, store):
        save(store, user="zhangsan")
        assert store.assignments.get("helpdesk", "zhangsan") == dict(
            app="helpdesk", user="zhangsan", assignee=None, state="open", updated_at=None, updated_by=None)
        assert listed(store) == [("zhangsan", None, "open")]

    def test_assign_reassign_and_unassign(self, store):
        save(store, user="zhangsan")
        row = store.assignments.assign("helpdesk", "zhangsan", "li", by="admin", now=NOW)
        assert row == dict(app="helpdesk", user="zhangsan", assignee="li", state="open",
                           updated_at="2026-11-28T12:00:00Z", updated_by="admin")
        assert store.assignments.assign("helpdesk", "zhangsan", "wang", by="li")["assignee"] == "wang"
        assert store.assignments.get("helpdesk", "zhangsan")["updated_by"] == "li"
        assert store.assignments.assign("helpdesk", "zhangsan", None, by="wang")["assignee"] is None
        assert listed(store) == [("zhangsan", None, "open")]

    def test_nothing_is_stored_for_a_conversation_without_messages(self, store):
        save(store, user="zhangsan", app="helpdesk")
        with pytest.raises(KeyError):
            store.assignments.assign("helpdesk", "nobody", "li", by="admin")
        with pytest.raises(KeyError):
            store.assignments.set_state("ops", "zhangsan", "closed", by="admin")  # the user, another app
        with pytest.raises(KeyError):
            store.notes.add("helpdesk", "nobody", "li", "hello")
        with pytest.raises(ValueError):
            store.assignments.set_state("helpdesk", "zhangsan", "snoozed", by="admin")
        assert store.models.ConversationState.select().count() == 0
        assert store.models.Note.select().count() == 0

    def test_closing_keeps_the_assignee_and_an_inbound_message_reopens(self, store):
        save(store, user="zhangsan", content="打印机坏了")
        store.assignments.assign("helpdesk", "zhangsan", "li", by="admin")
        closed = store.assignments.set_state("helpdesk", "zhangsan", "closed", by="li")
        assert (closed["assignee"], closed["state"]) == ("li", "closed")
        # A reply (outbound) does not reopen it, nor does a message of another conversation or app.
        store.outbox.save("helpdesk", "zhangsan", "text", "已修好", {})
        save(store, user="lisi")
        save(store, app="ops", user="zhangsan")
        assert store.assignments.get("helpdesk", "zhangsan")["state"] == "closed"
        assert ("zhangsan", "li", "closed") in listed(store, app="helpdesk")
        # The user writes again: open, with no write to conversation_state.
        state_rows = list(store.models.ConversationState.select().dicts())
        save(store, user="zhangsan", content="又坏了")
        assert list(store.models.ConversationState.select().dicts()) == state_rows
        assert store.assignments.get("helpdesk", "zhangsan")["state"] == "open"
        assert listed(store, app="helpdesk")[0] == ("zhangsan", "li", "open")
        # Closed again: from now on, until the next inbound message.
        assert store.assignments.set_state("helpdesk", "zhangsan", "closed", by="li")["state"] == "closed"
        assert store.assignments.set_state("helpdesk", "zhangsan", "open", by="li")["state"] == "open"
        assert store.assignments.set_state("helpdesk", "zhangsan", "closed", by="li")["state"] == "closed"
        save(store, user="zhangsan", content="第三次")
        assert store.assignments.get("helpdesk", "zhangsan")["state"] == "open"

    def test_filters_mine_unassigned_unread_and_all(self, store):
        for user in ("u1", "u2", "u3", "u4"):
            save(store, user=user)
        store.assignments.assign("helpdesk", "u1", "li", by="admin")
        store.assignments.assign("helpdesk", "u3", "wang", by="admin")
        store.assignments.assign("helpdesk", "u4", "li", by="admin")
        store.assignments.assign("helpdesk", "u4", None, by="admin")  # a row, unassigned again
        store.conversations.mark_read("helpdesk", "u2", 10 ** 6)
        store.assignments.set_state("helpdesk", "u1", "closed", by="li")
        assert listed(store, "mine", me="li") == [("u1", "li", "closed")]
        assert listed(store, "mine", me="wang") == [("u3", "wang", "open")]
        assert listed(store, "mine", me="nobody") == []
        assert listed(store, "unassigned") == [("u4", None, "open"), ("u2", None, "open")]
        assert [u for u, _, _ in listed(store, "unread")] == ["u4", "u3", "u1"]
        assert [u for u, _, _ in listed(store, "all")] == ["u4", "u3", "u2", "u1"]
        with pytest.raises(ValueError):
            store.conversations.all(show="mine")  # never "assigned to nobody"
        with pytest.raises(ValueError):
            store.conversations.all(show="closed")

    def test_a_filter_pages_on_its_own(self, store):
        for n in range(7):
            save(store, user="u%d" % n)
            if n % 2 == 0:
                store.assignments.assign("helpdesk", "u%d" % n, "li", by="admin")
        users, cursor = [], None
        while True:
            rows, cursor = store.conversations.page(before=cursor, limit=2, show="mine", me="li")
            users += [row["user"] for row in rows]
            if cursor is None:
                break
        assert users == ["u6", "u4", "u2", "u0"]
        rows, cursor = store.conversations.page(limit=2, show="unassigned", app=["helpdesk", "ops"])
        assert [row["user"] for row in rows] == ["u5", "u3"] and cursor == rows[-1]["last_id"]

    def test_notes_page_newest_first_and_export_oldest_first(self, store):
        save(store, user="zhangsan")
        save(store, user="lisi")
        save(store, app="ops", user="zhangsan")
        first = store.notes.add("helpdesk", "zhangsan", "li", "他上次也是这个问题", now=NOW)
        assert first == dict(id=first["id"], app="helpdesk", user="zhangsan", author="li",
                             text="他上次也是这个问题", created_at="2026-11-28T12:00:00Z",
                             after_id=store.conversations.all(app="helpdesk")[-1]["last_id"])
        for n in range(3):
            store.notes.add("helpdesk", "zhangsan", "wang", "note %d" % n, now=NOW + timedelta(minutes=n + 1))
        store.notes.add("helpdesk", "lisi", "li", "another conversation")
        store.notes.add("ops", "zhangsan", "li", "another app")
        rows, cursor = store.notes.page("helpdesk", "zhangsan", limit=3)
        assert [r["text"] for r in rows] == ["note 2", "note 1", "note 0"] and cursor == rows[-1]["id"]
        rows, cursor = store.notes.page("helpdesk", "zhangsan", before=cursor, limit=3)
        assert [r["text"] for r in rows] == ["他上次也是这个问题"] and cursor is None
        assert [n["text"] for n in store.notes.iter_export(batch=2)] == [
            "他上次也是这个问题", "note 0", "note 1", "note 2", "another conversation", "another app"]
        assert [n["text"] for n in store.notes.iter_export(app="ops")] == ["another app"]
        assert [n["text"] for n in store.notes.iter_export(app=["helpdesk"], user="lisi")] == ["another conversation"]
        assert [n["text"] for n in store.notes.iter_export(since=NOW + timedelta(minutes=2))][:2] == ["note 1", "note 2"]

    def test_notes_are_not_messages(self, store):
        message = save(store, user="zhangsan", content="你好")
        store.notes.add("helpdesk", "zhangsan", "li", "内部备注 你好")
        assert [m["id"] for m in store.messages.iter_export()] == [message["id"]]
        assert [m["content"] for m in store.messages.page(q="内部备注")[0]] == []
        [conv] = store.conversations.all()
        assert (conv["count"], conv["last_id"]) == (1, message["id"])

    def test_a_note_follows_the_newest_message_of_its_conversation_when_written(self, store):
        # All in the same second: the place is the message order, never the clock.
        save(store, user="zhangsan", content="one")
        store.notes.add("helpdesk", "zhangsan", "li", "after one", now=NOW)
        save(store, user="lisi", content="another conversation")
        store.notes.add("helpdesk", "zhangsan", "li", "still after one", now=NOW)
        store.outbox.save("helpdesk", "zhangsan", "text", "two", {})
        store.notes.add("helpdesk", "zhangsan", "wang", "after two", now=NOW)
        save(store, user="zhangsan", content="three")
        rows = list(exporting.with_notes(store.messages.iter_export(), store.notes.iter_export()))
        assert [(r.get("type"), r.get("content") or r.get("text")) for r in rows] == [
            (None, "one"), ("note", "after one"), ("note", "still after one"), (None, "another conversation"),
            (None, "two"), ("note", "after two"), (None, "three")]
        rows = list(exporting.with_notes(store.messages.iter_export(user="zhangsan"),
                                         store.notes.iter_export(user="zhangsan")))
        assert [r.get("content") or r.get("text") for r in rows] == [
            "one", "after one", "still after one", "two", "after two", "three"]


class TestSqlite(AssignmentStoreTests):
    @pytest.fixture
    def store(self, sqlite_store):
        return sqlite_store


class TestSqliteWithoutTriggers(AssignmentStoreTests):
    """The conversation summary counted the way PostgreSQL does it (from Python after the INSERT)."""

    @pytest.fixture
    def store(self, sqlite_store):
        drop_triggers(sqlite_store)
        return sqlite_store


@needs_postgres
class TestPostgres(AssignmentStoreTests):
    @pytest.fixture
    def store(self):
        store = postgres_store()
        yield store
        store.close()


def test_0009_places_earlier_closes_and_notes_at_the_newest_message(tmp_path):
    store = Store(str(tmp_path / "old.db"))
    assert migrations.Runner(store.db, str(MIGRATIONS_DIR)).up("0008_team")[-1] == "0008_team"
    for n, user in enumerate(("zhangsan", "zhangsan", "lisi")):
        store.db.execute_sql(
            "INSERT INTO message (app, direction, dedup_key, user, msgtype, received_at, status, fields, raw,"
            " deliveries, updated_at) VALUES ('helpdesk', 'in', ?, ?, 'text', '2026-01-01 00:00:00', 'received',"
            " '{}', '', 1, '2026-01-01 00:00:00')", ("k%d" % n, user))
    for user, state in (("zhangsan", "closed"), ("lisi", "open"), ("wangwu", "closed")):
        store.db.execute_sql("INSERT INTO conversation_state (app, user, state, updated_at) VALUES"
                             " ('helpdesk', ?, ?, '2026-01-01 00:00:00')", (user, state))
    store.db.execute_sql("INSERT INTO note (app, user, author, text, created_at) VALUES"
                         " ('helpdesk', 'zhangsan', 'li', 'old note', '2026-01-01 00:00:00')")
    store.close()
    store = Store(str(tmp_path / "old.db"))
    runner = migrations.Runner(store.db, str(MIGRATIONS_DIR))  # up to this one: later ones are not its test
    assert runner.up("0009_positions") == ["0009_positions"]
    assert store.notes.page("helpdesk", "zhangsan")[0][0]["after_id"] == 2
    assert store.assignments.get("helpdesk", "zhangsan")["state"] == "closed"
    assert store.assignments.get("helpdesk", "lisi")["state"] == "open"
    assert store.assignments.get("helpdesk", "wangwu")["state"] == "closed"  # no message at all
    save(store, user="zhangsan")
    assert store.assignments.get("helpdesk", "zhangsan")["state"] == "open"
    assert runner.down("0009_positions") == ["0009_positions"]
    assert "closed_last_id" not in [c.name for c in store.db.get_columns("conversation_state")]
    assert "after_id" not in [c.name for c in store.db.get_columns("note")]
    assert runner.up("0009_positions") == ["0009_positions"]
    store.close()
