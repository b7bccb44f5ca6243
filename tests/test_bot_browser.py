"""A 智能机器人's streamed answer growing live in the open thread (Playwright + Debian's Chromium
against `wecomd demo`, whose bot `assistant` asks a built-in echo model)."""
from __future__ import annotations

import asyncio
import configparser
import json
import threading

from support.browser import login, new_user
from wecomd.wecom.simulate import BotSimulator

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips every test
    expect = None


def demo_config(demo) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(demo.dir / "wecomd.conf", encoding="utf-8")
    return parser


def simulator(demo) -> BotSimulator:
    bot = demo_config(demo)["bot:assistant"]
    return BotSimulator(demo.url + "/callback/assistant", token=bot["token"], aes_key=bot["encoding_aes_key"])


def ask_bot(demo, user: str, text: str, chatid: str | None = None) -> threading.Thread:
    """WeCom's side in a thread: the message (with a response_url at the demo's sandbox WeCom), then
    the refresh polls until the answer finishes. The thread's `.stream_id` is the answer's stream."""
    response_url = "%s/cgi-bin/aibot/response?response_code=rc-%s-%d" % (
        demo_config(demo)["wecom"]["api_base"], user, threading.get_ident())

    async def converse() -> None:
        sim = simulator(demo)
        try:
            results = await sim.converse(sim.message(text, user=user, chatid=chatid, response_url=response_url),
                                         interval=0.3)
            thread.stream_id = json.loads(results[0].reply)["stream"]["id"]
        finally:
            sim.close()

    thread = threading.Thread(target=lambda: asyncio.run(converse()), daemon=True)
    thread.stream_id = None
    thread.start()
    return thread


def rate(demo, user: str, stream_id: str) -> None:
    """The user marks the answer inaccurate (incomplete), as WeCom's feedback_event says."""
    async def send() -> None:
        sim = simulator(demo)
        try:
            result = await sim.post({"msgid": "fb-" + stream_id, "aibotid": sim.agent_id, "chattype": "single",
                                     "from": {"userid": user}, "msgtype": "event", "event": {
                                         "eventtype": "feedback_event", "feedback_event": {
                                             "id": stream_id, "type": 2, "inaccurate_reason_list": [2]}}})
            assert result.status == 200 and not result.reply, result
        finally:
            sim.close()
    thread = threading.Thread(target=lambda: asyncio.run(send()), daemon=True)  # Playwright holds this loop
    thread.start()
    thread.join(30)


def test_the_answer_grows_in_the_open_thread_then_is_kept(page, demo):
    login(page, demo)
    user = new_user("bot")
    # Eight short sentences: the echo model sends each CJK character as a piece, 0.08 s apart, after
    # its reasoning; about 5 s of growing (forty took 20 s, the suite's longest browser test).
    words = " ".join("第%d句" % n for n in range(8))
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
    expect(page.locator("#message-list li.msg.out").last).to_contain_text("第7句")
    # The question keeps what became of its answer: where it came from, then the user's feedback, live.
    answer = page.locator("#message-list li.bot-answer")
    expect(answer.locator(".source-tag")).to_contain_text("model:echo")
    rate(demo, user, talking.stream_id)
    expect(answer.locator(".answer-feedback")).to_be_visible()
    expect(answer).to_have_attribute("data-feedback", "2")
    page.reload()  # and from the stored stream after a reload
    expect(page.locator("#message-list li.bot-answer .answer-feedback")).to_be_visible()


def test_a_group_chat_shows_the_group_and_each_sender(page, demo):
    login(page, demo)
    group = new_user("grp")
    for user in ("alice", "bob"):
        ask_bot(demo, user, "我是 %s" % user, chatid=group).join(60)
    row = page.locator("a.conv[data-app='assistant'][data-user='%s']" % group)
    expect(row.locator(".chat-tag")).to_be_visible()  # the last message is the bot's answer: still a group
    row.click()
    expect(page.locator("#thread-chat")).to_be_visible()
    expect(page.locator("#thread-chat")).to_have_attribute("title", "alice, bob")
    expect(page.locator("#message-list li.msg.in .sender")).to_have_text(["alice", "bob"])


def test_a_manual_reply_uses_the_unused_response_url_once_then_the_page_says_why_not(page, demo):
    login(page, demo)
    user = new_user("manual")
    ask_bot(demo, user, "有人吗").join(60)  # answered in time: its response_url is still unused
    page.locator("a.conv[data-app='assistant'][data-user='%s']" % user).click()
    page.fill("#reply", "人工来了")
    page.press("#reply", "Enter")
    sent = page.locator("#message-list li.msg.out", has_text="人工来了")
    expect(sent).to_have_attribute("data-status", "sent")
    page.fill("#reply", "再补充一句")
    page.press("#reply", "Enter")
    expect(page.locator("#composer-error")).to_contain_text("one answer per message")
    expect(page.locator("#reply")).to_have_value("再补充一句")  # kept: nothing was sent
