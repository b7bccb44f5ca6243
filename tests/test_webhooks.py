"""Webhooks: a real SQLite Store behind the production DbWriter and a real Tornado receiver on loopback."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Optional

import pytest
from tornado import httpserver, netutil, web

from support.aio import async_test
from support.harness import StoreHarness
from support.server import free_port
from wecomd import __version__
from wecomd.wecom.messages import Message
from wecomd.workers.webhooks import SIGNATURE_HEADER, WebhookSender, body_for, parse_reply, sign, verify

SECRET = "whsec-0123456789abcdef"


class Receiver:
    """An operator's webhook endpoint: verifies signatures with `verify` and records deliveries.

    Told to fail the next N requests, to answer a reply (or any body and content type), or to be slow.
    """

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.deliveries: list[dict] = []
        self.fail_next = 0
        self.delay = 0.0
        self.reply: Optional[str] = None
        self.answer: Optional[tuple[str, bytes]] = None  # (content type, body)

    def handler(self):
        receiver = self

        class HookHandler(web.RequestHandler):
            async def post(self):
                request = self.request
                receiver.deliveries.append({
                    "headers": dict(request.headers), "body": request.body,
                    "verified": verify(receiver.secret, request.body, request.headers.get(SIGNATURE_HEADER))})
                if receiver.delay:
                    await asyncio.sleep(receiver.delay)
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    self.set_status(500)
                    return self.finish("database on fire")
                if receiver.answer is not None:
                    self.set_header("Content-Type", receiver.answer[0])
                    return self.finish(receiver.answer[1])
                if receiver.reply is not None:
                    self.set_header("Content-Type", "application/json; charset=utf-8")
                    return self.finish(json.dumps({"reply": receiver.reply}))
                self.set_header("Content-Type", "text/plain")
                self.finish("thanks")

        return HookHandler


class Harness(StoreHarness):
    """The store behind the production writer, the receiver, and the sender wired as Services would."""

    def __init__(self, tmp_path) -> None:
        super().__init__(tmp_path)
        self.receiver = Receiver()
        self.replies: list[tuple[int, str]] = []
        self.rules: dict[str, tuple] = {}

    async def __aenter__(self) -> "Harness":
        await super().__aenter__()
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        self.server = httpserver.HTTPServer(web.Application([("/hook", self.receiver.handler())]))
        self.server.add_sockets(sockets)
        self.url = "http://127.0.0.1:%d/hook" % sockets[0].getsockname()[1]
        self.rules["notify"] = (self.url, SECRET)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop_workers()
        self.server.stop()
        await super().__aexit__(*exc_info)

    def sender(self, start: bool = False, **options) -> WebhookSender:
        async def on_reply(run: dict, text: str) -> None:
            self.replies.append((run["id"], text))

        settings = {"clock": self.clock, "poll_interval": 0.02, "backoff_base": 2.0, "request_timeout": 5.0,
                    **options}
        sender = WebhookSender(self.db, self.store, lambda rule: self.rules.get(rule, (None, None)), on_reply,
                               self.events.append, **settings)
        return self.start(sender, start)

    async def message(self, content: str = "服务器宕机了", key: str = "k1") -> dict:
        fields = {"ToUserName": "ww0123", "FromUserName": "zhangsan", "MsgType": "text", "Content": content}
        message = Message(msgtype="text", from_user="zhangsan", to_user="ww0123", agent_id="1000002",
                          create_time=1764370000, msg_id="7357159753458634752", content=content,
                          fields=fields, raw="<xml/>")
        row, _ = await self.db(self.store.messages.save_inbound, "helpdesk", message, key)
        return await self.db(self.store.messages.get, row["id"])

    async def pending(self, rule: str = "notify", message: Optional[dict] = None) -> dict:
        """A pending webhook run with its body, as the orchestrator stores it before the first try."""
        message = message or await self.message()
        body = body_for(message, rule, "helpdesk")
        return await self.db(self.store.runs.start, message["id"], "helpdesk", "zhangsan", rule, "webhook",
                             status="pending", url=self.rules.get(rule, (None,))[0], payload=body)

    async def run(self, run_id: int) -> dict:
        return await self.db(self.store.runs.get, run_id)

    async def until_run(self, run_id: int, status: str, attempts: Optional[int] = None) -> dict:
        async def check():
            run = await self.run(run_id)
            if run["status"] == status and (attempts is None or run["attempts"] == attempts):
                return run
        return await self.until(check)

    def automation(self, run_id: int) -> list[tuple]:
        """(status, error) of the run in every published message event, in order."""
        return [(r["status"], r["error"]) for e in self.events if e["type"] == "message"
                for r in e["message"]["automation"] if r["id"] == run_id]


# --- signatures, bodies, replies ------------------------------------------------------------

def test_sign_matches_an_independent_hmac():
    body = '{"message":{"content":"你好"}}'.encode("utf-8")
    expected = hmac.new(SECRET.encode("utf-8"), body, hashlib.sha256).hexdigest()
    assert sign(SECRET, body) == "sha256=" + expected
    # RFC 4231 test case 2
    assert sign("Jefe", b"what do ya want for nothing?") == \
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert sign("", b"") == "sha256=b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"


def test_verify():
    body = b'{"rule":"notify"}'
    header = sign(SECRET, body)
    assert verify(SECRET, body, header) is True
    assert verify(SECRET, body, " %s " % header) is True
    for secret, signed, value in ((SECRET, body + b" ", header), ("other-secret", body, header),
                                  (SECRET, body, header.upper()), (SECRET, body, header[len("sha256="):]),
                                  (SECRET, body, "sha1=" + header[len("sha256="):]), (SECRET, body, ""),
                                  (SECRET, body, None), ("", body, sign("", body)),
                                  (SECRET, body, "sha256=" + "é" * 64)):
        assert verify(secret, signed, value) is False, (secret, signed, value)


def test_body_for_is_canonical_utf8_json():
    message = {"id": 7, "content": "服务器宕机了", "app": "helpdesk", "reply": "<xml>internal</xml>",
               "fields": {"b": 1, "a": [2, 1]}, "automation": []}
    body = body_for(message, "告警", "helpdesk")
    assert body == ('{"app":"helpdesk","message":{"app":"helpdesk","automation":[],"content":"服务器宕机了",'
                    '"fields":{"a":[2,1],"b":1},"id":7},"rule":"告警"}').encode("utf-8")
    reordered = dict(reversed(list(message.items())))
    assert body_for(reordered, "告警", "helpdesk") == body
    assert json.loads(body)["message"] == {k: v for k, v in message.items() if k != "reply"}


@pytest.mark.parametrize("body, content_type, expected", [
    (b'{"reply": "\xe5\xb7\xb2\xe9\x87\x8d\xe5\x90\xaf"}', "application/json", "已重启"),
    (b'{"reply": "ok", "other": 1}', "application/json; charset=utf-8", "ok"),
    (b'{"reply": "ok"}', "application/vnd.ops+json", "ok"),
    (b'\xef\xbb\xbf{"reply": "bom"}', "Application/JSON", "bom"),
    (b'{"reply": "ok"}', "text/plain", None),
    (b'{"reply": "ok"}', None, None),
    (b'{"reply": ""}', "application/json", None),
    (b'{"reply": "  "}', "application/json", None),
    (b'{"reply": 42}', "application/json", None),
    (b'{"reply": null}', "application/json", None),
    (b'{"text": "no reply key"}', "application/json", None),
    (b'["reply"]', "application/json", None),
    (b'"reply"', "application/json", None),
    (b"not json", "application/json", None),
    (b"\xff\xfe", "application/json", None),
    (b"", "application/json", None),
    (None, "application/json", None),
])
def test_parse_reply(body, content_type, expected):
    assert parse_reply(body, content_type) == expected


# --- delivering ----------------------------------------------------------------------------

@async_test
async def test_attempt_delivers_signed_body_with_headers(tmp_path):
    async with Harness(tmp_path) as h:
        run = await h.pending()
        delivered, reply = await h.sender().attempt(run)
        assert (delivered, reply) == (True, None)
        (delivery,) = h.receiver.deliveries
        headers = delivery["headers"]
        assert delivery["verified"] is True
        assert delivery["body"] == run["payload"].encode("utf-8")
        assert json.loads(delivery["body"])["message"]["content"] == "服务器宕机了"
        assert headers["Content-Type"] == "application/json"
        assert headers[SIGNATURE_HEADER] == "sha256=" + hmac.new(
            SECRET.encode(), delivery["body"], hashlib.sha256).hexdigest()
        assert headers["X-Wecomd-Delivery"] == str(run["id"])
        assert headers["X-Wecomd-Rule"] == "notify"
        assert headers["User-Agent"] == "wecomd/%s" % __version__
        done = await h.run(run["id"])
        assert (done["status"], done["output"], done["error"], done["attempts"]) == ("ok", "thanks", None, 0)
        assert done["duration_ms"] > 0 and done["finished_at"] is not None
        assert h.automation(run["id"]) == [("ok", None)]
        (event,) = h.events
        assert event["message"] == await h.db(h.store.messages.get, run["message_id"])
        assert h.replies == []


@async_test
async def test_attempt_returns_the_reply(tmp_path):
    async with Harness(tmp_path) as h:
        h.receiver.reply = "已重启 nginx"
        run = await h.pending()
        assert await h.sender().attempt(run) == (True, "已重启 nginx")
        done = await h.run(run["id"])
        assert done["status"] == "ok" and json.loads(done["output"]) == {"reply": "已重启 nginx"}
        assert h.replies == []  # the caller answers the first try's reply itself


@async_test
async def test_non_ascii_rule_name_is_percent_encoded_in_the_header(tmp_path):
    async with Harness(tmp_path) as h:
        h.rules["告警 100%"] = (h.url, SECRET)
        run = await h.pending(rule="告警 100%")
        assert await h.sender().attempt(run) == (True, None)
        (delivery,) = h.receiver.deliveries
        assert delivery["headers"]["X-Wecomd-Rule"] == "%E5%91%8A%E8%AD%A6 100%25"
        assert json.loads(delivery["body"])["rule"] == "告警 100%"


@async_test
async def test_answers_without_a_reply_are_delivered(tmp_path):
    async with Harness(tmp_path) as h:
        sender = h.sender()
        answers = [("text/html", b"<h1>{\"reply\": \"no\"}</h1>"), ("application/json", b'{"status": "ok"}'),
                   ("application/json", b"not json at all"), ("application/json", b"")]
        for n, answer in enumerate(answers):
            h.receiver.answer = answer
            run = await h.pending(message=await h.message(key="k%d" % n))
            assert await sender.attempt(run) == (True, None), answer
            done = await h.run(run["id"])
            assert (done["status"], done["output"]) == ("ok", answer[1].decode())
        assert len(h.receiver.deliveries) == 4 and h.replies == []


@async_test
async def test_long_answers_are_kept_as_an_excerpt(tmp_path):
    async with Harness(tmp_path) as h:
        h.receiver.answer = ("text/plain", ("日志" * 3000).encode("utf-8"))
        run = await h.pending()
        assert await h.sender().attempt(run) == (True, None)
        assert (await h.run(run["id"]))["output"] == "日志" * 1000


@async_test
async def test_a_500_then_success_through_the_loop_hands_the_reply_over_once(tmp_path):
    async with Harness(tmp_path) as h:
        h.receiver.fail_next = 1
        h.receiver.reply = "稍后处理"
        sender = h.sender()
        run = await h.pending()
        assert await sender.attempt(run) == (False, None)
        pending = await h.run(run["id"])
        assert (pending["status"], pending["attempts"]) == ("pending", 1)
        assert pending["error"] == "HTTP 500 Internal Server Error: database on fire"
        assert pending["next_attempt_at"] == "2026-11-28T23:00:02Z"  # backoff_base ** 1 seconds
        sender.start()
        h.clock.advance(1.9)
        sender.wake()
        await asyncio.sleep(0.15)
        assert len(h.receiver.deliveries) == 1  # not due yet
        h.clock.advance(0.2)
        sender.wake()
        done = await h.until_run(run["id"], "ok")
        await h.until(lambda: asyncio.sleep(0, h.replies))
        assert h.replies == [(run["id"], "稍后处理")]
        assert (done["attempts"], done["next_attempt_at"]) == (1, None)
        assert len(h.receiver.deliveries) == 2 and all(d["verified"] for d in h.receiver.deliveries)
        assert h.receiver.deliveries[0]["body"] == h.receiver.deliveries[1]["body"]
        for _ in range(3):
            h.clock.advance(600)
            sender.wake()
            await asyncio.sleep(0.05)
        assert len(h.receiver.deliveries) == 2 and len(h.replies) == 1
        assert h.automation(run["id"]) == [("pending", pending["error"]), ("ok", pending["error"])]


@async_test
async def test_receiver_down_is_retried_then_fails(tmp_path):
    async with Harness(tmp_path) as h:
        h.rules["notify"] = ("http://127.0.0.1:%d/hook" % free_port(), SECRET)
        sender = h.sender(start=True, max_attempts=3)
        run = await h.pending()
        for attempts in (1, 2):
            pending = await h.until_run(run["id"], "pending", attempts=attempts)
            assert "ConnectionRefusedError" in pending["error"]
            h.clock.advance(600)
            sender.wake()
        failed = await h.until_run(run["id"], "failed")
        assert "ConnectionRefusedError" in failed["error"] and "gave up after 3 attempts" in failed["error"]
        assert (failed["attempts"], failed["next_attempt_at"]) == (3, None) and failed["finished_at"]
        # The live event follows the committed row (the sender reads the message back to publish it).
        await h.until(lambda: asyncio.sleep(0, len(h.automation(run["id"])) == 3))
        assert [status for status, _ in h.automation(run["id"])] == ["pending", "pending", "failed"]
        h.clock.advance(3600)
        sender.wake()
        await asyncio.sleep(0.1)
        assert (await h.run(run["id"]))["attempts"] == 3 and h.replies == []


@async_test
async def test_slow_receiver_times_out_and_is_retried(tmp_path):
    async with Harness(tmp_path) as h:
        h.receiver.delay = 0.5
        sender = h.sender(request_timeout=0.1)
        run = await h.pending()
        assert await sender.attempt(run) == (False, None)
        pending = await h.run(run["id"])
        assert pending["attempts"] == 1 and "Timeout" in pending["error"]


@async_test
async def test_a_cancelled_attempt_still_finishes_and_hands_the_reply_over(tmp_path):
    async with Harness(tmp_path) as h:
        h.receiver.delay = 0.3
        h.receiver.reply = "处理完了"
        sender = h.sender()
        run = await h.pending()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sender.attempt(run), 0.05)  # the passive budget ran out
        done = await h.until_run(run["id"], "ok")
        await h.until(lambda: asyncio.sleep(0, h.replies))
        assert h.replies == [(run["id"], "处理完了")] and done["attempts"] == 0
        assert len(h.receiver.deliveries) == 1


@async_test
async def test_a_run_is_never_delivered_twice_by_attempt_and_loop(tmp_path):
    async with Harness(tmp_path) as h:
        h.receiver.delay = 0.05
        h.receiver.reply = "once"
        sender = h.sender()
        first = await h.pending()
        results = await asyncio.gather(sender.attempt(first), sender.attempt(first))
        assert sorted(results, key=str) == [(False, None), (True, "once")]
        assert await sender.attempt(first) == (False, None)  # a stale row: delivered already
        sender.start()
        second = await h.pending(message=await h.message(key="k2"))
        await h.until_run(second["id"], "ok")  # the loop took it: its reply goes to on_reply
        await h.until(lambda: asyncio.sleep(0, h.replies))
        assert await sender.attempt(second) == (False, None)
        assert h.replies == [(second["id"], "once")]
        assert len(h.receiver.deliveries) == 2


@async_test
async def test_attempt_racing_the_loop_delivers_each_run_once(tmp_path):
    async with Harness(tmp_path) as h:
        h.receiver.reply = "once"
        sender = h.sender(start=True, poll_interval=0.001)
        answered = {}
        for n in range(12):
            run = await h.pending(message=await h.message(key="k%d" % n))  # due at once
            sender.wake()
            await asyncio.sleep((0, 0.002, 0.03)[n % 3])  # let the loop take some of them first
            answered[run["id"]] = await sender.attempt(run)
        for run_id in answered:
            await h.until_run(run_id, "ok")
        await h.until(lambda: asyncio.sleep(0, len(h.replies) + sum(d for d, _ in answered.values()) >= 12))
        ids = [int(d["headers"]["X-Wecomd-Delivery"]) for d in h.receiver.deliveries]
        assert sorted(ids) == sorted(answered)  # each run exactly once
        by_attempt = {run_id for run_id, (delivered, _) in answered.items() if delivered}
        assert sorted(by_attempt | {run_id for run_id, _ in h.replies}) == sorted(answered)
        assert not by_attempt & {run_id for run_id, _ in h.replies}  # one answer path per reply


@async_test
async def test_removed_rule_fails_the_run(tmp_path):
    async with Harness(tmp_path) as h:
        sender = h.sender()
        run = await h.pending()
        del h.rules["notify"]
        assert await sender.attempt(run) == (False, None)
        failed = await h.run(run["id"])
        assert (failed["status"], failed["error"], failed["attempts"]) == ("failed", "rule no longer configured", 0)
        # and a queued retry of a rule removed by a config reload
        h.rules["notify"] = (h.url, SECRET)
        h.receiver.fail_next = 1
        queued = await h.pending(message=await h.message(key="k2"))
        assert await sender.attempt(queued) == (False, None)
        del h.rules["notify"]
        sender.start()
        h.clock.advance(10)
        sender.wake()
        failed = await h.until_run(queued["id"], "failed")
        assert failed["error"] == "rule no longer configured" and failed["attempts"] == 1
        assert len(h.receiver.deliveries) == 1


@async_test
async def test_signature_with_another_secret_fails_verify(tmp_path):
    async with Harness(tmp_path) as h:
        h.rules["notify"] = (h.url, "not-the-receivers-secret")
        run = await h.pending()
        assert await h.sender().attempt(run) == (True, None)  # this receiver answers 200 anyway
        (delivery,) = h.receiver.deliveries
        assert delivery["verified"] is False
        assert verify("not-the-receivers-secret", delivery["body"], delivery["headers"][SIGNATURE_HEADER])


@async_test
async def test_rule_without_secret_is_sent_unsigned(tmp_path):
    async with Harness(tmp_path) as h:
        h.rules["notify"] = (h.url, None)
        run = await h.pending()
        assert await h.sender().attempt(run) == (True, None)
        (delivery,) = h.receiver.deliveries
        assert SIGNATURE_HEADER not in delivery["headers"] and delivery["verified"] is False


@async_test
async def test_redirects_are_not_followed(tmp_path):
    async with Harness(tmp_path) as h:
        h.receiver.answer = None

        class Redirect(web.RequestHandler):
            def post(self):
                self.redirect(h.url, status=307)

        h.server.stop()
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        h.server = httpserver.HTTPServer(web.Application([("/hook", h.receiver.handler()), ("/moved", Redirect)]))
        h.server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        h.url = "http://127.0.0.1:%d/hook" % port
        h.rules["notify"] = ("http://127.0.0.1:%d/moved" % port, SECRET)
        run = await h.pending()
        assert await h.sender().attempt(run) == (False, None)
        assert (await h.run(run["id"]))["error"].startswith("HTTP 307")
        assert h.receiver.deliveries == []


@async_test
async def test_rows_left_pending_are_delivered_after_a_restart(tmp_path):
    async with Harness(tmp_path) as h:
        run = await h.pending()  # stored, then the process died before the first try
        h.receiver.reply = "late"
        h.sender(start=True)
        await h.until_run(run["id"], "ok")
        await h.until(lambda: asyncio.sleep(0, h.replies))
        assert h.replies == [(run["id"], "late")] and len(h.receiver.deliveries) == 1


@async_test
async def test_stop_waits_for_a_delivery_in_flight(tmp_path):
    async with Harness(tmp_path) as h:
        h.receiver.delay = 0.2
        sender = h.sender()
        run = await h.pending()
        attempt = asyncio.ensure_future(sender.attempt(run))
        await h.until(lambda: asyncio.sleep(0, h.receiver.deliveries))
        # The loop starts once attempt() holds the run: started earlier, it could take the run
        # first, and attempt() would rightly answer (False, None).
        sender.start()
        await sender.stop()
        # Recorded before stop() returned (a stop that did not wait would leave it pending); the
        # caller of attempt() resumes on a later turn of the loop.
        assert (await h.run(run["id"]))["status"] == "ok"
        assert await attempt == (True, None)
