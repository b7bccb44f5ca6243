"""XML -> Message: the normalised record of one callback, its envelope and its dedup key.

Passive reply XML is built in wecomd.wecom.replies."""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union
from xml.etree import ElementTree
from xml.parsers import expat

import defusedxml
from defusedxml import ElementTree as DefusedElementTree

logger = logging.getLogger(__name__)

XmlInput = Union[bytes, bytearray, memoryview, str]

# Names WeCom may repeat; they always become lists, even when sent once (protocol §6, §9.8).
# PicList is special: sibling <PicList><item/></PicList> blocks merge into one list of items.
REPEATABLE = frozenset((
    "item", "Item", "SelectedItem", "OptionId", "ApprovalNode", "NotifyNode", "SpRecord",
    "Details", "Notifyer", "Comments", "PicList",
))
MAX_DEPTH = 32  # WeCom nests about 7 levels; anything deeper is hostile, not a callback.

# Event ids that tell apart events sharing sender and second (protocol §4: WxJava's list + ours).
EVENT_ID_PATHS = (
    ("ApprovalInfo", "SpNo"), ("ApprovalInfo", "ThirdNo"), ("UserID",), ("NewUserID",),
    ("ChangeType",), ("TagId",), ("Id",), ("ChatId",), ("ExternalUserID",), ("TaskId",),
    ("BatchJob", "JobId"), ("ResponseCode",), ("ScheduleId",), ("CalId",),
)
MAX_KEY_LENGTH = 255

# CreateTime is the sender's clock and is kept as sent, negative or far in the future included (the
# dashboard flags those "time invalid"); 18 digits always fit a 64-bit column. Anything else is
# None, and the text stays in `fields` and the raw XML.
_CREATE_TIME = re.compile(r"\s*(-?[0-9]{1,18})\s*\Z")


class MessageError(ValueError):
    """An inbound XML document that cannot become a Message or Envelope."""


class ForbiddenXmlError(MessageError):
    """The XML uses DOCTYPE, entity declarations or external references: refused unexpanded."""


class MalformedXmlError(MessageError):
    """The XML is not well-formed, not an <xml> document, or lacks a required element."""


class MissingEncryptError(MessageError):
    """A callback envelope without a usable <Encrypt> element."""


@dataclass
class Envelope:
    """The outer, still encrypted POST body of a callback (protocol §4)."""

    encrypt: str
    to_user: Optional[str]
    agent_id: Optional[str]


@dataclass
class Message:
    """One decrypted WeCom message or event, normalised.

    `fields` keeps every XML element of the plaintext (nested elements as dicts,
    repeated ones as lists); the other attributes are the columns the store indexes.
    """

    msgtype: str
    from_user: Optional[str] = None
    to_user: Optional[str] = None
    agent_id: Optional[str] = None
    create_time: Optional[int] = None
    msg_id: Optional[str] = None
    event: Optional[str] = None
    event_key: Optional[str] = None
    content: Optional[str] = None
    fields: dict[str, Any] = field(default_factory=dict)
    raw: str = ""

    @property
    def is_event(self) -> bool:
        """True for MsgType `event` (no MsgId; deduplicated by its ids instead)."""
        return self.msgtype == "event"


# ---------------------------------------------------------------- parsing

def _decode(xml: XmlInput) -> str:
    if isinstance(xml, str):
        return xml
    if not isinstance(xml, (bytes, bytearray, memoryview)):
        raise TypeError("XML must be bytes or str, not %s" % type(xml).__name__)
    try:
        return bytes(xml).decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise MalformedXmlError("XML is not valid UTF-8: %s" % exc) from None


def _parse_root(xml: XmlInput) -> tuple[str, ElementTree.Element]:
    """Parse with DTDs, entities and external references refused; return (text, root)."""
    text = _decode(xml)
    try:
        root = DefusedElementTree.fromstring(
            text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        raise ForbiddenXmlError("XML uses a forbidden construct: %s" % exc) from None
    except (ElementTree.ParseError, expat.ExpatError, ValueError, RecursionError) as exc:
        raise MalformedXmlError("XML is not well-formed: %s" % exc) from None
    if root.tag != "xml":
        raise MalformedXmlError("root element is <%s>, expected <xml>" % root.tag)
    return text, root


def _value(element: ElementTree.Element, depth: int) -> Any:
    """A leaf's text verbatim ("" when empty), or the children as a dict."""
    if len(element) == 0:
        return element.text or ""
    return _children(element, depth + 1)


def _children(element: ElementTree.Element, depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise MalformedXmlError("XML is nested deeper than %d levels" % MAX_DEPTH)
    groups: dict[str, list[Any]] = {}
    for child in element:
        values = groups.setdefault(child.tag, [])
        if child.tag == "PicList":
            # protocol §6: several pictures arrive as sibling PicList blocks of one item each.
            values.extend(_value(item, depth + 1) for item in child)
        else:
            values.append(_value(child, depth))
    return {tag: values if tag in REPEATABLE or len(values) > 1 else values[0]
            for tag, values in groups.items()}


def to_fields(xml: Union[XmlInput, ElementTree.Element]) -> dict[str, Any]:
    """Every element under <xml> as a dict: leaves as strings, repeats as lists.

    Whitespace between child elements is ignored; leaf text (CDATA or not) is kept
    verbatim. Names in REPEATABLE are always lists; sibling PicList blocks are merged.
    """
    if isinstance(xml, ElementTree.Element):
        return _children(xml, 0)
    return _children(_parse_root(xml)[1], 0)


def _text(fields: Mapping[str, Any], *names: str) -> Optional[str]:
    """The first of `names` that is a leaf in `fields`, else None."""
    for name in names:
        value = fields.get(name)
        if isinstance(value, str):
            return value
    return None


def _create_time(value: Optional[str]) -> Optional[int]:
    match = _CREATE_TIME.match(value) if value is not None else None
    return int(match.group(1)) if match else None


def parse(xml: XmlInput) -> Message:
    """Turn a decrypted plaintext into a Message; raises a MessageError subclass.

    Every element is optional except MsgType. Unknown MsgType and Event values are
    kept as sent, with every element in `fields`. `raw` is the decoded XML text.
    """
    text, root = _parse_root(xml)
    fields = _children(root, 0)
    msgtype = _text(fields, "MsgType")
    if not msgtype:
        raise MalformedXmlError("plaintext has no MsgType")
    return Message(
        msgtype=msgtype,
        from_user=_text(fields, "FromUserName"),
        to_user=_text(fields, "ToUserName"),
        agent_id=_text(fields, "AgentID", "AgentId"),  # taskcard_click spells it AgentId (§6)
        create_time=_create_time(_text(fields, "CreateTime")),
        msg_id=_text(fields, "MsgId"),
        event=_text(fields, "Event"),
        event_key=_text(fields, "EventKey"),
        content=_text(fields, "Content") if msgtype == "text" else None,
        fields=fields,
        raw=text,
    )


def parse_envelope(body: XmlInput) -> Envelope:
    """Read the POST body of a callback: <Encrypt> by name, in any position (§4)."""
    root = _parse_root(body)[1]
    found = [child for child in root if child.tag == "Encrypt"]
    if len(found) > 1:
        raise MalformedXmlError("envelope has %d <Encrypt> elements" % len(found))
    # Base64 never contains whitespace, so surrounding newlines are formatting, not data.
    encrypt = (found[0].text or "").strip() if found and len(found[0]) == 0 else ""
    if not encrypt:
        raise MissingEncryptError("envelope has no <Encrypt> text")
    fields = _children(root, 0)
    return Envelope(encrypt=encrypt, to_user=_text(fields, "ToUserName"),
                    agent_id=_text(fields, "AgentID", "AgentId"))


# ---------------------------------------------------------------- dedup

def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _lookup(fields: Mapping[str, Any], path: tuple[str, ...]) -> Optional[str]:
    value: Any = fields
    for name in path:
        value = value.get(name) if isinstance(value, Mapping) else None
    return value if isinstance(value, str) and value else None


def _event_key(message: Message) -> str:
    parts = [message.from_user or "", "" if message.create_time is None else str(message.create_time),
             message.event or "", message.event_key or "", message.agent_id or ""]
    for path in EVENT_ID_PATHS:
        value = _lookup(message.fields, path)
        if value is not None:
            parts.append("%s=%s" % (path[-1], value))
    # New or unknown events may carry ids we do not list; the content hash keeps them apart.
    parts.append(_sha256(_canonical(message.fields))[:16])
    return "evt:" + ":".join(parts)


def dedup_key(message: Message) -> str:
    """The key under which a callback is stored once, however often WeCom retries it.

    Messages: agent, sender and MsgId. Events: sender, CreateTime, Event, EventKey, agent,
    the event's own ids and a short hash of all fields, since sender + second collides (§4).
    Anything else: a hash of all fields. Keys longer than 255 characters end in a hash.
    """
    if not message.is_event and message.msg_id:
        key = "msg:%s:%s:%s" % (message.agent_id or "", message.from_user or "", message.msg_id)
    elif message.is_event:
        key = _event_key(message)
    else:
        key = "raw:" + _sha256(_canonical(message.fields))
    if len(key) > MAX_KEY_LENGTH:
        key = key[:MAX_KEY_LENGTH - 65] + "#" + _sha256(key)
    return key
