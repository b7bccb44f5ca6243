"""Connection limits for the HTTP server: caps per client address and in total, and an accept loop
that survives running out of file descriptors.

`LimitedHTTPServer` is Tornado's `HTTPServer` with three changes (docs/deploy.md, "Connection limits"):

- Every accepted connection is counted, per client address (an IPv4 address, or the /64 network of
  an IPv6 one; `[server] trusted_proxies` exempt) and in total, until its socket is closed. A
  connection over the per-address cap is closed at once. At the total cap, the connection that has
  waited longest for a request (idle keep-alive, or still sending its headers) is closed to make
  room; only when every open connection is in the middle of a request is the new one closed.
- Its own accept loop: when `accept()` fails (EMFILE, ENFILE ...), it stops reading the listening
  socket for `ACCEPT_PAUSE` seconds instead of spinning on a socket that stays readable, and says
  so at most once a second. (Tornado's `netutil.add_accept_handler` lets the error escape, and the
  IOLoop calls it again at once: a busy loop logging thousands of tracebacks a second.)
- Refusals, evictions, accept errors and body timeouts are logged rate-limited (`Throttled`) and
  counted for /metrics (`ConnectionCollector`).

`idle_connection_timeout` and `body_timeout` (Tornado's own) close what stays idle or half-sent.
"""
from __future__ import annotations

import collections
import errno
import ipaddress
import logging
import os
import resource
import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from tornado import httpserver, httputil
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream
from tornado.log import gen_log

logger = logging.getLogger(__name__)

ACCEPT_PAUSE = 0.2  # seconds the listening socket is left alone after accept() failed
ACCEPT_BATCH = 128  # accepts per readiness event, as Tornado's (its default listen backlog)
MIN_RESERVE = 128  # descriptors kept for the database, media files, outgoing HTTP, commands, logs
UNLIMITED_FILES = 65536  # what "automatic" assumes when RLIMIT_NOFILE is unlimited
REFUSAL_LOG_INTERVAL = 10.0  # seconds; refused or evicted connections are logged at most this often
ACCEPT_LOG_INTERVAL = 1.0  # seconds; accept errors are logged at most this often
# What Tornado's HTTP1Connection logs (tornado.general, INFO) for each body timeout; counted instead.
_TORNADO_BODY_TIMEOUT = "Timeout reading body from %s"


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE of this process (UNLIMITED_FILES when it is unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_FILES if soft == resource.RLIM_INFINITY else soft


def automatic_max_connections(nofile: int) -> int:
    """`max_connections = 0`: the open-file limit less a reserve (an eighth, at least 128, at most half)."""
    reserve = min(max(MIN_RESERVE, nofile // 8), nofile // 2)
    return max(1, nofile - reserve)


@dataclass(frozen=True)
class Limits:
    total: int  # connections open at once
    per_address: int  # from one client address (IPv6: one /64); 0 = no cap
    exempt: Tuple[Any, ...] = ()  # ipaddress networks not capped per address (trusted proxies)

    @classmethod
    def from_config(cls, server: Any, nofile: Optional[int] = None) -> "Limits":
        """From `[server] max_connections`, `max_connections_per_ip` and `trusted_proxies`."""
        total = server.max_connections or automatic_max_connections(
            open_file_limit() if nofile is None else nofile)
        return cls(total, server.max_connections_per_ip, tuple(server.trusted_proxies))


def client_key(address: Any, exempt: Tuple[Any, ...] = ()) -> Optional[str]:
    """What the per-address cap counts a peer under: its IPv4 address, or its IPv6 /64 network
    (one host owns a whole /64); None for trusted proxies and non-IP (Unix socket) peers."""
    try:
        ip = ipaddress.ip_address(address[0])
    except (TypeError, ValueError, IndexError):
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
        ip = ip.ipv4_mapped
    if any(ip in network for network in exempt):
        return None
    if ip.version == 6:
        return str(ipaddress.ip_network((ip, 64), strict=False))
    return str(ip)


class Throttled:
    """Log one kind of event at most once per `interval` seconds: the first at once, the ones in
    between counted, with that count and the last of them logged when the interval ends (or at
    `close`)."""

    def __init__(self, log: logging.Logger, level: int, interval: float) -> None:
        self.log, self.level, self.interval = log, level, interval
        self._timer: Any = None
        self._skipped = 0
        self._last: Tuple[str, tuple] = ("", ())

    def __call__(self, message: str, *args: Any, exc_info: bool = False) -> None:
        if self._timer is None:
            self.log.log(self.level, message, *args, exc_info=exc_info)
            self._timer = IOLoop.current().call_later(self.interval, self._flush)
        else:
            self._skipped += 1
            self._last = (message, args)

    def _flush(self) -> None:
        self._timer = None
        if self._skipped:
            skipped, self._skipped = self._skipped, 0
            message, args = self._last
            self.log.log(self.level, message + " (%d like this within %gs)", *args, skipped, self.interval)
            self._timer = IOLoop.current().call_later(self.interval, self._flush)

    def close(self) -> None:
        """Log the count still held back, and stop."""
        if self._timer is not None:
            IOLoop.current().remove_timeout(self._timer)
            self._flush()
        if self._timer is not None:
            IOLoop.current().remove_timeout(self._timer)
            self._timer = None


class _Stream(IOStream):
    """An IOStream that reports when its socket is closed, whichever code closes it (an HTTP
    connection, a websocket after the upgrade, a timeout, `close_all_connections`)."""

    def __init__(self, sock: socket.socket, on_closed: Callable[["_Stream"], None], **kwargs: Any) -> None:
        self._on_closed = on_closed
        super().__init__(sock, **kwargs)

    def close_fd(self) -> None:
        try:
            super().close_fd()
        finally:
            self._on_closed(self)


class _Listener:
    """Accepts connections on one listening socket, pausing after accept() fails."""

    def __init__(self, sock: socket.socket, accepted: Callable[[socket.socket, Any], None],
                 failed: Callable[[OSError], None]) -> None:
        self.sock, self.accepted, self.failed = sock, accepted, failed
        self.io_loop = IOLoop.current()
        self._paused: Any = None
        self._removed = False
        self.io_loop.add_handler(sock, self._ready, IOLoop.READ)

    def _ready(self, fd: Any, events: int) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._removed or self._paused is not None:
                return
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return  # every waiting connection is accepted
            except ConnectionAbortedError:
                continue  # closed by the peer while in the accept queue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM ...: the socket stays readable
                self.io_loop.remove_handler(self.sock)
                self._paused = self.io_loop.call_later(ACCEPT_PAUSE, self._resume)
                self.failed(exc)
                return
            self.accepted(connection, address)

    def _resume(self) -> None:
        self._paused = None
        if not self._removed:
            self.io_loop.add_handler(self.sock, self._ready, IOLoop.READ)

    def remove(self) -> None:
        """Stop accepting (TCPServer.stop then closes the socket)."""
        if self._removed:
            return
        self._removed = True
        if self._paused is not None:
            self.io_loop.remove_timeout(self._paused)
            self._paused = None
        else:
            self.io_loop.remove_handler(self.sock)


class _HeadersSeen(httputil.HTTPMessageDelegate):
    """Passes everything to `delegate`; tells `seen` once the request's headers have arrived."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, seen: Callable[[], None]) -> None:
        self.delegate, self.seen = delegate, seen

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        self.seen()
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


class _BodyTimeouts(logging.Filter):
    """Takes Tornado's one INFO line per body timeout out of the log, and counts it instead."""

    def __init__(self, server: "LimitedHTTPServer") -> None:
        super().__init__()
        self.server = server

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _TORNADO_BODY_TIMEOUT:
            return True
        self.server.body_timeouts += 1
        self.server._log_body_timeout(
            "closed a connection from %s that did not send its request body within body_timeout = %gs",
            str(record.args[0]) if record.args else "?", self.server.conn_params.body_timeout or 0)
        return False


class _Open:
    __slots__ = ("key", "host")

    def __init__(self, key: Optional[str], host: str) -> None:
        self.key, self.host = key, host


class LimitedHTTPServer(httpserver.HTTPServer):
    """HTTPServer with per-address and total connection caps and a pausing accept loop.

    `limits` is the one argument of its own; the others are HTTPServer's. TLS is nginx's job here:
    `ssl_options` is refused."""

    def initialize(self, *args: Any, limits: Optional[Limits] = None, **kwargs: Any) -> None:
        if kwargs.get("ssl_options") is not None:
            raise ValueError("LimitedHTTPServer does not terminate TLS; put a reverse proxy in front")
        super().initialize(*args, **kwargs)
        self.limits = limits or Limits(automatic_max_connections(open_file_limit()), 0)
        self._open: Dict[IOStream, _Open] = {}
        self._per_key: collections.Counter = collections.Counter()
        # Connections waiting for a request (idle keep-alive, or headers not complete), longest first:
        # the ones closed to make room at the total cap.
        self._waiting: "collections.OrderedDict[IOStream, None]" = collections.OrderedDict()
        self.refused = {"address": 0, "total": 0}
        self.evicted = self.accept_errors = self.body_timeouts = 0
        self._log_refused = Throttled(logger, logging.WARNING, REFUSAL_LOG_INTERVAL)
        self._log_evicted = Throttled(logger, logging.WARNING, REFUSAL_LOG_INTERVAL)
        self._log_accept_error = Throttled(logger, logging.ERROR, ACCEPT_LOG_INTERVAL)
        self._log_body_timeout = Throttled(logger, logging.INFO, REFUSAL_LOG_INTERVAL)
        self._body_filter = _BodyTimeouts(self)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def waiting_connections(self) -> int:
        """Open connections waiting for a request: the ones that may be closed to make room."""
        return len(self._waiting)

    # --- listening -------------------------------------------------------------------------

    def add_sockets(self, sockets: Any) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = _Listener(sock, self._accepted, self._accept_failed).remove
        gen_log.addFilter(self._body_filter)
        nofile = open_file_limit()
        logger.info("connections: at most %d at once, %s per client address; idle_timeout %gs, body_timeout %gs",
                    self.limits.total, self.limits.per_address or "no cap",
                    self.conn_params.header_timeout, self.conn_params.body_timeout or 0)
        if self.limits.total > nofile:
            logger.warning("max_connections = %d is above the open-file limit (%d): raise LimitNOFILE, "
                           "or lower max_connections (0: automatic)", self.limits.total, nofile)

    def stop(self) -> None:
        super().stop()
        gen_log.removeFilter(self._body_filter)
        for log in (self._log_refused, self._log_evicted, self._log_accept_error, self._log_body_timeout):
            log.close()

    # --- accepting ---------------------------------------------------------------------------

    def _accepted(self, connection: socket.socket, address: Any) -> None:
        try:
            self._admit(connection, address)
        except Exception:
            self._log_accept_error("could not set up a connection from %s", _host(address), exc_info=True)
            connection.close()

    def _admit(self, connection: socket.socket, address: Any) -> None:
        key = client_key(address, self.limits.exempt)
        host = _host(address)
        cap = self.limits.per_address
        if key is not None and cap and self._per_key[key] >= cap:
            self.refused["address"] += 1
            connection.close()
            self._log_refused("refused a connection from %s: %d already open from %s "
                              "(max_connections_per_ip = %d)", host, self._per_key[key], key, cap)
            return
        if len(self._open) >= self.limits.total and not self._evict():
            self.refused["total"] += 1
            connection.close()
            self._log_refused("refused a connection from %s: %d connections open, each in the middle of a "
                              "request (max_connections = %d)", host, len(self._open), self.limits.total)
            return
        stream = _Stream(connection, self._closed, max_buffer_size=self.max_buffer_size,
                         read_chunk_size=self.read_chunk_size)
        self._open[stream] = _Open(key, host)
        if key is not None:
            self._per_key[key] += 1
        self._waiting[stream] = None
        try:
            self.handle_stream(stream, address)
        except Exception:
            stream.close()
            raise

    def _evict(self) -> bool:
        """Close the connection that has waited longest for a request; False when none is waiting."""
        if not self._waiting:
            return False
        stream, _ = self._waiting.popitem(last=False)
        self.evicted += 1
        self._log_evicted("closed an idle connection from %s to make room: %d connections open "
                          "(max_connections = %d)", self._open[stream].host, len(self._open), self.limits.total)
        stream.close()
        return True

    def _accept_failed(self, exc: OSError) -> None:
        self.accept_errors += 1
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            self._log_accept_error(
                "cannot accept connections: %s (%d open, open-file limit %d); pausing accepts for %gs. "
                "Raise LimitNOFILE or lower max_connections", os.strerror(exc.errno), len(self._open),
                open_file_limit(), ACCEPT_PAUSE)
        else:
            self._log_accept_error("cannot accept connections: %s; pausing accepts for %gs", exc, ACCEPT_PAUSE)

    def _closed(self, stream: IOStream) -> None:
        entry = self._open.pop(stream, None)
        if entry is None:
            return
        self._waiting.pop(stream, None)
        if entry.key is not None:
            self._per_key[entry.key] -= 1
            if self._per_key[entry.key] <= 0:
                del self._per_key[entry.key]

    # --- which connections wait for a request -----------------------------------------------

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        stream = getattr(server_conn, "stream", None)
        if stream not in self._open:
            return delegate
        self._waiting.pop(stream, None)
        self._waiting[stream] = None  # the newest to wait
        return _HeadersSeen(delegate, lambda: self._waiting.pop(stream, None))


class ConnectionCollector:
    """The server's connection counts for /metrics, read at scrape time."""

    def __init__(self, server: LimitedHTTPServer) -> None:
        self.server = server

    def describe(self) -> list:
        return []  # the families are only known by collecting

    def collect(self) -> Iterator[Any]:
        s = self.server
        yield GaugeMetricFamily("wecomd_connections_open", "HTTP connections open now (websockets included).",
                                value=s.open_connections)
        yield GaugeMetricFamily("wecomd_connections_limit", "max_connections in effect.", value=s.limits.total)
        refused = CounterMetricFamily("wecomd_connections_refused", "Connections closed at once, by cap: "
                                      "address (max_connections_per_ip) or total (max_connections).",
                                      labels=("reason",))
        for reason, count in sorted(s.refused.items()):
            refused.add_metric((reason,), count)
        yield refused
        yield CounterMetricFamily("wecomd_connections_evicted", "Idle connections closed to make room for a new "
                                  "one at max_connections.", value=s.evicted)
        yield CounterMetricFamily("wecomd_connections_body_timeouts", "Connections closed because the request "
                                  "body did not arrive within body_timeout.", value=s.body_timeouts)
        yield CounterMetricFamily("wecomd_accept_errors", "accept() failures (EMFILE, ENFILE ...), each "
                                  "followed by a pause.", value=s.accept_errors)


def _host(address: Any) -> str:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "local socket"
