"""Property-based tests (hypothesis) for the crypto, the XML messages, the config loader and rules.

Reproducible: every test is derandomized and uses no example database, so CI runs the same
examples every time. `TEST_HYPOTHESIS_SCALE=20 python -m pytest tests/test_properties.py`
runs twenty times as many examples (still deterministic). Crashes that the fuzzers in
tests/fuzz/ or these properties found are pinned below as test_regression_* (docs/fuzzing.md).
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import re
import shlex
import string
import xml.etree.ElementTree as ET
from pathlib import Path

import defusedxml
import pytest
from Crypto.Cipher import AES
from defusedxml import ElementTree as DefusedElementTree
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from wecomd import config, passwords

from wecomd.wecom import envelopes, messages, replies

from wecomd.automation import rules
from wecomd.wecom.crypto import (
    CryptoError, EncryptError, ReceiveIdError, ReplyXmlError, SignatureError, WecomCrypto,
    signature,
)
from wecomd.wecom.messages import REPEATABLE, MessageError

HERE = Path(__file__).resolve().parent
SCALE = float(os.environ.get("TEST_HYPOTHESIS_SCALE", "1"))
_BASE = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                        HealthCheck.data_too_large])


def examples(n: int) -> settings:
    return settings(_BASE, max_examples=max(1, int(n * SCALE)))


ALNUM = string.ascii_letters + string.digits
KEYS = st.text(ALNUM, min_size=43, max_size=43)
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
TOKEN = "T0kenForTests1234567890abcdefXYZ"
CORP_ID = "ww0123456789abcdef"
CRYPTO = WecomCrypto(TOKEN, KEY, CORP_ID)
AES_BYTES = base64.b64decode(KEY + "=")
# Text that can be UTF-8 encoded (no lone surrogates), and text that may not be.
TEXT_CHARS = st.characters(blacklist_categories=("Cs",))
TEXT = st.text(TEXT_CHARS)
ANY_TEXT = st.text()


def _xml_legal(ch: str) -> bool:
    o = ord(ch)
    return (ch in "\t\n\r" or 0x20 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or o >= 0x10000)


def _pkcs7_32(data: bytes) -> bytes:
    pad = 32 - len(data) % 32
    return data + bytes([pad]) * pad


def _aes_raw(plain: bytes) -> str:
    """Base64 of `plain` (a multiple of 16 bytes) AES-256-CBC encrypted under KEY: what decrypt sees."""
    cipher = AES.new(AES_BYTES, AES.MODE_CBC, iv=AES_BYTES[:16])
    return base64.b64encode(cipher.encrypt(plain)).decode()


# ============================================================== crypto

@examples(60)
@given(key=KEYS, receive_id=TEXT, msg=st.binary(max_size=300), prefix=st.binary(min_size=16, max_size=16))
def test_crypto_round_trip_arbitrary_bytes(key, receive_id, msg, prefix):
    box = WecomCrypto(TOKEN, key, receive_id)
    try:
        msg.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(EncryptError) as info:
            box.encrypt(msg, prefix)
        assert info.value.code == -40006
        return
    encrypted = box.encrypt(msg, prefix)
    raw = base64.b64decode(encrypted, validate=True)
    assert len(raw) % 32 == 0  # WeCom pads to 32-byte blocks
    assert box.decrypt(encrypted) == msg
    assert box.decrypt(encrypted.encode()) == msg  # bytes in, as from a body
    assert box.decrypt(encrypted.replace("+", " ")) == msg  # '+' decoded to ' ' by a query parser


@examples(40)
@given(key=KEYS, receive_id=TEXT, other=TEXT, msg=TEXT)
def test_crypto_round_trip_text_and_receive_id_check(key, receive_id, other, msg):
    encrypted = WecomCrypto(TOKEN, key, receive_id).encrypt(msg)
    assert WecomCrypto(TOKEN, key, receive_id).decrypt(encrypted) == msg.encode("utf-8")
    if other != receive_id:
        with pytest.raises(ReceiveIdError):
            WecomCrypto(TOKEN, key, other).decrypt(encrypted)


@examples(60)
@given(parts=st.lists(ANY_TEXT, min_size=4, max_size=4), perm=st.permutations(range(4)))
def test_signature_is_deterministic_and_order_free(parts, perm):
    try:
        first = signature(*parts)
    except CryptoError as exc:
        assert exc.code == -40003
        return
    assert first == signature(*parts)
    assert first == signature(*[parts[i] for i in perm])
    assert first == hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{40}", first)


@examples(80)
@given(ts=TEXT, nonce=TEXT, encrypt=TEXT, ts2=TEXT, nonce2=TEXT, encrypt2=TEXT,
       which=st.sampled_from(["ts", "nonce", "encrypt", "none"]))
def test_signature_sensitivity(ts, nonce, encrypt, ts2, nonce2, encrypt2, which):
    """A signature verifies exactly the values whose sorted concatenation it hashed."""
    sig = signature(TOKEN, ts, nonce, encrypt.replace(" ", "+"))
    new = {"ts": ts, "nonce": nonce, "encrypt": encrypt}
    new.update({"ts": {"ts": ts2}, "nonce": {"nonce": nonce2},
                "encrypt": {"encrypt": encrypt2}, "none": {}}[which])
    same = "".join(sorted([TOKEN, ts, nonce, encrypt.replace(" ", "+")])) == "".join(
        sorted([TOKEN, new["ts"], new["nonce"], new["encrypt"].replace(" ", "+")]))
    if same:
        CRYPTO.verify_signature(sig, new["ts"], new["nonce"], new["encrypt"])
    else:
        with pytest.raises(SignatureError):
            CRYPTO.verify_signature(sig, new["ts"], new["nonce"], new["encrypt"])
    # Any change to the signature itself is refused, upper-casing included.
    for i in range(0, 40, 7):
        flipped = sig[:i] + ("0" if sig[i] != "0" else "1") + sig[i + 1:]
        with pytest.raises(SignatureError):
            CRYPTO.verify_signature(flipped, ts, nonce, encrypt)
    if sig != sig.upper():
        with pytest.raises(SignatureError):
            CRYPTO.verify_signature(sig.upper(), ts, nonce, encrypt)


def _decrypt_inputs():
    b64_blocks = st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode())
    return st.one_of(
        ANY_TEXT, st.binary(), st.text(ALNUM + "+/= \n\r\t", max_size=120), b64_blocks,
        b64_blocks.map(str.encode), st.none(), st.integers(),
        st.binary(max_size=10).map(bytearray),
        # AES under the right key, so every later check (padding, msg_len, UTF-8, receive id) is reached.
        st.binary(min_size=1, max_size=12).map(lambda b: _aes_raw(b * 16)),
        st.tuples(st.binary(max_size=24), st.integers(0, 2 ** 32 - 1), st.binary(max_size=40),
                  st.integers(1, 40)).map(
            lambda t: _aes_raw(_pad16(t[0] + t[1].to_bytes(4, "big") + t[2], t[3]))),
    )


def _pad16(data: bytes, pad: int) -> bytes:
    """`data` with `pad` (1..40, sometimes bogus) bytes of value pad, then zeros to a multiple of 16."""
    data = data + bytes([pad % 256]) * pad
    return data + b"\0" * (-len(data) % 16) if len(data) % 16 else data


@examples(250)
@given(value=_decrypt_inputs())
@example(value="")
@example(value=_aes_raw(b"\x20" * 32))
@example(value=_aes_raw(b"\x00" * 16))
def test_decrypt_arbitrary_input_raises_only_crypto_error(value):
    try:
        msg = CRYPTO.decrypt(value)
    except CryptoError as exc:
        assert -40011 <= exc.code <= -40001
    else:
        assert isinstance(msg, bytes)
        msg.decode("utf-8")


@examples(150)
@given(msg=TEXT, index=st.integers(min_value=0), flip=st.integers(1, 255), b64_index=st.integers(0),
       b64_char=st.sampled_from(ALNUM + "+/= "))
def test_tampered_ciphertext_never_crashes(msg, index, flip, b64_index, b64_char):
    encrypted = CRYPTO.encrypt(msg)
    raw = bytearray(base64.b64decode(encrypted))
    raw[index % len(raw)] ^= flip
    mutated_b64 = list(encrypted)
    mutated_b64[b64_index % len(encrypted)] = b64_char
    for value in (base64.b64encode(bytes(raw)).decode(), "".join(mutated_b64)):
        try:
            out = CRYPTO.decrypt(value)
        except CryptoError:
            continue
        assert isinstance(out, bytes)  # rarely a tamper survives; it is then some other plaintext


_QUERY_VALUE = st.one_of(ANY_TEXT, st.text(ALNUM + "+/=% &", max_size=80), st.from_regex(r"[0-9a-f]{40}", fullmatch=True),
                         st.from_regex(r"[0-9]{1,12}", fullmatch=True), st.none(), st.binary(max_size=20))


@examples(150)
@given(sig=_QUERY_VALUE, ts=_QUERY_VALUE, nonce=_QUERY_VALUE, echostr=_QUERY_VALUE)
def test_verify_url_arbitrary_query_raises_only_crypto_error(sig, ts, nonce, echostr):
    try:
        out = CRYPTO.verify_url(sig, ts, nonce, echostr)
    except CryptoError as exc:
        assert -40011 <= exc.code <= -40001
    else:
        assert isinstance(out, bytes)


@examples(60)
@given(echo=TEXT, ts=st.from_regex(r"[0-9]{1,12}", fullmatch=True), nonce=st.text(ALNUM, min_size=1, max_size=16))
def test_verify_url_accepts_every_signed_echostr(echo, ts, nonce):
    echostr = CRYPTO.encrypt(echo)
    sig = signature(TOKEN, ts, nonce, echostr)
    assert CRYPTO.verify_url(sig, ts, nonce, echostr) == echo.encode()
    assert CRYPTO.verify_url(sig, ts, nonce, echostr.replace("+", " ")) == echo.encode()


@examples(100)
@given(token=st.one_of(ANY_TEXT, st.none(), st.integers()), key=st.one_of(ANY_TEXT, KEYS, st.none(), st.binary()),
       receive_id=st.one_of(ANY_TEXT, st.none(), st.binary()))
def test_constructor_arbitrary_settings_raise_only_crypto_error(token, key, receive_id):
    try:
        WecomCrypto(token, key, receive_id)
    except CryptoError:
        pass


@examples(80)
@given(reply=TEXT, ts=st.one_of(ANY_TEXT, st.from_regex(r"[0-9]{1,20}", fullmatch=True)),
       nonce=st.one_of(ANY_TEXT, st.text(ALNUM, min_size=1, max_size=64)))
def test_encrypt_reply_is_refused_or_an_envelope_that_decrypts(reply, ts, nonce):
    try:
        envelope = CRYPTO.encrypt_reply(reply, ts, nonce)
    except ReplyXmlError:
        assert not (re.fullmatch(r"[0-9]{1,20}", ts) and re.fullmatch(r"[A-Za-z0-9]{1,64}", nonce))
        return
    root = ET.fromstring(envelope)
    assert root.findtext("TimeStamp") == ts and root.findtext("Nonce") == nonce
    assert CRYPTO.decrypt_message(root.findtext("MsgSignature"), ts, nonce,
                                  envelopes.parse_xml(envelope).encrypt) == reply.encode()


# ============================================================== messages

_XML_CHARS = st.characters(blacklist_categories=("Cs",)).filter(_xml_legal)
_SPECIAL = st.sampled_from(["]]>", "]]", "]]]>", "<![CDATA[", "&", "&amp;", "<", ">", "\r\n", "\r", "\n",
                            "\t", "\x7f", "\x85", "\u2028", "\ufeff", "😀", "企业微信", "'", '"', " "])
LEAF_TEXT = st.lists(st.one_of(st.text(_XML_CHARS, max_size=12), _SPECIAL), max_size=5).map("".join)
TAGS = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,8}", fullmatch=True),
                 st.sampled_from(sorted(REPEATABLE) + ["MsgType", "Content", "Encrypt", "Event", "xml"]))
# A node is a leaf text, or a non-empty list of (tag, node) children.
NODE = st.recursive(LEAF_TEXT, lambda inner: st.lists(st.tuples(TAGS, inner), min_size=1, max_size=4),
                    max_leaves=14)
CHILDREN = st.lists(st.tuples(TAGS, NODE), max_size=6)


def _model(children):
    """What to_fields should give, from its docstring: leaves as str, repeats and REPEATABLE as lists."""
    groups = {}
    for tag, node in children:
        if tag == "PicList":
            groups.setdefault(tag, []).extend(
                _model_value(item) for _, item in (node if isinstance(node, list) else []))
        else:
            groups.setdefault(tag, []).append(_model_value(node))
    return {tag: vals if tag in REPEATABLE or len(vals) > 1 else vals[0] for tag, vals in groups.items()}


def _model_value(node):
    return node if isinstance(node, str) else _model(node)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _cdata(text: str) -> str:
    # CDATA cannot carry a CR (line ends are normalised): write those as character references.
    return "&#13;".join("<![CDATA[%s]]>" % piece.replace("]]>", "]]]]><![CDATA[>") if piece else ""
                        for piece in text.split("\r"))


def _serialise(children, rnd) -> str:
    out = []
    for tag, node in children:
        out.append(rnd.choice(["", " ", "\n", "\r\n\t  "]))
        attrs = rnd.choice(["", ' a="1"', " x='&lt;'"])
        if isinstance(node, str):
            if not node and rnd.random() < 0.3:
                out.append("<%s%s/>" % (tag, attrs))
                continue
            body = _cdata(node) if rnd.random() < 0.5 else _escape(node)
        else:
            body = _serialise(node, rnd) + rnd.choice(["", "\n", "  "])
        out.append("<%s%s>%s</%s>" % (tag, attrs, body, tag))
    return "".join(out)


def _document(children, rnd, bom=False) -> str:
    decl = rnd.choice(["", '<?xml version="1.0" encoding="UTF-8"?>\n', "<!-- c -->"])
    return ("\ufeff" if bom else "") + decl + "<xml>" + _serialise(children, rnd) + rnd.choice(["", "\n"]) + "</xml>"


def _xml_fragments():
    tokens = st.sampled_from(["<xml>", "</xml>", "<MsgType>", "</MsgType>", "<![CDATA[", "]]>", "<!DOCTYPE x>",
                              '<!ENTITY e "x">', "&e;", "&amp;", "&#0;", "&#x1F600;", "<?xml version='1.0'?>",
                              "<Encrypt>", "</Encrypt>", "<a>", "</a>", "<a/>", "<!--", "-->", "<PicList>",
                              "</PicList>", "<item>", "</item>", "text", "\x00", "\ud800", "\ufeff", "]]", "<",
                              ">", "&", '<?xml version="1.0" encoding="latin-1"?>', "<x:y xmlns:x='u'>"])
    return st.lists(st.one_of(tokens, st.text(max_size=6)), max_size=20).map("".join)


_ARBITRARY_XML = st.one_of(st.text(), st.binary(), _xml_fragments(), _xml_fragments().map(
    lambda s: s.encode("utf-8", "surrogatepass")))


@examples(300)
@given(data=_ARBITRARY_XML)
@example(data="<xml>" * 40 + "</xml>" * 40)
@example(data="<xml><MsgType>text</MsgType>" + "<a>" * 40 + "</a>" * 40 + "</xml>")
def test_parse_arbitrary_input_raises_only_message_error(data):
    for function in (messages.parse, envelopes.parse_xml, messages.to_fields):
        try:
            function(data)
        except MessageError:
            pass


def _defused_only(data):
    """parse_document as it was before its C parser fast path: defusedxml's parser for every document."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8").lstrip("\ufeff")
        root = DefusedElementTree.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException:
        return messages.ForbiddenXmlError
    except (ET.ParseError, ValueError, RecursionError):  # ExpatError and UnicodeError are ValueErrors
        return messages.MalformedXmlError
    return messages.MalformedXmlError if root.tag != "xml" else (text, ET.tostring(root))


@examples(400)
@given(data=st.one_of(_ARBITRARY_XML, _xml_fragments().map(lambda s: s.encode("utf-16-be", "surrogatepass")),
                      _xml_fragments().map(lambda s: s.encode("utf-16-le", "surrogatepass"))))
@example(data='<!DOCTYPE xml [<!ENTITY e "x">]><xml>&e;</xml>'.encode("utf-16-be"))
@example(data='<!DOCTYPE xml [<!ENTITY e "x">]><xml>&e;</xml>'.encode("utf-16-le"))
@example(data='<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x><xml/>')
@example(data="<xml><a><![CDATA[<!DOCTYPE x>]]></a></xml>")
@example(data=b"\xef\xbb\xbf\xef\xbb\xbf<xml/>")
def test_parse_document_agrees_with_defusedxml_alone(data):
    # The C parser takes the documents that cannot hold a DTD: same trees, same refusals.
    expected = _defused_only(data)
    try:
        text, root = messages.parse_document(data)
    except messages.MessageError as exc:
        assert type(exc) is expected
    else:
        assert (text, ET.tostring(root)) == expected


@examples(100)
@given(children=CHILDREN, rnd=st.randoms(use_true_random=False), as_bytes=st.booleans(), bom=st.booleans())
def test_to_fields_keeps_every_leaf_of_a_generated_document(children, rnd, as_bytes, bom):
    text = _document(children, rnd, bom=bom and as_bytes)
    doc = text.encode("utf-8") if as_bytes else text
    expected = _model(children)
    assert messages.to_fields(doc) == expected
    # The same through the stdlib parser: to_fields also takes a parsed Element.
    assert messages.to_fields(ET.fromstring(text.lstrip("\ufeff").encode("utf-8"))) == expected
    msgtype = expected.get("MsgType")
    if isinstance(msgtype, str) and msgtype:
        message = messages.parse(doc)
        assert message.fields == expected and message.msgtype == msgtype
        assert message.raw == (text.lstrip("\ufeff") if as_bytes else text)
    else:
        with pytest.raises(MessageError):
            messages.parse(doc)


def _newlines(text: str) -> str:
    # Reply XML carries text in CDATA, where an XML parser normalises CR and CRLF to LF.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _expected_reply(content: str, limit: int = 2048) -> str:
    kept = "".join(ch for ch in content if _xml_legal(ch))
    encoded = kept.encode("utf-8")[:limit]
    while True:  # drop a character cut in half by the byte limit
        try:
            kept = encoded.decode("utf-8")
            break
        except UnicodeDecodeError:
            encoded = encoded[:-1]
    return _newlines(kept)


@examples(150)
@given(content=st.one_of(ANY_TEXT, LEAF_TEXT, st.text(min_size=600, max_size=1500),
                         st.lists(st.sampled_from(["a", "é", "企", "😀", "]]>", "\r\n"]), min_size=500,
                                  max_size=1200).map("".join)),
       to_user=ANY_TEXT, from_user=ANY_TEXT)
@example(content="]]>" * 1000, to_user="u", from_user="c")
@example(content="企" * 683, to_user="u", from_user="c")  # 2049 bytes: the last character must go
def test_reply_text_parses_back_to_its_content(content, to_user, from_user):
    xml = replies.reply_text(to_user, from_user, content, create_time=1)
    message = messages.parse(xml)
    assert message.msgtype == "text"
    assert message.content == _expected_reply(content)
    assert len(message.content.encode("utf-8")) <= 2048
    assert message.to_user == _expected_reply(to_user, limit=10 ** 9)
    assert message.from_user == _expected_reply(from_user, limit=10 ** 9)
    assert message.create_time == 1


_CARD_KEYS = st.from_regex(r"[a-z][a-z0-9]{0,5}(_[a-z0-9]{1,5}){0,2}", fullmatch=True)
_CARD_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), LEAF_TEXT)
_CARD = st.recursive(_CARD_SCALARS, lambda inner: st.one_of(
    st.dictionaries(_CARD_KEYS, inner, max_size=4), st.lists(st.one_of(_CARD_SCALARS, st.dictionaries(
        _CARD_KEYS, _CARD_SCALARS, max_size=3)), max_size=3)), max_leaves=12)


@examples(80)
@given(card=st.dictionaries(st.one_of(_CARD_KEYS, ANY_TEXT), _CARD, max_size=5),
       card_type=st.one_of(st.just("text_notice"), LEAF_TEXT))
def test_reply_builders_give_xml_that_parses(card, card_type):
    card = {"card_type": card_type, **card}
    try:
        xml = replies.reply_update_template_card("u", "c", card, create_time=1)
    except ValueError:
        return
    assert messages.parse(xml).msgtype == "update_template_card"
    for builder, args in ((replies.reply_image, ("m",)), (replies.reply_voice, ("m",)),
                          (replies.reply_video, ("m", card_type, card_type)),
                          (replies.reply_update_button, (card_type,)),
                          (replies.reply_news, ([{"title": card_type or "t", "url": card_type}],))):
        assert messages.parse(builder("u", "c", *args, create_time=1)).to_user == "u"


@st.composite
def _message_children(draw):
    msgtype = draw(st.sampled_from(["text", "event", "image", "weird"]))
    leaves = [("MsgType", msgtype)]
    for tag, strategy in (("ToUserName", LEAF_TEXT), ("FromUserName", LEAF_TEXT), ("CreateTime", st.from_regex(
            r"[ \n]?[0-9]{1,12}[ \n]?", fullmatch=True)), ("MsgId", LEAF_TEXT), ("AgentID", LEAF_TEXT),
            ("Event", st.sampled_from(["click", "LOCATION", "sys_approval_change"])), ("EventKey", LEAF_TEXT),
            ("Content", LEAF_TEXT)):
        if draw(st.booleans()):
            leaves.append((tag, draw(strategy)))
    return leaves + draw(st.lists(st.tuples(TAGS.filter(lambda t: t not in dict(leaves)), NODE), max_size=3))


@examples(80)
@given(data=st.data(), rnd1=st.randoms(use_true_random=False), rnd2=st.randoms(use_true_random=False))
def test_dedup_key_is_stable_across_reserialisation_and_bounded(data, rnd1, rnd2):
    children = data.draw(_message_children())
    first = messages.parse(_document(children, rnd1).encode())
    second = messages.parse(_document(children, rnd2))
    key = messages.dedup_key(first)
    assert key == messages.dedup_key(second)
    assert 0 < len(key) <= messages.MAX_KEY_LENGTH
    if not first.is_event and first.msg_id:
        other = dict(children)
        other_children = [(t, n + "x" if t == "MsgId" else n) for t, n in children]
        assert other["MsgId"] == first.msg_id
        assert messages.dedup_key(messages.parse(_document(other_children, rnd1))) != key


@examples(60)
@given(msgtype=st.sampled_from(["text", "event", "image"]), agent=TEXT, user=st.text(TEXT_CHARS, max_size=400),
       msg_id=st.one_of(st.none(), st.text(TEXT_CHARS, max_size=400)), event_key=st.text(TEXT_CHARS, max_size=400),
       fields=st.dictionaries(st.sampled_from(["UserID", "Id", "ChatId", "TaskId", "X"]),
                              st.text(TEXT_CHARS, max_size=200)))
def test_dedup_key_is_bounded_for_long_fields(msgtype, agent, user, msg_id, event_key, fields):
    message = messages.Message(msgtype=msgtype, from_user=user, agent_id=agent, msg_id=msg_id,
                               event="click", event_key=event_key, fields=fields)
    key = messages.dedup_key(message)
    assert 0 < len(key) <= messages.MAX_KEY_LENGTH and key == messages.dedup_key(message)


@examples(30)
@given(encrypt=st.text(ALNUM + "+/=", min_size=1, max_size=60), before=CHILDREN, after=CHILDREN,
       pad=st.sampled_from(["", "\n", "\n  ", " \t"]), rnd=st.randoms(use_true_random=False))
def test_parse_xml_envelope_finds_encrypt_anywhere(encrypt, before, after, pad, rnd):
    before = [c for c in before if c[0] != "Encrypt"]
    after = [c for c in after if c[0] != "Encrypt"]
    body = "<xml>%s<Encrypt>%s</Encrypt>%s</xml>" % (
        _serialise(before, rnd), _cdata(pad + encrypt + pad) if rnd.random() < 0.5 else pad + encrypt + pad,
        _serialise(after, rnd))
    try:
        envelope = envelopes.parse_xml(body.encode())
    except MessageError:
        # Only hostile nesting (beyond MAX_DEPTH) may refuse a well-formed envelope.
        return
    assert envelope.encrypt == encrypt


# ============================================================== config and rules

@pytest.fixture(scope="module")
def conf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


def _load_text(directory: Path, text, environ=None):
    path = directory / "wecomd.conf"
    if isinstance(text, str):
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    else:
        path.write_bytes(text)
    return config.load(path, environ or {})


_SECTIONS = st.one_of(st.sampled_from(["server", "admin", "wecom", "rules", "app:main", "app:x-y", "rule:r",
                                       "rule:greet", "app:", "rule:", "DEFAULT", "\0none", "app:bad name"]),
                      st.text(max_size=8).map(lambda s: "app:" + s), st.text(max_size=8))
_OPTION_NAMES = st.one_of(st.sampled_from(sorted({o for s in config.SCHEMA.values() for o in s} | set(rules.OPTIONS))),
                          st.text(max_size=8))
_VALUES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["127.0.0.1:8080", "[::1]:0", "[::1", "1.2.3.4:\u00b2", "host:99999", "yes", "maybe", "nan",
                     "inf", "-1", "+5", "1e3", "4.5", "https://x", "http://[", "sqlite:///x.db", "mysql://x",
                     "any", "text contains 你好", "text matches (a", "text matches (?P<from_user>x)", "click K",
                     "event", "msgtype  ", "{from_user}", "{0}", "{1}", "{x.y}", "{", "}", "/bin/echo {content}",
                     "'unclosed", "{content} x", "scrypt$n=2,r=1,p=1$AAAA$" + "A" * 22, "a" * 43, "a" * 44,
                     "%(x)s", "; comment", "x ; y", "\\", "\t", "\x0c"]),
)


def _ini_line():
    return st.one_of(
        _SECTIONS.map(lambda s: "[%s]" % s),
        st.tuples(_OPTION_NAMES, st.sampled_from([" = ", "=", ": ", " "]), _VALUES).map("".join),
        _VALUES.map(lambda v: "    " + v),  # continuation
        st.sampled_from(["", "# comment", "; comment", "[", "]", "=", "= x", "[server", "\ufeff[server]"]),
        st.text(max_size=15),
    )


_INI = st.lists(_ini_line(), max_size=25).map("\n".join)
_ENV_NAMES = st.one_of(
    st.sampled_from(sorted({config.env_name(s, o) for s in ["server", "admin", "wecom", "rules", "app:main", "app:x-y",
                                                                 "app:x_y"] for o in config.SCHEMA[
                                                                 "app:NAME" if s.startswith("app:") else s]})
                    + ["WECOMD_CONFIG", "WECOMD_", "WECOMD_APP_NEW_TOKEN", "WECOMD_RULE_R_WHEN"]),
    st.text(max_size=12).map(lambda s: "WECOMD_" + s), st.text(max_size=8))
_ENV = st.dictionaries(_ENV_NAMES, _VALUES, max_size=6)
VALID_APP = ("[app:main]\ncorp_id = ww1\nagent_id = 1\ntoken = %s\nencoding_aes_key = %s\n" % (TOKEN[:32], KEY))


def _known_rules_bug(exc: BaseException) -> bool:
    """Crashes already pinned by test_regression_rules_* below (xfail until wecomd/automation/rules.py is fixed).

    Remove each clause together with the matching xfail mark once the bug is fixed.
    """
    names, tb = set(), exc.__traceback__
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return False  # all of them are fixed; kept as the place to pin the next one


def _only_config_error(call):
    try:
        return call()
    except config.ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    except Exception as exc:  # a known bug is skipped, anything else fails
        if not _known_rules_bug(exc):
            raise
        assume(False)


@examples(150)
@given(text=st.one_of(_INI, st.text(max_size=200), st.binary(max_size=200),
                      _INI.map(lambda t: VALID_APP + t)), environ=st.one_of(st.just({}), _ENV))
@example(text="[rule:r]\nwhen = any\nreply = x\n[rule:r]\n", environ={})
@example(text=b"\xff\xfe[server]", environ={})
def test_config_load_arbitrary_text_raises_only_config_error(conf_dir, text, environ):
    _only_config_error(lambda: _load_text(conf_dir, text, environ))


@examples(150)
@given(environ=_ENV)
def test_config_load_arbitrary_environment_raises_only_config_error(conf_dir, environ):
    loaded = _only_config_error(lambda: _load_text(conf_dir, VALID_APP, environ))
    if loaded is not None:
        for (section, option), source in loaded.sources.items():
            name = config.env_name(section, option)
            assert (source == "environment " + name) == (name in environ)


# --- render -> load round trip

_LINE_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")
_LINE = st.lists(st.one_of(st.text(_LINE_CHARS, max_size=8), st.sampled_from(["#", "[x]", "=", "%", "{", "\x0c", "\x1c",
                                                                              "\x85", "\u2028", "\\"])),
                 max_size=4).map("".join).map(str.strip)
FREE_TEXT = st.one_of(st.just(""), st.lists(_LINE, min_size=1, max_size=3).map("\n".join).filter(
    lambda v: v == v.strip()))
_NO_SPACE = st.text(st.characters(blacklist_categories=("Cs", "Z", "Cc")), min_size=1, max_size=20).filter(
    lambda v: re.fullmatch(r"\S{1,64}", v) and v == v.strip())
_HOSTS = st.sampled_from(["127.0.0.1", "localhost", "0.0.0.0", "wecomd.example.com", "[::1]", "[2001:db8::1]"])
CHEAP_HASH = passwords.hash_password("pw", n=2, r=1, p=1)


@st.composite
def _config_values(draw):
    values = {
        "server": {"listen": "%s:%d" % (draw(_HOSTS), draw(st.integers(0, 65535))),
                   "max_body": str(draw(st.integers(1, 10 ** 12))),
                   "timestamp_window": draw(st.sampled_from(["0", "300", "+7", "0012"])),
                   "xheaders": draw(st.sampled_from(["yes", "No", "TRUE", "off", "1", "0", "on"])),
                   "log_level": draw(st.sampled_from(["debug", "info", "warning", "error"])),
                   "database": draw(st.sampled_from(["wecomd.db", "/var/lib/wecomd/x.db", "sqlite:///rel.db",
                                                     "postgresql://u:p@h/db"]))},
        "admin": {"username": draw(FREE_TEXT.filter(bool)), "password_hash": draw(st.sampled_from(["", CHEAP_HASH])),
                  "cookie_secret": draw(FREE_TEXT), "api_token": draw(FREE_TEXT)},
        "wecom": {"api_base": draw(st.sampled_from(["https://qyapi.weixin.qq.com", "http://127.0.0.1:9/x"]))},
        "rules": {"takeover_minutes": str(draw(st.integers(0, 10 ** 6))),
                  "passive_budget": draw(st.sampled_from(["0", "3.5", "4.5", "1e-3"])),
                  "max_commands": str(draw(st.integers(1, 64))), "output_limit": str(draw(st.integers(1, 10 ** 9)))},
    }
    for name in draw(st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), min_size=1, max_size=3,
                              unique_by=str.lower)):
        values["app:" + name] = {"corp_id": draw(_NO_SPACE), "agent_id": str(draw(st.integers(0, 10 ** 9))),
                                 "token": draw(st.text(ALNUM, min_size=1, max_size=32)),
                                 "encoding_aes_key": draw(KEYS), "secret": draw(FREE_TEXT),
                                 "reply": draw(FREE_TEXT)}
    for i in range(draw(st.integers(0, 2))):
        values["rule:r%d" % i] = {"when": draw(st.sampled_from(["any", "text contains 你好", "click KEY",
                                                                "text matches ^(\\w+)$", "event subscribe"])),
                                  "reply": draw(FREE_TEXT.filter(lambda v: v and "{" not in v and "}" not in v))}
    return values


def _is_comment_trap(value: str) -> bool:
    return bool(re.search(r"(^|\s);", value))


def _known_render_bug(values) -> bool:
    """Values that hit the round-trip bugs pinned by test_regression_render_* / _config_* below.

    Remove each clause together with the matching xfail mark once config.py is fixed.
    """
    return False  # all of them are fixed; kept as the place to pin the next one


@examples(60)
@given(values=_config_values())
@example(values={"app:main": {"corp_id": "ww1", "agent_id": "1", "token": "abc", "encoding_aes_key": KEY,
                              "reply": "line one\n\nline three", "secret": "", }})
def test_render_loads_back_equal(conf_dir, values):
    assume(not _known_render_bug(values))
    try:
        text = config.render(values)
    except ValueError:  # refused: a comment trap, a carriage return, or a line starting with '#'
        assert any(_is_comment_trap(v) or "\r" in v or re.search(r"\n\s*#", v)
                   for options in values.values() for v in options.values())
        return
    loaded = _load_text(conf_dir, text)
    for section, options in values.items():
        if section.startswith("rule:"):
            assert loaded.rules[section[5:]] == options
            continue
        kind = "app:NAME" if section.startswith("app:") else section
        target = loaded.apps[section[4:]] if kind == "app:NAME" else getattr(loaded, section if section != "rules"
                                                                             else "rules_settings")
        for option, text_value in options.items():
            expected = config.SCHEMA[kind][option].convert(text_value)
            if option == "listen":
                assert (loaded.server.listen_host, loaded.server.listen_port) == expected
            elif option in ("database",):
                assert loaded.server.database.endswith(expected.split("///")[-1].lstrip("/"))
            else:
                assert getattr(target, option) == expected, (section, option)


# --- rules

_WHEN = st.one_of(st.sampled_from(["any", "any x", "text equals hi", "text contains", "text matches (x)(?P<n>y)",
                                   "text matches [", "text matches (?P<from_user>x)", "click", "click K E Y",
                                   "event a b", "msgtype text", "nonsense", "TEXT Contains x"]),
                  st.tuples(st.sampled_from(["text matches ", "text equals ", "click ", "event ", ""]),
                            st.text(max_size=15)).map("".join))
_TEMPLATE = st.one_of(st.text(max_size=20), st.lists(st.sampled_from(
    ["{", "}", "{{", "}}", "{from_user}", "{content!r}", "{0}", "{1}", "{2}", "{n}", "{x.y}", "{a[0]}", "{:>3}",
     "{unknown}", "'", '"', "\\", " ", "; rm -rf /", "$(id)", "/bin/echo", "\0"]), max_size=8).map("".join))
_RULE_OPTIONS = st.dictionaries(
    st.one_of(st.sampled_from(rules.OPTIONS), st.text(max_size=6)),
    st.one_of(_TEMPLATE, _WHEN, st.sampled_from(["yes", "no", "-3", "1e400", "nan", "0", "https://x/y",
                                                 "http://", "ftp://x", "main", "other"])), max_size=6)


@examples(250)
@given(raw=st.dictionaries(st.text(max_size=6), _RULE_OPTIONS, max_size=3),
       apps=st.lists(st.sampled_from(["main", "other", ""]), max_size=2))
def test_rules_problems_never_raise(raw, apps):
    try:
        found = rules.problems(raw, apps)
    except Exception as exc:
        if not _known_rules_bug(exc):
            raise
        assume(False)
    assert all(isinstance(p, str) for p in found)
    try:
        compiled = rules.compile_rules(raw)
    except rules.RuleError as exc:
        assert exc.problems
        return
    assert not [p for p in found if " app: " not in p]  # compile only skips the app check
    message = messages.Message(msgtype="text", content="x; rm -rf / $(id)", from_user="u\0v")
    for rule in compiled:
        match = rules.Match(rule, groups=("g1", "g2"), named={"n": "N"})
        fields = rules.template_fields(match, "main", message)
        if rule.reply:
            assert isinstance(rules.render(rule.reply, fields), str)
        if rule.run:
            argv = rules.command_argv(rule, fields)  # no field value here starts with "-"
            inserted = len(argv) - len(shlex.split(rule.run))  # end_of_options: "--" before the first field
            assert inserted in ((0, 1) if rule.end_of_options else (0,)) and not any("\0" in a for a in argv)


@examples(200)
@given(template=_TEMPLATE, fields=st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=4))
def test_rules_render_raises_only_rule_error(template, fields):
    try:
        out = rules.render(template, fields)
    except rules.RuleError:
        return
    assert isinstance(out, str)


@examples(100)
@given(run=st.lists(st.sampled_from(["{content}", "{from_user}", "-x", "'{content} b'", "a{content}b", '"{{x}}"']),
                    max_size=5).map(lambda words: " ".join(["/bin/echo"] + words)),
       content=ANY_TEXT, user=ANY_TEXT)
def test_command_argv_keeps_each_field_in_one_argument(run, content, user):
    rule = rules.compile_rules({"r": {"when": "any", "run": run}})[0]
    message = messages.Message(msgtype="text", content=content, from_user=user)
    words = shlex.split(run)

    def filled(word):
        return word.replace("{content}", content).replace("{from_user}", user).replace("{{x}}", "{x}").replace("\0", "")
    try:
        argv = rules.command_argv(rule, rules.template_fields(rules.Match(rule), "main", message))
    except rules.CommandRefused as exc:  # a message's text would start an argument with "-"
        word = words[exc.position]
        assert filled(word).startswith("-") and word.startswith("{")
        return
    assert len(argv) == len(words)
    for word, arg in zip(words, argv):
        assert arg == filled(word)


# ============================================================== the fuzz targets on their seed corpora

def _fuzz_target(name):
    spec = importlib.util.spec_from_file_location("_fuzz_" + name, HERE / "fuzz" / ("fuzz_%s.py" % name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["crypto", "messages", "config"])
def test_fuzz_targets_run_their_seed_corpus(name):
    """The atheris targets stay runnable without atheris: each seed goes through TestOneInput once."""
    module = _fuzz_target(name)
    seeds = sorted((HERE / "fuzz" / "corpus" / name).iterdir())
    assert seeds
    for seed in seeds:
        module.TestOneInput(seed.read_bytes())


# ============================================================== regressions found by fuzzing

RULES_BUGS = "fixed: wecomd/automation/rules.py let a non-RuleError escape from problems()/compile_rules(), so config.load crashed"


def test_regression_rules_regex_repeat_overflow(conf_dir):
    found = _only_problems(conf_dir, "[rule:r]\nwhen = text matches a{99999999999}\nreply = x\n")
    assert any("[rule:r] when: bad regular expression" in p for p in found)


def test_regression_rules_regex_deep_nesting(conf_dir):
    found = _only_problems(conf_dir, "[rule:r]\nwhen = text matches %s%s\nreply = x\n" % ("(" * 1200, ")" * 1200))
    assert any("[rule:r] when:" in p for p in found)


def test_regression_rules_webhook_bad_ipv6_url(conf_dir):
    found = _only_problems(conf_dir, "[rule:r]\nwhen = any\nwebhook = http://[::1\n")
    assert any("[rule:r] webhook: must be an http:// or https:// URL" in p for p in found)


def test_regression_rules_webhook_bracketed_host_not_an_ip(conf_dir):
    # Found by fuzz_config.py (a crossover of two seeds): `[...]` in the netloc must be an IP address.
    found = _only_problems(conf_dir, "[rule:r]\nwhen = any\nwebhook = http://[sokerve = r]/x\n")
    assert any("[rule:r] webhook: must be an http:// or https:// URL" in p for p in found)


def test_regression_rules_template_group_number_too_long(conf_dir):
    found = _only_problems(conf_dir, "[rule:r]\nwhen = text matches (x)\nreply = {%s}\n" % ("1" * 5000))
    assert any("[rule:r] reply:" in p for p in found)


CONFIG_BUGS = "fixed: wecomd/config.py render() output did not load back to the values given"


def _app_values(reply):
    return {"app:main": {"corp_id": "ww1", "agent_id": "1", "token": "abc", "encoding_aes_key": KEY,
                         "reply": reply}}


def test_regression_render_keeps_a_line_that_starts_with_hash(conf_dir):
    reply = "收到\n# 号码请发给客服"
    try:
        text = config.render(_app_values(reply))
    except ValueError:
        return  # refusing the value is a fix too
    assert _load_text(conf_dir, text).apps["main"].reply == reply


def test_regression_render_carriage_return_in_value(conf_dir):
    reply = "a\rb"
    try:
        text = config.render(_app_values(reply))
    except ValueError:
        return  # refusing the value is a fix too
    assert _load_text(conf_dir, text).apps["main"].reply == reply


def test_regression_config_form_feed_in_value_is_not_a_duplicate(conf_dir):
    loaded = _load_text(conf_dir, VALID_APP + "reply = a\x0ctoken = x\n")
    assert loaded.apps["main"].reply == "a\x0ctoken = x"


def _only_problems(conf_dir, text):
    with pytest.raises(config.ConfigError) as info:
        _load_text(conf_dir, VALID_APP + text)
    return info.value.problems
