"""WecomClient against the fake WeCom (sandbox) over real loopback HTTP; split_text and the errcode table."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import zlib

import pytest
from tornado.testing import AsyncTestCase, gen_test

from wecomd.wecom import sandbox
from wecomd.config import AppConfig
from wecomd.wecom.sandbox import CALLBACK_IPS, GETTOKEN, MEDIA_GET, SEND, FakeWecom
from wecomd.wecom.api import WecomApiError, WecomClient, split_text
from wecomd.wecom.errcodes import classify

CORP_ID = "ww0123456789abcdef"
SECRET = "S3cretOfTheHelpdeskApp-0123456789abcdefXYZ"
OTHER_SECRET = "AnotherAppsSecret-9876543210zyxwvu"


def make_app(name: str = "helpdesk", secret: str = SECRET, corp_id: str = CORP_ID,
             agent_id: str = "1000002") -> AppConfig:
    return AppConfig(name=name, corp_id=corp_id, agent_id=agent_id, token="T0ken", reply="",
                     encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", secret=secret)


APP = make_app()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class WecomApiTest(AsyncTestCase):
    """Each test leaves every log record and every error it saw to the secrets check in tearDown."""

    def setUp(self) -> None:
        super().setUp()
        self.fake = FakeWecom({SECRET: CORP_ID, OTHER_SECRET: CORP_ID})
        self.server, self.base = self.io_loop.run_sync(lambda: sandbox.start(self.fake))
        self.now = 1000.0
        self.client = WecomClient(self.base, clock=lambda: self.now)
        self.errors: list[WecomApiError] = []
        self.capture = _Records()
        root = logging.getLogger()
        self.saved_levels = root.level, logging.getLogger("wecomd").level
        root.setLevel(logging.DEBUG)
        logging.getLogger("wecomd").setLevel(logging.DEBUG)
        root.addHandler(self.capture)

    def tearDown(self) -> None:
        self.client.close()
        self.server.stop()
        self.io_loop.run_sync(self.server.close_all_connections)
        root = logging.getLogger()
        root.removeHandler(self.capture)
        root.setLevel(self.saved_levels[0])
        logging.getLogger("wecomd").setLevel(self.saved_levels[1])
        super().tearDown()
        self.assert_no_secrets()

    def assert_no_secrets(self) -> None:
        secrets = [SECRET, OTHER_SECRET, "wrong-secret-value-123", *self.fake.tokens]
        texts = [record.getMessage() for record in self.capture.records]
        texts += [text for exc in self.errors for text in (str(exc), repr(exc), exc.errmsg, exc.hint)]
        texts += [repr(params) for _, params in self.fake.calls]
        for text in texts:
            for secret in secrets:
                self.assertNotIn(secret, text)

    async def raises(self, awaitable) -> WecomApiError:
        with self.assertRaises(WecomApiError) as ctx:
            await awaitable
        self.errors.append(ctx.exception)
        return ctx.exception

    def count(self, path: str) -> int:
        return sum(1 for called, _ in self.fake.calls if called == path)

    # --- tokens ----------------------------------------------------------------------------

    @gen_test
    async def test_token_is_cached_across_calls(self):
        for text in ("one", "two", "three"):
            await self.client.send_text(APP, "zhangsan", text)
        self.assertEqual(self.fake.gettoken_count, 1)
        self.assertEqual([m["text"]["content"] for m in self.fake.sent], ["one", "two", "three"])
        self.assertEqual(self.fake.calls[0], (GETTOKEN, {"corpid": CORP_ID}))

    @gen_test
    async def test_with_body_gives_the_answer_as_it_came_too(self):
        data, text = await self.client.call(APP, "POST", "/cgi-bin/message/send", with_body=True,
                                            json_body={"touser": "zhangsan", "msgtype": "text", "agentid": 1,
                                                       "text": {"content": "你好"}})
        self.assertEqual(json.loads(text), data)
        self.assertIsInstance(text, str)
        self.assertEqual(data["errcode"], 0)
        with self.assertRaises(WecomApiError):  # an error is raised as without it
            await self.client.call(APP, "POST", "/cgi-bin/message/send", with_body=True, json_body={"touser": ""})

    @gen_test
    async def test_token_is_renewed_300_seconds_before_expiry(self):
        await self.client.send_text(APP, "zhangsan", "hi")
        self.now += 7200 - 300 - 1
        await self.client.send_text(APP, "zhangsan", "still cached")
        self.assertEqual(self.fake.gettoken_count, 1)
        self.now += 2
        await self.client.send_text(APP, "zhangsan", "renewed")
        self.assertEqual(self.fake.gettoken_count, 2)
        self.assertEqual(len(self.fake.sent), 3)

    @gen_test
    async def test_concurrent_calls_with_a_cold_cache_share_one_gettoken(self):
        answers = await asyncio.gather(*(self.client.send_text(APP, "u%d" % i, "hi") for i in range(10)))
        self.assertEqual(self.fake.gettoken_count, 1)
        self.assertEqual(len({answer["msgid"] for answer in answers}), 10)

    @gen_test
    async def test_token_errors_refresh_once_and_retry_once(self):
        for errcode in (42001, 40014, 41001):
            before, sends = self.fake.gettoken_count, self.count(SEND)
            await self.client.send_text(APP, "zhangsan", "x")  # warm (first round) or cached
            self.fake.fail_next(SEND, errcode)
            answer = await self.client.send_text(APP, "zhangsan", "after %d" % errcode)
            self.assertTrue(answer["msgid"])
            self.assertEqual(self.fake.gettoken_count - before, 2 if before == 0 else 1, errcode)
            self.assertEqual(self.count(SEND) - sends, 3)

    @gen_test
    async def test_really_expired_token_is_replaced(self):
        await self.client.send_text(APP, "zhangsan", "hi")
        old = set(self.fake.tokens)
        self.fake.expire_tokens()
        await self.client.send_text(APP, "zhangsan", "again")
        self.assertEqual(self.fake.gettoken_count, 2)
        self.assertEqual(len(set(self.fake.tokens) - old), 1)

    @gen_test
    async def test_expired_token_under_load_is_refreshed_once(self):
        await self.client.send_text(APP, "zhangsan", "warm")
        self.fake.expire_tokens()
        await asyncio.gather(*(self.client.send_text(APP, "u%d" % i, "hi") for i in range(10)))
        self.assertEqual(self.fake.gettoken_count, 2)
        self.assertEqual(len(self.fake.sent), 11)

    @gen_test
    async def test_token_error_twice_raises_without_looping(self):
        self.fake.fail_next(SEND, 42001, times=5)
        exc = await self.raises(self.client.send_text(APP, "zhangsan", "x"))
        self.assertEqual((exc.errcode, exc.kind, exc.retryable), (42001, "token", False))
        self.assertIn("access_token expired", exc.errmsg)
        self.assertEqual((self.fake.gettoken_count, self.count(SEND)), (2, 2))

    @gen_test
    async def test_gettoken_config_errors_are_raised_not_retried_and_not_cached(self):
        cases = {40001: "copy it again into [app:helpdesk] secret", 60020: "企业可信IP"}
        for errcode, hint in cases.items():
            before = self.fake.gettoken_count
            self.fake.fail_next(GETTOKEN, errcode)
            exc = await self.raises(self.client.send_text(APP, "zhangsan", "x"))
            self.assertEqual((exc.errcode, exc.kind, exc.retryable), (errcode, "config", False))
            self.assertIn(hint, exc.hint)
            self.assertIn(hint, str(exc))
            self.assertEqual(self.fake.gettoken_count - before, 1)
            self.assertEqual(self.count(SEND), 0)
        await self.client.send_text(APP, "zhangsan", "fixed now")
        self.assertEqual(self.fake.gettoken_count, 3)

    @gen_test
    async def test_a_failed_gettoken_reaches_every_waiter(self):
        self.fake.fail_next(GETTOKEN, 60020)
        results = await asyncio.gather(*(self.client.send_text(APP, "u", "x") for _ in range(5)),
                                       return_exceptions=True)
        self.errors.extend(results)
        self.assertEqual({(e.errcode, e.kind) for e in results}, {(60020, "config")})
        self.assertEqual(self.fake.gettoken_count, 1)

    @gen_test
    async def test_wrong_credentials_are_config_errors(self):
        wrong_secret = make_app(secret="wrong-secret-value-123")
        exc = await self.raises(self.client.send_text(wrong_secret, "u", "x"))
        self.assertEqual((exc.errcode, exc.kind), (40001, "config"))
        exc = await self.raises(self.client.send_text(make_app(corp_id="wwnotmycorp"), "u", "x"))
        self.assertEqual((exc.errcode, exc.kind), (40013, "config"))
        self.assertIn("[app:helpdesk] corp_id", exc.hint)

    @gen_test
    async def test_missing_secret_is_a_config_error_without_any_request(self):
        exc = await self.raises(self.client.send_text(make_app(name="nosecret", secret=""), "u", "x"))
        self.assertEqual((exc.errcode, exc.kind), (None, "config"))
        self.assertIn("[app:nosecret] secret", exc.hint)
        self.assertEqual(self.fake.calls, [])

    @gen_test
    async def test_tokens_are_per_corp_and_secret(self):
        other = make_app(name="ops", secret=OTHER_SECRET, agent_id="1000003")
        same_secret = make_app(name="alias")
        tokens = {await self.client.access_token(app) for app in (APP, other, same_secret)}
        self.assertEqual((len(tokens), self.fake.gettoken_count), (2, 2))
        self.client.invalidate(APP)
        await self.client.access_token(APP)
        self.assertEqual(self.fake.gettoken_count, 3)

    # --- failures --------------------------------------------------------------------------

    @gen_test
    async def test_busy_and_rate_limits_are_retryable(self):
        for errcode in (-1, 45009, 45033):
            self.fake.fail_next(SEND, errcode)
            exc = await self.raises(self.client.send_text(APP, "u", "x"))
            self.assertEqual((exc.errcode, exc.kind, exc.retryable), (errcode, "retry", True))
        self.assertEqual(self.count(SEND), 3)  # not retried here: backing off is the caller's job

    @gen_test
    async def test_http_5xx_is_retryable(self):
        self.fake.fail_next(SEND, 0, http_status=502)
        exc = await self.raises(self.client.send_text(APP, "u", "x"))
        self.assertEqual((exc.errcode, exc.kind), (None, "retry"))
        self.assertIn("502", str(exc))

    @gen_test
    async def test_network_down_is_retryable(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        client = WecomClient("http://127.0.0.1:%d" % port)
        exc = await self.raises(client.send_text(APP, "u", "x"))
        client.close()
        self.assertEqual((exc.errcode, exc.kind, exc.retryable), (None, "retry", True))
        self.assertIn("network error", exc.errmsg)

    @gen_test
    async def test_timeout_is_retryable(self):
        with socket.socket() as silent:  # accepts connections (backlog) but never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            client = WecomClient("http://127.0.0.1:%d" % silent.getsockname()[1], request_timeout=0.3)
            exc = await self.raises(client.access_token(APP))
            client.close()
        self.assertEqual((exc.errcode, exc.kind), (None, "retry"))

    @gen_test
    async def test_bad_messages_are_request_errors_and_not_retried(self):
        exc = await self.raises(self.client.send_text(APP, "u", "长" * 683))  # 2049 bytes
        self.assertEqual((exc.errcode, exc.kind), (45002, "request"))
        exc = await self.raises(self.client.send(APP, {"touser": "u", "msgtype": "nope", "nope": {}}))
        self.assertEqual((exc.errcode, exc.kind), (40008, "request"))
        self.fake.unknown_users.add("ghost")
        exc = await self.raises(self.client.send_text(APP, "Ghost", "x"))
        self.assertEqual((exc.errcode, exc.kind), (81013, "request"))
        self.assertEqual(self.count(SEND), 3)

    @gen_test
    async def test_unknown_api_is_forbidden(self):
        exc = await self.raises(self.client.call(APP, "GET", "/cgi-bin/user/list"))
        self.assertEqual((exc.errcode, exc.kind), (48002, "config"))
        self.assertIn("from ip", exc.errmsg)  # WeCom's noise is kept

    # --- message/send and others -----------------------------------------------------------

    @gen_test
    async def test_send_sets_the_apps_agentid_and_reports_partial_delivery(self):
        self.fake.unknown_users.add("ghost")
        answer = await self.client.send(APP, {"touser": "zhangsan|Ghost", "msgtype": "text",
                                              "agentid": 42, "text": {"content": "你好"}})
        self.assertEqual(answer["invaliduser"], "ghost")
        sent = self.fake.sent[0]
        self.assertEqual((sent["agentid"], sent["text"]["content"]), (1000002, "你好"))
        self.assertEqual(sent["msgid"], answer["msgid"])

    @gen_test
    async def test_get_callback_ips(self):
        self.assertEqual(await self.client.get_callback_ips(APP), ["127.0.0.1"])
        self.assertEqual(self.count(CALLBACK_IPS), 1)

    @gen_test
    async def test_every_call_is_logged_without_its_query(self):
        await self.client.send_text(APP, "u", "x")
        self.fake.fail_next(SEND, 60020)
        await self.raises(self.client.send_text(APP, "u", "x"))
        lines = [r.getMessage() for r in self.capture.records if r.name == "wecomd.wecom.api"]
        self.assertEqual(len(lines), 3, lines)
        self.assertRegex(lines[0], r"^wecom api GET /cgi-bin/gettoken errcode=0 \d+ms$")
        self.assertRegex(lines[2], r"^wecom api POST /cgi-bin/message/send errcode=60020 kind=config")
        self.assertFalse([line for line in lines if "access_token" in line or "corpsecret" in line])

    # --- media -----------------------------------------------------------------------------

    @gen_test
    async def test_download_media(self):
        ids = sandbox.seed_samples(self.fake)
        body, content_type, filename = await self.client.download_media(APP, ids["image"])
        self.assertEqual((content_type, filename), ("image/png", "sample.png"))
        self.assertEqual(body, self.fake.media[ids["image"]][0])
        body, content_type, filename = await self.client.download_media(APP, ids["file"])
        self.assertEqual((content_type, filename), ("text/plain", "示例说明.txt"))  # a file, not an error
        self.assertIn("演示".encode("utf-8"), body)

    @gen_test
    async def test_media_error_json_with_http_200(self):
        exc = await self.raises(self.client.download_media(APP, "no-such-media"))
        self.assertEqual((exc.errcode, exc.kind), (40007, "request"))
        self.assertIn("invalid media_id", exc.errmsg)

    @gen_test
    async def test_media_token_error_refreshes_and_retries_once(self):
        media_id = self.fake.add_media(b"0123456789", "application/octet-stream", "raw.bin")
        self.fake.fail_next(MEDIA_GET, 42001)
        body, _, filename = await self.client.download_media(APP, media_id)
        self.assertEqual((body, filename), (b"0123456789", "raw.bin"))
        self.assertEqual((self.fake.gettoken_count, self.count(MEDIA_GET)), (2, 2))

    @gen_test
    async def test_media_larger_than_max_bytes(self):
        media_id = self.fake.add_media(os.urandom(5000), "video/mp4", "big.mp4")
        exc = await self.raises(self.client.download_media(APP, media_id, max_bytes=4999))
        self.assertEqual((exc.errcode, exc.kind), (None, "request"))
        body, _, _ = await self.client.download_media(APP, media_id, max_bytes=5000)
        self.assertEqual(len(body), 5000)

    @gen_test
    async def test_large_media_is_fetched_in_ranges(self):
        data = os.urandom(2500)
        media_id = self.fake.add_media(data, "application/zip", "archive.zip")
        self.fake.range_limit, self.client.media_chunk = 1000, 300
        body, content_type, filename = await self.client.download_media(APP, media_id)
        self.assertEqual((body, content_type, filename), (data, "application/zip", "archive.zip"))
        self.assertEqual(self.count(MEDIA_GET), 1 + 9)
        exc = await self.raises(self.client.download_media(APP, media_id, max_bytes=2000))
        self.assertEqual(exc.kind, "request")


# --- pure functions ----------------------------------------------------------------------------

def test_split_text_chinese():
    text = "你好世界" * 417  # 5004 bytes
    parts = split_text(text)
    assert "".join(parts) == text
    assert len(parts) == 3
    assert all(len(part.encode("utf-8")) <= 2048 for part in parts)


def test_split_text_prefers_newlines():
    lines = ["line %04d: %s" % (i, "x" * 40) for i in range(100)]  # 52 bytes with its newline
    text = "\n".join(lines)
    parts = split_text(text)
    assert len(parts) == 3
    assert all(len(part.encode("utf-8")) <= 2048 for part in parts)
    assert "\n".join(parts) == text  # every cut is at a line end, and only that newline is gone
    assert [part.split("\n")[0] for part in parts] == [lines[0], lines[39], lines[78]]


def test_split_text_never_splits_a_character():
    text = "a" * 2046 + "😀" + "b" * 10
    assert split_text(text) == ["a" * 2046, "😀" + "b" * 10]
    assert split_text("😀" * 1000, limit=10) == ["😀😀"] * 500


def test_split_text_edges():
    assert split_text("") == []
    assert split_text("hi") == ["hi"]
    assert split_text("x" * 2048) == ["x" * 2048]
    assert split_text("x" * 2048 + "\n" + "y") == ["x" * 2048, "y"]
    assert split_text("\n" * 5000) == []
    assert all(split_text("\n" + "x" * 3000 + "\n\n\n"))
    with pytest.raises(ValueError):
        split_text("abc", limit=3)


@pytest.mark.parametrize("errcode,kind", [
    (40014, "token"), (42001, "token"), (41001, "token"),
    (40001, "config"), (40013, "config"), (40091, "config"), (60020, "config"), (48002, "config"),
    (301002, "config"), (40056, "config"), (41011, "config"),
    (-1, "retry"), (45009, "retry"), (45033, "retry"),
    (40003, "request"), (81013, "request"), (44004, "request"), (45002, "request"),
])
def test_classify(errcode, kind):
    assert classify(errcode)[0] == kind
    assert classify(errcode)[1]


def test_classify_unknown_and_the_documented_hints():
    assert classify(12345) == ("request", "see WeCom error code 12345")
    assert classify(60020)[1] == ("add this server's egress IP to the app's 企业可信IP (trusted IP) list in "
                                  "the WeCom admin console; the change takes about a minute")
    assert classify(40001)[1] == ("the app's secret is wrong or was reset: copy it again into "
                                  "[app:NAME] secret")


def test_error_defaults_and_text():
    exc = WecomApiError(45009, "api freq out of limit", path=SEND)
    assert (exc.kind, exc.retryable) == ("retry", True)
    assert str(exc).startswith("WeCom /cgi-bin/message/send: errcode 45009: api freq out of limit (")
    assert WecomApiError(None, "network error: boom").kind == "retry"


def test_sample_media_are_well_formed():
    png = sandbox.sample_png(8, 4)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    offset, chunks = 8, {}
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset:offset + 4])
        tag, data = png[offset + 4:offset + 8], png[offset + 8:offset + 8 + length]
        assert struct.unpack(">I", png[offset + 8 + length:offset + 12 + length])[0] == zlib.crc32(tag + data)
        chunks[tag], offset = data, offset + 12 + length
    assert list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
    assert len(zlib.decompress(chunks[b"IDAT"])) == 4 * (1 + 3 * 8)
    amr = sandbox.sample_amr()
    assert amr.startswith(b"#!AMR\n") and (len(amr) - 6) % 32 == 0 and len(amr) > 1000
