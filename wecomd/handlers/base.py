"""BaseHandler and ApiHandler: services, security headers, deny-by-default auth, locale, errors."""
from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode
from typing import Any, Iterator, Optional

from tornado import locale, web
from tornado.log import app_log, gen_log

from wecomd import accounts, auth, clientaddr
from wecomd.accounts import Identity
from wecomd.services import Services

LOCALE_COOKIE = "wecomd_locale"
LOCALES = ("zh_CN", "en_US")
DEFAULT_LOCALE = "zh_CN"  # operators are mostly in mainland China (design.md)
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self'; connect-src 'self' ws: wss:; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Rows of a page encoded between two turns of the event loop (ApiHandler.write_page): 100 of the
# console's conversations take about 2 ms, a page of 500 took 9 ms in one go.
ROWS_AT_ONCE = 100


class BaseHandler(web.RequestHandler):
    """Base of every wecomd handler; routes pass `services` into `initialize`.

    Every route needs a signed-in operator unless its handler sets `public = True`
    (only the callback, /healthz, /login, /locale and static files do), and that operator's
    role must be at least the handler's `role` for the request's method (`required_role`: by
    default a viewer reads, an operator writes); a test walks the route table to keep it that way.
    """

    public = False
    role: Optional[str] = None  # the least role of every method; None: viewer to read, operator to write
    identity: Optional[Identity] = None
    count_inflight = True  # websockets are not requests to drain on shutdown
    _counted = False

    def initialize(self, services: Services) -> None:
        self.services = services
        # The client's address, behind the proxies of `[server] trusted_proxies` too (clientaddr):
        # what the sign-in limits use, and, written back into the request, what every log line shows.
        self.client_ip = clientaddr.client_ip(self.request, services.config.server.trusted_proxies)
        if self.client_ip != "-":
            self.request.remote_ip = self.client_ip

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Content-Security-Policy", CSP)

    def prepare(self) -> Any:
        if self.count_inflight:
            # Counted so that SIGTERM can wait for requests that are being served.
            self._counted = True
            self.services.inflight.enter()
        unsafe = self.request.method not in ("GET", "HEAD", "OPTIONS")
        if unsafe and self.request.headers.get("Sec-Fetch-Site") == "cross-site":
            raise web.HTTPError(403, "cross-site request refused")
        if not self.public:
            return self._authorize()
        return None

    @classmethod
    def required_role(cls, method: str) -> str:
        """The least role that may send `method` to this handler."""
        if cls.role is not None:
            return cls.role
        return "viewer" if method in ("GET", "HEAD", "OPTIONS") else "operator"

    async def _authorize(self) -> None:
        identity = await self.identify()
        if identity is None:
            if accounts.bearer(self.request.headers.get("Authorization")):
                # A token that does not open this route (the metrics token, a revoked one): no login page.
                raise web.HTTPError(401, "this bearer token does not open %s", self.request.path)
            self.deny()
        self.identity, self.current_user = identity, identity.name
        needed = self.required_role(self.request.method)
        if not identity.can(needed):
            raise web.HTTPError(403, "%s is a %s; this needs %s", identity.name, identity.role, needed)

    async def identify(self) -> Optional[Identity]:
        """Who is asking: the signed-in session's account, or None."""
        session = self.services.sessions.lookup(self.session_token())
        if session is None:
            return None
        return await self.services.accounts.for_session(*session)

    def check_app(self, app: Optional[str]) -> None:
        """403 unless the identity may see `app` (an account limited to some apps)."""
        if self.identity is not None and not self.identity.sees(app):
            raise web.HTTPError(403, "%s may not see app %r", self.identity.name, app)

    def app_scope(self, app: Optional[str]) -> Any:
        """The app filter of a list or export: the app asked for (403 when not visible), else the
        apps the identity may see (a list), else None (every app)."""
        if app:
            self.check_app(app)
            return app
        if self.identity is not None and self.identity.apps is not None:
            return sorted(self.identity.apps)
        return None

    async def audit(self, action: str, target: Optional[str] = None, detail: Optional[dict] = None,
                    actor: Optional[str] = None) -> None:
        """Write one row of the audit log: this request's operator did `action` to `target`."""
        await self.services.db(self.services.store.audit.record, actor or self.current_user or "-", action,
                               target, detail, self.client_ip)

    def deny(self) -> None:
        """Answer a request without a session: pages redirect to /login, the rest get 403."""
        if self.request.method in ("GET", "HEAD"):
            self.redirect(self.get_login_url() + "?" + _query(next=self.request.uri))
            raise web.Finish()
        raise web.HTTPError(403, "sign in first")

    # --- who is asking --------------------------------------------------------------------

    def get_current_user(self) -> Optional[str]:
        return self.identity.name if self.identity is not None else None

    def session_token(self) -> Optional[bytes]:
        """The token of the signed session cookie, or None."""
        return self.get_signed_cookie(auth.SESSION_COOKIE, max_age_days=auth.SESSION_DAYS)

    async def start_session(self, user: str, password_hash: str) -> None:
        """Store a new server-side session of `user` (who signed in against `password_hash`) and hand
        its cookie to the browser."""
        token = await self.services.sessions.begin(user, accounts.fingerprint(password_hash), self.client_ip)
        self.set_signed_cookie(
            auth.SESSION_COOKIE, token,
            expires_days=None, httponly=True, samesite="Strict", secure=self.request.protocol == "https",
        )

    async def end_session(self) -> None:
        """Sign out: the session is deleted on the server, so a copy of the cookie stops working too."""
        await self.services.sessions.end(self.session_token())
        self.clear_cookie(auth.SESSION_COOKIE)

    def get_user_locale(self) -> Optional[locale.Locale]:
        chosen = self.get_cookie(LOCALE_COOKIE)
        if chosen in LOCALES:
            return locale.get(chosen)
        return self.get_browser_locale(DEFAULT_LOCALE)

    # --- the other Tornado hooks ---------------------------------------------------------

    def on_finish(self) -> None:
        self._uncount()

    def on_connection_close(self) -> None:
        self._uncount()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.services.inflight.leave()

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Like Tornado's, but with the path instead of the URI: query strings carry signatures.
        where = "%s %s (%s)" % (self.request.method, self.request.path, self.request.remote_ip)
        if isinstance(value, web.HTTPError):
            if value.log_message:
                gen_log.warning("%d %s: %s", value.status_code, where, _message(value))
        else:
            app_log.error("uncaught exception %s", where, exc_info=(typ, value, tb))

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(payload, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Short plain-text errors: no traceback and no HTML, whatever the debug setting.
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        _challenge(self, status_code)
        self.finish("%d %s\n" % (status_code, self._error_text(status_code, kwargs)))

    def _error_text(self, status_code: int, kwargs: dict) -> str:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message and status_code < 500:
            return _message(exc)
        return self._reason


class ApiHandler(BaseHandler):
    """JSON in and out for /api/*: errors are {"error": ...}; scripts may use a bearer token."""

    async def identify(self) -> Optional[Identity]:
        # A request with a bearer token is that token's, or nobody's: never the cookie's.
        header = self.request.headers.get("Authorization")
        if accounts.bearer(header):
            return await self.services.accounts.for_bearer(header)
        return await super().identify()

    def check_xsrf_cookie(self) -> None:
        # Another site's page cannot send an Authorization header (that needs CORS, which wecomd never
        # grants), so a request with a bearer token is no forgery; the token itself is checked in prepare.
        if not accounts.bearer(self.request.headers.get("Authorization")):
            super().check_xsrf_cookie()

    def deny(self) -> None:
        raise web.HTTPError(401, "sign in or send Authorization: Bearer <token>")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        _challenge(self, status_code)
        self.finish(json.dumps({"error": self._error_text(status_code, kwargs)}, ensure_ascii=False))

    async def stream_file(self, path: str, chunk: int = 64 * 1024) -> None:
        """Send a file in chunks, flushing each, so a large one never sits in memory."""
        with open(path, "rb") as fh:
            while True:
                data = fh.read(chunk)
                if not data:
                    break
                self.write(data)
                await self.flush()
        self.finish()

    async def write_page(self, key: str, rows: list, cursor: Any) -> None:
        """write_json({key: rows, "next": cursor}), the same bytes, for a page of up to 500 rows: its
        rows are encoded ROWS_AT_ONCE at a time with the event loop let turn in between, so that a
        callback arriving meanwhile waits for one part, never for the whole page's encoding."""
        parts = []
        for part in encoded_page(key, rows, cursor):
            parts.append(part)
            if len(rows) > ROWS_AT_ONCE:  # the loop turns before the next part is encoded
                await asyncio.sleep(0)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish("".join(parts))

    def json_body(self) -> dict:
        """The request body as a JSON object, or 400."""
        if not self.request.headers.get("Content-Type", "").startswith("application/json"):
            raise web.HTTPError(400, "send Content-Type: application/json")
        try:
            body = json.loads(self.request.body or b"")
        except ValueError:
            raise web.HTTPError(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        try:  # JSON's "\ud800" decodes to a lone surrogate, which no database or WeCom can take
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise web.HTTPError(400, "the body has a lone surrogate (an unpaired \\ud800-\\udfff escape)")
        return body


def ui_strings(user_locale: locale.Locale) -> dict[str, str]:
    """The translation catalog (wecomd/translations) in `user_locale`, msgid -> text, for the scripts.

    The dashboard's scripts look every string up here (static/dom.js `t()`), so a string they use is
    added to the catalog and nowhere else; one missing from it shows as its English msgid.
    """
    catalog = getattr(user_locale, "translations", {}).get("unknown", {})  # CSV rows without a plural
    return {msgid: user_locale.translate(msgid) for msgid in catalog}


def _challenge(handler: web.RequestHandler, status_code: int) -> None:
    if status_code == 401:  # RFC 9110: a 401 names the scheme that would open the resource
        handler.set_header("WWW-Authenticate", "Bearer")


def _message(exc: web.HTTPError) -> str:
    return exc.log_message % exc.args if exc.args else exc.log_message


def _query(**params: str) -> str:
    return urlencode(params)


def encoded_page(key: str, rows: list, cursor: Any) -> Iterator[str]:
    """json.dumps({key: rows, "next": cursor}, ensure_ascii=False) in parts: the head, the rows
    ROWS_AT_ONCE at a time, the tail."""
    yield "{%s: [" % json.dumps(key, ensure_ascii=False)
    for start in range(0, len(rows), ROWS_AT_ONCE):
        part = json.dumps(rows[start:start + ROWS_AT_ONCE], ensure_ascii=False)[1:-1]
        yield part if not start else ", " + part
    yield '], "next": %s}' % json.dumps(cursor, ensure_ascii=False)
