"""智能机器人 template cards on a real server: a rule's `card` shown in answer to a message, the
template_card_event of its button answered at once with update_template_card carrying the event's
task_id, the card limits checked before anything is sent, and a bot's fallback `reply =` never
standing in for an answering rule (ask, card)."""
from __future__ import annotations

import json
import time

from support.bot import BotTestCase

from wecomd.automation import rules as rulesmod
from wecomd.wecom import cards

CARD = {"card_type": "button_interaction", "main_title": {"title": "审批 {from_user} 的请假"},
        "button_list": [{"text": "同意", "style": 1, "key": "approve"}, {"text": "拒绝", "style": 2, "key": "reject"}]}
DONE = {"card_type": "text_notice", "main_title": {"title": "已处理：{event_key}"}}


def _event(task_id: str, key: str, msgid: str = "card-ev-1") -> dict:
    return {"msgid": msgid, "aibotid": "AIBOT", "chattype": "single", "from": {"userid": "zhangsan"},
            "msgtype": "event", "create_time": 1733467811,
            "event": {"eventtype": "template_card_event", "template_card_event": {
                "card_type": "button_interaction", "event_key": key, "task_id": task_id}},
            "response_url": "http://127.0.0.1:9/cgi-bin/aibot/response?response_code=x"}


class BotCardTest(BotTestCase):
    def setUp(self) -> None:
        self.deadline = 30
        super().setUp()

    def get_app(self):
        self.extra_config += (
            "\n[rule:leave]\napp = assistant\nwhen = text equals 请假\npriority = -2\ncard = %s\n"
            "\n[rule:approved]\napp = assistant\nwhen = click approve\ncard = %s\n"
            % (json.dumps(CARD, ensure_ascii=False), json.dumps(DONE, ensure_ascii=False)))
        return super().get_app()

    def test_a_card_is_shown_and_its_button_updates_it_with_the_events_task_id(self):
        payload = self.message("请假")
        shown = self.frame(self.post(payload))
        self.assertEqual(shown["msgtype"], "template_card")
        card = shown["template_card"]
        self.assertEqual(card["main_title"]["title"], "审批 zhangsan 的请假")  # template fields filled in
        self.assertTrue(cards.TASK_ID.match(card["task_id"]), card["task_id"])
        self.assertEqual(self.frame(self.post(payload))["template_card"]["task_id"], card["task_id"])  # a retry
        started = time.monotonic()
        resp = self.post(_event(card["task_id"], "approve"))
        elapsed = time.monotonic() - started
        update = self.frame(resp)
        self.assertLess(elapsed, 5.0)  # WeCom drops an answer after 5 s (generous: a shared machine)
        self.assertEqual(update, {"response_type": "update_template_card", "template_card": {
            "card_type": "text_notice", "main_title": {"title": "已处理：approve"}, "task_id": card["task_id"]}})
        # Both cards are in the thread as the rules' automatic answers, each recorded as a run.
        answers = [m for m in self.rows() if m["direction"] == "out"]
        self.assertEqual(sorted(a["content"] for a in answers), ["[卡片] 审批 zhangsan 的请假", "[卡片已更新] 已处理：approve"])
        runs = [(r["rule"], r["action"], r["status"], r["path"]) for m in self.inbound() for r in m["automation"]]
        self.assertEqual(sorted(runs), [("approved", "card", "ok", "passive"), ("leave", "card", "ok", "passive")])

    def test_a_card_event_no_rule_answers_gets_an_empty_reply(self):
        resp = self.post(_event("wecomd-abc", "unknown-key"))
        self.assertEqual((resp.code, resp.body), (200, b""))
        self.assertEqual(len(self.inbound()), 1)  # stored all the same

    def test_a_card_event_without_a_task_id_is_not_answered_with_a_card(self):
        event = _event("x", "approve")
        del event["event"]["template_card_event"]["task_id"]
        resp = self.post(event)
        self.assertEqual((resp.code, resp.body), (200, b""))
        runs = [r for m in self.inbound() for r in m["automation"]]
        self.assertEqual([(r["status"], r["error"]) for r in runs], [("error", "the event carries no task_id")])


class BotFallbackTest(BotTestCase):
    """A bot's `reply =` answers only what no rule answers: an ask rule's message streams."""

    def get_app(self):
        from wecomd.automation import echo_model

        self.model_server, base_url = self.io_loop.run_sync(lambda: echo_model.start(echo_model.EchoModel(delay=0.01)))
        self.extra_config = self.extra_config.replace("stream_deadline", "reply = 稍后回复\nstream_deadline")
        self.extra_config += ("\n[llm:echo]\nbase_url = %s\nmodel = echo\n\n"
                              "[rule:ask]\napp = assistant\nwhen = text contains 请问\nask = echo\n" % base_url)
        return super().get_app()

    def tearDown(self) -> None:
        self.model_server.stop()
        super().tearDown()

    def test_the_fallback_reply_does_not_replace_an_ask_rules_stream(self):
        first = self.frame(self.post(self.message("请问 几点下班")))
        self.assertNotEqual(first["stream"]["content"], "稍后回复")
        stream = self.db(self.services.store.bot_streams.get, first["stream"]["id"])
        self.assertEqual(stream["source"], "model:echo")
        other = self.frame(self.post(self.message("随便说说")))  # no rule: the fallback
        self.assertEqual((other["stream"]["content"], other["stream"]["finish"]), ("稍后回复", True))


def test_card_limits_are_checked_before_anything_is_sent():
    ok = {"card_type": "button_interaction", "button_list": [{"text": "a", "key": "k"}]}
    assert cards.problems(ok) == []
    assert cards.problems({**ok, "button_list": [{"text": "a", "key": "k%d" % i} for i in range(7)]}) == [
        "button_list holds 7 items: WeCom takes 1 to 6"]
    assert cards.problems({**ok, "task_id": "has space"}) == ["task_id must be 1 to 128 of 0-9 A-Z a-z _ - @"]
    assert cards.problems({**ok, "task_id": "a" * 129}) == ["task_id must be 1 to 128 of 0-9 A-Z a-z _ - @"]
    assert cards.problems({**ok, "button_list": [{"text": "a", "key": "k" * 1025}]}) == [
        "button_list[0].key is over 1024 bytes"]
    assert cards.problems({"card_type": "vote_interaction", "submit_button": {"text": "t", "key": "s"},
                           "checkbox": {"question_key": "q", "option_list": [{"id": "x" * 129, "text": "t"}]}}) == [
        "checkbox.option_list[0].id is over 128 bytes"]
    assert cards.problems({"card_type": "multiple_interaction", "submit_button": {"text": "t", "key": "s"},
                           "select_list": [{"question_key": "q%d" % i, "option_list": [{"id": "a", "text": "a"}]}
                                           for i in range(4)]}) == ["select_list holds 4 items: WeCom takes 1 to 3"]
    assert cards.problems({"card_type": "text_notice", "jump_list": [{}] * 4}) == [
        "jump_list holds 4 items: WeCom takes 0 to 3"]
    assert cards.problems({"card_type": "poster"})[0].startswith("card_type must be one of")
    assert cards.problems({"card_type": "button_interaction"}) == ["a button_interaction card needs button_list"]
    # A rendered field that makes a key too long is refused when the answer is built.
    long_key = rulesmod.render_card({"card_type": "button_interaction", "button_list": [{"text": "a", "key": "{content}"}]},
                                    {"content": "x" * 2000})
    try:
        cards.card_reply(long_key, "t1")
    except cards.CardError as exc:
        assert "over 1024 bytes" in str(exc)
    else:
        raise AssertionError("a too-long key was accepted")


def test_check_reports_a_bad_card_naming_the_rule():
    raw = {"bad": {"app": "assistant", "when": "text equals x", "card": '{"card_type": "button_interaction", '
                   '"button_list": []}'},
           "notjson": {"when": "any", "card": "{oops"},
           "both": {"when": "any", "card": '{"card_type": "text_notice"}', "reply": "hi"},
           "field": {"when": "any", "card": '{"card_type": "text_notice", "main_title": {"title": "{nope"}}'}}
    found = rulesmod.problems(raw, ["assistant"])
    assert "[rule:bad] card: button_list holds 0 items: WeCom takes 1 to 6" in found
    assert any(p.startswith("[rule:notjson] card: not JSON") for p in found)
    assert "[rule:both] card: a card is the whole answer: set it without reply, run or ask" in found
    assert any(p.startswith("[rule:field] card:") for p in found)
