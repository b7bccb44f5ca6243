"""XML <-> Message: the normalised record of one callback, dedup keys, passive reply XML."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
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

TEXT_LIMIT_BYTES = 2048  # passive text replies are truncated by WeCom beyond this (protocol §7)
MAX_ARTICLES = 8
ARTICLE_KEYS = ("title", "description", "picurl", "url")
ARTICLE_TAGS = ("Title", "Description", "PicUrl", "Url")
# send-API keys that are one word in JSON but two in WeCom's XML.
CARD_TAG_OVERRIDES = (
    ("keyname", "KeyName"), ("pagepath", "PagePath"), ("appid", "AppId"),
    ("userid", "UserId"), ("checkbox", "CheckBox"),
)
_CARD_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
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


# ---------------------------------------------------------------- replies

def _truncate(text: str, max_bytes: int) -> str:
    """Cut `text` to at most `max_bytes` UTF-8 bytes without splitting a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


def _cdata(value: str, max_bytes: Optional[int] = None) -> str:
    """The one path for text into reply XML: legal XML 1.0 characters, safely in CDATA."""
    if not isinstance(value, str):
        raise TypeError("reply text must be str, not %s" % type(value).__name__)
    value = _XML_ILLEGAL.sub("", value)
    if max_bytes is not None:
        value = _truncate(value, max_bytes)
    return "<![CDATA[%s]]>" % value.replace("]]>", "]]]]><![CDATA[>")


def _element(tag: str, value: str, max_bytes: Optional[int] = None) -> str:
    return "<%s>%s</%s>" % (tag, _cdata(value, max_bytes), tag)


def _reply(to_user: str, from_user: str, msgtype: str, body: str,
           create_time: Optional[int]) -> str:
    stamp = int(time.time()) if create_time is None else int(create_time)
    return ("<xml>" + _element("ToUserName", to_user) + _element("FromUserName", from_user)
            + "<CreateTime>%d</CreateTime>" % stamp + _element("MsgType", msgtype)
            + body + "</xml>")


def reply_text(to_user: str, from_user: str, content: str,
               create_time: Optional[int] = None) -> str:
    """Passive text reply; content beyond 2048 UTF-8 bytes is cut on a character boundary."""
    body = _element("Content", content, TEXT_LIMIT_BYTES)
    return _reply(to_user, from_user, "text", body, create_time)


def reply_image(to_user: str, from_user: str, media_id: str,
                create_time: Optional[int] = None) -> str:
    """Passive image reply with an uploaded media id."""
    body = "<Image>%s</Image>" % _element("MediaId", media_id)
    return _reply(to_user, from_user, "image", body, create_time)


def reply_voice(to_user: str, from_user: str, media_id: str,
                create_time: Optional[int] = None) -> str:
    """Passive voice reply with an uploaded media id."""
    body = "<Voice>%s</Voice>" % _element("MediaId", media_id)
    return _reply(to_user, from_user, "voice", body, create_time)


def reply_video(to_user: str, from_user: str, media_id: str, title: str = "",
                description: str = "", create_time: Optional[int] = None) -> str:
    """Passive video reply with an uploaded media id, title and description."""
    body = "<Video>%s%s%s</Video>" % (_element("MediaId", media_id), _element("Title", title),
                                      _element("Description", description))
    return _reply(to_user, from_user, "video", body, create_time)


def _article(article: Mapping[str, str]) -> str:
    unknown = set(article) - set(ARTICLE_KEYS)
    if unknown:
        raise ValueError("unknown article keys: %s" % ", ".join(sorted(unknown)))
    if not article.get("title"):
        raise ValueError("every article needs a title")
    return "<item>%s</item>" % "".join(
        _element(tag, article.get(key, "")) for key, tag in zip(ARTICLE_KEYS, ARTICLE_TAGS))


def reply_news(to_user: str, from_user: str, articles: list[Mapping[str, str]],
               create_time: Optional[int] = None) -> str:
    """Passive news reply: 1 to 8 articles with title, description, url and picurl."""
    if not 1 <= len(articles) <= MAX_ARTICLES:
        raise ValueError("news needs 1 to %d articles, got %d" % (MAX_ARTICLES, len(articles)))
    body = "<ArticleCount>%d</ArticleCount><Articles>%s</Articles>" % (
        len(articles), "".join(_article(article) for article in articles))
    return _reply(to_user, from_user, "news", body, create_time)


def reply_update_button(to_user: str, from_user: str, replace_name: str,
                        create_time: Optional[int] = None) -> str:
    """Answer a template_card_event by relabelling the clicked user's button."""
    body = "<Button>%s</Button>" % _element("ReplaceName", replace_name)
    return _reply(to_user, from_user, "update_button", body, create_time)


def reply_update_taskcard(to_user: str, from_user: str, replace_name: str,
                          create_time: Optional[int] = None) -> str:
    """Answer a taskcard_click by relabelling the legacy task card's button."""
    body = "<TaskCard>%s</TaskCard>" % _element("ReplaceName", replace_name)
    return _reply(to_user, from_user, "update_taskcard", body, create_time)


def _card_tag(key: str) -> str:
    if not isinstance(key, str) or not _CARD_KEY.match(key):
        raise ValueError("template card key %r is not a plain name" % (key,))
    override = dict(CARD_TAG_OVERRIDES).get(key)
    return override or "".join(part[:1].upper() + part[1:] for part in key.split("_"))


def _card_xml(tag: str, value: Any, depth: int) -> str:
    """One card value as XML: dicts nest, lists repeat the tag, scalars are leaves."""
    if depth > MAX_DEPTH:
        raise ValueError("template card is nested too deeply")
    if value is None:
        return ""
    if isinstance(value, Mapping):
        inner = "".join(_card_xml(_card_tag(k), v, depth + 1) for k, v in value.items())
        return "<%s>%s</%s>" % (tag, inner, tag)
    if isinstance(value, (list, tuple)):
        if any(isinstance(item, (list, tuple)) for item in value):
            raise ValueError("template card field %s holds a list of lists" % tag)
        return "".join(_card_xml(tag, item, depth + 1) for item in value)
    if isinstance(value, bool):
        return "<%s>%s</%s>" % (tag, "true" if value else "false", tag)
    if isinstance(value, (int, float)):
        return "<%s>%s</%s>" % (tag, value, tag)
    return _element(tag, value)


def reply_update_template_card(to_user: str, from_user: str, card: Mapping[str, Any],
                               create_time: Optional[int] = None) -> str:
    """Replace a whole template card; `card` is the send-API JSON card (snake_case).

    Keys become CamelCase tags (`main_title` -> MainTitle, `checkbox` -> CheckBox), nested
    objects nest, and a list repeats its tag once per item, as in WeCom's XML (§7).
    """
    if not isinstance(card, Mapping) or not card.get("card_type"):
        raise ValueError("template card needs a card_type")
    return _reply(to_user, from_user, "update_template_card",
                  _card_xml("TemplateCard", card, 0), create_time)
