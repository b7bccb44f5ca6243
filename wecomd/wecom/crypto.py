"""WeCom callback crypto: signatures, AES-256-CBC envelope, and the official error codes.

Protocol facts live in docs/wecom-protocol.md §3 (scheme) and §9 (pitfalls).
"""
from __future__ import annotations

import base64
import hashlib
import json
import hmac
import logging
import os
import re
import string
import threading

from Crypto.Cipher import AES

logger = logging.getLogger(__name__)

BLOCK = 32  # WeCom pads to 32 bytes, not the AES block size (§3, pitfall §9.3)
PREFIX_LEN = 16
HEADER_LEN = PREFIX_LEN + 4  # random prefix + uint32 msg_len
_KEY_RE = re.compile(r"[A-Za-z0-9]{43}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,20}")
_NONCE_RE = re.compile(r"[A-Za-z0-9]{1,64}")
_PREFIX_ALPHABET = string.ascii_letters + string.digits
# Random bytes map onto the 62 alphanumerics; the top 8 byte values are dropped so that every
# character stays equally likely. One read of the OS's random source per prefix (os.urandom, which
# is what secrets.token_bytes calls).
_PREFIX_TABLE = bytes(ord(_PREFIX_ALPHABET[b % 62]) for b in range(256))
_PREFIX_DROP = bytes(range(248, 256))
_REPLY_XML = (
    "<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
    "<MsgSignature><![CDATA[{signature}]]></MsgSignature>"
    "<TimeStamp>{timestamp}</TimeStamp>"
    "<Nonce><![CDATA[{nonce}]]></Nonce></xml>"
)


class CryptoError(Exception):
    """Base of every crypto failure; `code` is the official WeCom error code."""

    code = 0
    default_message = "crypto error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message


class SignatureError(CryptoError):
    """msg_signature does not match sha1(token, timestamp, nonce, encrypt)."""
    code, default_message = -40001, "signature mismatch"


class EnvelopeError(CryptoError):
    """The callback body has no usable <Encrypt> element (raised by callers)."""
    code, default_message = -40002, "cannot find <Encrypt> in the request body"


class SignatureComputeError(CryptoError):
    """The signature inputs cannot be hashed (wrong type or unencodable text)."""
    code, default_message = -40003, "cannot compute signature"


class InvalidKeyError(CryptoError):
    """The EncodingAESKey is not 43 characters of [A-Za-z0-9] / 32 bytes."""
    code, default_message = -40004, "invalid EncodingAESKey"


class ReceiveIdError(CryptoError):
    """The decrypted receive id (CorpID / suite id) is not the configured one."""
    code, default_message = -40005, "receive id mismatch"


class EncryptError(CryptoError):
    """The message cannot be encrypted."""
    code, default_message = -40006, "encrypt failed"


class DecryptError(CryptoError):
    """AES decryption failed: empty ciphertext or length not a multiple of 16."""
    code, default_message = -40007, "decrypt failed"


class MalformedPlaintextError(CryptoError):
    """The decrypted buffer has bad padding, bad length, or a non-UTF-8 msg."""
    code, default_message = -40008, "malformed plaintext"


class Base64EncodeError(CryptoError):
    """Base64 encoding failed (kept for the complete code table)."""
    code, default_message = -40009, "base64 encode failed"


class Base64DecodeError(CryptoError):
    """The ciphertext is not strict Base64."""
    code, default_message = -40010, "base64 decode failed"


class ReplyXmlError(CryptoError):
    """The passive reply envelope cannot be built safely."""
    code, default_message = -40011, "cannot build reply xml"


def signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """Return the lowercase sha1 hex of the four values sorted and joined (§3)."""
    parts = [token, timestamp, nonce, encrypt]
    if not (isinstance(token, str) and isinstance(timestamp, str) and isinstance(nonce, str)
            and isinstance(encrypt, str)):
        raise SignatureComputeError("signature inputs must all be str")
    try:
        data = "".join(sorted(parts)).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SignatureComputeError("signature inputs are not encodable as UTF-8") from exc
    return hashlib.sha1(data).hexdigest()


def _restore_plus(encrypt: str) -> str:
    # Query parsing turns a raw '+' into ' '; Base64 never has spaces (pitfall §9.1).
    return encrypt.replace(" ", "+") if isinstance(encrypt, str) else encrypt


def _decode_key(encoding_aes_key: str) -> bytes:
    if not isinstance(encoding_aes_key, str):
        raise InvalidKeyError("EncodingAESKey must be a str")
    if len(encoding_aes_key) != 43:
        raise InvalidKeyError(
            "EncodingAESKey must be exactly 43 characters, got %d" % len(encoding_aes_key))
    if not _KEY_RE.fullmatch(encoding_aes_key):
        raise InvalidKeyError("EncodingAESKey may only contain the characters A-Z, a-z and 0-9")
    # 43 chars carry 258 bits: the last char's low 2 bits are dropped, and real
    # keys are not canonical, so never reject on them. Always yields 32 bytes.
    return base64.b64decode(encoding_aes_key + "=")


def _random_prefix() -> bytes:
    """16 random alphanumerics, the shape of prefix the official libraries send."""
    prefix = b""
    while len(prefix) < PREFIX_LEN:
        prefix += os.urandom(32).translate(_PREFIX_TABLE, _PREFIX_DROP)
    return prefix[:PREFIX_LEN]


def _unpad(plain: bytes) -> bytes:
    pad = plain[-1]
    if not 1 <= pad <= BLOCK or pad > len(plain):
        raise MalformedPlaintextError("bad padding byte %d" % pad)
    if plain[-pad:] != bytes([pad]) * pad:
        raise MalformedPlaintextError("inconsistent padding bytes")
    return plain[:-pad]


def _pad(data: bytes) -> bytes:
    pad = BLOCK - len(data) % BLOCK  # 1..32; a full block when already aligned
    return data + bytes([pad]) * pad


class WecomCrypto:
    """Signature checks and AES envelope for one WeCom app (token, key, receive id).

    `receive_id` is the CorpID for self-built apps (the plaintext must end with it).
    """

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        self._key = _decode_key(encoding_aes_key)
        if not isinstance(token, str):
            raise SignatureComputeError("token must be a str")
        try:
            self._receive_id_bytes = receive_id.encode("utf-8")
        except (AttributeError, UnicodeEncodeError) as exc:
            raise ReceiveIdError("receive_id must be a UTF-8 encodable str") from exc
        self._token = token
        self.receive_id = receive_id
        self._ecb = AES.new(self._key, AES.MODE_ECB)  # stateless: see _cbc_decrypt
        self._iv = int.from_bytes(self._key[:16], "big")
        self._encrypt_lock = threading.Lock()
        self._new_encryptor()

    def __repr__(self) -> str:
        return "WecomCrypto(receive_id=%r)" % self.receive_id

    def _new_encryptor(self) -> None:
        self._encryptor = AES.new(self._key, AES.MODE_CBC, iv=self._key[:16])
        self._carry = 0  # the encryptor's chaining value XOR the IV: see _cbc_encrypt

    def _cbc_encrypt(self, plain: bytes) -> bytes:
        """AES-CBC encryption with IV key[:16], on one long-lived cipher instead of a fresh one per call.

        A fresh cipher (AES.new) costs more than encrypting a reply, but a CBC cipher carries its
        chaining value S (the last ciphertext block) into the next call. So the first block goes
        in XORed with S xor IV (`_carry`): the cipher computes E((P[0] xor S xor IV) xor S) =
        E(P[0] xor IV), a fresh cipher's first block, and the rest chains from there as usual.
        The lock keeps the cipher and `_carry` in step when threads share this object.
        """
        with self._encrypt_lock:
            first = (int.from_bytes(plain[:16], "big") ^ self._carry).to_bytes(16, "big")
            try:
                out = self._encryptor.encrypt(first + plain[16:])
            except BaseException:
                self._new_encryptor()  # whatever state it was left in, the next call starts afresh
                raise
            self._carry = int.from_bytes(out[-16:], "big") ^ self._iv
        return out

    def _cbc_decrypt(self, raw: bytes) -> bytes:
        """AES-CBC decryption as one ECB pass and one XOR: P[i] = D(C[i]) xor C[i-1], C[-1] = IV.

        The same bytes as a fresh CBC cipher's decrypt, but the ECB cipher is stateless and made
        once per app, so a callback costs one call into the AES library instead of three.
        """
        blocks = self._ecb.decrypt(raw)
        chain = self._key[:16] + raw[:-16]
        xored = int.from_bytes(blocks, "big") ^ int.from_bytes(chain, "big")
        return xored.to_bytes(len(raw), "big")

    def verify_signature(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        """Raise SignatureError unless msg_signature (lowercase hex) matches.

        Spaces in `encrypt` are read as '+' (a raw '+' decoded by query parsing).
        """
        expected = signature(self._token, timestamp, nonce, _restore_plus(encrypt))
        if not isinstance(msg_signature, str):
            raise SignatureError("msg_signature must be a str")
        given = msg_signature.encode("utf-8", "replace")
        if not hmac.compare_digest(expected.encode("ascii"), given):
            raise SignatureError()

    def decrypt(self, encrypt: str) -> bytes:
        """Decrypt a Base64 `Encrypt`/echostr value and return the msg bytes.

        Padding is PKCS#7 over a 32-byte block (pad byte 1..32), so a stock
        16-byte unpad would reject real traffic. Checks, in order: strict Base64,
        non-zero multiple of 16, padding, minimum length, msg_len, UTF-8 msg,
        and finally that the trailing receive id is ours.
        """
        raw = self._b64decode(_restore_plus(encrypt))
        if not raw or len(raw) % 16:
            raise DecryptError("ciphertext length %d is not a non-zero multiple of 16" % len(raw))
        try:
            plain = self._cbc_decrypt(raw)
        except ValueError as exc:
            raise DecryptError("AES decrypt failed") from exc
        msg, rid = self._split(_unpad(plain))
        if not hmac.compare_digest(rid, self._receive_id_bytes):
            raise ReceiveIdError("receive id in the plaintext (%d bytes) is not the configured one;"
                                 " check CorpID and EncodingAESKey" % len(rid))
        return msg

    @staticmethod
    def _b64decode(encrypt: str) -> bytes:
        try:
            return base64.b64decode(encrypt, validate=True)
        except (TypeError, ValueError) as exc:  # binascii.Error, non-ASCII str, not a str
            raise Base64DecodeError("ciphertext is not valid Base64") from exc

    @staticmethod
    def _split(body: bytes) -> tuple[bytes, bytes]:
        if len(body) < HEADER_LEN:
            raise MalformedPlaintextError("plaintext too short (%d bytes)" % len(body))
        msg_len = int.from_bytes(body[PREFIX_LEN:HEADER_LEN], "big")
        if msg_len > len(body) - HEADER_LEN:
            raise MalformedPlaintextError("msg_len %d exceeds the plaintext" % msg_len)
        msg = body[HEADER_LEN:HEADER_LEN + msg_len]
        try:
            msg.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPlaintextError("msg is not valid UTF-8") from exc
        return msg, body[HEADER_LEN + msg_len:]

    def encrypt(self, msg: bytes | str, random_prefix: bytes | None = None) -> str:
        """Encrypt `msg` (UTF-8) for WeCom and return the Base64 ciphertext.

        `random_prefix` (16 bytes) is for deterministic tests only; by default 16
        random alphanumerics are used, the same shape the official libraries send.
        """
        if isinstance(msg, str):
            msg = msg.encode("utf-8", "surrogatepass")
        if not isinstance(msg, bytes):
            raise EncryptError("msg must be bytes or str")
        try:
            msg.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EncryptError("msg is not valid UTF-8") from exc
        if random_prefix is None:
            random_prefix = _random_prefix()
        if not isinstance(random_prefix, bytes) or len(random_prefix) != PREFIX_LEN:
            raise EncryptError("random_prefix must be exactly 16 bytes")
        if len(msg) >= 2 ** 32:
            raise EncryptError("msg too long")
        plain = random_prefix + len(msg).to_bytes(4, "big") + msg + self._receive_id_bytes
        return base64.b64encode(self._cbc_encrypt(_pad(plain))).decode("ascii")

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> bytes:
        """Verify and decrypt a GET echostr; reply 200 with exactly these bytes (§2)."""
        return self.decrypt_message(msg_signature, timestamp, nonce, echostr)

    def decrypt_message(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> bytes:
        """Verify the signature over `encrypt` (the <Encrypt> text), then decrypt it."""
        encrypt = _restore_plus(encrypt)
        self.verify_signature(msg_signature, timestamp, nonce, encrypt)
        return self.decrypt(encrypt)

    def encrypt_reply(self, reply_xml: bytes | str, timestamp: str, nonce: str,
                      random_prefix: bytes | None = None) -> str:
        """Encrypt a passive reply and return the signed <xml> envelope (§4).

        `timestamp` must be digits and `nonce` alphanumeric: both are written
        into the XML unescaped, so anything else raises ReplyXmlError.
        """
        encrypted, sig = self._signed(reply_xml, timestamp, nonce, random_prefix)
        return _REPLY_XML.format(encrypt=encrypted, signature=sig, timestamp=timestamp, nonce=nonce)

    def _signed(self, reply: bytes | str, timestamp: str, nonce: str,
                random_prefix: bytes | None) -> tuple[str, str]:
        """(the encrypted reply, its signature) over the reply's own timestamp and nonce, which are
        written into the answer unescaped: digits and alphanumerics only, else ReplyXmlError."""
        if not isinstance(timestamp, str) or not _TIMESTAMP_RE.fullmatch(timestamp):
            raise ReplyXmlError("reply timestamp must be 1-20 ASCII digits")
        if not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
            raise ReplyXmlError("reply nonce must be 1-64 ASCII letters or digits")
        encrypted = self.encrypt(reply, random_prefix)
        return encrypted, signature(self._token, timestamp, nonce, encrypted)

    def encrypt_json_reply(self, reply_json: bytes | str, timestamp: str, nonce: str,
                           random_prefix: bytes | None = None) -> str:
        """Encrypt a 智能机器人 passive reply and return its JSON envelope: {"encrypt", "msgsignature"
        (no underscore), "timestamp" (a number), "nonce"}, with the request's timestamp and nonce."""
        encrypted, sig = self._signed(reply_json, timestamp, nonce, random_prefix)
        return json.dumps({"encrypt": encrypted, "msgsignature": sig, "timestamp": int(timestamp), "nonce": nonce})
