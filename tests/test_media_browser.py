"""Hostile media in a real browser: a stored SVG that loads a stored script must do nothing.

`wecomd serve` runs as a process against the sandbox WeCom API (served from a thread of this test
process, so the test decides what media/get returns). WeCom delivers an `evil.js` file and a
`report.svg` image that loads it from the dashboard's own origin; the operator then opens the
image from the thread and by its URL. The script would change the page title, set a global and
request a marker URL: none of that may happen.
"""
from __future__ import annotations

import asyncio
import json
import threading
import urllib.request

import pytest
from support.browser import open_page
from support.config import ADMIN_PASSWORD, API_TOKEN, write_config
from support.peer import CORP_ID, WecomPeer
from support.server import ServerProcess, free_port
from wecomd.wecom import sandbox
from wecomd.wecom import samples

try:
    from playwright.sync_api import Error as PlaywrightError, expect
except ImportError:  # the `browser` fixture skips
    PlaywrightError = Exception

MARKER = "pwned-marker"
EVIL_JS = ("document.title = %r; window.__pwned = 1; fetch('/%s');\n" % (MARKER, MARKER)).encode()


def report_svg(script_url: str) -> bytes:
    return ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            'width="200" height="80"><text x="10" y="40">Q3 report</text>'
            '<script href="%s" xlink:href="%s"></script></svg>' % (script_url, script_url)).encode()


class FakeInThread:
    """The sandbox WeCom API on its own event loop in a thread."""

    def __init__(self) -> None:
        self.fake = sandbox.FakeWecom()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.base = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self):
        return await sandbox.start(self.fake)

    def add_media(self, body: bytes, content_type: str, filename: str) -> str:
        return asyncio.run_coroutine_threadsafe(self._add(body, content_type, filename), self.loop).result(10)

    async def _add(self, body: bytes, content_type: str, filename: str) -> str:
        return self.fake.add_media(body, content_type, filename)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Daemon:
    def __init__(self, tmp_path) -> None:
        self.wecom = FakeInThread()
        port = free_port()
        self.server = ServerProcess(write_config(tmp_path, port, api_base=self.wecom.base), port)
        self.url, self.peer = self.server.url, WecomPeer()

    def receive(self, kind: str, media_id: str, user: str = "mallory") -> None:
        plaintext = samples.build(kind, corp_id=CORP_ID, agent_id="1000002", from_user=user, media_id=media_id)
        req = self.peer.callback(plaintext)
        with urllib.request.urlopen(self.url + "/callback/helpdesk?" + req.query, data=req.body, timeout=10) as resp:
            assert resp.status == 200

    def api(self, path: str) -> dict:
        request = urllib.request.Request(self.url + path, headers={"Authorization": "Bearer " + API_TOKEN})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def stored(self, kind: str, media_id: str) -> dict:
        """Deliver a media message and wait until the daemon has downloaded it; its row."""
        self.receive(kind, media_id)
        for _ in range(200):
            rows = self.api("/api/messages?user=mallory&msgtype=%s" % kind)["messages"]
            row = next((r for r in rows if (r.get("fields") or {}).get("MediaId") == media_id), None)
            if row and (row.get("media") or {}).get("status") == "stored":
                return row
            threading.Event().wait(0.05)
        raise AssertionError("media %s was not stored:\n%s" % (media_id, self.server.output()[-3000:]))

    def stop(self) -> None:
        self.server.terminate()
        self.wecom.stop()


@pytest.fixture
def daemon(browser, tmp_path):  # noqa: F811
    daemon = Daemon(tmp_path)
    yield daemon
    daemon.stop()


def sign_in(page, daemon) -> None:
    page.goto(daemon.url + "/login")
    page.fill("#username", "admin")
    page.fill("#password", ADMIN_PASSWORD)
    page.click(".login-card button[type=submit]")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def test_stored_svg_with_a_stored_script_does_nothing_when_opened(browser, daemon):  # noqa: F811
    script = daemon.stored("file", daemon.wecom.add_media(EVIL_JS, "application/javascript", "evil.js"))
    svg_url = "/api/media/%d" % daemon.stored(
        "image", daemon.wecom.add_media(report_svg("/api/media/%d" % script["id"]), "image/svg+xml",
                                        "report.svg"))["id"]
    page = open_page(browser)
    context = page.context
    marked, downloads = [], []  # requests for the marker URL, and downloads, of the operator's session
    context.on("request", lambda request: marked.append(request.url) if MARKER in request.url else None)
    def watch(tab) -> None:
        tab.on("download", lambda download: downloads.append(download.suggested_filename))

    watch(page)
    context.on("page", watch)
    try:
        sign_in(page, daemon)
        # From the thread: the image bubble links to the media in a new tab.
        page.locator("a.conv[data-user='mallory']").click()
        link = page.locator("#message-list a.media.image[href='%s']" % svg_url)
        expect(link).to_be_visible()
        with context.expect_page() as opened:
            link.click()
        try:  # a rendered SVG runs its scripts before "load"; a download closes the tab instead
            opened.value.wait_for_load_state()
        except PlaywrightError:
            pass
        # By its URL, in the signed-in tab.
        try:
            with page.expect_download(timeout=5_000):
                page.goto(daemon.url + svg_url)
        except PlaywrightError:
            pass  # the old behaviour: no download, the SVG is shown; the checks below tell
        for each in context.pages:
            if not each.is_closed() and each.url.startswith(daemon.url):
                assert each.evaluate("window.__pwned === undefined"), each.url
                assert each.title() != MARKER
        assert marked == []
        # Both ways of opening it were downloads, of the file the operator expects.
        for _ in range(100):  # the new tab's download event may trail its closing
            if len(downloads) == 2:
                break
            page.wait_for_timeout(50)
        assert downloads == ["report.svg", "report.svg"]
    finally:
        context.close()
