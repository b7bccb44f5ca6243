"""Tests that must not overlap, one at a time across pytest-xdist's workers.

conftest.py holds a lock around every test marked `postgres` (they share one database, which
each empties; the lock is per database, so concurrent runs on this machine take turns too) and
every test marked `slow` (floods, crash and load tests: each measures the daemon with the
machine to itself, not next to another flood; the lock is per run).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def exclusive(name: str):
    """Hold the machine-wide lock called `name` (a file in the temporary directory) meanwhile."""
    path = Path(tempfile.gettempdir()) / ("wecomd-tests-%s.lock" % hashlib.sha1(name.encode()).hexdigest()[:16])
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def this_run() -> str:
    """What the workers of one pytest run share and other runs do not."""
    return os.environ.get("PYTEST_XDIST_TESTRUNUID") or "pid-%d" % os.getpid()
