"""`wecomd doctor` as an operator runs it: the real CLI in a subprocess, a real SQLite file, the sandbox
WeCom API on a loopback port, and a real `wecomd serve` that records the callback failures it answers."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from playhouse import migrations
from playhouse.schema_diff import diff_models

from support import ROOT
from support.base import WecomdTestCase
from support.config import API_TOKEN, APP_SECRET, kf_app_section, write_config
from support.peer import AES_KEY, CORP_ID, TOKEN, WecomPeer
from support.server import ServerProcess, free_port
from wecomd import failures
from wecomd.wecom import sandbox
from wecomd.wecom import samples
from wecomd.failures import FailureRecorder
from wecomd.store import MIGRATIONS_DIR, Store
from wecomd.store.intake import Journal, journal_path
from wecomd.store.times import iso, utcnow

EGRESS_IP = "203.0.113.7"  # what the sandbox tells callers their address is (TEST-NET-3)
SECRETS = (APP_SECRET, TOKEN, AES_KEY, API_TOKEN, "test-cookie-secret-0123456789abcdef0123")


class FakeWecomThread:
    """The sandbox WeCom API (with its /ip echo) served from a thread of its own, so that a doctor
    subprocess can call it while the test waits."""

    def __init__(self) -> None:
        self.fake = sandbox.FakeWecom(apps={APP_SECRET: CORP_ID})
        self.fake.egress_ip = EGRESS_IP
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.server, self.url = self.loop.run_until_complete(sandbox.start(self.fake))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, name="fake-wecom", daemon=True)
        self.thread.start()
        assert started.wait(10), "the sandbox WeCom API did not start"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def wecom():
    api = FakeWecomThread()
    yield api
    api.stop()


def deployment(directory: Path, api_base: str, port: int = 0, ip_echo_url: str = "", extra: str = "") -> Path:
    """A config with a migrated SQLite file and a media directory, as after a first `wecomd serve`."""
    path = write_config(directory, port, api_base=api_base, extra=extra)
    text = path.read_text(encoding="utf-8").replace(
        "api_base = %s" % api_base, "api_base = %s\nip_echo_url = %s" % (api_base, ip_echo_url))
    path.write_text(text, encoding="utf-8")
    store = Store(str(directory / "wecomd.db"))
    store.migrate()
    store.close()
    (directory / "media").mkdir(exist_ok=True)
    return path


@pytest.fixture
def conf(tmp_path, wecom):
    return deployment(tmp_path, wecom.url, ip_echo_url=wecom.url + "/ip")


def doctor(conf: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "wecomd", "doctor", "-c", str(conf), "--timeout", "5", *args],
        capture_output=True, text=True, timeout=120, cwd=str(conf.parent),
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return result


def assert_no_secret(result: subprocess.CompletedProcess, *more: str, issued=()) -> None:
    output = result.stdout + result.stderr
    for secret in (*SECRETS, *more, *issued):
        assert secret not in output, "a secret is in the output"


def line(result: subprocess.CompletedProcess, start: str) -> str:
    found = [text for text in result.stdout.splitlines() if text.startswith(start)]
    assert found, "no line starting with %r in:\n%s" % (start, result.stdout)
    return found[0]


# --- the checks ---------------------------------------------------------------------------------

@pytest.fixture
def kf_conf(tmp_path, wecom):
    def make(extra: str = "") -> Path:
        return deployment(tmp_path, wecom.url, ip_echo_url=wecom.url + "/ip", extra=kf_app_section(APP_SECRET, extra))
    return make


def _stamp(minutes_ago: float) -> str:
    """A time as peewee stores it in SQLite: naive UTC."""
    return (utcnow() - timedelta(minutes=minutes_ago)).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_doctor_reports_each_kf_pull_and_what_waits_in_it(conf, wecom):
    host = socket.gethostname()
    with sqlite3.connect(str(conf.parent / "wecomd.db")) as db:
        insert = ("INSERT INTO kf_cursor (open_kfid, app, cursor, token, token_at, pending, lease_owner, lease_until, "
                  "pulled_at, updated_at) VALUES (?, 'kefu', ?, 'tok', ?, ?, ?, ?, ?, ?)")
        db.execute(insert, ("wkIdle", "c1", _stamp(2), 0, None, None, _stamp(1), _stamp(1)))
        db.execute(insert, ("wkStuck", "c2", _stamp(10), 1, None, None, _stamp(30), _stamp(10)))
        db.execute(insert, ("wkRecent", "c3", _stamp(0.5), 1, None, None, _stamp(30), _stamp(0.5)))
        db.execute(insert, ("wkDead", "c4", _stamp(3), 1, "%s:%d:abcd" % (host, _dead_pid()), _stamp(-1), _stamp(3),
                            _stamp(1)))
        db.execute(insert, ("wkLive", "c5", _stamp(1), 0, "%s:%d:abcd" % (host, os.getpid()), _stamp(-1), _stamp(2),
                            _stamp(0)))
        db.execute(insert, ("wkKept", "c6", _stamp(20), 0, None, None, _stamp(20), _stamp(20)))
        for open_kfid in ("wkLive", "wkLive", "wkKept"):
            db.execute("INSERT INTO kf_page (app, open_kfid, items, created_at) VALUES ('kefu', ?, '[]', ?)",
                       (open_kfid, _stamp(1)))
    result = doctor(conf)
    assert result.returncode == 0, result.stdout + result.stderr  # warnings only
    assert "last pulled" in line(result, "ok    kf-pull:wkIdle") and "nothing kept to store" in result.stdout
    stuck = line(result, "warn  kf-pull:wkStuck")
    assert "a callback rang at" in stuck and "no pull has covered it since" in stuck
    assert "a callback rang at" in line(result, "ok    kf-pull:wkRecent")  # 30 s ago: its pull is due, not stale
    assert "is gone" in line(result, "warn  kf-pull:wkDead")
    live = line(result, "info  kf-pull:wkLive")
    assert "being pulled now (process %d)" % os.getpid() in live and "2 page(s) kept" in live
    assert "1 page(s) kept and not stored as messages yet, and no pull is running" in line(result, "warn  kf-pull:wkKept")


def test_doctor_reports_what_waits_in_the_intake_journal(conf, wecom):
    database = str(conf.parent / "wecomd.db")
    journal = Journal(journal_path(database))
    generation = journal.open()
    for n in range(3):
        journal.append("app", "helpdesk", "<xml>%d</xml>" % n, iso(utcnow()))
    journal.close()

    def applied(seq: int) -> None:
        with sqlite3.connect(database) as db:
            db.execute("INSERT OR REPLACE INTO intake_applied (journal, seq) VALUES (?, ?)", (generation, seq))

    applied(1)
    assert "2 callback(s) recorded and not applied to the database yet" in line(doctor(conf), "info  intake")
    with sqlite3.connect(journal_path(database)) as db:  # the same two, recorded 10 minutes ago
        db.execute("UPDATE entry SET at = ?", (iso(utcnow() - timedelta(minutes=10)),))
    stale = doctor(conf)
    assert stale.returncode == 0
    assert "2 callback(s) recorded and not applied" in line(stale, "warn  intake")
    assert "cannot be applied" in stale.stdout
    applied(3)
    assert "nothing waits to be applied (3 entries kept, applied)" in line(doctor(conf), "ok    intake")


def test_kf_lists_the_accounts_the_app_may_manage(kf_conf, wecom):
    wecom.fake.kf.add_account("wkSales01", "售前咨询")
    wecom.fake.kf.add_account("wkAfter02", "售后客服")
    wecom.fake.kf.add_account("wkManual03", "人工号", manage_privilege=False)
    result = doctor(kf_conf())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 微信客服 account(s) served: wkSales01 (售前咨询), wkAfter02 (售后客服)" in line(result, "ok    kf:kefu")
    assert "wkManual03 人工号 (not 通过API管理: cannot be served)" in result.stdout
    assert_no_secret(result, issued=wecom.fake.tokens)


def test_kf_explains_an_app_not_enrolled_for_kf(kf_conf, wecom):
    wecom.fake.fail_next("/cgi-bin/kf/account/list", 48002, "api forbidden")
    result = doctor(kf_conf())
    assert result.returncode == 1
    assert "kf/account/list: errcode 48002" in line(result, "FAIL  kf:kefu")
    assert "微信客服 → 可调用接口的应用: add this self-built app there" in result.stdout


def test_kf_explains_a_refused_secret_as_the_system_apps(kf_conf, wecom):
    result = doctor(kf_conf(), env={"WECOMD_APP_KEFU_SECRET": "the-kf-system-apps-own-secret"})
    assert result.returncode == 1
    assert "errcode 40001" in line(result, "FAIL  kf:kefu")
    assert "Since 2023-12-01 the 微信客服 system app's own secret no longer works" in result.stdout
    assert_no_secret(result, "the-kf-system-apps-own-secret")


def test_kf_accounts_not_under_api_management_fail(kf_conf, wecom):
    wecom.fake.kf.add_account("wkManual03", "人工号", manage_privilege=False)
    result = doctor(kf_conf("kf_accounts = wkGone99"))
    assert result.returncode == 1
    assert "kf_accounts names wkGone99, which this app may not manage" in line(result, "FAIL  kf:kefu")
    assert "通过API管理" in result.stdout
    result = doctor(kf_conf())
    assert "no 微信客服 account this app may serve (1 listed)" in line(result, "warn  kf:kefu")

def test_a_healthy_deployment_passes_with_exit_0(conf, wecom):
    result = doctor(conf)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "warn" not in result.stdout, result.stdout
    assert "loads; apps: helpdesk, quiet" in line(result, "ok    config")
    assert "quick_check ok" in result.stdout and "journal_mode wal" in result.stdout
    schema = [text for text in result.stdout.splitlines() if "migrations applied" in text][0]
    done, known = schema.split("schema: ")[1].split(" migrations")[0].split(" of ")
    assert schema.startswith("ok") and done == known
    assert "gettoken: access token received (corp_id %s" % CORP_ID in line(result, "ok    wecom:helpdesk")
    assert line(result, "skip  wecom:quiet").endswith("no secret: replies through the API and media download are off")
    assert "%s (from %s/ip)" % (EGRESS_IP, wecom.url) in line(result, "ok    egress-ip")
    assert "no verification or callback failure recorded" in line(result, "ok    failures")
    assert result.stdout.rstrip().endswith("no check failed")
    assert_no_secret(result, issued=wecom.fake.tokens)


def test_json_output(conf, wecom):
    result = doctor(conf, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["egress_ip"] == EGRESS_IP and report["failures"] == []
    assert {check["status"] for check in report["checks"]} <= {"ok", "skip"}
    assert {"config", "database", "media", "wecom:helpdesk", "wecom:quiet", "egress-ip", "failures",
            "contacts"} == \
        {check["name"] for check in report["checks"]}
    assert_no_secret(result, issued=wecom.fake.tokens)


def test_a_wrong_secret_is_explained_as_40001_and_fails(conf, wecom):
    wrong = "a-reset-secret-that-wecom-no-longer-knows"
    result = doctor(conf, env={"WECOMD_APP_HELPDESK_SECRET": wrong})
    assert result.returncode == 1
    failed = line(result, "FAIL  wecom:helpdesk")
    assert "gettoken: errcode 40001 (invalid credential)" in failed
    # which secret was tried, without showing it
    assert "secret of %d characters from environment WECOMD_APP_HELPDESK_SECRET" % len(wrong) in failed
    assert "what to do: the app's secret is wrong or was reset: copy it again into [app:helpdesk] secret" \
        in result.stdout
    assert result.stdout.rstrip().endswith("1 check(s) failed, 0 warning(s)")
    assert_no_secret(result, wrong)


def test_an_untrusted_ip_is_explained_as_60020_with_the_address_to_add(conf, wecom):
    wecom.fake.trusted_ips = {"198.51.100.1"}
    result = doctor(conf)
    assert result.returncode == 1
    assert "gettoken: errcode 60020 (not allow to access from your ip)" in line(result, "FAIL  wecom:helpdesk")
    assert ("what to do: add %s (the address WeCom saw) to this app's trusted IPs: 应用管理 → the app → "
            "企业可信IP" % EGRESS_IP) in result.stdout
    assert "%s (from %s/ip); list it in each app's trusted IPs" % (EGRESS_IP, wecom.url) in line(result, "ok    egress-ip")
    assert_no_secret(result)


def test_without_an_ip_echo_service_the_address_comes_from_wecoms_60020(conf, wecom):
    wecom.fake.trusted_ips = set()
    result = doctor(conf, env={"WECOMD_WECOM_IP_ECHO_URL": ""})
    assert result.returncode == 1
    assert line(result, "ok    egress-ip").startswith("ok    egress-ip        %s (as WeCom saw it)" % EGRESS_IP)
    report = json.loads(doctor(conf, "--json", env={"WECOMD_WECOM_IP_ECHO_URL": ""}).stdout)
    assert report["egress_ip"] == EGRESS_IP and report["ok"] is False


def test_an_unreachable_api_base_is_a_clear_network_error(tmp_path):
    closed = "http://127.0.0.1:%d" % free_port()
    conf = deployment(tmp_path, closed, ip_echo_url=closed + "/ip")
    result = doctor(conf)
    assert result.returncode == 1
    failed = line(result, "FAIL  wecom:helpdesk")
    assert failed.startswith("FAIL  wecom:helpdesk   gettoken via %s: network error: " % closed), failed
    assert "Connection refused" in failed
    assert ("what to do: WeCom could not be reached at [wecom] api_base: check DNS, the firewall and any proxy"
            in result.stdout)
    assert line(result, "warn  egress-ip").startswith("warn  egress-ip        unknown: %s/ip: " % closed)
    assert_no_secret(result)


def test_config_problems_are_reported_as_serve_reports_them(tmp_path):
    conf = write_config(tmp_path, extra="[server2]\n")
    text = conf.read_text(encoding="utf-8").replace("encoding_aes_key = %s" % AES_KEY, "encoding_aes_key = short", 1)
    conf.write_text(text, encoding="utf-8")
    result = doctor(conf)
    assert result.returncode == 1
    served = subprocess.run([sys.executable, "-m", "wecomd", "serve", "-c", str(conf)], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    problems = [text.strip() for text in served.stderr.splitlines()[1:]]
    assert len(problems) == 2
    for problem in problems:
        assert "FAIL  config           %s" % problem in result.stdout
    assert "2 problem(s): `wecomd serve` would not start" in result.stdout
    assert_no_secret(result)


def test_a_missing_database_is_a_warning_and_a_fresh_one_passes(tmp_path, wecom):
    conf = deployment(tmp_path, wecom.url, ip_echo_url=wecom.url + "/ip")
    for name in ("wecomd.db", "wecomd.db-wal", "wecomd.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    result = doctor(conf)
    assert result.returncode == 0
    assert line(result, "warn  database").endswith("%s does not exist yet" % (tmp_path / "wecomd.db"))
    assert "`wecomd serve` creates it when it starts" in result.stdout
    assert not (tmp_path / "wecomd.db").exists(), "doctor must not create the database"


def test_doctor_never_migrates_or_writes_the_database(tmp_path, wecom):
    conf = deployment(tmp_path, wecom.url, ip_echo_url=wecom.url + "/ip")
    db = sqlite3.connect(str(tmp_path / "wecomd.db"))
    db.execute("DELETE FROM schema_migration WHERE name = '0005_failures'")
    db.execute("DROP TABLE callback_failure")
    db.commit()
    db.close()
    before = (tmp_path / "wecomd.db").read_bytes()
    result = doctor(conf)
    assert "pending: 0005_failures" in line(result, "warn  database")
    assert "`wecomd serve` applies them when it starts" in result.stdout
    assert "no failure log in this database yet" in line(result, "skip  failures")
    assert (tmp_path / "wecomd.db").read_bytes() == before


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write to: a read-only tmpfs as root (root ignores permissions), else mode 0500."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs here: %s" % mounted.stderr.strip())
        yield folder
        subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)


def test_an_unwritable_or_uncreatable_media_dir_fails(tmp_path, wecom, read_only_dir):
    conf = deployment(tmp_path, wecom.url, ip_echo_url=wecom.url + "/ip")
    env = {"WECOMD_SERVER_MEDIA_DIR": str(read_only_dir)}
    result = doctor(conf, env=env)
    assert result.returncode == 1
    assert line(result, "FAIL  media").startswith("FAIL  media            %s is not writable by this user: "
                                                  % read_only_dir)
    assert "ReadWritePaths=" in result.stdout

    missing = read_only_dir / "media"
    result = doctor(conf, env={"WECOMD_SERVER_MEDIA_DIR": str(missing)})
    assert result.returncode == 1
    assert ("%s does not exist and cannot be created (%s is not a writable directory)" % (missing, read_only_dir)
            in line(result, "FAIL  media"))
    assert "install -d -o wecomd -m 0750 %s" % missing in result.stdout


def test_a_missing_media_dir_that_wecomd_can_create_is_a_warning(tmp_path, wecom):
    conf = deployment(tmp_path, wecom.url, ip_echo_url=wecom.url + "/ip")
    (tmp_path / "media").rmdir()
    result = doctor(conf)
    assert result.returncode == 0
    assert line(result, "warn  media").endswith("%s does not exist yet" % (tmp_path / "media"))
    assert not (tmp_path / "media").exists()


# --- the failures a running server recorded ------------------------------------------------------

def request(url: str, body: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def recorded(db: Path) -> list:
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        return con.execute("SELECT kind, status, category, reason FROM callback_failure ORDER BY id").fetchall()
    finally:
        con.close()


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met within %.1fs" % timeout)


def test_doctor_lists_the_failures_a_running_server_recorded(tmp_path, wecom):
    port = free_port()
    conf = deployment(tmp_path, wecom.url, port, ip_echo_url=wecom.url + "/ip")
    server = ServerProcess(conf, port)
    try:
        peer, plain = WecomPeer(), samples.build("text", corp_id=CORP_ID, agent_id="1000002", content="hi")
        query, _ = peer.verification("1")
        forged = urllib.parse.urlencode({**dict(urllib.parse.parse_qsl(query)), "msg_signature": "0" * 40})
        assert request("%s/callback/helpdesk?%s" % (server.url, forged)) == 403
        stale = peer.callback(plain, timestamp=str(int(time.time()) - 1000))
        assert request("%s/callback/helpdesk?%s" % (server.url, stale.query), stale.body) == 403
        good = peer.callback(plain)
        assert request("%s/callback/helpdesk?%s" % (server.url, good.query), good.body) == 200

        rows = wait_for(lambda: len(recorded(tmp_path / "wecomd.db")) == 2 and recorded(tmp_path / "wecomd.db"))
        assert rows[0] == ("verify", 403, "signature", "signature mismatch (-40001)")
        assert rows[1][:3] == ("callback", 403, "timestamp")
        result = doctor(conf)  # while the server runs
        assert result.returncode == 0, result.stdout
        assert "2 recorded since " in line(result, "info  failures")
        listed = [text.strip() for text in result.stdout.splitlines() if text.startswith("        20")]
        assert len(listed) == 2
        assert re.search(r" helpdesk callback 403 from 127\.0\.0\.1 \[timestamp\] timestamp outside "
                         r"timestamp_window: timestamp -10\d\ds from this server's clock; is NTP running\?$",
                         listed[0]), listed[0]
        assert listed[1].endswith(" helpdesk verify 403 from 127.0.0.1 [signature] signature mismatch (-40001)")
        assert "what to do about [timestamp]: this server's clock is off: enable NTP" in result.stdout
        assert ("what to do about [signature]: the Token in WeCom (接收消息 → 设置API接收) differs from "
                "[app:helpdesk] token") in result.stdout
        assert_no_secret(result)
    finally:
        assert server.terminate() == 0, server.output()


def test_doctor_says_once_why_some_users_show_as_userids(tmp_path, wecom):
    conf = deployment(tmp_path, wecom.url)
    assert "ok    contacts" in line(doctor(conf), "ok    contacts")
    from wecomd.store import Store

    store = Store(str(tmp_path / "wecomd.db"))
    for user in ("zhangsan", "lisi", "wangwu"):
        store.contacts.save(CORP_ID, user, datetime.utcnow(), errcode=60011,
                            error="errcode 60011: no privilege to access/modify contact/party/agent")
    store.contacts.save(CORP_ID, "zhaoliu", datetime.utcnow(), name="赵六")
    store.close()
    result = doctor(conf)
    assert "3 user(s) shown by UserID" in line(result, "warn  contacts")
    details = [text.strip() for text in result.stdout.splitlines() if "errcode 60011: 3 user(s)" in text]
    assert len(details) == 1, result.stdout  # the reason once, not once per user
    assert "可见范围" in result.stdout


# --- recording: rate-limited, bounded, never in the way ------------------------------------------

class RecordingTest(WecomdTestCase):
    def forged(self) -> int:
        req = self.peer.callback(samples.build("text", corp_id=CORP_ID, agent_id="1000002"))
        query = urllib.parse.urlencode({**dict(urllib.parse.parse_qsl(req.query)), "msg_signature": "f" * 40})
        return self.fetch("/callback/helpdesk?%s" % query, method="POST", body=req.body).code

    def failures(self) -> list:
        return self.db(self.services.store.failures.recent, 1000)

    def test_a_flood_is_recorded_at_the_rate_limit_and_the_rest_counted(self):
        now = [1000.0]
        recorder = self.services.failures = FailureRecorder(self.services.writer.run, self.services.store,
                                                           clock=lambda: now[0])
        assert [self.forged() for _ in range(failures.BURST + 30)] == [403] * (failures.BURST + 30)
        self.wait_for(lambda: recorder.recorded == failures.BURST)
        assert (recorder.dropped, recorder.lost) == (30, 0)
        now[0] += 1.0  # one second later: RATE more may be recorded
        assert [self.forged() for _ in range(10)] == [403] * 10
        self.wait_for(lambda: recorder.recorded == failures.BURST + failures.RATE)
        rows = self.failures()
        assert len(rows) == failures.BURST + failures.RATE
        # the first row after the flood counts what the limit left out before it
        assert [row["skipped"] for row in rows[:int(failures.RATE)]] == [0, 0, 0, 0, 30]
        assert sum(row["skipped"] for row in rows) == 30 and recorder.dropped == 35
        assert {row["reason"] for row in rows} == {"signature mismatch (-40001)"}

    def test_a_failure_to_record_is_logged_and_never_a_5xx(self):
        con = sqlite3.connect(self.services.store.name)
        con.execute("DROP TABLE callback_failure")
        con.commit()
        con.close()
        with self.assertLogs("wecomd.failures", "WARNING") as logs:
            assert self.forged() == 403
            self.wait_for(lambda: self.services.failures.lost == 1)
        assert "could not write 1 callback failure(s) to the failure log" in logs.output[0]
        assert self.callback(samples.build("text", corp_id=CORP_ID, agent_id="1000002")).code == 200

    def test_successes_record_nothing(self):
        assert self.callback(samples.build("text", corp_id=CORP_ID, agent_id="1000002")).code == 200
        assert self.fetch("/callback/helpdesk?%s" % self.peer.verification("1")[0]).code == 200
        assert self.services.failures.recorded == 0 and self.failures() == []


def test_the_log_keeps_the_newest_rows(tmp_path):
    store = Store(str(tmp_path / "wecomd.db"))
    store.migrate()
    row = {"app": "helpdesk", "kind": "callback", "status": 403, "category": "signature", "remote_ip": None}
    store.failures.record([dict(row, at=utcnow(whole_seconds=True), reason="r%d" % n) for n in range(12)])
    assert store.failures.record([dict(row, at=utcnow(whole_seconds=True), reason="r12")], keep=5) == 8
    assert [r["reason"] for r in store.failures.recent(100)] == ["r12", "r11", "r10", "r9", "r8"]
    assert not diff_models(store.db, [store.models.CallbackFailure])  # the model matches migration 0005
    store.close()


def test_0005_applied_before_an_earlier_migration_still_lets_that_one_apply(tmp_path):
    # Migrations are applied by name, not by "everything after the highest applied": a database that
    # got 0005 while 0004 did not exist yet still gets 0004 when it arrives.
    files = sorted(MIGRATIONS_DIR.glob("[0-9]*.py"))
    early = tmp_path / "early"
    early.mkdir()
    for path in files:
        if path.name < "0004" or path.name.startswith("0005_"):
            shutil.copy(path, early)
    store = Store(str(tmp_path / "wecomd.db"))
    assert migrations.run(store.db, str(early))[-1] == "0005_failures"
    between = [path.stem for path in files if not (early / path.name).exists()]  # 0004, and any later
    assert store.migrate() == between
    assert store.migrate() == [] and store.failures.recent() == []
    store.close()
