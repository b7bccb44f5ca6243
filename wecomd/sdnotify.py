"""Tell systemd how the service is doing (sd_notify(3)), with the standard library only.

systemd passes the address of its notification socket in $NOTIFY_SOCKET: a file-system path, or
an abstract-namespace name written with a leading ``@``. A notification is one AF_UNIX datagram
of newline-separated ``KEY=VALUE`` assignments. Outside systemd (no $NOTIFY_SOCKET) every call
is a cheap no-op that returns False, and no call ever raises: telling systemd is a courtesy, and
a broken socket must not take the daemon down with it.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping

logger = logging.getLogger(__name__)

ENV_SOCKET = "NOTIFY_SOCKET"


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. ``"READY=1"``) to $NOTIFY_SOCKET; True when the datagram went out."""
    address = environ.get(ENV_SOCKET, "")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]  # abstract namespace
    elif address.startswith("/"):
        target = address
    else:  # e.g. systemd's vsock:CID:PORT for virtual machines; not needed on a host
        logger.debug("sd_notify: unsupported %s address %r", ENV_SOCKET, address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            sock.sendall(state.encode("utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte inside a path
        logger.debug("sd_notify: cannot send %r to %s: %s", state.split("\n", 1)[0], address, exc)
        return False
    return True


def ready(environ: Mapping[str, str] = os.environ) -> bool:
    """Start-up or a reload is complete: the sockets accept connections."""
    return notify("READY=1", environ)


def reloading(environ: Mapping[str, str] = os.environ) -> bool:
    """A reload has begun; send `ready()` when it is over, whatever its outcome.

    MONOTONIC_USEC (CLOCK_MONOTONIC in microseconds) is what Type=notify-reload requires with
    RELOADING=1; Type=notify accepts it too.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1\nMONOTONIC_USEC=%d" % usec, environ)


def stopping(environ: Mapping[str, str] = os.environ) -> bool:
    """The service has begun to shut down."""
    return notify("STOPPING=1", environ)


def status(text: str, environ: Mapping[str, str] = os.environ) -> bool:
    """A one-line, human-readable status that `systemctl status` shows."""
    return notify("STATUS=" + " ".join(text.split()), environ)
