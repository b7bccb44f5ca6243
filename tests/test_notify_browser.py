"""Group robot runs in a real browser (Playwright + Debian's Chromium against `wecomd demo`): the
notify action's label, status and error under a message, and the rule in the rules view. The demo
configures no group, so the API's answers are stubbed: this tests the page."""
from __future__ import annotations

import re

from support.browser import login, new_user, open_thread

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips every test
    expect = None


def test_notify_runs_and_rules_show_their_group_status_and_error(page, demo):
    user = new_user("robot")
    demo.simulate(user, content="紧急")
    message = {"id": 900200, "app": "demo", "direction": "in", "msgtype": "text", "event": None, "event_key": None,
               "from_user": user, "to_user": demo.app["corp_id"], "agent_id": "1000002", "msg_id": "1",
               "create_time": None, "received_at": "2026-01-01T00:00:00Z", "content": "紧急", "status": "received",
               "error": None, "deliveries": 1, "operator": None, "attempts": 0, "media": None, "fields": {}}
    run = {"rule": "urgent", "action": "notify", "path": None, "exit_code": None, "output": None, "error": None,
           "duration_ms": 120, "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z"}
    message["automation"] = [
        {**run, "id": 1, "status": "ok", "output": "sent to group ops in 2 parts"},
        {**run, "id": 2, "status": "failed", "error": "errcode 93000: invalid webhook url — copy the key"},
        {**run, "id": 3, "status": "pending", "finished_at": None, "duration_ms": None},
    ]
    page.route(re.compile(r".*/api/messages\?.*user=%s.*" % user),
               lambda route: route.fulfill(json={"messages": [message], "next": None}))
    page.route("**/api/messages/900200", lambda route: route.fulfill(json=message))
    login(page, demo)
    open_thread(page, user)
    lines = page.locator("#message-list li.msg[data-id='900200'] li.auto")
    expect(lines.locator(".auto-action")).to_have_text(["群机器人"] * 3)
    expect(lines.locator(".auto-status")).to_have_text(["成功", "失败", "等待中…"])
    expect(lines.nth(0).locator(".auto-error")).to_have_count(0)
    expect(lines.nth(1).locator(".auto-error")).to_have_text("errcode 93000: invalid webhook url — copy the key")
    lines.nth(0).locator("details.auto-output summary").click()
    expect(lines.nth(0).locator("pre")).to_have_text("sent to group ops in 2 parts")

    rule = {"name": "urgent", "app": None, "when": "text contains 紧急", "reply": None, "run": None, "timeout": 60,
            "webhook": None, "continue": True, "priority": None, "notify": "ops", "notify_format": "markdown",
            "notify_text": "**{from_user}**：{content}", "hits": 3, "last_fired": None, "failures": 1}
    page.route("**/api/rules", lambda route: route.fulfill(json={"rules": [rule], "settings": {}}))
    page.click("#nav-rules")
    row = page.locator("#rules-body tr[data-rule='urgent']")
    notify = row.locator(".does-notify")
    expect(notify.locator(".does-kind")).to_have_text("群机器人")
    expect(notify.locator(".does-group")).to_have_text("ops")
    expect(notify.locator(".does-text")).to_have_text("**{from_user}**：{content}")
    expect(notify.locator(".does-note")).to_have_text("markdown")
    expect(row.locator(".rule-failures")).to_have_text("1")
