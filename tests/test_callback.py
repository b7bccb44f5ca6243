"""The callback endpoint against the real app on a loopback port, with WeCom played by wechatpy."""
from __future__ import annotations

import json
import socket
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

from support.base import WecomdTestCase
from support.peer import AES_KEY, CORP_ID, TOKEN, WecomPeer
from support.samples import SAMPLES

TEXT = (
    "<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>"
    "<CreateTime>1764370000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[%s]]></Content>"
    "<MsgId>%s</MsgId><AgentID>1000002</AgentID></xml>"
)
CLICK = (
    "<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[lisi]]></FromUserName>"
    "<CreateTime>1764370001</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[click]]></Event>"
    "<EventKey><![CDATA[RUN_BACKUP]]></EventKey><AgentID>1000002</AgentID></xml>" % CORP_ID
)


def text(content: str = "你好", msg_id: str = "7357159753458634752") -> str:
    return TEXT % (CORP_ID, content, msg_id)


class VerificationTest(WecomdTestCase):
    def test_echostr_is_answered_bare(self):
        query, _ = self.peer.verification("1616140317555161061")
        resp = self.fetch("/callback/helpdesk?" + query)
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.body, b"1616140317555161061")
        self.assertTrue(resp.headers["Content-Type"].startswith("text/plain"))

    def test_raw_plus_sign_in_echostr_still_verifies(self):
        for attempt in range(40):  # find an echostr whose Base64 contains '+'
            query, encrypted = self.peer.verification("echo%d" % attempt)
            if "+" in encrypted:
                break
        self.assertIn("+", encrypted)
        raw = query.replace(urllib.parse.quote(encrypted, safe=""), encrypted.replace("/", "%2F"))
        resp = self.fetch("/callback/helpdesk?" + raw)
        self.assertEqual((resp.code, resp.body), (200, b"echo%d" % attempt))

    def test_trailing_slash_from_a_proxy_is_accepted(self):
        query, _ = self.peer.verification("42")
        self.assertEqual(self.fetch("/callback/helpdesk/?" + query).body, b"42")

    def test_probe_without_parameters_is_400(self):
        resp = self.fetch("/callback/helpdesk")
        self.assertEqual(resp.code, 400)
        self.assertIn(b"msg_signature", resp.body)

    def test_bad_signature_is_403(self):
        query, _ = self.peer.verification("1")
        params = dict(urllib.parse.parse_qsl(query))
        params["nonce"] = "999"
        resp = self.fetch("/callback/helpdesk?" + urllib.parse.urlencode(params))
        self.assertEqual(resp.code, 403)
        self.assertIn(b"-40001", resp.body)

    def test_wrong_corp_id_is_403(self):
        query, _ = WecomPeer(corp_id="wwsomeoneelse").verification("1")
        resp = self.fetch("/callback/helpdesk?" + query)
        self.assertEqual(resp.code, 403)
        self.assertIn(b"-40005", resp.body)

    def test_stale_timestamp_is_403_and_bad_one_400(self):
        query, _ = self.peer.verification("1", timestamp=str(int(time.time()) - 301))
        self.assertEqual(self.fetch("/callback/helpdesk?" + query).code, 403)
        query, _ = self.peer.verification("1", timestamp="12ab")
        self.assertEqual(self.fetch("/callback/helpdesk?" + query).code, 400)

    def test_unknown_app_is_404(self):
        query, _ = self.peer.verification("1")
        self.assertEqual(self.fetch("/callback/nosuchapp?" + query).code, 404)


class OfficialVectorTest(WecomdTestCase):
    """The official GET vector, exactly as WeCom sent it (an old timestamp, so the window is off)."""

    server_settings = {"timestamp_window": "0"}

    extra_config = (
        "[app:vector]\ncorp_id = wx5823bf96d3bd56c7\nagent_id = 218\ntoken = QDG6eK\n"
        "encoding_aes_key = jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C\n"
    )

    def test_official_get_vector(self):
        vectors = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
        vector = next(v for v in vectors["vectors"] if v["id"] == "official-php-go-verifyurl")
        resp = self.fetch("/callback/vector?" + vector["raw_query_as_sent"])
        self.assertEqual((resp.code, resp.body), (200, vector["plaintext"].encode()))

    def test_official_post_vector_is_stored(self):
        vectors = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
        v = next(v for v in vectors["vectors"] if v["id"] == "official-doc-post-decrypt")
        query = urllib.parse.urlencode({"msg_signature": v["msg_signature"], "timestamp": v["timestamp"], "nonce": v["nonce"]})
        resp = self.fetch("/callback/vector?" + query, method="POST", body=v["post_body"])
        self.assertEqual(resp.code, 200)
        [row] = self.rows()
        self.assertEqual((row["msgtype"], row["content"], row["msg_id"], row["from_user"]), ("text", "hello", "4561255354251345929", "mycreate"))


# The official vectors, kept in the repository (tests/data/), so a plain clone runs every test.
VECTORS_FILE = Path(__file__).parent / "data" / "wecom-vectors.json"


class ReceiveTest(WecomdTestCase):
    def test_text_gets_the_configured_reply_and_is_stored(self):
        resp = self.callback(text("你好 <b>世界</b>"))
        self.assertEqual(resp.code, 200)
        reply = ET.fromstring(self.peer.read_reply(resp.body))
        self.assertEqual(reply.findtext("Content"), "已收到")
        self.assertEqual(reply.findtext("ToUserName"), "zhangsan")
        self.assertEqual(reply.findtext("FromUserName"), CORP_ID)
        [row] = self.inbound()
        self.assertEqual(row["app"], "helpdesk")
        self.assertEqual(row["direction"], "in")
        self.assertEqual(row["content"], "你好 <b>世界</b>")
        self.assertEqual(row["msg_id"], "7357159753458634752")
        self.assertEqual(row["fields"]["AgentID"], "1000002")
        raw = self.db(self.services.store.messages.get_raw, row["id"])
        self.assertIn("<Content><![CDATA[你好 <b>世界</b>]]></Content>", raw)

    def test_app_without_reply_answers_empty_200(self):
        resp = self.callback(text(), app="quiet", agent_id="1000003")
        self.assertEqual((resp.code, resp.body), (200, b""))
        self.assertEqual(self.rows()[0]["app"], "quiet")

    def test_events_get_an_empty_200(self):
        resp = self.callback(CLICK)
        self.assertEqual((resp.code, resp.body), (200, b""))
        [row] = self.rows()
        self.assertEqual((row["msgtype"], row["event"], row["event_key"], row["from_user"]), ("event", "click", "RUN_BACKUP", "lisi"))

    def test_every_sample_type_is_stored_with_its_fields(self):
        for name, xml in SAMPLES.items():
            resp = self.callback(xml)
            self.assertEqual(resp.code, 200, name)
        rows = self.inbound()
        self.assertEqual(len(rows), len(SAMPLES))
        by_type = {(r["msgtype"], r["event"]) for r in rows}
        for name, xml in SAMPLES.items():
            root = ET.fromstring(xml)
            key = (root.findtext("MsgType"), root.findtext("Event"))
            self.assertIn(key, by_type, name)
        for row in rows:
            self.assertIn("MsgType", row["fields"])

    def test_wecom_retry_is_stored_once_and_answered_the_same(self):
        req = self.peer.callback(text("retry me"))
        replies = []
        for _ in range(4):
            resp = self.fetch("/callback/helpdesk?" + req.query, method="POST", body=req.body)
            self.assertEqual(resp.code, 200)
            replies.append(ET.fromstring(self.peer.read_reply(resp.body)).findtext("Content"))
        self.assertEqual(replies, ["已收到"] * 4)
        [row] = self.inbound()
        self.assertEqual(row["deliveries"], 4)

    def test_concurrent_retries_are_stored_once(self):
        """WeCom's retry can overlap a slow first delivery: four at once still make one row."""
        from tornado.httpclient import AsyncHTTPClient

        req = self.peer.callback(text("all at once"))
        url = self.get_url("/callback/helpdesk?" + req.query)

        async def deliver_four():
            client = AsyncHTTPClient()
            import asyncio

            return await asyncio.gather(*(client.fetch(url, method="POST", body=req.body) for _ in range(4)))

        responses = self.io_loop.run_sync(deliver_four)
        self.assertEqual([r.code for r in responses], [200] * 4)
        self.assertEqual({ET.fromstring(self.peer.read_reply(r.body)).findtext("Content") for r in responses}, {"已收到"})
        row, answer = self.rows()[::-1]  # the message, and the app's reply once
        self.assertEqual(row["deliveries"], 4)
        self.assertEqual((answer["content"], answer["automatic"]), ("已收到", "passive"))

    def test_retry_with_fresh_signature_is_still_a_duplicate(self):
        for nonce in ("1", "2", "3"):
            self.assertEqual(self.callback(CLICK, nonce=nonce).code, 200)
        [row] = self.rows()
        self.assertEqual(row["deliveries"], 3)

    def test_same_second_events_from_different_users_are_kept_apart(self):
        self.callback(CLICK)
        self.callback(CLICK.replace("lisi", "wangwu"))
        self.assertEqual(len(self.rows()), 2)

    def test_cdata_terminator_and_markup_in_user_text_are_kept_verbatim(self):
        from wecomd.wecom import samples

        xml = samples.build("text", corp_id=CORP_ID, agent_id="1000002", content="]]><script>alert(1)</script>")
        self.assertIn("]]]]><![CDATA[>", xml)
        resp = self.callback(xml)
        self.assertEqual(resp.code, 200)
        self.assertEqual(self.inbound()[0]["content"], "]]><script>alert(1)</script>")


class BadInputTest(WecomdTestCase):
    server_settings = {"max_body": "4096"}

    def post(self, body: bytes, query: str | None = None, app: str = "helpdesk"):
        query = query or self.peer.callback(text()).query
        return self.fetch("/callback/%s?%s" % (app, query), method="POST", body=body)

    def assert_nothing_stored_and_alive(self):
        self.assertEqual(self.rows(), [])
        self.assertEqual(self.fetch("/healthz").code, 200)

    def test_malformed_bodies_are_400(self):
        for body in (b"", b"not xml", b"\x00\xff\xfe junk", b"<xml><Encrypt>", b"<xml><ToUserName>x</ToUserName></xml>", b"<a>" * 1000):
            resp = self.post(body)
            self.assertEqual(resp.code, 400, body[:30])
        self.assert_nothing_stored_and_alive()

    def test_doctype_and_entities_are_refused(self):
        bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><xml><Encrypt>&b;</Encrypt></xml>'
        external = b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Encrypt>&e;</Encrypt></xml>'
        for body in (bomb, external):
            self.assertEqual(self.post(body).code, 400)
        self.assert_nothing_stored_and_alive()

    def test_bad_signature_and_wrong_corp_are_403(self):
        req = self.peer.callback(text())
        params = dict(urllib.parse.parse_qsl(req.query))
        params["msg_signature"] = "0" * 40
        self.assertEqual(self.post(req.body, urllib.parse.urlencode(params)).code, 403)
        other = WecomPeer(corp_id="wwother").callback(text())
        self.assertEqual(self.post(other.body, other.query).code, 403)
        stale = self.peer.callback(text(), timestamp=str(int(time.time()) + 1000))
        self.assertEqual(self.post(stale.body, stale.query).code, 403)
        self.assert_nothing_stored_and_alive()

    def test_signed_garbage_ciphertext_is_400(self):
        from wechatpy.crypto import _get_signature

        ts, nonce, junk = str(int(time.time())), "5", "QUJD" * 5
        sig = _get_signature(TOKEN, ts, nonce, junk)
        query = urllib.parse.urlencode({"msg_signature": sig, "timestamp": ts, "nonce": nonce})
        resp = self.post(("<xml><Encrypt>%s</Encrypt></xml>" % junk).encode(), query)
        self.assertEqual(resp.code, 400)
        self.assert_nothing_stored_and_alive()

    def test_signed_plaintext_that_is_not_xml_is_400(self):
        resp = self.callback("this is not xml <<<")
        self.assertEqual(resp.code, 400)
        self.assert_nothing_stored_and_alive()

    def test_missing_query_is_400_and_unknown_app_404(self):
        req = self.peer.callback(text())
        self.assertEqual(self.fetch("/callback/helpdesk", method="POST", body=req.body).code, 400)
        self.assertEqual(self.post(req.body, req.query, app="ghost").code, 404)

    def test_body_over_max_body_is_413_on_a_real_socket(self):
        req = self.peer.callback(text())
        big = req.body + b" " * 5000
        self.assertEqual(self.post(big, req.query).code, 413)
        # chunked: no Content-Length, the limit is enforced while reading
        status = self._raw_chunked("/callback/helpdesk?" + req.query, big)
        self.assertEqual(status, 413)
        self.assert_nothing_stored_and_alive()

    def _raw_chunked(self, path: str, body: bytes) -> int:
        with socket.create_connection(("127.0.0.1", self.get_http_port()), timeout=10) as s:
            head = "POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % path
            s.sendall(head.encode())
            for i in range(0, len(body), 1000):
                part = body[i:i + 1000]
                s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            s.sendall(b"0\r\n\r\n")
            return self.io_loop.run_sync(lambda: _read_status(s))

    def test_store_failure_is_503_and_recovers(self):
        store = self.services.store
        self.db(store.db.execute_sql, "PRAGMA query_only = 1")
        req = self.peer.callback(text("must not be lost"))
        resp = self.fetch("/callback/helpdesk?" + req.query, method="POST", body=req.body)
        self.assertEqual(resp.code, 503)
        self.db(store.db.execute_sql, "PRAGMA query_only = 0")
        resp = self.fetch("/callback/helpdesk?" + req.query, method="POST", body=req.body)
        self.assertEqual(resp.code, 200)
        [row] = self.inbound()
        self.assertEqual((row["content"], row["deliveries"]), ("must not be lost", 1))


class JunkTest(WecomdTestCase):
    """Whatever a scanner or a broken proxy sends, the answer is a 4xx and the server keeps serving."""

    def test_random_requests_get_4xx_never_5xx(self):
        import random

        rng = random.Random(20261129)
        good = self.peer.callback(text())
        params = dict(urllib.parse.parse_qsl(good.query))
        for i in range(300):
            query = {k: v for k, v in params.items() if rng.random() < 0.8}
            for key in list(query):
                if rng.random() < 0.3:
                    query[key] = "".join(rng.choice("ab+/=% 0123\x00\u00e9") for _ in range(rng.randrange(0, 60)))
            choice = rng.randrange(4)
            body = [
                bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400))),
                good.body[: rng.randrange(len(good.body))],
                good.body.replace(b"Encrypt", rng.choice([b"Encrypted", b"encrypt", b"ENCRYPT"])),
                b"<xml><Encrypt>" + bytes(rng.choice(b"ABCD+/=\x00<>&") for _ in range(rng.randrange(200))) + b"</Encrypt></xml>",
            ][choice]
            method = rng.choice(["GET", "POST"])
            resp = self.fetch(
                "/callback/helpdesk?" + urllib.parse.urlencode(query), method=method,
                body=body if method == "POST" else None, raise_error=False,
            )
            self.assertIn(resp.code, (400, 403, 413), (i, method, query, body[:80], resp.body))
        self.assertEqual(self.rows(), [])
        self.assertEqual(self.callback(text()).code, 200)

    def test_non_http_garbage_on_the_socket_does_not_hurt(self):
        for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/9.9\r\n\r\n", b"\r\n" * 100, b"A" * 70000):
            with socket.create_connection(("127.0.0.1", self.get_http_port()), timeout=5) as s:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                self.io_loop.run_sync(lambda: _drain(s))
        self.assertEqual(self.fetch("/healthz").code, 200)
        self.assertEqual(self.callback(text()).code, 200)


async def _drain(sock: socket.socket) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sock.recv, 65536):
        pass


async def _read_status(sock: socket.socket) -> int:
    import asyncio

    loop = asyncio.get_running_loop()
    data = await loop.run_in_executor(None, sock.recv, 200)
    return int(data.split(b" ")[1])


class LoggingTest(WecomdTestCase):
    def test_one_line_per_callback_and_no_secrets(self):
        with self.assertLogs("wecomd", level="INFO") as logs:
            self.callback(text("hello"))
            self.callback(text("hello"))
            bad = self.peer.callback(text())
            self.fetch("/callback/helpdesk?%s" % bad.query.replace("nonce=", "nonce=9"), method="POST", body=bad.body)
            self.fetch("/callback/helpdesk?" + self.peer.verification("7")[0])
            self.fetch("/callback/ghost?" + bad.query, method="POST", body=bad.body)
            self.fetch("/callback/helpdesk?" + bad.query, method="POST", body=b"<!DOCTYPE x []><xml/>")
            self.fetch("/healthz")
        lines = [r.getMessage() for r in logs.records if r.name == "wecomd.handlers.callback"]
        self.assertEqual(len(lines), 6, lines)
        self.assertRegex(lines[0], r"^callback app=helpdesk type=text from=zhangsan id=\d+ status=200 outcome=stored latency=[\d.]+ms$")
        self.assertRegex(lines[1], r"status=200 outcome=duplicate delivery=2 latency")
        self.assertRegex(lines[2], r"status=403 outcome=rejected reason=.*\(-40001\)")
        self.assertRegex(lines[3], r"type=verify .*status=200 outcome=verified")
        self.assertRegex(lines[4], r"app=ghost .*status=404 outcome=rejected reason=unknown app")
        self.assertRegex(lines[5], r"status=400 outcome=rejected reason=bad envelope")
        access = [r.getMessage() for r in logs.records if r.name == "wecomd.access"]
        self.assertEqual(len(access), 1)  # /healthz only: callbacks are not logged twice
        self.assertIn("/healthz", access[0])
        everything = "\n".join(r.getMessage() for r in logs.records)
        for secret in (TOKEN, AES_KEY, bad.query):
            self.assertNotIn(secret, everything)
        self.assertNotIn("msg_signature", everything)

    def test_clock_skew_is_named(self):
        stale = self.peer.callback(text(), timestamp=str(int(time.time()) - 1000))
        with self.assertLogs("wecomd.handlers.callback", level="WARNING") as logs:
            self.fetch("/callback/helpdesk?" + stale.query, method="POST", body=stale.body)
        self.assertRegex(logs.output[0], r"status=403 .*timestamp outside timestamp_window detail=timestamp -\d+s from this server's clock")

    def test_store_failure_is_logged_as_an_error(self):
        self.db(self.services.store.db.execute_sql, "PRAGMA query_only = 1")
        with self.assertLogs("wecomd.handlers.callback", level="ERROR") as logs:
            self.assertEqual(self.callback(text()).code, 503)
        self.assertRegex(logs.output[0], r"status=503 outcome=failed reason=message could not be stored detail=.*readonly")
