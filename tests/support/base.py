"""WecomdTestCase: the real application (same graph as `serve`) on a loopback port, a tmp SQLite
file, and the sandbox WeCom API on another loopback port."""
from __future__ import annotations

import asyncio
import functools
import json
import time
import shutil
import tempfile
import urllib.parse
from pathlib import Path

from tornado.httputil import url_concat
from tornado.testing import AsyncHTTPTestCase
from tornado.websocket import websocket_connect

from support.config import ADMIN_PASSWORD, API_TOKEN, write_config
from support.database import migrated_sqlite
from support.peer import WecomPeer
from wecomd import app as appmod, auth, config
from wecomd.passwords import hash_password
from wecomd.wecom import sandbox
from wecomd.services import Services


class WecomdTestCase(AsyncHTTPTestCase):
    server_settings: dict = {}
    extra_config: str = ""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="wecomd-test-"))
        self.peer = WecomPeer()
        super().setUp()

    def get_app(self):
        self.fake = sandbox.FakeWecom()
        self.prepare_fake(self.fake)
        self.fake_server, api_base = self.io_loop.run_sync(lambda: sandbox.start(self.fake))
        path = write_config(self.tmp, extra=self.extra_config, api_base=api_base, **self.server_settings)
        if "database" not in self.server_settings:
            migrated_sqlite(self.tmp)  # what start-up's migration would write, without its ~100 ms
        self.config = config.load(path, {})
        self.services = Services(self.config)
        self.io_loop.run_sync(self.services.start)
        return appmod.make_app(self.services)

    def prepare_fake(self, fake: sandbox.FakeWecom) -> None:
        """What WeCom holds before the server starts (a subclass adds accounts, users...)."""

    def get_httpserver_options(self) -> dict:
        return appmod.server_options(self.config)

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.services.close)
        self.fake_server.stop()
        super().tearDown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- WeCom's side ---------------------------------------------------------------------

    def callback(self, plaintext: str, app: str = "helpdesk", **kwargs):
        req = self.peer.callback(plaintext, **kwargs)
        return self.fetch("/callback/%s?%s" % (app, req.query), method="POST", body=req.body)

    # --- the database, through the server's own thread ------------------------------------

    def rows(self) -> list[dict]:
        rows, _ = self.db(self.services.store.messages.page, limit=500)
        return rows

    def inbound(self) -> list[dict]:
        """rows() without the outbound ones (e.g. the automatic answers of the app's `reply =`)."""
        return [row for row in self.rows() if row["direction"] == "in"]

    def stored_msg(self, msg_id: str, timeout: float = 10.0) -> dict:
        """The row of the message `msg_id`, once it is stored (a pull or the intake journal stores it
        after the callback's answer)."""
        return self.wait_for(lambda: next((r for r in self.rows() if r["msg_id"] == msg_id), None), timeout)

    def db(self, fn, *args, **kwargs):
        """Run a store call on the server's own database thread."""
        return self.io_loop.run_sync(lambda: self.services.db(fn, *args, **kwargs))

    def wait_for(self, predicate, timeout: float = 10.0):
        """Poll `predicate` (on the test's loop, so the server keeps working) until it is truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            self.io_loop.run_sync(lambda: asyncio.sleep(0.05))
        self.fail("condition not met within %.1fs" % timeout)

    # --- an operator ----------------------------------------------------------------------

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> dict:
        """Sign in through the real form; return the headers (cookies) a browser would send."""
        page = self.fetch("/login")
        xsrf = _cookie(page, "_xsrf")
        body = urllib.parse.urlencode({"username": username, "password": password, "_xsrf": xsrf, "next": "/"})
        resp = self.fetch("/login", method="POST", body=body, follow_redirects=False,
                          headers={"Cookie": "_xsrf=%s" % xsrf})
        assert resp.code == 302, (resp.code, resp.body)
        session = _cookie(resp, auth.SESSION_COOKIE)
        self.xsrf = xsrf
        return {"Cookie": "_xsrf=%s; %s=%s" % (xsrf, auth.SESSION_COOKIE, session)}

    def api(self, path: str, method: str = "GET", body=None, headers=None, **params):
        """Call the JSON API as a signed-in operator (or with the given headers); returns (status, json)."""
        headers = dict(headers if headers is not None else self.session())
        if method != "GET" and "Cookie" in headers:
            headers["X-XSRFToken"] = self.xsrf
        if body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(body)
        resp = self.fetch(url_concat(path, params), method=method, body=body, headers=headers, allow_nonstandard_methods=True)
        data = json.loads(resp.body) if resp.body and resp.headers.get("Content-Type", "").startswith("application/json") else resp.body
        return resp.code, data

    def session(self) -> dict:
        if not getattr(self, "_session", None):
            self._session = self.login()
        return self._session

    def bearer(self, token: str = API_TOKEN) -> dict:
        return {"Authorization": "Bearer %s" % token}

    def add_operator(self, name: str, role: str, password: str = "pw-" + "x" * 12, apps=None) -> dict:
        """An operator account, as `wecomd user add` makes it (the hash made once per password)."""
        return self.db(self.services.store.operators.add, name, role, _hash(password), apps)

    def ws_connect(self, headers=None):
        url = "ws://127.0.0.1:%d/api/live" % self.get_http_port()
        from tornado.httpclient import HTTPRequest

        request = HTTPRequest(url, headers=headers if headers is not None else self.session())
        return websocket_connect(request)


@functools.lru_cache(maxsize=None)
def _hash(password: str) -> str:
    return hash_password(password)


def _cookie(resp, name: str) -> str:
    for header in resp.headers.get_list("Set-Cookie"):
        key, _, rest = header.partition("=")
        if key == name:
            return rest.split(";")[0]
    raise AssertionError("no %s cookie in %s" % (name, resp.headers.get_list("Set-Cookie")))
