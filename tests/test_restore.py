"""docs/operations.md's backup and restore commands, run as written in the documented layout.

The layout of docs/deploy.md is rebuilt under tmp_path: /etc/wecomd (the config from `wecomd init
--env-file`, the secrets in wecomd.env), /var/lib/wecomd (database, media, backups) and
/opt/wecomd/bin/wecomd. The shell blocks of the "Backing up" and "Restoring" sections are taken from
the document and run by bash with only these changes: those paths moved under tmp_path, `sudo`
dropped (the test is the administrator) and `-o wecomd -g wecomd` made the test's own user.
`systemctl` is a stand-in that does what the unit does: start `wecomd serve` with the
EnvironmentFile's variables and wait until it answers, or stop it with SIGTERM and wait.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from support import ROOT
from support.peer import WecomPeer
from support.server import free_port
from wecomd.cli import envfile
from wecomd.wecom import samples

DOC = ROOT / "docs" / "operations.md"
CORP_ID = "ww0123456789abcdef"
API_TOKEN = "restore-test-api-token-0123456789abcdef"

SYSTEMCTL = '''#!{python}
"""A stand-in for `systemctl start|stop wecomd`, as systemd/wecomd.service runs it."""
import os, signal, subprocess, sys, time
sys.path.insert(0, {root!r})
from wecomd.cli import envfile
from support.server import wait_for_healthz

action, unit = sys.argv[1:3]
assert unit == "wecomd", unit
pidfile = {pidfile!r}
if action == "start":
    env = {{**os.environ, **envfile.load({env_file!r})}}  # EnvironmentFile=
    log = open({log!r}, "ab")
    proc = subprocess.Popen([{wecomd!r}, "serve", "-c", {conf!r}], env=env, cwd={state!r}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    open(pidfile, "w").write(str(proc.pid))
    wait_for_healthz({url!r}, proc, lambda: open({log!r}, errors="replace").read())  # Type=notify
elif action == "stop":
    pid = int(open(pidfile).read())
    os.kill(pid, signal.SIGTERM)
    # the daemon is not this process's child: poll /proc until it is gone (or a zombie)
    deadline = time.monotonic() + 40
    while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
        state = open("/proc/%d/status" % pid).read()
        if "\\nState:\\tZ" in state:
            break
        time.sleep(0.05)
    os.remove(pidfile)
'''


def doc_blocks(section: str) -> list:
    """The ```sh blocks of a `## section` of docs/operations.md, in order, dedented."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split("\n## %s\n" % section, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"(?ms)^( *)```sh\n(.*?)^\1```", body)
    return ["\n".join(line[len(indent):] for line in code.splitlines()) for indent, code in blocks]


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc, self.state = root / "etc" / "wecomd", root / "var" / "lib" / "wecomd"
        self.bin = root / "opt" / "wecomd" / "bin"
        self.conf, self.env_file = self.etc / "wecomd.conf", self.etc / "wecomd.env"
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.pidfile, self.log = root / "wecomd.pid", root / "wecomd.log"
        self.today = dt.date.today().isoformat()

    def command(self, text: str) -> str:
        """A documented command with the layout moved under the test directory."""
        places = {"/opt/wecomd/bin/wecomd": str(self.bin / "wecomd"), "/var/lib/wecomd": str(self.state),
                  "/etc/wecomd": str(self.etc), "/tmp/restore-test.db": str(self.root / "restore-test.db")}
        text = re.sub("|".join(map(re.escape, places)), lambda m: places[m.group(0)], text)
        text = text.replace("-o wecomd -g wecomd", "-o %d -g %d" % (os.getuid(), os.getgid()))
        text = re.sub(r"\bsudo (-u wecomd )?", "", text)
        return text.replace("2026-11-29", self.today)  # the backup the documented command made today

    def run(self, script: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PATH": "%s:%s" % (self.bin, os.environ["PATH"]), "PYTHONPATH": str(ROOT)}
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", self.command(script)], capture_output=True,
                                text=True, env=env, timeout=180, cwd=str(self.root))
        assert result.returncode == 0, (self.command(script), result.stdout, result.stderr, self.output())
        return result

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def install(self) -> None:
        """As deploy.md does it: init with the secrets in the environment file, absolute state paths."""
        self.bin.mkdir(parents=True)
        wecomd = self.bin / "wecomd"
        wecomd.write_text("#!/bin/sh\nPYTHONPATH=%s exec %s -m wecomd \"$@\"\n" % (ROOT, sys.executable))
        wecomd.chmod(0o755)
        systemctl = self.bin / "systemctl"
        systemctl.write_text(SYSTEMCTL.format(
            python=sys.executable, root=str(Path(__file__).parent), pidfile=str(self.pidfile),
            env_file=str(self.env_file), log=str(self.log), wecomd=str(wecomd), conf=str(self.conf),
            state=str(self.state), url=self.url))
        systemctl.chmod(0o755)
        self.etc.mkdir(parents=True)
        (self.state / "backups").mkdir(parents=True)
        self.run("/opt/wecomd/bin/wecomd init /etc/wecomd --env-file /etc/wecomd/wecomd.env")
        text = self.conf.read_text()
        for option, value in (("listen", "127.0.0.1:%d" % self.port), ("database", "/var/lib/wecomd/wecomd.db"),
                              ("media_dir", "/var/lib/wecomd/media"), ("corp_id", CORP_ID)):
            text = re.sub(r"(?m)^%s = .*$" % option, "%s = %s" % (option, self.command(value)), text)
        self.conf.write_text(text)
        with open(self.env_file, "a") as fh:
            fh.write("WECOMD_ADMIN_API_TOKEN=%s\n" % API_TOKEN)
        secrets = envfile.load(self.env_file)
        self.peer = WecomPeer(token=secrets["WECOMD_APP_MAIN_TOKEN"],
                              aes_key=secrets["WECOMD_APP_MAIN_ENCODING_AES_KEY"], corp_id=CORP_ID)

    def send(self, content: str) -> None:
        req = self.peer.callback(samples.build("text", corp_id=CORP_ID, agent_id="1000002", content=content))
        request = urllib.request.Request("%s/callback/main?%s" % (self.url, req.query), data=req.body)
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200

    def contents(self) -> list:
        request = urllib.request.Request(self.url + "/api/messages?limit=100",
                                         headers={"Authorization": "Bearer " + API_TOKEN})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return sorted(m["content"] for m in json.loads(resp.read())["messages"] if m["direction"] == "in")

    def stop(self) -> None:
        if self.pidfile.exists():
            try:
                os.kill(int(self.pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def layout(tmp_path):
    layout = Layout(tmp_path)
    yield layout
    layout.stop()


def test_the_documented_restore_brings_back_the_backed_up_messages(layout):
    backup_blocks, restore_blocks = doc_blocks("Backing up"), doc_blocks("Restoring")
    assert len(restore_blocks) >= 3 and "systemctl stop wecomd" in restore_blocks[0]
    assert any("systemctl start wecomd" in block for block in restore_blocks)
    layout.install()
    layout.run("systemctl start wecomd")
    before = ["备份前 %d" % n for n in range(3)]
    for text in before:
        layout.send(text)

    backup = layout.run(backup_blocks[0])  # as documented: as the service user, secrets from the env file
    assert "integrity ok" in backup.stdout + backup.stderr
    assert (layout.state / "backups" / ("wecomd-%s.db" % layout.today)).exists()

    for text in ("备份后 0", "备份后 1"):  # lost by the restore, as the document says
        layout.send(text)
    assert layout.contents() == sorted(before + ["备份后 0", "备份后 1"])

    # The whole "Restoring" section, every block in order, in one shell (BACKUP= carries over).
    script = "\n".join(restore_blocks[:-1])
    layout.run(script)
    assert (layout.state / "broken" / "wecomd.db").exists()  # the old database, moved aside
    assert oct((layout.state / "wecomd.db").stat().st_mode & 0o777) == "0o600"

    assert layout.contents() == sorted(before)  # the restored database serves the backed-up messages
    layout.send("恢复后")  # and takes new ones
    assert layout.contents() == sorted(before + ["恢复后"])

    # "To look into a backup without restoring it": the last block, on a copy
    peek = layout.run("BACKUP=/var/lib/wecomd/backups/wecomd-2026-11-29.db\n" + restore_blocks[-1])
    rows = [json.loads(line) for line in peek.stdout.splitlines()]
    assert sorted(r["content"] for r in rows if r["direction"] == "in") == sorted(before)
    assert "exported" in peek.stderr
    layout.run("systemctl stop wecomd")
    assert "Traceback" not in layout.output()

