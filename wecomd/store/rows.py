"""Store rows <-> JSON: the Message and rule-run JSON, inbound row values, the text that search
covers, page sizes, StoreError and the guard that turns database failures of Store methods into it,
and the SQLite online-backup copy behind Store.backup."""
from __future__ import annotations

import functools
import json
import os
import sqlite3
import tempfile
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from wecomd.wecom.messages import Message

MAX_PAGE = 500  # the most rows one page of messages or conversations holds
# One rule run as it appears in a Message's "automation" list: never its url or webhook body.
AUTOMATION_KEYS = ("id", "rule", "action", "status", "path", "exit_code", "duration_ms", "output",
                   "error", "started_at", "finished_at")
_RUN_INTERNAL_KEYS = ("message_id", "app", "user", "reply_message_id", "url", "payload", "attempts",
                      "next_attempt_at")
_RUN_TIMES = ("started_at", "finished_at", "next_attempt_at")

# Where the searchable words of each MsgType live in `fields`, besides `content` (which a
# text message and every outbound reply carry). Paths descend into nested objects.
_SEARCH_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "location": (("Label",), ("Poiname",)),
    "link": (("Title",), ("Description",), ("Url",)),
    "file": (("FileName",),),
    "event": (("Event",), ("EventKey",), ("ScanCodeInfo", "ScanResult"),
              ("SendLocationInfo", "Label"), ("SendLocationInfo", "Poiname")),
}


def search_text(msgtype: str, content: Optional[str], fields: Optional[dict]) -> Optional[str]:
    """Return the text message search covers, or None when a message has none.

    `content` first (text messages, outbound replies), then the per-type fields of
    _SEARCH_PATHS, joined with newlines. Pure: the 0002 migration back-fills old
    rows with it, so old and new rows are searchable alike.
    """
    fields = fields if isinstance(fields, dict) else {}
    if content is None and msgtype == "text":
        content = fields.get("Content")
    pieces = [content] + [_lookup(fields, path) for path in _SEARCH_PATHS.get(msgtype, ())]
    text = "\n".join(p for p in pieces if isinstance(p, str) and p.strip())
    return text or None


def media_columns(fields: Optional[dict]) -> dict[str, Optional[str]]:
    """media_status and media_name of a received message: "pending" when it has a MediaId.

    Image, voice, video and file messages carry one; a file's name is known at once.
    """
    fields = fields if isinstance(fields, dict) else {}
    media_id, name = fields.get("MediaId"), fields.get("FileName")
    if not (isinstance(media_id, str) and media_id.strip()):
        return {"media_status": None, "media_name": None}
    return {"media_status": "pending", "media_name": name if isinstance(name, str) else None}


def inbound_row(app: str, message: Message, dedup_key: str, reply: Optional[str],
                now: datetime) -> dict[str, Any]:
    """Column values for a newly received message."""
    return dict(
        app=app, direction="in", dedup_key=dedup_key, user=message.from_user,
        msgtype=message.msgtype, event=message.event, event_key=message.event_key,
        from_user=message.from_user, to_user=message.to_user,
        agent_id=_text(message.agent_id), msg_id=_text(message.msg_id),
        create_time=message.create_time, received_at=now, content=message.content,
        status="received", fields=dumps(message.fields), raw_xml=message.raw or "",
        reply=reply, deliveries=1, updated_at=now,
        search_text=search_text(message.msgtype, message.content, message.fields),
        **media_columns(message.fields))


def to_json(row: Any) -> dict:
    """The documented Message JSON (design.md) plus `deliveries`; never the raw XML or a path."""
    return {
        "id": row.id, "app": row.app, "direction": row.direction, "msgtype": row.msgtype,
        "event": row.event, "event_key": row.event_key, "from_user": row.from_user,
        "to_user": row.to_user, "agent_id": row.agent_id,
        # For an outbound row, WeCom's id is the msgid its send API answered with.
        "msg_id": row.msg_id if row.direction == "in" else row.wecom_msgid,
        "create_time": row.create_time, "received_at": iso(row.received_at),
        "content": row.content, "status": row.status, "error": row.error,
        "fields": json.loads(row.fields or "{}"), "deliveries": row.deliveries,
        "operator": row.operator if row.direction == "out" else None,
        "attempts": row.attempts or 0, "media": media_json(row),
        # An automatic answer: how it went out ("passive" or "api") and the rule (None: the app's reply =).
        "automatic": row.automatic, "rule": row.rule,
    }


def run_json(run: Any) -> dict:
    """Every column of a rule run (what the orchestrator and the webhook sender work with)."""
    keys = AUTOMATION_KEYS + _RUN_INTERNAL_KEYS
    return {key: iso(getattr(run, key)) if key in _RUN_TIMES else getattr(run, key) for key in keys}


def automation_json(run: Any) -> dict:
    """The public view of a rule run, an entry of Message JSON "automation"."""
    return {key: iso(getattr(run, key)) if key in _RUN_TIMES else getattr(run, key)
            for key in AUTOMATION_KEYS}


def media_json(row: Any) -> Optional[dict]:
    """The public view of a row's media: null without media, never the filesystem path."""
    if row.media_status is None:
        return None
    return {"status": row.media_status, "size": row.media_size, "type": row.media_type,
            "name": row.media_name, "error": row.media_error}


class StoreError(Exception):
    """The database could not be opened, read or written (wecomd.store re-exports it)."""


def guarded(action: str):
    """Decorate a Store method so that database failures become StoreError (via Store._failures)."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            with self._failures(action):
                return method(self, *args, **kwargs)
        return wrapper
    return decorate


def page_size(limit: int) -> int:
    """A page's row count: ValueError below 1, at most MAX_PAGE."""
    if int(limit) < 1:
        raise ValueError("limit must be at least 1")
    return min(int(limit), MAX_PAGE)


def dumps(fields: Optional[dict]) -> str:
    return json.dumps(fields or {}, ensure_ascii=False, separators=(",", ":"))


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def naive_utc(moment: Optional[datetime]) -> Optional[datetime]:
    """Aware datetimes converted to naive UTC; naive ones are taken as UTC already."""
    if moment is not None and moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def iso(moment: Optional[datetime]) -> Optional[str]:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def _lookup(fields: dict, path: tuple[str, ...]) -> Any:
    value: Any = fields
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


# ------------------------------------------------------------ online backup (SQLite)

def copy_sqlite(source: sqlite3.Connection, target: Path, pages: int = 1024) -> dict:
    """Copy the database of `source` (an open connection outside any transaction) into `target`.

    The copy is made with SQLite's online backup API, `pages` pages per step, all inside one read
    transaction on `source`. In WAL mode a reader never blocks the writer, and the snapshot it
    holds keeps other connections' commits from restarting the copy: without it, a daemon that
    commits between two steps sends the backup back to page one, for ever under steady traffic.

    The copy goes to a temporary file beside `target` (mode 0600), is switched to a rollback
    journal so that it is one self-contained file, must pass `PRAGMA integrity_check` (and the
    FTS5 index check when it has message_fts), is fsynced, and only then renamed to `target`,
    replacing any file there. Returns {"path", "bytes", "messages", "pages", "steps"}; raises
    sqlite3.Error (sqlite3.DatabaseError for a damaged copy) or OSError, leaving no temp file.
    """
    target = Path(target).absolute()
    fd, temp = tempfile.mkstemp(dir=str(target.parent), prefix=".%s." % target.name, suffix=".partial")
    os.close(fd)
    try:
        copied = _backup_into(source, temp, max(1, int(pages)))
        _fsync(temp)
        os.replace(temp, str(target))
    except BaseException:
        for leftover in (temp, temp + "-journal", temp + "-wal", temp + "-shm"):
            with suppress(OSError):
                os.unlink(leftover)
        raise
    with suppress(OSError):
        _fsync(str(target.parent), directory=True)
    return dict(copied, path=str(target), bytes=target.stat().st_size)


def _backup_into(source: sqlite3.Connection, path: str, pages: int) -> dict:
    copy = sqlite3.connect(path, isolation_level=None)
    try:
        steps = []
        source.execute("BEGIN")
        try:
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the snapshot
            source.backup(copy, pages=pages, progress=lambda *_: steps.append(1))
        finally:
            source.execute("ROLLBACK")
        copy.execute("PRAGMA journal_mode=delete")
        problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("the copy fails integrity_check: %s" % "; ".join(problems[:5]))
        tables = {row[0] for row in copy.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "message_fts" in tables:
            copy.execute("INSERT INTO message_fts(message_fts) VALUES ('integrity-check')")
        messages = copy.execute("SELECT count(*) FROM message").fetchone()[0] if "message" in tables else 0
        return {"messages": messages, "pages": copy.execute("PRAGMA page_count").fetchone()[0],
                "steps": len(steps)}
    finally:
        copy.close()


def _fsync(path: str, directory: bool = False) -> None:
    """Flush a file to disk, or a directory so that a rename in it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot fsync a directory; a file must be flushed
            raise
    finally:
        os.close(fd)
