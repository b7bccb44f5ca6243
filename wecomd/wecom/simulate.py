"""WeCom's side of the callback protocol, played against any URL (`wecomd simulate`).

Builds realistic plaintexts for every message and event kind (docs/wecom-protocol.md §5-§6),
wraps them in the encrypted POST envelope (§4), performs the GET URL verification (§2) and
checks and decrypts the passive reply envelope the server answers with (§4, §7).
"""
from __future__ import annotations

import argparse
import hmac
import logging
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Optional
from urllib.parse import quote, urlencode

from defusedxml import DefusedXmlException, ElementTree
from tornado import httpclient

from wecomd.wecom.crypto import CryptoError, WecomCrypto, signature

logger = logging.getLogger(__name__)


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


def _cdata(text: str) -> str:
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
            inner = _cdata(value.format_map(ctx))
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


@dataclass
class Result:
    """The outcome of one request: HTTP status, raw body, decrypted reply, timing, error text."""

    status: int
    body: bytes
    reply: Optional[str]
    elapsed_ms: float
    error: Optional[str]

    @property
    def ok(self) -> bool:
        """True when the request and every check on its answer succeeded."""
        return self.error is None


def _digits(n: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(n))


def _snippet(body: bytes, limit: int = 120) -> str:
    return repr(body[:limit]) + ("..." if len(body) > limit else "")


class Simulator:
    """Plays WeCom against one callback URL with one app's token, key and corp id.

    Owns a private AsyncHTTPClient created on first use; call `close()` when done.
    """

    def __init__(self, url: str, *, token: str, aes_key: str, corp_id: str,
                 agent_id: str = "1000002", timeout: float = 10.0) -> None:
        self.url = url
        self.corp_id = corp_id
        self.agent_id = agent_id
        self.timeout = timeout
        self._token = token
        self._crypto = WecomCrypto(token, aes_key, corp_id)  # raises InvalidKeyError
        self._client: Optional[httpclient.AsyncHTTPClient] = None

    def close(self) -> None:
        """Close the HTTP client (safe to call more than once)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _signed_url(self, encrypt: str, timestamp: str, nonce: str, **extra: str) -> str:
        params = {"msg_signature": signature(self._token, timestamp, nonce, encrypt),
                  "timestamp": timestamp, "nonce": nonce, **extra}
        # quote(safe="") turns + / = into %2B %2F %3D: encoded exactly once (§2, §9.1).
        query = urlencode(params, quote_via=quote, safe="")
        return self.url + ("&" if "?" in self.url else "?") + query

    async def _fetch(self, url: str, body: Optional[bytes] = None) -> tuple[int, bytes, float, Optional[str]]:
        if self._client is None:
            self._client = httpclient.AsyncHTTPClient(force_instance=True)
        request = httpclient.HTTPRequest(
            url, method="GET" if body is None else "POST", body=body, request_timeout=self.timeout,
            follow_redirects=False,  # report a redirect as the server's answer
            headers=None if body is None else {"Content-Type": "text/xml; charset=utf-8"})
        logger.debug("simulate: %s %s", request.method, self.url)
        start = time.perf_counter()
        try:
            response = await self._client.fetch(request, raise_error=False)
        except (OSError, ValueError, httpclient.HTTPClientError) as exc:
            return 599, b"", (time.perf_counter() - start) * 1000, "request failed: %s" % exc
        return response.code, response.body or b"", (time.perf_counter() - start) * 1000, None

    async def verify(self) -> Result:
        """Perform the GET URL verification; ok only for a 200 whose body is exactly the echo."""
        echo = _digits(19).encode("ascii")  # WeCom's echo plaintexts are ~19 digits (§2)
        echostr = self._crypto.encrypt(echo)
        url = self._signed_url(echostr, str(int(time.time())), _digits(10), echostr=echostr)
        status, body, ms, error = await self._fetch(url)
        if error is None and status != 200:
            error = "HTTP %d (expected 200), body %s" % (status, _snippet(body))
        elif error is None and body != echo:
            error = "body %s is not the bare echo plaintext %r" % (_snippet(body), echo.decode())
        return Result(status, body, None, ms, error)

    async def send(self, plaintext: str, *, repeat: int = 1) -> list[Result]:
        """POST `plaintext` in an encrypted envelope `repeat` times, byte-identical each time.

        A WeCom retry reuses timestamp, nonce and ciphertext, so the repeats do too.
        Each non-empty 200 body must be a reply envelope with a valid MsgSignature.
        """
        timestamp, nonce = str(int(time.time())), _digits(10)
        encrypt = self._crypto.encrypt(plaintext.encode("utf-8"))
        body = ("<xml><ToUserName>%s</ToUserName><AgentID>%s</AgentID><Encrypt>%s</Encrypt></xml>" % (
            _cdata(self.corp_id), _cdata(self.agent_id), _cdata(encrypt))).encode("utf-8")
        url = self._signed_url(encrypt, timestamp, nonce)
        results = []
        for _ in range(repeat):
            status, raw, ms, error = await self._fetch(url, body)
            reply = None
            if error is None:
                reply, error = self._check_reply(status, raw)
            results.append(Result(status, raw, reply, ms, error))
        return results

    def _check_reply(self, status: int, body: bytes) -> tuple[Optional[str], Optional[str]]:
        if status != 200:
            return None, "HTTP %d (expected 200; WeCom would retry), body %s" % (status, _snippet(body))
        if not body.strip():
            return None, None
        try:
            root = ElementTree.fromstring(body)
        except (ElementTree.ParseError, DefusedXmlException) as exc:
            return None, "reply is not an XML envelope (%s): %s" % (exc, _snippet(body))
        env = {name: root.findtext(name) for name in ("Encrypt", "MsgSignature", "TimeStamp", "Nonce")}
        missing = [name for name, value in env.items() if not value]
        if missing:
            return None, "reply envelope lacks %s: %s" % (", ".join(missing), _snippet(body))
        return self._open_reply(env)

    def _open_reply(self, env: dict) -> tuple[Optional[str], Optional[str]]:
        # The reply is signed over its own TimeStamp and Nonce, not the request's (§4).
        expected = signature(self._token, env["TimeStamp"], env["Nonce"], env["Encrypt"])
        if not hmac.compare_digest(expected.encode(), env["MsgSignature"].encode("utf-8")):
            return None, ("reply MsgSignature {MsgSignature} does not match sha1(token, TimeStamp "
                          "{TimeStamp}, Nonce {Nonce}, Encrypt)".format_map(env))
        try:
            reply = self._crypto.decrypt(env["Encrypt"]).decode("utf-8")
        except CryptoError as exc:
            return None, "reply Encrypt does not decrypt: %s (code %d)" % (exc, exc.code)
        try:
            ElementTree.fromstring(reply.encode("utf-8"))
        except (ElementTree.ParseError, DefusedXmlException) as exc:
            return reply, "decrypted reply is not XML: %s" % exc
        return reply, None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `wecomd simulate` options to `parser`."""
    parser.add_argument("url", metavar="URL",
                        help="callback URL, e.g. http://127.0.0.1:8080/callback/helpdesk")
    parser.add_argument("--token", help="app Token (default: $WECOMD_SIM_TOKEN)")
    parser.add_argument("--aes-key", help="app EncodingAESKey, 43 chars (default: $WECOMD_SIM_AES_KEY)")
    parser.add_argument("--corp-id", help="CorpID (default: $WECOMD_SIM_CORP_ID)")
    parser.add_argument("--agent-id", default="1000002", help="AgentID (default: %(default)s)")
    checks = parser.add_mutually_exclusive_group()
    checks.add_argument("--verify-only", action="store_true", help="only do the GET URL verification")
    checks.add_argument("--no-verify", action="store_true", help="skip the GET URL verification")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--type", dest="kind", choices=KINDS, default="text", metavar="KIND",
                      help="message or event kind (default: text); one of: " + ", ".join(KINDS))
    what.add_argument("--xml", metavar="FILE", help="send this file's plaintext XML as-is")
    parser.add_argument("--from", dest="from_user", default="zhangsan", help="sender UserID")
    parser.add_argument("--content", default="hello", help="text content (text, link)")
    parser.add_argument("--event-key", default="", help="EventKey for menu and card events")
    parser.add_argument("--repeat", type=_positive_int, default=1,
                        help="send each envelope N times, identical, as WeCom retries do")
    parser.add_argument("--count", type=_positive_int, default=1,
                        help="send N distinct messages (with --xml: the file N times)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default: 10)")


class _UsageError(Exception):
    """A bad option value: reported in one line with exit code 2."""


def _setting(args: argparse.Namespace, attr: str, env: str, flag: str) -> str:
    value = getattr(args, attr, None) or os.environ.get(env, "")
    if not value:
        raise _UsageError("%s is required (or set %s)" % (flag, env))
    return value


def _simulator(args: argparse.Namespace) -> Simulator:
    token = _setting(args, "token", "WECOMD_SIM_TOKEN", "--token")
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", token):
        raise _UsageError("the token must be 1-32 letters or digits (got %d characters)" % len(token))
    aes_key = _setting(args, "aes_key", "WECOMD_SIM_AES_KEY", "--aes-key")
    corp_id = _setting(args, "corp_id", "WECOMD_SIM_CORP_ID", "--corp-id")
    try:
        return Simulator(args.url, token=token, aes_key=aes_key, corp_id=corp_id,
                         agent_id=args.agent_id, timeout=args.timeout)
    except CryptoError as exc:  # the message names lengths and rules, never the key itself
        raise _UsageError("bad --aes-key: %s" % exc) from None


def _plaintexts(args: argparse.Namespace, sim: Simulator) -> list[tuple[str, str]]:
    if args.xml:
        try:
            with open(args.xml, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise _UsageError("cannot read --xml %s: %s" % (args.xml, exc)) from None
        return [("xml", text)] * args.count
    # Distinct CreateTimes keep N events distinct under any dedup key (§4), ending at now.
    start = int(time.time()) - args.count + 1
    return [(args.kind, build(args.kind, corp_id=sim.corp_id, agent_id=sim.agent_id,
                              from_user=args.from_user, content=args.content,
                              event_key=args.event_key, create_time=start + i))
            for i in range(args.count)]


def _line(label: str, result: Result) -> str:
    if result.error:
        return "%s: %d, error: %s (%.1f ms)" % (label, result.status, result.error, result.elapsed_ms)
    if result.reply is None:
        return "%s: %d, no reply (%.1f ms)" % (label, result.status, result.elapsed_ms)
    # One line per step: drop the newlines between elements, not inside them.
    reply = re.sub(r">\s*\n\s*<", "><", result.reply.strip())
    return "%s: %d, reply: %s (%.1f ms)" % (label, result.status, reply, result.elapsed_ms)


async def _steps(args: argparse.Namespace, sim: Simulator,
                 plaintexts: list[tuple[str, str]]) -> list[Result]:
    results: list[Result] = []
    if not args.no_verify:
        result = await sim.verify()
        results.append(result)
        hint = "" if args.verify_only else "; no messages sent (--no-verify skips the GET)"
        print("verify: ok (%.1f ms)" % result.elapsed_ms if result.ok else
              "verify: failed: %s (%.1f ms)%s" % (result.error, result.elapsed_ms, hint), flush=True)
        if not result.ok or args.verify_only:
            return results
    for number, (label, plaintext) in enumerate(plaintexts, 1):
        for attempt, result in enumerate(await sim.send(plaintext, repeat=args.repeat), 1):
            suffix = " try %d/%d" % (attempt, args.repeat) if args.repeat > 1 else ""
            print(_line("POST %s #%d%s" % (label, number, suffix), result), flush=True)
            results.append(result)
    return results


async def run(args: argparse.Namespace) -> int:
    """Run `wecomd simulate`: 0 when every step succeeded, 1 on any failure, 2 on bad options."""
    try:
        sim = _simulator(args)
        plaintexts = [] if args.verify_only else _plaintexts(args, sim)
    except _UsageError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        results = await _steps(args, sim, plaintexts)
    finally:
        sim.close()
    elapsed = max(time.perf_counter() - started, 1e-9)
    failed = sum(1 for r in results if not r.ok)
    print("sent %d, ok %d, failed %d, %.1f msg/s" % (
        len(results), len(results) - failed, failed, len(results) / elapsed))
    return 0 if failed == 0 and results else 1
