#!/usr/bin/env python3
"""Coverage-guided fuzz target (atheris) for wecomd.wecom.crypto.

    python tests/fuzz/fuzz_crypto.py -max_total_time=60 /tmp/fuzz-crypto tests/fuzz/corpus/crypto
    python tests/fuzz/fuzz_crypto.py --replay [DIR_OR_FILE ...]     # one pass, no atheris needed

The first byte of an input picks what is exercised ('a' = 0, 'b' = 1, ...); the rest is the payload,
split on newlines where a mode needs several values, so seeds stay readable text. Any exception other
than CryptoError, and any failed assertion, is a crash. See tests/fuzz/README.md and docs/fuzzing.md.
"""
from __future__ import annotations

import base64
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from Crypto.Cipher import AES

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _driver  # noqa: E402  (the shared atheris/replay driver beside this file)

atheris = _driver.atheris

if __name__ == "__main__" and atheris is not None and "--replay" not in sys.argv:
    with atheris.instrument_imports(include=["wecomd"]):
        from wecomd.wecom import crypto
else:
    from wecomd.wecom import crypto

TOKEN = "T0kenForTests1234567890abcdefXYZ"
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CORP_ID = "ww0123456789abcdef"
BOX = crypto.WecomCrypto(TOKEN, KEY, CORP_ID)
AES_KEY = base64.b64decode(KEY + "=")
PREFIX = b"0123456789abcdef"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")  # any bytes; invalid ones become lone surrogates


def _fields(payload: bytes, count: int):
    parts = payload.split(b"\n", count - 1)
    return parts + [b""] * (count - len(parts))


def _decrypt(value) -> None:
    try:
        msg = BOX.decrypt(value)
    except crypto.CryptoError as exc:
        assert -40011 <= exc.code <= -40001, exc.code
        return
    assert isinstance(msg, bytes)
    msg.decode("utf-8")


def _aes(plain: bytes) -> str:
    return base64.b64encode(AES.new(AES_KEY, AES.MODE_CBC, iv=AES_KEY[:16]).encrypt(plain)).decode()


def mode_decrypt_text(payload: bytes) -> None:
    _decrypt(_text(payload))


def mode_decrypt_bytes(payload: bytes) -> None:
    _decrypt(payload)


def mode_decrypt_base64(payload: bytes) -> None:
    _decrypt(base64.b64encode(payload).decode())


def mode_decrypt_plaintext(payload: bytes) -> None:
    """The payload is the decrypted buffer: reaches padding, msg_len, UTF-8 and receive id checks."""
    plain = payload[:len(payload) // 16 * 16] or payload.ljust(16, b"\x10")[:16]
    _decrypt(_aes(plain))


def mode_round_trip(payload: bytes) -> None:
    receive_id, msg = _fields(payload, 2)
    box = crypto.WecomCrypto(TOKEN, KEY, receive_id.decode("utf-8", "replace"))
    try:
        msg.decode("utf-8")
    except UnicodeDecodeError:
        try:
            box.encrypt(msg)
        except crypto.EncryptError:
            return
        raise AssertionError("non-UTF-8 msg was encrypted")
    encrypted = box.encrypt(msg, PREFIX)
    assert len(base64.b64decode(encrypted)) % 32 == 0
    assert box.decrypt(encrypted) == msg
    assert box.decrypt(encrypted.replace("+", " ")) == msg


def mode_tamper(payload: bytes) -> None:
    head, msg = payload[:3].ljust(3, b"\0"), payload[3:]
    try:
        encrypted = BOX.encrypt(msg, PREFIX)
    except crypto.EncryptError:
        return
    raw = bytearray(base64.b64decode(encrypted))
    raw[int.from_bytes(head[:2], "big") % len(raw)] ^= head[2] or 1
    _decrypt(base64.b64encode(bytes(raw)).decode())
    chars = list(encrypted)
    chars[int.from_bytes(head[:2], "big") % len(chars)] = chr(head[2] % 128)
    _decrypt("".join(chars))


def mode_verify_url(payload: bytes) -> None:
    sig, ts, nonce, echostr = (_text(p) for p in _fields(payload, 4))
    if sig == "sign":  # a correct signature, so that the fuzzer also reaches decryption
        try:
            sig = crypto.signature(TOKEN, ts, nonce, echostr.replace(" ", "+"))
        except crypto.CryptoError:
            pass
    try:
        out = BOX.verify_url(sig, ts, nonce, echostr)
    except crypto.CryptoError as exc:
        assert -40011 <= exc.code <= -40001
    else:
        assert isinstance(out, bytes)


def mode_settings_and_reply(payload: bytes) -> None:
    token, key, receive_id, ts, nonce, reply = (_text(p) for p in _fields(payload, 6))
    try:
        box = crypto.WecomCrypto(token, key, receive_id)
    except crypto.CryptoError:
        box = BOX
    try:
        envelope = box.encrypt_reply(reply, ts, nonce, PREFIX)
    except crypto.CryptoError:
        return
    root = ET.fromstring(envelope)
    assert root.findtext("TimeStamp") == ts and root.findtext("Nonce") == nonce
    out = box.decrypt_message(root.findtext("MsgSignature"), ts, nonce, root.findtext("Encrypt"))
    assert out == reply.encode("utf-8"), (out, reply)
    assert re.fullmatch(r"[0-9a-f]{40}", root.findtext("MsgSignature"))


MODES = [mode_decrypt_text, mode_decrypt_bytes, mode_decrypt_base64, mode_decrypt_plaintext,
         mode_round_trip, mode_tamper, mode_verify_url, mode_settings_and_reply]


TestOneInput = _driver.by_first_byte(MODES)


def main() -> int:
    return _driver.main(TestOneInput, __file__)


if __name__ == "__main__":
    sys.exit(main())
