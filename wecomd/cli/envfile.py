"""systemd EnvironmentFile= files: read for `check --env-file` / `doctor --env-file`, written by `init --env-file`.

The reading follows systemd's own parser (src/basic/env-file.c): `#` and `;` start comment lines,
a value may be 'single-quoted' (literal) or "double-quoted" (where a backslash escapes " \\ ` and $),
a backslash at the end of a line continues it, whitespace around an unquoted value is dropped, no
`$VARIABLE` is expanded, and a later line wins over an earlier one. Lines systemd would ignore (no
`=`, a name such as `export NAME`) and an unterminated quote are reported instead, with their line
number and never their value.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

from wecomd.config import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_BARE = re.compile(r"[A-Za-z0-9_./:+,@%=-]*\Z")  # written without quotes by render()
_DOUBLE_QUOTE_ESCAPES = "\"\\`$"
MAX_SIZE = 1 << 20  # an environment file is a few lines; this is not one


def load(path: Union[str, Path]) -> Dict[str, str]:
    """NAME -> value from the file at `path`; ConfigError naming the file and the lines at fault."""
    label = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SIZE + 1)
    except OSError as exc:
        raise ConfigError("%s: cannot read the environment file: %s" % (label, exc.strerror or exc)) from None
    if len(data) > MAX_SIZE:
        raise ConfigError("%s: larger than %d bytes: not an environment file" % (label, MAX_SIZE))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("%s: not UTF-8 text (byte %d)" % (label, exc.start)) from None
    found, problems = parse(text)
    if problems:
        raise ConfigError(["%s: %s" % (label, problem) for problem in problems])
    return found


def environment(path: Optional[Union[str, Path]], base: Mapping[str, str]) -> Mapping[str, str]:
    """`base` (the process environment) with the file's variables over it, as systemd starts wecomd
    with its EnvironmentFile; just `base` when `path` is None."""
    return base if path is None else {**base, **load(path)}


def parse(text: str) -> Tuple[Dict[str, str], List[str]]:
    """(NAME -> value, problems) of an environment file's text, read as systemd reads it."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    found: Dict[str, str] = {}
    problems: List[str] = []
    state, key, value, lineno, start = "line", [], [], 1, 1
    trailing: Optional[int] = None  # where an unquoted value's trailing whitespace starts

    def finish() -> None:
        name = "".join(key).rstrip(" \t")
        if not _NAME.fullmatch(name):
            problems.append("line %d: %r is not a variable name (systemd ignores the line; write "
                            "NAME=value, without `export`)" % (start, name))
        else:
            found[name] = "".join(value if trailing is None else value[:trailing])

    for char in text:
        if state == "line":  # before a name
            if char in "#;":
                state = "comment"
            elif char not in " \t\n":
                state, key, start = "key", [char], lineno
        elif state == "comment":
            if char == "\n":
                state = "line"
        elif state == "key":
            if char == "\n":
                problems.append("line %d: not NAME=value" % start)
                state = "line"
            elif char == "=":
                state, value, trailing = "before", [], None
            else:
                key.append(char)
        elif state == "before":  # after `=`, and after a closing quote
            if char == "\n":
                finish()
                state = "line"
            elif char == "'":
                state = "single"
            elif char == '"':
                state = "double"
            elif char == "\\":
                state = "escape"
            elif char not in " \t":
                state = "bare"
                value.append(char)
        elif state == "bare":  # quotes are ordinary characters here
            if char == "\n":
                finish()
                state = "line"
            elif char == "\\":
                state, trailing = "escape", None
            else:
                if char not in " \t":
                    trailing = None
                elif trailing is None:
                    trailing = len(value)
                value.append(char)
        elif state == "escape":
            state = "bare"
            if char != "\n":  # a backslash at the end of a line continues the value
                value.append(char)
        elif state == "single":
            if char == "'":
                state = "before"
            else:
                value.append(char)
        elif state == "double":
            if char == '"':
                state = "before"
            elif char == "\\":
                state = "double-escape"
            else:
                value.append(char)
        else:  # double-escape
            state = "double"
            if char in _DOUBLE_QUOTE_ESCAPES:
                value.append(char)
            elif char != "\n":
                value.extend(("\\", char))
        if char == "\n":
            lineno += 1
    if state == "key":
        problems.append("line %d: not NAME=value" % start)
    elif state in ("single", "double", "double-escape"):
        problems.append("line %d: a quote is never closed" % start)
    elif state != "line" and state != "comment":
        finish()
    return found, problems


def render(values: Mapping[str, str], header: str = "") -> str:
    """An environment file systemd and `sh -c '. FILE'` both read back as `values`."""
    lines = ["# " + line for line in header.splitlines()]
    for name, value in values.items():
        if not _NAME.fullmatch(name):
            raise ValueError("%r is not a variable name" % name)
        lines.append("%s=%s" % (name, _quote(value)))
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    if _BARE.fullmatch(value):
        return value
    if "'" not in value:
        return "'%s'" % value  # literal in both systemd and sh: the `$` of a password hash stays
    return '"%s"' % "".join("\\" + c if c in _DOUBLE_QUOTE_ESCAPES else c for c in value)
