"""The client's address behind a reverse proxy, for the sign-in limits and the logs.

`client_ip` believes X-Forwarded-For / X-Real-IP only from a TCP peer listed in `[server]
trusted_proxies`: there it takes the right-most X-Forwarded-For address that is not itself a trusted
proxy (each proxy appends the address it saw, so the left part is whatever the client claimed), else
X-Real-IP. From any other peer the headers are ignored, except that `[server] xheaders = yes` keeps
its old meaning: Tornado has then already taken the address from them, for every peer.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Optional, Union

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def client_ip(request: Any, trusted: Iterable[Any] = ()) -> str:
    """The client address of a Tornado `HTTPServerRequest`, as text ("-" when it is unknown)."""
    trusted = tuple(trusted)
    peer = parse(_peer(request))
    if peer is None or not is_trusted(peer, trusted):
        return request.remote_ip or "-"  # Tornado's: the peer, or with `xheaders` the header's
    forwarded = request.headers.get_list("X-Forwarded-For")
    hops = [hop.strip() for line in forwarded for hop in line.split(",")]
    if hops:
        found = peer
        for hop in reversed(hops):
            address = parse(hop)
            if address is None:
                break  # a garbled hop: what lies left of it cannot be trusted either
            found = address
            if not is_trusted(address, trusted):
                break
        return str(found)  # every hop trusted: the left-most, the one that came first
    real = parse(request.headers.get("X-Real-IP", ""))
    return str(real if real is not None else peer)


def parse(text: Any) -> Optional[Address]:
    """An IP address (IPv4-mapped IPv6 unwrapped, an IPv6 zone dropped), or None."""
    if not isinstance(text, str):
        return None
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: Address, trusted: Iterable[Any]) -> bool:
    return any(address.version == network.version and address in network for network in trusted)


def _peer(request: Any) -> Any:
    """The TCP peer's address, which `xheaders` never rewrites (None for a Unix socket)."""
    address = getattr(getattr(request.connection, "context", None), "address", None)
    if isinstance(address, tuple) and address:
        return address[0]
    return request.remote_ip
