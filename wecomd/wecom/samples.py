"""Realistic plaintexts for every WeCom message and event kind: the simulator's sample catalog.

`build(kind, ...)` returns the XML WeCom would send (docs in the function); KINDS lists the kinds.
Strings are CDATA and numbers bare, as WeCom writes them.
"""
from __future__ import annotations

import re
import secrets
import time
from types import MappingProxyType
from typing import Optional


class _Bare(str):
    """A template string written as plain escaped text, not CDATA (ids and numbers)."""


_IMG = "https://wework.qpic.cn/wwpic/{uid}/0"
# Body elements per kind, after the common header. A str is CDATA, an int/float/_Bare is bare,
# a tuple is a nested element. {content}, {event_key}, {user}, {uid}, {now} are filled per call.
_MESSAGES = MappingProxyType({
    "text": (("Content", "{content}"),),
    "image": (("PicUrl", _IMG), ("MediaId", "{media_id}")),
    "voice": (("MediaId", "{media_id}"), ("Format", "amr")),
    "video": (("MediaId", "{media_id}"), ("ThumbMediaId", "1_thumb_{uid}")),
    "location": (("Location_X", 23.134521), ("Location_Y", 113.358803), ("Scale", 15),
                 ("Label", "广州市天河区"), ("AppType", "wxwork")),
    "link": (("Title", "wecomd"), ("Description", "{content}"),
             ("Url", "https://example.com/a?b=1&c=2"), ("PicUrl", _IMG)),
    "file": (("MediaId", "{media_id}"), ("FileName", "报告.pdf")),
})
_KEY = (("EventKey", "{event_key}"),)
_PICS = _KEY + (("SendPicsInfo", (("Count", 1), ("PicList", (("item", (("PicMd5Sum", "{uid}{uid}"),)),)))),)
_SCAN = _KEY + (("ScanCodeInfo", (("ScanType", "qrcode"), ("ScanResult", "https://example.com/qr"))),)
_WHERE = (("Location_X", 23.1), ("Location_Y", 113.3), ("Scale", 15), ("Label", "广州塔"), ("Poiname", "广州塔"))
_EXT_ATTR = (("Item", (("Name", "工号"), ("Type", 0), ("Text", (("Value", "007"),)))),
             ("Item", (("Name", "主页"), ("Type", 1),
                       ("Web", (("Title", "home"), ("Url", "https://example.com"))))))
_CONTACT = (("ChangeType", "update_user"), ("UserID", "{user}"), ("Name", "张三"), ("Department", _Bare("1,2")),
            ("MainDepartment", 1), ("IsLeaderInDept", _Bare("1,0")), ("Position", "工程师"), ("Gender", 1),
            ("Status", 1), ("Alias", "zs"), ("ExtAttr", _EXT_ATTR))
_PERSON = (("ItemName", "李四"), ("ItemUserId", "lisi"), ("ItemImage", "https://wework.qpic.cn/wwhead/lisi"))
_NODE = (("NodeStatus", 1), ("NodeAttr", 1), ("NodeType", 1), ("Items", (
    ("Item", _PERSON + (("ItemStatus", 1), ("ItemSpeech", ""), ("ItemOpTime", 0))),)))
_OPEN_APPROVAL = (
    ("ThirdNo", "{uid}"), ("OpenSpName", "付款"), ("OpenTemplateId", "tpl_pay"), ("OpenSpStatus", 1),
    ("ApplyTime", _Bare("{now}")), ("ApplyUserName", "张三"), ("ApplyUserId", "{user}"),
    ("ApplyUserParty", "研发部"), ("ApplyUserImage", "https://wework.qpic.cn/wwhead/zs"),
    ("ApprovalNodes", (("ApprovalNode", _NODE),)), ("NotifyNodes", (("NotifyNode", _PERSON),)),
    ("approverstep", 0))
_SYS_APPROVAL = (
    ("SpNo", _Bare("2025{uid}")), ("SpName", "请假"), ("SpStatus", 1), ("TemplateId", "tpl_leave"),
    ("ApplyTime", _Bare("{now}")), ("Applyer", (("UserId", "{user}"), ("Party", 1))),
    ("SpRecord", (("SpStatus", 1), ("ApproverAttr", 1), ("Details", (
        ("Approver", (("UserId", "lisi"),)), ("Speech", ""), ("SpStatus", 1), ("SpTime", 0))))),
    ("Notifyer", (("UserId", "wangwu"),)), ("StatuChangeEvent", 1))
_VOTE = (("SelectedItem", (("QuestionKey", "q1"), ("OptionIds", (("OptionId", "o1"), ("OptionId", "o2"))))),)
_CARD = _KEY + (("TaskId", "task_{uid}"),)
_EVENTS = MappingProxyType({
    "subscribe": (), "unsubscribe": (), "enter_agent": _KEY,
    "LOCATION": (("Latitude", 23.104105), ("Longitude", 113.320107), ("Precision", 65.0),
                 ("AppType", "wxwork")),
    "click": _KEY, "view": _KEY, "view_miniprogram": _KEY,
    "scancode_push": _SCAN, "scancode_waitmsg": _SCAN,
    "pic_sysphoto": _PICS, "pic_photo_or_album": _PICS, "pic_weixin": _PICS,
    "location_select": _KEY + (("SendLocationInfo", _WHERE), ("AppType", "wxwork")),
    "batch_job_result": (("BatchJob", (("JobId", "job_{uid}"), ("JobType", "sync_user"),
                                       ("ErrCode", 0), ("ErrMsg", "ok"))),),
    "change_contact": _CONTACT,
    "open_approval_change": (("ApprovalInfo", _OPEN_APPROVAL),),
    "sys_approval_change": (("ApprovalInfo", _SYS_APPROVAL),),
    "taskcard_click": _CARD,
    "template_card_event": _CARD + (("CardType", "vote_interaction"), ("ResponseCode", "rc_{uid}"),
                                    ("SelectedItems", _VOTE)),
    "template_card_menu_event": _CARD + (("CardType", "button_interaction"), ("ResponseCode", "rc_{uid}")),
})
_DEFAULT_KEYS = MappingProxyType({
    "click": "RUN_BACKUP", "view": "https://example.com/", "view_miniprogram": "pages/index/index",
    "scancode_push": "scan", "scancode_waitmsg": "scan", "pic_sysphoto": "photo",
    "pic_photo_or_album": "photo", "pic_weixin": "photo", "location_select": "where",
    "taskcard_click": "accept", "template_card_event": "submit", "template_card_menu_event": "menu",
})
# System events come from FromUserName "sys"; the from_user argument names the affected member.
_SYSTEM = frozenset({"batch_job_result", "change_contact", "open_approval_change", "sys_approval_change"})
KINDS: tuple[str, ...] = tuple(_MESSAGES) + tuple(_EVENTS)
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def cdata(text: str) -> str:
    # A "]]>" inside user text must be split across two sections (§9.7).
    return "<![CDATA[" + _ILLEGAL_XML.sub("", text).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _escape(text: str) -> str:
    return _ILLEGAL_XML.sub("", text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _render(items: tuple, ctx: dict) -> str:
    out = []
    for tag, value in items:
        if isinstance(value, tuple):
            inner = _render(value, ctx)
        elif isinstance(value, _Bare):
            inner = _escape(value.format_map(ctx))
        elif isinstance(value, str):
            inner = cdata(value.format_map(ctx))
        else:
            inner = str(value)
        out.append("<%s>%s</%s>" % (tag, inner, tag))
    return "".join(out)


def build(kind: str, *, corp_id: str, agent_id: str, from_user: str = "zhangsan",
          content: str = "hello", event_key: str = "", create_time: Optional[int] = None,
          msg_id: Optional[str] = None, media_id: Optional[str] = None) -> str:
    """Return the plaintext XML WeCom would send for `kind` (one of KINDS).

    Strings are CDATA and numbers bare, as WeCom writes them. Messages get a fresh
    random 19-digit MsgId unless `msg_id` is given; events have none but carry fresh
    event ids (TaskId, JobId, SpNo...). An empty `event_key` uses a per-kind default.
    Media kinds get `media_id`, or a made-up one that no API will serve.
    """
    if kind not in KINDS:
        raise ValueError("unknown kind %r; choose one of: %s" % (kind, ", ".join(KINDS)))
    now = int(time.time()) if create_time is None else int(create_time)
    ctx = {"content": content, "event_key": event_key or _DEFAULT_KEYS.get(kind, ""),
           "user": from_user, "uid": secrets.token_hex(8), "now": str(now)}
    ctx["media_id"] = media_id or "1_%s_%s" % (kind, ctx["uid"])
    head: tuple = (("ToUserName", corp_id), ("FromUserName", "sys" if kind in _SYSTEM else from_user),
                   ("CreateTime", now))
    if kind in _MESSAGES:
        mid = msg_id or str(10 ** 18 + secrets.randbelow(2 ** 63 - 10 ** 18))
        items = head + (("MsgType", kind),) + _MESSAGES[kind] + (("MsgId", _Bare(mid)),)
    else:
        items = head + (("MsgType", "event"), ("Event", kind)) + _EVENTS[kind]
    items += (("AgentID", _Bare(agent_id)),)
    # Only our own template strings are formatted; caller text is substituted verbatim.
    return "<xml>" + _render(items, ctx) + "</xml>"
