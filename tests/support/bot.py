"""The 智能机器人 test base: a real server with a bot `assistant`, WeCom's bot side played with
wechatpy's AES (the JSON envelope, receive-id ""), and a streamed source for tests."""
from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
from itertools import count

from wechatpy.crypto import _get_signature
from wechatpy.enterprise.crypto import PrpCrypto

from support.base import WecomdTestCase

TOKEN, AES_KEY = "BotToken0123456789", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
KEY = base64.b64decode(AES_KEY + "=")
BOT = """
[bot:assistant]
token = %s
encoding_aes_key = %s
stream_deadline = %%d

[rule:weather]
app = assistant
when = text contains 天气
reply = 今天晴，25 度

[rule:welcome]
app = assistant
when = event enter_chat
reply = 你好，我是助手
""" % (TOKEN, AES_KEY)
_IDS = count(1)


def _text(out) -> str:
    return out.decode() if isinstance(out, bytes) else out


class BotTestCase(WecomdTestCase):
    deadline = 30
    chattype = "single"

    def setUp(self) -> None:
        self.extra_config = BOT % self.deadline
        super().setUp()

    def post(self, payload: dict, timestamp: str | None = None, nonce: str = "1597212914", receive_id: str = ""):
        encrypt = _text(PrpCrypto(KEY).encrypt(json.dumps(payload, ensure_ascii=False), receive_id))
        timestamp = timestamp or str(int(time.time()))
        query = urllib.parse.urlencode({"msg_signature": _get_signature(TOKEN, timestamp, nonce, encrypt),
                                        "timestamp": timestamp, "nonce": nonce})
        return self.fetch("/callback/assistant?" + query, method="POST", body=json.dumps({"encrypt": encrypt}))

    def frame(self, resp, timestamp: str | None = None, nonce: str = "1597212914") -> dict:
        assert resp.code == 200, (resp.code, resp.body)
        body = json.loads(resp.body)
        assert set(body) == {"encrypt", "msgsignature", "timestamp", "nonce"}
        assert body["nonce"] == nonce
        assert body["msgsignature"] == _get_signature(TOKEN, str(body["timestamp"]), nonce, body["encrypt"])
        return json.loads(_text(PrpCrypto(KEY).decrypt(body["encrypt"], "")))

    def message(self, content: str, msgid: str | None = None, **extra) -> dict:
        payload = {"msgid": msgid or "msg-%d" % next(_IDS), "aibotid": "AIBOT", "chattype": "single",
                   "from": {"userid": "zhangsan"}, "msgtype": "text", "text": {"content": content},
                   "response_url": self.fake_base + "/cgi-bin/aibot/response?response_code=rc-%d" % next(_IDS)}
        payload.update(extra)
        return payload

    def poll(self, stream_id: str) -> dict:
        return self.frame(self.post({"msgid": "poll-%d" % next(_IDS), "aibotid": "AIBOT", "chattype": "single",
                                     "from": {"userid": "zhangsan"}, "msgtype": "stream", "stream": {"id": stream_id}}))

    @property
    def fake_base(self) -> str:
        return self.config.wecom.api_base


async def slow_answer(pieces, delay):
    for piece in pieces:
        await asyncio.sleep(delay)
        yield piece
