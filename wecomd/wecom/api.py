"""The WeCom server API client: access tokens per app, message/send and recall, media upload and
download, error classes.

Every call goes to the configurable `[wecom] api_base` (gettoken and media/get included) and is logged
as one line with its path, errcode and latency, never with its query: that holds the access token
or the corpsecret (wecom-protocol.md §8, anchors.md §5).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
import urllib.parse
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypeVar

from tornado import httpclient, iostream

from wecomd.config import AppConfig
from wecomd.wecom.errcodes import WecomApiError, classify

logger = logging.getLogger(__name__)

T = TypeVar("T")

GETTOKEN, SEND, MEDIA_GET, CALLBACK_IPS = ("/cgi-bin/gettoken", "/cgi-bin/message/send",
                                           "/cgi-bin/media/get", "/cgi-bin/getcallbackip")
MEDIA_UPLOAD, RECALL = "/cgi-bin/media/upload", "/cgi-bin/message/recall"
TOKEN_MARGIN = 300  # seconds before expires_in at which a cached token is renewed
MEDIA_CHUNK = 20 * 2**20  # media/get answers 830002 above 20 MB unless asked for ranges (§8.3)
RANGE_REQUIRED = 830002

_SECRET_HINT = ("set [app:NAME] secret to the app's Secret (应用管理 → the app → Secret) to send "
                "through the API and download media")
_TOO_LARGE_HINT = "the file is over the download limit: fetch it by hand if it is needed"
_SECRET_IN_TEXT = re.compile(r"((?:access_token|corpsecret)=)[^&\s\"']+")


class WecomClient:
    """Calls WeCom's server API for any number of apps, with one cached access token per app.

    Tokens are cached per (corp_id, secret) until `expires_in - 300` seconds by `clock`. At most one
    gettoken per key is in flight: concurrent callers await it. A token errcode from a call drops
    the token, fetches a new one and retries that call exactly once; nothing else is retried here.

    `on_refresh(reason)` is called as each gettoken starts: "cold" (no token yet), "expired" (the
    cached one reached its renewal time) or "token_error" (WeCom refused the cached one).
    """

    def __init__(self, api_base: str, *, http_client: Optional[httpclient.AsyncHTTPClient] = None,
                 clock: Callable[[], float] = time.monotonic, request_timeout: float = 10.0,
                 on_refresh: Optional[Callable[[str], None]] = None) -> None:
        self.api_base = api_base.rstrip("/")
        self.media_chunk = MEDIA_CHUNK
        self._http, self._owns_http = http_client, http_client is None
        self._clock, self._timeout = clock, request_timeout
        self._tokens: Dict[Tuple[str, str], Tuple[str, float]] = {}  # key -> (token, renew at)
        self._refreshing: Dict[Tuple[str, str], asyncio.Future] = {}
        self._refused: set = set()  # keys whose token WeCom refused, until a new one is fetched
        self._on_refresh = on_refresh

    async def access_token(self, app: AppConfig) -> str:
        """The app's access token, from the cache or from one shared gettoken call."""
        key = _key(app)
        cached = self._tokens.get(key)
        if cached and self._clock() < cached[1]:
            return cached[0]
        future = self._refreshing.get(key)
        if future is None or future.done():
            if self._on_refresh is not None:
                self._on_refresh("expired" if cached else "token_error" if key in self._refused else "cold")
            future = asyncio.ensure_future(self._fetch_token(app, key))
            self._refreshing[key] = future
            future.add_done_callback(lambda done: self._refreshed(key, done))
        # shield: a waiter that is cancelled must not cancel the gettoken the others wait for
        return await asyncio.shield(future)

    def invalidate(self, app: AppConfig) -> None:
        """Forget the app's cached token; the next call fetches a new one."""
        if app.secret:
            self._tokens.pop(_key(app), None)

    async def call(self, app: AppConfig, method: str, path: str, *, params: Optional[dict] = None,
                   json_body: Any = None, with_body: bool = False) -> Any:
        """One API call with the app's token; the answer's JSON, or WecomApiError for errcode != 0.
        `with_body`: (the JSON, the answer's text as it came), for a caller that keeps it whole."""
        body = None if json_body is None else json.dumps(json_body, ensure_ascii=False).encode("utf-8")
        if body is None and method == "POST":
            body = b""
        headers = {"Content-Type": "application/json; charset=utf-8"} if json_body is not None else None

        async def once(token: str) -> Any:
            query = {**(params or {}), "access_token": token}
            return await self._logged(method, path, self._exchange(app, token, method, path, query,
                                                                   body, headers, with_body))
        return await self._with_token(app, once)

    async def send(self, app: AppConfig, payload: dict) -> dict:
        """POST message/send with the app's agentid; the answer (msgid, invaliduser, ...)."""
        return await self.call(app, "POST", SEND, json_body={**payload, "agentid": int(app.agent_id)})

    async def send_text(self, app: AppConfig, to_user: str, content: str, **options: Any) -> dict:
        """One text message (at most 2048 bytes: split longer text with split_text first); `options`
        are more top-level fields (safe, enable_duplicate_check ...)."""
        return await self.send(app, {"touser": to_user, "msgtype": "text", "text": {"content": content},
                                     **options})

    async def recall(self, app: AppConfig, msgid: str) -> dict:
        """POST message/recall {"msgid"}: take back a message the app sent within the last 24 hours."""
        return await self.call(app, "POST", RECALL, json_body={"msgid": msgid})

    async def upload_media(self, app: AppConfig, msgtype: str, body: bytes, filename: str,
                           content_type: str) -> str:
        """media/upload of a temporary file (image, voice, video or file); its media_id, which lives
        3 days (wecom-protocol.md §8.3). The form field is `media`, with the filename recipients see."""
        boundary = "wecomd-" + secrets.token_hex(16)
        form = _multipart(boundary, "media", body, filename, content_type)
        headers = {"Content-Type": "multipart/form-data; boundary=%s" % boundary}

        async def once(token: str) -> dict:
            query = {"access_token": token, "type": msgtype}
            return await self._logged("POST", MEDIA_UPLOAD, self._exchange(app, token, "POST", MEDIA_UPLOAD,
                                                                           query, form, headers))
        answer = await self._with_token(app, once)
        media_id = answer.get("media_id")
        if not isinstance(media_id, str) or not media_id:
            raise WecomApiError(None, "media/upload answered without a media_id", path=MEDIA_UPLOAD,
                                hint="WeCom's answer was malformed; will retry")
        return media_id

    async def download_media(self, app: AppConfig, media_id: str,
                             max_bytes: int = 25 * 2**20) -> Tuple[bytes, str, Optional[str]]:
        """(body, content_type, filename or None) of a media_id; errors arrive as JSON with HTTP 200."""
        async def once(token: str) -> Tuple[bytes, str, Optional[str]]:
            query = {"access_token": token, "media_id": media_id}
            try:
                response, body = await self._media_part(app, token, query, None, max_bytes)
            except WecomApiError as exc:
                if exc.errcode != RANGE_REQUIRED:
                    raise
                response, body = await self._media_ranges(app, token, query, max_bytes)
            return body, _content_type(response), _filename(response)
        return await self._with_token(app, once)

    async def get_callback_ips(self, app: AppConfig) -> List[str]:
        """The IPs WeCom sends callbacks from (wecom-protocol.md §8.4)."""
        return list((await self.call(app, "GET", CALLBACK_IPS)).get("ip_list") or [])

    def close(self) -> None:
        if self._owns_http and self._http is not None:
            self._http.close()
            self._http = None

    # --- tokens ------------------------------------------------------------------------------

    async def _fetch_token(self, app: AppConfig, key: Tuple[str, str]) -> str:
        query = {"corpid": app.corp_id, "corpsecret": app.secret}
        data = await self._logged("GET", GETTOKEN, self._exchange(app, None, "GET", GETTOKEN, query))
        token, expires_in = data.get("access_token"), data.get("expires_in", 7200)
        if not isinstance(token, str) or not token or not isinstance(expires_in, int):
            raise WecomApiError(None, "gettoken answered without an access_token", path=GETTOKEN,
                                hint="WeCom's answer was malformed; will retry")
        self._tokens[key] = (token, self._clock() + max(expires_in - TOKEN_MARGIN, expires_in // 2))
        self._refused.discard(key)
        return token

    def _refreshed(self, key: Tuple[str, str], future: asyncio.Future) -> None:
        if self._refreshing.get(key) is future:
            del self._refreshing[key]  # failures are not cached: the next caller tries again
        if not future.cancelled():
            future.exception()  # retrieved, even if every waiter was cancelled

    def _drop(self, app: AppConfig, token: str) -> None:
        """Forget `token` unless a newer one replaced it (then a concurrent caller refreshed already)."""
        key = _key(app)
        if self._tokens.get(key, (None,))[0] == token:
            del self._tokens[key]
            self._refused.add(key)

    async def _with_token(self, app: AppConfig, attempt: Callable[[str], Awaitable[T]]) -> T:
        token = await self.access_token(app)
        try:
            return await attempt(token)
        except WecomApiError as exc:
            if exc.kind == "token" or exc.errcode == 40001:
                self._drop(app, token)
            if exc.kind != "token":
                raise
        # Exactly one retry with a fresh token: never loop on a token WeCom keeps refusing (§3.5).
        return await attempt(await self.access_token(app))

    # --- HTTP --------------------------------------------------------------------------------

    async def _exchange(self, app: AppConfig, token: Optional[str], method: str, path: str,
                        query: dict, body: Optional[bytes] = None, headers: Optional[dict] = None,
                        with_body: bool = False) -> Any:
        response = await self._fetch(app, token, method, path, query, body=body, headers=headers)
        try:
            data = json.loads(response.body or b"")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise WecomApiError(None, "the answer is not a JSON object (HTTP %d)" % response.code,
                                path=path, hint="check [wecom] api_base; will retry")
        if _errcode(data):
            raise _api_error(app, token, path, data)
        return (data, response.body.decode("utf-8")) if with_body else data

    async def _fetch(self, app: AppConfig, token: Optional[str], method: str, path: str, query: dict,
                     **kwargs: Any) -> httpclient.HTTPResponse:
        url = "%s%s?%s" % (self.api_base, path, urllib.parse.urlencode(query))
        request = httpclient.HTTPRequest(url, method=method, request_timeout=self._timeout,
                                         connect_timeout=self._timeout, **kwargs)
        if self._http is None:
            self._http = httpclient.AsyncHTTPClient(force_instance=True)
        try:
            response = await self._http.fetch(request, raise_error=False)
        except (OSError, httpclient.HTTPClientError, iostream.StreamClosedError) as exc:
            text = _scrub("network error: %s: %s" % (type(exc).__name__, exc), app, token)
            raise WecomApiError(None, text, kind="retry", path=path) from None
        if response.code in (200, 206):
            return response
        if response.code >= 500 or response.code == 429:
            raise WecomApiError(None, "HTTP %d" % response.code, kind="retry", path=path,
                                hint="WeCom answered HTTP %d; will retry" % response.code)
        raise WecomApiError(None, "HTTP %d" % response.code, kind="config", path=path,
                            hint="check [wecom] api_base and any proxy in between")

    async def _logged(self, method: str, path: str, work: Awaitable[T]) -> T:
        """Await one API exchange and log path, errcode and latency: never the query."""
        started = time.perf_counter()
        try:
            result = await work
        except WecomApiError as exc:
            errcode = exc.errcode if exc.errcode is not None else "-"
            logger.info("wecom api %s %s errcode=%s kind=%s %.0fms", method, path, errcode, exc.kind,
                        1000 * (time.perf_counter() - started))
            raise
        logger.debug("wecom api %s %s errcode=0 %.0fms", method, path, 1000 * (time.perf_counter() - started))
        return result

    # --- media -------------------------------------------------------------------------------

    async def _media_part(self, app: AppConfig, token: str, query: dict, span: Optional[str],
                          budget: int) -> Tuple[httpclient.HTTPResponse, bytes]:
        """One media/get response (a Range when `span`), its body at most `budget` bytes."""
        async def fetch() -> Tuple[httpclient.HTTPResponse, bytes]:
            chunks = _Collector(budget)
            response = await self._fetch(app, token, "GET", MEDIA_GET, query, streaming_callback=chunks.add,
                                         headers={"Range": span} if span else None)
            error = _media_error(response, chunks.body)
            if error is not None:
                raise _api_error(app, token, MEDIA_GET, error)
            if chunks.over:
                raise WecomApiError(None, "the media is larger than %d bytes" % budget, kind="request",
                                    path=MEDIA_GET, hint=_TOO_LARGE_HINT)
            return response, chunks.body
        return await self._logged("GET", MEDIA_GET, fetch())

    async def _media_ranges(self, app: AppConfig, token: str, query: dict,
                            max_bytes: int) -> Tuple[httpclient.HTTPResponse, bytes]:
        body = b""
        while True:
            span = "bytes=%d-%d" % (len(body), len(body) + self.media_chunk - 1)
            response, part = await self._media_part(app, token, query, span, max_bytes - len(body))
            body += part
            total = _range_total(response)
            if total is not None and total > max_bytes:
                raise WecomApiError(None, "the media is larger than %d bytes" % max_bytes, kind="request",
                                    path=MEDIA_GET, hint=_TOO_LARGE_HINT)
            if response.code != 206 or not part or total is None or len(body) >= total:
                return response, body


class _Collector:
    """A streaming_callback that keeps at most `budget` bytes (raising there would log a traceback)."""

    def __init__(self, budget: int) -> None:
        self.budget, self.over, self._parts, self._size = budget, False, [], 0

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        self.over = self.over or self._size > self.budget
        if not self.over:
            self._parts.append(chunk)

    @property
    def body(self) -> bytes:
        return b"".join(self._parts)


def _multipart(boundary: str, field: str, body: bytes, filename: str, content_type: str) -> bytes:
    """One file as multipart/form-data, its filename as RFC 7578 sends it (UTF-8, quotes escaped)."""
    name = filename.replace("\\", "_").replace('"', "%22").replace("\r", " ").replace("\n", " ")
    head = ('--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"; filelength=%d\r\n'
            "Content-Type: %s\r\n\r\n" % (boundary, field, name, len(body), content_type))
    return head.encode("utf-8") + body + ("\r\n--%s--\r\n" % boundary).encode("ascii")


def split_text(content: str, limit: int = 2048) -> List[str]:
    """Split text into parts of at most `limit` UTF-8 bytes, at character boundaries.

    A part ends at its last newline when it has one (that newline is dropped), otherwise at the
    last whole character that fits. Parts that would be empty or only whitespace are left out.
    """
    if limit < 4:
        raise ValueError("limit must be at least 4 bytes (one character)")
    parts, rest = [], content
    while len(rest.encode("utf-8")) > limit:
        head = rest[:limit].encode("utf-8")[:limit].decode("utf-8", "ignore")
        window = rest[:len(head) + 1] if rest[len(head):len(head) + 1] == "\n" else head
        cut = window.rfind("\n")
        part, rest = (rest[:cut], rest[cut + 1:]) if cut > 0 else (head, rest[len(head):])
        parts.append(part)
    parts.append(rest)
    return [part for part in parts if part.strip()]


# --- helpers -----------------------------------------------------------------------------------

def _key(app: AppConfig) -> Tuple[str, str]:
    """The token cache key: (corp_id, a digest of the secret), so no dict holds the secret itself."""
    if not app.secret:
        raise WecomApiError(None, "no secret is configured for app %s" % app.name, kind="config",
                            hint=_SECRET_HINT.replace("NAME", app.name))
    return app.corp_id, hashlib.sha256(app.secret.encode("utf-8")).hexdigest()


def _errcode(data: dict) -> int:
    try:
        return int(data.get("errcode") or 0)
    except (TypeError, ValueError):
        return -1


def _api_error(app: AppConfig, token: Optional[str], path: str, data: dict) -> WecomApiError:
    errcode = _errcode(data)
    kind, hint = classify(errcode)
    errmsg = _scrub(str(data.get("errmsg", "")), app, token)
    return WecomApiError(errcode, errmsg, kind=kind, hint=hint.replace("[app:NAME]", "[app:%s]" % app.name),
                         path=path)


def _scrub(text: str, app: AppConfig, token: Optional[str]) -> str:
    """`text` without the access token or the secret, should WeCom or a library ever echo them."""
    for secret in (token, app.secret):
        if secret:
            text = text.replace(secret, "***")
    return _SECRET_IN_TEXT.sub(r"\1***", text)


def _content_type(response: httpclient.HTTPResponse) -> str:
    return response.headers.get("Content-Type") or "application/octet-stream"


def _media_error(response: httpclient.HTTPResponse, body: bytes) -> Optional[dict]:
    """The error JSON media/get sends with HTTP 200, or None when `body` is the media (§8.3).

    A text/plain *file* is media too: only a JSON object with an errcode counts as an error.
    """
    media_type = _content_type(response).split(";")[0].strip().lower()
    suspect = body.startswith(b'{"errcode"') or media_type in ("application/json", "text/plain")
    if not suspect or len(body) > 65536 or not body.lstrip().startswith(b"{"):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and _errcode(data) else None


def _range_total(response: httpclient.HTTPResponse) -> Optional[int]:
    match = re.search(r"/(\d+)\s*$", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


_FILENAME_STAR = re.compile(r"filename\*\s*=\s*([\w!#$%&+^`{}~-]*)'[^']*'([^;\s]+)", re.IGNORECASE)
_FILENAME = re.compile(r'filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.IGNORECASE)


def _filename(response: httpclient.HTTPResponse) -> Optional[str]:
    """The filename of Content-Disposition (RFC 6266 filename* first), without any directory part."""
    header = response.headers.get("Content-Disposition", "")
    star, plain = _FILENAME_STAR.search(header), _FILENAME.search(header)
    if star:
        name = urllib.parse.unquote(star.group(2), encoding=star.group(1) or "utf-8", errors="replace")
    elif plain:
        name = _utf8_header(re.sub(r"\\(.)", r"\1", plain.group(1) or plain.group(2) or ""))
    else:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name if name not in ("", ".", "..") else None


def _utf8_header(text: str) -> str:
    """Header text as sent: raw UTF-8 bytes (read as latin-1 by tornado) or %-encoded, else as is."""
    try:
        text = text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    if re.search(r"%[0-9A-Fa-f]{2}", text):
        try:
            return urllib.parse.unquote(text, errors="strict")
        except UnicodeDecodeError:
            pass
    return text
