"""Stored messages as JSON lines or formula-safe CSV: `wecomd export` and the dashboard download.

The export is what the customer saw: internal notes are only in it when asked (`with_notes`)."""
from __future__ import annotations

import csv
import heapq
import json
from typing import IO, Iterable, Iterator


# CSV columns: the Message JSON keys, with `fields` as a JSON string.
COLUMNS = (
    "id", "app", "direction", "msgtype", "event", "event_key", "from_user", "to_user", "user_name", "agent_id",
    "msg_id", "create_time", "received_at", "content", "status", "error", "deliveries", "automatic", "rule",
    "fields",
)
# OWASP's CSV-injection rule: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def with_notes(messages: Iterable[dict], notes: Iterable[dict]) -> Iterator[dict]:
    """Messages (by id) and internal notes (note JSON, oldest first) merged in the order they were
    written: a note right after the message `after_id`, the newest of its conversation when it was
    written (store/notes.py), before any later message. A note becomes {"type": "note", ...its JSON}."""
    tagged = ({"type": "note", **note} for note in notes)
    return heapq.merge(messages, tagged, key=lambda row: (row["after_id"] or 0, 1) if row.get("type") == "note"
                       else (row["id"], 0))


def note_cells(note: dict) -> dict:
    """A note as a CSV row of the message columns: direction and msgtype "note", the author as
    from_user, the conversation's user as to_user, the text as content, its id as "note:N"."""
    return {"id": "note:%s" % note["id"], "app": note["app"], "direction": "note", "msgtype": "note",
            "from_user": note["author"], "to_user": note["user"], "received_at": note["created_at"],
            "content": note["text"]}


def write(rows: Iterable[dict], out: IO[str], fmt: str) -> int:
    """Write rows as `jsonl` or `csv`; return how many were written."""
    count = 0
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore") if fmt == "csv" else None
    if writer:
        writer.writeheader()
    for row in rows:
        if writer:
            cells = note_cells(row) if row.get("type") == "note" else \
                {**row, "fields": json.dumps(row.get("fields", {}), ensure_ascii=False)}
            writer.writerow({name: csv_cell(value) for name, value in cells.items()})
        else:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def csv_cell(value: object) -> object:
    """`value` made safe for a spreadsheet: text that starts like a formula (=, +, -, @, tab or CR)
    gets a leading single quote, which shows the text as written instead of evaluating it."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
