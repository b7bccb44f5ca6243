"""The 智能机器人 (AI bot) in API mode: its JSON plaintexts as Messages, and the JSON it answers with.

Facts: wecom-aibot.md. The signature and AES are the app callbacks' (crypto.WecomCrypto with the
receive-id "": an internal bot's plaintext ends with nothing); the body is JSON {"encrypt": ...}
(envelopes.parse_json), the plaintext JSON, and a passive reply the encrypted JSON of
`reply_envelope`. A user message is answered with a stream: the first frame names a new stream id,
and WeCom then polls that id ("stream" refreshes) until a frame says finish; every frame carries the
whole answer so far, which replaces the bubble.
"""
from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Iterable, Mapping, Optional

from wecomd.wecom.messages import MalformedXmlError, Message, MessageError

MAX_STREAM_BYTES = 20480  # a frame's content, UTF-8
MAX_IMAGES, MAX_IMAGE_BYTES = 10, 10 * 2**20  # only in the finish frame
MAX_FEEDBACK_ID = 256
MAX_PLAINTEXT = 1 << 20  # a bot message is a few KB; anything this big is not WeCom's
MAX_JSON_DEPTH = 32


class MalformedBotMessage(MalformedXmlError):
    """A bot plaintext that is not a JSON object with a msgtype (a MessageError: answered 400)."""


def _depth(value: Any, limit: int) -> int:
    stack, deepest = [(value, 1)], 1
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def load_json(body: Any, what: str) -> dict:
    """A JSON object from bytes or text, or MalformedBotMessage: not JSON, not an object, too big
    or too deeply nested."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = bytes(body)
        if len(body) > MAX_PLAINTEXT:
            raise MalformedBotMessage("%s is over %d bytes" % (what, MAX_PLAINTEXT))
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedBotMessage("%s is not UTF-8" % what)
    try:
        data = json.loads(body)
    except (TypeError, ValueError, RecursionError):
        raise MalformedBotMessage("%s is not JSON" % what)
    if not isinstance(data, dict):
        raise MalformedBotMessage("%s is not a JSON object" % what)
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise MalformedBotMessage("%s nests deeper than %d levels" % (what, MAX_JSON_DEPTH))
    return data


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _get(data: Mapping, *path: str) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, Mapping) else None
    return data


def _content(data: dict, msgtype: str) -> Optional[str]:
    """The readable text of a message: text and voice (speech-to-text) as sent, mixed as its texts."""
    if msgtype in ("text", "voice"):
        return _text(_get(data, msgtype, "content"))
    if msgtype == "mixed":
        items = _get(data, "mixed", "msg_item")
        texts = [_text(_get(item, "text", "content")) for item in items or () if isinstance(item, dict)]
        return "\n".join(t for t in texts if t) or None
    return None


def parse(plain: Any) -> Message:
    """A decrypted bot callback as a Message: `fields` is the whole JSON, kept as sent (unknown
    types included); msgid is the message id (and the dedup key's); a group chat's conversation is
    its chatid, with the sender in from_user; an event's type is `event`."""
    data = load_json(plain, "the bot message")
    msgtype = _text(data.get("msgtype"))
    if not msgtype:
        raise MalformedBotMessage("the bot message has no msgtype")
    group = data.get("chattype") == "group" and _text(data.get("chatid"))
    event = _text(_get(data, "event", "eventtype")) if msgtype == "event" else None
    event_key = None
    if event == "template_card_event":
        event_key = _text(_get(data, "event", "template_card_event", "event_key"))
    elif msgtype == "stream":
        event_key = _text(_get(data, "stream", "id"))
    create_time = _get(data, "create_time") or _get(data, "event", "create_time")
    raw = plain.decode("utf-8") if isinstance(plain, (bytes, bytearray)) else str(plain)
    return Message(
        msgtype=msgtype, from_user=_text(_get(data, "from", "userid")), to_user=_text(data.get("aibotid")),
        agent_id=_text(data.get("aibotid")), msg_id=_text(data.get("msgid")), event=event, event_key=event_key,
        create_time=create_time if isinstance(create_time, int) and not isinstance(create_time, bool) else None,
        content=_content(data, msgtype), fields=data, raw=raw, conversation=group or None, channel="bot")


def stream_id(message: Message) -> Optional[str]:
    """The stream a refresh poll asks about ("stream" messages only)."""
    return message.event_key if message.msgtype == "stream" else None


def card_task_id(message: Message) -> Optional[str]:
    """The task_id of the card a template_card_event is about (an update must carry it)."""
    return _text(_get(message.fields, "event", "template_card_event", "task_id"))


def response_url(message: Message) -> Optional[str]:
    return response_url_of(message.fields)


def response_url_of(fields: Mapping) -> Optional[str]:
    """The response_url of a stored bot message's fields (never sent with refresh polls)."""
    return _text(fields.get("response_url")) if isinstance(fields, Mapping) else None


def media_url(fields: Mapping) -> Optional[str]:
    """The URL of a bot message's image or file (the first image of a mixed message), or None.
    WeCom's URL lives 5 minutes and serves the bytes AES-encrypted (media_decryptor)."""
    if not isinstance(fields, Mapping):
        return None
    msgtype = fields.get("msgtype")
    if msgtype in ("image", "file"):
        return _text(_get(fields, msgtype, "url"))
    if msgtype == "mixed":
        for item in _get(fields, "mixed", "msg_item") or ():
            if isinstance(item, Mapping) and item.get("msgtype") == "image" and _text(_get(item, "image", "url")):
                return _text(_get(item, "image", "url"))
    return None


class MediaDecryptor:
    """Decrypts a bot's media as it arrives: AES-256-CBC with the bot's EncodingAESKey, IV its first
    16 bytes, PKCS#7 padding to a multiple of 32 (wecom-aibot.md §2). Feed chunks; `finish()` gives the
    rest without the padding, or ValueError when the padding is not valid."""

    def __init__(self, encoding_aes_key: str) -> None:
        from Crypto.Cipher import AES

        key = base64.b64decode(encoding_aes_key + "=")
        self._cipher = AES.new(key, AES.MODE_CBC, iv=key[:16])
        self._pending = b""  # ciphertext not yet a whole block
        self._held = b""  # the last decrypted 32 bytes: they may be padding

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        whole = len(data) - len(data) % 16
        self._pending = data[whole:]
        plain = self._held + self._cipher.decrypt(data[:whole]) if whole else self._held
        self._held = plain[-32:]
        return plain[:-32]

    def finish(self) -> bytes:
        if self._pending or not self._held:
            raise ValueError("the encrypted media is not a whole number of AES blocks")
        pad = self._held[-1]
        if not 1 <= pad <= 32 or self._held[-pad:] != bytes([pad]) * pad:
            raise ValueError("the decrypted media has no valid PKCS#7 padding: is it this bot's key?")
        return self._held[:-pad]


# ---------------------------------------------------------------- answers

def cut(text: str, limit: int = MAX_STREAM_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes on a character boundary."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


def image_item(data: bytes) -> dict:
    """One image of a finish frame: base64 and the md5 of the raw bytes. ValueError past 10 MB or
    when it is not a JPG or PNG."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError("an image of a stream may be at most 10 MB, not %d bytes" % len(data))
    if not (data.startswith(b"\xff\xd8\xff") or data.startswith(b"\x89PNG\r\n\x1a\n")):
        raise ValueError("an image of a stream must be a JPG or PNG")
    return {"msgtype": "image", "image": {"base64": base64.b64encode(data).decode("ascii"),
                                          "md5": hashlib.md5(data).hexdigest()}}


def stream_frame(stream: str, content: str, finish: bool, images: Iterable[bytes] = (),
                 feedback_id: Optional[str] = None) -> dict:
    """A stream reply: the whole `content` so far (cut to 20,480 bytes), images only when `finish`
    (at most 10), a feedback id only on the first frame (the caller's business)."""
    body: dict = {"id": stream, "finish": bool(finish), "content": cut(content)}
    images = list(images)
    if images:
        if not finish:
            raise ValueError("images go only in the finish frame")
        if len(images) > MAX_IMAGES:
            raise ValueError("a stream may carry at most %d images" % MAX_IMAGES)
        body["msg_item"] = [image_item(data) for data in images]
    if feedback_id:
        if len(feedback_id.encode("utf-8")) > MAX_FEEDBACK_ID:
            raise ValueError("a feedback id is at most %d bytes" % MAX_FEEDBACK_ID)
        body["feedback"] = {"id": feedback_id}
    return {"msgtype": "stream", "stream": body}


def text_reply(content: str) -> dict:
    """The plain text answer, allowed only to enter_chat (wecom-aibot.md §3)."""
    return {"msgtype": "text", "text": {"content": cut(content)}}


def markdown_post(content: str, feedback_id: Optional[str] = None) -> dict:
    """The body POSTed once to a message's response_url."""
    body: dict = {"content": cut(content)}
    if feedback_id:
        body["feedback"] = {"id": feedback_id}
    return {"msgtype": "markdown", "markdown": body}


def dumps(frame: Mapping) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def reply_envelope(crypto: Any, frame: Mapping, timestamp: str, nonce: str) -> str:
    """The HTTP body of a passive reply: the frame encrypted (crypto.WecomCrypto.encrypt_json_reply)
    with the request's own timestamp and nonce (WeCom requires the nonce)."""
    return crypto.encrypt_json_reply(dumps(frame), timestamp, nonce)


__all__ = ["MessageError", "MalformedBotMessage", "parse", "stream_frame", "reply_envelope", "load_json"]
