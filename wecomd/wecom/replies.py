"""Passive reply XML: what wecomd answers inside a callback's 200 (before it is encrypted).

Every text goes into the XML through `_cdata`: legal XML 1.0 characters only, in CDATA, cut to
WeCom's limits without splitting a character.
"""
from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, Optional

from wecomd.wecom.messages import MAX_DEPTH

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
