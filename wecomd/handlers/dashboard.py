"""The pages: /login, /logout, /locale and the dashboard at / (whose panels are app.PANELS), and
/api/apps, the apps the dashboard knows."""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from tornado import web

from wecomd import accounts, auth
from wecomd.handlers.base import LOCALE_COOKIE, LOCALES, ApiHandler, BaseHandler, ui_strings
from wecomd.store import StoreError

logger = logging.getLogger(__name__)


def safe_next(target: str | None) -> str:
    """A local path to go to after sign-in; anything else (another host, //x, \\x) becomes '/'.

    Open redirects let a phishing link pass through the real login page (CWE-601).
    """
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parsed = urlparse(target)
    return "/" if parsed.scheme or parsed.netloc else target


class LoginHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.render("login.html", error=None, next_url=safe_next(self.get_argument("next", "/")), username="")

    async def post(self) -> None:
        # The policy (who waits, who is never refused) is in wecomd.auth's docstring.
        client, limiter = self.client_ip, self.services.login_limiter
        username = self.get_body_argument("username", "")
        next_url = safe_next(self.get_body_argument("next", "/"))
        account = username[:64]  # the limiter's key; a longer name cannot match anyway
        wait = limiter.retry_after(client, account)
        if wait:
            self.set_header("Retry-After", str(int(wait) + 1))
            logger.debug("login: %s must wait %.0fs after failed sign-ins", client, wait)
            return self._refuse(429, "Too many failed sign-ins. Try again later.", next_url, username)
        try:
            password_hash = await self.services.accounts.password_hash_of(username)
            ok = await self.services.password_checker.check(
                client, accounts.check_password, self.get_body_argument("password", ""), password_hash)
        except StoreError as exc:
            raise web.HTTPError(503, "cannot read the accounts: %s", exc)
        except auth.Busy:
            self.set_header("Retry-After", "1")
            logger.debug("login: too many sign-ins being checked; %s asked to retry", client)
            return self._refuse(503, "Too many sign-ins at once. Try again in a moment.", next_url, username)
        if not ok:
            limiter.failed(client, account)
            logger.warning("login: failed for user %r from %s", username[:64], client)
            await self._audit_quietly("login_failed", account)
            return self._refuse(403, "Wrong user name or password.", next_url, username)
        limiter.succeeded(client)
        try:
            await self.start_session(username, password_hash)
            await self.audit("login", actor=username)
        except StoreError as exc:
            raise web.HTTPError(503, "cannot store the session: %s", exc)
        logger.info("login: %s signed in from %s", username, client)
        self.redirect(next_url)

    async def _audit_quietly(self, action: str, actor: str) -> None:
        # A failed sign-in is refused whether or not its audit row can be written.
        try:
            await self.audit(action, actor=actor)
        except StoreError as exc:
            logger.warning("login: cannot write the audit log: %s", exc)

    def _refuse(self, status: int, message: str, next_url: str, username: str) -> None:
        self.set_status(status)
        self.render("login.html", error=self.locale.translate(message), next_url=next_url, username=username)


class LogoutHandler(BaseHandler):
    public = True  # signing out needs no session, only the XSRF token

    async def post(self) -> None:
        try:
            await self.end_session()  # deleted on the server: a copied cookie stops working too
        except StoreError as exc:
            raise web.HTTPError(503, "cannot end the session: %s", exc)
        self.redirect("/login")


class LocaleHandler(BaseHandler):
    public = True  # the login page offers it too

    def post(self) -> None:
        lang = self.get_body_argument("lang", "")
        if lang not in LOCALES:
            raise web.HTTPError(400, "unknown language %r", lang)
        self.set_cookie(LOCALE_COOKIE, lang, expires_days=365, samesite="Strict", httponly=True)
        self.redirect(safe_next(self.get_body_argument("next", "/")))


def visible_apps(handler: BaseHandler) -> list[dict]:
    """public_apps of the apps and bots the signed-in identity may see."""
    apps, bots, identity = handler.services.config.apps, handler.services.config.bots, handler.identity
    return public_apps({name: apps[name] for name in identity.visible(apps)},
                       {name: bots[name] for name in identity.visible(bots)})


class IndexHandler(BaseHandler):
    def get(self) -> None:
        self.render("index.html", user=self.current_user, role=self.identity.role, apps=visible_apps(self),
                    strings=ui_strings(self.locale))


class AppsHandler(ApiHandler):
    def get(self) -> None:
        self.write_json({"apps": visible_apps(self)})


def public_apps(apps: Any, bots: Any = None) -> list[dict]:
    """What the dashboard and /api/apps may know of each app and bot ("kind"): never a token, key or
    secret."""
    return [
        {"name": a.name, "kind": "app", "agent_id": a.agent_id, "corp_id": a.corp_id, "has_secret": bool(a.secret),
         "reply": bool(a.reply), "kf": bool(a.kf)}
        for a in apps.values()
    ] + [{"name": b.name, "kind": "bot", "agent_id": b.aibotid or None, "corp_id": None, "has_secret": False,
          "reply": bool(b.reply), "kf": False} for b in (bots or {}).values()]


def routes(services: Any) -> list:
    kw = dict(services=services)
    return [
        (r"/", IndexHandler, kw),
        (r"/login", LoginHandler, kw),
        (r"/logout", LogoutHandler, kw),
        (r"/locale", LocaleHandler, kw),
        (r"/api/apps", AppsHandler, kw),
    ]
