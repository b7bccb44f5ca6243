"""微信客服 (kf): the protocol, pure (no I/O). Facts and their sources: wecom-kf.md (§N below).

- The app callback `kf_msg_or_event` is only a doorbell: its `Token` and `OpenKfId` (§2) say which
  account to pull with `kf/sync_msg` (§3).
- A pulled item becomes a Message (`parse_item`): channel "kf", the whole item in `fields`, and the
  conversation "OPEN_KFID/EXTERNAL_USERID" (`conversation_key`; WeCom ids never contain "/").
- What may be sent: `send_msg` bodies (`send_msg_payload`, text at most 2,048 bytes) within the
  reply window (`window_refusal`: 48 hours after the customer last wrote, at most 5 messages) and
  with a deterministic msgid (`send_msgid`); `send_msg_on_event` bodies (`on_event_payload`).
- Session states and the moves WeCom documents between them (`TRANSITIONS`, §8), errcodes worth
  explaining (`describe`, §10), what a failed send's `fail_type` and a session change's
  `change_type` mean (§4), and `customer/batchget` batches (§9).

Unverified, and marked where used: the 100-id cap of customer/batchget, the errcode WeCom gives
for a repeated msgid (`MSGID_USED` is the sandbox's choice), and the meanings of 60011/60111 here.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, List, Mapping, Optional, Tuple

from wecomd.wecom.messages import Message, MessageError

KF_EVENT = "kf_msg_or_event"  # the app callback's Event for 微信客服 (§2)
ORIGIN_CUSTOMER, ORIGIN_SYSTEM, ORIGIN_SERVICER = 3, 4, 5  # an item's `origin` (§3)
SEPARATOR = "/"  # between open_kfid and external_userid in a conversation key

TEXT_LIMIT = 2048  # bytes of UTF-8 in a text's content (§5)
MSGID_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,32}")  # a send's msgid (§5)
# What send_msg takes (§5; ca_link from wxkefu-rs) and what send_msg_on_event takes (§6).
SEND_TYPES = frozenset({"text", "image", "voice", "video", "file", "link", "miniprogram", "msgmenu",
                        "location", "business_card", "ca_link"})
EVENT_SEND_TYPES = frozenset({"text", "msgmenu"})

# Session states (§8): English for the daemon's texts, the Chinese of WeCom's documentation.
SERVICE_STATES = {0: "untouched", 1: "bot", 2: "queue", 3: "human", 4: "ended"}
SERVICE_STATE_LABELS = {0: "未处理", 1: "由智能助手接待", 2: "待接入池排队中", 3: "由人工接待", 4: "已结束/未开始"}
# The moves service_state/trans may make from each state, as WeCom documents them (94669, quoted
# in silenceper/wechat work/kf/servicestate.go): 0 may go to the bot, the queue or a servicer; 1
# to the queue or a servicer; 2 only to a servicer; 3 to another servicer (3 -> 3) or end; 4 not
# at all (a new customer message makes it 0). A session a human serves never goes back to the bot.
TRANSITIONS = {0: (1, 2, 3), 1: (2, 3), 2: (3,), 3: (3, 4), 4: ()}

WINDOW = timedelta(hours=48)  # sends only within 48 h of the customer's last message (§5)
MAX_SENDS = 5  # ... and at most 5 of them until the customer writes again (recalled ones count)

# msg_send_fail's fail_type (§4; 11 and 12 from go-workwx).
FAIL_TYPES = {
    0: "unknown reason", 1: "the kf account was deleted", 2: "the app was closed",
    4: "the session expired (over 48 hours)", 5: "the session was closed",
    6: "over the limit of 5 messages", 7: "no 视频号 is bound", 8: "the corp is not verified",
    9: "no 视频号 is bound and the corp is not verified", 10: "the customer refused messages",
    11: "no member has signed in to the WeCom app", 12: "this message type is not allowed here",
}
# session_status_change's change_type (§4): servicer actions in the WeCom client, never API trans.
CHANGE_TYPES = {1: "taken from the queue by a servicer", 2: "transferred to another servicer",
                3: "ended by the servicer", 4: "taken up again by a servicer"}

HUMAN_SERVING = 95018  # send_msg in a state that does not allow it, e.g. human reception (§5)
TOKEN_ERRORS = frozenset({95007})  # sync_msg: "invalid msg token" (expired or unknown callback token)
# The errcode for a send whose msgid this account used already. UNVERIFIED: WeCom's real code is
# not documented where we looked; 95010 is what the sandbox (sandbox_kf) answers.
MSGID_USED = frozenset({95010})

_DESCRIPTIONS = {
    95018: "WeCom refused the send: the session's state does not allow it (a human servicer serves "
           "it, or it is queued or ended); the bot must not answer it",
    95011: "WeCom says 微信客服 is used inside WeCom already (已在企业微信使用微信客服): the account "
           "cannot be driven by this app's API",
    95007: "the sync_msg token (the callback's Token) is invalid or over 10 minutes old: pull without it",
    45009: "WeCom's rate limit was hit: wait before calling again",
    40014: "the access token is invalid: fetch a new one once",
    42001: "the access token expired: fetch a new one once",
    60011: "no privilege (unverified): a servicer or member outside the app's 可见范围 (visible range)",
    60111: "userid not found (unverified): the servicer is not in the address book",
}

_SUMMARY_TAGS = {"image": "[图片]", "voice": "[语音]", "video": "[视频]", "file": "[文件]",
                 "location": "[位置]", "link": "[链接]", "business_card": "[名片]", "miniprogram": "[小程序]",
                 "msgmenu": "[菜单]", "channels_shop_product": "[视频号商品]", "channels_shop_order": "[视频号订单]",
                 "merged_msg": "[聊天记录]", "channels": "[视频号]", "note": "[笔记]", "ca_link": "[获客链接]"}
_SUMMARY_FIELDS = {"location": ("name", "address"), "link": ("title",), "business_card": ("userid",),
                   "miniprogram": ("title",), "msgmenu": ("head_content",), "channels_shop_product": ("title",),
                   "channels_shop_order": ("product_titles",), "merged_msg": ("title",), "channels": ("title",)}


class MalformedKfItem(MessageError):
    """A sync_msg item that is not a JSON object with a msgid and a msgtype."""


# ---------------------------------------------------------------- the callback

def callback_token(message: Message) -> Optional[str]:
    """The `Token` of a kf_msg_or_event callback (for sync_msg, valid 10 minutes), or None."""
    return _text(message.fields.get("Token"))


def callback_open_kfid(message: Message) -> Optional[str]:
    """The `OpenKfId` of a kf_msg_or_event callback: the account with something new, or None."""
    return _text(message.fields.get("OpenKfId"))


# ---------------------------------------------------------------- conversations

def conversation_key(open_kfid: str, external_userid: str) -> str:
    """"OPEN_KFID/EXTERNAL_USERID": one customer of one account. ValueError for an empty id or one
    with a "/" (WeCom's never have one, and the key could not be split back)."""
    for name, value in (("open_kfid", open_kfid), ("external_userid", external_userid)):
        if not isinstance(value, str) or not value or SEPARATOR in value:
            raise ValueError("%s must be a non-empty id without %r, not %r" % (name, SEPARATOR, value))
    return open_kfid + SEPARATOR + external_userid


def split_key(user: Any) -> Optional[Tuple[str, str]]:
    """(open_kfid, external_userid) of a conversation key; None for any other user (an app member's
    UserID or a group chat's id has no "/")."""
    if not isinstance(user, str) or user.count(SEPARATOR) != 1:
        return None
    open_kfid, external = user.split(SEPARATOR)
    return (open_kfid, external) if open_kfid and external else None


# ---------------------------------------------------------------- pulled items

def origin(item: Mapping) -> Optional[int]:
    """The item's origin (ORIGIN_CUSTOMER, ORIGIN_SYSTEM, ORIGIN_SERVICER, or another int as sent),
    or None when it has none."""
    value = item.get("origin") if isinstance(item, dict) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def parse_item(item: Any) -> Message:
    """One sync_msg msg_list item as a Message; MalformedKfItem unless it is a dict with a msgid and
    a msgtype.

    `fields` is the item as sent (unknown types too) and `raw` its JSON. The conversation is
    "OPEN_KFID/EXTERNAL_USERID" (an event's ids are inside `event`; None when the item names no
    customer). `from_user`: the conversation for origin 3 and events (so that every reader, the
    console included, files the message under it as it does an app member's), the servicer_userid
    for 5. `to_user`: the account, or the conversation for what a servicer wrote. `event`:
    event.event_type. `event_key`: a menu click's menu_id (text), enter_session's scene_param,
    session_status_change's change_type.
    `content`: a text's content, else a short summary ("[文件] name", "[链接] title", ...).
    """
    if not isinstance(item, dict):
        raise MalformedKfItem("a sync_msg item must be a JSON object, not %s" % type(item).__name__)
    msgid, msgtype = _text(item.get("msgid")), _text(item.get("msgtype"))
    if not msgid or not msgtype:
        raise MalformedKfItem("a sync_msg item needs a msgid and a msgtype")
    event = item.get("event") if msgtype == "event" and isinstance(item.get("event"), dict) else {}
    open_kfid = _text(item.get("open_kfid")) or _text(event.get("open_kfid"))
    external = _text(item.get("external_userid")) or _text(event.get("external_userid"))
    kind, key = origin(item), _key_or_none(open_kfid, external)
    if kind == ORIGIN_SERVICER:
        from_user, to_user = _text(item.get("servicer_userid")), key or external
    else:
        from_user, to_user = key or external, open_kfid
    event_key = None
    if msgtype == "text":
        event_key = _text(_get(item, "text", "menu_id"))
    elif event.get("event_type") == "enter_session":
        event_key = _text(event.get("scene_param"))
    elif event.get("event_type") == "session_status_change" and _is_int(event.get("change_type")):
        event_key = str(event["change_type"])  # rules: `event session_status_change 3` (ended)
    send_time = item.get("send_time")
    return Message(
        msgtype=msgtype, from_user=from_user, to_user=to_user, msg_id=msgid,
        create_time=send_time if isinstance(send_time, int) and not isinstance(send_time, bool) else None,
        event=_text(event.get("event_type")) if msgtype == "event" else None, event_key=event_key,
        content=content_of(item), fields=item, raw=item_json(item),
        conversation=key, channel="kf")


def item_json(item: Any) -> str:
    """An item's JSON as the message keeps it (`raw` and `fields`): compact, as SQLite renders an
    element of json_each, so that store.kf.store_texts keeps the same text."""
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))


MEDIA_TYPES = ("image", "voice", "video", "file")  # items whose bytes media/get downloads (§3)


def media_id(item: Any) -> Optional[str]:
    """The media_id of a pulled image, voice, video or file item (as stored in `fields`), or None."""
    if not isinstance(item, dict) or item.get("msgtype") not in MEDIA_TYPES or "origin" not in item:
        return None
    return _text(_get(item, item["msgtype"], "media_id"))


def content_of(item: Mapping) -> Optional[str]:
    """The readable text of an item: a text's content, else a short summary of its type (a tag such
    as "[文件]" with the file name, link title, location name ...; events in words)."""
    msgtype = item.get("msgtype")
    if msgtype == "text":
        return _text(_get(item, "text", "content"))
    if msgtype == "event":
        return _event_summary(item.get("event") if isinstance(item.get("event"), dict) else {})
    body = item.get(msgtype) if isinstance(msgtype, str) and isinstance(item.get(msgtype), dict) else {}
    tag = _SUMMARY_TAGS.get(msgtype, "[%s]" % msgtype if isinstance(msgtype, str) else "[?]")
    parts = []
    for name in _SUMMARY_FIELDS.get(msgtype, ("file_name", "filename", "title")):
        value = body.get(name)
        if isinstance(value, list):
            value = "、".join(v for v in value if isinstance(v, str))
        if isinstance(value, str) and value:
            parts.append(value)
    return " ".join([tag] + parts)


def _event_summary(event: Mapping) -> str:
    kind = event.get("event_type")
    if kind == "enter_session":
        scene = _text(event.get("scene"))
        return "[进入会话]" + (" scene %s" % scene if scene else "")
    if kind == "msg_send_fail":
        return "[发送失败] " + FAIL_TYPES.get(_int(event.get("fail_type")), "unknown reason")
    if kind == "session_status_change":
        return "[会话状态] " + CHANGE_TYPES.get(_int(event.get("change_type")), "changed")
    if kind == "servicer_status_change":
        status = {1: "接待中", 2: "停止接待"}.get(_int(event.get("status")), "?")
        return "[接待人员] %s %s" % (_text(event.get("servicer_userid")) or "?", status)
    if kind == "user_recall_msg":
        return "[客户撤回了一条消息]"
    if kind == "servicer_recall_msg":
        return "[接待人员撤回了一条消息]"
    return "[事件] %s" % (kind if isinstance(kind, str) else "?")


# ---------------------------------------------------------------- sending

def send_msgid(outbox_id: int) -> str:
    """The msgid of the send_msg of an outbox row: the same on every attempt, so WeCom refuses a
    second delivery (msgid is unique per account, at most 32 of [0-9A-Za-z_-])."""
    return "wecomd-%d" % _row_id(outbox_id)


def event_msgid(message_id: int) -> str:
    """The msgid of the send_msg_on_event answering a stored event message (never one of send_msgid)."""
    return "wecomd-ev-%d" % _row_id(message_id)


def send_msg_payload(open_kfid: str, external_userid: str, msgid: Optional[str], msgtype: str,
                     body: Mapping) -> dict:
    """The kf/send_msg JSON. ValueError: an unknown msgtype, a body that is not an object, an empty
    text or one over 2,048 bytes, a msgid WeCom would refuse. Other bodies are sent as given."""
    if not open_kfid or not external_userid:
        raise ValueError("send_msg needs an open_kfid and the customer's external_userid")
    if msgtype not in SEND_TYPES:
        raise ValueError("微信客服 send_msg does not take msgtype %r" % (msgtype,))
    payload = {"touser": external_userid, "open_kfid": open_kfid, "msgtype": msgtype,
               msgtype: _body(msgtype, body)}
    if msgid is not None:
        payload["msgid"] = _msgid(msgid)
    return payload


def on_event_payload(code: str, msgid: Optional[str], msgtype: str, body: Mapping) -> dict:
    """The kf/send_msg_on_event JSON answering an event code (text or msgmenu; the codes of the
    queue and of a servicer taking over take text only: WeCom's business, not checked here)."""
    if not code or not isinstance(code, str):
        raise ValueError("send_msg_on_event needs the event's code")
    if msgtype not in EVENT_SEND_TYPES:
        raise ValueError("send_msg_on_event takes text or msgmenu, not %r" % (msgtype,))
    payload = {"code": code, "msgtype": msgtype, msgtype: _body(msgtype, body)}
    if msgid is not None:
        payload["msgid"] = _msgid(msgid)
    return payload


def window_refusal(last_customer_at: Optional[datetime], sends_since: int, now: datetime) -> Optional[str]:
    """Why WeCom would refuse a send now (§5), or None when it may go out: the customer never wrote,
    last wrote over 48 hours ago, or 5 messages went out since. Aware datetimes are compared in UTC,
    naive ones taken as UTC."""
    if last_customer_at is None:
        return "the customer has not written yet: WeCom takes messages only within 48 hours of the customer's last one"
    last, current = _naive(last_customer_at), _naive(now)
    if current - last > WINDOW:
        return ("the customer last wrote over 48 hours ago (%s UTC): WeCom takes messages only within 48 hours "
                "of the customer's last one" % last.strftime("%Y-%m-%d %H:%M"))
    if sends_since >= MAX_SENDS:
        return ("%d messages went out since the customer last wrote: WeCom takes at most %d until the customer "
                "writes again" % (sends_since, MAX_SENDS))
    return None


# ---------------------------------------------------------------- sessions, errors, customers

def allowed(old: Any, new: Any) -> bool:
    """Whether service_state/trans may move a session from state `old` to `new` (TRANSITIONS)."""
    if not _is_int(old) or not _is_int(new):
        return False
    return new in TRANSITIONS.get(old, ())


def describe(errcode: int) -> Optional[str]:
    """What a 微信客服 API errcode means for the operator, or None when there is nothing kf-specific."""
    return _DESCRIPTIONS.get(errcode)


def customer_batches(ids: Iterable[str], size: int = 100) -> List[List[str]]:
    """`ids` without repeats, in lists of at most `size` (customer/batchget takes 100 at most; the
    cap is unverified)."""
    if size < 1:
        raise ValueError("a batch holds at least one id")
    unique = list(dict.fromkeys(i for i in ids if i))
    return [unique[start:start + size] for start in range(0, len(unique), size)]


# ---------------------------------------------------------------- helpers

def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value else None


def _get(data: Any, *path: str) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _key_or_none(open_kfid: Optional[str], external: Optional[str]) -> Optional[str]:
    try:
        return conversation_key(open_kfid, external) if open_kfid and external else None
    except ValueError:
        return None


def _row_id(value: Any) -> int:
    if not _is_int(value) or not 0 <= value < 2**63:
        raise ValueError("a msgid is derived from a database id (a non-negative int), not %r" % (value,))
    return value


def _msgid(msgid: str) -> str:
    if not isinstance(msgid, str) or not MSGID_PATTERN.fullmatch(msgid):
        raise ValueError("a msgid is 1-32 of [0-9A-Za-z_-], not %r" % (msgid,))
    return msgid


def _body(msgtype: str, body: Any) -> dict:
    if not isinstance(body, Mapping):
        raise ValueError("the %s body must be an object" % msgtype)
    body = dict(body)
    if msgtype == "text":
        content = body.get("content")
        if not isinstance(content, str) or not content:
            raise ValueError("a text needs non-empty content")
        size = len(content.encode("utf-8"))
        if size > TEXT_LIMIT:
            raise ValueError("a 微信客服 text may be at most %d bytes of UTF-8, not %d" % (TEXT_LIMIT, size))
    return body


def _naive(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        return moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment
