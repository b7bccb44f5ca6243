"""`python -m wecomd ...` as a child process, as an operator runs it."""
from __future__ import annotations

import os
import subprocess
import sys

from support import ROOT


def wecomd(*args: str, stdin: str | None = None, cwd=None, env=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "wecomd", *args], input=stdin, capture_output=True, text=True,
        cwd=cwd, env=full_env, timeout=120,
    )
