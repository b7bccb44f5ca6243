"""A fake WeCom server API (gettoken, message/send and recall, media/get and upload, getcallbackip, group
robots' webhook/send, ...) for tests and `wecomd demo`.

It answers like WeCom does (wecom-protocol.md §8): errors as JSON with HTTP 200 and an errmsg with
"hint" and "from ip" noise, token errors 41001/40014/42001, media errors as JSON instead of bytes,
60020 for callers outside a trusted IP list. Beside it, /ip is a "what is my IP" service (plain
text), for `[wecom] ip_echo_url`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import struct
import time
import zlib
from typing import Dict, List, Optional, Set, Tuple

from tornado import httpserver, netutil, web

from wecomd.wecom import sandbox_kf

logger = logging.getLogger(__name__)

WEBHOOK = "/demo/webhook"  # not part of WeCom: the demo's webhook receiver
IP_ECHO = "/ip"  # not part of WeCom: a "what is my IP" service
GETTOKEN, SEND, MEDIA_GET, CALLBACK_IPS = ("/cgi-bin/gettoken", "/cgi-bin/message/send",
                                           "/cgi-bin/media/get", "/cgi-bin/getcallbackip")
USER_GET, DEPARTMENT_LIST = "/cgi-bin/user/get", "/cgi-bin/department/list"
MEDIA_UPLOAD, RECALL = "/cgi-bin/media/upload", "/cgi-bin/message/recall"
# media/upload's limits (§8.3): (largest size, the magic bytes of the accepted formats; None: any)
UPLOAD_LIMITS = {"image": (10 * 2**20, (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")), "voice": (2 * 2**20, (b"#!AMR\n",)),
                 "video": (10 * 2**20, None), "file": (20 * 2**20, None)}
AIBOT_RESPONSE = "/cgi-bin/aibot/response"
ROBOT_SEND = "/cgi-bin/webhook/send"  # a group robot (群机器人), authorised by ?key= alone
ROBOT_LIMITS = {"text": 2048, "markdown": 4096}  # bytes of content, by msgtype
TEXT_LIMIT = 2048  # bytes, for text and markdown content (§8.2)
MSGTYPES = frozenset({"text", "markdown", "image", "voice", "video", "file", "textcard", "news", "mpnews",
                      "miniprogram_notice", "template_card"})
MEDIA_MSGTYPES = frozenset({"image", "voice", "video", "file"})
ERRMSGS = {
    -1: "system busy", 40001: "invalid credential", 40003: "invalid userid", 40007: "invalid media_id",
    40008: "invalid message type", 40013: "invalid corpid", 40014: "invalid access_token",
    40056: "invalid agentid", 40058: "invalid Request Parameter", 41001: "access_token missing",
    41002: "corpid missing", 41004: "corpsecret missing", 41011: "missing agentid",
    41016: "missing title", 41033: "missing description", 42001: "access_token expired",
    40004: "invalid media type", 40005: "invalid file type", 40006: "invalid file size",
    44001: "empty media data", 44004: "empty content", 45002: "content size out of limit", 45009: "api freq out of limit",
    45033: "api concurrent out of limit", 48002: "api forbidden",
    60020: "not allow to access from your ip", 81013: "user & party & tag all invalid", 93000: "invalid webhook url",
    82001: "All touser & toparty & totag invalid", 830002: "file size too large, use range request",
}
_HIDDEN_PARAMS = ("access_token", "corpsecret")


class FakeWecom:
    """The state of the fake server; tests inspect `calls`, `sent` and `media`, and inject errors.

    `apps` maps each accepted secret to its corp_id; None accepts any non-empty pair. Tokens live
    `token_ttl` seconds of real time, and gettoken returns the same token while it is valid.

    Callers are seen from `egress_ip` when it is set (a stand-in for a public address), else from
    their socket address; with `trusted_ips` set, every API call from another address gets 60020.
    """

    def __init__(self, apps: Optional[Dict[str, str]] = None, token_ttl: int = 7200) -> None:
        self.apps = dict(apps) if apps is not None else None
        self.token_ttl = token_ttl
        self.calls: List[Tuple[str, dict]] = []  # (path, query or JSON body without tokens or secrets)
        self.sent: List[dict] = []  # accepted message/send payloads, each with its "msgid"
        self.suppressed: List[dict] = []  # sends dropped by enable_duplicate_check (answered ok)
        self._delivered: Dict[str, float] = {}  # JSON of a duplicate-checked send -> when (monotonic)
        self.media: Dict[str, Tuple[bytes, str, str]] = {}  # media_id -> (body, content_type, filename)
        self.tokens: Dict[str, float] = {}  # every token issued -> when it expires (time.monotonic)
        self.unknown_users: Set[str] = set()  # lower-case UserIDs that message/send reports invalid
        self.unlicensed_users: Set[str] = set()  # lower-case UserIDs without a license: unlicenseduser
        self.uploads: List[dict] = []  # media/upload calls accepted: {"type", "media_id", "filename", "size"}
        self.recalled: List[str] = []  # msgids message/recall took back
        self.callback_ips: List[str] = ["127.0.0.1"]
        # The address book user/get and department/list answer from: userid -> {"name", "department"
        # (ids), "position"}; a UserID not here is 60111, one in `hidden_users` 60011 (not visible).
        self.users: Dict[str, dict] = {}
        self.departments: List[dict] = [{"id": 1, "name": "总部", "parentid": 0}]
        self.hidden_users: Set[str] = set()
        self.latency = 0.0  # seconds every API answer waits (bench/contacts.py)
        # 智能机器人 response_url calls: response_code -> the body posted. A code works once (§6).
        self.bot_responses: Dict[str, dict] = {}
        # A bot message's media URL (/bot-media/<id>) -> (the encrypted bytes, file name or None).
        self.bot_media: Dict[str, Tuple[bytes, Optional[str]]] = {}
        # Group robots: the keys that exist (any other key gets 93000) and what each was sent, in
        # order ({"key", "msgtype", "content"}); a test injects 45009 with fail_next(ROBOT_SEND, 45009).
        self.robot_keys: Set[str] = set()
        self.robot_messages: List[dict] = []
        self.range_limit = 20 * 2**20  # media/get larger than this needs a Range (errcode 830002)
        self.egress_ip: Optional[str] = None
        self.trusted_ips: Optional[Set[str]] = None  # None: every caller is trusted
        self._current: Dict[Tuple[str, str], str] = {}  # (corpid, secret) -> its valid token
        self._failures: Dict[str, List[Tuple[int, str, int]]] = {}
        self.kf = sandbox_kf.FakeKf(self.media)  # 微信客服 (sandbox_kf)

    def duplicate(self, message: dict) -> bool:
        """enable_duplicate_check: True when the same request JSON was delivered within
        duplicate_check_interval seconds (default 1800); such a send is answered ok, not delivered."""
        if str(message.get("enable_duplicate_check", 0)) != "1":
            return False
        key, now = json.dumps(message, sort_keys=True, ensure_ascii=False), time.monotonic()
        interval = int(message.get("duplicate_check_interval") or 1800)
        if now - self._delivered.get(key, -math.inf) < interval:
            return True
        self._delivered[key] = now
        return False

    @property
    def gettoken_count(self) -> int:
        """How many gettoken requests arrived, failed ones included."""
        return sum(1 for path, _ in self.calls if path == GETTOKEN)

    def fail_next(self, path: str, errcode: int, errmsg: str = "", times: int = 1,
                  http_status: int = 200) -> None:
        """Answer the next `times` requests to `path` with this errcode (or a bare HTTP error status)."""
        self._failures.setdefault(path, []).extend([(errcode, errmsg, http_status)] * times)

    def expire_tokens(self) -> None:
        """Make every issued token expired: its next use gets 42001, and gettoken issues a new one."""
        self.tokens = dict.fromkeys(self.tokens, float("-inf"))
        self._current.clear()

    def add_media(self, body: bytes, content_type: str, filename: str) -> str:
        media_id = "1" + secrets.token_urlsafe(30)
        self.media[media_id] = (body, content_type, filename)
        return media_id

    def issue_token(self, corpid: str, secret: str) -> Tuple[int, str, int]:
        """(errcode, access_token, expires_in) for a gettoken request."""
        errcode = self._credential_error(corpid, secret)
        if errcode:
            return errcode, "", 0
        now, token = time.monotonic(), self._current.get((corpid, secret))
        if token is None or self.tokens[token] <= now:
            token = secrets.token_urlsafe(96)  # real ones are a couple of hundred characters
            self.tokens[token], self._current[(corpid, secret)] = now + self.token_ttl, token
        return 0, token, max(1, round(self.tokens[token] - now))

    def token_error(self, token: str) -> int:
        """0 for a valid access token, else WeCom's errcode for it."""
        if not token:
            return 41001
        if token not in self.tokens:
            return 40014
        return 42001 if self.tokens[token] <= time.monotonic() else 0

    def _credential_error(self, corpid: str, secret: str) -> int:
        if not corpid:
            return 41002
        if not secret:
            return 41004
        if self.apps is None or self.apps.get(secret) == corpid:
            return 0
        if corpid not in self.apps.values():
            return 40013
        return 40091 if secret in self.apps else 40001

    def _take_failure(self, path: str) -> Optional[Tuple[int, str, int]]:
        queue = self._failures.get(path)
        return queue.pop(0) if queue else None


def noisy_errmsg(errcode: int, text: str = "", ip: str = "127.0.0.1") -> str:
    """An errmsg with the noise WeCom appends (§8.2: branch on errcode, never on this text)."""
    text = text or ERRMSGS.get(errcode, "error")
    return "%s, hint: [%d_%s], from ip: %s, more info at https://open.work.weixin.qq.com/" \
           "devtool/query?e=%d" % (text, int(time.time()), secrets.token_hex(4), ip, errcode)


class _FakeHandler(web.RequestHandler):
    def initialize(self, fake: FakeWecom) -> None:
        self.fake = fake

    @property
    def caller_ip(self) -> str:
        return self.fake.egress_ip or self.request.remote_ip

    async def prepare(self) -> None:
        if self.fake.latency:  # a stand-in for the round trip to qyapi.weixin.qq.com (benchmarks)
            await asyncio.sleep(self.fake.latency)
        self.fake.calls.append((self.request.path, self._recorded()))
        trusted = self.fake.trusted_ips
        if trusted is not None and self.request.path.startswith("/cgi-bin/") and self.caller_ip not in trusted:
            return self.answer(60020)
        failure = self.fake._take_failure(self.request.path)
        if failure is not None:
            errcode, text, status = failure
            if status != 200:
                self.set_status(status)
                self.finish("fake failure %d" % status)
            else:
                self.answer(errcode, text)  # finishing in prepare() skips the method

    def answer(self, errcode: int = 0, text: str = "", **fields) -> None:
        errmsg = noisy_errmsg(errcode, text, self.caller_ip) if errcode else "ok"
        body = {"errcode": errcode, "errmsg": errmsg, **fields}
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        if errcode:
            self.set_header("Error-Code", str(errcode))
        self.finish(json.dumps(body, ensure_ascii=False))

    def token_ok(self) -> bool:
        """Check the access_token; on failure the error is answered already."""
        errcode = self.fake.token_error(self.get_query_argument("access_token", ""))
        if errcode:
            self.answer(errcode)
        return not errcode

    def compute_etag(self) -> None:
        return None

    def json_body(self) -> Optional[dict]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _recorded(self) -> dict:
        if self.request.method == "POST":
            body = self.json_body()
            return body if body is not None else {"body": self.request.body.decode("utf-8", "replace")}
        return {name: self.get_query_argument(name) for name in self.request.query_arguments
                if name not in _HIDDEN_PARAMS}


class GettokenHandler(_FakeHandler):
    def get(self) -> None:
        errcode, token, expires_in = self.fake.issue_token(self.get_query_argument("corpid", ""),
                                                           self.get_query_argument("corpsecret", ""))
        if errcode:
            return self.answer(errcode)
        self.answer(access_token=token, expires_in=expires_in)


class SendHandler(_FakeHandler):
    def get(self) -> None:
        self.answer(40058, "require POST method")

    def post(self) -> None:
        if not self.token_ok():
            return
        message = self.json_body()
        if message is None:
            return self.answer(40058, "Warning: wrong json format.")
        error = _message_error(message, self.fake.media) or _recipient_error(message, self.fake)
        if error:
            return self.answer(error)
        invalid = [user for user in _users(message) if user in self.fake.unknown_users]
        unlicensed = [user for user in _users(message) if user in self.fake.unlicensed_users]
        msgid = secrets.token_urlsafe(40)
        if self.fake.duplicate(message):
            self.fake.suppressed.append({**message, "msgid": msgid})
        else:
            self.fake.sent.append({**message, "msgid": msgid})
        self.answer(invaliduser="|".join(invalid), invalidparty="", invalidtag="",
                    unlicenseduser="|".join(unlicensed), msgid=msgid)


class RecallHandler(_FakeHandler):
    """message/recall {"msgid"}: a message this corp's apps sent, once; an unknown msgid is refused."""

    def post(self) -> None:
        if not self.token_ok():
            return
        body = self.json_body()
        msgid = body.get("msgid") if body is not None else None
        if not isinstance(msgid, str) or not msgid:
            return self.answer(40058, "msgid missing")
        known = {message["msgid"] for message in self.fake.sent}
        if msgid not in known or msgid in self.fake.recalled:
            return self.answer(40058, "invalid msgid")
        self.fake.recalled.append(msgid)
        self.answer()


class UploadHandler(_FakeHandler):
    """media/upload?type=: one file in the multipart field `media`, checked against §8.3's limits."""

    def _recorded(self) -> dict:
        return {"type": self.get_query_argument("type", "")}  # never the file itself

    def post(self) -> None:
        if not self.token_ok():
            return
        kind = self.get_query_argument("type", "")
        if kind not in UPLOAD_LIMITS:
            return self.answer(40004)
        files = self.request.files.get("media") or []
        if not files or not files[0].body:
            return self.answer(44001)
        upload = files[0]
        largest, magic = UPLOAD_LIMITS[kind]
        if len(upload.body) <= 5 or len(upload.body) > largest:
            return self.answer(40006)
        if magic is not None and not upload.body.startswith(magic) or kind == "video" and upload.body[4:8] != b"ftyp":
            return self.answer(40005)
        media_id = self.fake.add_media(upload.body, upload.content_type or "application/octet-stream",
                                       upload.filename or "media")
        self.fake.uploads.append({"type": kind, "media_id": media_id, "filename": upload.filename,
                                  "size": len(upload.body)})
        self.answer(type=kind, media_id=media_id, created_at=str(int(time.time())))


class MediaHandler(_FakeHandler):
    def get(self) -> None:
        if not self.token_ok():
            return
        found = self.fake.media.get(self.get_query_argument("media_id", ""))
        if found is None:
            return self.answer(40007)
        body, content_type, filename = found
        span = _byte_range(self.request.headers.get("Range", ""), len(body))
        if span is None and len(body) > self.fake.range_limit:
            return self.answer(830002)
        self.set_header("Content-Type", content_type)
        # Raw UTF-8 in the header, as WeCom sends it (tornado writes header text as latin-1)
        self.set_header("Content-Disposition", 'attachment; filename="%s"'
                        % filename.encode("utf-8").decode("latin-1"))
        if span is not None:
            start, end = span
            self.set_status(206)
            self.set_header("Content-Range", "bytes %d-%d/%d" % (start, end, len(body)))
            body = body[start:end + 1]
        self.finish(body)


class CallbackIpHandler(_FakeHandler):
    def get(self) -> None:
        if self.token_ok():
            self.answer(ip_list=list(self.fake.callback_ips))


class UserGetHandler(_FakeHandler):
    """user/get: what a self-built app created after 2022-06-20 gets: no avatar, mobile or email."""

    def get(self) -> None:
        if not self.token_ok():
            return
        userid = self.get_query_argument("userid", "")
        if not userid:
            return self.answer(41009, "missing userid")
        if userid in self.fake.hidden_users:
            return self.answer(60011, "no privilege to access/modify contact/party/agent")
        user = self.fake.users.get(userid)
        if user is None:
            return self.answer(60111, "invalid string value `%s`. userid not found" % userid)
        self.answer(userid=userid, name=user.get("name", userid), department=list(user.get("department", [1])),
                    position=user.get("position", ""), status=1)


class AibotResponseHandler(_FakeHandler):
    """aibot/response?response_code=...: a bot's one active reply to a message (wecom-aibot.md §6)."""

    def post(self) -> None:
        code = self.get_query_argument("response_code", "")
        body = self.json_body()
        if not code or body is None or body.get("msgtype") not in ("markdown", "template_card"):
            return self.answer(40058, "invalid request")
        if code in self.fake.bot_responses:
            return self.answer(40014, "response_code already used")
        self.fake.bot_responses[code] = body
        self.answer()


class BotMediaHandler(_FakeHandler):
    """Not an API: the URL of a bot message's image or file, serving its encrypted bytes."""

    def get(self, media_id: str) -> None:
        found = self.fake.bot_media.get(media_id)
        if found is None:
            self.set_status(404)
            return self.finish()
        body, name = found
        self.set_header("Content-Type", "application/octet-stream")
        if name:
            self.set_header("Content-Disposition", 'attachment; filename="%s"' % name.encode("utf-8").decode("latin-1"))
        self.finish(body)


class RobotSendHandler(_FakeHandler):
    """webhook/send?key=: a group robot's message, text or markdown, as WeCom answers it."""

    def post(self) -> None:
        key = self.get_query_argument("key", "")
        if key not in self.fake.robot_keys:
            return self.answer(93000)
        body = self.json_body()
        msgtype = body.get("msgtype") if body is not None else None
        if msgtype not in ROBOT_LIMITS:
            return self.answer(40008 if body is not None else 40058)
        content = body.get(msgtype).get("content") if isinstance(body.get(msgtype), dict) else None
        if not isinstance(content, str) or not content:
            return self.answer(44004)
        if len(content.encode("utf-8")) > ROBOT_LIMITS[msgtype]:
            return self.answer(40058, "%s.content exceed max length %d" % (msgtype, ROBOT_LIMITS[msgtype]))
        self.fake.robot_messages.append({"key": key, "msgtype": msgtype, "content": content})
        self.answer()


class DepartmentListHandler(_FakeHandler):
    def get(self) -> None:
        if self.token_ok():
            self.answer(department=list(self.fake.departments))


class WebhookHandler(_FakeHandler):
    """Not WeCom: a stand-in for an operator's webhook receiver, for `wecomd demo`. It takes the
    forwarded message (recorded in `calls`) and answers without a reply."""

    def post(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish("{}")


class IpEchoHandler(_FakeHandler):
    """Not WeCom: a "what is my IP" service answering the caller's address as plain text."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(self.caller_ip)


class ForbiddenHandler(_FakeHandler):
    """Every API the fake does not implement."""

    def get(self, *_args) -> None:
        self.answer(48002)

    post = get


def make_app(fake: FakeWecom) -> web.Application:
    """The fake WeCom API as a tornado Application serving `fake`."""
    routes = [(GETTOKEN, GettokenHandler), (SEND, SendHandler), (MEDIA_GET, MediaHandler),
              (CALLBACK_IPS, CallbackIpHandler), (USER_GET, UserGetHandler), (DEPARTMENT_LIST, DepartmentListHandler),
              (AIBOT_RESPONSE, AibotResponseHandler), (r"/bot-media/([A-Za-z0-9_-]+)", BotMediaHandler), (MEDIA_UPLOAD, UploadHandler), (RECALL, RecallHandler),
              (ROBOT_SEND, RobotSendHandler), *sandbox_kf.routes(_FakeHandler),
              (WEBHOOK, WebhookHandler), (IP_ECHO, IpEchoHandler),
              (r"/(.*)", ForbiddenHandler)]
    return web.Application([(path, handler, dict(fake=fake)) for path, handler in routes],
                           log_function=_log_request)


async def start(fake: FakeWecom, host: str = "127.0.0.1", port: int = 0) -> Tuple[httpserver.HTTPServer, str]:
    """Serve `fake` on host:port (0 picks a free port); return the server and its base URL."""
    sockets = netutil.bind_sockets(port, host)
    server = httpserver.HTTPServer(make_app(fake))
    server.add_sockets(sockets)
    shown = "[%s]" % host if ":" in host else host
    return server, "http://%s:%d" % (shown, sockets[0].getsockname()[1])


def seed_samples(fake: FakeWecom) -> Dict[str, str]:
    """Add a small PNG, a one-second AMR voice clip and a text file; return kind -> media_id."""
    text = "这是 wecomd 演示的示例文件。\nA sample file from the wecomd demo.\n".encode("utf-8")
    return {
        "image": fake.add_media(sample_png(), "image/png", "sample.png"),
        "voice": fake.add_media(sample_amr(), "audio/amr", "sample.amr"),
        "file": fake.add_media(text, "text/plain", "示例说明.txt"),
    }


def seed_directory(fake: FakeWecom) -> None:
    """The demo's simulated users as user/get answers them: Chinese names, departments, positions."""
    fake.departments = [{"id": 1, "name": "总部", "parentid": 0}, {"id": 2, "name": "IT 支持部", "parentid": 1},
                        {"id": 3, "name": "财务部", "parentid": 1}, {"id": 4, "name": "行政部", "parentid": 1},
                        {"id": 5, "name": "市场部", "parentid": 1}]
    fake.users.update({
        "zhangsan": {"name": "张三", "department": [2], "position": "运维工程师"},
        "lisi": {"name": "李四", "department": [3], "position": "会计"},
        "wangwu": {"name": "王五", "department": [4], "position": "行政主管"},
        "zhaoliu": {"name": "赵六", "department": [5, 2], "position": "市场专员"},
    })


def sample_png(width: int = 96, height: int = 96) -> bytes:
    """An RGB gradient as a valid PNG file."""
    rows = b"".join(b"\x00" + bytes(channel for x in range(width)
                                    for channel in (40 + 190 * x // width, 120 + 100 * y // height,
                                                    230 - 100 * x // width))
                    for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows, 9))
            + _png_chunk(b"IEND", b""))


def sample_amr(seconds: float = 1.0) -> bytes:
    """AMR-NB as WeCom delivers voice: the magic line, then 20 ms frames of mode 7 (12.2 kbit/s)."""
    frame = bytes([7 << 3 | 0x04]) + bytes(31)  # frame header (mode 7, quality bit) + 244 bits of speech
    return b"#!AMR\n" + frame * int(seconds * 50)


# --- helpers -----------------------------------------------------------------------------------

def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _message_error(message: dict, media: dict) -> int:
    """The errcode WeCom gives for a malformed message/send body, or 0."""
    agentid, msgtype = message.get("agentid"), message.get("msgtype")
    if agentid is None:
        return 41011
    if not isinstance(agentid, int) or isinstance(agentid, bool) or agentid <= 0:
        return 40056
    if msgtype not in MSGTYPES:
        return 40008
    content = message.get(msgtype)
    if not isinstance(content, dict):
        return 40058
    if msgtype in ("text", "markdown"):
        text = content.get("content")
        if not isinstance(text, str) or not text:
            return 44004
        return 45002 if len(text.encode("utf-8")) > TEXT_LIMIT else 0
    if msgtype in MEDIA_MSGTYPES:
        return 0 if content.get("media_id") in media else 40007
    if msgtype == "textcard":
        return 41016 if not content.get("title") else 41033 if not content.get("description") else 0
    return 0


def _recipient_error(message: dict, fake: FakeWecom) -> int:
    if not any(message.get(field) for field in ("touser", "toparty", "totag")):
        return 82001
    users = _users(message)
    if users and not message.get("toparty") and not message.get("totag") \
            and all(user in fake.unknown_users for user in users):
        return 81013
    return 0


def _users(message: dict) -> List[str]:
    touser = str(message.get("touser") or "")
    return [] if touser == "@all" else [user.lower() for user in touser.split("|") if user]


def _byte_range(header: str, size: int) -> Optional[Tuple[int, int]]:
    match = re.fullmatch(r"\s*bytes=(\d+)-(\d*)\s*", header)
    if not match or int(match.group(1)) >= size:
        return None
    start = int(match.group(1))
    end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
    return (start, end) if end >= start else None


def _log_request(handler: web.RequestHandler) -> None:
    # The path only: the query holds access tokens and corpsecrets.
    logger.debug("fake wecom %d %s %s", handler.get_status(), handler.request.method, handler.request.path)
