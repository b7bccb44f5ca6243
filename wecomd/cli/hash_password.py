"""`wecomd hash-password`: read a password (tty or stdin), print its hash for [admin] password_hash."""
from __future__ import annotations

import argparse

from wecomd import passwords
from wecomd.cli.options import EXIT_OK, EXIT_PROBLEM, read_new_password

NAME, HELP = "hash-password", "read a password (tty or stdin), print its hash"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options: the password never goes on the command line, where `ps` would show it."""


def main(args: argparse.Namespace) -> int:
    password = read_new_password()
    if password is None:
        return EXIT_PROBLEM
    print(passwords.hash_password(password))
    return EXIT_OK
