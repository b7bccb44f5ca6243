"""`wecomd backup` and store.maintenance.backup: real SQLite files, a real `wecomd serve` taking callbacks meanwhile."""
from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support import ROOT
from support.config import write_config
from support.peer import AES_KEY, CORP_ID, TOKEN
from support.server import ServerProcess, free_port
from wecomd.store import backup as store_backup
from wecomd.wecom.messages import Message
from wecomd.store import Store, StoreError

REPORT = re.compile(r"^backed up to (.+): (.+), (\d+) message\(s\), integrity ok, [0-9.]+ s$")


def wecomd(*args, cwd=None, **popen):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "wecomd", *args]
    if popen:
        return subprocess.Popen(command, env=env, cwd=cwd, **popen)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def fill(store, count, start=0, user="zhangsan", padding=0):
    for n in range(start, start + count):
        content = "第%d条消息 backup test" % n + "x" * padding
        message = Message(msgtype="text", from_user=user, to_user="ww0123", agent_id="1000002",
                          create_time=1764370000 + n, msg_id=str(n), content=content,
                          fields={"Content": content})
        store.messages.save_inbound("helpdesk", message, "helpdesk|%s|%d" % (user, n))


def integrity(path):
    copy = sqlite3.connect(str(path))
    try:
        return ([row[0] for row in copy.execute("PRAGMA integrity_check")],
                copy.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        copy.close()


def contents(path):
    """(id, content) of every message in a database file, read without changing it."""
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return db.execute("SELECT id, content FROM message ORDER BY id").fetchall()
    finally:
        db.close()


@pytest.fixture
def filled(tmp_path):
    """A config and its database with 40 messages; no server."""
    conf = write_config(tmp_path)
    store = Store("wecomd.db", base_dir=tmp_path)
    store.migrate()
    fill(store, 40)
    store.close()
    return conf


# --- while serving -------------------------------------------------------------------------------

@pytest.mark.slow  # backups under load: 300 callbacks
def test_backup_while_the_daemon_takes_callbacks(tmp_path):
    """Backups taken during 300 callbacks are consistent snapshots, and no callback failed."""
    port = free_port()
    server = ServerProcess(write_config(tmp_path, port), port)
    live = tmp_path / "wecomd.db"
    sim_log = tmp_path / "simulate.log"
    try:
        with open(sim_log, "w") as out:
            sim = wecomd("simulate", server.url + "/callback/helpdesk", "--token", TOKEN, "--aes-key",
                         AES_KEY, "--corp-id", CORP_ID, "--no-verify", "--count", "300",
                         "--content", "压力测试 backup", stdout=out, stderr=subprocess.STDOUT)
            backups = []
            try:
                _wait_for(lambda: live.exists() and len(contents(live)) >= 20, "20 messages stored")
                while sim.poll() is None or not backups:
                    before = len(contents(live))
                    target = tmp_path / ("backup-%d.db" % len(backups))
                    result = wecomd("backup", "-c", str(server.config), str(target))
                    assert result.returncode == 0, result.stderr
                    backups.append((target, before, result.stdout.strip()))
            finally:
                assert sim.wait(120) == 0, sim_log.read_text()
        final = contents(live)
    finally:
        assert server.terminate() == 0

    assert "sent 300, ok 300, failed 0" in sim_log.read_text()
    statuses = re.findall(r"^POST text #\d+: (\d+)", sim_log.read_text(), flags=re.M)
    assert statuses == ["200"] * 300
    assert len(final) == 600  # each message, and the app's automatic reply stored with it
    snapshots = []
    for target, before, report in backups:
        match = REPORT.match(report)
        assert match and match.group(1) == str(target), report
        assert integrity(target) == (["ok"], "delete")
        assert not Path(str(target) + "-wal").exists()
        copied = contents(target)
        assert before <= len(copied) <= len(final) and int(match.group(3)) == len(copied)
        assert copied == final[:len(copied)]  # a prefix of the live data: one consistent snapshot
        assert len(copied) % 2 == 0 and copied[-1][1] == "已收到"  # never a message without its reply
        snapshots.append(len(copied))
        copy = Store(str(target))
        try:
            assert copy.messages.count() == len(copied)
            assert len(copy.messages.page(q="压力测试", limit=500)[0]) == len(copied) // 2
        finally:
            copy.close()
    assert sorted(p.name for p in tmp_path.iterdir() if ".partial" in p.name) == []
    # At least one copy was taken mid-stream: the daemon went on storing callbacks after it.
    assert min(snapshots) < 600, snapshots


def test_stepped_backup_is_not_restarted_by_a_busy_writer(tmp_path):
    """One page per step while another connection commits: the copy still ends, one pass, consistent."""
    store = Store("wecomd.db", base_dir=tmp_path)
    store.migrate()
    with store.db.atomic():
        fill(store, 400, padding=3000)  # about 1,300 pages: many steps, with commits in between
    writer = Store("wecomd.db", base_dir=tmp_path)
    stop, written = threading.Event(), []

    def write():
        while not stop.is_set():
            fill(writer, 1, start=1000 + len(written), user="lisi")
            written.append(1)
        writer.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        _wait_for(lambda: len(written) >= 5, "the writer to start")
        result = store.maintenance.backup(tmp_path / "copy.db", pages=1)
    finally:
        stop.set()
        thread.join(30)
    assert result["pages"] > 1000
    assert result["steps"] <= result["pages"] + 1  # never restarted from page one
    assert 400 < result["messages"] < 400 + len(written)
    assert integrity(tmp_path / "copy.db") == (["ok"], "delete")
    store.close()


# --- the command ---------------------------------------------------------------------------------

def test_backup_writes_a_private_checked_file_and_reports_it(filled, tmp_path):
    target = tmp_path / "backups" / "wecomd-2026-11-29.db"
    target.parent.mkdir()
    result = wecomd("backup", "-c", str(filled), str(target))
    assert result.returncode == 0, result.stderr
    match = REPORT.match(result.stdout.strip())
    assert match and match.group(1) == str(target) and match.group(3) == "40"
    assert match.group(2).endswith("KiB")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # messages are private
    assert integrity(target) == (["ok"], "delete")
    assert contents(target) == contents(tmp_path / "wecomd.db")
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp file left


def test_backup_refuses_to_overwrite_without_force(filled, tmp_path):
    target = tmp_path / "old.db"
    target.write_bytes(b"an older backup")
    result = wecomd("backup", "-c", str(filled), str(target))
    assert result.returncode == 1
    assert result.stderr == "wecomd: backup: %s exists; use --force to replace it\n" % target
    assert target.read_bytes() == b"an older backup"

    result = wecomd("backup", "-c", str(filled), str(target), "--force")
    assert result.returncode == 0, result.stderr
    assert len(contents(target)) == 40


def test_backup_relative_file_is_taken_from_the_working_directory(filled, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = wecomd("backup", "-c", str(filled), "copy.db", cwd=str(elsewhere))
    assert result.returncode == 0, result.stderr
    assert len(contents(elsewhere / "copy.db")) == 40


def test_backup_of_a_database_url_other_than_sqlite_is_a_usage_error(tmp_path):
    conf = write_config(tmp_path, database="postgresql://wecomd:pa55word@127.0.0.1:1/wecomd")
    result = wecomd("backup", "-c", str(conf), str(tmp_path / "copy.db"))
    assert result.returncode == 2
    assert "SQLite file only, not a postgresql database" in result.stderr and "pg_dump" in result.stderr
    assert "pa55word" not in result.stderr + result.stdout
    assert not (tmp_path / "copy.db").exists()


def test_backup_onto_the_live_database_is_refused(filled, tmp_path):
    result = wecomd("backup", "-c", str(filled), str(tmp_path / "wecomd.db"), "--force")
    assert result.returncode == 2
    assert "must not be the live database" in result.stderr
    assert len(contents(tmp_path / "wecomd.db")) == 40


def test_backup_without_a_database_fails_and_creates_none(tmp_path):
    conf = write_config(tmp_path)
    result = wecomd("backup", "-c", str(conf), str(tmp_path / "copy.db"))
    assert result.returncode == 1
    assert "no database file to back up" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wecomd.conf"]


@pytest.mark.parametrize("problem", ["is a directory", "no such directory"])
def test_backup_target_problems(filled, tmp_path, problem):
    target = tmp_path if problem == "is a directory" else tmp_path / "missing" / "copy.db"
    result = wecomd("backup", "-c", str(filled), str(target))
    assert result.returncode == 1 and problem in result.stderr


def test_a_damaged_copy_is_never_renamed_into_place(tmp_path, monkeypatch):
    store = Store("wecomd.db", base_dir=tmp_path)
    store.migrate()
    fill(store, 3)

    def damaged(source, path, pages):
        Path(path).write_bytes(b"half a copy")
        raise sqlite3.DatabaseError("the copy fails integrity_check: page 7 is never used")
    monkeypatch.setattr(store_backup, "_backup_into", damaged)
    with pytest.raises(StoreError, match="could not back up the database: the copy fails integrity_check"):
        store.maintenance.backup(tmp_path / "copy.db")
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wecomd.db"]


def _wait_for(condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(0.02)
