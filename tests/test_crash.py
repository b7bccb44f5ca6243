"""Crash safety: `wecomd serve` SIGKILLed in the middle of the work, then restarted on the same
database.

- Callbacks: a few hundred distinct messages from several keep-alive clients that record exactly
  which requests got a 200; SIGKILL at a random point; every acknowledged message is in the
  database as the crash left it, none twice; WeCom's retries after the restart are deduplicated
  (deliveries go up, no new rows).
- Outbox: replies left pending by a crash are sent after the restart, each exactly once; a crash
  in the middle of sending repeats at most the one message WeCom had accepted but wecomd had not
  yet marked sent (the window documented in wecomd/workers/outbox.py).
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from support.config import API_TOKEN, kf_app_section, write_config
from support.peer import AGENT_ID, CORP_ID, WecomPeer
from support.server import ServerProcess, free_port
from wecomd.wecom import sandbox

pytestmark = pytest.mark.slow  # SIGKILL under load, restarts: about a minute

MSGID_BASE = 8_100_000_000_000_000_000
TEXT = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[user%d]]></FromUserName>"
        "<CreateTime>%d</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[crash test %d]]>"
        "</Content><MsgId>%d</MsgId><AgentID>%s</AgentID></xml>")


def make_callbacks(count: int) -> list:
    peer, now = WecomPeer(), int(time.time())
    return [peer.callback(TEXT % (CORP_ID, i % 17, now, i, MSGID_BASE + i, AGENT_ID), nonce=str(500000 + i))
            for i in range(count)]


def post(conn: http.client.HTTPConnection, req) -> int:
    conn.request("POST", "/callback/helpdesk?" + req.query, body=req.body, headers={"Content-Type": "text/xml"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def drive(port: int, callbacks: list, indices, workers: int, on_ok=lambda n: None) -> tuple:
    """Send callbacks[i] for each i of `indices` from `workers` keep-alive connections.

    Returns (statuses, unanswered): the HTTP status of every request that got a complete answer,
    and the requests whose connection broke before the answer (their outcome is unknown).
    """
    todo, lock = iter(list(indices)), threading.Lock()
    statuses, unanswered = {}, set()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                try:
                    status = post(conn, callbacks[i])
                except (OSError, http.client.HTTPException):
                    with lock:
                        unanswered.add(i)
                    return  # the server is gone: this client stops, as WeCom's request would time out
                with lock:
                    statuses[i] = status
                    acked = sum(1 for s in statuses.values() if s == 200) if status == 200 else None
                if acked is not None:
                    on_ok(acked)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return statuses, unanswered


def stored(db: Path) -> dict:
    """msg_id -> deliveries, read straight from the database file (SQLite recovers the WAL)."""
    conn = sqlite3.connect(str(db))
    try:
        rows = conn.execute("SELECT msg_id, deliveries FROM message WHERE direction = 'in'").fetchall()
        keys, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT dedup_key) FROM message "
                                      "WHERE direction = 'in'").fetchone()
    finally:
        conn.close()
    assert keys == distinct == len(rows)
    result = {int(msg_id) - MSGID_BASE: deliveries for msg_id, deliveries in rows}
    assert len(result) == len(rows), "a message is stored twice"
    return result


def test_sigkill_under_load_loses_no_acknowledged_message_and_retries_are_deduplicated(tmp_path):
    count, workers = 360, 8
    seed = int(os.environ.get("WECOMD_CRASH_SEED", random.randrange(1 << 30)))
    kill_at = random.Random(seed).randrange(count // 5, count * 3 // 4)
    callbacks = make_callbacks(count)
    port = free_port()
    server = ServerProcess(write_config(tmp_path, port), port)
    killed = threading.Event()

    def maybe_kill(acked: int) -> None:
        if acked >= kill_at and not killed.is_set():
            killed.set()
            server.proc.kill()  # SIGKILL: no drain, no close, in the middle of the traffic

    try:
        statuses, unanswered = drive(port, callbacks, range(count), workers, maybe_kill)
        server.proc.wait(10)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    context = "seed %d (WECOMD_CRASH_SEED), kill after %d acks" % (seed, kill_at)
    assert killed.is_set(), context
    acked = {i for i, s in statuses.items() if s == 200}
    assert len(acked) >= kill_at and set(statuses.values()) == {200}, context
    sent = acked | unanswered
    assert len(sent) < count, "the kill came too late to cut the traffic: " + context

    before = stored(tmp_path / "wecomd.db")
    assert acked <= set(before), "acknowledged but lost: %s; %s" % (sorted(acked - set(before)), context)
    assert set(before) <= sent and set(before) - acked <= unanswered, context
    assert set(before.values()) == {1}, context

    # Restart on the same database; WeCom retries everything it sent (and sends the rest).
    server = ServerProcess(server.config, port)
    try:
        statuses, unanswered = drive(port, callbacks, range(count), workers)
        assert not unanswered and set(statuses.values()) == {200} and len(statuses) == count, context
        after = stored(tmp_path / "wecomd.db")
        assert set(after) == set(range(count)), context
        for i in range(count):
            assert after[i] == (2 if i in before else 1), (i, after[i], context)
        assert server.terminate() == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


# --- the outbox -----------------------------------------------------------------------------------

class SandboxThread:
    """The sandbox WeCom API on its own event loop in a thread of this process, on a chosen port."""

    def __init__(self, port: int) -> None:
        self.fake = sandbox.FakeWecom()
        self.port, self._ready = port, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "SandboxThread":
        self._thread.start()
        assert self._ready.wait(10), "the sandbox did not start"
        return self

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.server, _ = self.loop.run_until_complete(sandbox.start(self.fake, port=self.port))
        self._ready.set()
        self.loop.run_forever()
        self.server.stop()
        self.loop.close()

    def stop(self) -> None:
        if self._ready.is_set():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def sent_contents(self) -> list:
        return [m["text"]["content"] for m in list(self.fake.sent)]


def submit(port: int, content: str) -> list:
    """POST /api/messages as a script; the ids of the stored (pending) rows."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/api/messages", body=json.dumps({"app": "helpdesk", "to_user": "zhangsan",
                                                               "msgtype": "text", "content": content}),
                     headers={"Authorization": "Bearer " + API_TOKEN, "Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 201, body
    return body.get("parts") or [body["id"]]


def outbound(db: Path) -> dict:
    conn = sqlite3.connect(str(db))
    try:
        return dict(conn.execute("SELECT id, status FROM message WHERE direction = 'out'").fetchall())
    finally:
        conn.close()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def test_pending_replies_are_sent_exactly_once_after_a_crash(tmp_path):
    api_port, port = free_port(), free_port()
    # Nothing listens on api_port yet: every send fails (network error) and the rows stay pending.
    server = ServerProcess(write_config(tmp_path, port, api_base="http://127.0.0.1:%d" % api_port), port)
    fake = None
    try:
        contents = ["回复 %d" % i for i in range(5)] + ["长" * 1000]  # the last is 3000 bytes: two parts
        ids = [i for content in contents for i in submit(port, content)]
        assert len(ids) == 7
        wait_until(lambda: "send id=" in server.output(), 5, "a failed send attempt")
        server.proc.kill()
        server.proc.wait(10)
        assert set(outbound(tmp_path / "wecomd.db").values()) == {"pending"}

        fake = SandboxThread(api_port).start()  # WeCom becomes reachable only now
        server = ServerProcess(server.config, port)
        wait_until(lambda: set(outbound(tmp_path / "wecomd.db").values()) == {"sent"}, 15, "all sent")
        time.sleep(1.5)  # more than one poll interval: nothing is sent again
        sent = fake.sent_contents()
        assert len(sent) == len(ids) == len(set(sent)), sent
        # Rows that failed at different moments come due at different moments: no order between
        # replies is promised, but the parts of one reply go out in order.
        parts = [c for c in sent if c.startswith("长")]
        assert sorted(c for c in sent if not c.startswith("长")) == contents[:5] and "".join(parts) == contents[5]
        assert server.terminate() == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        if fake is not None:
            fake.stop()


class KillOnAccept(list):
    """fake.sent that SIGKILLs wecomd the moment the sandbox accepts message number `at`: WeCom has
    it, but wecomd never learns so and cannot mark it sent."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.proc = at, None

    def append(self, item) -> None:
        super().append(item)
        if len(self) == self.at and self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)  # dead before the sandbox answers


@pytest.mark.parametrize("duplicate_check", [False, True], ids=["plain", "duplicate-check"])
def test_a_crash_while_sending_repeats_only_the_message_wecom_accepted_unmarked(tmp_path, duplicate_check):
    """Without [wecom] duplicate_check_interval, the one message WeCom accepted but wecomd had not
    marked is sent again after the restart; with it, WeCom drops that resend: none delivered twice."""
    api_port, port = free_port(), free_port()
    fake = SandboxThread(api_port).start()
    fake.fake.sent = accepted = KillOnAccept(at=8)
    wecom = "duplicate_check_interval = 600" if duplicate_check else ""
    config = write_config(tmp_path, port, api_base="http://127.0.0.1:%d" % api_port, wecom=wecom)
    server = ServerProcess(config, port)
    try:
        accepted.proc = server.proc
        # One long reply: all its parts are committed as pending before the first is sent.
        ids = submit(port, "\n".join("第 %02d 段 " % i + "字" * 600 for i in range(20)))
        assert len(ids) == 20
        server.proc.wait(10)
        statuses = outbound(tmp_path / "wecomd.db")
        assert [statuses[i] for i in ids] == ["sent"] * 7 + ["pending"] * 13  # the 8th: accepted, not marked

        server = ServerProcess(server.config, port)
        wait_until(lambda: set(outbound(tmp_path / "wecomd.db").values()) == {"sent"}, 15, "all sent")
        time.sleep(1.5)  # more than one poll interval: nothing more is sent
        parts = ["第 %02d 段 " % i + "字" * 600 for i in range(20)]
        if duplicate_check:
            assert fake.sent_contents() == parts  # each delivered once, in order
            assert [m["text"]["content"] for m in fake.fake.suppressed] == [parts[7]]  # the resend
            assert all(m["enable_duplicate_check"] == 1 and m["duplicate_check_interval"] == 600
                       for m in fake.fake.sent)
        else:
            assert fake.sent_contents() == parts[:8] + parts[7:]  # in order; only the unmarked one twice
            assert fake.fake.suppressed == [] and "enable_duplicate_check" not in fake.fake.sent[0]
        assert server.terminate() == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        fake.stop()


# --- 微信客服: a pull killed between pages ---------------------------------------------------------

KF_APP = kf_app_section()


class KillOnSync:
    """The sandbox's kf/sync_msg, which SIGKILLs wecomd when call number `at` arrives, before it is
    answered: the pages before it were stored, the one asked for never reaches wecomd. Both of its
    processes die: the pull process that asked (the pid its lease in `db` names) and the daemon."""

    def __init__(self, kf, at: int, db: Path) -> None:
        self.sync, self.at, self.calls, self.proc, self.db = kf.sync_msg, at, [], None, db
        self.pull_pid = None
        kf.sync_msg = self

    def __call__(self, body: dict) -> dict:
        self.calls.append(dict(body))
        if len(self.calls) == self.at and self.proc is not None:
            conn = sqlite3.connect(str(self.db))
            try:
                (owner,) = conn.execute("SELECT lease_owner FROM kf_cursor WHERE open_kfid = ?", (KFID,)).fetchone()
            finally:
                conn.close()
            self.pull_pid = int(owner.split(":")[-2])  # host:pid:random
            os.kill(self.pull_pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(10)
        return self.sync(body)


def kf_stored(db: Path) -> tuple:
    """(the msgids stored as messages, the msgids of the pages kept and not stored yet, the cursor)."""
    conn = sqlite3.connect(str(db))
    try:
        msgids = [row[0] for row in conn.execute("SELECT msg_id FROM message WHERE app = 'kefu' AND direction = 'in' ORDER BY id")]
        kept = [item["msgid"] for (items,) in conn.execute("SELECT items FROM kf_page ORDER BY id")
                for item in json.loads(items)]
        cursor = conn.execute("SELECT cursor FROM kf_cursor WHERE open_kfid = ?", (KFID,)).fetchone()
    finally:
        conn.close()
    return msgids, kept, cursor[0] if cursor else None


KFID = "wkCrash01"


def test_a_kf_pull_killed_between_pages_resumes_from_the_stored_cursor(tmp_path):
    """2,500 kf messages waiting (three pages); wecomd (the daemon and its pull process) is SIGKILLed as
    it asks for the third page, while it stores the first two as messages. Each page was kept with its cursor in one transaction; the
    restart stores the rest of the kept pages, its startup pull resumes from that cursor, and in the
    end each message is stored exactly once."""
    from wecomd.kf.pull import LIMIT
    from wecomd.wecom.sandbox_kf import _cursor
    from wecomd.wecom.simulate_kf import callback_plaintext

    api_port, port = free_port(), free_port()
    fake = SandboxThread(api_port).start()
    killer = KillOnSync(fake.fake.kf, at=3, db=tmp_path / "wecomd.db")
    server = ServerProcess(write_config(tmp_path, port, api_base="http://127.0.0.1:%d" % api_port, extra=KF_APP), port)
    try:
        killer.proc = server.proc
        kf = fake.fake.kf
        kf.add_account(KFID, "售后")
        pushed = [kf.push(KFID, "wmCustomer%03d" % (i % 40), "积压 %d" % i) for i in range(2500)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        req = WecomPeer().callback(callback_plaintext(CORP_ID, KFID, pushed[-1][1]))
        conn.request("POST", "/callback/kefu?" + req.query, body=req.body, headers={"Content-Type": "text/xml"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"")
        server.proc.wait(20)  # killed by the sandbox as the third page is asked for
        assert killer.pull_pid not in (None, server.proc.pid)  # the pull ran in a process of its own
        assert [c.get("cursor") for c in killer.calls] == [None, _cursor(KFID, LIMIT), _cursor(KFID, 2 * LIMIT)]
        msgids, kept, cursor = kf_stored(tmp_path / "wecomd.db")
        # Two pages were kept with their cursor; the kill came while they were being stored as
        # messages, a slice at a time: what is stored (each once) and what is kept cover the cursor.
        assert cursor == _cursor(KFID, 2 * LIMIT)
        assert len(msgids) == len(set(msgids)) < 2 * LIMIT and kept, (len(msgids), len(kept))
        assert set(msgids) | set(kept) == {item["msgid"] for item, _ in pushed[:2 * LIMIT]}

        killer.proc = None
        server = ServerProcess(server.config, port)  # no callback: the startup pull catches up
        wait_until(lambda: len(kf_stored(tmp_path / "wecomd.db")[0]) >= 2500, 30, "all 2,500 pulled")
        assert killer.calls[3].get("cursor") == cursor  # resumed where the crash left it
        msgids, kept, cursor = kf_stored(tmp_path / "wecomd.db")
        assert sorted(msgids) == sorted(item["msgid"] for item, _ in pushed) and kept == []  # each exactly once
        assert cursor == _cursor(KFID, 2500)
        assert server.terminate() == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        fake.stop()
