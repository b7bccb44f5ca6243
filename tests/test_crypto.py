"""Tests for wecomd.wecom.crypto: official vectors, every failure code, and wechatpy interop."""
import base64
import inspect
import json
import random
import string
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, quote

import pytest
from Crypto.Cipher import AES

from wecomd.wecom import crypto
from wecomd.wecom.crypto import (
    Base64DecodeError, CryptoError, DecryptError, EncryptError, InvalidKeyError,
    MalformedPlaintextError, ReceiveIdError, ReplyXmlError, SignatureComputeError,
    SignatureError, WecomCrypto,
)

VECTORS_PATH = Path(__file__).parent / "data" / "wecom-vectors.json"  # the official vectors, in the repo
DATA = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
VECTORS = {v["id"]: v for v in DATA["vectors"]}
NEGATIVE = {v["id"]: v for v in DATA["negative"]}


def _of_kind(kind):
    return [pytest.param(v, id=v["id"]) for v in DATA["vectors"] if v["kind"] == kind]


def _crypto(v, **override):
    v = {**v, **override}
    return WecomCrypto(v["token"], v["encoding_aes_key"], v["receive_id"])


def _negative(name):
    neg = NEGATIVE[name]
    return {**VECTORS[neg["based_on"]], **neg} if "based_on" in neg else neg


# A plain AES-CBC helper, independent of wecomd, to craft malformed plaintexts.
DOC = VECTORS["official-doc-post-decrypt"]
DOC_KEY = base64.b64decode(DOC["encoding_aes_key"] + "=")
DOC_RID = DOC["receive_id"].encode()


def _raw_encrypt(padded: bytes, key: bytes = DOC_KEY) -> str:
    return base64.b64encode(AES.new(key, AES.MODE_CBC, iv=key[:16]).encrypt(padded)).decode()


def _raw_decrypt(encrypt: str, key: bytes = DOC_KEY) -> bytes:
    return AES.new(key, AES.MODE_CBC, iv=key[:16]).decrypt(base64.b64decode(encrypt))


def _frame(msg: bytes, msg_len=None, rid=DOC_RID, prefix=b"0123456789abcdef") -> bytes:
    body = prefix + (len(msg) if msg_len is None else msg_len).to_bytes(4, "big") + msg + rid
    pad = 32 - len(body) % 32
    return body + bytes([pad]) * pad


def _doc_crypto():
    return _crypto(DOC)


# --- official vectors -------------------------------------------------------

@pytest.mark.parametrize("v", _of_kind("get_verify"))
def test_get_verify_vectors(v):
    out = _crypto(v).verify_url(v["msg_signature"], v["timestamp"], v["nonce"], v["encrypt"])
    assert out == v["plaintext"].encode()
    assert isinstance(out, bytes)


@pytest.mark.parametrize("v", _of_kind("post_decrypt"))
def test_post_decrypt_vectors(v):
    out = _crypto(v).decrypt_message(v["msg_signature"], v["timestamp"], v["nonce"], v["encrypt"])
    assert out.decode("utf-8") == v["plaintext"]
    assert len(out) == v["plaintext_utf8_len"]
    assert _raw_decrypt(v["encrypt"], base64.b64decode(v["encoding_aes_key"] + "="))[-1] == v["pkcs7_pad_byte"]


@pytest.mark.parametrize("v", _of_kind("post_decrypt"))
def test_post_body_encrypt_element_matches(v):
    envelope = ET.fromstring(v["post_body"])
    assert envelope.findtext("Encrypt") == v["encrypt"]
    out = _crypto(v).decrypt_message(v["msg_signature"], v["timestamp"], v["nonce"],
                                     envelope.findtext("Encrypt"))
    assert out.decode() == v["plaintext"]


@pytest.mark.parametrize("v", _of_kind("reply_encrypt"))
def test_reply_encrypt_vector_is_byte_exact(v):
    c = _crypto(v)
    prefix = v["random_prefix_ascii"].encode()
    assert c.encrypt(v["plaintext"].encode(), random_prefix=prefix) == v["encrypt"]
    env = c.encrypt_reply(v["plaintext"], v["timestamp"], v["nonce"], random_prefix=prefix)
    assert env == (
        "<xml><Encrypt><![CDATA[%s]]></Encrypt><MsgSignature><![CDATA[%s]]></MsgSignature>"
        "<TimeStamp>%s</TimeStamp><Nonce><![CDATA[%s]]></Nonce></xml>"
        % (v["encrypt"], v["msg_signature"], v["timestamp"], v["nonce"]))


@pytest.mark.parametrize("v", [pytest.param(v, id=v["id"]) for v in DATA["vectors"]])
def test_signature_function_and_prefix_of_every_vector(v):
    assert crypto.signature(v["token"], v["timestamp"], v["nonce"], v["encrypt"]) == v["msg_signature"]
    plain = _raw_decrypt(v["encrypt"], base64.b64decode(v["encoding_aes_key"] + "="))
    assert plain[:16] == v["random_prefix_ascii"].encode()
    assert plain[16:20] == v["plaintext_utf8_len"].to_bytes(4, "big")


def test_raw_query_decoded_once_verifies():
    v = VECTORS["official-php-go-verifyurl"]
    q = {k: vals[0] for k, vals in parse_qs(v["raw_query_as_sent"], strict_parsing=True).items()}
    assert q["echostr"] == v["encrypt"]
    assert _crypto(v).verify_url(q["msg_signature"], q["timestamp"], q["nonce"], q["echostr"]) == b"1616140317555161061"


@pytest.mark.parametrize("v", _of_kind("get_verify"))
def test_raw_plus_decoded_as_space_still_verifies(v):
    assert "+" in v["encrypt"]
    raw = "msg_signature=%s&timestamp=%s&nonce=%s&echostr=%s" % (
        v["msg_signature"], v["timestamp"], v["nonce"], quote(v["encrypt"], safe="+/="))
    echostr = parse_qs(raw)["echostr"][0]
    assert " " in echostr and "+" not in echostr
    c = _crypto(v)
    c.verify_signature(v["msg_signature"], v["timestamp"], v["nonce"], echostr)
    assert c.verify_url(v["msg_signature"], v["timestamp"], v["nonce"], echostr) == v["plaintext"].encode()
    assert c.decrypt(echostr) == v["plaintext"].encode()


# --- negative vectors -------------------------------------------------------

def test_negative_wrong_nonce():
    v = NEGATIVE["wrong-nonce-signature"]
    c = _crypto(v)
    with pytest.raises(SignatureError) as exc:
        c.decrypt_message(v["msg_signature"], v["timestamp"], v["nonce"], v["encrypt"])
    assert exc.value.code == -40001
    assert c.decrypt_message(v["msg_signature"], v["timestamp"], "437374425", v["encrypt"]) == b"5927782489442352469"


def test_negative_wrong_receive_id():
    v = _negative("wrong-receive-id")
    assert v["receive_id"] == "wrongcorp"
    with pytest.raises(ReceiveIdError) as exc:
        _crypto(v).decrypt_message(v["msg_signature"], v["timestamp"], v["nonce"], v["encrypt"])
    assert exc.value.code == -40005


def test_negative_tampered_signature():
    v = _negative("tampered-signature")
    with pytest.raises(SignatureError) as exc:
        _crypto(v).decrypt_message(v["msg_signature"], v["timestamp"], v["nonce"], v["encrypt"])
    assert exc.value.code == -40001


def test_signature_checked_before_decrypt():
    with pytest.raises(SignatureError):
        _doc_crypto().decrypt_message("0" * 40, DOC["timestamp"], DOC["nonce"], "not base64!")


# --- signature comparison ---------------------------------------------------

def test_uppercase_signature_is_rejected():
    """WeCom sends lowercase hex; wecomd compares strictly."""
    with pytest.raises(SignatureError):
        _doc_crypto().verify_signature(DOC["msg_signature"].upper(), DOC["timestamp"], DOC["nonce"], DOC["encrypt"])


@pytest.mark.parametrize("bad", ["", DOC["msg_signature"][:-1], DOC["msg_signature"] + "0",
                                 "ü" * 40, "\ud800", None, 123])
def test_garbage_signature_raises_signature_error(bad):
    with pytest.raises(SignatureError):
        _doc_crypto().verify_signature(bad, DOC["timestamp"], DOC["nonce"], DOC["encrypt"])


def test_signature_uses_compare_digest(monkeypatch):
    calls = []
    real = crypto.hmac.compare_digest
    monkeypatch.setattr(crypto.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    _doc_crypto().verify_signature(DOC["msg_signature"], DOC["timestamp"], DOC["nonce"], DOC["encrypt"])
    assert (DOC["msg_signature"].encode(), DOC["msg_signature"].encode()) in calls
    assert "==" not in inspect.getsource(WecomCrypto.verify_signature)


@pytest.mark.parametrize("args", [(None, "1", "2", "3"), ("t", 1, "2", "3"), ("t", "1", "\ud800", "3")])
def test_signature_compute_error(args):
    with pytest.raises(SignatureComputeError) as exc:
        crypto.signature(*args)
    assert exc.value.code == -40003


# --- decrypt failure classes ------------------------------------------------

@pytest.mark.parametrize("bad", ["abc$", "abc", "QU=JD", "QUJDRA===", "é" * 4, "QUJD\n", b"\xff", None])
def test_bad_base64(bad):
    with pytest.raises(Base64DecodeError) as exc:
        _doc_crypto().decrypt(bad)
    assert exc.value.code == -40010


@pytest.mark.parametrize("n", [0, 1, 15, 20, 33])
def test_ciphertext_length_not_multiple_of_16(n):
    with pytest.raises(DecryptError) as exc:
        _doc_crypto().decrypt(base64.b64encode(b"x" * n).decode())
    assert exc.value.code == -40007


@pytest.mark.parametrize("padded", [
    pytest.param(b"\x01" * 31 + b"\x00", id="pad-0"),
    pytest.param(b"\x01" * 63 + b"\x21", id="pad-33"),
    pytest.param(b"\x01" * 15 + b"\x14", id="pad-bigger-than-length"),
    pytest.param(b"\x01" * 28 + b"\x05\x04\x04\x04", id="pad-inconsistent"),
    pytest.param(b"0123456789abcdef\x00\x00" + b"\x0e" * 14, id="too-short"),
    pytest.param(b"\x20" * 32, id="nothing-left-after-pad-32"),
    pytest.param(_frame(b"abc", msg_len=1000), id="msg-len-too-big"),
    pytest.param(_frame(b"abc", msg_len=2 ** 32 - 1), id="msg-len-max"),
    pytest.param(_frame(b"\xff\xfe<xml/>"), id="msg-not-utf8"),
    pytest.param(_frame("你好".encode()[:-1]), id="msg-truncated-utf8"),
])
def test_malformed_plaintext(padded):
    with pytest.raises(MalformedPlaintextError) as exc:
        _doc_crypto().decrypt(_raw_encrypt(padded))
    assert exc.value.code == -40008


def test_well_formed_frame_decrypts():
    """Control for test_malformed_plaintext: the same helper with valid data succeeds."""
    assert _doc_crypto().decrypt(_raw_encrypt(_frame("你好".encode()))) == "你好".encode()
    assert _doc_crypto().decrypt(_raw_encrypt(_frame(b""))) == b""


def test_receive_id_trailing_garbage_or_prefix_is_rejected():
    for rid in (DOC_RID + b"x", DOC_RID[:-1], b""):
        with pytest.raises(ReceiveIdError):
            _doc_crypto().decrypt(_raw_encrypt(_frame(b"hi", rid=rid)))


@pytest.mark.parametrize("key", ["A" * 43, "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
                                 "k" + DOC["encoding_aes_key"][1:], DOC["encoding_aes_key"][:-1] + "E"])
def test_wrong_key_is_malformed_plaintext(key):
    """AES-CBC has no integrity check, so a wrong key yields garbage padding: -40008."""
    c = WecomCrypto(DOC["token"], key, DOC["receive_id"])
    assert len(c._key) == 32
    with pytest.raises(MalformedPlaintextError) as exc:
        c.decrypt(DOC["encrypt"])
    assert exc.value.code == -40008


def test_key_last_char_low_bits_are_ignored():
    """43 chars carry 258 bits; the last char's low 2 bits are dropped, so A..D give one key.

    Real keys (all three in the vectors) are non-canonical like this, so they must not be rejected.
    """
    assert DOC["encoding_aes_key"].endswith("C")
    for last in "ABCD":
        c = WecomCrypto(DOC["token"], DOC["encoding_aes_key"][:-1] + last, DOC["receive_id"])
        assert c.decrypt(DOC["encrypt"]).decode() == DOC["plaintext"]


def test_random_ciphertexts_only_raise_crypto_errors():
    rng = random.Random(40007)
    c = _doc_crypto()
    for _ in range(3000):
        blob = bytes(rng.randrange(256) for _ in range(rng.choice([0, 5, 16, 32, 48, 64, 96])))
        with pytest.raises(CryptoError):
            c.decrypt(base64.b64encode(blob).decode())


# --- keys, construction, repr -----------------------------------------------

@pytest.mark.parametrize("key", [
    "", "A" * 42, "A" * 44, DOC["encoding_aes_key"] + "=", "A" * 42 + "+", "A" * 42 + "/",
    "A" * 42 + "-", "A" * 42 + "_", "A" * 42 + " ", "A" * 42 + "é", "A" * 42 + "\uff21", None, b"A" * 43,
])
def test_invalid_keys(key):
    with pytest.raises(InvalidKeyError) as exc:
        WecomCrypto("token", key, "corp")
    assert exc.value.code == -40004
    if key:
        assert str(key) not in str(exc.value)


def test_invalid_key_messages_say_what_is_wrong():
    with pytest.raises(InvalidKeyError, match="43 characters, got 42"):
        WecomCrypto("t", "A" * 42, "c")
    with pytest.raises(InvalidKeyError, match="A-Z, a-z and 0-9"):
        WecomCrypto("t", "A" * 42 + "+", "c")


@pytest.mark.parametrize("token,rid,exc_cls", [
    (None, "corp", SignatureComputeError), ("t", None, ReceiveIdError), ("t", "\ud800", ReceiveIdError)])
def test_invalid_token_or_receive_id(token, rid, exc_cls):
    with pytest.raises(exc_cls):
        WecomCrypto(token, DOC["encoding_aes_key"], rid)


def test_empty_receive_id_is_allowed():
    c = WecomCrypto("t", DOC["encoding_aes_key"], "")
    assert c.decrypt(c.encrypt(b"x")) == b"x"


def test_repr_hides_secrets():
    c = _doc_crypto()
    text = repr(c) + str(c)
    assert DOC["token"] not in text and DOC["encoding_aes_key"] not in text
    assert DOC["receive_id"] in repr(c)


def test_error_codes_table():
    expected = {
        "SignatureError": -40001, "EnvelopeError": -40002, "SignatureComputeError": -40003,
        "InvalidKeyError": -40004, "ReceiveIdError": -40005, "EncryptError": -40006,
        "DecryptError": -40007, "MalformedPlaintextError": -40008, "Base64EncodeError": -40009,
        "Base64DecodeError": -40010, "ReplyXmlError": -40011,
    }
    for name, code in expected.items():
        cls = getattr(crypto, name)
        assert issubclass(cls, CryptoError)
        err = cls()
        assert err.code == code and str(err)
        assert str(cls("custom")) == "custom"


# --- encrypt and reply ------------------------------------------------------

def test_every_padding_length_round_trips():
    c = _doc_crypto()
    pads = set()
    for n in range(71):
        msg = (string.ascii_letters * 2).encode()[:n]
        enc = c.encrypt(msg)
        assert c.decrypt(enc) == msg
        raw = _raw_decrypt(enc)
        assert len(raw) % 32 == 0
        pads.add(raw[-1])
    assert pads == set(range(1, 33))


def _prefix(rnd: random.Random) -> bytes:
    return "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(16)).encode()


def test_every_encryption_is_a_fresh_ciphers_whatever_came_before():
    # encrypt keeps one CBC cipher across calls (_cbc_encrypt): each ciphertext must still be the
    # one a fresh AES-CBC cipher (IV key[:16]) gives, after any mix of lengths and other calls.
    c, rnd = _doc_crypto(), random.Random(10)
    for n in (0, 1, 15, 16, 17, 31, 32, 33, 500, 2048, 3, 0, 70):
        msg, prefix = "回".encode() * (n // 3) + b"m" * (n % 3), _prefix(rnd)
        assert c.encrypt(msg, random_prefix=prefix) == _raw_encrypt(_frame(msg, prefix=prefix))
        c.encrypt_reply("<xml>%d</xml>" % n, "1700000000", "abc")
        assert c.decrypt(c.encrypt(msg)) == msg


def test_threads_sharing_one_crypto_each_get_a_fresh_ciphers_ciphertext():
    c = _doc_crypto()

    def encrypt_many(worker: int) -> int:
        rnd, wrong = random.Random(worker), 0
        for i in range(300):
            msg, prefix = b"w%d-%d" % (worker, i) * rnd.randint(1, 40), _prefix(rnd)
            wrong += c.encrypt(msg, random_prefix=prefix) != _raw_encrypt(_frame(msg, prefix=prefix))
        return wrong

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(encrypt_many, range(6))) == [0] * 6


def test_a_failed_encryption_leaves_the_next_one_correct():
    class Failing:
        def encrypt(self, data):
            raise MemoryError("out of memory halfway through")

    c, prefix = _doc_crypto(), b"0123456789abcdef"
    c.encrypt(b"before")
    c._encryptor = Failing()  # the cipher's state after such a failure is unknown
    with pytest.raises(MemoryError):
        c.encrypt(b"lost")
    assert c.encrypt(b"next", random_prefix=prefix) == _raw_encrypt(_frame(b"next", prefix=prefix))


def test_default_prefix_is_random_alphanumeric():
    c = _doc_crypto()
    a, b = c.encrypt(b"same"), c.encrypt(b"same")
    assert a != b
    prefix = _raw_decrypt(a)[:16]
    assert len(prefix) == 16 and prefix.decode().isalnum()


@pytest.mark.parametrize("prefix", [b"", b"x" * 15, b"x" * 17, "1234567890123456"])
def test_bad_random_prefix(prefix):
    with pytest.raises(EncryptError):
        _doc_crypto().encrypt(b"hi", random_prefix=prefix)


@pytest.mark.parametrize("msg", [b"\xff", "\ud800", None])
def test_encrypt_rejects_non_utf8(msg):
    with pytest.raises(EncryptError) as exc:
        _doc_crypto().encrypt(msg)
    assert exc.value.code == -40006


@pytest.mark.parametrize("ts,nonce", [
    ("12<3", "abc"), ("123\n", "abc"), ("", "abc"), (1409659813, "abc"), ("١٢٣", "abc"),
    ("123", "a]]>b"), ("123", ""), ("123", "abc def"), ("123", None), ("1" * 21, "abc"),
])
def test_encrypt_reply_rejects_unsafe_timestamp_or_nonce(ts, nonce):
    with pytest.raises(ReplyXmlError) as exc:
        _doc_crypto().encrypt_reply("<xml/>", ts, nonce)
    assert exc.value.code == -40011


def test_encrypt_reply_envelope_parses_and_verifies():
    c = _doc_crypto()
    body = "<xml><Content><![CDATA[回复 ok]]></Content></xml>"
    env = ET.fromstring(c.encrypt_reply(body.encode(), "1409659813", "abcXYZ09"))
    assert [e.tag for e in env] == ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]
    out = c.decrypt_message(env.findtext("MsgSignature"), env.findtext("TimeStamp"),
                            env.findtext("Nonce"), env.findtext("Encrypt"))
    assert out.decode() == body


# --- interop with wechatpy (an implementation wecomd did not write) ---------

wechatpy_crypto = pytest.importorskip("wechatpy.enterprise.crypto")

INTEROP_BODIES = [
    "<xml><Content><![CDATA[你好，世界 — 企业微信]]></Content></xml>",
    "<xml><Content><![CDATA[" + "长" * 668 + "ab" + "]]></Content></xml>",  # 2048 bytes
    "<xml/>",
]


def _wechatpy(v=DOC):
    return wechatpy_crypto.WeChatCrypto(v["token"], v["encoding_aes_key"], v["receive_id"])


def test_interop_body_sizes():
    assert len(INTEROP_BODIES[1].encode()) == 2048


@pytest.mark.parametrize("body", INTEROP_BODIES)
def test_wecomd_reply_decrypts_in_wechatpy(body):
    env = _doc_crypto().encrypt_reply(body, "1700000000", "987654")
    sig = ET.fromstring(env).findtext("MsgSignature")
    assert _wechatpy().decrypt_message(env, sig, "1700000000", "987654") == body


@pytest.mark.parametrize("body", INTEROP_BODIES)
def test_wechatpy_message_decrypts_in_wecomd(body):
    env = ET.fromstring(_wechatpy().encrypt_message(body, "5551234", "1700000001"))
    out = _doc_crypto().decrypt_message(env.findtext("MsgSignature"), "1700000001", "5551234",
                                        env.findtext("Encrypt"))
    assert out.decode("utf-8") == body


def test_interop_every_length_both_directions():
    ours, theirs = _doc_crypto(), _wechatpy()
    for n in range(71):
        msg = "m" * n
        env = ours.encrypt_reply(msg, "1", "n")
        sig = ET.fromstring(env).findtext("MsgSignature")
        assert theirs.decrypt_message(env, sig, "1", "n") == msg
        their_env = ET.fromstring(theirs.encrypt_message(msg, "n", "1"))
        assert ours.decrypt_message(their_env.findtext("MsgSignature"), "1", "n",
                                    their_env.findtext("Encrypt")) == msg.encode()
