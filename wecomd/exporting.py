"""Stored messages as JSON lines or formula-safe CSV: `wecomd export` and the dashboard download."""
from __future__ import annotations

import csv
import json
from typing import IO, Iterable


# CSV columns: the Message JSON keys, with `fields` as a JSON string.
COLUMNS = (
    "id", "app", "direction", "msgtype", "event", "event_key", "from_user", "to_user", "user_name", "agent_id",
    "msg_id", "create_time", "received_at", "content", "status", "error", "deliveries", "automatic", "rule",
    "fields",
)
# OWASP's CSV-injection rule: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def write(rows: Iterable[dict], out: IO[str], fmt: str) -> int:
    """Write rows as `jsonl` or `csv`; return how many were written."""
    count = 0
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore") if fmt == "csv" else None
    if writer:
        writer.writeheader()
    for row in rows:
        if writer:
            cells = {**row, "fields": json.dumps(row.get("fields", {}), ensure_ascii=False)}
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
