"""Sign-in, sessions, XSRF, the API token, rate limiting, headers: nobody gets in uninvited."""
from __future__ import annotations

import urllib.parse

from tornado import web

from base import WecomdTestCase, _cookie
from conftest import ADMIN_PASSWORD, API_TOKEN
from wecomd import auth
from wecomd.handlers.base import BaseHandler

PUBLIC_PATHS = {"/callback/(?P<app>[A-Za-z0-9_-]+)/?$", "/healthz$", "/login$", "/logout$", "/locale$"}


class RouteTableTest(WecomdTestCase):
    def test_every_route_requires_auth_unless_marked_public(self):
        rules = self._app.wildcard_router.rules
        seen = set()
        for rule in rules:
            handler = rule.target
            pattern = rule.matcher.regex.pattern
            if issubclass(handler, web.StaticFileHandler):
                continue  # static files are public by design
            self.assertTrue(issubclass(handler, BaseHandler), pattern)
            seen.add(pattern)
            if handler.public:
                self.assertIn(pattern, PUBLIC_PATHS, "%s is public but not on the list" % pattern)
        self.assertTrue(PUBLIC_PATHS <= seen)
        self.assertGreater(len(seen), len(PUBLIC_PATHS) + 5)

    def test_every_private_route_refuses_an_anonymous_request(self):
        concrete = {
            "/": 302, "/api/apps": 401, "/api/conversations": 401, "/api/messages": 401,
            "/api/messages/1": 401, "/api/media/1": 401, "/api/export": 401,
        }
        for path, status in concrete.items():
            resp = self.fetch(path, follow_redirects=False)
            self.assertEqual(resp.code, status, path)
            if status == 302:
                self.assertTrue(resp.headers["Location"].startswith("/login?next="))
        for path in ("/api/messages", "/api/messages/1/retry", "/api/conversations/read"):
            resp = self.fetch(path, method="POST", body="{}", headers={"Content-Type": "application/json"})
            self.assertEqual(resp.code, 403, path)  # no XSRF token, so refused before anything else
        ws = self.fetch("/api/live", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                              "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "x3JJHMbDL1EzLkh9GBhXDw=="})
        self.assertEqual(ws.code, 403)

    def test_forged_or_stale_session_cookie_is_refused(self):
        for value in ("admin", "2|1:0|10:1700000000|14:wecomd_session|8:YWRtaW4=|" + "0" * 64):
            resp = self.fetch("/api/apps", headers={"Cookie": "%s=%s" % (auth.SESSION_COOKIE, value)})
            self.assertEqual(resp.code, 401)


class LoginTest(WecomdTestCase):
    def _post_login(self, password: str, client: str = "", next_url: str = "/"):
        page = self.fetch("/login")
        xsrf = _cookie(page, "_xsrf")
        body = urllib.parse.urlencode({"username": "admin", "password": password, "_xsrf": xsrf, "next": next_url})
        return self.fetch("/login", method="POST", body=body, follow_redirects=False,
                          headers={"Cookie": "_xsrf=%s" % xsrf})

    def test_login_sets_a_strict_httponly_signed_cookie(self):
        resp = self._post_login(ADMIN_PASSWORD, next_url="/?app=helpdesk")
        self.assertEqual((resp.code, resp.headers["Location"]), (302, "/?app=helpdesk"))
        cookie = [c for c in resp.headers.get_list("Set-Cookie") if c.startswith(auth.SESSION_COOKIE)][0]
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=Strict", cookie)
        self.assertNotIn("Secure", cookie)  # plain http on loopback; https gets Secure

    def test_open_redirects_are_refused(self):
        for target in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"):
            self.assertEqual(self._post_login(ADMIN_PASSWORD, next_url=target).headers["Location"], "/")

    def test_wrong_password_then_rate_limited(self):
        for _ in range(5):
            resp = self._post_login("wrong")
            self.assertEqual(resp.code, 403)
        locked = self._post_login(ADMIN_PASSWORD)  # even the right password waits now
        self.assertEqual(locked.code, 429)
        self.assertGreater(int(locked.headers["Retry-After"]), 0)

    def test_login_without_xsrf_is_refused(self):
        body = urllib.parse.urlencode({"username": "admin", "password": ADMIN_PASSWORD})
        self.assertEqual(self.fetch("/login", method="POST", body=body).code, 403)

    def test_logout_ends_the_session(self):
        headers = self.login()
        self.assertEqual(self.fetch("/api/apps", headers=headers).code, 200)
        resp = self.fetch("/logout", method="POST", body="_xsrf=%s" % self.xsrf, headers=headers, follow_redirects=False)
        self.assertEqual(resp.code, 302)
        cleared = [c for c in resp.headers.get_list("Set-Cookie") if c.startswith(auth.SESSION_COOKIE)]
        self.assertTrue(cleared and "expires" in cleared[0].lower())


class TokenAndHeadersTest(WecomdTestCase):
    def test_bearer_token_works_for_scripts_without_xsrf(self):
        status, data = self.api("/api/apps", headers=self.bearer())
        self.assertEqual(status, 200)
        self.assertEqual([a["name"] for a in data["apps"]], ["helpdesk", "quiet"])
        status, _ = self.api("/api/apps", headers={"Authorization": "Bearer wrong"})
        self.assertEqual(status, 401)
        status, _ = self.api("/api/messages", method="POST", headers=self.bearer(),
                             body={"app": "helpdesk", "to_user": "zhangsan", "msgtype": "text", "content": "hi"})
        self.assertEqual(status, 201)

    def test_api_never_returns_secrets(self):
        status, data = self.api("/api/apps")
        text = str(data)
        for secret in (API_TOKEN, self.config.apps["helpdesk"].token, self.config.apps["helpdesk"].encoding_aes_key,
                       self.config.apps["helpdesk"].secret, self.config.admin.password_hash):
            self.assertNotIn(secret, text)
        self.assertEqual(data["apps"][0]["has_secret"], True)

    def test_security_headers_on_pages_and_api(self):
        for path in ("/login", "/healthz"):
            resp = self.fetch(path)
            self.assertEqual(resp.headers["X-Frame-Options"], "DENY")
            self.assertEqual(resp.headers["X-Content-Type-Options"], "nosniff")
            csp = resp.headers["Content-Security-Policy"]
            self.assertIn("script-src 'self'", csp)
            self.assertNotIn("unsafe-inline", csp)

    def test_cross_site_post_is_refused_even_with_a_session(self):
        status, _ = self.api("/api/messages", method="POST", body={"app": "helpdesk", "to_user": "u", "content": "x"},
                             headers={**self.session(), "X-XSRFToken": self.xsrf, "Sec-Fetch-Site": "cross-site"})
        self.assertEqual(status, 403)

    def test_session_ends_when_the_password_changes(self):
        headers = self.session()
        from dataclasses import replace

        changed = replace(self.config.admin, password_hash=self.config.admin.password_hash + "x")
        self.assertIsNone(auth.session_user(changed, auth.session_value(self.config.admin).encode()))
        self.assertEqual(self.fetch("/api/apps", headers=headers).code, 200)


def test_login_limiter_window_and_memory_bound():
    now = [1000.0]
    limiter = auth.LoginLimiter(max_failures=3, window=60, max_clients=2, clock=lambda: now[0])
    for _ in range(3):
        limiter.failed("a")
    assert 59 <= limiter.retry_after("a") <= 60
    now[0] += 61
    assert limiter.retry_after("a") == 0
    limiter.failed("b")
    limiter.failed("c")
    limiter.failed("d")
    assert len(limiter._failures) == 2
