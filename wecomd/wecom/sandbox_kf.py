"""微信客服 in the fake WeCom (sandbox.py): the state (`FakeKf`, kept by FakeWecom as `kf`) and the
kf/* APIs as WeCom behaves per wecom-kf.md, for the tests and `wecomd demo`.

- `push`, `push_event` and `enter_session` add to an account's log what a customer, a servicer or
  WeCom did, and return the item with the token its kf_msg_or_event callback would carry (10 min).
- kf/sync_msg pages that log from an opaque cursor (absent: the earliest item of the last 3 days);
  `empty_pages` and `duplicate_next` make it misbehave as WeCom may, `sync_calls` records requests.
- kf/send_msg keeps the reply window (48 h after the customer last wrote, 5 sends), the session
  state and unique msgids; send_msg_on_event takes each code once, within its life and state.
- kf/service_state/get and trans (only the moves wecom.kf.TRANSITIONS lists), customer/batchget
  (at most 100 ids), recall_msg (2 minutes), account/list and servicer/list.
- Not WeCom: POST /sandbox/kf/push and /sandbox/kf/enter, for other processes (`wecomd simulate --kf`).

Errcodes: 95007 "invalid msg token", 95018 "send msg session status invalid" and 40058 are WeCom's
as reported. UNVERIFIED, this fake's choices: 95010 for a msgid used already, 95001 outside the
48 hours, 95002 after 5 sends, 95013 for a send to an ended session, 95004 for an unknown
open_kfid, 95016 for a move WeCom does not allow, 95014 for a servicer who is not 接待中, 95007 also
for a used, expired or unknown send_msg_on_event code, 40058 for a bad cursor and every recall
refusal, 45002 for a text over 2,048 bytes; that a msgid of send_msg_on_event counts as used for
send_msg too.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from wecomd.wecom import kf as kfproto

TOKEN_LIFE = 600.0  # a callback's sync_msg token, seconds
HISTORY = 3 * 86400.0  # sync_msg reaches back 3 days
RECALL_LIFE = 120.0
# send_msg_on_event codes: kind -> (seconds it lives, the state it needs then (None: any), msgtypes)
CODES = {"welcome": (20.0, None, ("text", "msgmenu")), "queue": (48 * 3600.0, 2, ("text",)),
         "human": (48 * 3600.0, 3, ("text",)), "end": (20.0, 4, ("text", "msgmenu"))}
TRANS_CODES = {2: "queue", 3: "human", 4: "end"}  # service_state/trans to a state -> its msg_code
MEDIA_TYPES = frozenset({"image", "voice", "video", "file"})
RECEPTION, STOPPED = 0, 1  # servicer/list status: 接待中, 停止接待

ACCOUNT_LIST, SERVICER_LIST = "/cgi-bin/kf/account/list", "/cgi-bin/kf/servicer/list"
SYNC_MSG, SEND_MSG, SEND_ON_EVENT = "/cgi-bin/kf/sync_msg", "/cgi-bin/kf/send_msg", "/cgi-bin/kf/send_msg_on_event"
STATE_GET, STATE_TRANS = "/cgi-bin/kf/service_state/get", "/cgi-bin/kf/service_state/trans"
CUSTOMER_BATCHGET, RECALL_MSG = "/cgi-bin/kf/customer/batchget", "/cgi-bin/kf/recall_msg"
PUSH, ENTER = "/sandbox/kf/push", "/sandbox/kf/enter"  # not WeCom

DEMO_ACCOUNT = "wkDEMO"
DEMO_CUSTOMERS = (("wmDemoXiaoming", "小明", 1), ("wmDemoLili", "莉莉", 2), ("wmDemoAwei", "阿伟", 1))


class KfRefusal(Exception):
    """An API call the fake answers with a WeCom errcode."""

    def __init__(self, errcode: int, text: str = "") -> None:
        super().__init__("%d %s" % (errcode, text))
        self.errcode, self.text = errcode, text


@dataclass
class Session:
    """One customer of one account as WeCom keeps it: 4 (ended/not started) until they write."""

    state: int = 4
    servicer: Optional[str] = None
    last_customer: Optional[float] = None  # send_time of the customer's last message
    sends: int = 0  # send_msg calls accepted since then
    coded: Set[int] = field(default_factory=set)  # states 2 and 3 gave their msg_code already


@dataclass
class Code:
    kind: str
    open_kfid: str
    external_userid: str
    expires: float
    used: bool = False


class FakeKf:
    """The 微信客服 side of FakeWecom. Tests add accounts, servicers and customers, push what people
    do, inspect `sent`, `event_sends`, `sync_calls` and `sessions`, and move the clock with `advance`."""

    def __init__(self, media: Optional[Mapping[str, Any]] = None) -> None:
        self.media = media if media is not None else {}  # FakeWecom's uploads: what media_ids exist
        self.accounts: Dict[str, dict] = {}  # open_kfid -> {"name", "avatar", "manage_privilege"}
        self.servicers: Dict[str, Dict[str, int]] = {}  # open_kfid -> userid -> RECEPTION or STOPPED
        self.customers: Dict[str, dict] = {}  # external_userid -> {"nickname", "avatar", "gender", "unionid"}
        self.contexts: Dict[str, dict] = {}  # external_userid -> the last enter_session's {scene, scene_param}
        self.log: Dict[str, List[dict]] = {}  # open_kfid -> its items, in order
        self.sessions: Dict[Tuple[str, str], Session] = {}
        self.codes: Dict[str, Code] = {}
        self.tokens: Dict[str, Tuple[str, float]] = {}  # callback token -> (open_kfid, expires)
        self.sent: List[dict] = []  # accepted send_msg bodies, each with its "msgid"
        self.event_sends: List[dict] = []  # accepted send_msg_on_event bodies, with "msgid" and the code's "kind"
        self.recalled: List[str] = []
        self.sync_calls: List[dict] = []  # every sync_msg request body
        self.empty_pages = 0  # answer this many pages {msg_list: [], has_more: 1} first
        self.duplicate_next = False  # the next page's last item comes again at the start of the one after
        self.offset = 0.0  # seconds added to the clock (advance)
        self._msgids: Dict[str, Set[str]] = {}  # open_kfid -> msgids used by sends
        self._sent_at: Dict[Tuple[str, str], float] = {}  # (open_kfid, msgid) of send_msg -> when

    # ------------------------------------------------------------ setting up

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock: tokens, codes, the reply window and recalls see the time pass."""
        self.offset += seconds

    def add_account(self, open_kfid: str, name: str = "", manage_privilege: bool = True) -> None:
        self.accounts[open_kfid] = {"name": name or open_kfid, "avatar": "https://wework.qpic.cn/kf/%s/0" % open_kfid,
                                    "manage_privilege": bool(manage_privilege)}
        self.servicers.setdefault(open_kfid, {})
        self.log.setdefault(open_kfid, [])

    def add_servicer(self, open_kfid: str, userid: str, status: int = RECEPTION) -> None:
        self._account(open_kfid)
        self.servicers[open_kfid][userid] = status

    def add_customer(self, external_userid: str, nickname: str = "", gender: int = 0) -> None:
        self.customers[external_userid] = {
            "nickname": nickname or "微信用户" + external_userid[-4:], "gender": gender,
            "avatar": "https://wx.qlogo.cn/mmhead/%s/0" % external_userid, "unionid": "oUnion" + external_userid}

    def session(self, open_kfid: str, external_userid: str) -> Session:
        return self.sessions.setdefault((open_kfid, external_userid), Session())

    # ------------------------------------------------------------ what people do

    def push(self, open_kfid: str, external_userid: Optional[str], content: Optional[str] = None,
             msgtype: str = "text", origin: int = kfproto.ORIGIN_CUSTOMER, servicer_userid: Optional[str] = None,
             event: Optional[dict] = None, send_time: Optional[int] = None, **body: Any) -> Tuple[dict, str]:
        """Append an item to the account's log (the account is added if new); return it and the token of
        its callback. Text takes `content` (and e.g. menu_id=); other types their body as keywords
        (media_id=...) or whole (image={...}). An `event` dict makes an event item (origin 4)."""
        self._account(open_kfid, create=True)
        item: dict = {"msgid": self._new_id(), "send_time": int(self.now()) if send_time is None else send_time,
                      "origin": origin, "msgtype": "event" if event is not None else msgtype}
        if event is not None:
            item["origin"] = kfproto.ORIGIN_SYSTEM
            item["event"] = dict({"open_kfid": open_kfid}, **event)
            self._on_event(open_kfid, item["event"], item["send_time"])
        else:
            item.update(open_kfid=open_kfid, external_userid=external_userid)
            if origin == kfproto.ORIGIN_SERVICER:
                item["servicer_userid"] = servicer_userid
            item[msgtype] = dict(body[msgtype]) if isinstance(body.get(msgtype), dict) else dict(body)
            if msgtype == "text":
                item["text"]["content"] = content or ""
            self._on_message(open_kfid, external_userid, origin, servicer_userid, item["send_time"])
        self.log[open_kfid].append(item)
        token = "ENC" + secrets.token_urlsafe(36)
        self.tokens[token] = (open_kfid, self.now() + TOKEN_LIFE)
        return item, token

    def push_event(self, open_kfid: str, event: dict, send_time: Optional[int] = None) -> Tuple[dict, str]:
        """An event item (event_type and its fields); session_status_change 1 and 3 get a msg_code."""
        return self.push(open_kfid, event.get("external_userid"), event=event, send_time=send_time)

    def enter_session(self, open_kfid: str, external_userid: str, scene: str = "", welcome_code: bool = True,
                      scene_param: str = "") -> Tuple[dict, str]:
        """The customer opens the chat: an enter_session event, with a fresh welcome_code (20 s) if asked."""
        event = {"event_type": "enter_session", "external_userid": external_userid, "scene": scene,
                 "scene_param": scene_param}
        if welcome_code:
            event["welcome_code"] = self._issue("welcome", open_kfid, external_userid)
        return self.push_event(open_kfid, event)

    def _on_message(self, open_kfid: str, external: Optional[str], origin: int, servicer: Optional[str],
                    send_time: int) -> None:
        if not external:
            return
        if external not in self.customers:
            self.add_customer(external)
        session = self.session(open_kfid, external)
        if origin == kfproto.ORIGIN_CUSTOMER:
            if session.state == 4:
                session.state, session.servicer, session.coded = 0, None, set()
            session.last_customer, session.sends = float(send_time), 0
        elif origin == kfproto.ORIGIN_SERVICER:
            session.state, session.servicer = 3, servicer

    def _on_event(self, open_kfid: str, event: dict, send_time: int) -> None:
        kind, external = event.get("event_type"), event.get("external_userid")
        if kind == "enter_session" and external:
            if external not in self.customers:
                self.add_customer(external)
            self.contexts[external] = {"scene": event.get("scene", ""), "scene_param": event.get("scene_param", "")}
        elif kind == "session_status_change" and external:
            change, session = event.get("change_type"), self.session(open_kfid, external)
            if change in (1, 2, 4):
                session.state, session.servicer = 3, event.get("new_servicer_userid")
            elif change == 3:
                session.state, session.servicer = 4, None
            if change in (1, 3) and "msg_code" not in event:
                event["msg_code"] = self._issue("human" if change == 1 else "end", open_kfid, external)
        elif kind == "servicer_status_change" and event.get("servicer_userid"):
            status = RECEPTION if event.get("status") == 1 else STOPPED
            self.servicers.setdefault(open_kfid, {})[event["servicer_userid"]] = status

    # ------------------------------------------------------------ the APIs (body -> answer fields)

    def account_list(self, body: dict) -> dict:
        offset, limit = _number(body, "offset", 0, 0, 1 << 31), _number(body, "limit", 100, 1, 100)
        accounts = [dict(open_kfid=kfid, **info) for kfid, info in self.accounts.items()]
        return {"account_list": accounts[offset:offset + limit]}

    def servicer_list(self, body: dict) -> dict:
        open_kfid = self._account(body.get("open_kfid"))
        return {"servicer_list": [{"userid": userid, "status": status}
                                  for userid, status in self.servicers[open_kfid].items()]}

    def sync_msg(self, body: dict) -> dict:
        self.sync_calls.append(dict(body))
        open_kfid = body.get("open_kfid")
        if not isinstance(open_kfid, str) or not open_kfid:
            raise KfRefusal(40058, "open_kfid missing")
        self._account(open_kfid)
        token = body.get("token")
        if token not in (None, ""):
            owner, expires = self.tokens.get(token, (None, 0.0)) if isinstance(token, str) else (None, 0.0)
            if owner != open_kfid or expires <= self.now():
                raise KfRefusal(95007, "invalid msg token")
        limit = _number(body, "limit", 1000, 1, 1000)
        start = self._cursor_index(open_kfid, body.get("cursor"))
        if self.empty_pages > 0:
            self.empty_pages -= 1
            return {"next_cursor": _cursor(open_kfid, start), "has_more": 1, "msg_list": []}
        log, oldest = self.log[open_kfid], self.now() - HISTORY
        page, index, last = [], start, start
        while index < len(log) and len(page) < limit:
            if log[index]["send_time"] >= oldest:
                page.append(log[index])
                last = index
            index += 1
        has_more = any(item["send_time"] >= oldest for item in log[index:])
        if self.duplicate_next and page:
            self.duplicate_next, index = False, last
        return {"next_cursor": _cursor(open_kfid, index), "has_more": int(has_more),
                "msg_list": json.loads(json.dumps(page))}

    def send_msg(self, body: dict) -> dict:
        open_kfid, external = self._account(body.get("open_kfid")), body.get("touser")
        if not isinstance(external, str) or not external:
            raise KfRefusal(40058, "touser missing")
        msgtype = self._checked_type(body, kfproto.SEND_TYPES)
        msgid = self._msgid(open_kfid, body.get("msgid"))
        session = self.session(open_kfid, external)
        if session.state in (2, 3):
            raise KfRefusal(kfproto.HUMAN_SERVING, "send msg session status invalid")
        if session.state == 4 and session.last_customer is not None:
            raise KfRefusal(95013, "conversation end")
        if session.last_customer is None or self.now() - session.last_customer > kfproto.WINDOW.total_seconds():
            raise KfRefusal(95001, "the customer has not written within 48 hours")
        if session.sends >= kfproto.MAX_SENDS:
            raise KfRefusal(95002, "over the limit of 5 messages since the customer last wrote")
        session.sends += 1
        self._msgids.setdefault(open_kfid, set()).add(msgid)
        self._sent_at[(open_kfid, msgid)] = self.now()
        self.sent.append(dict(body, msgid=msgid, msgtype=msgtype))
        return {"msgid": msgid}

    def send_msg_on_event(self, body: dict) -> dict:
        code = self.codes.get(body.get("code")) if isinstance(body.get("code"), str) else None
        if code is None or code.used or code.expires <= self.now():
            raise KfRefusal(95007, "invalid code: unknown, used or expired")
        _, state, msgtypes = CODES[code.kind]
        if state is not None and self.session(code.open_kfid, code.external_userid).state != state:
            raise KfRefusal(95007, "invalid code: the session left the state that gave it")
        msgtype = self._checked_type(body, frozenset(msgtypes))
        msgid = self._msgid(code.open_kfid, body.get("msgid"))
        code.used = True
        self._msgids.setdefault(code.open_kfid, set()).add(msgid)
        self.event_sends.append(dict(body, msgid=msgid, msgtype=msgtype, kind=code.kind,
                                     open_kfid=code.open_kfid, external_userid=code.external_userid))
        return {"msgid": msgid}

    def service_state_get(self, body: dict) -> dict:
        session = self.session(*self._customer(body))
        return {"service_state": session.state, "servicer_userid": session.servicer or ""}

    def service_state_trans(self, body: dict) -> dict:
        open_kfid, external = self._customer(body)
        session, new = self.session(open_kfid, external), body.get("service_state")
        if not isinstance(new, int) or isinstance(new, bool) or new not in kfproto.SERVICE_STATES:
            raise KfRefusal(40058, "invalid service_state")
        if not kfproto.allowed(session.state, new):
            raise KfRefusal(95016, "service state %d cannot change to %d" % (session.state, new))
        servicer = body.get("servicer_userid") if new == 3 else None
        if new == 3 and self.servicers[open_kfid].get(servicer) != RECEPTION:
            raise KfRefusal(95014, "servicer_userid is not a servicer of this account in reception (接待中)")
        first = new in (2, 3) and new not in session.coded
        session.state, session.servicer = new, servicer
        if first or new == 4:
            session.coded.add(new)
            return {"msg_code": self._issue(TRANS_CODES[new], open_kfid, external)}
        return {}

    def customer_batchget(self, body: dict) -> dict:
        ids = body.get("external_userid_list")
        if not isinstance(ids, list) or not ids or len(ids) > 100 or not all(isinstance(i, str) for i in ids):
            raise KfRefusal(40058, "external_userid_list must hold 1 to 100 ids")
        context = str(body.get("need_enter_session_context", 0)) == "1"
        found, invalid = [], []
        for external in dict.fromkeys(ids):
            if external not in self.customers:
                invalid.append(external)
                continue
            customer = dict(external_userid=external, **self.customers[external])
            if context:
                customer["enter_session_context"] = dict({"scene": "", "scene_param": ""}, **self.contexts.get(external, {}))
            found.append(customer)
        return {"customer_list": found, "invalid_external_userid": invalid}

    def recall_msg(self, body: dict) -> dict:
        open_kfid, msgid = self._account(body.get("open_kfid")), body.get("msgid")
        sent_at = self._sent_at.get((open_kfid, msgid)) if isinstance(msgid, str) else None
        if sent_at is None or msgid in self.recalled:
            raise KfRefusal(40058, "invalid msgid: not a send_msg message of this account, or recalled")
        if self.now() - sent_at > RECALL_LIFE:
            raise KfRefusal(40058, "the message was sent over 2 minutes ago and cannot be recalled")
        self.recalled.append(msgid)
        return {}

    # ------------------------------------------------------------ helpers

    def _account(self, open_kfid: Any, create: bool = False) -> str:
        if not isinstance(open_kfid, str) or not open_kfid:
            raise KfRefusal(40058, "open_kfid missing")
        if open_kfid not in self.accounts:
            if not create:
                raise KfRefusal(95004, "invalid open_kfid")
            self.add_account(open_kfid)
        return open_kfid

    def _customer(self, body: dict) -> Tuple[str, str]:
        open_kfid, external = self._account(body.get("open_kfid")), body.get("external_userid")
        if not isinstance(external, str) or not external:
            raise KfRefusal(40058, "external_userid missing")
        return open_kfid, external

    def _checked_type(self, body: dict, msgtypes: frozenset) -> str:
        msgtype = body.get("msgtype")
        if msgtype not in msgtypes:
            raise KfRefusal(40008, "invalid message type")
        content = body.get(msgtype)
        if not isinstance(content, dict):
            raise KfRefusal(40058, "%s missing" % msgtype)
        if msgtype == "text":
            text = content.get("content")
            if not isinstance(text, str) or not text:
                raise KfRefusal(44004, "empty content")
            if len(text.encode("utf-8")) > kfproto.TEXT_LIMIT:
                raise KfRefusal(45002, "content size out of limit")
        if msgtype in MEDIA_TYPES and content.get("media_id") not in self.media:
            raise KfRefusal(40007, "invalid media_id")
        return msgtype

    def _msgid(self, open_kfid: str, msgid: Any) -> str:
        if msgid is None or msgid == "":
            return self._new_id()
        if not isinstance(msgid, str) or not kfproto.MSGID_PATTERN.fullmatch(msgid):
            raise KfRefusal(40058, "invalid msgid")
        if msgid in self._msgids.get(open_kfid, ()):
            raise KfRefusal(95010, "msgid already used")
        return msgid

    def _issue(self, kind: str, open_kfid: str, external: str) -> str:
        code = secrets.token_urlsafe(24)
        self.codes[code] = Code(kind, open_kfid, external, self.now() + CODES[kind][0])
        return code

    def _new_id(self) -> str:
        return secrets.token_urlsafe(24)

    def _cursor_index(self, open_kfid: str, cursor: Any) -> int:
        if cursor in (None, ""):
            return 0
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)) if len(cursor) <= 64 else b""
        except (TypeError, ValueError):
            raw = b""
        if len(raw) != 14 or raw[8:] != _account_hash(open_kfid):
            raise KfRefusal(40058, "invalid cursor")
        return struct.unpack(">Q", raw[:8])[0]


def _cursor(open_kfid: str, index: int) -> str:
    """Opaque to the caller (19 characters): the log position and a hash of the account."""
    return base64.urlsafe_b64encode(struct.pack(">Q", index) + _account_hash(open_kfid)).decode("ascii").rstrip("=")


def _account_hash(open_kfid: str) -> bytes:
    return hashlib.sha256(open_kfid.encode("utf-8")).digest()[:6]


def _number(body: Mapping, name: str, default: int, lowest: int, highest: int) -> int:
    value = body.get(name, default)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not lowest <= value <= highest:
        raise KfRefusal(40058, "%s must be %d to %d" % (name, lowest, highest))
    return value


def demo_accounts(kf: FakeKf) -> None:
    """What `wecomd demo` shows: the account wkDEMO 售后客服 (managed through the API), zhangsan in
    reception and lisi stopped, and three customers with Chinese nicknames."""
    kf.add_account(DEMO_ACCOUNT, "售后客服", manage_privilege=True)
    kf.add_servicer(DEMO_ACCOUNT, "zhangsan", RECEPTION)
    kf.add_servicer(DEMO_ACCOUNT, "lisi", STOPPED)
    for external, nickname, gender in DEMO_CUSTOMERS:
        kf.add_customer(external, nickname, gender)


# ---------------------------------------------------------------- HTTP (mixed into sandbox._FakeHandler)

class _KfApi:
    """A kf/* API: the access token checked, the JSON body (or the query, for GET) handed to the
    FakeKf method named `operation`, its answer or refusal sent as WeCom does. Mixed with
    sandbox._FakeHandler, which gives `fake`, `token_ok`, `json_body` and `answer`."""

    operation, methods = "", ("POST",)

    def get(self) -> None:
        if "GET" not in self.methods:
            return self.answer(40058, "require POST method")
        if self.token_ok():
            self._run({name: self.get_query_argument(name) for name in self.request.query_arguments
                       if name != "access_token"})

    def post(self) -> None:
        if "POST" not in self.methods:
            return self.answer(40058, "require GET method")
        if not self.token_ok():
            return
        body = self.json_body()
        if body is None:
            return self.answer(40058, "Warning: wrong json format.")
        self._run(body)

    def _run(self, body: dict) -> None:
        try:
            fields = getattr(self.fake.kf, self.operation)(body)
        except KfRefusal as exc:
            return self.answer(exc.errcode, exc.text)
        self.answer(**fields)


class _SandboxPush:
    """Not WeCom: POST /sandbox/kf/push {open_kfid, external_userid, content, msgtype?, origin?,
    servicer_userid?} (or /sandbox/kf/enter {open_kfid, external_userid, scene?, scene_param?,
    welcome_code?}) -> {"item", "token"}; 400 {"error"} for a bad body."""

    enter = False

    def post(self) -> None:
        body = self.json_body()
        ids = body and (body.get("open_kfid"), body.get("external_userid"))
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        if not ids or not all(isinstance(i, str) and i and "/" not in i for i in ids):
            self.set_status(400)
            return self.finish({"error": "a JSON object with open_kfid and external_userid is required"})
        kf = self.fake.kf
        if self.enter:
            item, token = kf.enter_session(*ids, scene=str(body.get("scene") or ""),
                                           scene_param=str(body.get("scene_param") or ""),
                                           welcome_code=body.get("welcome_code", True) is not False)
        else:
            msgtype, origin = body.get("msgtype") or "text", body.get("origin", kfproto.ORIGIN_CUSTOMER)
            content = body.get("content")
            if (msgtype == "text" and not isinstance(content, str)) or origin not in (3, 5):
                self.set_status(400)
                return self.finish({"error": "text needs a content string; origin is 3 or 5"})
            extra = {msgtype: body[msgtype]} if isinstance(body.get(msgtype), dict) else {}
            item, token = kf.push(*ids, content=content, msgtype=msgtype, origin=origin,
                                  servicer_userid=body.get("servicer_userid"), **extra)
        self.finish(json.dumps({"item": item, "token": token}, ensure_ascii=False))


_APIS = ((ACCOUNT_LIST, "account_list", ("GET", "POST")), (SERVICER_LIST, "servicer_list", ("GET",)),
         (SYNC_MSG, "sync_msg", ("POST",)), (SEND_MSG, "send_msg", ("POST",)),
         (SEND_ON_EVENT, "send_msg_on_event", ("POST",)), (STATE_GET, "service_state_get", ("POST",)),
         (STATE_TRANS, "service_state_trans", ("POST",)), (CUSTOMER_BATCHGET, "customer_batchget", ("POST",)),
         (RECALL_MSG, "recall_msg", ("POST",)))


def routes(base: type) -> List[Tuple[str, type]]:
    """The kf routes for sandbox.make_app, each handler a subclass of `base` (sandbox._FakeHandler)."""
    found = [(path, type("Kf_" + operation, (_KfApi, base), {"operation": operation, "methods": methods}))
             for path, operation, methods in _APIS]
    found.append((PUSH, type("KfSandboxPush", (_SandboxPush, base), {})))
    found.append((ENTER, type("KfSandboxEnter", (_SandboxPush, base), {"enter": True})))
    return found
