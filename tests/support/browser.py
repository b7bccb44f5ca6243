"""The dashboard in a real browser: Playwright driving Debian's Chromium against `wecomd demo`.

The fixtures (`browser`, `page`, `demo`, `crowded_demo`, `busy_demo`) reach the tests through
conftest.py; each demo is started once per test module that asks for it.
"""
from __future__ import annotations

import configparser
import contextlib
import io
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support.server import free_port, wait_for_healthz
from support import ROOT

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the tests that need no browser still run; `browser` skips the others
    expect = sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "browser-test-password"
_serials = itertools.count(1)


def run_cli(argv: list, timeout: float = 60) -> tuple:
    """(exit code, output) of `wecomd ARGV` run in this process on a thread of its own: Playwright's
    sync API keeps an event loop on the test's thread, and the command runs its own."""
    from wecomd import cli

    output, result = io.StringIO(), {}

    def run() -> None:
        # The test's thread waits in join() meanwhile: nothing else writes to sys.stdout/stderr.
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            result["code"] = cli.main(argv)

    thread = threading.Thread(target=run, name="wecomd-cli")
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "wecomd %s still running after %ss" % (" ".join(argv[:2]), timeout)
    return result.get("code"), output.getvalue()


def serial() -> int:
    """A number no other call in this test run gets (UserIDs, MsgIds)."""
    return next(_serials)


def new_user(prefix: str) -> str:
    """A UserID no other test uses, so tests share one server without seeing each other's threads."""
    return "%s%d" % (prefix, serial())


# ------------------------------------------------------------------ servers and browser

class Demo:
    """`python -m wecomd demo` on a free port, and `wecomd simulate` against its callback."""

    def __init__(self, directory: Path, traffic: bool = False):
        self.dir, self.port = directory, free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.log = directory / "demo.log"
        self._logfh = open(self.log, "wb")
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "wecomd", "demo", "--listen", "127.0.0.1:%d" % self.port,
                   "--dir", str(directory), "--password", PASSWORD]
        self.proc = subprocess.Popen(command + ([] if traffic else ["--no-traffic"]),
                                     stdout=self._logfh, stderr=subprocess.STDOUT, env=self.env)
        wait_for_healthz(self.url, self.proc, self.output, timeout=30)
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(directory / "wecomd.conf", encoding="utf-8")
        self.app = parser["app:demo"]

    def output(self) -> str:
        if not self._logfh.closed:
            self._logfh.flush()
        return self.log.read_text(encoding="utf-8", errors="replace")

    def simulate(self, user: str, kind: str = "text", content: str = "hello", *extra: str) -> None:
        """`wecomd simulate` against the demo's callback: the command's own code and arguments, run
        in this process (a thread with its own event loop) rather than a new interpreter per message."""
        argv = ["simulate", self.url + "/callback/demo", "--no-verify",
                "--token", self.app["token"], "--aes-key", self.app["encoding_aes_key"],
                "--corp-id", self.app["corp_id"], "--agent-id", self.app["agent_id"],
                "--from", user, "--content", content, *extra]
        if kind != "xml":
            argv += ["--type", kind]
        code, output = run_cli(argv)
        assert code == 0, "simulate failed:\n%s" % output

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logfh.close()


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        pytest.skip("Playwright for Python is not installed (pip install playwright; no browser download needed)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's Chromium is not at %s (apt-get install chromium; .ci/run installs it)" % CHROMIUM)
    expect.set_options(timeout=15_000)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _start(factory, name: str, traffic: bool = False):
    demo = Demo(factory.mktemp(name), traffic=traffic)
    yield demo
    demo.stop()
    print("---- %s log ----\n%s" % (name, demo.output()[-4000:]))


@pytest.fixture(scope="module")
def demo(browser, tmp_path_factory):
    yield from _start(tmp_path_factory, "demo")


@pytest.fixture(scope="module")
def crowded_demo(browser, tmp_path_factory):
    """A demo of its own for a list longer than a page, so the shared demo's lists stay short."""
    yield from _start(tmp_path_factory, "crowded-demo")


@pytest.fixture(scope="module")
def busy_demo(browser, tmp_path_factory):
    """A demo with its scripted traffic: every message type, with real media downloads."""
    yield from _start(tmp_path_factory, "busy-demo", traffic=True)


def open_page(browser, width=1280, height=800, locale="zh-CN", timezone="Asia/Shanghai"):
    context = browser.new_context(viewport={"width": width, "height": height}, locale=locale,
                                  timezone_id=timezone)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.problems = []  # script errors and CSP refusals: the page must produce none
    page.on("pageerror", lambda exc: page.problems.append("page error: %s" % exc))
    page.on("console", lambda msg: page.problems.append("console: " + msg.text)
            if msg.type == "error" and "Refused" in msg.text else None)
    return page


def _checked_page(browser):
    """A page in a context of its own, closed after the test, which fails on any script error."""
    page = open_page(browser)
    yield page
    problems = page.problems
    page.context.close()
    assert problems == []


@pytest.fixture
def page(browser):
    yield from _checked_page(browser)


@pytest.fixture
def second(browser):
    """Another browser (its own context: cookies, storage), checked for script errors like `page`."""
    yield from _checked_page(browser)


def login(page, demo, password=PASSWORD):
    page.goto(demo.url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    page.fill("#username", "admin")
    page.fill("#password", password)
    page.click(".login-card button[type=submit]")
    if password == PASSWORD:
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def demo_password(demo, name: str) -> str:
    """The password `wecomd demo` printed once for its account `name`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = re.search(r"or as\s+%s / (\S+) \(" % name, demo.output())
        if found:
            return found.group(1)
        time.sleep(0.1)
    raise AssertionError("no password for %s in the demo's output" % name)


def login_as(page, demo, name: str) -> None:
    """Sign in as the demo's account `name` (operator or viewer)."""
    page.goto(demo.url + "/login")
    page.fill("#username", name)
    page.fill("#password", demo_password(demo, name))
    page.click(".login-card button[type=submit]")
    expect(page.locator("body")).to_have_attribute("data-user", name)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def conversation(page, user):
    return page.locator("a.conv[data-user='%s']" % user)


def open_thread(page, user):
    conversation(page, user).click()
    expect(page.locator("#thread-user")).to_have_text(user)
    expect(page.locator("#message-list li.msg, #message-list li.system").first).to_be_visible()
