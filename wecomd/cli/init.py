"""`wecomd init [DIR]`: a fresh wecomd.conf with generated secrets (and optionally an EnvironmentFile)."""
from __future__ import annotations

import argparse
import os
import secrets
import string
import sys
from pathlib import Path

from wecomd import config as configmod, passwords
from wecomd.cli import envfile
from wecomd.cli.options import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE

NAME, HELP = "init", "write a fresh wecomd.conf with generated secrets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=".", help="directory for wecomd.conf (default: .)")
    p.add_argument("--env-file", metavar="FILE", help="write the secrets to this systemd EnvironmentFile "
                   "(mode 600) as WECOMD_... variables, and leave them out of wecomd.conf")
    p.add_argument("--force", action="store_true", help="overwrite an existing wecomd.conf (and FILE)")
    p.add_argument("--bot", action="append", default=[], metavar="NAME",
                   help="also write a [bot:NAME] section (a 智能机器人) with a generated token and key; repeatable")


def main(args: argparse.Namespace) -> int:
    target = Path(args.dir) / "wecomd.conf"
    env_file = Path(args.env_file) if args.env_file else None
    for path in (target, env_file):
        if path is not None and path.exists() and not args.force:
            print("wecomd: %s exists; use --force to overwrite" % path, file=sys.stderr)
            return EXIT_PROBLEM
    bad = [name for name in args.bot if not configmod.valid_name(name) or name == "main"]
    if bad or len(set(args.bot)) != len(args.bot):
        print("wecomd: a bot name is 1 to 64 of A-Z a-z 0-9 _ -, unique, and not the app's (main): %s"
              % ", ".join(bad or args.bot), file=sys.stderr)
        return EXIT_USAGE
    password = secrets.token_urlsafe(12)
    values = _initial_values(password, args.bot)
    elsewhere = {}
    if env_file is not None:
        moved = _secrets(values)
        elsewhere = {key: "in %s as %s" % (env_file.absolute(), name) for name, key in moved.items()}
        _write_private(env_file, envfile.render(
            {name: values[section].pop(option) for name, (section, option) in moved.items()},
            header="wecomd's secrets, for systemd: EnvironmentFile=%s (mode 600, owned by root).\n"
                   "Each is WECOMD_<SECTION>_<OPTION> and wins over wecomd.conf; see docs/configuration.md."
                   % env_file.absolute()))
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_private(target, configmod.render(values, elsewhere))
    print("wrote %s" % target)
    if env_file is not None:
        print("wrote %s (the secrets; mode 600)" % env_file)
    print("admin login: %s / %s   (shown once; only its hash is stored)" % (values["admin"]["username"], password))
    print("next: set corp_id and agent_id in [app:main], then enter its URL, token and encoding_aes_key in WeCom")
    for name in args.bot:
        print("bot %s: enter https://<your host>/callback/%s and [bot:%s] token and encoding_aes_key in the "
              "bot's API settings (docs/bots.md)" % (name, name, name))
    if env_file is not None:
        print("check it as the service will load it: wecomd check -c %s --env-file %s" % (target, env_file))
    return EXIT_OK


def _secrets(values: dict) -> dict:
    """WECOMD_... name -> (section, option) of every secret `init` generated (not [server] database,
    a path that is secret only as a URL with a password)."""
    return {configmod.env_name(section, option): (section, option)
            for section, options in values.items() for option, text in options.items()
            if text and option in configmod.secret_options(section) and (section, option) != ("server", "database")}


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (also when it existed with another mode)."""
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _initial_values(password: str, bots: list = ()) -> dict:
    alnum = string.ascii_letters + string.digits
    values = {
        "server": {"listen": "127.0.0.1:8080", "database": "wecomd.db", "media_dir": "media"},
        "admin": {
            "username": "admin",
            "password_hash": passwords.hash_password(password),
            "cookie_secret": secrets.token_urlsafe(32),
        },
        "app:main": {
            "corp_id": "ww_CHANGE_ME",
            "agent_id": "1000002",
            "token": "".join(secrets.choice(alnum) for _ in range(32)),
            "encoding_aes_key": "".join(secrets.choice(alnum) for _ in range(43)),
        },
    }
    for name in bots:
        values["bot:%s" % name] = {"token": "".join(secrets.choice(alnum) for _ in range(32)),
                                   "encoding_aes_key": "".join(secrets.choice(alnum) for _ in range(43))}
    return values
