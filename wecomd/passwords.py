"""Admin password hashes: scrypt from hashlib in a self-describing text format.

A stored hash looks like ``scrypt$n=16384,r=8,p=1$<base64 salt>$<base64 key>``, so the cost
parameters can be raised later without breaking hashes already written to config files.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import unicodedata
from typing import NamedTuple, Optional

SCHEME = "scrypt"
N, R, P = 2 ** 14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
# Bounds for parameters read back from a config file: a hash pasted with absurd costs must
# not make verification take minutes or gigabytes.
_MAX_MEMORY = 64 * 1024 * 1024
_MAX_P = 16


class _Parsed(NamedTuple):
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """Return a new salted scrypt hash of `password` for `[admin] password_hash`."""
    salt = os.urandom(SALT_BYTES)
    key = _derive(password, salt, n, r, p, KEY_BYTES)
    return "%s$n=%d,r=%d,p=%d$%s$%s" % (SCHEME, n, r, p, _b64(salt), _b64(key))


def verify_password(password: str, stored: str) -> bool:
    """Tell whether `password` matches `stored`.

    Never raises: a malformed or unsupported stored hash, or a non-string password, is simply
    a mismatch.
    """
    parsed = _parse(stored)
    if parsed is None or not isinstance(password, str):
        return False
    try:
        key = _derive(password, parsed.salt, parsed.n, parsed.r, parsed.p, len(parsed.key))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(key, parsed.key)


def is_hash(stored: str) -> bool:
    """Tell whether `stored` is a well-formed hash that `verify_password` can check."""
    return _parse(stored) is not None


def _derive(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # NFC so that the same password typed through different input methods hashes the same.
    secret = unicodedata.normalize("NFC", password).encode("utf-8")
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=_MAX_MEMORY + 1024 * 1024)


def _parse(stored: object) -> Optional[_Parsed]:
    if not isinstance(stored, str):
        return None
    parts = stored.strip().split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        return None
    params = _parse_params(parts[1])
    salt, key = _unb64(parts[2]), _unb64(parts[3])
    if params is None or not salt or key is None or not 16 <= len(key) <= 64:
        return None
    return _Parsed(params[0], params[1], params[2], salt, key)


def _parse_params(text: str) -> Optional[tuple]:
    try:
        fields = dict(item.split("=", 1) for item in text.split(","))
        n, r, p = int(fields["n"]), int(fields["r"]), int(fields["p"])
    except (ValueError, KeyError):
        return None
    if len(fields) != 3 or n < 2 or n & (n - 1) or r < 1 or not 1 <= p <= _MAX_P:
        return None
    if 128 * r * (n + p) > _MAX_MEMORY:
        return None
    return n, r, p


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> Optional[bytes]:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
