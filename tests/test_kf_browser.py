"""微信客服 in the console, in Chromium (Playwright) against `wecomd demo`, whose app `kefu` serves the
sandbox's account wkDEMO (servicers zhangsan 接待中 and lisi not): a customer writes through
`wecomd simulate --kf`, and an operator takes the session over, gives it to the bot, transfers and
ends it from the thread's session bar. Each step is checked on the page and in the sandbox WeCom
(GET /api/kf/session reads the session from it with service_state/get)."""
from __future__ import annotations

import configparser
import json

from support.browser import login, login_as, run_cli, serial

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips every test
    expect = None

KFID = "wkDEMO"


def customer() -> str:
    return "wmBrowser%04d" % serial()


def say(demo, external: str, content: str) -> None:
    """The customer writes: into the demo's sandbox, then the kf_msg_or_event callback."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(demo.dir / "wecomd.conf", encoding="utf-8")
    kefu = parser["app:kefu"]
    code, output = run_cli(["simulate", demo.url + "/callback/kefu", "--no-verify", "--token", kefu["token"],
                            "--aes-key", kefu["encoding_aes_key"], "--corp-id", kefu["corp_id"],
                            "--agent-id", kefu["agent_id"], "--kf", KFID, "--customer", external,
                            "-c", str(demo.dir / "wecomd.conf"), "--content", content])
    assert code == 0, output


def wecom_session(page, demo, external: str) -> dict:
    """The session as the sandbox WeCom has it (the console's own API asks service_state/get)."""
    response = page.request.get(demo.url + "/api/kf/session?app=kefu&user=%s/%s" % (KFID, external))
    assert response.ok, response.text()
    return json.loads(response.text())


def open_customer(page, external: str, nickname: str):
    row = page.locator("a.conv[data-app='kefu'][data-user='%s/%s']" % (KFID, external))
    expect(row.locator(".conv-user")).to_have_text(nickname)  # the nickname from customer/batchget
    row.click()
    expect(page.locator("#thread-name")).to_have_text(nickname)
    bar = page.locator("#kf-session")
    expect(bar).to_be_visible()
    return bar


def test_take_over_transfer_refused_and_end_from_the_console(page, demo):
    external = customer()
    nickname = "微信用户" + external[-4:]  # what the sandbox calls a customer it did not know
    say(demo, external, "耳机没声音了，能换一个吗？")
    login(page, demo)
    bar = open_customer(page, external, nickname)
    expect(bar.locator("#kf-state")).to_have_text("未处理")
    expect(bar.locator("button.kf-move")).to_have_text(["转人工接待", "交给智能助手", "转入排队"])

    # Take over: zhangsan (接待中) gets the session, greeting the customer with the move's code.
    expect(bar.locator("#kf-servicer option")).to_have_text(["zhangsan", "lisi（未在接待）"])
    bar.locator("#kf-servicer").select_option("zhangsan")
    bar.locator("#kf-message").fill("您好，我是客服张三")
    bar.locator("#kf-take").click()
    expect(bar.locator("#kf-state")).to_have_text("由人工接待：zhangsan")
    session = wecom_session(page, demo, external)
    assert (session["service_state"], session["servicer_userid"]) == (3, "zhangsan")
    greeting = page.locator("#message-list li.msg.out").filter(has_text="您好，我是客服张三")
    expect(greeting).to_have_attribute("data-status", "sent")
    # From a human only a transfer or the end: never back to the bot, never to the queue.
    expect(bar.locator("button.kf-move")).to_have_text(["转接", "结束会话"])
    expect(bar.locator("#kf-bot")).to_have_count(0)

    # A transfer to lisi, who is not in reception: WeCom refuses (95014), the bar says why.
    bar.locator("#kf-servicer").select_option("lisi")
    bar.locator("#kf-take").click()
    expect(bar.locator("#kf-error")).to_contain_text("95014")
    expect(bar.locator("#kf-state")).to_have_text("由人工接待：zhangsan")
    assert wecom_session(page, demo, external)["servicer_userid"] == "zhangsan"

    # End it: no move is left.
    bar.locator("#kf-message").fill("感谢咨询，再见")
    bar.locator("#kf-end").click()
    expect(bar.locator("#kf-state")).to_have_text("已结束")
    expect(bar.locator("button.kf-move")).to_have_count(0)
    assert wecom_session(page, demo, external)["service_state"] == 4
    expect(page.locator("#message-list li.msg.out").filter(has_text="感谢咨询，再见")).to_have_attribute(
        "data-status", "sent")


def test_give_an_untouched_session_to_the_bot_and_reply_and_recall(page, demo):
    external = customer()
    say(demo, external, "你们几点下班？")
    login(page, demo)
    bar = open_customer(page, external, "微信用户" + external[-4:])
    bar.locator("#kf-bot").click()
    expect(bar.locator("#kf-state")).to_have_text("由智能助手接待")
    assert wecom_session(page, demo, external)["service_state"] == 1
    # From the bot: to the queue or a human, and no way back to "untouched".
    expect(bar.locator("button.kf-move")).to_have_text(["转人工接待", "转入排队"])
    expect(page.locator("a.conv[data-user='%s/%s'] .kf-tag" % (KFID, external))).to_have_text("由智能助手接待")

    # A manual reply goes out through kf/send_msg within the window, and can be recalled (2 minutes).
    page.fill("#reply", "我们 18 点下班")
    page.press("#reply", "Enter")
    row = page.locator("#message-list li.msg.out").filter(has_text="我们 18 点下班")
    expect(row).to_have_attribute("data-status", "sent")
    expect(bar.locator("#kf-window")).to_contain_text("已发 1/5 条")
    recall = row.locator("button.recall")
    recall.click()
    recall.click()
    expect(row).to_have_attribute("data-status", "recalled")


def test_the_customers_of_the_demo_have_their_nicknames(page, demo):
    say(demo, "wmDemoLili", "请问退货地址是哪里？")
    login(page, demo)
    bar = open_customer(page, "wmDemoLili", "莉莉")
    expect(bar.locator("#kf-state")).not_to_have_text("")
    page.fill("#q", "莉莉")  # the nickname finds the customer's messages
    results = page.locator("#results .result")
    expect(results.filter(has_text="请问退货地址是哪里？").first).to_be_visible()
    expect(results.first).to_contain_text("莉莉")


def test_a_viewer_sees_the_session_but_no_moves(second, demo):
    external = customer()
    say(demo, external, "只是看看")
    login_as(second, demo, "viewer")
    bar = open_customer(second, external, "微信用户" + external[-4:])
    expect(bar.locator("#kf-state")).to_have_text("未处理")
    expect(bar.locator("#kf-window")).to_contain_text("已发 0/5 条")
    expect(bar.locator("button.kf-move")).to_have_count(0)
