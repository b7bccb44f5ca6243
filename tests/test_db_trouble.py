"""Database trouble: while the database cannot take writes (locked by another process, read-only,
disk full) callbacks answer 503 so WeCom retries, /healthz answers 503, and the running daemon
recovers by itself once the trouble ends; nothing acknowledged is lost, nothing stored twice."""
from __future__ import annotations

import asyncio
import errno
import http.client
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import peewee
import pytest

from support.config import write_config
from support.peer import AGENT_ID, CORP_ID, WecomPeer
from support.server import ServerProcess, free_port
from wecomd.store import Store, StoreError
from wecomd.store.health import check_free_space
from wecomd.store.writer import DbWriter

MSGID_BASE = 8_200_000_000_000_000_000
TEXT = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[lisi]]></FromUserName>"
        "<CreateTime>%d</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[消息 %d %s]]>"
        "</Content><MsgId>%d</MsgId><AgentID>%s</AgentID></xml>")


class Client:
    """WeCom's side: numbered text callbacks, and /healthz."""

    def __init__(self, port: int) -> None:
        self.port, self.peer, self.now = port, WecomPeer(), int(time.time())

    def callback(self, i: int, padding: str = "") -> int:
        req = self.peer.callback(TEXT % (CORP_ID, self.now, i, padding, MSGID_BASE + i, AGENT_ID), nonce=str(i + 1))
        return self._request("POST", "/callback/helpdesk?" + req.query, req.body)

    def healthz(self) -> int:
        return self._request("GET", "/healthz")

    def _request(self, method: str, path: str, body=None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()


def stored(db: Path) -> dict:
    """message number -> deliveries, read with a separate connection."""
    conn = sqlite3.connect(str(db))
    try:
        rows = conn.execute("SELECT msg_id, deliveries FROM message WHERE direction = 'in'").fetchall()
    finally:
        conn.close()
    result = {int(msg_id) - MSGID_BASE: deliveries for msg_id, deliveries in rows}
    assert len(result) == len(rows), "a message is stored twice"
    return result


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.1)


def stop(server: ServerProcess) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


# --- the probe ------------------------------------------------------------------------------------

def test_the_write_probe_fails_on_a_read_only_connection_and_changes_nothing(tmp_path):
    store = Store(str(tmp_path / "probe.db"))
    store.migrate()
    path = tmp_path / "probe.db"
    with sqlite3.connect(str(path)) as conn:
        before = list(conn.iterdump())
    store.health.check_writable()
    store.db.execute_sql("PRAGMA query_only = 1")  # as if the file or the filesystem were read-only
    store.health.ping()  # reading still works: a read-only probe would say "healthy"
    with pytest.raises(StoreError, match="readonly"):
        store.health.check_writable()
    store.db.execute_sql("PRAGMA query_only = 0")
    store.health.check_writable()
    store.close()
    with sqlite3.connect(str(path)) as conn:
        assert list(conn.iterdump()) == before
        assert conn.execute("PRAGMA application_id").fetchone()[0] == 0


def test_the_free_space_check_names_the_directory(tmp_path):
    check_free_space(str(tmp_path / "x.db"), minimum=1)
    with pytest.raises(OSError) as info:
        check_free_space(str(tmp_path / "x.db"), minimum=1 << 62)
    assert info.value.errno == errno.ENOSPC and str(tmp_path) in str(info.value)


# --- locked ---------------------------------------------------------------------------------------

def test_a_locked_database_fails_a_whole_batch_after_one_busy_timeout(tmp_path):
    path = tmp_path / "w.db"
    database = peewee.SqliteDatabase(str(path), pragmas={"journal_mode": "wal", "busy_timeout": 300})
    writer = DbWriter(database, lambda exc: StoreError(str(exc)))

    def insert(value):
        database.execute_sql("INSERT INTO t (v) VALUES (?)", (value,))
        return value

    async def calls(values):
        return await asyncio.gather(*(writer.run(insert, v) for v in values), return_exceptions=True)

    try:
        asyncio.run(writer.run(lambda: database.execute_sql("CREATE TABLE t (v INTEGER)"), alone=True))
        locker = sqlite3.connect(str(path), timeout=0.1, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        results = asyncio.run(calls(range(20)))
        elapsed = time.monotonic() - started
        assert all(isinstance(r, StoreError) and "locked" in str(r) for r in results), results
        assert elapsed < 1.5, "%.1fs: the lock was waited for once per call, not once per batch" % elapsed
        locker.execute("ROLLBACK")
        locker.close()
        assert asyncio.run(calls(range(3))) == [0, 1, 2]
    finally:
        writer.close()


def test_the_writer_waits_for_another_processs_write_lock_and_keeps_busy_timeout_for_the_rest(tmp_path):
    """The writer waits for the write lock itself (DbWriter._begin_immediate: short tries, not
    SQLite's busy handler): a batch queued while another connection holds the lock runs once it is
    let go, each call once, and the connection's busy_timeout is in force again inside the batch and
    for the calls run alone (the migrations, a backup, a checkpoint)."""
    path = tmp_path / "w.db"
    database = peewee.SqliteDatabase(str(path), pragmas={"journal_mode": "wal", "busy_timeout": 4000})
    writer = DbWriter(database, lambda exc: StoreError(str(exc)))

    def insert(value):
        database.execute_sql("INSERT INTO t (v) VALUES (?)", (value,))
        return value, database.execute_sql("PRAGMA busy_timeout").fetchone()[0]

    async def queued_while_locked(locker):
        calls = [asyncio.ensure_future(writer.run(insert, v)) for v in range(5)]
        await asyncio.sleep(0.3)
        assert not any(call.done() for call in calls)  # waiting for the lock, not failed
        locker.execute("COMMIT")
        return await asyncio.gather(*calls)

    try:
        asyncio.run(writer.run(lambda: database.execute_sql("CREATE TABLE t (v INTEGER)"), alone=True))
        locker = sqlite3.connect(str(path), timeout=0.1, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        locker.execute("INSERT INTO t (v) VALUES (100)")
        assert asyncio.run(queued_while_locked(locker)) == [(v, 4000) for v in range(5)]
        alone = asyncio.run(writer.run(lambda: database.execute_sql("PRAGMA busy_timeout").fetchone()[0], alone=True))
        assert alone == 4000
        assert sorted(v for (v,) in locker.execute("SELECT v FROM t")) == [0, 1, 2, 3, 4, 100]
        locker.close()
    finally:
        writer.close()


@pytest.mark.slow  # waits out the 5 s busy_timeout twice
def test_a_locked_database_answers_503_then_recovers_by_itself(tmp_path):
    port = free_port()
    server = ServerProcess(write_config(tmp_path, port), port)
    client, db = Client(port), tmp_path / "wecomd.db"
    try:
        assert client.callback(0) == 200
        # Another process takes the write lock and keeps it past busy_timeout (5 s).
        locker = sqlite3.connect(str(db), timeout=0.1, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        answers: dict = {}
        started = time.monotonic()
        threads = [threading.Thread(target=lambda: answers.__setitem__("callback", client.callback(1))),
                   threading.Thread(target=lambda: answers.__setitem__("healthz", client.healthz()))]
        for t in threads:
            t.start()
            time.sleep(0.2)
        for t in threads:
            t.join(30)
        assert answers == {"callback": 503, "healthz": 503}
        assert time.monotonic() - started < 14  # one busy_timeout per batch, not one per call
        locker.execute("ROLLBACK")
        locker.close()

        assert client.healthz() == 200
        assert client.callback(1) == 200  # WeCom's retry
        assert client.callback(2) == 200
        assert stored(db) == {0: 1, 1: 1, 2: 1}
        assert "database is locked" in server.output()
        assert server.terminate() == 0
    finally:
        stop(server)


# --- disk full ------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs: a disk that can really fill up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % (result.stderr.strip() or result.returncode))
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write `path` until the filesystem has no block left."""
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def test_a_full_disk_answers_503_then_recovers_when_space_is_freed(tmp_path, small_disk):
    port, db = free_port(), small_disk / "wecomd.db"
    server = ServerProcess(write_config(tmp_path, port, database=str(db)), port)
    client, pid = Client(port), server.proc.pid
    acknowledged, refused = set(), []
    try:
        for i in range(20):
            assert client.callback(i) == 200
            acknowledged.add(i)
        fill(small_disk / "filler")
        # SQLite may still fit a few messages into WAL space it already has; then commits fail.
        for i in range(20, 400):
            status = client.callback(i, padding="填" * 300)
            assert status in (200, 503), status
            (acknowledged.add(i) if status == 200 else refused.append(i))
            if len(refused) == 3:
                break
        assert len(refused) == 3, "writes never failed on a full disk"
        assert client.healthz() == 503
        assert "database or disk is full" in server.output()

        (small_disk / "filler").unlink()
        wait_for(lambda: client.healthz() == 200, 10, "/healthz to recover")
        for i in refused:  # WeCom's retries
            assert client.callback(i) == 200
        assert client.callback(1000) == 200
        assert server.proc.poll() is None and server.proc.pid == pid  # recovered without a restart
        rows = stored(db)
        assert acknowledged <= set(rows), "acknowledged but lost: %s" % sorted(acknowledged - set(rows))
        assert set(rows) == acknowledged | set(refused) | {1000}
        assert all(rows[i] == 1 for i in rows)  # a refused message had not been stored
        assert server.terminate() == 0
        with sqlite3.connect(str(db)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        stop(server)
