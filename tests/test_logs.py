"""Logging (issue #9 item 11): journald priorities, JSON lines, and message contents kept out of
the debug log unless `[server] log_content = yes`.

Each test runs `wecomd serve` as a real process, sends it real requests and reads what it wrote to
stderr. systemd is played the way it hands a service the journal: stderr is a stream whose
`device:inode` is in $JOURNAL_STREAM.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from support import ROOT
from support.config import write_config
from support.peer import WecomPeer
from support.samples import _event, _message
from support.server import free_port, wait_for_healthz
from wecomd import logs

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}")
PRIORITY = re.compile(r"<([0-7])>")


class Daemon:
    """`wecomd serve` with its stderr in a file of its own, and an environment of the test's choice."""

    def __init__(self, directory: Path, journal: bool = False, bogus_journal: bool = False, **server: str):
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        config = write_config(directory, self.port, **server)
        self.log = directory / "stderr.log"
        self._fh = open(self.log, "wb")
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        stat = os.fstat(self._fh.fileno())
        if journal:  # what systemd sets for StandardError=journal: stderr's device and inode
            env["JOURNAL_STREAM"] = "%d:%d" % (stat.st_dev, stat.st_ino)
        if bogus_journal:  # inherited from a parent unit, but stderr is somewhere else now
            env["JOURNAL_STREAM"] = "%d:%d" % (stat.st_dev, stat.st_ino + 1)
        self.proc = subprocess.Popen([sys.executable, "-m", "wecomd", "serve", "-c", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=self._fh, env=env, cwd=str(directory))
        wait_for_healthz(self.url, self.proc, self.output)

    def output(self) -> str:
        self._fh.flush()
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> str:
        """SIGTERM, wait for the exit, and return everything it logged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.output()
        self._fh.close()
        return self.log.read_text(encoding="utf-8")


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def callback(daemon: Daemon, plaintext: str) -> int:
    request = WecomPeer().callback(plaintext)
    req = urllib.request.Request("%s/callback/helpdesk?%s" % (daemon.url, request.query), data=request.body)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def make_some_noise(daemon: Daemon) -> None:
    """An info line (a callback stored), a warning (an unknown app: 404) and a debug line or two."""
    assert callback(daemon, _message("text", "<Content><![CDATA[ping]]></Content><MsgId>1</MsgId>")) == 200
    assert get(daemon.url + "/callback/nosuchapp?msg_signature=x&timestamp=1&nonce=1") == 404


# --- journald -------------------------------------------------------------------------------------

def test_under_systemd_every_line_carries_its_priority_and_no_timestamp(tmp_path):
    daemon = Daemon(tmp_path, journal=True, log_level="debug")
    make_some_noise(daemon)
    lines = [line for line in daemon.stop().splitlines() if line]
    assert lines
    for line in lines:
        assert PRIORITY.match(line), "no <N> prefix: %r" % line
        assert not TIMESTAMP.search(line), "journald adds the time; the line has its own: %r" % line
    warning = next(line for line in lines if "callback app=nosuchapp" in line)
    assert warning.startswith("<4>WARNING wecomd.handlers.callback: "), warning
    stored = next(line for line in lines if "callback app=helpdesk" in line)
    assert stored.startswith("<6>INFO "), stored
    assert any(line.startswith("<7>DEBUG ") for line in lines)
    # What `journalctl -p warning` keeps (priority 0..4): the 404 and nothing routine.
    kept = [line for line in lines if int(PRIORITY.match(line).group(1)) <= 4]
    assert warning in kept and stored not in kept


def test_a_journal_stream_that_is_not_stderr_gets_plain_lines(tmp_path):
    # JOURNAL_STREAM inherited, but stderr redirected to a file: systemd.exec(5) says compare, so no prefix.
    daemon = Daemon(tmp_path, bogus_journal=True)
    make_some_noise(daemon)
    lines = [line for line in daemon.stop().splitlines() if line]
    assert lines and all(TIMESTAMP.match(line) and not PRIORITY.match(line) for line in lines), lines


def test_a_traceback_keeps_the_prefix_on_every_line():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("text", journal=True))
    logger = logging.getLogger("wecomd.test_logs.journal")
    logger.propagate, logger.level = False, logging.DEBUG
    logger.addHandler(handler)
    try:
        try:
            {}["missing"]
        except KeyError:
            logger.exception("it broke\nwith a second line")
        logger.critical("the end")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) > 4 and any(line.startswith("<3>Traceback") for line in lines), lines
    assert all(line.startswith("<3>") for line in lines[:-1]), lines
    assert lines[-1] == "<2>CRITICAL wecomd.test_logs.journal: the end"


# --- JSON lines -----------------------------------------------------------------------------------

def test_log_format_json_writes_one_json_object_per_line(tmp_path):
    daemon = Daemon(tmp_path, log_format="json")
    make_some_noise(daemon)
    records = [json.loads(line) for line in daemon.stop().splitlines() if line]
    assert records
    for record in records:
        assert set(record) == {"time", "level", "logger", "message", "exc"}, record
        assert TIMESTAMP.match(record["time"]) and record["time"].endswith("+00:00"), record
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}
    warning = next(r for r in records if "callback app=nosuchapp" in r["message"])
    assert (warning["level"], warning["logger"], warning["exc"]) == ("warning", "wecomd.handlers.callback", None)
    assert any(r["level"] == "info" and r["message"].startswith("callback app=helpdesk") for r in records)


def test_json_lines_under_systemd_carry_the_priority_prefix_and_stay_json(tmp_path):
    daemon = Daemon(tmp_path, journal=True, log_format="json")
    make_some_noise(daemon)
    lines = [line for line in daemon.stop().splitlines() if line]
    for line in lines:
        match = PRIORITY.match(line)
        assert match, line
        record = json.loads(line[match.end():])  # what journald stores as the message
        assert logs.priority(getattr(logging, record["level"].upper())) == int(match.group(1))
    assert any(line.startswith('<4>{') and "nosuchapp" in line for line in lines)


# --- message contents -----------------------------------------------------------------------------

SECRET_TEXT = "the vault code is 7f3a-zebra-0419"
SECRET_KEY = "KEY_7f3a_OPEN_VAULT"
SECRETS = (SECRET_TEXT, "7f3a-zebra", SECRET_KEY)


def send_contents(daemon: Daemon) -> None:
    assert callback(daemon, _message("text", "<Content><![CDATA[%s]]></Content><MsgId>42</MsgId>"
                                     % SECRET_TEXT)) == 200
    assert callback(daemon, _event("click", "<EventKey><![CDATA[%s]]></EventKey>" % SECRET_KEY)) == 200


def test_debug_never_logs_message_contents_without_log_content(tmp_path):
    rule = "[rule:vault]\napp = helpdesk\nwhen = text contains zebra\nreply = noted\n"
    daemon = Daemon(tmp_path, log_level="debug", extra=rule)
    send_contents(daemon)
    log = daemon.stop()
    for secret in SECRETS:
        assert secret not in log
    # The debug level was really on, and saw the messages: it said what it withheld.
    assert re.search(r"DEBUG wecomd.inbox: message id=\d+ app=helpdesk type=text from=zhangsan stored: "
                     r"content \[%d characters withheld\]" % len(SECRET_TEXT), log), log[-3000:]
    assert re.search(r"DEBUG peewee: INSERT INTO \"message\" .* \[\d+ parameter\(s\) withheld\]", log)


def test_log_content_yes_lets_debug_show_contents(tmp_path):
    daemon = Daemon(tmp_path, log_level="debug", log_content="yes")
    send_contents(daemon)
    log = daemon.stop()
    assert "stored: content %s, event_key " % SECRET_TEXT in log
    assert "event_key %s" % SECRET_KEY in log
    assert "withheld" not in log
