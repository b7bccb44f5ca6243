"""Retention: store.maintenance.prune and the Retention worker on a real SQLite file and a real media_dir."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest

from support.aio import async_test
from support.database import migrated_sqlite
from support.postgres import needs_postgres, postgres_store
from support.config import write_config
from support.harness import StoreHarness
from support.server import ServerProcess, free_port
from wecomd import config
from wecomd.wecom.messages import Message
from wecomd.workers.retention import Retention
from wecomd.store import Store
from wecomd.store.maintenance import COUNTS

NOW = datetime(2026, 11, 28, 23, 0, 0)  # FakeClock's time
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=2)
CUTOFF = NOW - timedelta(days=30)


@pytest.fixture
def store(sqlite_store):
    return sqlite_store


def inbound(store, content, user="zhangsan", app="helpdesk", at=OLD, **fields):
    msgtype = fields.pop("msgtype", "text")
    fields = {"FromUserName": user, "MsgType": msgtype, "Content": content, **fields}
    message = Message(msgtype=msgtype, from_user=user, to_user="ww0123", agent_id="1000002",
                      create_time=1764370000, msg_id=None, content=content, fields=fields)
    row = store.messages.save_inbound(app, message, "%s|%s|%s|%d" % (app, user, content, store.messages.count()))[0]
    return _age(store, row["id"], at)


def outbound(store, content, status, user="zhangsan", at=OLD):
    row = store.outbox.save("helpdesk", user, "text", content, {"text": {"content": content}})
    if status != "pending":
        store.outbox.set_status(row["id"], status, error="x" if status == "failed" else None)
    return _age(store, row["id"], at)


def with_file(store, media_dir, row, name="photo.jpg"):
    """Give a message a stored media file, as the media vault would."""
    relative = "helpdesk/%s/%d-%s" % (row["received_at"][:7], row["id"], name)
    (media_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    (media_dir / relative).write_bytes(b"\xff\xd8 jpeg")
    store.media.record(row["id"], "stored", path=relative, size=7, mime="image/jpeg", name=name)
    return media_dir / relative


def _age(store, message_id, at):
    M = store.models.Message
    M.update(received_at=at).where(M.id == message_id).execute()
    return store.messages.get(message_id)


def ids(store):
    M = store.models.Message
    return [row.id for row in M.select(M.id).order_by(M.id)]


def fts_ok(store):
    """The FTS5 index matches the message table: integrity-check passes, one entry per row."""
    store.db.execute_sql("INSERT INTO message_fts(message_fts) VALUES ('integrity-check')")
    indexed = store.db.execute_sql("SELECT count(*) FROM message_fts_docsize").fetchone()[0]
    return indexed == store.messages.count()


# --- store.maintenance.prune ----------------------------------------------------------------------

def test_prune_deletes_old_messages_with_their_runs_and_search_entries(store):
    old = [inbound(store, "旧的消息 number %d" % n) for n in range(3)]
    new = inbound(store, "新的消息 number 9", at=RECENT)
    for row in old + [new]:
        run = store.runs.start(row["id"], "helpdesk", "zhangsan", "greet", "reply")
        store.runs.finish(run["id"], "ok", path="passive")
    assert store.messages.page(q="旧的消息")[0] and fts_ok(store)

    result = store.maintenance.prune(CUTOFF)

    assert result == {"messages": 3, "rule_runs": 3, "bot_streams": 0, "read_marks": 0, "notes": 0, "assignments": 0,
                      "takeovers": 0, "kf_sessions": 0, "kf_codes": 0, "kf_customers": 0, "batches": 1,
                      "media": [], "more": False}
    assert ids(store) == [new["id"]]
    assert store.messages.page(q="旧的消息") == ([], None)
    assert store.messages.page(q="旧的")[0] == []  # the short-query LIKE scan too
    assert [m["id"] for m in store.messages.page(q="新的消息")[0]] == [new["id"]]
    assert fts_ok(store)
    assert store.runs.for_messages([r["id"] for r in old]) == {r["id"]: [] for r in old}
    assert store.models.RuleRun.select().count() == 1
    assert len(store.messages.get(new["id"])["automation"]) == 1


def test_conversations_vanish_or_shrink_and_their_read_marks_follow(store):
    gone = [inbound(store, "lisi %d" % n, user="lisi") for n in range(2)]
    kept_old = inbound(store, "zhangsan old")
    kept_new = inbound(store, "zhangsan new", at=RECENT)
    store.conversations.mark_read("helpdesk", "lisi", gone[-1]["id"])
    store.conversations.mark_read("helpdesk", "zhangsan", kept_old["id"])
    store.takeovers.pause("helpdesk", "lisi", OLD + timedelta(minutes=30))  # ended long ago
    store.takeovers.pause("helpdesk", "zhangsan", NOW + timedelta(minutes=30))
    assert [c["user"] for c in store.conversations.all(now=NOW)] == ["zhangsan", "lisi"]

    result = store.maintenance.prune(CUTOFF)

    assert (result["messages"], result["read_marks"], result["takeovers"]) == (3, 1, 1)
    [conversation] = store.conversations.all(now=NOW)
    assert (conversation["user"], conversation["count"], conversation["unread"]) == ("zhangsan", 1, 1)
    assert conversation["last_id"] == kept_new["id"] and conversation["paused_until"] is not None
    assert [(r.user, r.last_read_id) for r in store.models.ReadMark.select()] == [("zhangsan", kept_old["id"])]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=needs_postgres)])
def test_what_belonged_to_old_messages_and_emptied_conversations_goes_with_them(backend, tmp_path):
    """A 智能机器人's answer goes with the message it answers; notes, assignments and 微信客服 sessions
    go once their conversation has no message left (and they are older than the cut-off); expired
    微信客服 event codes and the nicknames of customers with no session left go too. A conversation
    that keeps a message keeps all of it."""
    if backend == "postgres":
        store = postgres_store()
    else:
        migrated_sqlite(tmp_path)
        store = Store("wecomd.db", base_dir=tmp_path)
    S, N, CS = store.models.BotStream, store.models.Note, store.models.ConversationState
    KS, KC, KU = store.models.KfSession, store.models.KfCode, store.models.KfCustomer
    asked_old = inbound(store, "旧问题", user="lisi", app="assistant")
    asked_new = inbound(store, "新问题", user="wangwu", app="assistant", at=RECENT)
    for row in (asked_old, asked_new):
        store.bot_streams.start("s%d" % row["id"], "assistant", row["id"], OLD, OLD, content="回答 %d" % row["id"],
                                feedback_id="s%d" % row["id"])
    gone_kf, kept_kf = "wkACC/wmGone", "wkACC/wmKept"
    inbound(store, "客户旧消息", user=gone_kf, app="kefu")
    inbound(store, "客户旧消息", user=kept_kf, app="kefu")
    inbound(store, "客户新消息", user=kept_kf, app="kefu", at=RECENT)
    inbound(store, "zhangsan old")  # helpdesk/zhangsan: emptied
    for app, user in (("helpdesk", "zhangsan"), ("kefu", kept_kf)):
        N.create(app=app, user=user, author="admin", text="VIP", created_at=OLD)
        CS.create(app=app, user=user, assignee="alice", state="open", updated_at=OLD)
    N.create(app="helpdesk", user="zhangsan", author="admin", text="written after the cut-off", created_at=RECENT)
    for customer in ("wmGone", "wmKept"):
        KS.create(app="kefu", open_kfid="wkACC", external_userid=customer, service_state=1, updated_at=OLD)
        KU.create(external_userid=customer, nickname="昵称 " + customer, fetched_at=OLD)
    KU.create(external_userid="wmFresh", nickname="刚取到", fetched_at=RECENT)
    KC.create(code="expired", kind="welcome", open_kfid="wkACC", expires_at=OLD, created_at=OLD)
    KC.create(code="live", kind="welcome", open_kfid="wkACC", expires_at=NOW + timedelta(seconds=20), created_at=NOW)

    result = store.maintenance.prune(CUTOFF)

    assert {k: result[k] for k in ("messages", "bot_streams", "notes", "assignments", "kf_sessions", "kf_codes",
                                   "kf_customers")} == dict(messages=4, bot_streams=1, notes=1, assignments=1,
                                                            kf_sessions=1, kf_codes=1, kf_customers=1)
    assert [s.stream_id for s in S.select()] == ["s%d" % asked_new["id"]]
    assert store.bot_streams.feedback("s%d" % asked_old["id"], {"type": 1}, NOW) is None
    assert sorted((n.app, n.user, n.text) for n in N.select()) == [
        ("helpdesk", "zhangsan", "written after the cut-off"), ("kefu", kept_kf, "VIP")]
    assert [(c.app, c.user) for c in CS.select()] == [("kefu", kept_kf)]
    assert [k.external_userid for k in KS.select()] == ["wmKept"]
    assert sorted(k.external_userid for k in KU.select()) == ["wmFresh", "wmKept"]
    assert [c.code for c in KC.select()] == ["live"]
    store.close()


def test_messages_still_in_use_are_kept_whatever_their_age(store):
    pending = outbound(store, "still to send", "pending")
    sent = outbound(store, "delivered", "sent")
    failed = outbound(store, "gave up", "failed")
    downloading = inbound(store, "", msgtype="image", MediaId="MEDIA1")
    webhook = inbound(store, "forwarded")
    store.runs.start(webhook["id"], "helpdesk", "zhangsan", "forward", "webhook", status="pending",
                     url="https://ops.example.com/", payload=b"{}")
    running = inbound(store, "command running")
    store.runs.start(running["id"], "helpdesk", "zhangsan", "backup", "run")

    result = store.maintenance.prune(CUTOFF)

    assert result["messages"] == 2
    assert ids(store) == [pending["id"], downloading["id"], webhook["id"], running["id"]]
    assert sent["id"] not in ids(store) and failed["id"] not in ids(store)
    assert store.outbox.due(NOW)[0]["id"] == pending["id"]
    assert store.messages.get(downloading["id"])["media"]["status"] == "pending"
    assert [r["status"] for r in store.runs.due_webhooks(NOW)] == ["pending"]


def test_prune_returns_the_media_paths_of_deleted_rows_only(store, tmp_path):
    media = tmp_path / "media"
    old_file = with_file(store, media, inbound(store, "", msgtype="image", MediaId="M1"))
    new_file = with_file(store, media, inbound(store, "", msgtype="image", MediaId="M2", at=RECENT), "new.jpg")
    failed = inbound(store, "", msgtype="voice", MediaId="M3")
    store.media.record(failed["id"], "failed", error="errcode 40007")  # no file ever written

    result = store.maintenance.prune(CUTOFF)

    assert result["messages"] == 2
    assert result["media"] == [str(old_file.relative_to(media))]
    assert old_file.exists() and new_file.exists()  # the rows go; the files are the caller's job


def test_prune_runs_in_batches_each_its_own_transaction(store, caplog):
    for n in range(35):
        inbound(store, "old %d" % n)
    recent = inbound(store, "recent", at=RECENT)
    caplog.set_level(logging.DEBUG, logger="peewee")

    result = store.maintenance.prune(CUTOFF, batch=10)

    assert (result["messages"], result["batches"], result["more"]) == (35, 4, False)
    assert ids(store) == [recent["id"]] and fts_ok(store)
    statements = [str(r.msg) for r in caplog.records if r.name == "peewee"]
    assert sum(s.startswith('(\'DELETE FROM "message"') for s in statements) == 4


def test_prune_with_max_batches_stops_and_says_there_is_more(store, tmp_path):
    for n in range(25):
        inbound(store, "old %d" % n)
    other = sqlite3.connect(str(tmp_path / "wecomd.db"))
    counts = []
    while True:
        result = store.maintenance.prune(CUTOFF, batch=10, max_batches=1)
        counts.append(other.execute("SELECT count(*) FROM message").fetchone()[0])  # committed
        if not result["more"]:
            break
    other.close()
    assert counts == [15, 5, 0]
    assert store.maintenance.prune(CUTOFF, batch=10, max_batches=1) == dict(
        dict.fromkeys(COUNTS, 0), media=[], more=False)


def test_prune_takes_aware_times_and_an_empty_database(store):
    assert store.maintenance.prune(datetime.now(timezone.utc))["messages"] == 0
    inbound(store, "old")
    assert store.maintenance.prune(CUTOFF.replace(tzinfo=timezone.utc))["messages"] == 1


# --- the Retention worker ------------------------------------------------------------------------

class Harness(StoreHarness):
    """The store behind the production writer, as Services runs it, and a Retention on a fake clock;
    `calls` names every store call the worker made."""

    def __init__(self, tmp_path, days=30):
        super().__init__(tmp_path)
        self.media, self.days, self.calls = tmp_path / "media", days, []

    async def db(self, fn, *args, **kwargs):
        self.calls.append(getattr(fn, "__name__", fn))
        return await super().db(fn, *args, **kwargs)

    def retention(self, start=True, **options):
        worker = Retention(self.db, self.store, self.media, lambda: self.days, clock=self.clock, **options)
        return self.start(worker, start)

    async def ids(self):
        return await self.db(ids, self.store)


@async_test
async def test_worker_prunes_at_start_removing_files_after_the_rows(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="wecomd.workers.retention")
    async with Harness(tmp_path) as h:
        def media_message(msgtype, name):
            row = inbound(h.store, "", msgtype=msgtype, MediaId=name)
            return with_file(h.store, h.media, row, name)
        photo = await h.db(media_message, "image", "photo.jpg")
        missing = await h.db(media_message, "file", "a.pdf")
        missing.unlink()  # gone already: fine
        old = await h.db(inbound, h.store, "old text")
        pending = await h.db(outbound, h.store, "still to send", "pending")
        recent = await h.db(inbound, h.store, "recent", at=RECENT)

        worker = h.retention()

        async def pruned():
            return await h.ids() == [pending["id"], recent["id"]]
        await h.until(pruned)
        await h.until(lambda: _done(worker))
        assert not photo.exists() and not photo.parent.exists()  # its emptied month folder too
        assert h.media.is_dir()
        assert worker.last["messages"] == 3 and worker.last["files"] == 1
        assert worker.last["cutoff"] == NOW - timedelta(days=30)
        assert old["id"] not in await h.ids()
    assert "retention: deleted 3 message(s) received before 2026-10-29T23:00:00Z" in caplog.text
    assert "1 media file(s)" in caplog.text


@async_test
async def test_worker_prunes_again_when_woken_and_in_batches(tmp_path):
    async with Harness(tmp_path) as h:
        worker = h.retention(batch=10)
        await h.until(lambda: _done(worker))
        assert worker.last["messages"] == 0
        for n in range(35):
            await h.db(inbound, h.store, "old %d" % n)
        h.calls.clear()

        worker.wake()

        async def empty():
            return await h.ids() == []
        await h.until(empty)
        await h.until(lambda: _done(worker, messages=35))
        assert worker.last["batches"] == 4
        # One batch per trip to the db thread: callbacks get stored in between.
        assert h.calls.count("prune") == 4


@async_test
async def test_worker_with_retention_days_0_deletes_nothing(tmp_path):
    async with Harness(tmp_path, days=0) as h:
        await h.db(inbound, h.store, "very old", at=NOW - timedelta(days=3650))
        worker = h.retention()
        await asyncio.sleep(0.2)
        worker.wake()
        await asyncio.sleep(0.2)
        assert len(await h.ids()) == 1
        assert "prune" not in h.calls and worker.last is None


@async_test
async def test_worker_follows_the_clock_and_the_setting(tmp_path):
    async with Harness(tmp_path, days=30) as h:
        row = await h.db(inbound, h.store, "twenty days old", at=NOW - timedelta(days=20))
        worker = h.retention()
        await h.until(lambda: _done(worker))
        assert await h.ids() == [row["id"]]
        h.clock.advance(11 * 86400)
        worker.wake()

        async def gone():
            return await h.ids() == []
        await h.until(gone)


@async_test
async def test_worker_never_deletes_outside_media_dir(tmp_path, caplog):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    async with Harness(tmp_path) as h:
        row = await h.db(inbound, h.store, "", msgtype="image", MediaId="M")
        await h.db(h.store.media.record, row["id"], "stored", path="../precious.txt", size=7)
        worker = h.retention()
        await h.until(lambda: _done(worker, messages=1))
    assert outside.read_text() == "keep me"
    assert "not deleting '../precious.txt': outside media_dir" in caplog.text


async def _done(worker, messages=None):
    last = worker.last
    return last is not None and not last["more"] and (messages is None or last["messages"] == messages)


# --- config and the real daemon ------------------------------------------------------------------

def test_retention_days_option(tmp_path):
    path = write_config(tmp_path)
    assert config.load(path, {}).server.retention_days == 0
    assert config.load(path, {"WECOMD_SERVER_RETENTION_DAYS": "90"}).server.retention_days == 90
    for bad, why in (("-1", "must be 0 or more"), ("30d", "not an integer")):
        problems = config.problems(path, {"WECOMD_SERVER_RETENTION_DAYS": bad})
        assert problems == ["environment WECOMD_SERVER_RETENTION_DAYS: %s (got %r)" % (why, bad)]


def test_serve_prunes_old_messages_at_start(tmp_path):
    store = Store("wecomd.db", base_dir=tmp_path)
    store.migrate()
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    old = inbound(store, "a year ago", at=now - timedelta(days=365))
    new = inbound(store, "yesterday", at=now - timedelta(days=1))
    store.close()
    port = free_port()
    server = ServerProcess(write_config(tmp_path, port, retention_days="30"), port)
    try:
        deadline = time.monotonic() + 10
        while old["id"] in ids(store) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ids(store) == [new["id"]], server.output()
    finally:
        store.close()
        assert server.terminate() == 0


@async_test
async def test_audit_rows_have_their_own_horizon_and_retention_days_never_deletes_them(tmp_path):
    async with Harness(tmp_path, days=30) as h:
        old, recent = NOW - timedelta(days=400), NOW - timedelta(days=10)
        await h.db(h.store.audit.record, "li", "login", at=old)
        await h.db(h.store.audit.record, "li", "reply", at=recent)
        await h.db(inbound, h.store, "old text")
        worker = h.retention()  # messages pruned after 30 days; audit_retention_days 0: kept

        async def pruned():
            return await h.ids() == []
        await h.until(pruned)
        await h.until(lambda: _done(worker))
        rows, _ = await h.db(h.store.audit.page)
        assert [r["action"] for r in rows] == ["reply", "login"]

        audit_days = [365]
        worker = h.retention(audit_days=lambda: audit_days[0])

        async def audit_pruned():
            return [r["action"] for r in (await h.db(h.store.audit.page))[0]] == ["reply"]
        await h.until(audit_pruned)
