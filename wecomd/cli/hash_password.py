"""`wecomd hash-password`: read a password (tty or stdin), print its hash for [admin] password_hash."""
from __future__ import annotations

import argparse
import getpass
import sys

from wecomd import passwords
from wecomd.cli.options import EXIT_OK, EXIT_PROBLEM

NAME, HELP = "hash-password", "read a password (tty or stdin), print its hash"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options: the password never goes on the command line, where `ps` would show it."""


def main(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if password != getpass.getpass("again: "):
            print("wecomd: passwords differ", file=sys.stderr)
            return EXIT_PROBLEM
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("wecomd: empty password", file=sys.stderr)
        return EXIT_PROBLEM
    print(passwords.hash_password(password))
    return EXIT_OK
