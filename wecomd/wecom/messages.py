"""XML -> Message: the safe parse, the normalised record of one callback and its dedup key.

The encrypted envelope around a message is read in wecomd.wecom.envelopes; passive reply XML is
built in wecomd.wecom.replies."""
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
_DOCTYPE = "<!DOCTYPE"  # the only way into a DTD, with a NUL for UTF-16: see parse_document

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
    # Who the conversation is with, when not the sender: a 智能机器人 group chat's chatid (each
    # message keeps its sender in from_user). None: the sender's conversation, as for app messages.
    conversation: Optional[str] = None
    # How it came: "app" (XML callbacks) or "bot" (the 智能机器人's JSON callbacks).
    channel: str = "app"

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


def parse_document(xml: XmlInput) -> tuple[str, ElementTree.Element]:
    """Parse with DTDs, entities and external references refused; return (text, root).

    Entities (internal, external or parameter) can only be declared in a DTD, and a DTD only by a
    literal "<!DOCTYPE": markup has no escapes and the keyword is case-sensitive. The parser reads
    the text as the UTF-8 it is searched in (a str is always parsed as UTF-8, whatever the XML
    declaration says) unless a NUL among its first bytes makes expat take it for UTF-16, and NUL
    is never legal XML. A document with neither cannot use a DTD, so it goes to the C parser;
    one with either (a CDATA section quoting "<!DOCTYPE" included) goes to defusedxml's parser,
    which refuses the DTD itself. That one is pure Python and two to three times slower; WeCom's
    own documents never need it.
    """
    text = _decode(xml)
    try:
        if _DOCTYPE in text or "\x00" in text:
            root = DefusedElementTree.fromstring(
                text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        else:
            root = ElementTree.fromstring(text)
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
    """The children of `element` by tag, in order of first appearance (see to_fields)."""
    if depth > MAX_DEPTH:
        raise MalformedXmlError("XML is nested deeper than %d levels" % MAX_DEPTH)
    fields: dict[str, Any] = {}
    for child in element:
        tag = child.tag
        if tag == "PicList":
            # protocol §6: several pictures arrive as sibling PicList blocks of one item each.
            fields.setdefault(tag, []).extend(_value(item, depth + 1) for item in child)
            continue
        # _value inlined: this line runs for every element of every callback.
        value = (child.text or "") if len(child) == 0 else _children(child, depth + 1)
        if tag in REPEATABLE:
            fields.setdefault(tag, []).append(value)
        elif tag in fields:
            # A repeated name outside REPEATABLE is a list from its second appearance on. A single
            # value is never a list (a leaf is a str, a parent a dict), so the type tells them apart.
            first = fields[tag]
            if isinstance(first, list):
                first.append(value)
            else:
                fields[tag] = [first, value]
        else:
            fields[tag] = value
    return fields


def to_fields(xml: Union[XmlInput, ElementTree.Element]) -> dict[str, Any]:
    """Every element under <xml> as a dict: leaves as strings, repeats as lists.

    Whitespace between child elements is ignored; leaf text (CDATA or not) is kept
    verbatim. Names in REPEATABLE are always lists; sibling PicList blocks are merged.
    """
    if isinstance(xml, ElementTree.Element):
        return _children(xml, 0)
    return _children(parse_document(xml)[1], 0)


def _create_time(value: Optional[str]) -> Optional[int]:
    match = _CREATE_TIME.match(value) if value is not None else None
    return int(match.group(1)) if match else None


def parse(xml: XmlInput) -> Message:
    """Turn a decrypted plaintext into a Message; raises a MessageError subclass.

    Every element is optional except MsgType. Unknown MsgType and Event values are
    kept as sent, with every element in `fields`. `raw` is the decoded XML text.
    """
    text, root = parse_document(xml)
    fields = _children(root, 0)
    # The columns take leaves only: a name that was repeated (a list) or has children (a dict) is None.
    leaves = {tag: value for tag, value in fields.items() if isinstance(value, str)}
    msgtype = leaves.get("MsgType")
    if not msgtype:
        raise MalformedXmlError("plaintext has no MsgType")
    agent_id = leaves.get("AgentID")
    return Message(
        msgtype=msgtype,
        from_user=leaves.get("FromUserName"),
        to_user=leaves.get("ToUserName"),
        # taskcard_click spells it AgentId (§6)
        agent_id=leaves.get("AgentId") if agent_id is None else agent_id,
        create_time=_create_time(leaves.get("CreateTime")),
        msg_id=leaves.get("MsgId"),
        event=leaves.get("Event"),
        event_key=leaves.get("EventKey"),
        content=leaves.get("Content") if msgtype == "text" else None,
        fields=fields,
        raw=text,
    )


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

    Messages: agent, sender and MsgId; 智能机器人 callbacks: the bot and msgid. Events: sender, CreateTime, Event, EventKey, agent,
    the event's own ids and a short hash of all fields, since sender + second collides (§4).
    Anything else: a hash of all fields. Keys longer than 255 characters end in a hash.
    """
    if message.channel == "bot" and message.msg_id:  # msgid is on every bot callback, events too
        key = "bot:%s:%s" % (message.agent_id or "", message.msg_id)
    elif not message.is_event and message.msg_id:
        key = "msg:%s:%s:%s" % (message.agent_id or "", message.from_user or "", message.msg_id)
    elif message.is_event:
        key = _event_key(message)
    else:
        key = "raw:" + _sha256(_canonical(message.fields))
    if len(key) > MAX_KEY_LENGTH:
        key = key[:MAX_KEY_LENGTH - 65] + "#" + _sha256(key)
    return key
