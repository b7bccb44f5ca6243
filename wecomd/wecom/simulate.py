"""WeCom's side of the callback protocol, played against any URL (`wecomd simulate`).

Wraps plaintexts (wecomd.wecom.samples builds them for every kind) in the encrypted POST
envelope, performs the GET URL verification and checks and decrypts the passive reply envelope
the server answers with. The command line is wecomd.cli.simulate.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote, urlencode

from defusedxml import DefusedXmlException, ElementTree
from tornado import httpclient

from wecomd.wecom.crypto import CryptoError, WecomCrypto, signature
from wecomd.wecom.samples import cdata

logger = logging.getLogger(__name__)


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

    content_type = "text/xml; charset=utf-8"

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
            headers=None if body is None else {"Content-Type": self.content_type})
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
            cdata(self.corp_id), cdata(self.agent_id), cdata(encrypt))).encode("utf-8")
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


class BotSimulator(Simulator):
    """Plays WeCom's side of a 智能机器人: JSON envelopes, receive-id "", and the refresh polls of a
    streamed answer (wecom-aibot.md §5), which WeCom sends until a frame says finish."""

    content_type = "application/json"

    def __init__(self, url: str, *, token: str, aes_key: str, aibotid: str = "AIBOTID", timeout: float = 10.0) -> None:
        super().__init__(url, token=token, aes_key=aes_key, corp_id="", agent_id=aibotid, timeout=timeout)

    async def _post_json(self, payload: dict) -> tuple[int, bytes, float, Optional[str], str, str]:
        timestamp, nonce = str(int(time.time())), _digits(10)
        encrypt = self._crypto.encrypt(json.dumps(payload, ensure_ascii=False).encode("utf-8"))
        status, raw, ms, error = await self._fetch(self._signed_url(encrypt, timestamp, nonce),
                                                   json.dumps({"encrypt": encrypt}).encode("utf-8"))
        return status, raw, ms, error, timestamp, nonce

    async def post(self, payload: dict) -> Result:
        """POST one bot callback; the Result's reply is the decrypted JSON frame (text), if any."""
        status, raw, ms, error, timestamp, nonce = await self._post_json(payload)
        reply = None
        if error is None:
            reply, error = self._check_json_reply(status, raw, timestamp, nonce)
        return Result(status, raw, reply, ms, error)

    def _check_json_reply(self, status: int, body: bytes, timestamp: str, nonce: str) -> tuple[Optional[str], Optional[str]]:
        if status != 200:
            return None, "HTTP %d (expected 200; WeCom would retry), body %s" % (status, _snippet(body))
        if not body.strip():
            return None, None
        try:
            env = json.loads(body)
        except ValueError:
            return None, "reply is not JSON: %s" % _snippet(body)
        if not isinstance(env, dict) or set(env) != {"encrypt", "msgsignature", "timestamp", "nonce"}:
            return None, "reply is not {encrypt, msgsignature, timestamp, nonce}: %s" % _snippet(body)
        if str(env["timestamp"]) != timestamp or env["nonce"] != nonce:
            return None, "reply timestamp/nonce are not the request's (WeCom requires the request's nonce)"
        expected = signature(self._token, timestamp, nonce, env["encrypt"])
        if not hmac.compare_digest(expected.encode(), str(env["msgsignature"]).encode("utf-8")):
            return None, "reply msgsignature does not match"
        try:
            return self._crypto.decrypt(env["encrypt"]).decode("utf-8"), None
        except CryptoError as exc:
            return None, "reply does not decrypt with receive-id \"\": %s (code %d)" % (exc, exc.code)

    def message(self, content: str, *, user: str = "zhangsan", chatid: Optional[str] = None,
                response_url: Optional[str] = None) -> dict:
        """A text message as WeCom sends it: single chat, or group (with the @mention in the text)."""
        payload: dict = {"msgid": "sim" + _digits(16), "aibotid": self.agent_id, "chattype": "group" if chatid else "single",
                         "from": {"userid": user}, "msgtype": "text", "text": {"content": content}}
        if chatid:
            payload["chatid"] = chatid
        if response_url:
            payload["response_url"] = response_url
        return payload

    async def converse(self, payload: dict, *, interval: float = 0.5, max_wait: float = 360.0,
                       on_frame: Optional[Any] = None) -> list[Result]:
        """Send a message, then poll its stream as WeCom does until a frame says finish (or after
        `max_wait`: WeCom gives up after six minutes). `on_frame(frame_dict)` sees each frame."""
        results = [await self.post(payload)]
        frame = _frame(results[0])
        while frame is not None:
            if on_frame is not None:
                on_frame(frame)
            stream = frame.get("stream") or {}
            if frame.get("msgtype") != "stream" or stream.get("finish") or max_wait <= 0:
                break
            await asyncio.sleep(interval)
            max_wait -= interval
            results.append(await self.post({"msgid": "sim" + _digits(16), "aibotid": self.agent_id,
                                            "chattype": payload.get("chattype", "single"), "from": payload.get("from"),
                                            "msgtype": "stream", "stream": {"id": stream.get("id")}}))
            frame = _frame(results[-1])
        return results


def _frame(result: Result) -> Optional[dict]:
    if result.error or not result.reply:
        return None
    try:
        frame = json.loads(result.reply)
    except ValueError:
        return None
    return frame if isinstance(frame, dict) else None
