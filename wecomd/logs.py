"""The daemon's logging: text or JSON lines, syslog priorities for journald, message contents withheld.

`setup` is called once by `wecomd serve` (with `[server] log_level`, `log_format`, `log_content`) and
by `wecomd demo`. Under systemd, stderr is the journal (`JOURNAL_STREAM` names it): each line then
starts with its sd-daemon(3) priority prefix (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug)
and carries no timestamp, as journald adds its own; every line of a traceback carries the prefix too.

Message contents (texts, event keys, command arguments) are logged only through `content()`, and
shown only where `[server] log_content = yes`; elsewhere the line says how much was withheld. The
SQL that peewee logs at debug keeps its statement but loses its parameters in the same way.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any, Mapping, Optional

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"  # journald keeps the time and the priority


def priority(levelno: int) -> int:
    """The syslog priority of a logging level, as sd-daemon(3) prefixes use them."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def is_journal(stream: IO, environ: Optional[Mapping[str, str]] = None) -> bool:
    """True when `stream` is systemd's journal stream: `JOURNAL_STREAM` is `device:inode` of it
    (systemd.exec(5)), so a child whose stderr was redirected elsewhere writes plain lines."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (stat.st_dev, stat.st_ino)
    except (ValueError, OSError, AttributeError):
        return False


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, exc (traceback or null)."""

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else record.exc_text or None
        if record.stack_info:
            exc = "%s\n%s" % (exc, record.stack_info) if exc else record.stack_info
        return json.dumps({
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "exc": exc,
        }, ensure_ascii=False)


class JournalFormatter(logging.Formatter):
    """Another formatter's output with the record's `<N>` priority prefix on every line."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = "<%d>" % priority(record.levelno)
        return "\n".join(prefix + line for line in self.inner.format(record).splitlines() or [""])


def formatter(log_format: str = "text", journal: bool = False) -> logging.Formatter:
    """The formatter for `[server] log_format`, with priority prefixes when writing to the journal."""
    if log_format == "json":
        inner: logging.Formatter = JsonFormatter()
    else:
        inner = logging.Formatter(JOURNAL_FORMAT if journal else TEXT_FORMAT)
    return JournalFormatter(inner) if journal else inner


# --- message contents -------------------------------------------------------------------------

class Content:
    """A log argument that is message content. On its own it prints as a placeholder; only the
    handler `setup` installs with `log_content = yes` puts the value itself in the line."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return "[%d characters withheld]" % len(str(self.value))

    __repr__ = __str__


def content(value: Any) -> Content:
    """The one way a log line may carry message contents: `logger.debug("text %s", content(text))`."""
    return Content(value)


class ContentFilter(logging.Filter):
    """Shows or withholds contents: `Content` arguments, and the parameters of peewee's SQL log."""

    def __init__(self, show: bool) -> None:
        super().__init__()
        self.show = show

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "peewee" and isinstance(record.msg, tuple) and len(record.msg) == 2:
            sql, params = record.msg  # peewee logs (sql, params): the parameters are the row's values
            if not self.show:
                record.msg, record.args = "%s [%d parameter(s) withheld]" % (sql, len(params or ())), ()
        elif self.show and isinstance(record.args, tuple) and any(isinstance(a, Content) for a in record.args):
            record.args = tuple(a.value if isinstance(a, Content) else a for a in record.args)
        return True


# --- setting it up ----------------------------------------------------------------------------

def setup(level: str = "info", log_format: str = "text", log_content: bool = False,
          stream: Optional[IO] = None, environ: Optional[Mapping[str, str]] = None) -> Optional[logging.Handler]:
    """Log to `stream` (stderr) at `level`; returns the handler, or None when the root logger has
    handlers already (an embedding program or a test harness configured logging: left alone)."""
    root = logging.getLogger()
    if root.handlers:
        return None
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format, is_journal(stream, environ)))
    handler.addFilter(ContentFilter(log_content))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return handler


def error_line(message: str, stream: Optional[IO] = None, environ: Optional[Mapping[str, str]] = None) -> str:
    """`message` as one line for stderr, with the error priority prefix when stderr is the journal,
    so `journalctl -p err` shows why wecomd did not start."""
    line = " ".join(str(message).split("\n"))
    return ("<3>" + line) if is_journal(stream or sys.stderr, environ) else line
