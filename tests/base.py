"""WecomdTestCase: the real application (same graph as `serve`) on a loopback port and a tmp SQLite file."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tornado.testing import AsyncHTTPTestCase

from conftest import write_config
from peer import WecomPeer
from wecomd import app as appmod, config
from wecomd.services import Services


class WecomdTestCase(AsyncHTTPTestCase):
    server_settings: dict = {}
    extra_config: str = ""

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="wecomd-test-"))
        self.config = config.load(write_config(self.tmp, extra=self.extra_config, **self.server_settings), {})
        self.peer = WecomPeer()
        super().setUp()

    def get_app(self):
        self.services = Services(self.config)
        self.io_loop.run_sync(self.services.start)
        return appmod.make_app(self.services)

    def get_httpserver_options(self) -> dict:
        return appmod.server_options(self.config)

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.services.close)
        super().tearDown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def callback(self, plaintext: str, app: str = "helpdesk", **kwargs):
        req = self.peer.callback(plaintext, **kwargs)
        return self.fetch("/callback/%s?%s" % (app, req.query), method="POST", body=req.body)

    def rows(self) -> list[dict]:
        rows, _ = self.io_loop.run_sync(lambda: self.services.db(self.services.store.messages, limit=1000))
        return rows

    def db(self, fn, *args, **kwargs):
        """Run a store call on the server's own database thread."""
        return self.io_loop.run_sync(lambda: self.services.db(fn, *args, **kwargs))
