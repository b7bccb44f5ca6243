"""`wecomd doctor`: one line per check of a deployment, with what to do about each problem.

It checks the config (as `wecomd serve` loads it, with `wecomd check`'s warnings), the database
(read-only: never migrated or written, so it is safe while wecomd serves), what waits to be stored
in it (微信客服 pulls, the callback intake journal), the media directory,
gettoken for every app with a secret, and this server's outgoing IP; then it lists the last
verification and callback failures the daemon recorded (wecomd.failures). It never prints a secret.
Exit status: 0 when no check failed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from types import MappingProxyType
from typing import List, Optional

from wecomd import __version__, checks as config_checks, config as configmod
from wecomd.cli.options import EXIT_OK, EXIT_PROBLEM, config_arg, env_file_arg, environ
from wecomd.cli.doctor.check import Check, shown_url

NAME, HELP = "doctor", ("check config, database, media directory, WeCom API and egress IP; "
                        "list the last callback failures")
_LABELS = MappingProxyType({"ok": "ok", "warn": "warn", "fail": "FAIL", "skip": "skip", "info": "info"})


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    env_file_arg(p)
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--failures", type=int, default=10, metavar="N",
                   help="how many recorded callback failures to list (default: 10)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="for each request to WeCom and to the IP echo service (default: 10)")


def main(args: argparse.Namespace) -> int:
    report = _Report(args.json)
    config = _check_config(args, report)
    if config is None:
        return report.finish(None)
    from wecomd.cli.doctor import backlog as doctor_backlog  # peewee only from here on
    from wecomd.cli.doctor import files as doctor_files
    from wecomd.cli.doctor import kf as doctor_kf
    from wecomd.cli.doctor import wecom_api as doctor_wecom
    from wecomd.store import sqlite_file

    db_checks, db = doctor_files.check_database(config)
    report.add(*db_checks)
    report.add(*doctor_backlog.check_kf_pulls(db))
    report.add(*doctor_backlog.check_intake(sqlite_file(config.server.database), db))
    report.add(*doctor_files.check_media(config))
    network, report.egress_ip = asyncio.run(doctor_wecom.check_wecom(config, args.timeout))
    report.add(*network)
    report.add(*asyncio.run(doctor_kf.check_kf(config, args.timeout)))
    failure_check, report.failures = doctor_files.check_failure_log(db, max(1, args.failures))
    report.add(failure_check)
    report.add(doctor_files.check_contacts(db))
    if db is not None:
        db.close()
    return report.finish(config.path)


def _check_config(args: argparse.Namespace, report: "_Report") -> Optional[configmod.Config]:
    """The loaded config (with --env-file's variables over the environment), or None after reporting
    why it cannot be loaded, as `wecomd serve` says it (an unreadable --env-file included)."""
    try:
        env = environ(args)
        config = configmod.load(configmod.find_config(args.config, env), env)
    except configmod.ConfigError as exc:
        report.add(*(Check("config", "fail", problem) for problem in exc.problems))
        report.add(Check("config", "fail", "%d problem(s): `wecomd serve` would not start" % len(exc.problems),
                         "fix the lines above (docs/configuration.md describes every option)"))
        return None
    apps = ", ".join(config.apps) or "none"
    report.add(Check("config", "ok", "%s loads; apps: %s; api_base %s"
                     % (config.path, apps, shown_url(config.wecom.api_base))))
    if not config.apps and not config.bots:
        report.add(Check("config", "fail", config_checks.NO_APP, "add an [app:NAME] or [bot:NAME] section"))
    for name, bot in config.bots.items():
        # Nothing to call: a bot has no secret or token API. What WeCom must be told, and how to try it.
        report.add(Check("bot:%s" % name, "ok", "callback /callback/%s (receive-id \"\"%s); stream_deadline %d s; "
                         "try it: wecomd simulate --bot URL --token ... --aes-key ..."
                         % (name, ", aibotid %s" % bot.aibotid if bot.aibotid else "", bot.stream_deadline)))
    report.add(*(Check("config", "warn", warning) for warning in config_checks.warnings(config)))
    return config


class _Report:
    """Collects checks; prints each as it comes (text) or everything at the end (--json)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.checks: List[Check] = []
        self.failures: List[dict] = []
        self.egress_ip: Optional[str] = None
        if not as_json:
            print("wecomd %s doctor" % __version__)

    def add(self, *found: Check) -> None:
        self.checks.extend(found)
        if not self.as_json:
            for check in found:
                print("%-4s  %-16s %s" % (_LABELS[check.status], check.name, check.message))
                for line in check.details:
                    print("        %s" % line)
                if check.hint and check.status != "ok":
                    print("        what to do: %s" % check.hint)
            sys.stdout.flush()

    def finish(self, path) -> int:
        failed = [check for check in self.checks if check.status == "fail"]
        warned = [check for check in self.checks if check.status == "warn"]
        if self.as_json:
            print(json.dumps({"config": str(path) if path else None, "ok": not failed,
                              "egress_ip": self.egress_ip, "failures": self.failures,
                              "checks": [vars(check) for check in self.checks]}, ensure_ascii=False, indent=2))
        elif failed:
            print("%d check(s) failed, %d warning(s)" % (len(failed), len(warned)))
        else:
            print("no check failed%s" % (", %d warning(s)" % len(warned) if warned else ""))
        return EXIT_PROBLEM if failed else EXIT_OK
