"""`wecomd export`: stored messages, oldest first, as JSON lines or CSV."""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from typing import IO, Iterable

from wecomd.config import Config

# CSV columns: the Message JSON keys, with `fields` as a JSON string.
COLUMNS = (
    "id", "app", "direction", "msgtype", "event", "event_key", "from_user", "to_user", "agent_id",
    "msg_id", "create_time", "received_at", "content", "status", "error", "deliveries", "automatic", "rule",
    "fields",
)
# OWASP's CSV-injection rule: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app", help="only this app")
    p.add_argument("--since", type=parse_iso, help="only messages received at or after this ISO time (UTC if no zone)")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")


def run(config: Config, args: argparse.Namespace) -> int:
    from wecomd.store import Store, StoreError

    store = Store(config.server.database)
    try:
        store.migrate()
        rows = store.iter_export(app=args.app, since=args.since)
        out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
        try:
            count = write(rows, out, args.format)
        finally:
            if args.output:
                out.close()
    except StoreError as exc:
        print("wecomd: export failed: %s" % exc, file=sys.stderr)
        return 1
    finally:
        store.close()
    print("exported %d message(s)" % count, file=sys.stderr)
    return 0


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


def parse_iso(value: str) -> dt.datetime:
    """An ISO 8601 time as naive UTC (a time without a zone is taken as UTC)."""
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError("not an ISO 8601 time: %r" % value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
