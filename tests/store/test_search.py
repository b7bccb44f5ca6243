"""Message search: the text each message is found by (a pure function), and SQLite's FTS5 index
behind `q` (migrations 0002 and 0004). The search results themselves are StoreTests' (every backend)."""
from __future__ import annotations

import logging

import pytest

from support.store import save, text
from wecomd.store import search_text


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


def test_the_index_is_merged_in_steps_not_inside_writes(sqlite_store):
    """Migration 0014: FTS5 merges no segments inside the writes that add them (automerge 0; a
    crisis only at 64); merge_step merges a few pages at a time until there is nothing left to
    merge, and every message is still found."""
    store = sqlite_store
    assert dict(store.db.execute_sql("SELECT k, v FROM message_fts_config").fetchall()) == \
        {"automerge": 0, "crisismerge": 64, "version": 4}
    assert store.messages.search.merge_step.bulky and store.messages.search.merge_step.redoable
    before = store.messages.search.segments()
    for i in range(40):  # a transaction each, as callbacks come: a segment each, none merged
        save(store, content="第 %d 位客户的服务器宕机了" % i, key="seg-%d" % i)
    assert store.messages.search.segments() >= before + 40
    steps = 0
    while store.messages.search.merge_step(4):  # small steps: many of them
        steps += 1
        assert steps < 1000
    assert steps >= 1 and store.messages.search.segments() < 10
    assert not store.messages.search.merge_step()  # nothing left: a no-op says so
    store.db.execute_sql("INSERT INTO message_fts(message_fts, rank) VALUES ('integrity-check', 1)")
    assert len(store.messages.page(q="服务器宕机", limit=100)[0]) == 40
    assert [r["content"] for r in store.messages.page(q="第 7 位客户")[0]] == ["第 7 位客户的服务器宕机了"]


def test_the_upkeep_worker_merges_what_the_writer_adds(sqlite_store):
    """SearchIndex (wecomd.workers.search_index) merges through the real database writer, woken or
    on its own every interval, until no step finds anything to merge."""
    import asyncio

    from wecomd.store.writer import DbWriter
    from wecomd.workers.search_index import SearchIndex

    store, search = sqlite_store, sqlite_store.messages.search
    writer = DbWriter(store.db, RuntimeError)

    async def scenario() -> tuple:
        worker = SearchIndex(writer.run, search, interval=0.05)
        worker.start()
        try:
            for i in range(40):
                await writer.run(save, store, content="工单 %d 已经处理" % i, key="w-%d" % i)
            worker.wake()
            for _ in range(200):
                await asyncio.sleep(0.05)
                if worker.steps and await writer.run(search.segments) < 10 and not await writer.run(search.merge_step):
                    break
            return worker.steps, await writer.run(search.segments)
        finally:
            await worker.stop()

    try:
        steps, segments = asyncio.run(scenario())
    finally:
        writer.close()
    assert steps >= 1 and segments < 10
    assert len(store.messages.page(q="已经处理", limit=100)[0]) == 40
