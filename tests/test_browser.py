"""The dashboard in a real browser (Playwright + Debian's Chromium against `wecomd demo`).

Its templates, scripts and translations without a browser: tests/test_pages.py."""
from __future__ import annotations

import datetime
import json
import re
from zoneinfo import ZoneInfo

import pytest

from support import ROOT
from support.browser import PASSWORD, conversation, login, new_user, open_page, open_thread, serial

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips every test
    expect = None

ARTIFACTS = ROOT / "test-artifacts"
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
APP_REPLY = "自动回复：已收到，我们会尽快回复"  # a conversation's preview after the demo app's own reply


# ------------------------------------------------------------------ browser tests

def test_login_rejects_a_wrong_password_then_signs_in(page, demo):
    login(page, demo, password="not-the-password")
    expect(page.locator(".alert")).to_have_text("用户名或密码错误。")
    expect(page.locator("#username")).to_have_value("admin")
    page.fill("#password", PASSWORD)
    page.click(".login-card button[type=submit]")
    expect(page).to_have_url(demo.url + "/")
    expect(page.locator("body")).to_have_attribute("data-user", "admin")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#list-title")).to_have_text("会话")


def test_conversation_list_thread_and_read_mark(page, demo):
    user = new_user("reader")
    demo.simulate(user, content="第一条 first")
    demo.simulate(user, content="第二条 second")
    login(page, demo)
    row = conversation(page, user)
    expect(row.locator(".conv-preview")).to_have_text(APP_REPLY)  # the newest: the app's answer
    expect(row.locator(".badge")).to_have_text("2")  # automatic answers are never unread
    open_thread(page, user)
    expect(page.locator("#message-list li.msg.in .text")).to_have_text(["第一条 first", "第二条 second"])
    expect(row.locator(".badge")).to_have_count(0)
    page.reload()  # the read mark is stored on the server, not only in the page
    expect(conversation(page, user)).to_be_visible()
    expect(conversation(page, user).locator(".badge")).to_have_count(0)

    # Times are shown in the browser's time zone (this context is Asia/Shanghai).
    created = page.evaluate("async (u) => (await (await fetch('/api/messages?user=' + u)).json()).messages[0].create_time", user)
    local = datetime.datetime.fromtimestamp(created, ZoneInfo("Asia/Shanghai")).strftime("%H:%M")
    expect(page.locator("#message-list li.msg.in .meta time").last).to_have_text(local)


def test_more_conversations_than_a_page_load_on_demand(page, crowded_demo):
    from wecomd.wecom.messages import Message
    from wecomd.store import Store

    # 130 conversations written straight into the demo's database (SQLite WAL: beside the daemon).
    store, app = Store(str(crowded_demo.dir / "wecomd.db")), crowded_demo.app
    for n in range(130):
        user = "crowd%03d" % n
        store.messages.save_inbound("demo", Message(
            msgtype="text", from_user=user, to_user=app["corp_id"], agent_id=app["agent_id"],
            create_time=1764370000 + n, msg_id=str(7 * 10 ** 18 + n), content="第 %d 位" % n,
            fields={"FromUserName": user, "MsgType": "text", "Content": "第 %d 位" % n}), "crowd-%d" % n)
    store.close()
    login(page, crowded_demo)
    items, more = page.locator("#conversations a.conv"), page.locator("#conversations-more")
    expect(items).to_have_count(100)  # the first page, newest first
    expect(items.first).to_have_attribute("data-user", "crowd129")
    expect(more).to_have_text("加载更多会话")
    # A live message from a conversation not loaded yet: it comes first, with its true counts.
    crowded_demo.simulate("crowd003", content="又来了")
    expect(items.first).to_have_attribute("data-user", "crowd003")
    expect(conversation(page, "crowd003").locator(".badge")).to_have_text("2")
    more.click()
    expect(items).to_have_count(130)
    expect(more).to_be_hidden()
    expect(items.last).to_have_attribute("data-user", "crowd000")
    users = items.evaluate_all("(links) => links.map((a) => a.dataset.user)")
    assert len(set(users)) == 130


def test_live_messages_arrive_without_reload(page, demo):
    user, other = new_user("live"), new_user("newcomer")
    demo.simulate(user, content="before")
    login(page, demo)
    open_thread(page, user)
    page.evaluate("window.__sameDocument = true")
    demo.simulate(user, content="after, live")
    expect(page.locator("#message-list li.msg.in .text").last).to_have_text("after, live")
    demo.simulate(other, content="a new conversation")
    expect(conversation(page, other).locator(".conv-preview")).to_have_text(APP_REPLY)
    expect(conversation(page, other).locator(".badge")).to_have_text("1")
    expect(conversation(page, user).locator(".badge")).to_have_count(0)  # open thread: read as it arrives
    assert page.evaluate("window.__sameDocument") is True


def test_reconnects_and_fetches_what_it_missed(page, demo):
    """The live socket drops; a message stored meanwhile shows up after the automatic reconnect."""
    user = new_user("gap")
    demo.simulate(user, content="before the drop")
    routes, blocked = [], [False]

    def live(ws):
        if blocked[0]:
            ws.close()
        else:
            routes.append(ws)
            ws.connect_to_server()

    page.route_web_socket("**/api/live", live)
    login(page, demo)
    open_thread(page, user)
    blocked[0] = True
    routes[-1].close()
    expect(page.locator("#conn")).to_have_attribute("data-state", re.compile("offline|connecting"))
    demo.simulate(user, content="while offline")
    page.wait_for_timeout(500)
    expect(page.locator("#message-list .text", has_text="while offline")).to_have_count(0)
    blocked[0] = False
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=20_000)
    expect(page.locator("#message-list li.msg.in .text").last).to_have_text("while offline")


def test_older_messages_load_on_scroll(page, demo):
    user = new_user("chatty")
    demo.simulate(user, "text", "bulk", "--count", "60")
    login(page, demo)
    open_thread(page, user)
    messages = page.locator("#message-list li.msg")  # 60 messages, each with the app's reply: 120
    expect(messages).to_have_count(50)
    for loaded in (100, 120):
        page.locator("#messages").evaluate("(el) => { el.scrollTop = 0; }")
        expect(messages).to_have_count(loaded)
    expect(page.locator("#load-older")).to_be_hidden()


def test_search_type_filter_and_export(page, demo):
    finder, walker = new_user("finder"), new_user("walker")
    demo.simulate(finder, content="needle-%s in a haystack" % finder)
    demo.simulate(walker, "location")
    login(page, demo)
    page.select_option("#msgtype", "location")
    results = page.locator("#results .result")
    expect(results.filter(has_text=walker)).to_have_count(1)
    expect(results.filter(has_text=finder)).to_have_count(0)
    page.select_option("#msgtype", "")
    page.fill("#q", "needle-" + finder)
    expect(results).to_have_count(1)
    expect(results.locator("mark")).to_have_text("needle-" + finder)
    href = page.locator("#export-jsonl").get_attribute("href")
    assert "q=needle-" + finder in href and "format=jsonl" in href
    body = page.request.get(demo.url + href).text()
    assert [json.loads(line)["from_user"] for line in body.splitlines()] == [finder]
    csv_href = page.locator("#export-csv").get_attribute("href")
    assert page.request.get(demo.url + csv_href).ok
    results.first.click()
    expect(page.locator("#thread-user")).to_have_text(finder)
    page.click("#clear-filters")
    expect(page.locator("#conversations")).to_be_visible()
    expect(page.locator("#q")).to_have_value("")


def test_reply_is_sent_and_attributed(page, demo):
    user = new_user("asker")
    demo.simulate(user, content="VPN 连不上")
    login(page, demo)
    open_thread(page, user)
    box = page.locator("#reply")
    box.fill("第一行")
    box.press("Shift+Enter")  # a newline, not a send
    box.type("second line")
    expect(page.locator("#message-list li.msg.out:not(.automatic)")).to_have_count(0)
    box.press("Enter")
    reply = page.locator("#message-list li.msg.out:not(.automatic)").last
    expect(reply.locator(".text")).to_have_text("第一行\nsecond line")
    expect(reply).to_have_attribute("data-status", "sent")
    expect(reply.locator(".status")).to_have_text("已发送")
    expect(reply.locator(".operator")).to_have_text("admin 发送")
    expect(box).to_have_value("")
    expect(box).to_be_enabled()
    expect(conversation(page, user).locator(".conv-preview")).to_contain_text("第一行")


def test_failed_delivery_shows_the_error_and_retries(page, demo):
    """The sandbox delivers everything, so the API answers are stubbed here: this tests the page."""
    user = new_user("failing")
    demo.simulate(user, content="hi")
    login(page, demo)
    open_thread(page, user)
    failed = {"id": 900001, "app": "demo", "direction": "out", "msgtype": "text", "event": None,
              "event_key": None, "from_user": None, "to_user": user, "agent_id": "1000002", "msg_id": None,
              "create_time": None, "received_at": "2026-01-01T00:00:00Z", "content": "will fail",
              "status": "failed", "error": "81013 user & party & tag all invalid", "deliveries": 1,
              "operator": "admin", "attempts": 3, "media": None, "fields": {}}
    retried = []
    page.route("**/api/messages", lambda route: route.fulfill(status=201, json=failed))
    page.route("**/api/messages/900001/retry", lambda route: (
        retried.append(route.request.headers.get("x-xsrftoken")),
        route.fulfill(json={**failed, "status": "pending", "error": None})))
    page.fill("#reply", "will fail")
    page.press("#reply", "Enter")
    row = page.locator("#message-list li.msg.out[data-id='900001']")
    expect(row.locator(".error-text")).to_have_text("81013 user & party & tag all invalid")
    expect(row.locator(".status")).to_have_text("发送失败")
    row.locator("button.retry").click()
    expect(row).to_have_attribute("data-status", "pending")
    expect(row.locator("button.retry")).to_have_count(0)
    assert retried and retried[0] == page.locator("body").get_attribute("data-xsrf")


def test_html_in_messages_is_shown_as_text(page, demo):
    user = new_user("mallory")
    demo.simulate(user, content="hi")
    login(page, demo)
    open_thread(page, user)
    page.fill("#reply", "请讲")  # a manual reply pauses automation: no app reply comes after the next
    page.press("#reply", "Enter")
    expect(page.locator("#takeover")).to_be_visible()
    demo.simulate(user, content=XSS)
    expect(conversation(page, user).locator(".conv-preview")).to_have_text(XSS)
    expect(page.locator("#message-list li.msg.in .text").last).to_have_text(XSS)
    assert page.locator("#message-list img, #conversations img").count() == 0
    page.fill("#q", "onerror")  # search results render the same text
    expect(page.locator("#results .result-text").first).to_contain_text(XSS)
    page.wait_for_timeout(300)
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_message_types_events_and_unknown_fields(page, demo, tmp_path):
    user = new_user("kinds")
    demo.simulate(user, "location")
    demo.simulate(user, "link", "季度报告")
    demo.simulate(user, "click", "hello", "--event-key", "RUN_BACKUP")
    demo.simulate(user, "image")  # its media id is unknown to the sandbox: the download fails
    xml = tmp_path / "unknown.xml"
    xml.write_text("<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[%s]]></FromUserName>"
                   "<CreateTime>%d</CreateTime><MsgType><![CDATA[hologram]]></MsgType>"
                   "<Beam><Color>green</Color></Beam><MsgId>77%d</MsgId><AgentID>%s</AgentID></xml>"
                   % (demo.app["corp_id"], user, datetime.datetime.now().timestamp(), serial(),
                      demo.app["agent_id"]), encoding="utf-8")
    demo.simulate(user, "xml", "x", "--xml", str(xml))
    login(page, demo)
    open_thread(page, user)
    thread = page.locator("#message-list")
    expect(thread.locator(".location-label")).to_have_text("广州市天河区")
    expect(thread.locator(".location-coords")).to_contain_text("23.134521, 113.358803")
    link = thread.locator("a.link-title")
    expect(link).to_have_text("wecomd")
    expect(link).to_have_attribute("href", "https://example.com/a?b=1&c=2")
    expect(thread.locator("li.system .system-text")).to_have_text("%s 点击了菜单 RUN_BACKUP" % user)
    expect(thread.locator(".image-pending .media-note")).to_contain_text(re.compile("正在下载|下载失败"))
    unknown = thread.locator("li.msg[data-msgtype='hologram']")
    expect(unknown.locator(".unknown-type")).to_have_text("消息类型：hologram")
    expect(unknown.locator("dt", has_text="Beam.Color")).to_have_count(1)
    expect(unknown.locator("dd", has_text="green")).to_have_count(1)


def test_language_switch_is_remembered(page, demo):
    user = new_user("bilingual")
    demo.simulate(user, content="hello")
    login(page, demo)
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    open_thread(page, user)
    page.click(".lang button[value=en_US]")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#thread-user")).to_have_text(user)  # still in the same conversation
    expect(page.locator(".logout button")).to_have_text("Sign out")
    expect(page.locator("#conn-text")).to_have_text("Live")
    page.reload()
    expect(page.locator("#list-title")).to_have_text("Conversations")
    page.click(".lang button[value=zh_CN]")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator(".logout button")).to_have_text("退出登录")
    expect(page.locator("#conn-text")).to_have_text("实时连接")


def test_english_browsers_get_english(browser, demo):
    page = open_page(browser, locale="en-US", timezone="Europe/Berlin")
    try:
        page.goto(demo.url + "/login")
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator(".login-card h1")).to_have_text("Sign in")
        assert page.problems == []
    finally:
        page.context.close()


def test_phone_shows_the_list_then_the_thread(browser, demo):
    user = new_user("phone")
    demo.simulate(user, content="from a phone")
    page = open_page(browser, width=390, height=844)
    try:
        login(page, demo)
        expect(page.locator(".list-pane")).to_be_visible()
        expect(page.locator(".thread-pane")).to_be_hidden()
        open_thread(page, user)
        expect(page.locator(".list-pane")).to_be_hidden()
        expect(page.locator("#back")).to_be_visible()
        expect(page.locator("#reply")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
        page.click("#back")
        expect(page.locator(".list-pane")).to_be_visible()
        expect(page.locator(".thread-pane")).to_be_hidden()
        assert page.problems == []
    finally:
        page.context.close()


@pytest.mark.slow  # waits for the busy demo's scripted traffic, every type
def test_every_type_live_with_media_and_screenshot(browser, busy_demo):
    """The demo's own traffic: stored images preview, voice downloads, events; then the screenshot."""
    page = open_page(browser, width=1280, height=860)
    try:
        login(page, busy_demo)
        expect(conversation(page, "wangwu")).to_be_visible(timeout=30_000)
        open_thread(page, "zhangsan")
        image = page.locator("#message-list .media.image img")
        expect(image).to_be_visible(timeout=30_000)
        expect(image).to_have_attribute("src", re.compile(r"^/api/media/\d+$"))
        page.wait_for_function("() => document.querySelector('#message-list .media.image img').naturalWidth > 0")
        voice = page.locator("#message-list a.media.file", has_text="sample.amr")
        expect(voice).to_be_visible(timeout=30_000)
        expect(voice.locator(".file-meta")).to_contain_text("KB")
        open_thread(page, "lisi")
        expect(page.locator("#message-list li.system", has_text="RUN_BACKUP")).to_be_visible(timeout=30_000)
        expect(page.locator("#message-list .text", has_text="<script>alert(1)</script>")).to_be_visible(timeout=30_000)
        open_thread(page, "zhangsan")
        page.fill("#reply", "收到，我们马上看一下。")
        page.press("#reply", "Enter")
        expect(page.locator("#message-list li.msg.out").last).to_have_attribute("data-status", "sent")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
        assert page.problems == []
    finally:
        page.context.close()


# ------------------------------------------------------------------ rules and automation

def automation(page, rule, scope="#message-list"):
    """The automation lines of `rule` in the open thread."""
    return page.locator("%s li.auto[data-rule='%s']" % (scope, rule))


def test_rule_runs_show_under_their_messages(page, demo):
    """greet answers passively; backup's command runs and its output arrives live through the API."""
    user = new_user("ruled")
    demo.simulate(user, content="你好")
    login(page, demo)
    open_thread(page, user)
    greet = automation(page, "greet")
    expect(greet).to_have_count(1)
    expect(greet).to_have_attribute("data-status", "ok")
    expect(greet).to_have_attribute("data-path", "passive")
    expect(greet.locator(".auto-line")).to_have_text(re.compile(r"^greet\s*回复\s*成功\s*被动回复"))
    forward = automation(page, "forward")  # the demo's webhook rule forwards everything, then continues
    expect(forward).to_have_attribute("data-action", "webhook")
    expect(forward).to_have_attribute("data-status", "ok")
    expect(forward.locator(".auto-action")).to_have_text("Webhook")
    # The passive reply is in the thread too, as an automatic message naming its rule.
    passive = page.locator("#message-list li.msg.out")
    expect(passive).to_have_count(1)
    expect(passive).to_have_attribute("data-rule", "greet")
    expect(passive.locator(".operator")).to_have_text("规则 greet")

    page.evaluate("window.__sameDocument = true")
    demo.simulate(user, "click", "x", "--event-key", "RUN_BACKUP")
    click = page.locator("#message-list li.system[data-event='click']")
    backup_reply = click.locator("li.auto[data-rule='backup'][data-action='reply']")
    backup_run = click.locator("li.auto[data-rule='backup'][data-action='run']")
    expect(backup_reply).to_have_attribute("data-path", "passive")
    expect(backup_run).to_have_attribute("data-status", "ok")
    expect(backup_run).to_have_attribute("data-path", "api")
    expect(backup_run.locator(".auto-line")).to_contain_text("命令")
    expect(backup_run.locator(".auto-line")).to_contain_text("成功")
    expect(backup_run.locator(".auto-line")).to_contain_text("经 API 发送")
    expect(backup_run.locator(".auto-error")).to_have_count(0)
    output = backup_run.locator("details.auto-output")
    expect(output.locator("pre")).to_be_hidden()
    output.locator("summary").click()
    expect(output.locator("pre")).to_have_text(re.compile(r"^备份开始 RUN_BACKUP\s*$"))
    sent = page.locator("#message-list li.msg.out").last
    expect(sent.locator(".text")).to_have_text("备份开始 RUN_BACKUP")
    expect(sent.locator(".operator")).to_have_text("规则 backup")
    expect(sent).to_have_attribute("data-status", "sent")
    expect(conversation(page, user).locator(".conv-preview")).to_have_text("规则：备份开始 RUN_BACKUP")
    assert page.evaluate("window.__sameDocument") is True  # all of it arrived without a reload


def test_automatic_replies_show_in_the_thread(page, demo):
    """The app's own reply and a rule's passive reply are messages, badged automatic, live too."""
    user = new_user("auto")
    demo.simulate(user, content="随便问问")  # only the forwarding webhook matches: the app's reply answers
    demo.simulate(user, content="你好")  # greet answers
    login(page, demo)
    open_thread(page, user)
    app_reply = page.locator("#message-list li.msg.out.automatic[data-rule='']")
    expect(app_reply).to_have_count(1)
    expect(app_reply).to_have_attribute("data-automatic", "passive")
    expect(app_reply.locator(".text")).to_have_text("已收到，我们会尽快回复")
    expect(app_reply.locator(".auto-badge")).to_have_text("自动回复")
    expect(app_reply.locator(".operator")).to_have_text("应用默认回复")
    expect(app_reply.locator(".status")).to_have_text("被动回复")
    greet = page.locator("#message-list li.msg.out.automatic[data-rule='greet']")
    expect(greet.locator(".auto-badge")).to_have_text("自动回复")
    expect(greet.locator(".operator")).to_have_text("规则 greet")
    expect(greet.locator(".text")).to_have_text(re.compile(r"^你好，%s！" % user))
    # The webhook forwarded the first message and answered nothing: it says so, never "no reply",
    # as the app's reply (the next row) did answer.
    forward = page.locator("#message-list li.msg.in").first.locator("li.auto[data-rule='forward']")
    expect(forward.locator(".auto-path")).to_have_text("已转发")
    expect(page.locator("#message-list")).not_to_contain_text("无回复")
    # A new message's automatic answer arrives live, and is the conversation's preview.
    page.evaluate("window.__sameDocument = true")
    demo.simulate(user, content="还有一件事")
    expect(app_reply).to_have_count(2)
    expect(conversation(page, user).locator(".conv-preview")).to_have_text(APP_REPLY)
    assert page.evaluate("window.__sameDocument") is True
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "automatic-replies.png"), full_page=True)


def test_failed_rule_runs_show_error_and_output_as_text(page, demo):
    """The demo's rules all succeed, so the thread's answer is stubbed here: this tests the page."""
    user = new_user("broken")
    demo.simulate(user, content="hi")
    base = {"id": 900100, "app": "demo", "direction": "in", "msgtype": "text", "event": None,
            "event_key": None, "from_user": user, "to_user": demo.app["corp_id"], "agent_id": "1000002",
            "msg_id": "1", "create_time": None, "received_at": "2026-01-01T00:00:00Z", "content": "部署",
            "status": "received", "error": None, "deliveries": 1, "operator": None, "attempts": 0,
            "media": None, "fields": {}}
    run = {"rule": "deploy", "path": None, "output": None, "error": None, "exit_code": None, "duration_ms": None,
           "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:02Z"}
    message = {**base, "automation": [
        {**run, "id": 1, "action": "run", "status": "failed", "exit_code": 2, "duration_ms": 1530,
         "path": "api", "error": "exit status 2", "output": XSS + "\nline two"},
        {**run, "id": 2, "action": "run", "status": "timeout", "error": "stopped after 120 s", "path": "api"},
        {**run, "id": 3, "action": "webhook", "status": "error", "error": "connection refused"},
        {**run, "id": 4, "action": "reply", "status": "skipped", "path": "none",
         "error": "automation paused: an operator replied by hand (human takeover)"},
        {**run, "id": 5, "action": "run", "status": "running", "finished_at": None},
        {**run, "id": 6, "action": "webhook", "status": "pending", "finished_at": None},
    ]}
    page.route(re.compile(r".*/api/messages\?.*user=%s.*" % user),
               lambda route: route.fulfill(json={"messages": [message], "next": None}))
    page.route("**/api/messages/900100", lambda route: route.fulfill(json=message))
    login(page, demo)
    open_thread(page, user)
    lines = page.locator("#message-list li.msg[data-id='900100'] li.auto")
    expect(lines.locator(".auto-status")).to_have_text([
        "失败（退出码 2）", "超时", "出错", "已跳过：自动化已暂停", "运行中…", "等待中…"])
    expect(lines.locator(".auto-action")).to_have_text(["命令", "命令", "Webhook", "回复", "命令", "Webhook"])
    expect(lines.nth(0).locator(".auto-error")).to_have_text("exit status 2")
    expect(lines.nth(0).locator(".auto-path")).to_have_text("经 API 发送")
    expect(lines.nth(0).locator(".auto-duration")).to_have_text("1.5 s")
    expect(lines.nth(1).locator(".auto-error")).to_have_text("stopped after 120 s")
    expect(lines.nth(2).locator(".auto-error")).to_have_text("connection refused")
    expect(lines.nth(3).locator(".auto-error")).to_have_count(0)  # skipped says why in its status
    expect(lines.nth(3).locator(".auto-path")).to_have_count(0)
    expect(lines.filter(has=page.locator(".auto-failed"))).to_have_count(0)
    expect(page.locator("#message-list li.auto.auto-failed")).to_have_count(3)
    lines.nth(0).locator("details.auto-output summary").click()
    expect(lines.nth(0).locator("pre")).to_have_text(XSS + "\nline two")
    assert page.locator("#message-list img").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("typeof window.__xss") == "undefined"


def rules_row(page, name):
    return page.locator("#rules-body tr[data-rule='%s']" % name)


def test_rules_view_lists_rules_in_order_with_counts(page, demo):
    user = new_user("counted")
    demo.simulate(user, content="你好呀")
    login(page, demo)
    page.click("#nav-rules")
    expect(page).to_have_url(re.compile(r"#/rules$"))
    expect(page.locator("#rules-view")).to_be_visible()
    expect(page.locator("#main-view")).to_be_hidden()
    expect(page.locator("#nav-rules")).to_have_attribute("aria-current", "page")
    # Tried in this order: the demo bot's ask rule has priority -5 and forward -1, the rest keep the
    # file's order (the demo's 微信客服 rules last).
    expect(page.locator("#rules-body tr")).to_have_count(9)
    names = page.locator("#rules-body .rule-name").all_inner_texts()
    assert names == ["bot-ask", "forward", "greet", "help", "leave", "backup", "welcome", "kf-welcome", "kf-price"]
    greet = rules_row(page, "greet")
    expect(greet.locator(".rule-when")).to_have_text("text contains 你好")
    expect(greet.locator(".rule-app")).to_have_text("全部应用")
    expect(greet.locator(".does-reply .does-text")).to_have_text("你好，{user_name}！发送“帮助”查看可以做什么。")
    expect(greet.locator(".rule-continue")).to_have_text("否")
    expect(greet.locator(".rule-hits")).to_have_text(re.compile(r"^[1-9][0-9]*$"))
    expect(greet.locator(".rule-last time")).to_have_text(re.compile(r"\S"))
    expect(greet.locator(".failures-some")).to_have_count(0)
    expect(rules_row(page, "leave").locator(".rule-app")).to_have_text("demo")
    expect(rules_row(page, "help").locator(".does-text")).to_contain_text("请假 3 天 看病")
    backup = rules_row(page, "backup")
    expect(backup.locator(".does-run .does-text")).to_have_text("/bin/echo 备份开始 {event_key}")
    expect(backup.locator(".does-run .does-note")).to_have_text("超时 120 秒")
    forward = rules_row(page, "forward")
    expect(forward.locator(".rule-continue")).to_have_text("是")
    expect(forward.locator(".rule-order .rule-priority")).to_have_text("优先级 -1")
    expect(forward.locator(".does-webhook .does-text")).to_have_text(re.compile(r"^http://127\.0\.0\.1:\d+/demo/webhook$"))
    expect(forward.locator("a")).to_have_count(0)  # a URL from the config is text, not a link
    expect(page.locator("#rules-settings")).to_contain_text("30 分钟")

    # Live: a new 你好 counts as a hit without a reload.
    hits = int(greet.locator(".rule-hits").inner_text())
    demo.simulate(user, content="你好，再来一次")
    expect(greet.locator(".rule-hits")).to_have_text(str(hits + 1), timeout=20_000)

    page.click("#nav-conversations")
    expect(page.locator("#main-view")).to_be_visible()
    expect(page.locator("#rules-view")).to_be_hidden()
    expect(conversation(page, user)).to_be_visible()


def test_manual_reply_pauses_automation_until_resumed(page, demo):
    user = new_user("takeover")
    demo.simulate(user, content="你好")
    login(page, demo)
    open_thread(page, user)
    banner = page.locator("#takeover")
    expect(automation(page, "greet")).to_have_attribute("data-status", "ok")
    expect(banner).to_be_hidden()
    expect(conversation(page, user).locator(".paused-tag")).to_have_count(0)

    page.fill("#reply", "我来处理")
    page.press("#reply", "Enter")
    expect(banner).to_be_visible()
    until = page.evaluate("async (u) => (await (await fetch('/api/conversations')).json())"
                          ".conversations.find((c) => c.user === u).paused_until", user)
    parsed = datetime.datetime.fromisoformat(until.replace("Z", "+00:00"))
    local = parsed.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%H:%M")
    expect(banner.locator("#takeover-text")).to_have_text(re.compile(r"^自动化已暂停至 .*%s（人工接管）$" % local))
    expect(conversation(page, user).locator(".paused-tag")).to_have_text("已暂停")

    # While paused, the rule is skipped and says why.
    demo.simulate(user, content="你好，在吗")
    skipped = page.locator("#message-list li.msg.in").last.locator("li.auto[data-rule='greet']")
    expect(skipped).to_have_attribute("data-status", "skipped")
    expect(skipped.locator(".auto-status")).to_have_text("已跳过：自动化已暂停")

    page.click("#resume")
    expect(banner).to_be_hidden()
    expect(conversation(page, user).locator(".paused-tag")).to_have_count(0)
    page.reload()  # resumed on the server, not only in the page
    expect(page.locator("#thread-user")).to_have_text(user)
    expect(page.locator("#message-list li.msg").first).to_be_visible()
    expect(banner).to_be_hidden()
    demo.simulate(user, content="你好，又是我")
    again = page.locator("#message-list li.msg.in").last.locator("li.auto[data-rule='greet']")
    expect(again).to_have_attribute("data-status", "ok")
    expect(again).to_have_attribute("data-path", "passive")


def test_rules_in_english(browser, demo):
    user = new_user("english")
    demo.simulate(user, content="你好")
    page = open_page(browser, locale="en-US", timezone="Europe/Berlin")
    try:
        login(page, demo)
        open_thread(page, user)
        expect(automation(page, "greet").locator(".auto-line")).to_have_text(
            re.compile(r"^greet\s*Reply\s*ok\s*passive reply"))
        page.click("#nav-rules")
        expect(rules_row(page, "greet").locator(".rule-app")).to_have_text("all apps")
        expect(page.locator("#rules-table th").nth(6)).to_have_text("Hits")
        assert page.problems == []
    finally:
        page.context.close()


def test_phone_reaches_the_rules(browser, demo):
    page = open_page(browser, width=390, height=844)
    try:
        login(page, demo)
        expect(page.locator("#nav-conversations")).to_be_hidden()  # the current view's tab
        # Everything in the top bar fits: nothing cut off, the language switch included.
        assert page.evaluate("""() => [...document.querySelectorAll('.topbar > *, .lang button, .view-tab')]
            .every((n) => n.getBoundingClientRect().right <= window.innerWidth
                          && (n.clientWidth === 0 || n.scrollWidth <= n.clientWidth))""")
        page.click("#nav-rules")
        expect(page.locator("#rules-view")).to_be_visible()
        expect(page.locator(".list-pane")).to_be_hidden()
        greet = rules_row(page, "greet")
        expect(greet.locator(".rule-hits")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert page.evaluate("document.getElementById('rules-view').scrollWidth") <= 390
        page.click("#nav-conversations")
        expect(page.locator(".list-pane")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert page.problems == []
    finally:
        page.context.close()


def test_rules_screenshot(browser, demo):
    user = new_user("shot")
    demo.simulate(user, content="你好")
    demo.simulate(user, "click", "x", "--event-key", "RUN_BACKUP")
    page = open_page(browser, width=1280, height=860)
    try:
        login(page, demo)
        page.click("#nav-rules")
        expect(rules_row(page, "backup").locator(".rule-hits")).to_have_text(re.compile(r"^[1-9]"))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "rules.png"), full_page=True)
        assert (ARTIFACTS / "rules.png").stat().st_size > 10_000
        page.click("#nav-conversations")
        open_thread(page, user)
        expect(page.locator("#message-list li.msg.out[data-automatic='api'] .operator")).to_have_text("规则 backup")
        page.locator("li.auto[data-rule='backup'][data-action='run'] summary").click()
        page.screenshot(path=str(ARTIFACTS / "automation.png"), full_page=True)
        assert page.problems == []
    finally:
        page.context.close()
