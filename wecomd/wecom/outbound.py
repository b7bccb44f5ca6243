"""What WeCom accepts from an app: media/upload's limits (wecom-protocol.md §8.3) and the payloads of
message/send's markdown, textcard and news (§8.2), checked before anything is stored or sent.

`check_upload` tells a file's type by its first bytes (image, voice, video) rather than by what
the client called it, since WeCom refuses a PNG named .jpg no less than a GIF; a file (msgtype
"file") may be anything, and its type is only guessed from its name, for serving it back.
"""
from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from typing import Any, Optional

MB = 2**20
MIN_BYTES = 5  # "every file must be larger than 5 bytes" (§8.3)
TEXT_BYTES = 2048  # text and markdown content (§8.2)
TITLE_BYTES, DESCRIPTION_BYTES, URL_BYTES = 128, 512, 2048
BUTTON_CHARS = 4  # textcard btntxt
MAX_ARTICLES = 8  # news


@dataclass(frozen=True)
class Limit:
    """One msgtype's upload limit: the largest size and the types WeCom takes (None: any)."""

    msgtype: str
    max_bytes: int
    kinds: Optional[tuple[str, ...]]  # e.g. ("JPG", "PNG")

    def describe(self) -> str:
        kinds = " %s" % "/".join(self.kinds) if self.kinds else ""
        return "%s: more than %d bytes, at most %d MB%s" % (self.msgtype, MIN_BYTES, self.max_bytes // MB, kinds)


LIMITS = {
    "image": Limit("image", 10 * MB, ("JPG", "PNG")),
    "voice": Limit("voice", 2 * MB, ("AMR",)),
    "video": Limit("video", 10 * MB, ("MP4",)),
    "file": Limit("file", 20 * MB, None),
}
UPLOAD_TYPES = tuple(LIMITS)
LARGEST_UPLOAD = max(limit.max_bytes for limit in LIMITS.values())


class UploadRefused(ValueError):
    """A file breaks WeCom's upload limit for its msgtype; str() names the limit."""


class PayloadError(ValueError):
    """A markdown, textcard or news payload WeCom would refuse; `field` names the part at fault."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__("%s %s" % (field, problem))


def sniff(body: bytes) -> Optional[str]:
    """The MIME type of the kinds WeCom checks, from their magic bytes; None for anything else."""
    if body.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if body.startswith(b"#!AMR\n"):  # AMR-NB, what WeCom's voice messages are (§8.3)
        return "audio/amr"
    if body[4:8] == b"ftyp":  # an ISO base media file (MP4): a box size, then "ftyp"
        return "video/mp4"
    return None


_KIND_TYPES = {"JPG": "image/jpeg", "PNG": "image/png", "AMR": "audio/amr", "MP4": "video/mp4"}


def check_upload(msgtype: str, body: bytes, filename: Optional[str]) -> str:
    """The MIME type to store `body` under, if WeCom takes it as a `msgtype` upload; else UploadRefused
    (or ValueError for a msgtype that is no upload)."""
    limit = LIMITS.get(msgtype)
    if limit is None:
        raise ValueError("msgtype must be one of %s for a file, not %r" % (", ".join(UPLOAD_TYPES), msgtype))
    if len(body) <= MIN_BYTES:
        raise UploadRefused("a file must be larger than %d bytes (this one has %d)" % (MIN_BYTES, len(body)))
    if len(body) > limit.max_bytes:
        raise UploadRefused("%s must be at most %d MB (this one is %.1f MB)"
                            % (_noun(msgtype), limit.max_bytes // MB, len(body) / MB))
    found = sniff(body)
    if limit.kinds is None:
        guessed = mimetypes.guess_type(filename or "")[0] if filename else None
        return found or guessed or "application/octet-stream"
    if found not in {_KIND_TYPES[kind] for kind in limit.kinds}:
        raise UploadRefused("%s must be %s (this file is not)" % (_noun(msgtype), " or ".join(limit.kinds)))
    return found


def _noun(msgtype: str) -> str:
    return {"image": "an image", "voice": "a voice message", "video": "a video"}.get(msgtype, "a file")


# --- message/send payloads -------------------------------------------------------------------

def markdown(content: Any) -> dict:
    """{"content"} of a markdown message: non-empty, at most 2048 bytes (markdown is never split:
    a cut would break its formatting)."""
    return {"content": _text(content, "content", TEXT_BYTES, required=True)}


def textcard(body: Any) -> dict:
    """{"title", "description", "url", "btntxt"?} of a textcard, checked against §8.2's sizes."""
    if not isinstance(body, dict):
        raise PayloadError("textcard", "must be an object {title, description, url, btntxt?}")
    card = {"title": _text(body.get("title"), "textcard.title", TITLE_BYTES, required=True),
            "description": _text(body.get("description"), "textcard.description", DESCRIPTION_BYTES,
                                 required=True),
            "url": _url(body.get("url"), "textcard.url", required=True)}
    button = body.get("btntxt")
    if button not in (None, ""):
        if not isinstance(button, str) or len(button) > BUTTON_CHARS or not button.strip():
            raise PayloadError("textcard.btntxt", "must be text of at most %d characters" % BUTTON_CHARS)
        card["btntxt"] = button
    return card


def news(body: Any) -> dict:
    """{"articles": [...]} of a news message: 1 to 8 articles of {title, description?, url, picurl?}."""
    articles = body.get("articles") if isinstance(body, dict) else None
    if not isinstance(articles, list) or not 1 <= len(articles) <= MAX_ARTICLES:
        raise PayloadError("news.articles", "must be a list of 1 to %d articles" % MAX_ARTICLES)
    checked = []
    for number, article in enumerate(articles):
        where = "news.articles[%d]" % number
        if not isinstance(article, dict):
            raise PayloadError(where, "must be an object {title, description?, url, picurl?}")
        item = {"title": _text(article.get("title"), where + ".title", TITLE_BYTES, required=True),
                "url": _url(article.get("url"), where + ".url", required=True)}
        description = _text(article.get("description"), where + ".description", DESCRIPTION_BYTES)
        picurl = _url(article.get("picurl"), where + ".picurl")
        item.update({key: value for key, value in (("description", description), ("picurl", picurl)) if value})
        checked.append(item)
    return {"articles": checked}


def summary(msgtype: str, payload: dict) -> str:
    """The text a card is found by and previewed with: its title and description."""
    if msgtype == "textcard":
        return "%s\n%s" % (payload["title"], payload["description"])
    if msgtype == "news":
        return "\n".join(article["title"] for article in payload["articles"])
    return payload.get("content", "")


def _text(value: Any, field: str, max_bytes: int, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise PayloadError(field, "is required")
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise PayloadError(field, "must be non-empty text")
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        raise PayloadError(field, "is %d bytes; WeCom takes at most %d" % (size, max_bytes))
    return value


def _url(value: Any, field: str, required: bool = False) -> str:
    text = _text(value, field, URL_BYTES, required)
    if text and not text.lower().startswith(("http://", "https://")):
        raise PayloadError(field, "must be an http:// or https:// URL")
    return text
