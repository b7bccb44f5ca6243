"""`wecomd export`: write stored messages, oldest first, as Message JSON lines or CSV."""
from __future__ import annotations

import argparse
import os
import sys

from wecomd import exporting
from wecomd.cli.options import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, config_arg, env_file_arg, load, parse_iso
from wecomd.config import Config

NAME, HELP = "export", "write stored messages, oldest first, as Message JSON"
EXIT_BROKEN_PIPE = 141  # 141 = 128 + SIGPIPE, what a shell reports for `cat big | head`


def main(args: argparse.Namespace) -> int:
    return export(load(args), args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    env_file_arg(p)
    p.add_argument("--app", help="only this app (one of the config's [app:NAME] sections)")
    p.add_argument("--user", help="only the conversation with this user id (FromUserName, or ToUser for replies)")
    p.add_argument("--type", dest="msgtype", metavar="TYPE", help="only this msgtype: text, image, event, ...")
    p.add_argument("-q", "--query", dest="q", metavar="TEXT",
                   help="only messages whose text contains TEXT, as the dashboard's search box")
    p.add_argument("--since", type=parse_iso, help="only messages received at or after this ISO time (UTC if no zone)")
    p.add_argument("--notes", action="store_true",
                   help="add the conversations' internal notes, merged by time (never without it: the "
                        "export is what the customer saw); not with --type or --query")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")


def export(config: Config, args: argparse.Namespace) -> int:
    """Exit status: 0 done; 1 the database failed; 2 an unknown --app; 141 the reader of stdout
    went away (`wecomd export | head`), as for a command that SIGPIPE ended, without a traceback."""
    from wecomd.store import Store, StoreError

    if args.app is not None and args.app not in config.apps:
        print("wecomd export: no app %r in %s; known apps: %s"
              % (args.app, config.path, ", ".join(config.apps) or "none"), file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "notes", False) and (args.msgtype or args.q):
        print("wecomd export: --notes cannot be combined with --type or --query (they select messages)",
              file=sys.stderr)
        return EXIT_USAGE
    filters = {name: value for name in ("app", "user", "msgtype", "q") if (value := getattr(args, name, None))}
    store = Store(config.server.database)
    try:
        store.migrate()
        # Each with its user's name as the dashboard last learned it (the contact cache; no WeCom call).
        corps = {name: app.corp_id for name, app in config.apps.items()}
        rows = store.contacts.with_names(store.messages.iter_export(since=args.since, **filters), corps)
        if getattr(args, "notes", False):
            rows = exporting.with_notes(rows, store.notes.iter_export(args.app, args.user, args.since))
        out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
        try:
            count = exporting.write(rows, out, args.format)
            out.flush()
        finally:
            if args.output:
                out.close()
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except StoreError as exc:
        print("wecomd: export failed: %s" % exc, file=sys.stderr)
        return EXIT_PROBLEM
    finally:
        store.close()
    print("exported %d message(s)" % count, file=sys.stderr)
    return EXIT_OK


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still buffered
    does not fail again ("Exception ignored ... BrokenPipeError") on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)

