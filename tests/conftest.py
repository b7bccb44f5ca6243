"""Shared fixtures: a config file on disk, free ports, a running `wecomd serve` process, and stores
(a migrated SQLite file; a PostgreSQL database when TEST_POSTGRES_URL names one)."""
from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from peer import AES_KEY, AGENT_ID, CORP_ID, TOKEN  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# A PostgreSQL database the store tests may empty and use (`.ci/run` starts one); None: skipped.
PG_URL = os.environ.get("TEST_POSTGRES_URL")
# The `postgres` marker (setup.cfg): `pytest -m postgres` selects these; without PG_URL they skip.
needs_postgres = pytest.mark.postgres


def pytest_collection_modifyitems(items):
    """Every test that drives Chromium (through the `browser` fixture) gets the `browser` marker."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


def pytest_runtest_setup(item):
    if item.get_closest_marker("postgres") is not None and not PG_URL:
        pytest.skip("set TEST_POSTGRES_URL to test against Postgres")


ADMIN_PASSWORD = "correct horse battery staple"
API_TOKEN = "test-api-token-0123456789abcdef0123456789"
APP_SECRET = "helpdesk-secret-0123456789"


@functools.lru_cache(maxsize=None)
def admin_hash() -> str:
    from wecomd.passwords import hash_password

    return hash_password(ADMIN_PASSWORD)


def write_config(directory: Path, port: int = 0, extra: str = "", api_base: str = "http://127.0.0.1:9",
                 wecom: str = "", **server: str) -> Path:
    """Write a test config with two apps: `helpdesk` (default reply, a secret) and `quiet` (neither).
    `wecom`: more lines of the [wecom] section."""
    settings = {"listen": "127.0.0.1:%d" % port, "database": "wecomd.db", "media_dir": "media", **server}
    lines = ["[server]"] + ["%s = %s" % kv for kv in settings.items()]
    lines += [
        "", "[admin]", "username = admin", "cookie_secret = test-cookie-secret-0123456789abcdef0123",
        "password_hash = %s" % admin_hash(), "api_token = %s" % API_TOKEN,
        "", "[wecom]", "api_base = %s" % api_base, wecom,
        "", "[app:helpdesk]", "corp_id = %s" % CORP_ID, "agent_id = %s" % AGENT_ID,
        "token = %s" % TOKEN, "encoding_aes_key = %s" % AES_KEY, "reply = 已收到", "secret = %s" % APP_SECRET,
        "", "[app:quiet]", "corp_id = %s" % CORP_ID, "agent_id = 1000003",
        "token = %s" % TOKEN, "encoding_aes_key = %s" % AES_KEY, "", extra,
    ]
    path = directory / "wecomd.conf"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def postgres_store():
    """A Store on TEST_POSTGRES_URL with every table dropped, migrated afresh."""
    from wecomd.store import Store

    store = Store(PG_URL)
    tables = store.db.get_tables()
    if tables:
        store.db.execute_sql("DROP TABLE IF EXISTS %s CASCADE" % ", ".join('"%s"' % t for t in tables))
    store.migrate()
    return store


@pytest.fixture
def sqlite_store(tmp_path):
    """A migrated Store on a fresh SQLite file in tmp_path."""
    from wecomd.store import Store

    store = Store("wecomd.db", base_dir=tmp_path)
    store.migrate()
    yield store
    store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_healthz(url: str, proc: subprocess.Popen, output=lambda: "", timeout: float = 20.0) -> None:
    """Wait until `url`/healthz answers 200; fail with the server's output if it exits or hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("wecomd exited %s:\n%s" % (proc.returncode, output()))
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("wecomd did not answer /healthz:\n%s" % output())


class ServerProcess:
    """`python -m wecomd serve` on a free port; output kept for failure messages."""

    def __init__(self, config: Path, port: int):
        self.config, self.port = config, port
        self.url = "http://127.0.0.1:%d" % port
        self.log = config.parent / "server.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self._logfh = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wecomd", "serve", "-c", str(config)],
            stdout=self._logfh, stderr=subprocess.STDOUT, env=env, cwd=str(config.parent),
        )
        self.wait_ready()

    def wait_ready(self) -> None:
        wait_for_healthz(self.url, self.proc, self.output)

    def output(self) -> str:
        if not self._logfh.closed:
            self._logfh.flush()
        return self.log.read_text(encoding="utf-8", errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._logfh.close()
        return code


@pytest.fixture
def server(tmp_path):
    port = free_port()
    proc = ServerProcess(write_config(tmp_path, port), port)
    yield proc
    if proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait()
