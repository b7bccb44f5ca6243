"""WS /api/live: every stored message and status change, pushed after the commit, to signed-in users."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.testing import ExpectLog, gen_test
from tornado.websocket import websocket_connect

from support.base import WecomdTestCase
from support.peer import CORP_ID
from wecomd.wecom import samples


def text(content: str, user: str = "zhangsan") -> str:
    return samples.build("text", corp_id=CORP_ID, agent_id="1000002", from_user=user, content=content)


class LiveTest(WecomdTestCase):
    def setUp(self):
        super().setUp()
        self.headers = self.login()
        self.buffers: dict = {}

    async def post_callback(self, xml: str):
        req = self.peer.callback(xml)
        return await self.http_client.fetch(self.get_url("/callback/helpdesk?" + req.query), method="POST", body=req.body)

    async def next_event(self, ws, timeout=5.0) -> dict:
        """The next event on `ws`; a frame is a JSON array of events."""
        buffered = self.buffers.setdefault(ws, [])
        while not buffered:
            raw = await asyncio.wait_for(ws.read_message(), timeout)
            self.assertIsNotNone(raw, "socket closed")
            frame = json.loads(raw)
            self.assertIsInstance(frame, list)
            self.assertTrue(frame, "an empty frame")
            buffered.extend(frame)
        return buffered.pop(0)

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
        stored = await self.services.db(self.services.store.messages.get, event["message"]["id"])
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
        events = [(await self.next_event(ws))["message"] for _ in range(4)]
        # Each message, then the app's automatic reply to it: once, however often WeCom retried.
        self.assertEqual([(m["content"], m["direction"]) for m in events],
                         [("once", "in"), ("已收到", "out"), ("second", "in"), ("已收到", "out")])
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
        self.assertEqual(status, {"type": "status", "id": created["message"]["id"], "app": "helpdesk", "status": "sent",
                                  "error": None})
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
    async def test_rapid_publishes_reach_every_client_once_and_in_order(self):
        sockets = [await self.ws_connect(self.headers) for _ in range(3)]
        await self.until(lambda: self.services.hub.count == 3)
        hub, frames = self.services.hub, [0] * len(sockets)
        for i in range(300):
            hub.publish({"type": "status", "id": i, "status": "sent", "error": None})
            if i % 7 == 0:
                await asyncio.sleep(0)  # let some flushes fall between publishes
        hub.publish({"type": "status", "id": "end", "status": "sent", "error": None})
        for n, ws in enumerate(sockets):
            got = []
            while not got or got[-1] != "end":
                raw = await asyncio.wait_for(ws.read_message(), 5)
                frames[n] += 1
                got.extend(event["id"] for event in json.loads(raw))
            self.assertEqual(got, list(range(300)) + ["end"])  # each once, in order, nothing else
            ws.close()
        self.assertEqual(len(set(frames)), 1)  # every client got the same frames
        self.assertLess(frames[0], 100)  # events published together share a frame

    @gen_test
    async def test_concurrent_callbacks_arrive_in_store_order_on_every_client(self):
        sockets = [await self.ws_connect(self.headers) for _ in range(2)]
        await self.until(lambda: self.services.hub.count == 2)
        sent = ["并发 %d" % i for i in range(20)]
        responses = await asyncio.gather(*(self.post_callback(text(content, user="u%d" % i))
                                           for i, content in enumerate(sent)))
        self.assertEqual({r.code for r in responses}, {200})
        for ws in sockets:
            events = [await self.next_event(ws) for _ in range(2 * len(sent))]  # each with the app's reply
            ids = [e["message"]["id"] for e in events]
            self.assertEqual(ids, sorted(ids))
            self.assertEqual(sorted(e["message"]["content"] for e in events if e["message"]["direction"] == "in"),
                             sorted(sent))
            ws.close()

    @gen_test
    async def test_an_event_is_sent_as_it_was_when_published(self):
        ws = await self.ws_connect(self.headers)
        await self.until(lambda: self.services.hub.count == 1)
        event = {"type": "status", "id": 1, "status": "sent", "error": None}
        self.services.hub.publish(event)
        event["status"] = "failed"  # after the commit, before the flush
        self.assertEqual((await self.next_event(ws))["status"], "sent")
        ws.close()

    @gen_test
    async def test_a_client_that_never_reads_is_closed_and_the_others_keep_receiving(self):
        hub = self.services.hub
        hub.max_behind = 4
        stalled = await self.stalled_client()
        fast = await self.ws_connect(self.headers)
        await self.until(lambda: hub.count == 2)
        received: list = []

        async def read_fast():
            while True:
                received.append(await self.next_event(fast))

        reader = asyncio.ensure_future(read_fast())
        published, filler = 0, "x" * 65536
        with ExpectLog("wecomd.live", "live: a client fell .* behind; disconnecting it"):
            while hub.count == 2 and published < 500:
                hub.publish({"type": "status", "id": published, "status": "failed", "error": filler})
                published += 1
                await asyncio.sleep(0.005)
        self.assertEqual(hub.count, 1)
        for i in range(3):  # the others keep receiving
            hub.publish({"type": "status", "id": published + i, "status": "sent", "error": None})
        await self.until(lambda: len(received) == published + 3)
        reader.cancel()
        self.assertEqual([e["id"] for e in received], list(range(published + 3)))
        self.assertEqual(await self.close_code(stalled), 1013)  # after the frames it was sent
        stalled.close()
        fast.close()

    @gen_test
    async def test_sockets_are_closed_on_shutdown(self):
        sockets = [await self.ws_connect(self.headers) for _ in range(2)]
        await self.until(lambda: self.services.hub.count == 2)
        self.services.hub.publish({"type": "status", "id": 7, "status": "sent", "error": None})
        self.services.hub.close_all()  # what was published before still goes out first
        self.assertEqual(self.services.hub.count, 0)
        for ws in sockets:
            self.assertEqual((await self.next_event(ws))["id"], 7)
            self.assertIsNone(await asyncio.wait_for(ws.read_message(), 5))
            self.assertEqual(ws.close_code, 1001)

    # --- helpers ------------------------------------------------------------------------------

    async def until(self, predicate, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self.assertLess(time.monotonic(), deadline, "condition not met")
            await asyncio.sleep(0.01)

    async def stalled_client(self) -> socket.socket:
        """A signed-in websocket with a tiny receive buffer that reads nothing after the handshake."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", self.get_http_port()))
        request = ("GET /api/live HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\nCookie: %s\r\n\r\n"
                   % (self.get_http_port(), base64.b64encode(os.urandom(16)).decode(), self.headers["Cookie"]))
        await loop.sock_sendall(sock, request.encode())
        response = b""
        while not response.endswith(b"\r\n\r\n"):  # one byte at a time: leave the frames unread
            response += await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
        self.assertIn(b" 101 ", response.split(b"\r\n")[0])
        return sock

    async def close_code(self, sock: socket.socket) -> int:
        """Read `sock` until the server's close frame; return its status code."""
        loop, data, at = asyncio.get_running_loop(), bytearray(), 0
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
            self.assertTrue(chunk, "closed without a close frame")
            data += chunk
            while len(data) - at >= 2:
                opcode, length, start = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
                if length >= 126:
                    size = 2 if length == 126 else 8
                    if len(data) - start < size:
                        break
                    length, start = int.from_bytes(data[start:start + size], "big"), start + size
                if len(data) - start < length:
                    break
                if opcode == 0x8:
                    return struct.unpack("!H", data[start:start + 2])[0]
                at = start + length
