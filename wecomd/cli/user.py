"""`wecomd user`: operator accounts of the dashboard (add, list, passwd, disable, enable, set, token).

Accounts live in the database, so these work while the daemon runs: a change holds from the
dashboard's next request (wecomd.accounts reads the account on each). Every change is written to
the audit log, by "cli:<login name>". The `[admin]` of the config file stays the bootstrap admin and
is not listed here.
"""
from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from typing import Optional

from wecomd import accounts, passwords
from wecomd.cli.options import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, config_arg, env_file_arg, load, read_new_password
from wecomd.config import Config

NAME, HELP = "user", "manage the dashboard's operator accounts (add, list, passwd, disable, enable, set, token)"
ACTIONS = ("add", "list", "passwd", "disable", "enable", "set", "token")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("add", "add an account; its password is read from the terminal or stdin"),
                         ("list", "list the accounts"),
                         ("passwd", "set an account's password (read from the terminal or stdin); "
                          "its sessions end"),
                         ("disable", "disable an account: no sign-in, its sessions and tokens stop at once"),
                         ("enable", "enable a disabled account"),
                         ("set", "change an account's role or apps"),
                         ("token", "create an API token for an account (printed once)")):
        q = sub.add_parser(action, help=text)
        config_arg(q)
        env_file_arg(q)
        if action != "list":
            q.add_argument("name", help="the account's name")
        if action in ("add", "set"):
            q.add_argument("--role", choices=accounts.ROLES, required=action == "add")
            q.add_argument("--apps", metavar="APP,APP", help="only these apps (default: every app)")
        if action == "set":
            q.add_argument("--all-apps", action="store_true", help="every app again")
        if action == "list":
            q.add_argument("--json", action="store_true", help="JSON lines instead of a table")
        if action == "token":
            q.add_argument("--label", help="what the token is for, shown in the token list")


def main(args: argparse.Namespace) -> int:
    from wecomd.store import Store, StoreError

    config = load(args)
    apps = _apps(config, getattr(args, "apps", None))
    if apps is False:
        return EXIT_USAGE
    name = getattr(args, "name", None)
    if name is not None and not _valid_name(config, name):
        return EXIT_USAGE
    store = Store(config.server.database)
    try:
        store.migrate()
        return _ACTIONS[args.action](store, args, apps)
    except StoreError as exc:
        print("wecomd user: %s" % exc, file=sys.stderr)
        return EXIT_PROBLEM
    finally:
        store.close()


def _apps(config: Config, given: Optional[str]):
    """The --apps list (None when not given), or False after saying which app is unknown."""
    if given is None:
        return None
    names = [name.strip() for name in given.split(",") if name.strip()]
    unknown = [name for name in names if name not in config.apps]
    if unknown or not names:
        print("wecomd user: no app %s in %s; known apps: %s" % (", ".join(map(repr, unknown)) or "given",
              config.path, ", ".join(config.apps) or "none"), file=sys.stderr)
        return False
    return names


def _valid_name(config: Config, name: str) -> bool:
    if not re.fullmatch(accounts.NAME_PATTERN, name):
        print("wecomd user: a name is 1-64 letters, digits and . _ @ -, not %r" % name, file=sys.stderr)
        return False
    if name == config.admin.username or name == accounts.API_TOKEN_USER:
        print("wecomd user: %r is the config file's [admin] (or the api_token's) name" % name, file=sys.stderr)
        return False
    return True


def _actor() -> str:
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):  # no login name for this uid (a container)
        return "cli"


def _add(store, args, apps) -> int:
    from wecomd.store.operators import OperatorExists

    password = read_new_password()
    if password is None:
        return EXIT_PROBLEM
    try:
        row = store.operators.add(args.name, args.role, passwords.hash_password(password), apps)
    except OperatorExists as exc:
        print("wecomd user: %s" % exc, file=sys.stderr)
        return EXIT_PROBLEM
    store.audit.record(_actor(), "operator_add", "operator:%s" % args.name, dict(role=args.role, apps=apps))
    print("added %s (%s, %s)" % (row["name"], row["role"], _apps_text(row["apps"])))
    return EXIT_OK


def _list(store, args, apps) -> int:
    rows = store.operators.all()
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return EXIT_OK
    if not rows:
        print("no operator accounts (the config file's [admin] can sign in)")
        return EXIT_OK
    print("%-20s %-9s %-9s %s" % ("NAME", "ROLE", "STATE", "APPS"))
    for row in rows:
        print("%-20s %-9s %-9s %s" % (row["name"], row["role"], "disabled" if row["disabled"] else "enabled",
                                      _apps_text(row["apps"])))
    return EXIT_OK


def _change(store, args, action: str, detail: Optional[dict], **changes) -> int:
    try:
        row = store.operators.update(args.name, **changes)
    except KeyError:
        print("wecomd user: no operator %r" % args.name, file=sys.stderr)
        return EXIT_PROBLEM
    store.audit.record(_actor(), action, "operator:%s" % args.name, detail)
    print("%s: %s, %s, %s" % (row["name"], row["role"], "disabled" if row["disabled"] else "enabled",
                              _apps_text(row["apps"])))
    return EXIT_OK


def _passwd(store, args, apps) -> int:
    if store.operators.get(args.name) is None:
        print("wecomd user: no operator %r" % args.name, file=sys.stderr)
        return EXIT_PROBLEM
    password = read_new_password()
    if password is None:
        return EXIT_PROBLEM
    return _change(store, args, "operator_passwd", None, password_hash=passwords.hash_password(password))


def _disable(store, args, apps) -> int:
    return _change(store, args, "operator_disable", None, disabled=True)


def _enable(store, args, apps) -> int:
    return _change(store, args, "operator_enable", None, disabled=False)


def _set(store, args, apps) -> int:
    if args.role is None and apps is None and not args.all_apps:
        print("wecomd user set: give --role, --apps or --all-apps", file=sys.stderr)
        return EXIT_USAGE
    detail = {key: value for key, value in (("role", args.role), ("apps", apps)) if value is not None}
    if args.all_apps:
        detail["apps"] = None
    return _change(store, args, "operator_set", detail, role=args.role, apps=apps, clear_apps=args.all_apps)


def _token(store, args, apps) -> int:
    token, token_hash = accounts.new_token()
    try:
        row = store.operators.add_token(args.name, token_hash, args.label, _actor())
    except KeyError:
        print("wecomd user: no operator %r" % args.name, file=sys.stderr)
        return EXIT_PROBLEM
    store.audit.record(_actor(), "token_create", "operator:%s" % args.name, dict(token_id=row["id"],
                                                                                  label=args.label))
    print(token)
    print("API token %d for %s: shown this once; send it as Authorization: Bearer <token>" % (row["id"], args.name),
          file=sys.stderr)
    return EXIT_OK


def _apps_text(apps: Optional[list]) -> str:
    return ",".join(apps) if apps else "all apps"


_ACTIONS = dict(add=_add, list=_list, passwd=_passwd, disable=_disable, enable=_enable, set=_set, token=_token)
