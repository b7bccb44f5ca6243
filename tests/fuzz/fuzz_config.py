#!/usr/bin/env python3
"""Coverage-guided fuzz target (atheris) for wecomd.config (loader, environment, render) and wecomd.automation.rules.

    python tests/fuzz/fuzz_config.py -max_total_time=60 /tmp/fuzz-config tests/fuzz/corpus/config
    python tests/fuzz/fuzz_config.py --replay [DIR_OR_FILE ...]     # one pass, no atheris needed

The first byte of an input picks the mode ('a' = 0, 'b' = 1, ...); the rest is the payload. Any
exception other than ConfigError from load (RuleError from rules), and any failed assertion, is a
crash. Crashes already reported and pinned as xfail regression tests in tests/test_properties.py
are skipped so that fuzzing can go past them; set TEST_FUZZ_STRICT=1 to stop on them too.
"""
from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _driver  # noqa: E402  (the shared atheris/replay driver beside this file)

atheris = _driver.atheris

if __name__ == "__main__" and atheris is not None and "--replay" not in sys.argv:
    with atheris.instrument_imports(include=["wecomd", "configparser"]):
        from wecomd import config
        from wecomd.wecom import messages
        from wecomd.automation import rules
else:
    from wecomd import config
    from wecomd.wecom import messages
    from wecomd.automation import rules

STRICT = os.environ.get("TEST_FUZZ_STRICT") == "1"
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
VALID_APP = ("[app:main]\ncorp_id = ww1\nagent_id = 1\ntoken = T0kenForTests\nencoding_aes_key = %s\n"
             % KEY).encode()
_SHM = Path("/dev/shm")
# libFuzzer ends the process without Python's atexit, so each input's file is removed right after
# use, leaving at most this one empty directory; the pid keeps parallel workers (-jobs) apart.
DIRECTORY = (_SHM if _SHM.is_dir() else Path(tempfile.gettempdir())) / "wecomd-fuzz"
DIRECTORY.mkdir(exist_ok=True)
PATH = DIRECTORY / ("%d.conf" % os.getpid())
MESSAGE = messages.Message(msgtype="text", content="x; rm -rf / $(id) {content}", from_user="u\0v")
EVENT = messages.Message(msgtype="event", event="click", event_key="K", from_user="u")


def known_bug(exc: BaseException) -> bool:
    """The crashes pinned by test_regression_rules_* (reported, waiting for a fix in wecomd/automation/rules.py):
    anything escaping re.compile in rules._regex, urlsplit in rules._is_http_url, or int() in
    rules._template_problems."""
    names, tb = set(), exc.__traceback__
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return False  # all of them are fixed in wecomd/automation/rules.py; any crash now stops the fuzzer


def _load(text: bytes, environ=None):
    PATH.write_bytes(text)
    try:
        return config.load(PATH, environ or {})
    except config.ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    except Exception as exc:
        if not known_bug(exc):
            raise
    finally:
        PATH.unlink()
    return None


def mode_file(payload: bytes) -> None:
    _load(payload)


def mode_file_with_app(payload: bytes) -> None:
    _load(VALID_APP + payload)


def mode_environment(payload: bytes) -> None:
    environ = {}
    for line in payload.decode("utf-8", "replace").split("\n"):
        name, _, value = line.partition("=")
        environ[name if name.startswith("WECOMD_") else "WECOMD_" + name] = value
    loaded = _load(VALID_APP, environ)
    if loaded is not None:
        for (section, option), source in loaded.sources.items():
            name = config.env_name(section, option)
            assert (source == "environment " + name) == (name in environ), (name, source)


def _rule_dicts(text: str):
    """`[name]` starts a rule, `option=value` lines fill it; a tiny INI reader of our own."""
    raw, current = {}, None
    for line in text.split("\n"):
        if line.startswith("[") and line.endswith("]"):
            current = raw.setdefault(line[1:-1], {})
        else:
            option, _, value = line.partition("=")
            if current is None:
                current = raw.setdefault("r", {})
            current[option] = value
    return raw


def mode_rules(payload: bytes) -> None:
    raw = _rule_dicts(payload.decode("utf-8", "replace"))
    try:
        found = rules.problems(raw, ["main"])
        compiled = rules.compile_rules(raw)
    except rules.RuleError:
        return
    except Exception as exc:
        if not known_bug(exc):
            raise
        return
    assert all(" app: " in p for p in found), found
    for message in (MESSAGE, EVENT):
        for match in rules.select(compiled, "main", message):
            assert match.rule in compiled
    for rule in compiled:
        match = rules.Match(rule, groups=("g1",) * 9, named={"n": "N"})
        fields = rules.template_fields(match, "main", MESSAGE)
        if rule.reply:
            rules.render(rule.reply, fields)
        if rule.run:
            argv = rules.command_argv(rule, fields)
            assert len(argv) == len(shlex.split(rule.run)) and not any("\0" in a for a in argv)
        rules.describe(match, "main", MESSAGE)


def mode_render(payload: bytes) -> None:
    """render() of an app whose reply is the payload: refused with ValueError, or a file load() reads."""
    reply = payload.decode("utf-8", "replace")
    values = {"app:main": {"corp_id": "ww1", "agent_id": "1", "token": "abc", "encoding_aes_key": KEY,
                           "reply": reply}}
    try:
        text = config.render(values)
    except ValueError:
        return
    _load(text.encode("utf-8"))


MODES = [mode_file, mode_file_with_app, mode_environment, mode_rules, mode_render]


TestOneInput = _driver.by_first_byte(MODES)


def main() -> int:
    return _driver.main(TestOneInput, __file__)


if __name__ == "__main__":
    sys.exit(main())
