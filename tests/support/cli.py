"""`python -m wecomd ...` as a child process, as an operator runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from support import ROOT


def wecomd(*args: str, stdin: str | None = None, cwd=None, env=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "wecomd", *args], input=stdin, capture_output=True, text=True,
        cwd=cwd, env=full_env, timeout=120,
    )


def wecomd_each(*argvs: list, workers: int = 4) -> list:
    """Run independent `wecomd` commands a few at a time; their results in the order given."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda argv: wecomd(*argv), argvs))
