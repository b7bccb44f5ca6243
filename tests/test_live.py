"""WS /api/live: every stored message and status change, pushed after the commit, to signed-in users."""
from __future__ import annotations

import asyncio
import json
import time

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.testing import gen_test
from tornado.websocket import websocket_connect

from base import WecomdTestCase
from peer import CORP_ID
from wecomd import simulate
from wecomd.live import Hub


def text(content: str, user: str = "zhangsan") -> str:
    return simulate.build("text", corp_id=CORP_ID, agent_id="1000002", from_user=user, content=content)


class LiveTest(WecomdTestCase):
    def setUp(self):
        super().setUp()
        self.headers = self.login()

    async def post_callback(self, xml: str):
        req = self.peer.callback(xml)
        return await self.http_client.fetch(self.get_url("/callback/helpdesk?" + req.query), method="POST", body=req.body)

    async def next_event(self, ws, timeout=5.0) -> dict:
        raw = await asyncio.wait_for(ws.read_message(), timeout)
        self.assertIsNotNone(raw, "socket closed")
        return json.loads(raw)

    @gen_test
    async def test_inbound_message_is_pushed_after_it_is_stored(self):
        ws = await self.ws_connect(self.headers)
        started = time.monotonic()
        resp = await self.post_callback(text("实时"))
        event = await self.next_event(ws)
        self.assertEqual(resp.code, 200)
        self.assertEqual(event["type"], "message")
        self.assertEqual(event["message"]["content"], "实时")
        self.assertNotIn("reply", event["message"])
        stored = await self.services.db(self.services.store.get, event["message"]["id"])
        self.assertEqual(stored["content"], "实时")  # it was committed before it was pushed
        self.assertLess(time.monotonic() - started, 5)
        ws.close()

    @gen_test
    async def test_duplicates_are_not_pushed_twice(self):
        ws = await self.ws_connect(self.headers)
        req = self.peer.callback(text("once"))
        for _ in range(3):
            await self.http_client.fetch(self.get_url("/callback/helpdesk?" + req.query), method="POST", body=req.body)
        await self.post_callback(text("second"))
        first, second = await self.next_event(ws), await self.next_event(ws)
        self.assertEqual((first["message"]["content"], second["message"]["content"]), ("once", "second"))
        ws.close()

    @gen_test
    async def test_manual_reply_pushes_message_then_status(self):
        ws = await self.ws_connect(self.headers)
        body = json.dumps({"app": "helpdesk", "to_user": "zhangsan", "msgtype": "text", "content": "来了"})
        headers = {**self.headers, "X-XSRFToken": self.xsrf, "Content-Type": "application/json"}
        resp = await self.http_client.fetch(self.get_url("/api/messages"), method="POST", body=body, headers=headers)
        self.assertEqual(resp.code, 201)
        created = await self.next_event(ws)
        self.assertEqual((created["type"], created["message"]["status"]), ("message", "pending"))
        status = await self.next_event(ws)
        self.assertEqual(status, {"type": "status", "id": created["message"]["id"], "status": "sent", "error": None})
        ws.close()

    @gen_test
    async def test_anonymous_and_cross_origin_sockets_are_refused(self):
        with self.assertRaises(HTTPClientError) as ctx:
            await websocket_connect("ws://127.0.0.1:%d/api/live" % self.get_http_port())
        self.assertEqual(ctx.exception.code, 403)
        evil = HTTPRequest("ws://127.0.0.1:%d/api/live" % self.get_http_port(),
                           headers={**self.headers, "Origin": "http://evil.example"})
        with self.assertRaises(HTTPClientError) as ctx:
            await websocket_connect(evil)
        self.assertEqual(ctx.exception.code, 403)

    @gen_test
    async def test_sockets_are_closed_on_shutdown(self):
        ws = await self.ws_connect(self.headers)
        await asyncio.sleep(0.05)
        self.assertEqual(self.services.hub.count, 1)
        self.services.hub.close_all()
        self.assertIsNone(await asyncio.wait_for(ws.read_message(), 5))
        self.assertEqual(ws.close_code, 1001)


class HubTest(WecomdTestCase):
    @gen_test
    async def test_a_slow_client_is_disconnected_not_buffered(self):
        hub = Hub(queue_size=5)
        closed, stalled = [], asyncio.Event()

        async def never_done(text):
            await stalled.wait()

        sub = hub.subscribe(never_done, lambda code, reason: closed.append((code, reason)))
        fast = []

        async def fast_send(text):
            fast.append(text)

        hub.subscribe(fast_send, lambda code, reason: None)
        for i in range(20):
            hub.publish({"type": "message", "message": {"id": i}})
            await asyncio.sleep(0)
        self.assertEqual(closed, [(1013, "too slow")])
        self.assertEqual(hub.count, 1)
        self.assertLessEqual(sub.queue.qsize(), 5)
        await asyncio.sleep(0.01)
        self.assertEqual(len(fast), 20)
