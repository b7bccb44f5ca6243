"""GET /metrics against the real app: auth, the text format, and exact counts for what happened."""
from __future__ import annotations

import asyncio
import math
import time
import urllib.parse

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.testing import gen_test
from tornado.websocket import websocket_connect

from support.base import WecomdTestCase
from support.config import write_config
from support.peer import CORP_ID, TOKEN, WecomPeer
from wecomd import app as appmod, config
from wecomd.wecom import sandbox
from wecomd.metrics import CALLBACK_BUCKETS, Metrics
from wecomd.services import Services
from wecomd.wecom.api import SEND

TEXT = (
    "<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>"
    "<CreateTime>1764370000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[%s]]></Content>"
    "<MsgId>%s</MsgId><AgentID>1000002</AgentID></xml>"
)


def text(content: str = "你好", msg_id: str = "7357159753458634752") -> str:
    return TEXT % (CORP_ID, content, msg_id)


def parse(body: bytes) -> dict:
    """{(sample name, ((label, value), ...)): value} of a scrape."""
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class MetricsTestCase(WecomdTestCase):
    def scrape(self, headers=None) -> dict:
        resp = self.fetch("/metrics", headers=headers if headers is not None else self.bearer())
        self.assertEqual(resp.code, 200, resp.body)
        return parse(resp.body)

    def value(self, name: str, **labels: str) -> float:
        """One sample of a fresh scrape; 0 when the series does not exist (yet)."""
        return self.scrape().get((name, tuple(sorted(labels.items()))), 0.0)



class AccessTest(MetricsTestCase):
    def test_anonymous_or_wrong_token_is_401(self):
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            resp = self.fetch("/metrics", headers=headers, follow_redirects=False)
            self.assertEqual(resp.code, 401, headers)
            self.assertNotIn(b"wecomd_", resp.body)

    def test_session_and_api_token_get_the_text_format(self):
        for headers in (self.session(), self.bearer()):
            resp = self.fetch("/metrics", headers=headers)
            self.assertEqual(resp.code, 200)
            self.assertTrue(resp.headers["Content-Type"].startswith("text/plain; version=0.0.4"))
            names = {family.name for family in text_string_to_metric_families(resp.body.decode())}
            for name in ("wecomd_callbacks", "wecomd_callback_seconds", "wecomd_callback_failures",
                         "wecomd_duplicates", "wecomd_store_failures", "wecomd_outbox_pending",
                         "wecomd_outbox_sent", "wecomd_outbox_send_errors", "wecomd_token_refreshes",
                         "wecomd_websocket_clients"):
                self.assertIn(name, names)

    def test_nothing_happened_yet(self):
        samples = self.scrape()
        self.assertEqual(samples[("wecomd_outbox_pending", ())], 0)
        self.assertEqual(samples[("wecomd_websocket_clients", ())], 0)
        self.assertEqual(samples[("wecomd_store_failures_total", ())], 0)
        for reason in ("cold", "expired", "token_error"):
            self.assertEqual(samples[("wecomd_token_refreshes_total", (("reason", reason),))], 0)
        self.assertFalse([key for key in samples if key[0] == "wecomd_callbacks_total"])


METRICS_TOKEN = "metrics-only-token-0123456789abcdef"


class MetricsTokenTest(MetricsTestCase):
    """`[admin] metrics_token` (set here through its environment variable) opens /metrics and nothing else."""

    def get_app(self):
        self.fake = sandbox.FakeWecom()
        self.fake_server, api_base = self.io_loop.run_sync(lambda: sandbox.start(self.fake))
        path = write_config(self.tmp, api_base=api_base)
        self.config = config.load(path, {"WECOMD_ADMIN_METRICS_TOKEN": METRICS_TOKEN})
        self.services = Services(self.config)
        self.io_loop.run_sync(self.services.start)
        return appmod.make_app(self.services)

    def test_the_metrics_token_opens_metrics(self):
        self.assertIn(("wecomd_outbox_pending", ()), self.scrape({"Authorization": "Bearer " + METRICS_TOKEN}))
        self.assertEqual(self.fetch("/metrics", headers=self.bearer()).code, 200)  # the api token still does

    def test_the_metrics_token_opens_nothing_else(self):
        token = {"Authorization": "Bearer " + METRICS_TOKEN}
        for path in ("/api/apps", "/api/messages", "/api/conversations", "/api/messages/1", "/api/export",
                     "/api/rules", "/"):
            resp = self.fetch(path, headers=token, follow_redirects=False)
            self.assertEqual(resp.code, 401, path)
            self.assertEqual(resp.headers["WWW-Authenticate"], "Bearer", path)
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "x3JJHMbDL1EzLkh9GBhXDw=="}
        self.assertEqual(self.fetch("/api/live", headers={**token, **upgrade}).code, 401)
        status, _ = self.api("/api/messages", method="POST", headers=token,
                             body={"app": "helpdesk", "to_user": "zhangsan", "content": "hi"})
        # A request with a bearer token is that token's alone (no XSRF, no cookie): this one opens nothing.
        self.assertEqual(status, 401)
        self.assertEqual(self.db(self.services.store.messages.count), 0)

    @gen_test
    async def test_the_metrics_token_opens_no_live_feed(self):
        request = HTTPRequest("ws://127.0.0.1:%d/api/live" % self.get_http_port(),
                              headers={"Authorization": "Bearer " + METRICS_TOKEN})
        with self.assertRaises(HTTPClientError) as caught:
            await websocket_connect(request)
        self.assertEqual(caught.exception.code, 401)


class CallbackMetricsTest(MetricsTestCase):
    def post(self, req, app: str = "helpdesk", query: str | None = None):
        return self.fetch("/callback/%s?%s" % (app, query or req.query), method="POST", body=req.body)

    def test_writer_commits_and_calls_are_counted(self):
        before = self.scrape()
        for i in range(5):
            self.assertEqual(self.post(self.peer.callback(text("batch %d" % i, msg_id=str(100 + i)))).code, 200)
        after = self.scrape()
        commits = after[("wecomd_db_commits_total", ())] - before[("wecomd_db_commits_total", ())]
        calls = after[("wecomd_db_calls_total", ())] - before[("wecomd_db_calls_total", ())]
        self.assertGreaterEqual(calls, 5)  # one store call per new message, at least
        self.assertGreaterEqual(commits, 1)
        self.assertLessEqual(commits, calls)  # a commit holds one call or more

    def test_the_writers_transactions_and_the_calls_waits_are_histograms(self):
        before = self.scrape()
        for i in range(5):
            self.assertEqual(self.post(self.peer.callback(text("wait %d" % i, msg_id=str(200 + i)))).code, 200)
        after = self.scrape()

        def grew(name: str) -> float:
            key = (name, (("kind", "call"),))
            return after[key] - before[key]

        self.assertGreaterEqual(grew("wecomd_db_wait_seconds_count"), 5)  # each callback's store call waited
        self.assertGreaterEqual(grew("wecomd_db_transaction_seconds_count"), 1)
        self.assertGreater(grew("wecomd_db_transaction_seconds_sum"), 0)
        for kind in ("call", "bulky", "alone"):  # every kind there from the start
            self.assertIn(("wecomd_db_wait_seconds_bucket", (("kind", kind), ("le", "+Inf"))), after)

    def test_every_outcome_and_failure_is_counted_exactly(self):
        stored = self.peer.callback(text("first"))
        self.assertEqual(self.post(stored).code, 200)
        self.assertEqual(self.post(stored).code, 200)  # WeCom's retry: a duplicate
        self.assertEqual(self.post(stored).code, 200)
        bad_sig = self.peer.callback(text("forged", msg_id="2"))
        params = dict(urllib.parse.parse_qsl(bad_sig.query))
        params["msg_signature"] = "0" * 40
        self.assertEqual(self.post(bad_sig, query=urllib.parse.urlencode(params)).code, 403)
        stale = self.peer.callback(text("old", msg_id="3"), timestamp=str(int(time.time()) - 3600))
        self.assertEqual(self.post(stale).code, 403)
        self.assertEqual(self.post(self.peer.callback(text("who", msg_id="4")), app="nosuchapp").code, 404)
        other_corp = WecomPeer(corp_id="wwsomeoneelse").callback(text("elsewhere", msg_id="5"))
        self.assertEqual(self.post(other_corp).code, 403)
        wrong_key = WecomPeer(token=TOKEN, aes_key="a" * 43).callback(text("garbled", msg_id="6"))
        self.assertEqual(self.post(wrong_key).code, 400)
        self.assertEqual(self.fetch("/callback/helpdesk", method="POST", body=b"<xml/>").code, 400)
        big = self.peer.callback(text("big", msg_id="7"))
        resp = self.fetch("/callback/helpdesk?" + big.query, method="POST",
                          body=b"x" * (self.config.server.max_body + 1))
        self.assertEqual(resp.code, 413)
        self.read_only(True)
        self.assertEqual(self.post(self.peer.callback(text("lost", msg_id="8"))).code, 503)
        self.read_only(False)
        query, _ = self.peer.verification("42")
        self.assertEqual(self.fetch("/callback/quiet?" + query).body, b"42")

        samples = self.scrape()
        callbacks = {dict(labels)["app"] + " " + dict(labels)["type"] + " " + dict(labels)["outcome"]: value
                     for (name, labels), value in samples.items() if name == "wecomd_callbacks_total"}
        self.assertEqual(callbacks, {
            "helpdesk text stored": 1, "helpdesk text duplicate": 2, "helpdesk - rejected": 6,
            "- - rejected": 1, "helpdesk text failed": 1, "quiet verify verified": 1,
        })
        failures = {dict(labels)["app"] + " " + dict(labels)["reason"]: value
                    for (name, labels), value in samples.items() if name == "wecomd_callback_failures_total"}
        self.assertEqual(failures, {
            "helpdesk signature": 1, "helpdesk timestamp": 1, "- unknown_app": 1, "helpdesk receive_id": 1,
            "helpdesk decrypt": 1, "helpdesk malformed": 1, "helpdesk too_large": 1, "helpdesk store": 1,
        })
        self.assertEqual(samples[("wecomd_duplicates_total", (("app", "helpdesk"),))], 2)
        self.assertEqual(samples[("wecomd_store_failures_total", ())], 1)
        # The latency histogram: every request observed once, with buckets around the 5 s budget.
        self.assertEqual(samples[("wecomd_callback_seconds_count", (("app", "helpdesk"),))], 10)
        buckets = sorted(float(dict(labels)["le"]) for (name, labels), _ in samples.items()
                         if name == "wecomd_callback_seconds_bucket" and dict(labels)["app"] == "helpdesk")
        self.assertEqual(buckets, sorted(CALLBACK_BUCKETS) + [math.inf])
        self.assertIn(5.0, buckets)
        self.assertEqual(samples[("wecomd_callback_seconds_bucket", (("app", "helpdesk"), ("le", "5.0")))], 10)

    def read_only(self, on: bool) -> None:
        """Make every write fail (as a full disk would); outside any transaction, so it can be undone."""
        pragma = "PRAGMA query_only = %d" % on
        self.io_loop.run_sync(lambda: self.services.writer.run(self.services.store.db.execute_sql, pragma, alone=True))

    def test_unknown_app_names_do_not_become_labels(self):
        for name in ("probe1", "probe2", "wp-admin"):
            self.fetch("/callback/%s?x=1" % name)
        samples = self.scrape()
        apps = {dict(labels).get("app") for (name, labels) in samples if name.startswith("wecomd_callback")}
        self.assertEqual(apps, {"-"})
        self.assertEqual(samples[("wecomd_callback_failures_total", (("app", "-"), ("reason", "unknown_app")))], 3)


class OutboxMetricsTest(MetricsTestCase):
    def reply(self, content: str) -> int:
        status, data = self.api("/api/messages", method="POST", headers=self.bearer(),
                                body={"app": "helpdesk", "to_user": "zhangsan", "content": content})
        self.assertEqual(status, 201)
        return data["id"]

    def status_of(self, message_id: int) -> dict:
        return self.api("/api/messages/%d" % message_id, headers=self.bearer())[1]

    def test_sent_and_errors_by_errcode(self):
        sent = self.reply("已处理")
        self.wait_for(lambda: self.status_of(sent)["status"] == "sent")
        self.assertEqual(self.value("wecomd_outbox_sent_total"), 1)
        self.fake.fail_next(SEND, 60020)
        failed = self.reply("不会送达")
        self.wait_for(lambda: self.status_of(failed)["status"] == "failed")
        samples = self.scrape()
        self.assertEqual(samples[("wecomd_outbox_send_errors_total", (("errcode", "60020"),))], 1)
        self.assertEqual(samples[("wecomd_outbox_sent_total", ())], 1)
        self.assertEqual(samples[("wecomd_outbox_pending", ())], 0)

    def test_a_message_waiting_for_its_retry_is_pending(self):
        self.fake.fail_next(SEND, -1)  # WeCom busy: retried after a backoff, pending meanwhile
        waiting = self.reply("稍后")
        self.wait_for(lambda: self.status_of(waiting)["attempts"] == 1)
        samples = self.scrape()
        self.assertEqual(samples[("wecomd_outbox_pending", ())], 1)
        self.assertEqual(samples[("wecomd_outbox_send_errors_total", (("errcode", "-1"),))], 1)
        self.wait_for(lambda: self.status_of(waiting)["status"] == "sent")
        self.assertEqual(self.value("wecomd_outbox_pending"), 0)

    def test_token_refreshes_by_reason(self):
        self.fake.token_ttl = 2  # renewed after half its life: 1 s
        first = self.reply("一")
        self.wait_for(lambda: self.status_of(first)["status"] == "sent")
        self.assertEqual(self.value("wecomd_token_refreshes_total", reason="cold"), 1)
        self.fake.expire_tokens()  # WeCom refuses the cached token: one refresh, one retry
        second = self.reply("二")
        self.wait_for(lambda: self.status_of(second)["status"] == "sent")
        self.assertEqual(self.value("wecomd_token_refreshes_total", reason="token_error"), 1)
        time.sleep(1.2)
        third = self.reply("三")
        self.wait_for(lambda: self.status_of(third)["status"] == "sent")
        samples = self.scrape()
        counts = {reason: samples[("wecomd_token_refreshes_total", (("reason", reason),))]
                  for reason in ("cold", "expired", "token_error")}
        self.assertEqual(counts, {"cold": 1, "expired": 1, "token_error": 1})
        self.assertEqual(self.fake.gettoken_count, 3)
        self.assertEqual(samples[("wecomd_outbox_sent_total", ())], 3)


class LiveMetricsTest(MetricsTestCase):
    def setUp(self):
        super().setUp()
        self.headers = self.login()

    @gen_test
    async def test_websocket_clients_is_read_at_scrape(self):
        headers = self.headers

        async def clients() -> float:
            resp = await self.http_client.fetch(self.get_url("/metrics"), headers=self.bearer())
            return parse(resp.body)[("wecomd_websocket_clients", ())]

        self.assertEqual(await clients(), 0)
        first, second = await self.ws_connect(headers), await self.ws_connect(headers)
        self.assertEqual(await clients(), 2)
        first.close()
        for _ in range(100):
            if await clients() == 1:
                break
            await asyncio.sleep(0.02)
        self.assertEqual(await clients(), 1)
        second.close()


class IsolationTest(MetricsTestCase):
    def test_two_services_do_not_share_metrics(self):
        self.assertEqual(self.post_text().code, 200)
        other = Services(self.config)
        try:
            self.assertIsNot(other.metrics.registry, self.services.metrics.registry)
            self.assertEqual(parse(self.services.metrics.render())[
                ("wecomd_callbacks_total", (("app", "helpdesk"), ("outcome", "stored"), ("type", "text")))], 1)
            self.assertNotIn(("wecomd_callbacks_total", (("app", "helpdesk"), ("outcome", "stored"), ("type", "text"))),
                             parse(other.metrics.render()))
        finally:
            self.io_loop.run_sync(other.close)
        # Nothing lands in prometheus_client's process-wide default registry.
        self.assertIsNone(prometheus_client.REGISTRY.get_sample_value("wecomd_store_failures_total"))
        self.assertFalse([m for m in prometheus_client.REGISTRY.collect() if m.name.startswith("wecomd")])

    def test_metrics_objects_are_independent(self):
        a, b = Metrics(lambda: 1), Metrics(lambda: 2)
        a.sent()
        a.send_error(60020)
        self.assertEqual(parse(a.render())[("wecomd_outbox_sent_total", ())], 1)
        self.assertEqual(parse(b.render())[("wecomd_outbox_sent_total", ())], 0)
        self.assertEqual(parse(b.render())[("wecomd_websocket_clients", ())], 2)

    def test_the_intake_journal_and_the_pull_process_are_read_at_scrape(self):
        state = {"pending": 3, "pull": (1, 4)}
        metrics = Metrics(intake_pending=lambda: state["pending"], kf_pull=lambda: state["pull"])
        scraped = parse(metrics.render())
        self.assertEqual((scraped[("wecomd_intake_pending", ())], scraped[("wecomd_kf_pull_process_up", ())],
                          scraped[("wecomd_kf_pull_process_starts", ())]), (3, 1, 4))
        state.update(pending=0, pull=(0, 4))  # applied; the process died and is not back yet
        scraped = parse(metrics.render())
        self.assertEqual((scraped[("wecomd_intake_pending", ())], scraped[("wecomd_kf_pull_process_up", ())]), (0, 0))

    def post_text(self):
        req = self.peer.callback(text("只一次"))
        return self.fetch("/callback/helpdesk?" + req.query, method="POST", body=req.body)
