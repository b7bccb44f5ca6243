"""`ruff check .` is clean under the rules pyproject.toml configures ([tool.ruff]); ruff comes with
the test extra, so CI (`.ci/run`, which runs the whole suite) lints too."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from support import ROOT


def ruff() -> list:
    """The ruff beside this interpreter (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "ruff"
    found = str(local) if local.is_file() else shutil.which("ruff")
    assert found, "ruff is not installed: pip install -e '.[test]' brings it"
    return [found]


def test_ruff_check_is_clean():
    run = subprocess.run(ruff() + ["check", "--no-cache", "--output-format", "concise", "."],
                         cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]


def test_ruff_applies_the_project_rules():
    """pyproject.toml's rules, not ruff's defaults: pyflakes and pycodestyle errors and warnings
    (an unused import, trailing whitespace), long lines left alone."""
    source = "import os\n\nx = 1 \ny = '%s'\n" % ("a" * 130)
    run = subprocess.run(ruff() + ["check", "--no-cache", "--output-format", "concise",
                                   "--stdin-filename", "wecomd/lint_probe.py", "-"],
                         input=source, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    found = set(re.findall(r": ([A-Z]+[0-9]+) ", run.stdout))
    assert found == {"F401", "W291"}, run.stdout + run.stderr
