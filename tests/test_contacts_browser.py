"""Contact names, desktop notifications and the unread count in a real browser (Playwright + Debian's
Chromium against `wecomd demo`, whose sandbox address book names lisi 李四 of 财务部)."""
from __future__ import annotations

import re

from support.browser import conversation, login, new_user, open_thread

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips every test
    expect = None

# The browser's Notification API, recorded instead of shown (headless Chromium has no desktop).
NOTIFICATIONS = """
window.__notes = [];
window.Notification = class {
  constructor(title, options) { window.__notes.push({ title, body: options.body }); }
  static requestPermission() { return Promise.resolve("granted"); }
};
window.Notification.permission = "granted";
"""


def test_names_in_the_list_and_the_thread_header(page, demo):
    demo.simulate("lisi", content="报销单已提交")
    login(page, demo)
    row = conversation(page, "lisi")
    expect(row.locator(".conv-user")).to_have_text("李四")  # looked up, pushed live
    expect(row.locator(".conv-userid")).to_have_text("lisi")
    open_thread(page, "lisi")
    expect(page.locator("#thread-name")).to_have_text("李四")
    expect(page.locator("#thread-contact")).to_have_text("财务部 · 会计")
    unknown = new_user("nobody")
    demo.simulate(unknown, content="我不在通讯录里")
    expect(conversation(page, unknown).locator(".conv-user")).to_have_text(unknown)
    open_thread(page, unknown)
    expect(page.locator("#thread-name")).to_be_hidden()


def test_opt_in_notifications_for_unassigned_messages_and_the_unread_count_in_the_title(page, demo):
    page.add_init_script(NOTIFICATIONS)
    login(page, demo)
    toggle = page.locator("#notify-toggle")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    user = new_user("notify")
    demo.simulate(user, content="没开通知时的消息")
    expect(conversation(page, user)).to_be_visible()
    assert page.evaluate("window.__notes.length") == 0  # not opted in: nothing shown
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    demo.simulate(user, content="打印机坏了")
    page.wait_for_function("window.__notes.length > 0")
    assert page.evaluate("window.__notes[0]") == {"title": user, "body": "打印机坏了"}
    expect(page).to_have_title(re.compile(r"^\(\d+\) "))
    page.reload()  # the choice is remembered by this browser
    expect(page.locator("#notify-toggle")).to_have_attribute("aria-pressed", "true")
