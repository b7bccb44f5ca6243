"""What the subcommands share: exit codes, the -c/--env-file options, --since's ISO times, and loading the config."""
from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import sys
from typing import Optional

from wecomd import config as configmod
from wecomd.cli import envfile

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="config file (default: $WECOMD_CONFIG, ./wecomd.conf, /etc/wecomd/wecomd.conf)")


def env_file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env-file", metavar="FILE", help="read this systemd EnvironmentFile (WECOMD_... secrets) "
                   "over the environment first, as the service starts with it")


def environ(args: argparse.Namespace):
    """The environment the config is loaded with: os.environ, with --env-file's variables over it."""
    return envfile.environment(getattr(args, "env_file", None), os.environ)


def load(args: argparse.Namespace) -> configmod.Config:
    env = environ(args)
    return configmod.load(configmod.find_config(args.config, env), env)


def parse_iso(value: str) -> dt.datetime:
    """An ISO 8601 time as naive UTC (a time without a zone is taken as UTC)."""
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError("not an ISO 8601 time: %r" % value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)


def read_new_password() -> Optional[str]:
    """A new password: asked twice on a terminal, else the first line of stdin (never an argument,
    where `ps` would show it). None, with the reason on stderr, when empty or the two differ."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if password != getpass.getpass("again: "):
            print("wecomd: passwords differ", file=sys.stderr)
            return None
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("wecomd: empty password", file=sys.stderr)
        return None
    return password
