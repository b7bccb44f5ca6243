"""CommandRunner against real subprocesses: limits, timeouts, process groups, environment."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from support.base import WecomdTestCase
from support.peer import CORP_ID
from wecomd.automation import rules as rulesmod
from wecomd.wecom import samples
from wecomd.automation.commands import CommandResult, CommandRunner
from wecomd.wecom.messages import Message

PY = sys.executable


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def py(code: str) -> list:
    return [PY, "-c", code]


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an exited process not yet reaped by its parent)."""
    try:
        text = Path("/proc/%d/stat" % pid).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


def gone(*pids: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def zombie_children() -> list:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] == "Z" and int(fields[1]) == os.getpid():
                found.append(int(entry.name))
    return found


def group_script(tmp_path: Path) -> tuple:
    """A script that starts a background grandchild, records both pids, then sleeps."""
    pids = tmp_path / "pids"
    path = script(tmp_path, "group.sh", 'sleep 30 &\necho $$ $! > "%s"\nsleep 30\n' % pids)
    return path, pids


def read_pids(pids: Path) -> list:
    return [int(p) for p in pids.read_text().split()]


def test_ok_captures_output():
    result = run(CommandRunner().run(py("print('hello 你好')"), {}, timeout=5))
    assert (result.status, result.exit_code, result.error) == ("ok", 0, None)
    assert result.output == "hello 你好\n" and not result.truncated
    assert result.argv == tuple(py("print('hello 你好')")) and result.duration_ms > 0


def test_nonzero_exit_is_failed():
    result = run(CommandRunner().run(py("import sys; print('boom'); sys.exit(3)"), {}, timeout=5))
    assert (result.status, result.exit_code, result.output) == ("failed", 3, "boom\n")


def test_killed_by_outside_signal_is_failed():
    result = run(CommandRunner().run(py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"), {}, timeout=5))
    assert (result.status, result.exit_code, result.error) == ("failed", -11, "killed by signal SIGSEGV")


@pytest.mark.parametrize("argv", [["/nonexistent/backup.sh"], ["no-such-command-wecomd"], []])
def test_not_found_is_error(argv):
    result = run(CommandRunner().run(argv, {}, timeout=5))
    assert (result.status, result.exit_code) == ("error", None)
    assert result.error.startswith("could not start")


def test_not_executable_is_error(tmp_path):
    path = tmp_path / "backup.sh"
    path.write_text("#!/bin/sh\necho hi\n")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    result = run(CommandRunner().run([str(path)], {}, timeout=5))
    assert (result.status, result.exit_code) == ("error", None)
    assert "Permission denied" in result.error and str(path) in result.error


def test_missing_cwd_is_error(tmp_path):
    result = run(CommandRunner().run(py("pass"), {}, timeout=5, cwd=str(tmp_path / "missing")))
    assert result.status == "error"


def test_timeout_kills_whole_process_group(tmp_path):
    path, pids = group_script(tmp_path)
    result = run(CommandRunner(kill_grace=1).run([path], {}, timeout=0.5))
    assert (result.status, result.exit_code) == ("timeout", None)
    assert result.error == "did not finish within 0.5 s; stopped with SIGTERM"
    assert 450 < result.duration_ms < 1400
    assert gone(*read_pids(pids))


def test_background_process_holding_output_is_stopped(tmp_path):
    """The child exits at once but leaves a grandchild on its output pipe: stopped at the timeout."""
    pids = tmp_path / "pids"
    path = script(tmp_path, "leaky.sh", 'sleep 30 &\necho $! > "%s"\necho started\nexit 0\n' % pids)
    result = run(CommandRunner(kill_grace=0.5).run([path], {}, timeout=0.5))
    assert (result.status, result.exit_code, result.output) == ("timeout", None, "started\n")
    assert result.error.startswith("exited with code 0, but a background process")
    assert gone(*read_pids(pids))


def test_process_that_left_the_group_does_not_hang_the_runner(tmp_path):
    pids = tmp_path / "pids"
    escape = "import os, time; os.setsid(); time.sleep(30)"
    path = script(tmp_path, "escape.sh", '%s -c "%s" &\necho $! > "%s"\nsleep 30\n' % (PY, escape, pids))
    try:
        result = run(CommandRunner(kill_grace=0.2).run([path], {}, timeout=0.3))
        assert result.status == "timeout" and result.duration_ms < 3000
    finally:
        os.kill(read_pids(pids)[0], 9)


def test_sigterm_ignored_is_killed_after_grace():
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(30)")
    result = run(CommandRunner(kill_grace=0.3).run(py(code), {}, timeout=0.6))
    assert result.output == "ready\n"  # the handler was in place before the timeout
    assert (result.status, result.exit_code) == ("timeout", None)
    assert "SIGKILL" in result.error
    assert 850 < result.duration_ms < 2000


def test_output_limit_does_not_block():
    code = "import sys; sys.stdout.write('x' * 1048576); sys.stdout.flush(); print('done', file=sys.stderr)"
    result = run(CommandRunner(output_limit=1000).run(py(code), {}, timeout=5))
    assert (result.status, result.truncated) == ("ok", True)
    assert result.output == "x" * 1000 + "\n…[output truncated: %d bytes]" % (1048576 + 5 - 1000)


def test_output_limit_keeps_characters_whole():
    result = run(CommandRunner(output_limit=10).run(py("print('你' * 100, end='')"), {}, timeout=5))
    assert result.output == "你你你\n…[output truncated: 291 bytes]"


def test_output_within_limit_is_not_truncated():
    result = run(CommandRunner(output_limit=6).run(py("print('12345')"), {}, timeout=5))
    assert (result.output, result.truncated) == ("12345\n", False)


def test_invalid_utf8_is_replaced():
    result = run(CommandRunner().run(py("import sys; sys.stdout.buffer.write(b'a\\xffb')"), {}, timeout=5))
    assert result.output == "a\ufffdb"


def test_stderr_interleaved():
    code = ("import sys\nfor i in range(3):\n"
            "    print('out', i, flush=True)\n    print('err', i, file=sys.stderr, flush=True)")
    result = run(CommandRunner().run(py(code), {}, timeout=5))
    assert result.output == "out 0\nerr 0\nout 1\nerr 1\nout 2\nerr 2\n"


def test_env_is_minimal_plus_given(monkeypatch):
    monkeypatch.setenv("WECOMD_APP_X_SECRET", "top-secret-value")
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    result = run(CommandRunner().run(py(code), {"EVENT_KEY": "backup_now", "USER_ID": "zhangsan"}, timeout=5))
    env = json.loads(result.output)
    assert env["EVENT_KEY"] == "backup_now" and env["USER_ID"] == "zhangsan"
    assert env["LANG"] == "C.UTF-8" and env["PATH"] and env["HOME"]
    assert "WECOMD_APP_X_SECRET" not in env and "top-secret-value" not in result.output
    assert set(env) <= {"PATH", "LANG", "HOME", "EVENT_KEY", "USER_ID", "LC_CTYPE"}  # LC_CTYPE: Python's own coercion


def test_argv_passed_literally():
    hostile = "; rm -rf / $(id) `id` && echo pwned | cat > /tmp/x"
    result = run(CommandRunner().run(py("import sys, json; print(json.dumps(sys.argv[1:]))") + [hostile, "*"],
                                     {}, timeout=5))
    assert result.output.strip() == '["; rm -rf / $(id) `id` && echo pwned | cat > /tmp/x", "*"]'


def test_concurrency_is_limited(tmp_path):
    times = tmp_path / "times"
    argv = ["sh", "-c", 's=$(date +%%s.%%N); sleep 0.3; echo "$s $(date +%%s.%%N)" >> "%s"' % times]
    runner = CommandRunner(max_concurrent=2)
    seen = []

    async def main():
        async def watch():
            while True:
                seen.append(runner.running)
                await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(watch())
        started = time.monotonic()
        results = await asyncio.gather(*(runner.run(argv, {}, timeout=5) for _ in range(5)))
        watcher.cancel()
        return results, time.monotonic() - started

    results, elapsed = run(main())
    assert [r.status for r in results] == ["ok"] * 5
    spans = [tuple(map(float, line.split())) for line in times.read_text().splitlines()]
    overlap = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlap == 2 and max(seen) == 2 and runner.running == 0
    assert 0.9 <= elapsed < 1.5


def test_timeout_counts_from_process_start():
    runner = CommandRunner(max_concurrent=1)

    async def main():
        return await asyncio.gather(*(runner.run(["sleep", "0.3"], {}, timeout=0.6) for _ in range(3)))

    assert [r.status for r in run(main())] == ["ok"] * 3


def test_cancel_kills_process_group(tmp_path):
    path, pids = group_script(tmp_path)
    runner = CommandRunner(kill_grace=0.5)

    async def main():
        task = asyncio.ensure_future(runner.run([path], {}, timeout=10))
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            await asyncio.sleep(0.02)
        assert runner.running == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert gone(*read_pids(pids)) and runner.running == 0


def test_no_zombies_left(tmp_path):
    path, _ = group_script(tmp_path)
    runner = CommandRunner(kill_grace=0.2)

    async def main():
        await asyncio.gather(runner.run(py("pass"), {}, timeout=5), runner.run(py("exit(1)"), {}, timeout=5),
                             runner.run([path], {}, timeout=0.3), runner.run(["/nonexistent"], {}, timeout=1))

    run(main())
    deadline = time.monotonic() + 2
    while zombie_children() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert zombie_children() == []


def test_excerpt_is_the_end():
    result = CommandResult(("x",), 1, "failed", 1.0, output="a" * 1000 + "Error: disk full")
    assert result.excerpt(16) == "Error: disk full"
    assert len(result.excerpt()) == 500 and CommandResult(("x",), 0, "ok", 1.0, "short").excerpt() == "short"


def test_log_line_has_no_arguments_or_env(caplog):
    caplog.set_level(logging.INFO, logger="wecomd.automation.commands")
    run(CommandRunner().run(py("pass") + ["user text 机密"], {"TOKEN": "env-secret"}, timeout=5))
    (record,) = [r for r in caplog.records if r.name == "wecomd.automation.commands"]
    line = record.getMessage()
    assert PY in line and "ok" in line and "exit code 0" in line
    assert "机密" not in line and "env-secret" not in line and " -c" not in line


# ------------------------------------------------------------------ arguments from a message (rules)

PASSWD = "/etc/passwd"
DATE_RULES = """
[rules]
passive_budget = 4.0

[rule:when]
app = helpdesk
when = msgtype text
run = date {content}

[rule:when_operands]
app = quiet
when = msgtype text
run = date {content}
end_of_options = yes
"""


def date_rule(**options):
    return rulesmod.compile_rules({"d": {"when": "any", "run": "date {content}", **options}})[0]


def test_templated_argument_starting_with_a_dash_is_refused():
    rule = date_rule()
    with pytest.raises(rulesmod.CommandRefused) as refused:
        rulesmod.command_argv(rule, {"content": "-f" + PASSWD})
    assert (refused.value.program, refused.value.position) == ("date", 1)
    assert "'-f/etc/passwd'" in str(refused.value) and "nothing was run" in str(refused.value)
    assert "end_of_options = yes" in str(refused.value)
    assert "/etc/passwd" not in refused.value.why  # the log's version names the argument only
    for value in ("-", "--", "--help", "-\n"):
        with pytest.raises(rulesmod.CommandRefused):
            rulesmod.command_argv(rule, {"content": value})
    # Text that does not start with "-" is passed as always, as one argument.
    assert rulesmod.command_argv(rule, {"content": "next -f monday"}) == ["date", "next -f monday"]
    assert rulesmod.command_argv(rule, {"content": " -f x"}) == ["date", " -f x"]


def test_only_text_from_the_message_at_the_start_counts():
    fields = {"content": "-x", "event_key": "-k", "1": "", "2": "-y"}
    compile_one = lambda run: rulesmod.compile_rules({"r": {"when": "text matches (a)(b)", "run": run}})[0]  # noqa: E731
    # The operator's own text before the field: an option the operator chose, with a value.
    assert rulesmod.command_argv(compile_one("prog --target={content}"), fields) == ["prog", "--target=-x"]
    assert rulesmod.command_argv(compile_one("prog -n{event_key}"), fields) == ["prog", "-n-k"]
    # After a literal "--" in the template, arguments are operands already.
    assert rulesmod.command_argv(compile_one("prog -n -- {content} {2}"), fields) == ["prog", "-n", "--", "-x", "-y"]
    # An empty group first does not hide the next one's dash.
    with pytest.raises(rulesmod.CommandRefused) as refused:
        rulesmod.command_argv(compile_one("prog {1}{2}"), fields)
    assert refused.value.position == 1


def test_end_of_options_puts_double_dash_before_the_first_templated_argument():
    def compile_one(run):
        return rulesmod.compile_rules({"r": {"when": "text matches (.*) (.*)", "run": run,
                                             "end_of_options": "yes"}})[0]

    rule = compile_one("prog -r --label=x{1} note {1} /srv {2}")
    fields = {"1": "-f" + PASSWD, "2": "--include=x"}
    assert rulesmod.command_argv(rule, fields) == [
        "prog", "-r", "--label=x-f/etc/passwd", "note", "--", "-f/etc/passwd", "/srv", "--include=x"]
    # The same argv whatever the text, so the command always sees its operands in the same place.
    assert rulesmod.command_argv(rule, {"1": "a", "2": "b"}) == ["prog", "-r", "--label=xa", "note", "--", "a", "/srv", "b"]
    # Nothing starts with a field: nothing to protect, nothing inserted.
    assert rulesmod.command_argv(compile_one("uptime"), {}) == ["uptime"]
    assert rulesmod.command_argv(compile_one("prog -n{1}"), fields) == ["prog", "-n-f/etc/passwd"]


def test_end_of_options_is_checked():
    def problems(**options):
        return rulesmod.problems({"r": {"when": "any", **options}}, ["helpdesk"])

    assert problems(run="date {content}", end_of_options="yes") == []
    assert problems(run="date {content}", end_of_options="no") == []
    assert problems(run="date {content}", end_of_options="maybe") == [
        "[rule:r] end_of_options: not a boolean: use yes or no (got 'maybe')"]
    assert problems(reply="x", end_of_options="yes") == ["[rule:r] end_of_options: set without a run"]
    assert problems(run="date -- {content}", end_of_options="yes") == [
        "[rule:r] end_of_options: run already has -- before {content}: remove end_of_options"]
    assert problems(run="grep {content} -r /srv", end_of_options="yes") == [
        "[rule:r] end_of_options: -r comes after {content}, so after the -- put before that field it is no "
        "longer an option: move it before {content}"]
    # `date -d -- -f/etc/passwd` would take "--" as the date and -f as an option again.
    [between] = problems(run="date -d {content}", end_of_options="yes")
    assert between.startswith("[rule:r] end_of_options: -d comes right before {content}: if -d takes a value, "
                              "the -- put between them becomes that value; write -d{content} ")
    assert problems(run="date -d{content}", end_of_options="yes") == []
    assert problems(run="date -d {content}") == []  # refused at run time instead, if it starts with "-"
    assert problems(run="date {content}", end_of_option="yes") == [
        "[rule:r] end_of_option: unknown option (did you mean end_of_options?)"]


def test_rules_test_shows_the_refusal_instead_of_an_argv():
    rule = date_rule()
    message = Message(msgtype="text", from_user="u", to_user="c", agent_id="1", content="-f" + PASSWD)
    described = rulesmod.describe(rulesmod.Match(rule), "helpdesk", message)
    assert described["run"].startswith("refused: argument 1 ({content} = '-f/etc/passwd') starts with \"-\"")


class OptionInjectionTest(WecomdTestCase):
    """`run = date {content}` on the real server: the message `-f/etc/passwd` must not read the file."""

    extra_config = DATE_RULES

    def reply_of(self, resp) -> str:
        self.assertEqual(resp.code, 200)
        self.assertTrue(resp.body, "no passive reply")
        return ET.fromstring(self.peer.read_reply(resp.body)).findtext("Content")

    def text(self, content: str) -> str:
        return samples.build("text", corp_id=CORP_ID, agent_id="1000002", from_user="mallory", content=content)

    def assert_no_passwd(self, text: str) -> None:
        """No line of /etc/passwd (`date -f` quotes each one it cannot parse) is in `text`."""
        lines = [line for line in Path(PASSWD).read_text().splitlines() if line.strip()]
        self.assertTrue(lines)
        self.assertEqual([line for line in lines if line in text], [])

    def everything_stored(self) -> str:
        rows = self.rows()
        runs = [run for row in rows for run in row["automation"] or []]
        return json.dumps([rows, runs, self.fake.sent], ensure_ascii=False)

    def test_dash_text_is_refused_and_nothing_runs(self):
        with self.assertLogs("wecomd.automation.commands", logging.WARNING) as logs:
            reply = self.reply_of(self.callback(self.text("-f" + PASSWD)))
        self.assert_no_passwd(reply)
        self.assertTrue(reply.startswith("无法执行：argument 1 ({content} = '-f/etc/passwd') starts with \"-\""), reply)
        [row] = self.inbound()
        [run] = self.db(self.services.store.messages.get, row["id"])["automation"]
        self.assertEqual((run["rule"], run["action"], run["status"], run["exit_code"], run["output"] or ""),
                         ("when", "run", "error", None, ""))
        self.assertIn("so date would read it as an option: refused, nothing was run", run["error"])
        self.assert_no_passwd(self.everything_stored())
        self.assertEqual(logs.output, ['WARNING:wecomd.automation.commands:command date: refused, argument 1 ({content}) '
                                       'starts with "-"; nothing was run'])

    def test_with_end_of_options_the_text_is_an_operand_and_fails_harmlessly(self):
        reply = self.reply_of(self.callback(self.text("-f" + PASSWD), app="quiet", agent_id="1000003"))
        self.assert_no_passwd(reply)
        self.assertIn("invalid date", reply)  # `date -- -f/etc/passwd`: not a date, nothing read
        self.assertTrue(reply.startswith("执行失败（退出码 1）"), reply)
        [row] = self.inbound()
        [run] = self.db(self.services.store.messages.get, row["id"])["automation"]
        self.assertEqual((run["rule"], run["status"], run["exit_code"]), ("when_operands", "failed", 1))
        self.assertIn("-f/etc/passwd", run["output"])
        self.assert_no_passwd(self.everything_stored())
