"""The `wecomd` command line: parses arguments and maps errors to exit codes."""
from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import secrets
import string
import sys
from pathlib import Path
from typing import Optional, Sequence

from wecomd import __version__, checks, config as configmod, envfile, exporting, logs, passwords

from wecomd.cli import backup as backupcmd

from wecomd.cli import demo

from wecomd.cli import doctor

from wecomd.cli import rules as dryrun

from wecomd.wecom import simulate

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


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

    p = sub.add_parser("serve", help="run the daemon")
    _config_arg(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="a live dashboard with simulated traffic; nothing to set up")
    demo.add_arguments(p)
    p.set_defaults(func=demo.run)

    p = sub.add_parser("check", help="validate a config file")
    _config_arg(p)
    env_file_arg(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("doctor", help="check config, database, media directory, WeCom API and egress IP; "
                       "list the last callback failures")
    _config_arg(p)
    doctor.add_arguments(p)
    p.set_defaults(func=doctor.run)

    p = sub.add_parser("init", help="write a fresh wecomd.conf with generated secrets")
    p.add_argument("dir", nargs="?", default=".", help="directory for wecomd.conf (default: .)")
    p.add_argument("--env-file", metavar="FILE", help="write the secrets to this systemd EnvironmentFile "
                   "(mode 600) as WECOMD_... variables, and leave them out of wecomd.conf")
    p.add_argument("--force", action="store_true", help="overwrite an existing wecomd.conf (and FILE)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("hash-password", help="read a password (tty or stdin), print its hash")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser("simulate", help="play WeCom against a callback URL")
    simulate.add_arguments(p)
    p.set_defaults(func=lambda args: asyncio.run(simulate.run(args)))

    p = sub.add_parser("rules", help="dry runs of the rules: `rules test TEXT|--click KEY`, `rules replay --since ISO`")
    dryrun.add_arguments(p, _config_arg)
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser("export", help="write stored messages, oldest first, as Message JSON")
    _config_arg(p)
    env_file_arg(p)
    exporting.add_arguments(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("backup", help="copy the SQLite database to FILE, safely while wecomd serves")
    _config_arg(p)
    env_file_arg(p)
    backupcmd.add_arguments(p)
    p.set_defaults(func=cmd_backup)
    return parser


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="config file (default: $WECOMD_CONFIG, ./wecomd.conf, /etc/wecomd/wecomd.conf)")


def env_file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env-file", metavar="FILE", help="read this systemd EnvironmentFile (WECOMD_... secrets) "
                   "over the environment first, as the service starts with it")


def _environ(args: argparse.Namespace):
    """The environment the config is loaded with: os.environ, with --env-file's variables over it."""
    return envfile.environment(getattr(args, "env_file", None), os.environ)


def _load(args: argparse.Namespace) -> configmod.Config:
    environ = _environ(args)
    path = configmod.find_config(args.config, environ)
    return configmod.load(path, environ)


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args)
    _setup_logging(cfg.server)
    from wecomd import app  # tornado and peewee are only needed from here on

    logger.info("wecomd %s starting with %s", __version__, cfg.path)
    try:
        asyncio.run(app.serve(cfg))
    except checks.StartupError as exc:  # a busy port, an unwritable media_dir or database: one line
        print(logs.error_line("wecomd: %s" % exc), file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    environ = _environ(args)
    path = configmod.find_config(args.config, environ)
    problems, warnings = checks.check(path, environ)
    for problem in problems:
        print("error: %s" % problem)
    for warning in warnings:
        print("warning: %s" % warning)
    if problems:
        print("%s: %d problem(s)" % (path, len(problems)))
        return EXIT_PROBLEM
    print("%s: OK" % path)
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir) / "wecomd.conf"
    env_file = Path(args.env_file) if args.env_file else None
    for path in (target, env_file):
        if path is not None and path.exists() and not args.force:
            print("wecomd: %s exists; use --force to overwrite" % path, file=sys.stderr)
            return EXIT_PROBLEM
    password = secrets.token_urlsafe(12)
    values = _initial_values(password)
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


def _initial_values(password: str) -> dict:
    alnum = string.ascii_letters + string.digits
    return {
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


def cmd_hash_password(args: argparse.Namespace) -> int:
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


def cmd_rules(args: argparse.Namespace) -> int:
    if not getattr(args, "rules_action", None):
        print("wecomd rules: say `test` or `replay` (see wecomd rules --help)", file=sys.stderr)
        return EXIT_USAGE
    return args.rules_action(_load(args), args)


def cmd_export(args: argparse.Namespace) -> int:
    cfg = _load(args)
    return exporting.run(cfg, args)


def cmd_backup(args: argparse.Namespace) -> int:
    return backupcmd.run(_load(args), args)


def _setup_logging(server: configmod.ServerConfig) -> None:
    """[server] log_level, log_format and log_content; journald priorities under systemd (wecomd.logs)."""
    logs.setup(server.log_level, server.log_format, server.log_content)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
