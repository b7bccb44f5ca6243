"""微信客服 storage (migration 0011) on every database: a sync_msg page and its cursor in one
transaction, each msgid stored once across pages, the pull lease, the reply window's counters, event
codes used at most once, and the customers' names. TestPostgres runs the same when TEST_POSTGRES_URL
names a server."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from support.postgres import needs_postgres, postgres_store
from support.store import assert_same, grouped
from wecomd.kf.items import decode, plain_text
from wecomd.store import Store
from wecomd.store.kf import LeaseLost, Pulled
from wecomd.wecom.messages import Message

T0 = datetime(2026, 12, 3, 8, 0, 0)
KFID, CUSTOMER = "wkACCOUNT1", "wmCUSTOMER1"
KEY = KFID + "/" + CUSTOMER


def item(msgid: str, content: str = "你好", outbound_by: str | None = None, **changes) -> Pulled:
    fields = {"msgid": msgid, "open_kfid": KFID, "external_userid": CUSTOMER, "msgtype": "text",
              "origin": 5 if outbound_by else 3, "text": {"content": content}}
    message = Message(msgtype="text", from_user=outbound_by or CUSTOMER, to_user=None, agent_id=None, msg_id=msgid,
                      event=None, event_key=None, create_time=1764748800, content=content, fields=fields,
                      raw=json.dumps(fields), conversation=KEY, channel="kf")
    if not outbound_by and "customer_at" not in changes:
        changes["customer_at"] = T0
    return Pulled(message=message, dedup_key="kf:" + msgid, session=(KFID, CUSTOMER), outbound_by=outbound_by,
                  **changes)


def save_page(store, owner: str, items: list, cursor: str, now: datetime, until: datetime) -> list:
    """What the puller does with a page: keep it with its cursor, then store it in one slice."""
    page_id = store.kf.stage_page("helpdesk", KFID, owner, [i.message.fields for i in items], cursor, now, until)
    if page_id is None:
        return []
    return store.kf.store_slice("helpdesk", page_id, items, now, last=True)


class KfStoreTests:
    """Subclasses provide the `store` fixture."""

    def claim(self, store, owner="p1", at=T0):
        return store.kf.claim(KFID, "helpdesk", owner, at, at + timedelta(seconds=60))

    def test_a_page_and_its_cursor_are_one_transaction_and_msgids_are_stored_once(self, store):
        assert self.claim(store) == {"cursor": None, "token": None, "token_at": None}
        new = save_page(store, "p1", [item("m1"), item("m2")], "C1", T0, T0 + timedelta(seconds=60))
        assert [row["content"] for row, _ in new] == ["你好", "你好"]
        # The same msgid again on the next page: stored once; the cursor moves on.
        new = save_page(store, "p1", [item("m2"), item("m3", "第三条")], "C2", T0, T0)
        assert [row["content"] for row, _ in new] == ["第三条"]
        assert store.kf.cursors()[0]["cursor"] == "C2"
        rows, _ = store.messages.page(app="helpdesk", user=KEY)
        assert len(rows) == 3 and all(row["direction"] == "in" for row in rows) and store.kf.kept_pages(KFID) == []
        # A page is kept with its cursor in one transaction; a slice whose storing fails stores nothing
        # of it and leaves the page kept for the next pull.
        page = [item("m4"), item("m5", "第五条")]
        page_id = store.kf.stage_page("helpdesk", KFID, "p1", [i.message.fields for i in page], "C3", T0, T0)
        assert store.kf.cursors()[0]["cursor"] == "C3"
        broken = Pulled(**{**page[0].__dict__, "dedup_key": None})  # prepare_pulled refuses it
        with pytest.raises(ValueError):
            store.kf.store_slice("helpdesk", page_id, [broken], T0)
        assert [[i["msgid"] for i in kept["items"]] for kept in store.kf.kept_pages(KFID)] == [["m4", "m5"]]
        assert len(store.messages.page(app="helpdesk", user=KEY)[0]) == 3
        # Slice by slice; a slice stored again (after a crash, or by another process) adds nothing.
        assert [r["msg_id"] for r, _ in store.kf.store_slice("helpdesk", page_id, page[:1], T0)] == ["m4"]
        assert store.kf.store_slice("helpdesk", page_id, page[:1], T0) == []
        assert [r["msg_id"] for r, _ in store.kf.store_slice("helpdesk", page_id, page, T0, last=True)] == ["m5"]
        assert store.kf.kept_pages(KFID) == [] and len(store.messages.page(app="helpdesk", user=KEY)[0]) == 5
        # A page that comes with no items keeps only its cursor.
        assert store.kf.stage_page("helpdesk", KFID, "p1", [], "C4", T0, T0) is None
        assert store.kf.cursors()[0]["cursor"] == "C4" and store.kf.kept_pages(KFID) == []

    def test_one_pull_at_a_time_per_account(self, store):
        store.kf.doorbell("helpdesk", KFID, "TOKEN1", T0)
        assert self.claim(store, "p1")["token"] == "TOKEN1"
        assert self.claim(store, "p2", T0 + timedelta(seconds=10)) is None  # p1 holds it
        with pytest.raises(LeaseLost):
            save_page(store, "p2", [item("x1")], "CX", T0, T0)
        assert store.kf.kept_pages(KFID) == []
        assert store.messages.page(app="helpdesk")[0] == []
        store.kf.doorbell("helpdesk", KFID, "TOKEN2", T0 + timedelta(seconds=20))  # rings during the pull
        assert store.kf.release(KFID, "p1", T0 + timedelta(seconds=30)) is True  # so: pull once more
        assert self.claim(store, "p2", T0 + timedelta(seconds=31))["token"] == "TOKEN2"
        assert store.kf.release(KFID, "p2", T0 + timedelta(seconds=32)) is False
        # A lease that ran out (its process died) is taken over.
        self.claim(store, "p3", T0 + timedelta(seconds=40))
        assert self.claim(store, "p4", T0 + timedelta(seconds=101)) is not None

    def test_the_reply_window_state_follows_the_customer_and_the_human_agent(self, store):
        self.claim(store)
        save_page(store, "p1", [item("m1", customer_at=T0)], "C1", T0, T0)
        for _ in range(3):
            store.kf.count_send(KFID, CUSTOMER, T0)
        session = store.kf.session(KFID, CUSTOMER)
        assert (session["sends"], session["last_customer_at"]) == (3, "2026-12-03T08:00:00Z")
        # The customer writes again: the count starts over. A human agent's reply (origin 5) is
        # stored as theirs, outbound, and the session is human-served.
        later = T0 + timedelta(hours=1)
        save_page(store, "p1", [item("m2", customer_at=later),
                                item("m3", "我来处理", outbound_by="zhangsan", state=3, servicer="zhangsan")],
                  "C2", later, later)
        session = store.kf.session(KFID, CUSTOMER)
        assert (session["sends"], session["service_state"], session["servicer_userid"]) == (0, 3, "zhangsan")
        human = [r for r in store.messages.page(app="helpdesk", user=KEY)[0] if r["direction"] == "out"]
        assert [(r["content"], r["operator"], r["status"]) for r in human] == [("我来处理", "zhangsan", "sent")]
        conversation = store.conversations.all(app="helpdesk")[0]
        assert (conversation["user"], conversation["count"], conversation["unread"]) == (KEY, 3, 2)

    def test_a_code_is_used_once_and_not_after_it_expired(self, store):
        self.claim(store)
        new = save_page(store, "p1", [item("e1", code=("welcome", "W1", T0 + timedelta(seconds=20)))], "C1", T0, T0)
        message_id = new[0][0]["id"]
        assert store.kf.use_code(("welcome",), KFID, CUSTOMER, T0 + timedelta(seconds=25)) is None  # expired
        store.kf.add_code("welcome", "W2", KFID, CUSTOMER, T0 + timedelta(seconds=20), T0, message_id=message_id)
        used = store.kf.use_code(("welcome",), KFID, CUSTOMER, T0 + timedelta(seconds=5), message_id=message_id)
        assert used["code"] == "W2"  # the newest first
        assert store.kf.use_code(("welcome",), KFID, CUSTOMER, T0 + timedelta(seconds=6))["code"] == "W1"
        assert store.kf.use_code(("welcome",), KFID, CUSTOMER, T0 + timedelta(seconds=7)) is None  # each once

    def test_failed_sends_and_recalls_mark_the_stored_message(self, store):
        sent = store.outbox.save("helpdesk", KEY, "text", "您好", {"msgtype": "text"}, status="pending")
        store.outbox.set_status(sent["id"], "sent", None, "wecomd-%d" % sent["id"])
        self.claim(store)
        save_page(store, "p1", [
            item("f1", failed_msgid="wecomd-%d" % sent["id"], failure="WeCom could not deliver it: over the limit"),
            item("m9", "说错了"), item("r1", recalled_msgid="m9")], "C1", T0, T0)
        assert store.messages.get(sent["id"])["status"] == "failed"
        assert "over the limit" in store.messages.get(sent["id"])["error"]
        recalled = [r for r in store.messages.page(app="helpdesk", user=KEY)[0] if r["content"] == "说错了"]
        assert recalled[0]["status"] == "recalled"

    def test_customer_names_are_cached_and_invalid_ids_remembered(self, store):
        store.kf.save_customers([{"external_userid": "wm1", "nickname": "小王", "avatar": "http://a/1.png",
                                  "enter_session_context": {"scene": "qr", "scene_param": "shop"}}], ["wm2"], T0)
        found = store.kf.customers(["wm1", "wm2", "wm3"])
        assert found["wm1"]["nickname"] == "小王" and found["wm1"]["scene"] == "qr"
        assert found["wm2"]["invalid"] is True and "wm3" not in found
        store.kf.save_customers([{"external_userid": "wm2", "nickname": "小李"}], [], T0)
        assert store.kf.customers(["wm2"])["wm2"] == {**store.kf.customers(["wm2"])["wm2"], "nickname": "小李",
                                                      "invalid": False}


    def test_a_page_is_counted_and_indexed_as_messages_one_by_one_are(self, store):
        """A page is counted in its conversations and indexed for search by one statement each (on
        SQLite the per-row triggers stand aside meanwhile): the same counts, unread and newest ids
        as the GROUP BY over every message, and every text found."""
        other = "wmCUSTOMER2"
        first = store.messages.save_inbound("helpdesk", item("a0", "先来的一条").message, "kf:a0")[0]
        store.conversations.mark_read("helpdesk", KEY, first["id"] + 1)  # the page's first row counts as read
        self.claim(store)
        nobody = Message(msgtype="event", from_user=None, to_user=None, agent_id=None, msg_id="e9", event="x",
                         event_key=None, create_time=1764748800, content=None, fields={"msgid": "e9"}, raw="{}",
                         channel="kf")
        page = [item("p1", "第一条消息"), item("p2", "人工客服的答复", outbound_by="zhangsan"),
                replace(item("p3", "另一位客户的提问"), session=(KFID, other),
                        message=replace(item("p3", "另一位客户的提问").message, conversation=KFID + "/" + other)),
                item("p1", "第一条消息"), Pulled(message=nobody, dedup_key="kf:e9"), item("p4", "第四条消息")]
        new = save_page(store, "p1", page, "C1", T0, T0 + timedelta(seconds=60))
        assert len(new) == 5  # p1 twice on the page: stored once
        assert_same(store)
        counts = {row["user"]: (row["count"], row["unread"]) for row in grouped(store, "helpdesk")}
        assert counts == {KEY: (4, 1), KFID + "/" + other: (1, 1), None: (1, 1)}
        for text in ("第一条", "人工客服", "另一位客户", "第四条"):
            assert [row["content"] for row in store.messages.page(app="helpdesk", q=text)[0]] == \
                [next(m.message.content for m in page if m.message.content and text in m.message.content)]
        # The triggers count and index what comes after the page, one by one, as before.
        store.messages.save_inbound("helpdesk", item("a5", "之后的一条").message, "kf:a5")
        assert_same(store)
        assert [row["content"] for row in store.messages.page(app="helpdesk", q="之后的")[0]] == ["之后的一条"]
        if store.messages._sqlite:
            assert store.db.execute_sql("SELECT COUNT(*) FROM bulk_insert").fetchone()[0] == 0
            store.db.execute_sql("INSERT INTO message_fts(message_fts) VALUES ('integrity-check')")


class TestSqlite(KfStoreTests):
    @pytest.fixture
    def store(self, sqlite_store):
        return sqlite_store

    def test_customers_texts_stored_by_sql_are_the_rows_decode_and_store_slice_make(self, tmp_path):
        """store_texts (SQL over the items' JSON) and the Python way (decode, store_slice) give the
        same message rows, sessions, conversation counts and search, duplicates and an ended
        session's reopening included; each page stored again adds nothing."""
        page = [{"msgid": "t%d" % i, "open_kfid": KFID, "external_userid": "wmC%d" % (i % 3),
                 "send_time": 1764748800 + i * 60, "origin": 3, "msgtype": "text",
                 "text": {"content": '第 %d 句 "引号" \\ 换行\n' % i}} for i in range(7)]
        page.insert(4, dict(page[1]))  # the same msgid twice: stored once
        late = dict(page[0], msgid="t-late", send_time=1764748800 - 600)  # older than the session knows
        assert all(plain_text(i) for i in page + [late])
        results = []
        for lane in ("python", "sql"):
            store = Store(str(tmp_path / (lane + ".db")))
            store.migrate()
            assert store.kf.texts_in_sql
            store.kf.claim(KFID, "helpdesk", "p1", T0, T0 + timedelta(seconds=60))
            store.kf.set_state("helpdesk", KFID, "wmC0", 4, None, T0)  # ended: a new message reopens it
            store.kf.set_state("helpdesk", KFID, "wmC1", 3, "zhangsan", T0)
            for _ in range(3):
                store.kf.count_send(KFID, "wmC1", T0)
            new = []
            for items in (page, page, [late]):  # the page stored again adds nothing
                page_id = store.kf.stage_page("helpdesk", KFID, "p1", items, "C", T0, T0)
                if lane == "sql":
                    new.append([(e.id, e.item["msgid"]) for e in store.kf.store_texts("helpdesk", page_id, items,
                                                                                       T0, last=True)])
                else:
                    new.append([(row["id"], row["msg_id"]) for row, _ in store.kf.store_slice(
                        "helpdesk", page_id, [decode(i, T0) for i in items], T0, last=True)])
            assert_same(store)
            # Every column but the two the clock sets (the lanes may run in different seconds), by name.
            columns = [c.name for c in store.db.get_columns("message") if c.name not in ("received_at", "updated_at")]
            rows = store.db.execute_sql('SELECT %s FROM "message" ORDER BY "id"'
                                        % ", ".join('"%s"' % c for c in columns)).fetchall()
            results.append(dict(
                new=new, rows=rows,
                sessions=store.db.execute_sql('SELECT * FROM "kf_session" ORDER BY "id"').fetchall(),
                counts=store.db.execute_sql('SELECT * FROM "conversation" ORDER BY "id"').fetchall(),
                found=[[r["msg_id"] for r in store.messages.page(app="helpdesk", q=q)[0]]
                       for q in ("第 3 句", '"引号"', "换行")],
                kept=store.kf.kept_pages(KFID)))
            store.db.execute_sql("INSERT INTO message_fts(message_fts) VALUES ('integrity-check')")
            assert store.db.execute_sql("SELECT COUNT(*) FROM bulk_insert").fetchone()[0] == 0
            store.close()
        python, sql = results
        assert python == sql
        assert [msgid for _, msgid in sql["new"][0]] == ["t0", "t1", "t2", "t3", "t4", "t5", "t6"]
        assert sql["new"][1] == [] and [m for _, m in sql["new"][2]] == ["t-late"]
        assert len(sql["rows"]) == 8 and sql["found"][0] == ["t3"] and len(sql["found"][1]) == 8
        sessions = {row[3]: row for row in sql["sessions"]}  # external_userid: (.., state, servicer, last, sends, ..)
        assert sessions["wmC0"][4] == 0 and sessions["wmC1"][4:6] == (3, "zhangsan") and sessions["wmC1"][7] == 0
        assert sessions["wmC0"][6] == "2025-12-03 08:06:00"  # the newest, not the late one's older send_time
        assert sql["kept"] == []

    def test_store_texts_pauses_between_steps_and_resumes_where_it_stopped(self, store):
        """With callbacks waiting (the writer's `pause`) store_texts stops after TEXT_STEP rows with
        what it stored; called again with the same items it stores only the rest, once each."""
        from wecomd.store.kf import TEXT_STEP
        from wecomd.store.writer import Paused

        items = [{"msgid": "s%d" % i, "open_kfid": KFID, "external_userid": CUSTOMER, "send_time": 1764748800 + i,
                  "origin": 3, "msgtype": "text", "text": {"content": "第 %d 句" % i}} for i in range(TEXT_STEP * 2 + 3)]
        self.claim(store)
        page_id = store.kf.stage_page("helpdesk", KFID, "p1", items, "C1", T0, T0)
        first = store.kf.store_texts("helpdesk", page_id, items, T0, last=True, pause=lambda: True)
        assert isinstance(first, Paused) and [e.item["msgid"] for e in first.part] == ["s%d" % i for i in range(TEXT_STEP)]
        assert store.kf.kept_pages(KFID)  # not finished: the page stays kept
        rest = store.kf.store_texts("helpdesk", page_id, items, T0, last=True, pause=lambda: False)
        assert [e.item["msgid"] for e in rest] == ["s%d" % i for i in range(TEXT_STEP, len(items))]
        assert store.kf.kept_pages(KFID) == []
        assert store.db.execute_sql('SELECT COUNT(*) FROM "message"').fetchone()[0] == len(items)  # each once
        assert_same(store)
        newest = datetime(2025, 12, 3, 8, 0, 0) + timedelta(seconds=len(items) - 1)  # the last item's send_time
        assert store.kf.session(KFID, CUSTOMER)["last_customer_at"] == newest.isoformat() + "Z"

    def test_a_page_is_kept_from_the_answer_as_it_came(self, store):
        """stage_page with sync_msg's answer text keeps its msg_list (SQLite takes it out of the
        text, nothing is encoded again): the same items as the list the pull decoded."""
        page = [item("k1", "你好\n\"引号\"").message.fields, {"msgid": "k2", "msgtype": "hologram", "origin": 3,
                                                             "hologram": {"frames": [1, 2.5, None, True]}}]
        answer = json.dumps({"errcode": 0, "errmsg": "ok", "next_cursor": "C9", "has_more": 0, "msg_list": page},
                            ensure_ascii=False, indent=1)
        self.claim(store)
        page_id = store.kf.stage_page("helpdesk", KFID, "p1", page, "C9", T0, T0, answer)
        assert store.kf.kept_pages(KFID) == [dict(id=page_id, app="helpdesk", items=page)]
        assert store.kf.cursors()[0]["cursor"] == "C9"
        raw = store.db.execute_sql('SELECT "items" FROM "kf_page"').fetchone()[0]
        assert json.loads(raw) == page and "errcode" not in raw

    def test_the_sql_lane_finds_its_new_rows_by_their_ids(self, store):
        """The session statement reads the slice's new rows by id: a scan of the message table
        through an index made each slice cost as much as the table was long."""
        from wecomd.store.kf import _TEXT_SESSIONS_SQL
        select = _TEXT_SESSIONS_SQL[_TEXT_SESSIONS_SQL.index("SELECT"):_TEXT_SESSIONS_SQL.index("ON CONFLICT")]
        plan = " ".join(row[3] for row in store.db.execute_sql("EXPLAIN QUERY PLAN " + select, (T0, 0)))
        assert "INTEGER PRIMARY KEY" in plan and "SCAN" not in plan, plan


@needs_postgres
class TestPostgres(KfStoreTests):
    @pytest.fixture
    def store(self):
        store = postgres_store()
        yield store
        store.close()
