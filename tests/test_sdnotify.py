"""sd_notify: READY=1 once the port is open, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 on SIGTERM.

systemd is played by a real AF_UNIX datagram socket whose address goes in $NOTIFY_SOCKET, the
way systemd passes its own to a Type=notify service.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from support import ROOT
from support.config import write_config
from support.server import free_port
from wecomd import sdnotify


class Receiver:
    """The service manager's end: a bound datagram socket that also reports the sender's pid."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout: float = 20.0) -> tuple[str, int]:
        """The next datagram and its sender's pid (what NotifyAccess=main checks)."""
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
        pid = next(struct.unpack("iII", cdata[:12])[0] for level, kind, cdata in ancillary
                   if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS))
        return data.decode(), pid

    def pending(self) -> list:
        self.sock.setblocking(False)
        found = []
        try:
            while True:
                found.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return found

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir():
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="wecomd-sd-") as directory:
        yield Path(directory)


@pytest.fixture
def receiver(short_dir):
    path = short_dir / "notify"
    rx = Receiver(str(path))
    rx.path = str(path)
    yield rx
    rx.close()


# --- the module on its own -----------------------------------------------------------------------

def test_without_notify_socket_nothing_is_sent():
    for environ in ({}, {"NOTIFY_SOCKET": ""}):
        assert sdnotify.notify("READY=1", environ) is False
        assert sdnotify.ready(environ) is False
        assert sdnotify.reloading(environ) is False
        assert sdnotify.stopping(environ) is False
        assert sdnotify.status("x", environ) is False


def test_the_default_is_the_process_environment(receiver, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.path)
    assert sdnotify.ready() is True
    assert receiver.receive(5) == ("READY=1", os.getpid())
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.ready() is False


def test_each_helper_sends_its_assignment(receiver):
    env = {"NOTIFY_SOCKET": receiver.path}
    assert sdnotify.notify("FDSTORE=0", env) is True
    assert receiver.receive(5)[0] == "FDSTORE=0"
    assert sdnotify.ready(env) and receiver.receive(5)[0] == "READY=1"
    assert sdnotify.stopping(env) and receiver.receive(5)[0] == "STOPPING=1"
    assert sdnotify.status("listening on  127.0.0.1:8080;\napps: 客服", env)
    assert receiver.receive(5)[0] == "STATUS=listening on 127.0.0.1:8080; apps: 客服"  # one line, UTF-8
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading(env)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receiver.receive(5)[0].split("\n")
    assert first == "RELOADING=1"
    key, _, usec = second.partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after


def test_an_abstract_namespace_socket():
    name = "wecomd-test-%s" % uuid.uuid4().hex
    rx = Receiver("\0" + name)
    try:
        assert sdnotify.ready({"NOTIFY_SOCKET": "@" + name}) is True
        assert rx.receive(5) == ("READY=1", os.getpid())
    finally:
        rx.close()


def test_a_missing_or_invalid_socket_never_raises(short_dir, caplog):
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(str(short_dir / "closed"))
    gone.close()  # the file stays, nobody listens: ECONNREFUSED
    (short_dir / "plain").write_text("not a socket")
    with caplog.at_level(logging.DEBUG, logger="wecomd.sdnotify"):
        for address in (str(short_dir / "missing"), str(short_dir / "closed"), str(short_dir / "plain"),
                        str(short_dir), "/x" + "y" * 200, "/nul\0byte", "@", "@wecomd-nobody-%s" % uuid.uuid4().hex,
                        "vsock:2:1234", "relative/path"):
            assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": address}) is False, address
    assert caplog.records and all(r.levelno == logging.DEBUG for r in caplog.records)


# --- `wecomd serve` under a pretend systemd ------------------------------------------------------

class NotifiedServer:
    def __init__(self, directory: Path, notify_socket: str):
        self.port = free_port()
        self.config = write_config(directory, self.port)
        self.log = open(directory / "server.log", "wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": notify_socket}
        self.proc = subprocess.Popen([sys.executable, "-m", "wecomd", "serve", "-c", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=str(directory))

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def notified(tmp_path, receiver):
    server = NotifiedServer(tmp_path, receiver.path)
    yield server
    server.stop()


def expect(receiver: Receiver, server: NotifiedServer, timeout: float = 20.0) -> str:
    try:
        state, pid = receiver.receive(timeout)
    except socket.timeout:
        raise AssertionError("no notification within %.0fs; wecomd said:\n%s" % (timeout, server.output()))
    assert pid == server.proc.pid, "sent by pid %d, not the main process %d" % (pid, server.proc.pid)
    return state


def test_serve_notifies_ready_status_reloading_and_stopping(notified, receiver):
    # READY=1 is the first thing systemd hears, and by then the port already accepts connections.
    assert expect(receiver, notified) == "READY=1"
    with socket.create_connection(("127.0.0.1", notified.port), timeout=2):
        pass
    status = expect(receiver, notified)
    assert status == "STATUS=listening on 127.0.0.1:%d; apps: helpdesk, quiet" % notified.port

    # `systemctl reload` (SIGHUP): RELOADING=1 with MONOTONIC_USEC, the reload, READY=1 again.
    # Sent straight after READY=1, as systemd may: the handler must be in place by then, or
    # SIGHUP's default action ends the process.
    notified.config.write_text(notified.config.read_text().replace("[app:quiet]", "[app:calm]"))
    os.kill(notified.proc.pid, signal.SIGHUP)
    reloading = expect(receiver, notified).split("\n")
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert abs(int(reloading[1].split("=")[1]) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 30e6
    assert expect(receiver, notified) == "READY=1"
    assert expect(receiver, notified) == "STATUS=listening on 127.0.0.1:%d; apps: helpdesk, calm" % notified.port

    # A config that fails the check is refused, and systemd still gets its READY=1.
    notified.config.write_text(notified.config.read_text().replace("agent_id = 1000003", "agent_id = three"))
    os.kill(notified.proc.pid, signal.SIGHUP)
    assert expect(receiver, notified).startswith("RELOADING=1\n")
    assert expect(receiver, notified) == "READY=1"
    assert expect(receiver, notified) == ("STATUS=listening on 127.0.0.1:%d; apps: helpdesk, calm; "
                                          "reload refused, see the log" % notified.port)

    # `systemctl stop` (SIGTERM): STOPPING=1 first, then the drain, then exit 0.
    notified.proc.send_signal(signal.SIGTERM)
    assert expect(receiver, notified) == "STOPPING=1"
    assert expect(receiver, notified).startswith("STATUS=stopping")
    assert notified.proc.wait(30) == 0, notified.output()
    assert receiver.pending() == []
    assert "reload refused" in notified.output()


def test_serve_with_a_broken_notify_socket_runs_and_stops_as_usual(tmp_path, short_dir, monkeypatch):
    from support.server import ServerProcess

    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "gone"))
    port = free_port()
    server = ServerProcess(write_config(tmp_path, port, log_level="debug"), port)
    os.kill(server.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reloaded" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.terminate() == 0, server.output()
    output = server.output()
    assert "sd_notify: cannot send 'READY=1'" in output and "sd_notify: cannot send 'STOPPING=1'" in output
    assert "reloaded" in output and "Traceback" not in output
