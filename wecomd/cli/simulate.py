"""`wecomd simulate`: play WeCom against a callback URL (the simulator is wecomd.wecom.simulate)."""
from __future__ import annotations

import argparse
import asyncio

from wecomd.wecom import simulate

NAME, HELP = "simulate", "play WeCom against a callback URL"


def add_arguments(p: argparse.ArgumentParser) -> None:
    simulate.add_arguments(p)


def main(args: argparse.Namespace) -> int:
    return asyncio.run(simulate.run(args))
