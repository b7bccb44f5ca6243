"""The pages: /login, /logout, /locale and the dashboard at /."""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from tornado import web

from wecomd import auth
from wecomd.handlers.base import LOCALE_COOKIE, LOCALES, BaseHandler

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

    def post(self) -> None:
        client = self.request.remote_ip or "-"
        limiter = self.services.login_limiter
        username = self.get_body_argument("username", "")
        next_url = safe_next(self.get_body_argument("next", "/"))
        wait = limiter.retry_after(client)
        if wait:
            self.set_status(429)
            self.set_header("Retry-After", str(int(wait) + 1))
            logger.warning("login: %s locked out for %.0fs after repeated failures", client, wait)
            return self.render("login.html", error=self.locale.translate("Too many failed sign-ins. Try again later."),
                               next_url=next_url, username=username)
        if not auth.check_login(self.services.config.admin, username, self.get_body_argument("password", "")):
            limiter.failed(client)
            logger.warning("login: failed for user %r from %s", username[:64], client)
            self.set_status(403)
            return self.render("login.html", error=self.locale.translate("Wrong user name or password."),
                               next_url=next_url, username=username)
        limiter.succeeded(client)
        self.start_session()
        logger.info("login: %s signed in from %s", username, client)
        self.redirect(next_url)


class LogoutHandler(BaseHandler):
    public = True  # signing out needs no session, only the XSRF token

    def post(self) -> None:
        self.clear_cookie(auth.SESSION_COOKIE)
        self.redirect("/login")


class LocaleHandler(BaseHandler):
    public = True  # the login page offers it too

    def post(self) -> None:
        lang = self.get_body_argument("lang", "")
        if lang not in LOCALES:
            raise web.HTTPError(400, "unknown language %r", lang)
        self.set_cookie(LOCALE_COOKIE, lang, expires_days=365, samesite="Strict", httponly=True)
        self.redirect(safe_next(self.get_body_argument("next", "/")))


class IndexHandler(BaseHandler):
    def get(self) -> None:
        self.render("index.html", user=self.current_user, apps=public_apps(self.services.config.apps))


def public_apps(apps: Any) -> list[dict]:
    """What the dashboard and /api/apps may know of each app: never its token, key or secret."""
    return [
        {"name": a.name, "agent_id": a.agent_id, "corp_id": a.corp_id, "has_secret": bool(a.secret),
         "reply": bool(a.reply)}
        for a in apps.values()
    ]


def routes(services: Any) -> list:
    kw = dict(services=services)
    return [
        (r"/", IndexHandler, kw),
        (r"/login", LoginHandler, kw),
        (r"/logout", LogoutHandler, kw),
        (r"/locale", LocaleHandler, kw),
    ]
