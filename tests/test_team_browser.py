"""The admins' pages in a real browser (Playwright + Debian's Chromium against `wecomd demo`): add an
operator, who sees no admin page; disable them and their next action lands on the login page; a token
shown once; the audit log with a filter."""
from __future__ import annotations

import re


from support.browser import login

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips every test
    expect = None


def sign_in(page, demo, name, password):
    page.goto(demo.url + "/login")
    page.fill("#username", name)
    page.fill("#password", password)
    page.click(".login-card button[type=submit]")
    expect(page.locator("body")).to_have_attribute("data-user", name)


def test_an_admin_adds_an_operator_who_sees_no_admin_pages_and_disabling_signs_them_out(page, second, demo):
    login(page, demo)
    page.click("#nav-operators")
    expect(page.locator("#operators-view")).to_be_visible()
    form = page.locator("#operator-add")
    form.locator("input[name=name]").fill("li_ops")
    form.locator("select[name=role]").select_option("operator")
    form.locator("input[name=password]").fill("li-password-123")
    form.locator("button[type=submit]").click()
    row = page.locator("#operators-body tr[data-operator='li_ops']")
    expect(row).to_be_visible()

    sign_in(second, demo, "li_ops", "li-password-123")
    expect(second.locator("#nav-operators")).to_be_hidden()
    expect(second.locator("#nav-audit")).to_be_hidden()
    assert second.evaluate("fetch('/api/operators').then((r) => r.status)") == 403
    second.goto(demo.url + "/#/operators")  # typed by hand: the conversations, not the page
    expect(second.locator("#operators-view")).to_be_hidden()

    row.locator(".op-toggle").click()
    expect(page.locator("#operators-body tr[data-operator='li_ops']")).to_have_attribute("data-disabled", "1")
    second.reload()
    expect(second).to_have_url(re.compile(r"/login\?next="))  # the session ended with the account

    page.locator("#token-add select[name=operator]").select_option(index=0)
    page.locator("#token-add input[name=label]").fill("ci")
    page.locator("#token-add button[type=submit]").click()
    expect(page.locator("#token-shown")).to_contain_text("wcd_")
    expect(page.locator("#tokens-body tr")).to_have_count(1)

    page.click("#nav-audit")
    expect(page.locator("#audit-view")).to_be_visible()
    expect(page.locator("#audit-body tr[data-action='operator_add']")).to_have_count(1)
    page.locator("#audit-filter input[name=actor]").fill("li_ops")
    page.locator("#audit-filter button[type=submit]").click()
    expect(page.locator("#audit-body tr")).to_have_count(1)
    expect(page.locator("#audit-body tr").first).to_have_attribute("data-action", "login")
