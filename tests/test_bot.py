"""The 智能机器人 channel on a real server, with WeCom's bot side played by wechatpy's AES: URL
verification with receive-id "", encrypted JSON stream frames, refresh polls answered from the
database (after a restart too), one answer per msgid, group chats, the deadline and the
response_url called exactly once, enter_chat and feedback_event."""
from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
from datetime import datetime, timedelta
from pathlib import Path

from wechatpy.crypto import _get_signature
from wechatpy.enterprise.crypto import PrpCrypto

from support.bot import _IDS, AES_KEY, BOT, KEY, TOKEN, BotTestCase, _text, slow_answer


class BotCallbackTest(BotTestCase):
    def test_url_verification_uses_the_empty_receive_id(self):
        echostr = _text(PrpCrypto(KEY).encrypt("1234567890123456789", ""))
        timestamp, nonce = str(int(time.time())), "99"
        query = urllib.parse.urlencode({"msg_signature": _get_signature(TOKEN, timestamp, nonce, echostr),
                                        "timestamp": timestamp, "nonce": nonce, "echostr": echostr})
        resp = self.fetch("/callback/assistant?" + query)
        self.assertEqual((resp.code, resp.body), (200, b"1234567890123456789"))
        with_corp = _text(PrpCrypto(KEY).encrypt("1234567890123456789", "ww0123456789abcdef"))
        query = urllib.parse.urlencode({"msg_signature": _get_signature(TOKEN, timestamp, nonce, with_corp),
                                        "timestamp": timestamp, "nonce": nonce, "echostr": with_corp})
        self.assertEqual(self.fetch("/callback/assistant?" + query).code, 403)

    def test_a_rule_reply_is_one_finished_stream_and_a_retry_gets_the_same_stream(self):
        payload = self.message("明天天气怎么样")
        first = self.frame(self.post(payload, nonce="1597212914"), nonce="1597212914")
        self.assertEqual(first["msgtype"], "stream")
        self.assertEqual((first["stream"]["finish"], first["stream"]["content"]), (True, "今天晴，25 度"))
        again = self.frame(self.post(payload))
        self.assertEqual(again["stream"]["id"], first["stream"]["id"])
        inbound = self.inbound()
        self.assertEqual(len(inbound), 1)
        self.assertEqual(inbound[0]["deliveries"], 2)
        answers = [m for m in self.rows() if m["direction"] == "out"]
        self.assertEqual([a["content"] for a in answers], ["今天晴，25 度"])  # one answer, in the thread

    def test_an_unknown_stream_is_finished_at_once(self):
        self.assertEqual(self.poll("s-nobody-knows")["stream"], {"id": "s-nobody-knows", "finish": True, "content": ""})

    def test_a_group_message_is_the_groups_conversation_with_its_sender(self):
        self.post(self.message("群里问天气", chattype="group", chatid="CHAT1", **{"from": {"userid": "lisi"}}))
        row = self.inbound()[0]
        self.assertEqual(row["from_user"], "lisi")
        _, convs = self.api("/api/conversations")
        self.assertEqual([(c["app"], c["user"]) for c in convs["conversations"]], [("assistant", "CHAT1")])
        self.assertEqual(convs["conversations"][0]["chat"], "group")  # though its last message is the answer
        self.assertEqual(convs["conversations"][0]["last_message"]["direction"], "out")
        self.post(self.message("单聊"))
        _, convs = self.api("/api/conversations")
        self.assertEqual({c["user"]: c["chat"] for c in convs["conversations"]}, {"CHAT1": "group", "zhangsan": "single"})

    def test_enter_chat_gets_the_welcome_text_and_feedback_is_kept_with_its_answer(self):
        event = {"msgid": "ev-1", "aibotid": "AIBOT", "chattype": "single", "from": {"userid": "zhangsan"},
                 "msgtype": "event", "create_time": 1733467811, "event": {"eventtype": "enter_chat"}}
        self.assertEqual(self.frame(self.post(event)), {"msgtype": "text", "text": {"content": "你好，我是助手"}})
        answer = self.frame(self.post(self.message("天气")))
        feedback = {"msgid": "ev-2", "aibotid": "AIBOT", "chattype": "single", "from": {"userid": "zhangsan"},
                    "msgtype": "event", "event": {"eventtype": "feedback_event", "feedback_event": {
                        "id": answer["stream"]["id"], "type": 2, "inaccurate_reason_list": [2]}}}
        resp = self.post(feedback)
        self.assertEqual((resp.code, resp.body), (200, b""))
        stream = self.db(self.services.store.bot_streams.get, answer["stream"]["id"])
        self.assertEqual(stream["feedback"]["inaccurate_reason_list"], [2])
        # The console's thread shows it on the question, with the answer's source; never its response_url.
        _, page = self.api("/api/messages", app="assistant", user="zhangsan")
        rated = [m for m in page["messages"] if m.get("answer")]
        self.assertEqual(len(rated), 1)
        self.assertEqual((rated[0]["content"], rated[0]["answer"]["source"], rated[0]["answer"]["feedback"]["type"]),
                         ("天气", "reply", 2))
        self.assertNotIn("response_url", json.dumps(rated[0]["answer"]))

    def test_bad_input_is_refused(self):
        timestamp = str(int(time.time()))
        for body in (b"not json", b"{}", b'{"encrypt": 7}'):
            query = urllib.parse.urlencode({"msg_signature": "0" * 40, "timestamp": timestamp, "nonce": "1"})
            self.assertEqual(self.fetch("/callback/assistant?" + query, method="POST", body=body).code, 400)
        resp = self.post({"msgid": "x", "aibotid": "AIBOT"})  # no msgtype
        self.assertEqual(resp.code, 400)
        self.assertEqual(self.inbound(), [])


class BotStreamingTest(BotTestCase):
    deadline = 30

    def test_a_streamed_answer_grows_without_shrinking_and_finishes(self):
        self.services.bots.sources = lambda bot, message, inbound: slow_answer(["广州", "今日", "：29度", "，多云"], 0.3)
        first = self.frame(self.post(self.message("广州呢")))
        self.assertEqual(first["stream"]["finish"], False)
        self.assertIn("feedback", first["stream"])
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = self.poll(first["stream"]["id"])["stream"]
            seen.append(frame["content"])
            if frame["finish"]:
                break
            self.io_loop.run_sync(lambda: asyncio.sleep(0.1))
        self.assertEqual(seen[-1], "广州今日：29度，多云")
        self.assertTrue(all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:])), seen)
        self.assertGreater(len(set(seen)), 2, seen)  # polls saw it grow

    def test_a_first_piece_that_comes_at_once_is_not_held_back_until_the_next(self):
        async def pause_after_first():
            yield "马上"
            await asyncio.sleep(3)
            yield "，然后"
        self.services.bots.sources = lambda bot, message, inbound: pause_after_first()
        first = self.frame(self.post(self.message("快问题")))
        # Within a write interval (0.2 s) plus a poll's worth of slack, not after the 3 s pause.
        seen = self.wait_for(lambda: self.poll(first["stream"]["id"])["stream"]["content"], timeout=1.5)
        self.assertEqual(seen, "马上")

    def test_a_failing_source_ends_the_stream_with_a_notice(self):
        async def broken():
            yield "开始"
            raise RuntimeError("model server said 500")
        self.services.bots.sources = lambda bot, message, inbound: broken()
        first = self.frame(self.post(self.message("问题")))
        final = self.wait_for(lambda: (lambda f: f if f["finish"] else None)(self.poll(first["stream"]["id"])["stream"]))
        self.assertTrue(final["content"].startswith("开始") and "model server said 500" in final["content"])

    def test_a_poll_after_a_restart_gets_what_was_stored(self):
        self.services.bots.sources = lambda bot, message, inbound: slow_answer(["第一段", "第二段"] + ["…"] * 50, 0.25)
        first = self.frame(self.post(self.message("长问题")))
        stream_id = first["stream"]["id"]
        self.wait_for(lambda: self.poll(stream_id)["stream"]["content"])
        stored = self.db(self.services.store.bot_streams.get, stream_id)["content"]
        self.io_loop.run_sync(self.services.close)
        from wecomd.services import Services
        self.services = Services(self.config)  # another process on the same database
        self.io_loop.run_sync(self.services.start)
        self._app = __import__("wecomd.app", fromlist=["make_app"]).make_app(self.services)
        self.http_server.request_callback = self._app
        polled = self.poll(stream_id)["stream"]
        # What was written before the stop; past its deadline (and a grace) any instance finishes it
        # with a notice, so WeCom stops polling.
        self.assertTrue(polled["content"].startswith(stored) and stored, (polled, stored))
        self.assertFalse(polled["finish"])
        later = datetime.utcnow() + timedelta(seconds=self.deadline + 6)
        self.services.bots.clock = lambda: later
        polled = self.poll(stream_id)["stream"]
        self.assertTrue(polled["finish"] and polled["content"].startswith(stored) and "中断" in polled["content"])


class BotDeadlineTest(BotTestCase):
    deadline = 1

    def test_past_the_deadline_the_stream_closes_and_the_answer_goes_once_to_the_response_url(self):
        self.services.bots.sources = lambda bot, message, inbound: slow_answer(["慢", "慢地", "回答"], 0.6)
        payload = self.message("慢问题")
        first = self.frame(self.post(payload))
        closed = self.wait_for(lambda: (lambda f: f if f["finish"] else None)(self.poll(first["stream"]["id"])["stream"]))
        self.assertIn("完成后会另行发送", closed["content"])
        self.wait_for(lambda: self.fake.bot_responses)
        self.io_loop.run_sync(lambda: asyncio.sleep(0.3))
        self.assertEqual(list(self.fake.bot_responses.values()),
                         [{"msgtype": "markdown", "markdown": {"content": "慢慢地回答"}}])
        stream = self.db(self.services.store.bot_streams.get, first["stream"]["id"])
        self.assertEqual(stream["response_state"], "sent")
        # Claimed once: never again, whoever asks.
        self.assertIsNone(self.db(self.services.store.bot_streams.claim_response, first["stream"]["id"],
                                  __import__("datetime").datetime.utcnow()))


class BotResponseUrlFailureTest(BotTestCase):
    deadline = 1

    def late_answer(self, payload: dict, then=None) -> dict:
        self.services.bots.sources = lambda bot, message, inbound: slow_answer(["慢", "回答"], 0.8)
        first = self.frame(self.post(payload))
        if then is not None:
            then()
        stream_id = first["stream"]["id"]
        return self.wait_for(lambda: (lambda s: s if s["response_state"] in ("failed", "expired") else None)(
            self.db(self.services.store.bot_streams.get, stream_id)))

    def test_a_response_url_wecom_says_was_used_is_called_once_and_the_failure_shows_on_the_message(self):
        payload = self.message("问一个慢问题")
        code = payload["response_url"].rsplit("=", 1)[1]
        self.fake.bot_responses[code] = {"msgtype": "markdown", "markdown": {"content": "别人用过了"}}
        stream = self.late_answer(payload)
        self.assertEqual(stream["response_state"], "failed")
        self.assertIn("40014", stream["response_error"])
        _, page = self.api("/api/messages", app="assistant", user="zhangsan")
        question = next(m for m in page["messages"] if m["direction"] == "in")
        self.assertEqual(question["answer"]["response_state"], "failed")
        self.assertIn("40014", question["answer"]["response_error"])
        # Never called again: a manual reply now is refused, nothing sent.
        self.assertEqual(self.api("/api/messages", "POST", {"app": "assistant", "to_user": "zhangsan",
                                                           "content": "人工"})[0], 409)
        self.assertEqual(self.fake.bot_responses[code]["markdown"]["content"], "别人用过了")

    def test_an_expired_response_url_is_not_called_and_shows_expired(self):
        def an_hour_later():
            self.services.bots.clock = lambda: datetime.utcnow() + timedelta(hours=1, minutes=1)
        stream = self.late_answer(self.message("过期的问题"), then=an_hour_later)
        self.assertEqual(stream["response_state"], "expired")
        self.assertEqual(self.fake.bot_responses, {})


class BotSimulatorTest(BotTestCase):
    def test_the_simulator_polls_a_stream_to_its_end(self):
        from wecomd.wecom.simulate import BotSimulator

        self.services.bots.sources = lambda bot, message, inbound: slow_answer(["一", "二", "三"], 0.3)
        frames = []

        async def converse():
            sim = BotSimulator(self.get_url("/callback/assistant"), token=TOKEN, aes_key=AES_KEY)
            try:
                verified = await sim.verify()
                results = await sim.converse(sim.message("数一数", chatid="CHAT9"), interval=0.1,
                                             on_frame=frames.append)
            finally:
                sim.close()
            return verified, results

        verified, results = self.io_loop.run_sync(converse)
        self.assertTrue(verified.ok, verified.error)
        self.assertTrue(all(r.ok for r in results), [r.error for r in results])
        self.assertEqual(frames[-1]["stream"], {"id": frames[0]["stream"]["id"], "finish": True, "content": "一二三"})
        self.assertGreater(len(results), 2)


def test_wecomd_simulate_bot_against_a_server(tmp_path):
    from support.cli import wecomd
    from support.config import write_config
    from support.server import ServerProcess, free_port

    port = free_port()
    conf = write_config(tmp_path, port, extra=BOT % 30)
    server = ServerProcess(conf, port)
    try:
        run = wecomd("simulate", "--bot", "%s/callback/assistant" % server.url, "--token", TOKEN,
                     "--aes-key", AES_KEY, "--content", "明天天气", "--poll", "0.1")
    finally:
        assert server.terminate() == 0, server.output()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verify: ok" in run.stdout
    assert "finish: 今天晴，25 度" in run.stdout


class BotConsoleTest(BotTestCase):
    def test_bots_are_listed_beside_apps(self):
        _, data = self.api("/api/apps")
        self.assertEqual([(a["name"], a["kind"]) for a in data["apps"]],
                         [("helpdesk", "app"), ("quiet", "app"), ("assistant", "bot")])

    def test_a_manual_reply_goes_once_through_the_newest_messages_response_url(self):
        payload = self.message("没有规则回答的问题")
        resp = self.post(payload)
        self.assertEqual((resp.code, resp.body), (200, b""))  # no rule, no reply: empty
        status, row = self.api("/api/messages", "POST", {"app": "assistant", "to_user": "zhangsan", "content": "人工回复"})
        self.assertEqual((status, row["status"], row["operator"]), (201, "sent", "admin"))
        code = payload["response_url"].rsplit("=", 1)[1]
        self.assertEqual(self.fake.bot_responses[code], {"msgtype": "markdown", "markdown": {"content": "人工回复"}})
        status, data = self.api("/api/messages", "POST", {"app": "assistant", "to_user": "zhangsan", "content": "再一条"})
        self.assertEqual(status, 409)
        self.assertIn("one answer per message", data["error"])
        self.assertEqual(len(self.fake.bot_responses), 1)
        status, data = self.api("/api/messages", "POST", {"app": "assistant", "to_user": "nobody", "content": "x"})
        self.assertEqual(status, 409)
        self.assertEqual(self.api("/api/messages", "POST", {"app": "assistant", "to_user": "zhangsan",
                                                           "msgtype": "news", "news": {}})[0], 400)


def bot_encrypt(data: bytes, aes_key: str = AES_KEY) -> bytes:
    """What WeCom serves at a bot media URL: AES-256-CBC, IV key[:16], PKCS#7 to 32 bytes."""
    from Crypto.Cipher import AES

    key = base64.b64decode(aes_key + "=")
    pad = 32 - len(data) % 32
    return AES.new(key, AES.MODE_CBC, iv=key[:16]).encrypt(data + bytes([pad]) * pad)


class BotMediaTest(BotTestCase):
    def media_message(self, msgtype: str, media_id: str) -> dict:
        return {"msgid": "m-%s-%d" % (media_id, next(_IDS)), "aibotid": "AIBOT", "chattype": "single",
                "from": {"userid": "zhangsan"}, "msgtype": msgtype,
                msgtype: {"url": self.fake_base + "/bot-media/" + media_id}}

    def stored(self, message_id: int) -> dict:
        return self.wait_for(lambda: (lambda m: m if m["media"]["status"] != "pending" else None)(
            self.db(self.services.store.messages.get, message_id)))

    def test_images_and_files_are_downloaded_and_decrypted_to_the_vault(self):
        png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
        report = "季度报告，第一稿。\n".encode("utf-8") * 3000  # several chunks
        self.fake.bot_media["img1"] = (bot_encrypt(png), None)
        self.fake.bot_media["file1"] = (bot_encrypt(report), "报告.txt")
        self.post(self.media_message("image", "img1"))
        self.post(self.media_message("file", "file1"))
        image, document = sorted(self.inbound(), key=lambda m: m["id"])
        image, document = self.stored(image["id"]), self.stored(document["id"])
        self.assertEqual((image["media"]["status"], image["media"]["type"], image["media"]["size"]),
                         ("stored", "image/png", len(png)))
        self.assertEqual((document["media"]["status"], document["media"]["name"]), ("stored", "报告.txt"))
        resp = self.fetch("/api/media/%d" % image["id"], headers=self.session())
        self.assertEqual((resp.code, resp.body), (200, png))
        resp = self.fetch("/api/media/%d" % document["id"], headers=self.session())
        self.assertEqual(resp.body, report)
        self.assertEqual([p.name for p in (self.tmp / "media").rglob(".partial-*")], [])

    def test_another_key_or_too_large_media_fails_and_leaves_nothing_behind(self):
        self.fake.bot_media["wrong"] = (bot_encrypt(b"\xff\xd8\xff" + b"x" * 100, "Z" * 43), None)
        self.fake.bot_media["big"] = (bot_encrypt(b"\xff\xd8\xff" + b"y" * 5000), None)
        self.services.media.bot_max_bytes = 4000
        self.post(self.media_message("image", "wrong"))
        self.post(self.media_message("image", "big"))
        wrong, big = sorted(self.inbound(), key=lambda m: m["id"])
        self.assertIn("cannot decrypt", self.stored(wrong["id"])["media"]["error"])
        self.assertIn("larger than", self.stored(big["id"])["media"]["error"])
        self.assertEqual([p for p in (self.tmp / "media").rglob("*") if p.is_file()], [])


class BotAskTest(BotTestCase):
    """An `ask` rule streams the answer of an OpenAI-compatible model server (the echo model on
    loopback) into the stream, with the conversation's earlier turns as its history."""

    def get_app(self):
        from wecomd.automation import echo_model

        self.model = echo_model.EchoModel(delay=0.05, think=True)
        self.model_server, base_url = self.io_loop.run_sync(lambda: echo_model.start(self.model))
        self.extra_config += ("\n[llm:echo]\nbase_url = %s\nmodel = echo\nsystem = 你是助手\n\n"
                              "[rule:ask]\napp = assistant\nwhen = text contains 请问\nask = echo\nhistory = 4\n"
                              % base_url)
        return super().get_app()

    def tearDown(self) -> None:
        self.model_server.stop()
        super().tearDown()

    def test_an_ask_rule_streams_the_models_answer_with_the_conversations_history(self):
        self.frame(self.post(self.message("明天天气")))  # an earlier turn, answered by the weather rule
        first = self.frame(self.post(self.message("请问 打印机 在哪")))
        self.assertFalse(first["stream"]["finish"])
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            frame = self.poll(first["stream"]["id"])["stream"]
            seen.append(frame["content"])
            if frame["finish"]:
                break
            self.io_loop.run_sync(lambda: asyncio.sleep(0.1))
        self.assertTrue(seen[-1].endswith("请问 打印机 在哪"), seen[-1])
        self.assertIn("<think>", seen[-1])  # the model's reasoning, shown as WeCom shows it
        self.assertTrue(all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:])), seen)
        request = self.model.requests[-1]
        self.assertEqual(request["messages"][0], {"role": "system", "content": "你是助手"})
        self.assertEqual([m["content"] for m in request["messages"][1:]],
                         ["明天天气", "今天晴，25 度", "请问 打印机 在哪"])
        stream = self.db(self.services.store.bot_streams.get, first["stream"]["id"])
        self.assertEqual((stream["source"], stream["finished"]), ("model:echo", True))
        # The finished answer is in the thread as the ask rule's automatic answer.
        answers = self.wait_for(lambda: [m for m in self.rows() if m["direction"] == "out" and m["rule"] == "ask"])
        self.assertEqual(answers[0]["content"], seen[-1])


class BotCommandTest(BotTestCase):
    """A `run` rule's stdout streams into a bot's stream line by line as the command writes it."""

    def setUp(self) -> None:
        import sys
        import tempfile
        self.script = Path(tempfile.mkdtemp(prefix="wecomd-bot-cmd-")) / "count.py"
        self.script.write_text("import sys, time\nfor n in range(4):\n    print('第%d行' % n, flush=True)\n"
                               "    time.sleep(0.4)\n", encoding="utf-8")
        self.extra_config_more = "\n[rule:count]\napp = assistant\nwhen = text contains 数一数\nrun = %s %s\n" % (
            sys.executable, self.script)
        super().setUp()

    def get_app(self):
        self.extra_config += self.extra_config_more
        return super().get_app()

    def test_the_commands_lines_grow_the_stream_and_the_runner_leaves_it_alone(self):
        first = self.frame(self.post(self.message("数一数")))
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            frame = self.poll(first["stream"]["id"])["stream"]
            seen.append(frame["content"])
            if frame["finish"]:
                break
            self.io_loop.run_sync(lambda: asyncio.sleep(0.1))
        self.assertEqual(seen[-1].split(), ["第0行", "第1行", "第2行", "第3行"])
        self.assertGreater(len({s for s in seen if s}), 2, seen)  # it grew line by line
        stream = self.db(self.services.store.bot_streams.get, first["stream"]["id"])
        self.assertEqual(stream["source"], "command:count")
        # One run of the command: the stream's; the rule runner did not run it a second time.
        self.assertEqual([m for m in self.rows() if m["direction"] == "out" and m["status"] == "failed"], [])


class BotWebhookTest(BotTestCase):
    """A webhook rule with `stream = yes` POSTs the signed message and streams the response body
    (chunked text here) into the bot's stream."""

    def get_app(self):
        from tornado import httpserver, netutil, web

        received = self.received = []

        class Chunks(web.RequestHandler):
            async def post(self):
                received.append((json.loads(self.request.body), self.request.headers.get("X-Wecomd-Signature")))
                for piece in ("正在", "查询", "…", "找到了"):
                    self.write(piece)
                    await self.flush()
                    await asyncio.sleep(0.35)

        sockets = netutil.bind_sockets(0, "127.0.0.1")
        self.hook_server = httpserver.HTTPServer(web.Application([("/hook", Chunks)]))
        self.hook_server.add_sockets(sockets)
        self.extra_config += ("\n[rule:hook]\napp = assistant\nwhen = text contains 查\nwebhook = http://127.0.0.1:%d/hook\n"
                              "webhook_secret = %s\nstream = yes\n" % (sockets[0].getsockname()[1], "s" * 32))
        return super().get_app()

    def tearDown(self) -> None:
        self.hook_server.stop()
        super().tearDown()

    def test_the_webhooks_body_grows_the_stream(self):
        first = self.frame(self.post(self.message("查一下订单")))
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            frame = self.poll(first["stream"]["id"])["stream"]
            seen.append(frame["content"])
            if frame["finish"]:
                break
            self.io_loop.run_sync(lambda: asyncio.sleep(0.1))
        self.assertEqual(seen[-1], "正在查询…找到了")
        self.assertGreater(len({s for s in seen if s}), 2, seen)
        body, signature = self.received[0]  # posted once, signed, with the stored message
        self.assertEqual(len(self.received), 1)
        self.assertEqual((body["rule"], body["app"], body["message"]["content"]), ("hook", "assistant", "查一下订单"))
        self.assertTrue(signature)
