"""A tiny OpenAI-compatible model server that echoes, for tests and `wecomd demo`.

POST /v1/chat/completions answers the last user message back, word by word (each CJK character
is a word), as a `text/event-stream` of chat.completion.chunk events ending with `data: [DONE]`,
`delay` seconds apart; with `think`, a short reasoning_content comes first, as reasoning models
send it. `stream: false` gets one chat.completion. GET /v1/models lists the models. Errors are
OpenAI's shape, `{"error": {"message", "type", "code"}}`: 401 for a wrong key, 404 for an unknown
model, 400 for a body that is not a chat request. So streaming can be seen with no model and no key.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Dict, List, Optional, Tuple

from tornado import httpserver, iostream, netutil, web

PATH, MODELS_PATH = "/v1/chat/completions", "/v1/models"
DEFAULT_MODEL = "echo"
_CJK = "\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f"
_WORDS = re.compile(r"[%s]\s*|[^\s%s]+\s*|\s+" % (_CJK, _CJK))


def words(text: str) -> List[str]:
    """`text` cut into the pieces the server sends, each with its trailing spaces; they join back to it."""
    return _WORDS.findall(text)


class EchoModel:
    """The server's settings and what it was asked; tests read `requests` (each request's JSON body).

    `api_key` None accepts any Authorization (or none); a string requires `Bearer <api_key>`.
    """

    def __init__(self, delay: float = 0.05, think: bool = False, api_key: Optional[str] = None,
                 models: Tuple[str, ...] = (DEFAULT_MODEL,)) -> None:
        self.delay, self.think, self.api_key, self.models = delay, think, api_key, tuple(models)
        self.requests: List[dict] = []
        self.chunks_sent = 0  # content and reasoning events produced so far, over all requests
        self.first_word_at: Dict[str, float] = {}  # answer content -> time.monotonic() of its first word

    def answer(self, body: dict) -> Tuple[str, str]:
        """(reasoning, content) for a chat request: the last user message echoed."""
        question = next((m.get("content") for m in reversed(body.get("messages") or [])
                         if isinstance(m, dict) and m.get("role") == "user"), "")
        question = question if isinstance(question, str) else json.dumps(question, ensure_ascii=False)
        reasoning = "用户说：%s。我照原样回答。" % question.strip() if self.think else ""
        return reasoning, question or "（空消息）"


class _Handler(web.RequestHandler):
    def initialize(self, model: EchoModel) -> None:
        self.model = model

    def compute_etag(self) -> None:
        return None

    def fail(self, status: int, message: str, kind: str, code: Optional[str] = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish({"error": {"message": message, "type": kind, "param": None, "code": code}})

    def authorized(self) -> bool:
        if self.model.api_key is None:
            return True
        given = self.request.headers.get("Authorization", "")
        if given == "Bearer " + self.model.api_key:
            return True
        key = given[7:] if given.startswith("Bearer ") else ""
        shown = key[:3] + "*" * 10 + key[-4:] if len(key) > 8 else "(none)"
        # OpenAI's own wording, which shows the ends of the key it got: clients must not repeat it.
        self.fail(401, "Incorrect API key provided: %s. You can find your API key at "
                       "https://platform.openai.com/account/api-keys." % shown,
                  "invalid_request_error", "invalid_api_key")
        return False


class ModelsHandler(_Handler):
    def get(self) -> None:
        if self.authorized():
            self.finish({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                     "owned_by": "wecomd"} for name in self.model.models]})


class ChatHandler(_Handler):
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"")
        except ValueError:
            body = None
        if isinstance(body, dict):
            self.model.requests.append(body)
        if not self.authorized():
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self.fail(400, "'messages' is a required property", "invalid_request_error")
        if body.get("model") not in self.model.models:
            return self.fail(404, "The model `%s` does not exist or you do not have access to it."
                             % body.get("model"), "invalid_request_error", "model_not_found")
        reasoning, content = self.model.answer(body)
        ident, created = "chatcmpl-echo%d" % len(self.model.requests), int(time.time())
        if not body.get("stream"):
            message = {"role": "assistant", "content": content}
            if reasoning:
                message["reasoning_content"] = reasoning
            return self.finish({"id": ident, "object": "chat.completion", "created": created,
                                "model": body["model"], "choices": [{"index": 0, "message": message,
                                                                     "finish_reason": "stop"}]})
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")

        def event(delta: dict, finish: Optional[str] = None) -> dict:
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body["model"],
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        try:
            await self.send(event({"role": "assistant", "content": ""}))
            for field, text in (("reasoning_content", reasoning), ("content", content)):
                for word in words(text):
                    await asyncio.sleep(self.model.delay)
                    self.model.chunks_sent += 1
                    self.model.first_word_at.setdefault(content, time.monotonic())
                    await self.send(event({field: word}))
            await self.send(event({}, "stop"))
            self.write("data: [DONE]\n\n")
            await self.flush()
        except iostream.StreamClosedError:  # the client went away: nothing left to do
            return
        self.finish()

    async def send(self, document: dict) -> None:
        self.write("data: %s\n\n" % json.dumps(document, ensure_ascii=False))
        await self.flush()


def make_app(model: EchoModel) -> web.Application:
    """The echo model server as a tornado Application serving `model`."""
    return web.Application([(PATH, ChatHandler, dict(model=model)), (MODELS_PATH, ModelsHandler, dict(model=model))],
                           log_function=lambda handler: None)


async def start(model: EchoModel, host: str = "127.0.0.1", port: int = 0) -> Tuple[httpserver.HTTPServer, str]:
    """Serve `model` on host:port (0 picks a free port); return the server and its base URL."""
    sockets = netutil.bind_sockets(port, host)
    server = httpserver.HTTPServer(make_app(model))
    server.add_sockets(sockets)
    shown = "[%s]" % host if ":" in host else host
    return server, "http://%s:%d" % (shown, sockets[0].getsockname()[1])
