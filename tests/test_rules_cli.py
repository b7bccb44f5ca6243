"""`wecomd rules test|replay` and SIGHUP reload, as an operator uses them."""
from __future__ import annotations

import json
import signal
import time

from support.cli import wecomd
from support.config import write_config
from support.peer import AES_KEY, CORP_ID, TOKEN
from support.server import ServerProcess, free_port

RULES = """
[rule:greet]
when = text contains 你好
reply = 你好，{from_user}！

[rule:backup]
when = click RUN_BACKUP
run = /bin/echo 备份 {event_key}
reply = 备份已开始

[rule:hook]
when = any
webhook = http://127.0.0.1:9/never
continue = yes
priority = -1
"""


def test_rules_test_shows_what_would_answer(tmp_path):
    conf = write_config(tmp_path, extra=RULES)
    out = wecomd("rules", "test", "-c", str(conf), "--from", "wangwu", "早上好，你好").stdout
    assert "rule hook (when any): webhook http://127.0.0.1:9/never; continue" in out
    assert "rule greet (when text contains 你好): reply '你好，wangwu！'" in out
    assert "own reply" not in out  # greet answers
    out = wecomd("rules", "test", "-c", str(conf), "别的").stdout  # only the forwarding webhook matches
    assert out.splitlines() == [
        "rule hook (when any): webhook http://127.0.0.1:9/never; continue",
        "no rule replies; the app's own reply would answer (unless a webhook replies first): '已收到'"]
    out = wecomd("rules", "test", "-c", str(conf), "--click", "RUN_BACKUP").stdout
    assert "reply '备份已开始'; run ['/bin/echo', '备份', 'RUN_BACKUP']" in out
    out = wecomd("rules", "test", "-c", str(conf), "--app", "quiet", "--type", "image").stdout
    assert "rule hook" in out and "greet" not in out
    bare = write_config(tmp_path)  # no rules: the app's own reply
    assert "the app's own reply would answer: '已收到'" in wecomd("rules", "test", "-c", str(bare), "hi").stdout


def test_rules_replay_is_a_dry_run_over_history(tmp_path):
    port = free_port()
    conf = write_config(tmp_path, port)
    server = ServerProcess(conf, port)
    try:
        url = server.url + "/callback/helpdesk"
        creds = ["--token", TOKEN, "--aes-key", AES_KEY, "--corp-id", CORP_ID, "--no-verify"]
        for args in (["--content", "你好"], ["--content", "别的"], ["--type", "click", "--event-key", "RUN_BACKUP"]):
            assert wecomd("simulate", url, *creds, *args).returncode == 0
    finally:
        assert server.terminate() == 0
    conf.write_text(conf.read_text(encoding="utf-8") + RULES, encoding="utf-8")
    result = wecomd("rules", "replay", "-c", str(conf), "--since", "2000-01-01")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum("greet" in line for line in lines) == 1
    assert sum("run ['/bin/echo'" in line for line in lines) == 1
    assert [line.split(": ", 1)[1] for line in lines[:-1] if "own reply" in line] == ["the app's own reply '已收到'"]
    assert lines[-1] == "dry run over 3 stored message(s): hook 3, greet 1, the app's own reply 1, backup 1"
    exported = [json.loads(line) for line in wecomd("export", "-c", str(conf)).stdout.splitlines()]
    # What the server stored (two texts answered by the app's reply), and nothing the replay sent.
    assert [(r["direction"], r["automatic"]) for r in exported] == [
        ("in", None), ("out", "passive"), ("in", None), ("out", "passive"), ("in", None)]


def test_sighup_reloads_rules_and_keeps_serving(tmp_path):
    port = free_port()
    conf = write_config(tmp_path, port, extra=RULES.split("[rule:backup]")[0])
    server = ServerProcess(conf, port)
    url = server.url + "/callback/helpdesk"
    creds = ["--token", TOKEN, "--aes-key", AES_KEY, "--corp-id", CORP_ID, "--no-verify"]
    try:
        assert "你好，zhangsan！" in wecomd("simulate", url, *creds, "--content", "你好").stdout
        good = conf.read_text(encoding="utf-8")
        conf.write_text(good.replace("when = text contains 你好", "when = text matches (unclosed"), encoding="utf-8")
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert "reload refused" in server.output()
        assert "你好，zhangsan！" in wecomd("simulate", url, *creds, "--content", "你好").stdout
        conf.write_text(good.replace("reply = 你好，{from_user}！", "reply = 欢迎 {from_user}"), encoding="utf-8")
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert "欢迎 zhangsan" in wecomd("simulate", url, *creds, "--content", "你好").stdout
        assert server.proc.poll() is None
    finally:
        assert server.terminate() == 0
