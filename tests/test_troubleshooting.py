"""The README's troubleshooting table quotes the daemon's log lines as it writes them.

Each row that names a cause wecomd can see is triggered for real against `wecomd serve` (WeCom
played by wechatpy with the wrong Token, CorpID or EncodingAESKey, a skewed clock, an unknown app, a
database another process holds locked...). Every fragment in backticks in the row's symptom column
must appear, literally, in the callback log line the daemon wrote for it. Rows about things outside
the daemon (WeCom's throttling, other SDKs) quote no log text.
"""
from __future__ import annotations

import http.client
import re
import sqlite3
import time
from pathlib import Path

import pytest
from wechatpy.crypto.base import BasePrpCrypto

from support import ROOT
from support.config import write_config
from support.peer import AGENT_ID, CORP_ID, WecomPeer
from support.server import ServerProcess, free_port

WRONG_AES_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"
TEXT = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[lisi]]></FromUserName>"
        "<CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]>"
        "</Content><MsgId>%d</MsgId><AgentID>%s</AgentID></xml>")


def troubleshooting_rows(readme: Path = ROOT / "README.md") -> list:
    """(symptom, cause, advice) for each row of the table under "## Troubleshooting"."""
    section = readme.read_text(encoding="utf-8").split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0].split("|")[1:4] == [" symptom ", " cause ", " what to do "], lines[0]
    rows = []
    for line in lines[2:]:  # after the header and its --- line
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        assert len(cells) == 3, line
        rows.append(tuple(cells))
    return rows


def quoted(cell: str) -> list:
    return re.findall(r"`([^`]+)`", cell)


class Daemon:
    """`wecomd serve` with the conftest apps (helpdesk: TOKEN, AES_KEY, CORP_ID), and WeCom's side."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.db = tmp_path / "wecomd.db"
        self.server = ServerProcess(write_config(tmp_path, self.port), self.port)
        self.msg_id = 8_300_000_000_000_000_000

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple:
        """(status, the callback log line this request wrote)."""
        seen = self.server.output().count("\n")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        deadline = time.monotonic() + 10
        while True:  # the line is written as the request finishes, just after the answer
            new = [line for line in self.server.output().split("\n")[seen:] if "callback app=" in line]
            if new or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(new) == 1, "expected one callback line:\n" + self.server.output()[-3000:]
        return resp.status, new[0]

    def verify(self, peer: WecomPeer, app: str = "helpdesk", timestamp: str | None = None) -> tuple:
        query, _ = peer.verification(timestamp=timestamp)
        return self.request("GET", "/callback/%s?%s" % (app, query))

    def message(self, peer: WecomPeer = None) -> tuple:
        self.msg_id += 1
        req = (peer or WecomPeer()).callback(TEXT % (CORP_ID, self.msg_id, AGENT_ID))
        return self.request("POST", "/callback/helpdesk?" + req.query, req.body)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("troubleshooting"))
    yield d
    assert d.server.terminate() == 0


@pytest.fixture
def fixed_prefix(monkeypatch):
    """wechatpy's 16 random plaintext bytes fixed: what a wrong key decrypts to is then the same each run."""
    monkeypatch.setattr(BasePrpCrypto, "get_random_string", lambda self: "0123456789abcdef")


# The real condition behind each row, keyed by a phrase of the row's cause column: each returns the
# (status, log line) it produced.
def any_callback(daemon, request):
    return daemon.message()


def unknown_app(daemon, request):
    return daemon.verify(WecomPeer(), app="helpdsek")


def wrong_token(daemon, request):
    return daemon.verify(WecomPeer(token="AnotherToken0123456789abcdefXYZ"))


def wrong_corp_id(daemon, request):
    return daemon.verify(WecomPeer(corp_id="ww9999999999999999"))


def wrong_aes_key(daemon, request):
    request.getfixturevalue("fixed_prefix")
    return daemon.verify(WecomPeer(aes_key=WRONG_AES_KEY))


def clock_skew(daemon, request):
    return daemon.verify(WecomPeer(), timestamp=str(int(time.time()) - 3600))  # an hour behind; the window is 300 s


def verified(daemon, request):
    return daemon.verify(WecomPeer())


def database_unwritable(daemon, request):
    """Another process holds SQLite's write lock past busy_timeout: the write fails, the answer is 503."""
    assert daemon.message()[0] == 200
    locker = sqlite3.connect(str(daemon.db), timeout=0.1, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        return daemon.message()
    finally:
        locker.execute("ROLLBACK")
        locker.close()


CONDITIONS = {
    "WeCom cannot reach the URL": (any_callback, 200),
    "wrong path": (unknown_app, 404),
    "differs from `token`": (wrong_token, 403),
    "wrong `corp_id`": (wrong_corp_id, 403),
    "differs from `encoding_aes_key`": (wrong_aes_key, 400),
    "server clock is wrong": (clock_skew, 403),
    "the answer was changed on the way": (verified, 200),
    "the database cannot be written": (database_unwritable, 503),
}
ROWS = troubleshooting_rows()


def condition_of(cause: str):
    keys = [key for key in CONDITIONS if key in cause]
    assert len(keys) <= 1, keys
    return CONDITIONS[keys[0]] if keys else None


def test_every_condition_matches_one_row():
    """No condition is left unchecked because its row was reworded or removed."""
    for key in CONDITIONS:
        assert sum(key in cause for _, cause, _ in ROWS) == 1, key


def _row_params() -> list:
    """One case per row; the locked-database row waits out the 5 s busy_timeout: slow."""
    return [pytest.param(*row, id=re.sub(r"\W+", "-", row[0])[:40],
                         marks=[pytest.mark.slow] if (condition_of(row[1]) or (None,))[0] is database_unwritable else [])
            for row in ROWS]


@pytest.mark.parametrize("symptom, cause, advice", _row_params())
def test_the_row_quotes_the_daemons_log_line(daemon, request, symptom, cause, advice):
    condition = condition_of(cause)
    if condition is None:
        # Causes wecomd never sees (WeCom's throttling, other SDKs) quote no log text.
        assert not quoted(symptom), "%r quotes log text no check produces" % symptom
        return
    trigger, status = condition
    answer, line = trigger(daemon, request)
    assert answer == status, line
    fragments = quoted(symptom)
    assert fragments, "the row for %r quotes no log text" % cause
    for fragment in fragments:
        assert fragment in line, "README quotes %r, the daemon wrote:\n%s" % (fragment, line)
    assert advice  # the row still says what to do
