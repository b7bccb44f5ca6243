"""Sign-in, sessions, XSRF, the API token, rate limiting, headers: nobody gets in uninvited."""
from __future__ import annotations

import asyncio
import ipaddress
import threading
import urllib.parse
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from playhouse.schema_diff import diff_models
from tornado import httputil, web

from support.base import WecomdTestCase, _cookie
from support.config import ADMIN_PASSWORD, API_TOKEN, admin_hash
from wecomd import accounts, auth, clientaddr
from wecomd.handlers.base import BaseHandler
from wecomd.passwords import hash_password

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
    # The test client is 127.0.0.1: as a trusted proxy, it can speak for other addresses.
    server_settings = {"trusted_proxies": "127.0.0.1"}

    def _post_login(self, password: str, client: str = "", next_url: str = "/", username: str = "admin"):
        page = self.fetch("/login")
        xsrf = _cookie(page, "_xsrf")
        body = urllib.parse.urlencode({"username": username, "password": password, "_xsrf": xsrf, "next": next_url})
        headers = {"Cookie": "_xsrf=%s" % xsrf}
        if client:
            headers["X-Forwarded-For"] = client
        return self.fetch("/login", method="POST", body=body, follow_redirects=False, headers=headers)

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

    def test_failures_back_off_per_client_and_never_lock_out_a_fresh_client(self):
        for _ in range(3):  # three free tries
            self.assertEqual(self._post_login("wrong", client="198.51.100.7").code, 403)
        waiting = self._post_login(ADMIN_PASSWORD, client="198.51.100.7")  # this client waits, even if right
        self.assertEqual(waiting.code, 429)
        self.assertIn(waiting.headers["Retry-After"], ("1", "2"))
        # Another address (a client that has not failed) signs in with the right password at once.
        self.assertEqual(self._post_login(ADMIN_PASSWORD, client="203.0.113.9").code, 302)
        # So does the TCP peer itself when it forwards nothing.
        self.assertEqual(self._post_login(ADMIN_PASSWORD).code, 302)

    def test_account_backoff_holds_back_failed_clients_only(self):
        for n in range(12):  # 12 addresses, one failure each: the account's streak passes account_free
            self.assertEqual(self._post_login("wrong", client="198.51.100.%d" % n).code, 403)
        self.assertEqual(self._post_login("wrong", client="198.51.100.3").code, 429)  # failed once: waits
        self.assertEqual(self._post_login(ADMIN_PASSWORD, client="198.51.100.200").code, 302)

    def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(self):
        self.services.config = replace(self.services.config,
                                       server=replace(self.services.config.server, trusted_proxies=()))
        for n in range(3):
            self.assertEqual(self._post_login("wrong", client="198.51.100.%d" % n).code, 403)
        # All three were 127.0.0.1's failures, whatever it claimed: it waits now.
        self.assertEqual(self._post_login(ADMIN_PASSWORD, client="203.0.113.9").code, 429)

    def test_sign_in_answers_503_at_once_when_too_many_checks_wait(self):
        checker = self.services.password_checker
        checker.pending = checker.workers + checker.max_waiting  # as if that many were queued
        try:
            resp = self._post_login(ADMIN_PASSWORD)
        finally:
            checker.pending = 0
        self.assertEqual((resp.code, resp.headers["Retry-After"]), (503, "1"))
        self.assertEqual(self._post_login(ADMIN_PASSWORD).code, 302)

    def test_login_without_xsrf_is_refused(self):
        body = urllib.parse.urlencode({"username": "admin", "password": ADMIN_PASSWORD})
        self.assertEqual(self.fetch("/login", method="POST", body=body).code, 403)

    def test_logout_ends_the_session(self):
        headers, xsrf = self.login(), self.xsrf
        other = self.login()  # a second sign-in (another browser) is a session of its own
        self.assertEqual(self.fetch("/api/apps", headers=headers).code, 200)
        resp = self.fetch("/logout", method="POST", body="_xsrf=%s" % xsrf, headers=headers, follow_redirects=False)
        self.assertEqual(resp.code, 302)
        cleared = [c for c in resp.headers.get_list("Set-Cookie") if c.startswith(auth.SESSION_COOKIE)]
        self.assertTrue(cleared and "expires" in cleared[0].lower())
        # A copy of the cookie, replayed after sign-out, opens nothing.
        self.assertEqual(self.fetch("/api/apps", headers=headers).code, 401)
        self.assertEqual(self.fetch("/", headers=headers, follow_redirects=False).code, 302)
        self.assertEqual(self.fetch("/api/apps", headers=other).code, 200)

    def test_sessions_are_stored_and_survive_a_restart(self):
        headers = self.login()
        rows = self.db(self.services.store.sessions.live, datetime.utcnow())
        self.assertEqual([(row["user"], row["client"]) for row in rows], [("admin", "127.0.0.1")])
        token = _cookie_token(headers)
        self.assertTrue(token and token.decode() not in str(rows))  # only its hash is stored
        restarted = auth.Sessions(self.services.db, self.services.store)
        self.assertEqual(self.io_loop.run_sync(restarted.load), 1)
        user, credential = restarted.lookup(token)
        self.assertEqual(user, "admin")
        identity = self.io_loop.run_sync(lambda: self.services.accounts.for_session(user, credential))
        self.assertEqual((identity.name, identity.role, identity.apps), ("admin", "admin", None))
        self.io_loop.run_sync(lambda: restarted.end(token))
        self.assertEqual(self.db(self.services.store.sessions.live, datetime.utcnow()), [])


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
        self.assertEqual(self.fetch("/api/apps", headers=headers).code, 200)
        # What a restart with a new password_hash amounts to: the stored session no longer holds.
        admin = replace(self.config.admin, password_hash=hash_password("a new password"))
        self.services.config = replace(self.services.config, admin=admin)
        self.assertEqual(self.fetch("/api/apps", headers=headers).code, 401)


def _cookie_token(headers: dict) -> bytes:
    """The token inside a signed session cookie of `headers` (tornado's signed value, version 2)."""
    value = headers["Cookie"].split(auth.SESSION_COOKIE + "=")[1].strip('"')
    return web.decode_signed_value("test-cookie-secret-0123456789abcdef0123", auth.SESSION_COOKIE, value)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_client_backoff_doubles_from_the_third_failure_up_to_the_cap():
    clock = Clock()
    limiter = auth.LoginLimiter(free=3, base=1, cap=15 * 60, account_free=1000, clock=clock)
    waits = []
    for _ in range(15):
        assert limiter.retry_after("a", "admin") == 0  # the client waited its turn
        limiter.failed("a", "admin")
        waits.append(limiter.retry_after("a", "admin"))
        clock.now += waits[-1]
    assert waits == [0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900]
    limiter.succeeded("a")
    assert limiter.retry_after("a", "admin") == 0


def test_account_backoff_applies_to_clients_that_failed_not_to_fresh_ones():
    clock = Clock()
    limiter = auth.LoginLimiter(free=3, base=1, cap=900, account_free=10, clock=clock)
    for n in range(12):
        limiter.failed("10.0.0.%d" % n, "admin")
    assert limiter.retry_after("10.0.0.1", "admin") == 4  # the account's 12th failure: 2 ** (12 - 10)
    assert limiter.retry_after("10.0.0.99", "admin") == 0  # has not failed: never held back
    assert limiter.retry_after("10.0.0.1", "other") == 0  # another account's streak is its own
    limiter.succeeded("10.0.0.1")
    assert limiter.retry_after("10.0.0.1", "admin") == 0  # a success clears the client
    limiter.failed("10.0.0.1", "admin")
    assert limiter.retry_after("10.0.0.1", "admin") == 8  # the account's streak goes on


def test_streaks_are_forgotten_and_memory_is_bounded():
    clock = Clock()
    limiter = auth.LoginLimiter(free=1, forget=3600, max_clients=2, max_accounts=2, clock=clock)
    limiter.failed("a", "admin")
    assert limiter.retry_after("a", "admin") == 1
    clock.now += 3601
    assert limiter.retry_after("a", "admin") == 0
    for client in "bcd":
        limiter.failed(client, client)
    assert len(limiter._clients) == 2 and len(limiter._accounts) == 2
    assert limiter.retry_after("b", "b") == 0  # the oldest went first


def test_password_checker_refuses_beyond_its_queue_at_once():
    checker = auth.PasswordChecker(workers=1, max_waiting=2, per_client=2)
    release = threading.Event()

    async def run():
        first = asyncio.ensure_future(checker.check("a", release.wait))
        second = asyncio.ensure_future(checker.check("a", lambda: "second"))
        await asyncio.sleep(0)
        assert checker.pending == 2
        with pytest.raises(auth.Busy):  # "a" has two checks pending already
            await checker.check("a", lambda: "third")
        third = asyncio.ensure_future(checker.check("b", lambda: "third"))
        await asyncio.sleep(0)
        with pytest.raises(auth.Busy):  # one running, two waiting: the queue is full
            await checker.check("c", lambda: "fourth")
        release.set()
        return await first, await second, await third, await checker.check("a", lambda: "fifth")

    try:
        assert asyncio.run(run()) == (True, "second", "third", "fifth")
    finally:
        release.set()
        checker.close()
    assert checker.pending == 0 and not checker._by_client


def test_check_password_runs_in_the_checker_threads():
    checker = auth.PasswordChecker()
    try:
        assert asyncio.run(checker.check("a", accounts.check_password, ADMIN_PASSWORD, admin_hash())) is True
        assert asyncio.run(checker.check("a", accounts.check_password, "wrong", admin_hash())) is False
        # An unknown account (no hash) is refused, after the same scrypt work.
        assert asyncio.run(checker.check("a", accounts.check_password, ADMIN_PASSWORD, None)) is False
    finally:
        checker.close()


def _request(peer: str, **headers: str) -> httputil.HTTPServerRequest:
    context = type("Context", (), {"address": (peer, 40000), "remote_ip": peer, "protocol": "http",
                                   "trusted_downstream": None})()
    connection = type("Connection", (), {"context": context})()
    request = httputil.HTTPServerRequest(start_line=httputil.RequestStartLine("GET", "/", "HTTP/1.1"),
                                         headers=httputil.HTTPHeaders(headers, Host="wecomd"), connection=connection)
    request.remote_ip = peer
    return request


@pytest.mark.parametrize("peer, headers, expected", [
    ("203.0.113.5", {"X-Forwarded-For": "1.2.3.4"}, "203.0.113.5"),  # not a trusted proxy: ignored
    ("127.0.0.1", {}, "127.0.0.1"),
    ("127.0.0.1", {"X-Forwarded-For": "1.2.3.4"}, "1.2.3.4"),
    ("127.0.0.1", {"X-Forwarded-For": "6.6.6.6, 1.2.3.4"}, "1.2.3.4"),  # the left is the client's claim
    ("127.0.0.1", {"X-Forwarded-For": "1.2.3.4, 10.1.2.3"}, "1.2.3.4"),  # a trusted hop is skipped
    ("127.0.0.1", {"X-Forwarded-For": "10.1.2.3"}, "10.1.2.3"),  # all trusted: the first
    ("127.0.0.1", {"X-Forwarded-For": "1.2.3.4, garbage, 5.6.7.8"}, "5.6.7.8"),
    ("127.0.0.1", {"X-Forwarded-For": "garbage"}, "127.0.0.1"),
    ("127.0.0.1", {"X-Real-IP": "1.2.3.4"}, "1.2.3.4"),
    ("127.0.0.1", {"X-Real-IP": "nonsense"}, "127.0.0.1"),
    ("::ffff:127.0.0.1", {"X-Forwarded-For": "2001:db8::1"}, "2001:db8::1"),
    ("::1", {"X-Forwarded-For": "::ffff:1.2.3.4"}, "1.2.3.4"),
])
def test_client_ip_behind_trusted_proxies(peer, headers, expected):
    trusted = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"),
               ipaddress.ip_network("10.0.0.0/8"))
    assert clientaddr.client_ip(_request(peer, **headers), trusted) == expected


def test_client_ip_keeps_xheaders_for_untrusted_peers():
    request = _request("127.0.0.1", **{"X-Forwarded-For": "1.2.3.4"})
    request.remote_ip = "1.2.3.4"  # what Tornado's xheaders made of it
    assert clientaddr.client_ip(request, ()) == "1.2.3.4"


def test_the_session_model_matches_its_migration(sqlite_store):
    assert not diff_models(sqlite_store.db, [sqlite_store.models.Session])
    now = datetime(2030, 1, 1)
    row = dict(token_hash="h1", user="admin", credential="c", client="::1", created_at=now - timedelta(days=8),
               expires_at=now - timedelta(days=1))
    sqlite_store.sessions.create(row, now - timedelta(days=8))
    sqlite_store.sessions.create(dict(row, token_hash="h2", expires_at=now + timedelta(days=1)), now)
    assert [r["token_hash"] for r in sqlite_store.sessions.live(now)] == ["h2"]  # the expired one pruned
    assert sqlite_store.sessions.end("h2") == 1 and sqlite_store.sessions.live(now) == []
