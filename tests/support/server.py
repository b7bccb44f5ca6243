"""`wecomd serve` as a child process on a free loopback port."""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from support import ROOT


def free_port() -> int:
    """A loopback port for a server that binds it later. Taken below the kernel's ephemeral range,
    which every client connection draws from (a flood test's thousands in another xdist worker
    included), and from this worker's own slice of it, so that nothing else takes the port before
    the server binds it."""
    first, last = _port_slice()
    for port in random.sample(range(first, last), min(200, last - first)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no room below the ephemeral range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_slice() -> tuple:
    """[first, last) of this xdist worker's ports, between 10000 and the ephemeral range's start."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    worker = int((os.environ.get("PYTEST_XDIST_WORKER") or "gw0")[2:] or 0) % workers
    size = max(0, ephemeral - 10000) // workers
    first = 10000 + worker * size
    return first, first + size


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
            time.sleep(0.02)  # not yet listening: a server is usually up within a few polls
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

    def kill(self) -> None:
        """End it at once if it still runs (a fixture's teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
