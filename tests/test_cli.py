"""The `wecomd` command line as a user runs it: real subprocesses, a real server, a real SQLite file."""
from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET


import pytest

from support import ROOT
from support.cli import wecomd, wecomd_each
from support.config import write_config
from support.peer import AES_KEY, CORP_ID, TOKEN, WecomPeer
from support.server import ServerProcess, free_port
from wecomd import __version__
from wecomd.wecom import samples


def post(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_version():
    result = wecomd("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "wecomd %s" % __version__


def test_sigterm_drains_an_in_flight_callback_and_exits_0(server):
    peer = WecomPeer()
    req = peer.callback(samples.build("text", corp_id=CORP_ID, agent_id="1000002", content="in flight"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as s:
        head = "POST /callback/helpdesk?%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (req.query, len(req.body))
        s.sendall(head.encode() + req.body[:40])  # the request is now in flight
        time.sleep(0.3)
        server.proc.send_signal(15)
        time.sleep(0.5)
        assert server.proc.poll() is None, "exited with a request in flight"
        s.sendall(req.body[40:])
        response = s.recv(4096)
    assert response.startswith(b"HTTP/1.1 200"), response
    assert server.proc.wait(30) == 0
    log = server.output()
    assert "draining 1 in-flight request" in log
    assert "outcome=stored" in log
    # the drained message is in the database: export it with the same config
    exported = wecomd("export", "-c", str(server.config))
    message, answer = [json.loads(line) for line in exported.stdout.splitlines()]
    assert (message["content"], answer["content"], answer["automatic"]) == ("in flight", "已收到", "passive")


def test_sigterm_when_idle_exits_0_quickly(server):
    started = time.monotonic()
    assert server.terminate() == 0
    assert time.monotonic() - started < 10
    assert "stopped" in server.output()


@pytest.mark.slow  # a sweep: one `wecomd simulate` per message kind
def test_simulate_every_kind_against_a_running_server(server):
    url = server.url + "/callback/helpdesk"
    creds = ["--token", TOKEN, "--aes-key", AES_KEY, "--corp-id", CORP_ID]
    result = wecomd("simulate", url, *creds, "--type", "text", "--content", "你好", "--repeat", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "已收到" in result.stdout  # the decrypted passive reply
    runs = wecomd_each(*(["simulate", url, *creds, "--type", kind, "--no-verify"] for kind in samples.KINDS))
    for kind, result in zip(samples.KINDS, runs):
        assert result.returncode == 0, (kind, result.stdout, result.stderr)
    exported = [json.loads(line) for line in wecomd("export", "-c", str(server.config)).stdout.splitlines()]
    exported = [row for row in exported if row["direction"] == "in"]  # not the app's automatic replies
    assert len(exported) == 1 + len(samples.KINDS)
    assert exported[0]["deliveries"] == 3
    assert TOKEN not in result.stdout + result.stderr and AES_KEY not in result.stdout + result.stderr


def test_simulate_reports_a_wrong_token(server):
    result = wecomd("simulate", server.url + "/callback/helpdesk", "--token", "wrong", "--aes-key", AES_KEY, "--corp-id", CORP_ID)
    assert result.returncode != 0
    assert "403" in result.stdout + result.stderr


def test_export_round_trip_jsonl_and_csv(server):
    peer = WecomPeer()
    sent = []
    for i, kind in enumerate(("text", "image", "location", "click", "template_card_event")):
        xml = samples.build(kind, corp_id=CORP_ID, agent_id="1000002", content="第%d条 \"quoted\", comma" % i, event_key="K%d" % i)
        req = peer.callback(xml)
        assert post("%s/callback/helpdesk?%s" % (server.url, req.query), req.body)[0] == 200
        sent.append(ET.fromstring(xml))
    req = peer.callback(samples.build("text", corp_id=CORP_ID, agent_id="1000003"))
    post("%s/callback/quiet?%s" % (server.url, req.query), req.body)

    jsonl = wecomd("export", "-c", str(server.config), "--app", "helpdesk")
    assert jsonl.returncode == 0, jsonl.stderr
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    # The text, image and location messages were answered by the app's reply, exported after each.
    assert [r["content"] for r in rows if r["direction"] == "out"] == ["已收到"] * 3
    rows = [r for r in rows if r["direction"] == "in"]
    assert [r["msgtype"] for r in rows] == [x.findtext("MsgType") for x in sent]
    for row, xml in zip(rows, sent):
        assert row["fields"]["CreateTime"] == xml.findtext("CreateTime")
        assert row["fields"]["FromUserName"] == xml.findtext("FromUserName")
        if xml.findtext("Content"):
            assert row["content"] == xml.findtext("Content")
        assert row["app"] == "helpdesk" and row["direction"] == "in"
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # oldest first

    out = server.config.parent / "export.csv"
    result = wecomd("export", "-c", str(server.config), "--format", "csv", "-o", str(out))
    assert result.returncode == 0 and "exported 9 message(s)" in result.stderr
    table = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(table) == 9
    table = [r for r in table if r["direction"] == "in"]
    assert table[0]["content"] == rows[0]["content"]
    assert json.loads(table[2]["fields"]) == rows[2]["fields"]

    future = wecomd("export", "-c", str(server.config), "--since", "2999-01-01T00:00:00Z")
    assert future.stdout == "" and "exported 0" in future.stderr
    bad = wecomd("export", "-c", str(server.config), "--since", "yesterday")
    assert bad.returncode == 2 and "ISO" in bad.stderr


def test_check_names_every_problem(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(
        "[server]\nlistn = 1\n[app:x]\ncorp_id = ww1\nagent_id = 1\ntoken = has-dash\n"
        "encoding_aes_key = short\n[mystery]\n", encoding="utf-8",
    )
    result = wecomd("check", "-c", str(conf))
    assert result.returncode == 1
    out = result.stdout
    assert "listn" in out and "unknown option" in out
    assert "token" in out and "encoding_aes_key" in out and "43" in out
    assert "[mystery]" in out
    assert "short" not in out  # the key's value is never printed


def test_check_fails_without_any_app_section(tmp_path):
    conf = tmp_path / "wecomd.conf"
    conf.write_text("[server]\nlisten = 127.0.0.1:9000\n", encoding="utf-8")
    result = wecomd("check", "-c", str(conf))
    assert result.returncode == 1
    assert "no [app:NAME] or [bot:NAME] section" in result.stdout


def test_check_ok_and_env_override(tmp_path):
    conf = write_config(tmp_path)
    assert wecomd("check", "-c", str(conf)).returncode == 0
    broken = wecomd("check", "-c", str(conf), env={"WECOMD_APP_HELPDESK_TOKEN": "bad token!"})
    assert broken.returncode == 1 and "WECOMD_APP_HELPDESK_TOKEN" in broken.stdout


# Runs a command in-process, then names which of the daemon's heavy modules it loaded.
LOADED_PROBE = """
import sys
from wecomd.cli import main
code = main(sys.argv[1:])
print(code, sorted(name for name in ("peewee", "wecomd.app", "wecomd.services", "wecomd.store") if name in sys.modules))
"""


def test_check_loads_neither_the_daemon_nor_the_database(tmp_path):
    # The parser imports every subcommand's module; one that imported the daemon at module level
    # would make `wecomd check`, `init` and `hash-password` load all of it first.
    conf = write_config(tmp_path)

    def probe(*argv: str) -> str:
        result = subprocess.run([sys.executable, "-c", LOADED_PROBE, *argv], capture_output=True, text=True,
                                cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()[-1]

    assert probe("check", "-c", str(conf)) == "0 []"
    # The probe sees what a command does load: export opens the database.
    assert probe("export", "-c", str(conf)) == "0 ['peewee', 'wecomd.store']"


def test_serve_refuses_a_broken_config(tmp_path):
    conf = tmp_path / "wecomd.conf"
    conf.write_text("[server]\nmax_body = lots\n", encoding="utf-8")
    result = wecomd("serve", "-c", str(conf))
    assert result.returncode == 2
    assert "max_body" in result.stderr and "Traceback" not in result.stderr


def test_init_writes_a_config_that_checks_and_serves(tmp_path):
    result = wecomd("init", str(tmp_path))
    assert result.returncode == 0, result.stderr
    password = result.stdout.split("admin login: admin / ")[1].split()[0]
    conf = tmp_path / "wecomd.conf"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert password not in conf.read_text()
    assert wecomd("check", "-c", str(conf)).returncode == 0
    assert wecomd("init", str(tmp_path)).returncode == 1  # never overwrites silently
    from wecomd import config, passwords

    cfg = config.load(conf, {})
    assert passwords.verify_password(password, cfg.admin.password_hash)
    assert len(cfg.apps["main"].encoding_aes_key) == 43


def test_hash_password_from_stdin():
    result = wecomd("hash-password", stdin="s3cret pass\n")
    assert result.returncode == 0
    from wecomd import passwords

    assert passwords.verify_password("s3cret pass", result.stdout.strip())
    assert "s3cret" not in result.stdout
    assert wecomd("hash-password", stdin="\n").returncode == 1


def test_sample_config_serves_and_verifies(tmp_path):
    """The README's first command: `wecomd serve -c wecomd.conf` on the shipped sample."""
    from wecomd import config

    sample = config.load(ROOT / "wecomd.conf", {})
    port = free_port()
    text = (ROOT / "wecomd.conf").read_text(encoding="utf-8")
    conf = tmp_path / "wecomd.conf"
    conf.write_text(text.replace("127.0.0.1:8080", "127.0.0.1:%d" % port), encoding="utf-8")
    proc = ServerProcess(conf, port)
    try:
        app = next(iter(sample.apps.values()))
        result = wecomd("simulate", "%s/callback/%s" % (proc.url, app.name), "--token", app.token,
                        "--aes-key", app.encoding_aes_key, "--corp-id", app.corp_id, "--agent-id", app.agent_id)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (tmp_path / "wecomd.db").exists()
    finally:
        assert proc.terminate() == 0
