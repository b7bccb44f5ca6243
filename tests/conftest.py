"""The suite's hooks and fixtures. Helpers live in tests/support/ (a test module imports them from
there, never from conftest.py or from another test module); this file makes fixtures of them:
`server` (a running `wecomd serve`), `sqlite_store` (a migrated SQLite file), and the browser
fixtures of support/browser.py (`browser`, `page`, `demo`, ...).

The suite runs on two pytest-xdist workers, a test file to each (setup.cfg). Tests that must not
overlap take a lock: see `one_at_a_time` below."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

# tests/ on the path (pytest's rootdir-relative import does this too, but only once the first test
# module is imported), so that conftest.py can import `support`.
sys.path.insert(0, str(Path(__file__).parent))

from support.config import write_config  # noqa: E402
from support.database import migrated_sqlite  # noqa: E402
from support.postgres import PG_URL  # noqa: E402
from support.serial import exclusive, this_run  # noqa: E402
from support.server import ServerProcess, free_port  # noqa: E402

# The browser fixtures, registered for every test module (each demo starts once per module using it).
pytest_plugins = ("support.browser",)


def pytest_collection_modifyitems(items):
    """Every test that drives Chromium (through the `browser` fixture) gets the `browser` marker."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


def pytest_runtest_setup(item):
    if item.get_closest_marker("postgres") is not None and not PG_URL:
        pytest.skip("set TEST_POSTGRES_URL to test against Postgres")


@pytest.fixture(autouse=True)
def one_at_a_time(request):
    """The `postgres` tests share one database, which each empties: one at a time, also across
    runs. The `slow` tests (floods, crash, load) measure the daemon: never two at once in a run."""
    with contextlib.ExitStack() as held:
        if request.node.get_closest_marker("postgres") is not None and PG_URL:
            held.enter_context(exclusive("postgres " + PG_URL))
        if request.node.get_closest_marker("slow") is not None:
            held.enter_context(exclusive("slow " + this_run()))
        yield


@pytest.fixture
def sqlite_store(tmp_path):
    """A migrated Store on a fresh SQLite file in tmp_path (support.database's copy)."""
    from wecomd.store import Store

    migrated_sqlite(tmp_path)
    store = Store("wecomd.db", base_dir=tmp_path)
    store.migrate()  # as the daemon does at start: nothing to apply on the copy
    yield store
    store.close()


@pytest.fixture
def server(tmp_path):
    """`wecomd serve` on a free port with write_config's two apps; killed after the test."""
    port = free_port()
    proc = ServerProcess(write_config(tmp_path, port), port)
    yield proc
    proc.kill()
