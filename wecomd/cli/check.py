"""`wecomd check`: validate a config file as `serve` would load it, with warnings."""
from __future__ import annotations

import argparse

from wecomd import checks, config as configmod
from wecomd.cli.options import EXIT_OK, EXIT_PROBLEM, config_arg, env_file_arg, environ

NAME, HELP = "check", "validate a config file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    env_file_arg(p)


def main(args: argparse.Namespace) -> int:
    env = environ(args)
    path = configmod.find_config(args.config, env)
    problems, warnings = checks.check(path, env)
    for problem in problems:
        print("error: %s" % problem)
    for warning in warnings:
        print("warning: %s" % warning)
    if problems:
        print("%s: %d problem(s)" % (path, len(problems)))
        return EXIT_PROBLEM
    print("%s: OK" % path)
    return EXIT_OK
