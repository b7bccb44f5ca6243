"""Connection limits (issue #9, item 1): idle and half-sent connections are timed out, capped per
client address and in total, and running out of file descriptors neither spins nor floods the log.

The unit-level cases run the real application in-process (WecomdTestCase) behind `make_server`, and
connect from other loopback addresses (127.0.0.2 ...) so each test chooses who the client is. The
acceptance cases run `wecomd serve` as a process under a 1,024-file limit and flood it."""
from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from tornado.iostream import StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.testing import gen_test

from support import ROOT
from support.base import WecomdTestCase
from support.config import API_TOKEN, write_config
from support.peer import AGENT_ID, CORP_ID, WecomPeer
from support.server import free_port, wait_for_healthz
from wecomd import app as appmod
from wecomd import connections

GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: wecomd\r\n\r\n"
HALF_SENT = (b"POST /callback/helpdesk HTTP/1.1\r\nHost: wecomd\r\nContent-Type: text/xml\r\n"
             b"Content-Length: 10000\r\n\r\n<xml><ToUserName>")


def text_message(msg_id: int) -> str:
    return ("<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>"
            "<CreateTime>%d</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[在吗 %d]]>"
            "</Content><MsgId>%d</MsgId><AgentID>%s</AgentID></xml>"
            % (CORP_ID, int(time.time()), msg_id, 7_100_000_000_000_000_000 + msg_id, AGENT_ID))


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError("%s not in /metrics:\n%s" % (name, text))


# --- pure parts -----------------------------------------------------------------------------------

def test_client_key_groups_ipv6_by_64_unwraps_mapped_ipv4_and_exempts_trusted_proxies():
    import ipaddress

    proxies = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert connections.client_key(("203.0.113.7", 4242)) == "203.0.113.7"
    assert connections.client_key(("::ffff:203.0.113.7", 4242, 0, 0)) == "203.0.113.7"
    assert connections.client_key(("2001:db8:1:2::a", 1, 0, 0)) == connections.client_key(("2001:db8:1:2::b", 2, 0, 0))
    assert connections.client_key(("2001:db8:1:2::a", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert connections.client_key(("10.1.2.3", 80), proxies) is None
    assert connections.client_key(("::ffff:10.1.2.3", 80, 0, 0), proxies) is None
    assert connections.client_key(("::1", 80, 0, 0), proxies) is None
    assert connections.client_key("", proxies) is None  # a Unix socket peer


def test_automatic_max_connections_keeps_a_reserve_below_the_file_limit():
    assert connections.automatic_max_connections(1024) == 896
    assert connections.automatic_max_connections(65536) == 65536 - 8192
    assert connections.automatic_max_connections(200) == 100
    assert 0 < connections.automatic_max_connections(4) < 4


def test_server_options_carry_the_timeouts(tmp_path):
    from wecomd import config

    cfg = config.load(write_config(tmp_path, idle_timeout="7", body_timeout="9"), {})
    options = appmod.server_options(cfg)
    assert options["idle_connection_timeout"] == 7 and options["body_timeout"] == 9


# --- the real application, in-process ---------------------------------------------------------------

class LimitedServerCase(WecomdTestCase):
    def get_http_server(self):
        return appmod.make_server(self._app, self.services)

    async def connect(self, source: str):
        return await TCPClient().connect("127.0.0.1", self.get_http_port(), source_ip=source)

    async def healthz(self, stream) -> int:
        """One keep-alive GET /healthz on `stream`; its status (StreamClosedError if refused)."""
        await stream.write(GET_HEALTHZ)
        head = (await stream.read_until(b"\r\n\r\n")).decode("latin-1")
        length = next(int(line.split(":")[1]) for line in head.split("\r\n")
                      if line.lower().startswith("content-length:"))
        await stream.read_bytes(length)
        return int(head.split()[1])

    async def refused(self, stream) -> bool:
        try:
            await self.healthz(stream)
        except StreamClosedError:
            return True
        return False

    async def eventually_served(self, source: str, timeout: float = 10.0):
        """Connect from `source` until the server answers (it frees a slot once it sees a close)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stream = await self.connect(source)
            if not await self.refused(stream):
                return stream
            stream.close()
        raise AssertionError("no connection from %s was served within %.0fs" % (source, timeout))

    def scrape(self) -> str:
        resp = self.fetch("/metrics", headers=self.bearer())
        assert resp.code == 200, resp.code
        return resp.body.decode()


class TestPerAddressCap(LimitedServerCase):
    server_settings = {"max_connections_per_ip": "3", "trusted_proxies": "127.0.0.3"}

    @gen_test(timeout=30)
    async def test_the_fourth_connection_from_one_address_is_closed_and_a_freed_slot_is_reused(self):
        held = [await self.connect("127.0.0.2") for _ in range(3)]
        for stream in held:
            assert await self.healthz(stream) == 200  # kept alive, and counted while open
        with self.assertLogs("wecomd.connections", "WARNING") as logs:
            extra = await self.connect("127.0.0.2")
            assert await self.refused(extra)
        assert "refused a connection from 127.0.0.2: 3 already open" in logs.output[0]
        assert "max_connections_per_ip = 3" in logs.output[0]
        # Another address is not affected.
        other = await self.connect("127.0.0.4")
        assert await self.healthz(other) == 200
        # One of the three goes away: the address may connect again.
        held.pop().close()
        again = await self.eventually_served("127.0.0.2")
        assert await self.healthz(again) == 200
        for stream in held + [other, again]:
            stream.close()

    def test_refusals_are_counted_in_metrics(self):
        async def flood():
            streams = [await self.connect("127.0.0.2") for _ in range(5)]
            results = [await self.refused(s) for s in streams]
            for s in streams:
                s.close()
            return results

        assert self.io_loop.run_sync(flood) == [False, False, False, True, True]
        text = self.scrape()
        assert metric(text, 'wecomd_connections_refused_total{reason="address"}') == 2
        assert metric(text, 'wecomd_connections_refused_total{reason="total"}') == 0
        assert metric(text, "wecomd_connections_limit") == connections.automatic_max_connections(
            connections.open_file_limit())

    @gen_test(timeout=30)
    async def test_trusted_proxies_are_not_capped(self):
        streams = [await self.connect("127.0.0.3") for _ in range(8)]
        for stream in streams:
            assert await self.healthz(stream) == 200
        for stream in streams:
            stream.close()


class TestTotalCap(LimitedServerCase):
    server_settings = {"max_connections": "4", "max_connections_per_ip": "0"}

    @gen_test(timeout=30)
    async def test_at_the_cap_the_connection_waiting_longest_makes_room(self):
        idle = [await self.connect("127.0.0.2") for _ in range(4)]
        assert await self.healthz(idle[0]) == 200  # idle[0] then waits for its next request
        newcomer = await self.connect("127.0.0.5")
        assert await self.healthz(newcomer) == 200
        # idle[1] has waited for a request since it connected, longer than idle[0]: it made room.
        assert await idle[1].read_until_close() == b""
        for stream in (idle[0], idle[2], idle[3], newcomer):
            assert await self.healthz(stream) == 200
            stream.close()

    @gen_test(timeout=30)
    async def test_when_every_connection_is_mid_request_the_new_one_is_refused(self):
        busy = [await self.connect("127.0.0.2") for _ in range(4)]
        for stream in busy:
            await stream.write(HALF_SENT)
        await self.eventually_busy(4)
        with self.assertLogs("wecomd.connections", "WARNING") as logs:
            assert await self.refused(await self.connect("127.0.0.5"))
        assert "4 connections open, each in the middle of a request (max_connections = 4)" in logs.output[0]
        for stream in busy:
            stream.close()
        assert await self.healthz(await self.eventually_served("127.0.0.5")) == 200

    async def eventually_busy(self, count: int) -> None:
        """Wait until the server has read the headers of `count` requests (none waits for one)."""
        server = self.http_server
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if server.open_connections == count and not server.waiting_connections:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the server did not read the requests' headers")


class TestTimeouts(LimitedServerCase):
    server_settings = {"idle_timeout": "1", "body_timeout": "1"}

    @gen_test(timeout=20)
    async def test_a_connection_that_sends_nothing_is_closed_after_idle_timeout(self):
        silent = await self.connect("127.0.0.2")
        assert await silent.read_until_close() == b""

    @gen_test(timeout=20)
    async def test_a_keep_alive_connection_is_closed_after_idle_timeout(self):
        stream = await self.connect("127.0.0.2")
        assert await self.healthz(stream) == 200
        assert await stream.read_until_close() == b""

    @gen_test(timeout=20)
    async def test_half_sent_headers_are_closed_after_idle_timeout(self):
        stream = await self.connect("127.0.0.2")
        await stream.write(b"GET /healthz HTTP/1.1\r\nHost: wec")
        assert await stream.read_until_close() == b""

    def test_a_half_sent_body_is_closed_after_body_timeout_with_one_counted_log_line(self):
        async def half_sent():
            stream = await self.connect("127.0.0.2")
            await stream.write(HALF_SENT)
            return await stream.read_until_close()

        with self.assertLogs(level="INFO") as logs:
            assert self.io_loop.run_sync(half_sent, timeout=20) == b""
        lines = [r.getMessage() for r in logs.records]
        assert not any("Timeout reading body" in line for line in lines), lines  # Tornado's own line
        assert any("did not send its request body within body_timeout = 1s" in line for line in lines), lines
        assert metric(self.scrape(), "wecomd_connections_body_timeouts_total") == 1


# --- `wecomd serve` under a 1,024-file limit, flooded ----------------------------------------------

def _raise_own_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Daemon:
    """`python -m wecomd serve` with RLIMIT_NOFILE set to `nofile` (soft and hard, as `ulimit -n`)."""

    def __init__(self, directory: Path, nofile: int, **server: str) -> None:
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        conf = write_config(directory, self.port, **server)
        self.log = directory / "server.log"
        self._out = open(self.log, "wb")
        limit = (nofile, nofile)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wecomd", "serve", "-c", str(conf)], cwd=str(directory),
            stdout=self._out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit))
        wait_for_healthz(self.url, self.proc, self.output)

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(encoding="utf-8", errors="replace")

    def explained(self, fn):
        """`fn`, failing with the end of the daemon's log."""
        def call():
            try:
                fn()
            except Exception as exc:
                raise AssertionError("%s failed: %r; the log ends:\n%s" % (fn.__name__, exc, self.output()[-4000:]))
        return call

    def lines(self) -> list:
        return self.output().splitlines()

    def cpu_seconds(self) -> float:
        fields = Path("/proc/%d/stat" % self.proc.pid).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


@contextlib.contextmanager
def daemon(directory: Path, nofile: int, **server: str):
    proc = Daemon(directory, nofile, **server)
    try:
        yield proc
    finally:
        proc.stop()


def open_idle(port: int, source: str, count: int, blocking: bool = True) -> list:
    """`count` TCP connections from `source` that send nothing."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        if blocking:
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
        else:
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    return socks


def not_yet_accepted(port: int) -> int:
    """Connections to 127.0.0.1:`port` the daemon has not accepted yet: the listening socket's
    accept queue, plus handshakes the kernel holds back while that queue is full (SYN_RECV)."""
    waiting = 0
    local = "0100007F:%04X" % port
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] != local:
            continue
        if fields[3] == "0A":  # LISTEN: rx_queue is the accept queue's length
            waiting += int(fields[4].split(":")[1], 16)
        elif fields[3] == "03":  # SYN_RECV
            waiting += 1
    return waiting


def flood(port: int, sources: list, per_source: int, timeout: float = 5.0) -> list:
    """`per_source` idle connections from each of `sources`, opened in batches the accept queue
    holds; each batch waits until the daemon has taken it (up to `timeout`: one that has stopped
    accepting is then flooded without waiting)."""
    socks: list = []
    waiting = True
    for source in sources:
        for start in range(0, per_source, 100):
            socks += open_idle(port, source, min(100, per_source - start), blocking=False)
            deadline = time.monotonic() + timeout
            while waiting and not_yet_accepted(port):
                if time.monotonic() > deadline:
                    waiting = False
                time.sleep(0.02)
    return socks


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Legit:
    """What must keep working: /healthz, the login page, and a valid signed callback."""

    def __init__(self, url: str) -> None:
        self.url, self.peer, self.sent = url, WecomPeer(), 0

    def _get(self, path: str) -> None:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            assert resp.status == 200, (path, resp.status)
            resp.read()

    def healthz(self) -> None:
        self._get("/healthz")

    def login(self) -> None:
        self._get("/login")

    def callback(self) -> None:
        self.sent += 1
        req = self.peer.callback(text_message(self.sent))
        request = urllib.request.Request("%s/callback/helpdesk?%s" % (self.url, req.query), data=req.body,
                                         headers={"Content-Type": "text/xml"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200, resp.status
            assert "已收到" in self.peer.read_reply(resp.read())

    def metrics(self) -> str:
        request = urllib.request.Request(self.url + "/metrics", headers={"Authorization": "Bearer " + API_TOKEN})
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.read().decode()


@pytest.mark.slow  # a flood: 2,000 idle and 200 half-sent connections
def test_idle_and_half_sent_floods_under_a_1024_file_limit(tmp_path):
    assert _raise_own_file_limit() >= 4000, "the test itself needs about 3,000 descriptors"
    held: list = []
    with daemon(tmp_path, 1024) as server:
        legit = Legit(server.url)
        try:
            # 200 half-sent bodies, from four addresses (50 each, under the per-address cap of 64).
            for n in range(4):
                for s in open_idle(server.port, "127.0.0.%d" % (30 + n), 50):
                    s.sendall(HALF_SENT)
                    held.append(s)
            # 1,000 idle sockets from one address: all but 64 refused at once.
            held += flood(server.port, ["127.0.0.2"], 1000)
            # 1,000 idle sockets from 20 addresses: past the total cap (896 under 1,024 files),
            # each new one closes the connection that has waited longest for a request.
            held += flood(server.port, ["127.0.0.%d" % (100 + n) for n in range(20)], 50)
            latencies = {name: timed(server.explained(getattr(legit, name))) for name in ("healthz", "login", "callback")}
            for name, seconds in latencies.items():
                assert seconds < 1.0, (name, seconds, latencies)
            lines = server.lines()
            print("\nthe daemon logged %d lines up to here" % len(lines))
            assert len(lines) < 100, "\n".join(lines[:150])

            # The callback's latency while the idle flood goes on (new sockets keep arriving).
            stop = threading.Event()

            def keep_flooding():
                n = 0
                while not stop.is_set():
                    held.extend(open_idle(server.port, "127.0.0.%d" % (100 + n % 20), 10, blocking=False))
                    n += 1
                    time.sleep(0.01)

            flooder = threading.Thread(target=keep_flooding, daemon=True)
            flooder.start()
            try:
                during = [timed(server.explained(legit.callback)) for _ in range(60)]
            finally:
                stop.set()
                flooder.join()
            during.sort()
            p99 = during[int(0.99 * (len(during) - 1))]
            print("callback under the idle flood: n=%d p50=%.1fms p99=%.1fms max=%.1fms; %d sockets opened"
                  % (len(during), 1000 * statistics.median(during), 1000 * p99, 1000 * during[-1], len(held)))
            assert during[-1] < 1.0, during

            text = legit.metrics()
            assert metric(text, 'wecomd_connections_refused_total{reason="address"}') >= 900
            assert metric(text, "wecomd_connections_evicted_total") >= 100
            assert metric(text, "wecomd_connections_open") <= 896
            assert metric(text, "wecomd_accept_errors_total") == 0
            assert server.proc.poll() is None
        finally:
            for s in held:
                s.close()
        # The 60 callbacks measured add one line each; the rest stays as short.
        lines = [line for line in server.lines() if "callback app=helpdesk" not in line]
        assert len(lines) < 100, "\n".join(lines[:150])
        assert not any("Traceback" in line for line in server.lines()), server.output()


@pytest.mark.slow  # a flood that runs the daemon out of descriptors, then waits it out
def test_running_out_of_descriptors_pauses_accepting_without_spinning_or_flooding_the_log(tmp_path):
    """max_connections set above the file limit: accept() fails with EMFILE. wecomd must log that at
    most once a second, not spin on the still-readable listening socket, and recover afterwards."""
    _raise_own_file_limit()
    with daemon(tmp_path, 256, max_connections="5000", max_connections_per_ip="0") as server:
        socks = open_idle(server.port, "127.0.0.2", 600, blocking=False)
        try:
            time.sleep(1.0)  # the daemon runs out of descriptors
            cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
            time.sleep(3.0)
            cpu = server.cpu_seconds() - cpu_before
            wall = time.monotonic() - wall_before
            assert cpu < 0.5 * wall, "the daemon used %.2fs of CPU in %.1fs" % (cpu, wall)
            lines = server.lines()
            assert len(lines) < 60, "\n".join(lines[-60:])
            errors = [line for line in lines if "cannot accept connections" in line]
            assert errors and "Too many open files" in errors[0], server.output()[-3000:]
            assert len(errors) <= wall + 3, errors
            assert server.proc.poll() is None
        finally:
            for s in socks:
                s.close()
        # Descriptors come back: it answers again.
        deadline = time.monotonic() + 20
        while True:
            try:
                Legit(server.url).healthz()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        lines = server.lines()
        assert len(lines) < 100, "\n".join(lines[:150])
        assert not any("Traceback" in line for line in lines), "\n".join(lines[:50])
        # ... and it said at start-up that max_connections cannot be reached.
        assert any("max_connections = 5000 is above the open-file limit (256)" in line for line in lines)


def test_the_unit_raises_the_file_limit():
    import configparser

    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str
    parser.read(ROOT / "systemd" / "wecomd.service")
    limit = int(parser["Service"]["LimitNOFILE"])
    assert limit >= 65536
    assert connections.automatic_max_connections(limit) > 50000


def test_the_deploy_guide_exempts_nginx_from_the_per_address_cap(tmp_path):
    from support.deploydoc import write_doc_config
    from wecomd import config as configmod

    conf, _, environ = write_doc_config(tmp_path)
    cfg = configmod.load(conf, environ)
    for nginx in (("127.0.0.1", 40000), ("::1", 40000, 0, 0)):
        assert connections.client_key(nginx, cfg.server.trusted_proxies) is None
