#!/usr/bin/env python3
"""Coverage-guided fuzz target (atheris) for wecomd.wecom.messages, envelopes and replies (XML in and out).

    python tests/fuzz/fuzz_messages.py -max_total_time=60 /tmp/fuzz-messages tests/fuzz/corpus/messages
    python tests/fuzz/fuzz_messages.py --replay [DIR_OR_FILE ...]     # one pass, no atheris needed

The first byte of an input picks the mode ('a' = 0, 'b' = 1, ...); the rest is the payload. Any
exception other than MessageError from parsing, and any failed assertion, is a crash.
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _driver  # noqa: E402  (the shared atheris/replay driver beside this file)

atheris = _driver.atheris

if __name__ == "__main__" and atheris is not None and "--replay" not in sys.argv:
    with atheris.instrument_imports(include=["wecomd", "defusedxml"]):
        from wecomd.wecom import envelopes, messages, replies
else:
    from wecomd.wecom import envelopes, messages, replies

import defusedxml  # noqa: E402
from defusedxml import ElementTree as DefusedElementTree  # noqa: E402


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _leaves(value, out):
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _leaves(item, out)
    else:
        for item in value:
            _leaves(item, out)
    return out


def _check_message(doc: bytes) -> None:
    try:
        message = messages.parse(doc)
    except messages.MessageError:
        return
    assert message.msgtype and isinstance(message.msgtype, str)
    # Differential: the stdlib parser (no defusing) must see the same tree in an accepted document.
    root = ET.fromstring(message.raw)  # the decoded text: wecomd reads bytes as UTF-8 whatever they declare
    assert messages.to_fields(root) == message.fields
    if "PicList" not in message.raw:  # PicList blocks are merged, so leaves are only comparable without them
        expected = sorted(el.text or "" for el in root.iter() if el is not root and len(el) == 0)
        assert sorted(_leaves(message.fields, [])) == expected
    key = messages.dedup_key(message)
    assert 0 < len(key) <= messages.MAX_KEY_LENGTH
    assert key == messages.dedup_key(messages.parse(doc))


def _parse_only(function, value) -> None:
    try:
        function(value)
    except messages.MessageError:
        pass


def mode_parse_bytes(payload: bytes) -> None:
    _parse_only(messages.parse, payload)
    _parse_only(messages.to_fields, payload)
    _check_message(payload)


def mode_parse_text(payload: bytes) -> None:
    _parse_only(messages.parse, _text(payload))


def mode_envelope(payload: bytes) -> None:
    try:
        envelope = envelopes.parse_xml(payload)
    except messages.MessageError:
        return
    assert envelope.encrypt and envelope.encrypt == envelope.encrypt.strip()


def mode_wrapped(payload: bytes) -> None:
    _check_message(b"<xml><MsgType>text</MsgType>" + payload + b"</xml>")


def mode_wrapped_event(payload: bytes) -> None:
    _check_message(b"<xml><MsgType>event</MsgType><FromUserName>u</FromUserName>" + payload + b"</xml>")


def _expected_reply(content: str) -> str:
    kept = "".join(ch for ch in content if ch in "\t\n\r" or 0x20 <= ord(ch) <= 0xD7FF
                   or 0xE000 <= ord(ch) <= 0xFFFD or ord(ch) >= 0x10000)
    encoded = kept.encode("utf-8")[:2048]
    while True:
        try:
            kept = encoded.decode("utf-8")
            break
        except UnicodeDecodeError:
            encoded = encoded[:-1]
    return kept.replace("\r\n", "\n").replace("\r", "\n")  # CDATA: the parser normalises line ends


def mode_reply_text(payload: bytes) -> None:
    content = _text(payload)
    message = messages.parse(replies.reply_text("u", "c", content, create_time=1))
    assert message.content == _expected_reply(content), (message.content, content)


def mode_template_card(payload: bytes) -> None:
    try:
        card = json.loads(payload)
    except (ValueError, RecursionError):
        return
    try:
        xml = replies.reply_update_template_card("u", "c", card, create_time=1)
    except ValueError:
        return
    assert messages.parse(xml).msgtype == "update_template_card"


def _defused_only(data):
    """parse_document as it was before its C parser fast path: defusedxml's parser for every document."""
    try:
        text = data if isinstance(data, str) else data.decode("utf-8").lstrip("\ufeff")
        root = DefusedElementTree.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException:
        return messages.ForbiddenXmlError
    except (ET.ParseError, ValueError, RecursionError):
        return messages.MalformedXmlError
    return messages.MalformedXmlError if root.tag != "xml" else (text, ET.tostring(root))


def mode_parse_document(payload: bytes) -> None:
    # The C parser takes the documents that cannot hold a DTD: same trees and refusals as defusedxml's.
    for data in (payload, _text(payload)):
        expected = _defused_only(data)
        try:
            text, root = messages.parse_document(data)
        except messages.MessageError as exc:
            assert type(exc) is expected, (data, exc, expected)
        else:
            assert (text, ET.tostring(root)) == expected, data


MODES = [mode_parse_bytes, mode_parse_text, mode_envelope, mode_wrapped, mode_wrapped_event,
         mode_reply_text, mode_template_card, mode_parse_document]


TestOneInput = _driver.by_first_byte(MODES)


def main() -> int:
    return _driver.main(TestOneInput, __file__)


if __name__ == "__main__":
    sys.exit(main())
