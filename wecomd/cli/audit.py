"""`wecomd audit export`: write the audit log, oldest first, as JSON lines (who, when, what, target)."""
from __future__ import annotations

import argparse
import json
import sys

from wecomd.cli.options import EXIT_OK, EXIT_PROBLEM, config_arg, env_file_arg, load, parse_iso

NAME, HELP = "audit", "export the audit log (sign-ins, replies, assignments, operator and token changes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = sub.add_parser("export", help="write the audit log, oldest first, as JSON lines")
    config_arg(q)
    env_file_arg(q)
    q.add_argument("--actor", help="only what this operator did")
    q.add_argument("--action", dest="what", metavar="ACTION", help="only this action: login, login_failed, reply ...")
    q.add_argument("--since", type=parse_iso, help="only rows at or after this ISO time (UTC if no zone)")
    q.add_argument("--until", type=parse_iso, help="only rows before this ISO time")
    q.add_argument("-o", "--output", help="write to this file instead of stdout")


def main(args: argparse.Namespace) -> int:
    from wecomd.store import Store, StoreError

    config = load(args)
    store = Store(config.server.database)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        store.migrate()
        for row in store.audit.iter_all(actor=args.actor, action=args.what, since=args.since, until=args.until):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        out.flush()
    except StoreError as exc:
        print("wecomd audit: %s" % exc, file=sys.stderr)
        return EXIT_PROBLEM
    finally:
        if args.output:
            out.close()
        store.close()
    return EXIT_OK
