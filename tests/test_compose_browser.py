"""The reply box in a real browser (Playwright + Debian's Chromium against `wecomd demo`, whose
sandbox WeCom serves media/upload and message/recall): a pasted image with its preview, sent and
shown; recalling a sent message; a quick reply inserted by typing "/"."""
from __future__ import annotations

import base64

from support.browser import login, new_user, open_thread
from wecomd.wecom.sandbox import sample_png

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips every test
    expect = None

# Paste a file the way a browser does when an image is on the clipboard.
PASTE = """([data, name, type]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  const box = document.getElementById("reply");
  box.focus();
  box.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true }));
}"""


def paste(page, body: bytes, name: str, mime: str) -> None:
    page.evaluate(PASTE, [base64.b64encode(body).decode(), name, mime])


def test_a_pasted_image_shows_a_preview_and_is_sent_as_an_image(page, demo):
    user = new_user("paster")
    demo.simulate(user, content="打印机报错，截图发你")
    login(page, demo)
    open_thread(page, user)
    page.fill("#reply", "截图收到")
    paste(page, sample_png(48, 32), "image.png", "image/png")
    preview = page.locator("#attachment")
    expect(preview.locator("img.attachment-thumb")).to_be_visible()
    expect(preview.locator(".attachment-name")).to_have_text("image.png")
    expect(preview.locator(".attachment-meta")).to_contain_text("上限 10 MB")
    assert preview.locator("img.attachment-thumb").evaluate("(img) => img.naturalWidth") == 48
    page.press("#reply", "Enter")
    row = page.locator("#message-list li.msg.out[data-msgtype=image]")
    expect(row).to_have_attribute("data-status", "sent")
    image = row.locator("a.media.image img")
    expect(image).to_be_visible()
    assert image.evaluate("(img) => img.complete && img.naturalWidth") == 48  # the stored file, served back
    expect(preview).to_be_hidden()
    expect(page.locator("#reply")).to_have_value("截图收到")  # the text was not sent with it
    # A file over the limit never leaves the page.
    paste(page, b"\x89PNG\r\n\x1a\n" + bytes(10 * 2**20), "huge.png", "image/png")
    expect(preview.locator(".attachment-problem")).to_contain_text("10 MB")
    page.press("#reply", "Enter")
    expect(page.locator("#composer-error")).to_contain_text("10 MB")
    expect(page.locator("#message-list li.msg.out[data-msgtype=image]")).to_have_count(1)


def test_a_sent_message_is_recalled(page, demo):
    user = new_user("recaller")
    demo.simulate(user, content="会议几点")
    login(page, demo)
    open_thread(page, user)
    page.fill("#reply", "三点（发错了）")
    page.press("#reply", "Enter")
    row = page.locator("#message-list li.msg.out:not(.automatic)").last
    expect(row).to_have_attribute("data-status", "sent")
    recall = row.locator("button.recall")
    recall.click()
    expect(recall).to_have_text("确定撤回？")  # asks once more
    recall.click()
    expect(row).to_have_attribute("data-status", "recalled")
    expect(row.locator(".status")).to_have_text("已撤回")
    expect(row.locator("button.recall")).to_have_count(0)


def test_a_quick_reply_is_inserted_by_typing_a_slash(page, demo):
    user = new_user("quick")
    demo.simulate(user, content="密码忘了")
    login(page, demo)
    open_thread(page, user)
    page.click("#quick-manage-toggle")
    shortcut = "pw" + user[-4:]
    page.fill("#quick-shortcut", shortcut)
    page.fill("#quick-text", "{user_name}，您好：请在自助平台重置密码（账号 {from_user}）。")
    page.click("#quick-add")
    expect(page.locator("#quick-manage .quick-item[data-shortcut='%s']" % shortcut)).to_be_visible()
    page.click("#quick-manage-toggle")
    box = page.locator("#reply")
    box.fill("")
    box.type("/" + shortcut[:3])
    option = page.locator("#quick-picker li.quick-option[data-shortcut='%s']" % shortcut)
    expect(option).to_be_visible()
    expect(option).to_have_class("quick-option active")
    box.press("Enter")  # inserts, does not send
    # No name is known for this simulated user yet: {user_name} falls back to the UserID.
    expect(box).to_have_value("%s，您好：请在自助平台重置密码（账号 %s）。" % (user, user))
    expect(page.locator("#quick-picker")).to_be_hidden()
    expect(page.locator("#message-list li.msg.out:not(.automatic)")).to_have_count(0)
    box.press("Enter")
    reply = page.locator("#message-list li.msg.out:not(.automatic)").last
    expect(reply.locator(".text")).to_have_text("%s，您好：请在自助平台重置密码（账号 %s）。" % (user, user))
    expect(reply).to_have_attribute("data-status", "sent")


def test_markdown_warns_and_a_text_card_goes_out_as_a_card(page, demo):
    user = new_user("carder")
    demo.simulate(user, content="工单处理好了吗")
    login(page, demo)
    open_thread(page, user)
    expect(page.locator("#markdown-warning")).to_be_hidden()
    page.select_option("#compose-type", "markdown")
    expect(page.locator("#markdown-warning")).to_contain_text("微信插件")
    page.select_option("#compose-type", "textcard")
    expect(page.locator("#markdown-warning")).to_be_hidden()
    page.fill("#card-title", "工单 #42 已关闭")
    page.fill("#reply", "打印机已更换硒鼓")
    page.fill("#card-url", "https://example.com/t/42")
    page.press("#reply", "Enter")
    card = page.locator("#message-list li.msg.out[data-msgtype=textcard]")
    expect(card).to_have_attribute("data-status", "sent")
    expect(card.locator("a.link-title")).to_have_text("工单 #42 已关闭")
    expect(card.locator(".link-desc")).to_have_text("打印机已更换硒鼓")
    expect(page.locator("#card-title")).to_have_value("")
