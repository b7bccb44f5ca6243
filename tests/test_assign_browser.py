"""Assignment, open/closed state and internal notes in a real browser (Playwright + Debian's Chromium
against `wecomd demo`, which has an `operator` and a `viewer` account beside the admin)."""
from __future__ import annotations



from support.browser import conversation, login, login_as, new_user, open_thread

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips every test
    expect = None


def test_assign_to_me_and_filter_mine(page, demo):
    mine, other = new_user("mine"), new_user("notmine")
    demo.simulate(other, content="别人的问题")
    demo.simulate(mine, content="我的问题")
    login(page, demo)
    open_thread(page, mine)
    expect(page.locator("#assignee")).to_have_value("")
    page.click("#assign-me")
    expect(page.locator("#assignee")).to_have_value("admin")
    expect(page.locator("#assign-me")).to_be_hidden()
    row = conversation(page, mine)
    expect(row).to_have_attribute("data-assignee", "admin")
    expect(row.locator(".assignee-tag")).to_have_text("我")
    expect(conversation(page, other).locator(".assignee-tag")).to_have_count(0)
    page.click("#conv-filter button[data-filter=mine]")
    expect(page.locator("#conv-filter button[data-filter=mine]")).to_have_attribute("aria-pressed", "true")
    expect(conversation(page, other)).to_have_count(0)
    expect(conversation(page, mine)).to_be_visible()
    expect(page.locator("#conversations a.conv:not([data-assignee=admin])")).to_have_count(0)
    page.reload()  # the filter is remembered, the assignment is the server's
    expect(page.locator("#conv-filter button[data-filter=mine]")).to_have_attribute("aria-pressed", "true")
    expect(conversation(page, mine)).to_have_attribute("data-assignee", "admin")
    expect(conversation(page, other)).to_have_count(0)
    page.click("#conv-filter button[data-filter=unassigned]")
    expect(conversation(page, other)).to_be_visible()
    expect(conversation(page, mine)).to_have_count(0)
    page.click("#conv-filter button[data-filter=all]")
    expect(conversation(page, mine)).to_be_visible()


def test_a_note_is_shown_apart_from_the_messages_and_never_sent(page, demo):
    user = new_user("noted")
    demo.simulate(user, content="电脑蓝屏了")
    login(page, demo)
    open_thread(page, user)
    expect(page.locator("#message-list li.msg")).to_have_count(2)  # the message and the app's reply
    page.click("#note-box summary")
    page.fill("#note-text", "他上周也蓝屏过，先查内存")
    page.click("#note-add")
    note = page.locator("#message-list li.note")
    expect(note).to_have_count(1)
    expect(note.locator(".note-label")).to_have_text("内部备注")
    expect(note.locator(".note-author")).to_have_text("admin")
    expect(note.locator(".note-text")).to_have_text("他上周也蓝屏过，先查内存")
    expect(page.locator("#note-text")).to_have_value("")
    expect(page.locator("#message-list li.msg")).to_have_count(2)  # a note is no message
    # It sits after the messages before it, and a later message comes after it.
    demo.simulate(user, content="又蓝屏了")
    expect(page.locator("#message-list li.msg.in .text").last).to_have_text("又蓝屏了")
    order = page.locator("#message-list > li.msg, #message-list > li.note").evaluate_all(
        "(rows) => rows.map((row) => row.classList.contains('note') ? 'note' : row.classList.contains('in') ? 'in' : 'out')")
    assert order == ["in", "out", "note", "in", "out"], order
    # Its look: not a bubble of either side.
    assert note.evaluate("(n) => getComputedStyle(n).borderStyle") == "dashed"
    # Nothing went to WeCom: the conversation's preview is still the app's reply, not the note.
    expect(conversation(page, user).locator(".conv-preview")).not_to_contain_text("内存")
    sent = page.evaluate("async (u) => (await (await fetch('/api/messages?user=' + u)).json()).messages"
                         ".map((m) => m.content)", user)
    assert "他上周也蓝屏过，先查内存" not in sent
    page.reload()
    expect(page.locator("#message-list li.note .note-text")).to_have_text("他上周也蓝屏过，先查内存")


def test_a_second_browser_sees_the_assignment_and_the_note_arrive_live(page, second, demo):
    user = new_user("together")
    demo.simulate(user, content="谁来处理一下")
    login_as(second, demo, "operator")
    open_thread(second, user)
    second.evaluate("window.__sameDocument = true")
    login(page, demo)
    open_thread(page, user)
    page.click("#assign-me")
    page.click("#note-box summary")
    page.fill("#note-text", "我来处理")
    page.click("#note-add")
    expect(second.locator("#assignee")).to_have_value("admin")
    expect(conversation(second, user).locator(".assignee-tag")).to_have_text("admin")
    expect(second.locator("#message-list li.note .note-text")).to_have_text("我来处理")
    expect(second.locator("#message-list li.note .note-author")).to_have_text("admin")
    page.click("#state-toggle")
    expect(second.locator("#thread-state")).to_have_text("已关闭")
    expect(conversation(second, user)).to_have_attribute("data-state", "closed")
    assert second.evaluate("window.__sameDocument") is True  # live, not reloaded
    # The operator takes it over; the admin's page follows.
    second.select_option("#assignee", "operator")
    expect(page.locator("#assignee")).to_have_value("operator")
    expect(conversation(page, user).locator(".assignee-tag")).to_have_text("operator")


def test_an_inbound_message_reopens_a_closed_conversation(page, demo):
    user = new_user("reopen")
    demo.simulate(user, content="问题解决了，谢谢")
    login(page, demo)
    open_thread(page, user)
    expect(page.locator("#thread-state")).to_have_text("进行中")
    page.click("#state-toggle")
    expect(page.locator("#thread-state")).to_have_text("已关闭")
    expect(page.locator("#state-toggle")).to_have_text("重新打开")
    expect(conversation(page, user)).to_have_attribute("data-state", "closed")
    expect(conversation(page, user).locator(".state-tag")).to_have_text("已关闭")
    demo.simulate(user, content="不好意思，又坏了")
    expect(page.locator("#message-list li.msg.in .text").last).to_have_text("不好意思，又坏了")
    expect(page.locator("#thread-state")).to_have_text("进行中")
    expect(conversation(page, user)).to_have_attribute("data-state", "open")
    page.reload()  # the server says so too
    expect(conversation(page, user)).to_have_attribute("data-state", "open")
    expect(page.locator("#thread-state")).to_have_text("进行中")


def test_a_viewer_sees_the_assignment_but_cannot_change_it(second, demo):
    user = new_user("viewed")
    demo.simulate(user, content="只看不改")
    login_as(second, demo, "viewer")
    open_thread(second, user)
    expect(second.locator("#thread-state")).to_have_text("进行中")
    expect(second.locator("#assignee")).to_be_disabled()
    expect(second.locator("#assign-me")).to_be_hidden()
    expect(second.locator("#state-toggle")).to_be_hidden()
    expect(second.locator("#note-box")).to_be_hidden()
