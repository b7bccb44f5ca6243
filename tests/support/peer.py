"""A stand-in for WeCom built on wechatpy, an implementation independent of wecomd's crypto."""
from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass

from wechatpy.enterprise.crypto import WeChatCrypto
from wechatpy.crypto import _get_signature
import xml.etree.ElementTree as ET

TOKEN = "T0kenForTests1234567890abcdefXYZ"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CORP_ID = "ww0123456789abcdef"
AGENT_ID = "1000002"


@dataclass
class Request:
    query: str
    body: bytes


class WecomPeer:
    """Builds what WeCom sends, and reads what it gets back, with wechatpy."""

    def __init__(self, token: str = TOKEN, aes_key: str = AES_KEY, corp_id: str = CORP_ID):
        self.token, self.corp_id = token, corp_id
        self.crypto = WeChatCrypto(token, aes_key, corp_id)

    def verification(self, echo: str = "1616140317555161061", timestamp: str | None = None, nonce: str = "263014780") -> tuple[str, str]:
        """A GET query for URL verification, echostr percent-encoded once as WeCom does."""
        ts = timestamp or str(int(time.time()))
        encrypted = self._encrypt(echo, ts, nonce)
        sig = _get_signature(self.token, ts, nonce, encrypted)
        query = urllib.parse.urlencode({"msg_signature": sig, "timestamp": ts, "nonce": nonce, "echostr": encrypted})
        return query, encrypted

    def callback(self, plaintext: str, timestamp: str | None = None, nonce: str = "1372623149", agent_id: str = AGENT_ID) -> Request:
        """A POST callback: query string and envelope body, Encrypt before AgentID as in the official sample."""
        ts = timestamp or str(int(time.time()))
        encrypted = self._encrypt(plaintext, ts, nonce)
        sig = _get_signature(self.token, ts, nonce, encrypted)
        body = (
            "<xml><ToUserName><![CDATA[%s]]></ToUserName>\n<Encrypt><![CDATA[%s]]></Encrypt>\n"
            "<AgentID><![CDATA[%s]]></AgentID></xml>" % (self.corp_id, encrypted, agent_id)
        )
        query = urllib.parse.urlencode({"msg_signature": sig, "timestamp": ts, "nonce": nonce})
        return Request(query, body.encode())

    def read_reply(self, body: bytes) -> str:
        """Verify and decrypt a passive reply envelope; returns the reply XML text."""
        root = ET.fromstring(body)
        sig = root.findtext("MsgSignature")
        ts, nonce = root.findtext("TimeStamp"), root.findtext("Nonce")
        return self.crypto.decrypt_message(body.decode(), sig, ts, nonce)

    def _encrypt(self, text: str, ts: str, nonce: str) -> str:
        envelope = self.crypto.encrypt_message(text, nonce, ts)
        return ET.fromstring(envelope).findtext("Encrypt")
