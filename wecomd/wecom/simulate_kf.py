"""WeCom's side of 微信客服 plus a WeChat customer, played against a daemon (`wecomd simulate --kf`).

A customer's message goes into the sandbox WeCom first (POST /sandbox/kf/push, sandbox_kf), which
keeps it for kf/sync_msg and gives the token of its callback; then the app callback that rings the
daemon's doorbell is sent as WeCom sends it (wecom-kf.md §2), signed and encrypted with the app's
token and key by `Simulator`:

    <xml><ToUserName>CORPID</ToUserName><CreateTime>…</CreateTime><MsgType>event</MsgType>
    <Event>kf_msg_or_event</Event><Token>…</Token><OpenKfId>…</OpenKfId></xml>

The daemon should answer it with an empty 200 and pull the message from the sandbox afterwards.
"""
from __future__ import annotations

import json
import time
from typing import Any, List, Optional, Tuple

from tornado import httpclient

from wecomd.wecom.kf import KF_EVENT
from wecomd.wecom.samples import cdata
from wecomd.wecom.simulate import Result, Simulator

PUSH, ENTER = "/sandbox/kf/push", "/sandbox/kf/enter"  # sandbox_kf's helper endpoints


class SandboxError(Exception):
    """The sandbox did not take the customer's message (unreachable, or not a wecomd sandbox)."""


def callback_plaintext(corp_id: str, open_kfid: str, token: str, create_time: Optional[int] = None) -> str:
    """The decrypted kf_msg_or_event callback for `open_kfid` carrying the sync_msg `token`."""
    return ("<xml><ToUserName>%s</ToUserName><CreateTime>%d</CreateTime><MsgType>%s</MsgType><Event>%s</Event>"
            "<Token>%s</Token><OpenKfId>%s</OpenKfId></xml>" % (
                cdata(corp_id), int(time.time()) if create_time is None else create_time, cdata("event"),
                cdata(KF_EVENT), cdata(token), cdata(open_kfid)))


class KfCustomer:
    """One WeChat customer of one kf account: `say` and `enter` put what they do into the sandbox at
    `sandbox_url` and ring the daemon through `sim` (an app Simulator aimed at its callback URL).
    Owns an HTTP client for the sandbox: call `close()` when done (the Simulator is the caller's)."""

    def __init__(self, sandbox_url: str, sim: Simulator, open_kfid: str, external_userid: str,
                 timeout: float = 10.0) -> None:
        self.sandbox_url, self.sim = sandbox_url.rstrip("/"), sim
        self.open_kfid, self.external_userid, self.timeout = open_kfid, external_userid, timeout
        self._client: Optional[httpclient.AsyncHTTPClient] = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def say(self, content: str, *, msgtype: str = "text", repeat: int = 1,
                  **body: Any) -> Tuple[dict, List[Result]]:
        """The customer sends a message (text `content`, or another msgtype with its body as
        keywords); then the callback, `repeat` times as WeCom's retries. (item, the callbacks' Results)."""
        payload = {"open_kfid": self.open_kfid, "external_userid": self.external_userid, "content": content,
                   "msgtype": msgtype}
        if msgtype != "text":
            payload[msgtype] = body
        return await self._ring(PUSH, payload, repeat)

    async def say_as_servicer(self, servicer_userid: str, content: str, *, repeat: int = 1) -> Tuple[dict, List[Result]]:
        """A human agent (servicer_userid) answers this customer from the WeCom client (origin 5);
        then the callback."""
        return await self._ring(PUSH, {"open_kfid": self.open_kfid, "external_userid": self.external_userid,
                                       "content": content, "origin": 5, "servicer_userid": servicer_userid}, repeat)

    async def enter(self, scene: str = "", *, scene_param: str = "", welcome_code: bool = True,
                    repeat: int = 1) -> Tuple[dict, List[Result]]:
        """The customer opens the chat (enter_session, with a welcome_code when asked), then the callback."""
        return await self._ring(ENTER, {"open_kfid": self.open_kfid, "external_userid": self.external_userid,
                                        "scene": scene, "scene_param": scene_param, "welcome_code": welcome_code},
                                repeat)

    async def _ring(self, path: str, payload: dict, repeat: int) -> Tuple[dict, List[Result]]:
        pushed = await self._post(path, payload)
        plaintext = callback_plaintext(self.sim.corp_id, self.open_kfid, pushed["token"])
        return pushed["item"], await self.sim.send(plaintext, repeat=repeat)

    async def _post(self, path: str, payload: dict) -> dict:
        if self._client is None:
            self._client = httpclient.AsyncHTTPClient(force_instance=True)
        request = httpclient.HTTPRequest(self.sandbox_url + path, method="POST", request_timeout=self.timeout,
                                         body=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
                                         headers={"Content-Type": "application/json"})
        try:
            response = await self._client.fetch(request, raise_error=False)
        except (OSError, ValueError, httpclient.HTTPClientError) as exc:
            raise SandboxError("the sandbox at %s cannot be reached: %s" % (self.sandbox_url, exc)) from None
        try:
            answer = json.loads(response.body or b"")
        except ValueError:
            answer = None
        if response.code != 200 or not isinstance(answer, dict) or "item" not in answer or "token" not in answer:
            detail = answer.get("error") if isinstance(answer, dict) else (response.body or b"")[:120]
            raise SandboxError("the sandbox at %s did not take it (HTTP %d): %s; is it a wecomd sandbox "
                               "(wecomd demo's [wecom] api_base)?" % (self.sandbox_url, response.code, detail))
        return answer
