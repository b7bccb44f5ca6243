"""A 智能机器人's streamed answer growing live in the open thread (Playwright + Debian's Chromium
against `wecomd demo`, whose bot `assistant` asks a built-in echo model)."""
from __future__ import annotations

import asyncio
import configparser
import threading

from support.browser import login, new_user
from wecomd.wecom.simulate import BotSimulator

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips every test
    expect = None


def ask_bot(demo, user: str, text: str) -> threading.Thread:
    """WeCom's side in a thread: the message, then the refresh polls until the answer finishes."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(demo.dir / "wecomd.conf", encoding="utf-8")
    bot = parser["bot:assistant"]

    async def converse() -> None:
        sim = BotSimulator(demo.url + "/callback/assistant", token=bot["token"], aes_key=bot["encoding_aes_key"])
        try:
            await sim.converse(sim.message(text, user=user), interval=0.3)
        finally:
            sim.close()

    thread = threading.Thread(target=lambda: asyncio.run(converse()), daemon=True)
    thread.start()
    return thread


def test_the_answer_grows_in_the_open_thread_then_is_kept(page, demo):
    login(page, demo)
    user = new_user("bot")
    words = " ".join("第%d句" % n for n in range(40))
    talking = ask_bot(demo, user, words)
    row = page.locator("a.conv[data-app='assistant'][data-user='%s']" % user)
    row.click()
    growing = page.locator("#message-list li.msg.streaming")
    expect(growing).to_be_visible()  # the answer, still streaming, under the question
    expect(growing.locator(".source-tag")).to_have_text("model:echo")
    first = growing.locator(".stream-text").inner_text()
    expect(growing.locator(".stream-text")).not_to_have_text(first)  # it grew
    talking.join(60)
    expect(growing).to_have_count(0)  # finished: the stored answer takes its place
    expect(page.locator("#message-list li.msg.out").last).to_contain_text("第39句")
