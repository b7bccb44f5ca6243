"""`wecomd export`: stored messages, oldest first, as JSON lines or CSV."""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
from typing import IO, Iterable

from wecomd.config import Config

# CSV columns: the Message JSON keys, with `fields` as a JSON string.
COLUMNS = (
    "id", "app", "direction", "msgtype", "event", "event_key", "from_user", "to_user", "agent_id",
    "msg_id", "create_time", "received_at", "content", "status", "error", "deliveries", "automatic", "rule",
    "fields",
)
EXIT_USAGE, EXIT_BROKEN_PIPE = 2, 141  # 141 = 128 + SIGPIPE, what a shell reports for `cat big | head`
# OWASP's CSV-injection rule: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app", help="only this app (one of the config's [app:NAME] sections)")
    p.add_argument("--user", help="only the conversation with this user id (FromUserName, or ToUser for replies)")
    p.add_argument("--type", dest="msgtype", metavar="TYPE", help="only this msgtype: text, image, event, ...")
    p.add_argument("-q", "--query", dest="q", metavar="TEXT",
                   help="only messages whose text contains TEXT, as the dashboard's search box")
    p.add_argument("--since", type=parse_iso, help="only messages received at or after this ISO time (UTC if no zone)")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")


def run(config: Config, args: argparse.Namespace) -> int:
    """Exit status: 0 done; 1 the database failed; 2 an unknown --app; 141 the reader of stdout
    went away (`wecomd export | head`), as for a command that SIGPIPE ended, without a traceback."""
    from wecomd.store import Store, StoreError

    if args.app is not None and args.app not in config.apps:
        print("wecomd export: no app %r in %s; known apps: %s"
              % (args.app, config.path, ", ".join(config.apps) or "none"), file=sys.stderr)
        return EXIT_USAGE
    filters = {name: value for name in ("app", "user", "msgtype", "q") if (value := getattr(args, name, None))}
    store = Store(config.server.database)
    try:
        store.migrate()
        rows = store.iter_export(since=args.since, **filters)
        out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
        try:
            count = write(rows, out, args.format)
            out.flush()
        finally:
            if args.output:
                out.close()
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except StoreError as exc:
        print("wecomd: export failed: %s" % exc, file=sys.stderr)
        return 1
    finally:
        store.close()
    print("exported %d message(s)" % count, file=sys.stderr)
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still buffered
    does not fail again ("Exception ignored ... BrokenPipeError") on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


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
