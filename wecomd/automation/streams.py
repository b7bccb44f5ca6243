"""Answer sources that stream text: a model server, a streaming webhook, a command.

Each is an async generator of text pieces, to be appended in order (a piece is a delta, never the
whole text so far). The contract is the same for all three:

- pieces come as the source produces them: nothing is buffered to the end;
- a failure of the source (an HTTP error, an error object, a connection refused, a non-zero exit,
  more than `timeout` seconds in all) raises StreamSourceError, whose text is a short notice for
  the operator and the user: it never holds a key, a signature or a webhook's URL;
- nothing hangs: every source has an overall deadline, and closing the generator early (aclose,
  or cancelling its consumer) stops the request or the process. Consume them inside
  `contextlib.aclosing(...)` so an early exit closes them at once.
"""
from __future__ import annotations

import asyncio
import codecs
import json
import os
import re
import signal
import time
import urllib.parse
from contextlib import suppress
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Sequence, Tuple

from tornado import httpclient, httputil
from tornado.simple_httpclient import HTTPTimeoutError

from wecomd.automation import commands
from wecomd.config import LlmConfig
from wecomd.workers import webhooks

CHUNK_QUEUE = 64  # chunks read ahead of the consumer; then the connection waits (flow control)
ERROR_BODY_LIMIT = 65536  # bytes of an error answer read to find its message
JSON_LIMIT = 1 << 20  # bytes of a whole JSON answer (a server that does not stream); more is cut, so not JSON
NOTICE_LIMIT = 200  # characters of a server's message quoted in a notice
LINE_LIMIT = 1 << 20  # characters of one unfinished event-stream line: more is not an event stream
PIECE_LIMIT = 4096  # bytes of a command's output without a newline, yielded as a piece anyway
CONNECT_TIMEOUT = 10.0  # seconds, at most (never more than the whole timeout)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # WeCom shows the text between them as thinking
_VERSIONED = re.compile(r"/v[0-9]+$")  # a base URL that already names its API version
_LINES = re.compile(r"\r\n|\r|\n")
_END = object()


class StreamSourceError(Exception):
    """A streamed answer failed; str() is a short notice, safe to show (no key, no URL)."""


# --- an OpenAI-compatible model server ----------------------------------------------------------

def completions_url(base_url: str) -> str:
    """The chat completions URL of a base URL: /v1/chat/completions, or /chat/completions after /vN."""
    base = base_url.rstrip("/")
    return base + ("/chat/completions" if _VERSIONED.search(base) else "/v1/chat/completions")


def chat_messages(llm: LlmConfig, history: Sequence[Tuple[str, str]], text: str) -> List[dict]:
    """The request's `messages`: the system prompt, the earlier turns (oldest first), the question.

    Each turn of `history` is (role, text) with role "user" or "assistant"; ValueError otherwise.
    """
    messages = [{"role": "system", "content": llm.system}] if llm.system else []
    for role, content in history:
        if role not in ("user", "assistant"):
            raise ValueError("a history turn's role is user or assistant, not %r" % (role,))
        messages.append({"role": role, "content": content})
    messages.append({"role": "user", "content": text})
    return messages


async def ask_llm(client: httpclient.AsyncHTTPClient, llm: LlmConfig, history: Sequence[Tuple[str, str]],
                  text: str) -> AsyncIterator[str]:
    """Stream the answer of `llm` to `text`, after the turns of `history` (see chat_messages).

    Yields the content deltas as they arrive; reasoning_content (or reasoning) is passed through
    between <think> and </think>. Ends at `data: [DONE]` or at the end of the answer. Raises
    StreamSourceError for an HTTP error, an error object (as the answer or within the stream), an
    answer that is neither an event stream nor JSON, or `llm.timeout` seconds passed in all.
    """
    body = json.dumps({"model": llm.model, "messages": chat_messages(llm, history, text), "stream": True,
                       "max_tokens": llm.max_tokens}, ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               "User-Agent": webhooks.USER_AGENT}
    if llm.api_key:
        headers["Authorization"] = "Bearer " + llm.api_key
    who, think = "model %s" % llm.name, _Think()
    exchange = _Exchange(client, completions_url(llm.base_url), body, headers, llm.timeout, who,
                         secret=llm.api_key)
    try:
        mime = await exchange.start()
        if mime == "application/json":  # a server that ignores stream: true answers in one piece
            document = exchange.parse(await exchange.rest(JSON_LIMIT))
            for piece in think.pieces(*_completion(document, who, llm.api_key)):
                yield piece
        elif mime != "text/event-stream":
            raise StreamSourceError("%s: answered %s, not an event stream" % (who, mime or "without a type"))
        else:
            async for data in _events(exchange):
                if data.strip() == "[DONE]":
                    break
                for piece in think.pieces(*_delta(exchange.parse(data), who, llm.api_key)):
                    yield piece
        for piece in think.finish():
            yield piece
    finally:
        exchange.close()


class _Think:
    """Wraps reasoning in <think>…</think>: opened before its first piece, closed before content."""

    def __init__(self) -> None:
        self.open = False

    def pieces(self, reasoning: Optional[str], content: Optional[str]) -> List[str]:
        out = []
        if reasoning:
            out += [reasoning] if self.open else [THINK_OPEN, reasoning]
            self.open = True
        if content:
            out += self.finish() + [content]
        return out

    def finish(self) -> List[str]:
        closing, self.open = [THINK_CLOSE] if self.open else [], False
        return closing


def _delta(event: Any, who: str, secret: str = "") -> Tuple[Optional[str], Optional[str]]:
    """(reasoning, content) of one chat.completion.chunk, None for what it lacks."""
    _raise_error_object(event, who, secret)
    delta = _first_choice(event).get("delta")
    delta = delta if isinstance(delta, dict) else {}
    return _text(delta.get("reasoning_content") or delta.get("reasoning")), _text(delta.get("content"))


def _completion(document: Any, who: str, secret: str = "") -> Tuple[Optional[str], Optional[str]]:
    """(reasoning, content) of a whole chat.completion."""
    _raise_error_object(document, who, secret)
    message = _first_choice(document).get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        raise StreamSourceError("%s: the answer has no choices[0].message.content" % who)
    return _text(message.get("reasoning_content") or message.get("reasoning")), message["content"]


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value else None


def _first_choice(document: Any) -> dict:
    choices = document.get("choices") if isinstance(document, dict) else None
    return choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}


def _raise_error_object(document: Any, who: str, secret: str = "") -> None:
    """Raise the server's own message when `document` is an error object ({"error": …})."""
    if isinstance(document, dict) and document.get("error"):
        raise StreamSourceError("%s: %s" % (who, _scrub(_message_of(document), secret)))


# --- a streaming webhook ------------------------------------------------------------------------

def signed_headers(body: bytes, rule: str, secret: Optional[str], delivery: Optional[str] = None) -> Dict[str, str]:
    """The headers of a streaming webhook's POST: those of a queued webhook (workers/webhooks.py).

    `X-Wecomd-Signature` is webhooks.sign of the exact body, when the rule has a secret.
    """
    headers = {"Content-Type": "application/json", "User-Agent": webhooks.USER_AGENT,
               "Accept": "text/event-stream, text/plain;q=0.9, */*;q=0.5",
               # Latin-1 only in a header: as the queued webhooks do, percent-encode the rest.
               webhooks.RULE_HEADER: urllib.parse.quote(rule, safe=webhooks._HEADER_SAFE)}
    if delivery is not None:
        headers[webhooks.DELIVERY_HEADER] = str(delivery)
    if secret:
        headers[webhooks.SIGNATURE_HEADER] = webhooks.sign(secret, body)
    return headers


async def stream_webhook(client: httpclient.AsyncHTTPClient, url: str, body: bytes, headers: Mapping[str, str],
                         timeout: float = 60.0) -> AsyncIterator[str]:
    """POST `body` with `headers` (see signed_headers) to `url`; yield the answer as it arrives.

    - `text/event-stream`: each event's data; a data that is a JSON object yields its "content",
      "text" or "delta" (also inside "delta" or "message", or an OpenAI chunk's delta content),
      and one with "error" raises; `data: [DONE]` ends it.
    - JSON: a queued webhook's answer `{"reply": text}`, or "content"/"text"; "error" raises.
    - Anything else (chunked or not): the body as text, as it comes.

    A non-2xx answer, a failed connection or `timeout` seconds in all raise StreamSourceError,
    which never names the URL (it may hold a token).
    """
    who = "webhook"
    exchange = _Exchange(client, url, body, dict(headers), timeout, who)
    try:
        mime = await exchange.start()
        if mime == "text/event-stream":
            async for data in _events(exchange):
                if data.strip() == "[DONE]":
                    break
                piece = _webhook_piece(data, who)
                if piece:
                    yield piece
        elif mime == "application/json" or mime.endswith("+json"):
            rest = await exchange.rest(JSON_LIMIT)
            piece = webhooks.parse_reply(rest, "application/json") or _webhook_piece(rest.decode("utf-8", "replace"), who)
            if piece:
                yield piece
        else:
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            async for chunk in exchange.chunks():
                text = decoder.decode(chunk)
                if text:
                    yield text
            tail = decoder.decode(b"", True)
            if tail:
                yield tail
    finally:
        exchange.close()


def _webhook_piece(data: str, who: str) -> str:
    """The text of one event's data: a JSON object's content, text or delta; else the data itself."""
    try:
        document = json.loads(data) if data.lstrip().startswith("{") else None
    except ValueError:
        document = None
    if not isinstance(document, dict):
        return data
    _raise_error_object(document, who)
    for found in (document, document.get("delta"), document.get("message")):
        for key in ("content", "text", "delta"):
            if isinstance(found, dict) and isinstance(found.get(key), str):
                return found[key]
    return _delta(document, who)[1] or ""  # an OpenAI-shaped chunk, or nothing to show


# --- HTTP: one exchange read as it arrives ------------------------------------------------------

class _Exchange:
    """One POST whose answer is read as it arrives: Tornado's callbacks feed a queue.

    `start()` waits for the status and headers: a failure or a non-2xx answer raises
    StreamSourceError with the server's message; else it returns the media type. `chunks()` then
    yields the body. One deadline covers it all. Past CHUNK_QUEUE unread chunks the connection
    waits for the reader (Tornado awaits what streaming_callback returns). `close()` stops it:
    the connection is dropped at its next chunk (an HTTPInputError, which Tornado takes quietly),
    and a silent one at the request's own timeout.
    """

    def __init__(self, client: httpclient.AsyncHTTPClient, url: str, body: bytes, headers: Dict[str, str],
                 timeout: float, who: str, secret: str = "") -> None:
        self.who, self.secret, self.timeout = who, secret, float(timeout)
        self.deadline = time.monotonic() + self.timeout
        self.queue: asyncio.Queue = asyncio.Queue()
        self.code: Optional[int] = None
        self.reason = ""
        self.headers = httputil.HTTPHeaders()
        self.closed = False
        loop = asyncio.get_running_loop()
        self._head = loop.create_future()
        self._room: Optional[asyncio.Future] = None
        request = httpclient.HTTPRequest(
            url, method="POST", body=body, headers=headers, follow_redirects=False,
            connect_timeout=min(CONNECT_TIMEOUT, self.timeout), request_timeout=self.timeout + 1,
            header_callback=self._header, streaming_callback=self._chunk)
        self.fetch = asyncio.ensure_future(client.fetch(request, raise_error=False))
        self.fetch.add_done_callback(self._fetched)

    # Tornado's side

    def _header(self, line: str) -> None:
        if self.code is None and line.startswith("HTTP/"):
            start = httputil.parse_response_start_line(line.strip())
            self.code, self.reason = start.code, start.reason
        elif line.strip():
            self.headers.parse_line(line)
        elif not self._head.done():
            self._head.set_result(None)

    def _chunk(self, chunk: bytes) -> Optional[asyncio.Future]:
        if self.closed:
            raise httputil.HTTPInputError("closed by its reader")
        self.queue.put_nowait(chunk)
        if self.queue.qsize() < CHUNK_QUEUE:
            return None
        self._room = asyncio.get_running_loop().create_future()
        return self._room

    def _fetched(self, fetch: asyncio.Future) -> None:
        if not self._head.done():
            self._head.set_result(None)
        self.queue.put_nowait(_END)

    # the reader's side

    async def _wait(self, awaitable: Any) -> Any:
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(awaitable, remaining)
        except asyncio.TimeoutError:
            raise StreamSourceError(self._late()) from None

    def _late(self) -> str:
        return "%s: no complete answer within %g s" % (self.who, self.timeout)

    async def start(self) -> str:
        """Wait for the answer's head; raise for a failure; return its media type, lower-case."""
        await self._wait(asyncio.shield(self._head))
        if self.code is None:  # no head: _head was set because the fetch failed
            raise StreamSourceError(self._failure())
        if not 200 <= self.code < 300:
            body = await self.rest(ERROR_BODY_LIMIT)
            raise StreamSourceError("%s: HTTP %d %s%s" % (self.who, self.code, self.reason,
                                                          _prefixed(_scrub(_error_message(body), self.secret))))
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive; StreamSourceError when the connection fails midway."""
        while True:
            item = await self._wait(self.queue.get())
            if self._room is not None and not self._room.done() and self.queue.qsize() < CHUNK_QUEUE // 2:
                self._room.set_result(None)
            if item is _END:
                if self.fetch.exception() is not None or self.fetch.result().code == 599:
                    raise StreamSourceError(self._failure())  # cut off, or Tornado's own timeout
                return
            yield item

    async def rest(self, limit: Optional[int] = None) -> bytes:
        """The rest of the body; only its first `limit` bytes are kept (all of them for None)."""
        kept = bytearray()
        async for chunk in self.chunks():
            kept += chunk if limit is None else chunk[:max(0, limit - len(kept))]
        return bytes(kept)

    def parse(self, data: Any) -> Any:
        """`data` (text or bytes) as JSON, or StreamSourceError quoting the start of it."""
        try:
            return json.loads(data.decode("utf-8-sig") if isinstance(data, bytes) else data)
        except ValueError:
            shown = _scrub(_excerpt(data), self.secret) or "(empty)"
            raise StreamSourceError("%s: sent something that is not JSON: %s" % (self.who, shown)) from None

    def _failure(self) -> str:
        """Why the finished fetch gave no (whole) answer: raise_error=False still raises for a
        connection that failed; a connection cut midway is a 599 response."""
        error = self.fetch.exception() or self.fetch.result().error
        if isinstance(error, HTTPTimeoutError):
            return self._late()
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error or "no answer")
        # Never the URL, which may hold a token: Tornado's error texts do not repeat it.
        return "%s: the connection failed: %s" % (self.who, _scrub(reason, self.secret))

    def close(self) -> None:
        """Stop reading: drop the connection (at its next chunk), forget what is queued."""
        self.closed = True
        if self._room is not None and not self._room.done():
            self._room.set_exception(httputil.HTTPInputError("closed by its reader"))
        while not self.queue.empty():
            self.queue.get_nowait()
        if not self.fetch.done():
            self.fetch.add_done_callback(lambda fetch: fetch.cancelled() or fetch.exception())


async def _events(exchange: _Exchange) -> AsyncIterator[str]:
    """The data of each server-sent event of the body (its data lines joined), once it is complete."""
    decoder, buffer, data = codecs.getincrementaldecoder("utf-8")("replace"), "", []
    chunks, ended = exchange.chunks(), False
    while not ended:
        try:
            text = decoder.decode(await chunks.__anext__())
        except StopAsyncIteration:
            text, ended = decoder.decode(b"", True) + "\n\n", True  # the last event, even unterminated
        text = buffer + text
        # A "\r" at the end may be half of a "\r\n": it waits, with the unfinished last line.
        held = "\r" if text.endswith("\r") and not ended else ""
        lines = _LINES.split(text[:-1] if held else text)
        buffer = "" if ended else lines.pop() + held
        if len(buffer) > LINE_LIMIT:
            raise StreamSourceError("%s: an event-stream line longer than %d characters" % (exchange.who, LINE_LIMIT))
        for line in lines:
            if not line:  # a blank line dispatches the event
                if data:
                    yield "\n".join(data)
                data = []
                continue
            field, _, value = line.partition(":")
            if field == "data":
                data.append(value[1:] if value.startswith(" ") else value)


# --- a command ----------------------------------------------------------------------------------

async def stream_command(argv: Sequence[str], env: Mapping[str, str], timeout: float,
                         output_limit: int = 65536, kill_grace: float = 2.0) -> AsyncIterator[str]:
    """Run `argv` (never through a shell) and yield its stdout line by line as it is written.

    As CommandRunner runs commands: a minimal environment plus `env`, stdin from /dev/null, its
    own session and process group, stopped (SIGTERM, `kill_grace` s, SIGKILL) on timeout or when
    the generator is closed early. A line longer than PIECE_LIMIT bytes comes in pieces; past
    `output_limit` bytes the output is dropped and a marker at the end says how much. stderr is
    kept apart: its end explains a failure. A non-zero exit, a signal, `timeout` seconds in all,
    or a command that cannot start raise StreamSourceError.
    """
    argv = tuple(argv)
    program = argv[0] if argv else "the command"
    deadline = time.monotonic() + timeout
    late = "command %s: did not finish within %g s" % (program, timeout)
    out, err = _Pipe(output_limit), _Pipe(None)
    transports: List[asyncio.BaseTransport] = []
    proc, running = None, False
    try:
        # Our own pipes, as CommandRunner's: their EOF means the whole group is done with them.
        write_fds = [await _connect(pipe, transports) for pipe in (out, err)]
        try:
            if not argv:
                raise ValueError("the command is empty")
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=write_fds[0], stderr=write_fds[1],
                env=commands._child_env(env), start_new_session=True)
        except (OSError, ValueError) as exc:
            raise StreamSourceError(commands._start_error(argv, exc)) from None
        finally:
            for fd in write_fds:
                os.close(fd)
        running = True
        try:
            while True:
                piece = await _until(deadline, out.queue.get())
                if piece is _END:
                    break
                yield piece
            await _until(deadline, asyncio.shield(err.closed))
            code = await _until(deadline, proc.wait())
        except asyncio.TimeoutError:
            running = False
            raise StreamSourceError("%s; %s" % (late, await _stop(proc, kill_grace))) from None
        running = False
        if out.dropped:
            yield "\n…[output truncated: %d bytes]" % out.dropped
        if code != 0:
            raise StreamSourceError("command %s: %s%s" % (program, _exit_text(code), _prefixed(err.tail_text())))
    finally:
        if running:  # closed early, or cancelled: stop what it started
            await _stop(proc, kill_grace)
        for transport in transports:
            transport.close()


async def _connect(pipe: "_Pipe", transports: List[asyncio.BaseTransport]) -> int:
    """A new pipe read by `pipe`; returns the end the child writes to."""
    read_fd, write_fd = os.pipe()
    try:
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: pipe, open(read_fd, "rb", buffering=0))
    except BaseException:
        os.close(write_fd)
        raise
    transports.append(transport)
    return write_fd


async def _until(deadline: float, awaitable: Any) -> Any:
    """`awaitable`, or asyncio.TimeoutError at `deadline` (time.monotonic)."""
    return await asyncio.wait_for(awaitable, max(0.0, deadline - time.monotonic()))


class _Pipe(asyncio.Protocol):
    """Reads one of the child's pipes: stdout as pieces on a queue (lines, or PIECE_LIMIT bytes),
    stderr as its last `tail` characters. Consumes every byte at once, so the child never blocks."""

    def __init__(self, limit: Optional[int], tail: int = NOTICE_LIMIT * 4) -> None:
        self.limit, self.tail = limit, tail
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending, self.kept, self.dropped, self.text = b"", 0, 0, ""

    def data_received(self, data: bytes) -> None:
        if self.limit is None:  # stderr: only its end matters
            self.text = (self.text + self.decoder.decode(data))[-self.tail:]
            return
        room = max(0, self.limit - self.kept)
        self.dropped += max(0, len(data) - room)
        data = data[:room]
        self.kept += len(data)
        self.pending += data
        while True:
            newline = self.pending.find(b"\n")
            if newline < 0 and len(self.pending) < PIECE_LIMIT:
                break
            cut = newline + 1 if newline >= 0 else PIECE_LIMIT
            self._put(self.pending[:cut])
            self.pending = self.pending[cut:]

    def _put(self, data: bytes, final: bool = False) -> None:
        text = self.decoder.decode(data, final)  # a character cut in two waits for its other half
        if text:
            self.queue.put_nowait(text)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.limit is not None:
            self._put(self.pending, final=True)
            self.pending = b""
            self.queue.put_nowait(_END)
        if not self.closed.done():
            self.closed.set_result(None)

    def tail_text(self) -> str:
        return " ".join(self.text.split())[-NOTICE_LIMIT:]


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> str:
    """SIGTERM the group, wait up to `grace`, SIGKILL what is left; say how it ended."""
    commands._signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
        how = "stopped with SIGTERM"
    except asyncio.TimeoutError:
        how = "killed with SIGKILL after it ignored SIGTERM for %g s" % grace
    finally:  # also when cancelled while waiting: never leave the group behind
        commands._signal_group(proc.pid, signal.SIGKILL)
    with suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), commands.READER_LINGER)
    return how


def _exit_text(code: Optional[int]) -> str:
    if code is not None and code < 0:
        with suppress(ValueError):
            return "killed by signal %s" % signal.Signals(-code).name
    return "exited with code %s" % code


# --- notices ------------------------------------------------------------------------------------

def _error_message(body: bytes) -> str:
    """The message of an error answer: OpenAI's error.message, or another usual field, or its text."""
    with suppress(ValueError):
        document = json.loads(body.decode("utf-8-sig"))
        found = _message_of(document)
        if found:
            return found
    return _excerpt(body)


def _message_of(document: Any) -> str:
    if isinstance(document, dict):
        for key in ("error", "message", "detail", "msg", "errmsg"):
            value = document.get(key)
            if isinstance(value, str) and value.strip():
                return _excerpt(value)
            if isinstance(value, dict):
                found = _message_of(value)
                if found:
                    return found
    return _excerpt(json.dumps(document, ensure_ascii=False)) if isinstance(document, dict) else ""


def _excerpt(data: Any) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    text = " ".join(text.split())
    return text if len(text) <= NOTICE_LIMIT else text[:NOTICE_LIMIT] + "…"


def _scrub(text: str, secret: str = "") -> str:
    """`text` without the secret, nor a word that shows part of it (servers echo keys masked)."""
    if not secret or not text:
        return text
    text = text.replace(secret, "[api_key]")
    patterns = [r"\S*\*{3,}\S*"]  # "sk-ab**********wxyz"
    if len(secret) >= 12:
        patterns.append(r"\S*%s\S*" % re.escape(secret[:6]))
    return re.sub("|".join(patterns), "[api_key]", text)


def _prefixed(text: str) -> str:
    return ": " + text if text else ""
