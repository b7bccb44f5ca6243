"""`wecomd serve`: run the daemon."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from wecomd import __version__, checks, logs
from wecomd.cli.options import EXIT_OK, EXIT_PROBLEM, config_arg, load

NAME, HELP = "serve", "run the daemon"
logger = logging.getLogger("wecomd.cli")


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_arg(p)


def main(args: argparse.Namespace) -> int:
    cfg = load(args)
    # [server] log_level, log_format and log_content; journald priorities under systemd (wecomd.logs).
    logs.setup(cfg.server.log_level, cfg.server.log_format, cfg.server.log_content)
    from wecomd import app  # tornado and peewee are only needed from here on

    logger.info("wecomd %s starting with %s", __version__, cfg.path)
    try:
        asyncio.run(app.serve(cfg))
    except checks.StartupError as exc:  # a busy port, an unwritable media_dir or database: one line
        print(logs.error_line("wecomd: %s" % exc), file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK
