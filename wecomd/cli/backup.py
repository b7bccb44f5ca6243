"""`wecomd backup FILE`: a checked copy of the SQLite database, taken while wecomd keeps serving.

Only the database is copied. Downloaded media live as plain files under [server] media_dir: copy
that directory with the usual file tools, after the database (docs/operations.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wecomd.cli.options import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, config_arg, env_file_arg, load
from wecomd.config import Config

NAME, HELP = "backup", "copy the SQLite database to FILE, safely while wecomd serves"


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    env_file_arg(p)
    p.add_argument("file", metavar="FILE", help="the SQLite file to write (a new file, mode 0600)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")


def main(args: argparse.Namespace) -> int:
    return backup(load(args), args)


def backup(config: Config, args: argparse.Namespace) -> int:
    """Back up the configured database into args.file; 0 done, 1 failed or refused, 2 not SQLite."""
    from wecomd.store import Store, StoreError  # peewee only from here on
    from wecomd.store.health import human_size

    target = Path(args.file).expanduser()
    if target.is_dir():
        return _fail("%s is a directory; name the backup file" % target, EXIT_PROBLEM)
    if target.exists() and not args.force:
        return _fail("%s exists; use --force to replace it" % target, EXIT_PROBLEM)
    if not target.parent.is_dir():
        return _fail("%s: no such directory" % target.parent, EXIT_PROBLEM)
    try:
        store = Store(config.server.database)
    except StoreError as exc:
        return _fail(str(exc), EXIT_PROBLEM)
    try:
        result = store.maintenance.backup(target)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except StoreError as exc:
        return _fail("backup failed: %s" % exc, EXIT_PROBLEM)
    finally:
        store.close()
    print("backed up to %s: %s, %d message(s), integrity ok, %.2f s"
          % (result["path"], human_size(result["bytes"]), result["messages"], result["seconds"]))
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    print("wecomd: backup: %s" % message, file=sys.stderr)
    return code
