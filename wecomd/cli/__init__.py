"""The `wecomd` command line: one module per subcommand, registered here in `--help` order.

Each subcommand module has NAME, HELP, add_arguments(parser) and main(args) -> exit status;
this module only builds the parser from them and maps errors to exit codes.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from wecomd import __version__, config as configmod
from wecomd.cli import audit, backup, check, demo, doctor, export, hash_password, init, rules, serve, simulate, user
from wecomd.cli.options import EXIT_USAGE

SUBCOMMANDS = (serve, demo, check, doctor, init, hash_password, user, audit, simulate, rules, export, backup)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except configmod.ConfigError as exc:
        print("wecomd: configuration problems:\n%s" % _indent(str(exc)), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wecomd", description="WeCom self-built app callback daemon")
    parser.add_argument("--version", action="version", version="wecomd %s" % __version__)
    sub = parser.add_subparsers(metavar="COMMAND")
    for command in SUBCOMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP)
        command.add_arguments(p)
        p.set_defaults(func=command.main)
    return parser


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
