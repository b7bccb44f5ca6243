"""Streamed answer sources (wecomd/automation/streams.py) against real servers and processes on loopback:
the echo model server, small Tornado receivers written here, and slow shell commands."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from contextlib import aclosing
from pathlib import Path

import pytest
from tornado import httpclient, httpserver, netutil, web

from support.aio import async_test, until
from wecomd.automation import echo_model, streams
from wecomd.automation.streams import StreamSourceError
from wecomd.config import LlmConfig
from wecomd.workers import webhooks

KEY = "sk-test-0123456789abcdefXYZ"


def llm(base_url: str, **options) -> LlmConfig:
    values = dict(name="echo", base_url=base_url, api_key=KEY, model="echo", system="", max_tokens=1024, timeout=10)
    values.update(options)
    return LlmConfig(**values)


class Loopback:
    """An echo model server, test receivers and an HTTP client, all closed at the end."""

    def __init__(self) -> None:
        self.servers, self.client = [], None

    async def __aenter__(self) -> "Loopback":
        self.client = httpclient.AsyncHTTPClient(force_instance=True)
        return self

    async def __aexit__(self, *exc) -> None:
        self.client.close()
        for server in self.servers:
            server.stop()
            await server.close_all_connections()

    async def model(self, **options) -> tuple:
        model = echo_model.EchoModel(**options)
        server, base = await echo_model.start(model)
        self.servers.append(server)
        return model, base

    def serve(self, *routes) -> str:
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        server = httpserver.HTTPServer(web.Application(list(routes), log_function=lambda handler: None))
        server.add_sockets(sockets)
        self.servers.append(server)
        return "http://127.0.0.1:%d" % sockets[0].getsockname()[1]


async def collect(pieces, on_piece=None) -> list:
    found = []
    async with aclosing(pieces) as stream:
        async for piece in stream:
            found.append(piece)
            if on_piece is not None:
                await on_piece(piece)
    return found


async def failure(pieces) -> tuple:
    """(the pieces before the error, the StreamSourceError's text)."""
    found = []
    with pytest.raises(StreamSourceError) as caught:
        async with aclosing(pieces) as stream:
            async for piece in stream:
                found.append(piece)
    return found, str(caught.value)


# --- the model server ---------------------------------------------------------------------------

@async_test
async def test_the_answer_streams_word_by_word_before_the_server_has_finished():
    async with Loopback() as net:
        model, base = await net.model(delay=0.2)
        produced_at_first_piece = []

        async def note(piece):
            if not produced_at_first_piece:
                produced_at_first_piece.append(model.chunks_sent)

        text = "one two three four 你好"
        pieces = await collect(streams.ask_llm(net.client, llm(base), [], text), note)
        assert "".join(pieces) == text
        assert pieces == echo_model.words(text) == ["one ", "two ", "three ", "four ", "你", "好"]
        assert produced_at_first_piece == [1]  # the first word arrived while the other five were unwritten
        assert model.chunks_sent == 6


@async_test
async def test_the_request_carries_the_system_prompt_the_history_and_the_settings():
    async with Loopback() as net:
        model, base = await net.model(delay=0, api_key=KEY)
        history = [("user", "我叫张三"), ("assistant", "你好，张三"), ("user", "天气如何？"), ("assistant", "晴")]
        config = llm(base, system="你是助手。", max_tokens=77)
        assert "".join(await collect(streams.ask_llm(net.client, config, history, "我叫什么？"))) == "我叫什么？"
        [request] = model.requests
        assert request == {"model": "echo", "stream": True, "max_tokens": 77, "messages": [
            {"role": "system", "content": "你是助手。"}, {"role": "user", "content": "我叫张三"},
            {"role": "assistant", "content": "你好，张三"}, {"role": "user", "content": "天气如何？"},
            {"role": "assistant", "content": "晴"}, {"role": "user", "content": "我叫什么？"}]}
        with pytest.raises(ValueError, match="user or assistant"):
            streams.chat_messages(config, [("system", "x")], "y")


@async_test
async def test_reasoning_is_passed_through_between_think_tags():
    async with Loopback() as net:
        model, base = await net.model(delay=0, think=True)
        pieces = await collect(streams.ask_llm(net.client, llm(base), [], "早上好"))
        assert pieces[0] == "<think>" and pieces.count("<think>") == 1 and pieces.count("</think>") == 1
        assert "".join(pieces) == "<think>用户说：早上好。我照原样回答。</think>早上好"


@async_test
async def test_thinking_left_open_is_closed_at_the_end():
    async def events(handler):
        for delta in ({"role": "assistant", "content": ""}, {"reasoning_content": "嗯"}, {"reasoning": "……"}):
            handler.write("data: %s\n\n" % json.dumps({"choices": [{"index": 0, "delta": delta}]}))
        handler.write("data: [DONE]\n\n")

    async with Loopback() as net:
        base = net.serve(("/v1/chat/completions", Scripted, dict(script=events)))
        assert "".join(await collect(streams.ask_llm(net.client, llm(base), [], "x"))) == "<think>嗯……</think>"


@async_test
async def test_a_wrong_key_is_the_servers_message_without_the_key():
    async with Loopback() as net:
        _, base = await net.model(api_key="sk-the-right-one-000000000")
        pieces, error = await failure(streams.ask_llm(net.client, llm(base), [], "hi"))
        assert pieces == []
        assert error.startswith("model echo: HTTP 401 Unauthorized: Incorrect API key provided: [api_key]"), error
        assert KEY not in error and KEY[:6] not in error and KEY[-4:] not in error and "***" not in error


@async_test
async def test_an_error_object_is_the_servers_message():
    async def midway(handler):
        handler.write('data: {"choices":[{"index":0,"delta":{"content":"部分"}}]}\n\n')
        await handler.flush()
        handler.write('data: {"error":{"message":"This model\'s maximum context length is 8192 tokens, '
                      'your key %s","type":"invalid_request_error"}}\n\n' % KEY)

    async with Loopback() as net:
        _, echo = await net.model()
        _, error = await failure(streams.ask_llm(net.client, llm(echo, model="gpt-9"), [], "hi"))
        assert error == "model echo: HTTP 404 Not Found: The model `gpt-9` does not exist or you do not have " \
                        "access to it."
        base = net.serve(("/v1/chat/completions", Scripted, dict(script=midway)))
        pieces, error = await failure(streams.ask_llm(net.client, llm(base), [], "hi"))
        assert pieces == ["部分"]
        assert error == "model echo: This model's maximum context length is 8192 tokens, your key [api_key]"


@async_test
async def test_a_slow_or_silent_server_times_out():
    async def silent(handler):
        await asyncio.sleep(30)

    async with Loopback() as net:
        _, base = await net.model(delay=0.4)
        started = time.monotonic()
        pieces, error = await failure(streams.ask_llm(net.client, llm(base, timeout=1), [], "a b c d e f g h"))
        assert error == "model echo: no complete answer within 1 s"
        assert 0 < len(pieces) < 8 and time.monotonic() - started < 1.5
        base = net.serve(("/v1/chat/completions", Scripted, dict(script=silent)))
        started = time.monotonic()
        assert (await failure(streams.ask_llm(net.client, llm(base, timeout=1), [], "x")))[1] == error
        assert time.monotonic() - started < 1.5


@async_test
async def test_closing_the_stream_early_drops_the_connection():
    async with Loopback() as net:
        model, base = await net.model(delay=0.05)
        async with aclosing(streams.ask_llm(net.client, llm(base), [], "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16")) as stream:
            async for piece in stream:
                if piece.startswith("2"):
                    break
        await asyncio.sleep(0.5)  # ten more words' time
        assert model.chunks_sent <= 4, model.chunks_sent


@async_test
async def test_no_server_a_wrong_type_and_a_server_that_does_not_stream():
    async def html(handler):
        handler.set_header("Content-Type", "text/html")
        handler.write("<html>proxy login</html>")

    async def whole(handler):
        handler.set_header("Content-Type", "application/json")
        handler.write({"choices": [{"index": 0, "message": {"role": "assistant", "content": "一次给完",
                                                            "reasoning_content": "想"}}]})

    async with Loopback() as net:
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        closed = "http://127.0.0.1:%d" % sockets[0].getsockname()[1]
        sockets[0].close()
        assert (await failure(streams.ask_llm(net.client, llm(closed), [], "x")))[1] == \
            "model echo: the connection failed: Connection refused"
        base = net.serve(("/v1/chat/completions", Scripted, dict(script=html)))
        assert (await failure(streams.ask_llm(net.client, llm(base), [], "x")))[1] == \
            "model echo: answered text/html, not an event stream"
        base = net.serve(("/v1/chat/completions", Scripted, dict(script=whole)))
        assert "".join(await collect(streams.ask_llm(net.client, llm(base), [], "x"))) == "<think>想</think>一次给完"


@async_test
async def test_the_echo_model_lists_its_models_and_answers_without_streaming():
    async with Loopback() as net:
        _, base = await net.model(models=("echo", "echo-think"))
        listed = json.loads((await net.client.fetch(base + "/v1/models")).body)
        assert [m["id"] for m in listed["data"]] == ["echo", "echo-think"]
        body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi there"}]})
        answer = json.loads((await net.client.fetch(base + "/v1/chat/completions", method="POST", body=body)).body)
        assert answer["choices"][0]["message"] == {"role": "assistant", "content": "hi there"}


def test_the_completions_url_of_a_base_url():
    assert streams.completions_url("http://127.0.0.1:11434") == "http://127.0.0.1:11434/v1/chat/completions"
    assert streams.completions_url("https://api.example.com/v1/") == "https://api.example.com/v1/chat/completions"
    assert streams.completions_url("https://open.example.cn/api/paas/v4") == \
        "https://open.example.cn/api/paas/v4/chat/completions"
    assert streams.completions_url("https://x.example/compatible-mode") == \
        "https://x.example/compatible-mode/v1/chat/completions"


# --- a streaming webhook ------------------------------------------------------------------------

class Scripted(web.RequestHandler):
    """Answers a POST with `script(handler)`; records each request on the application."""

    def initialize(self, script, requests=None) -> None:
        self.script, self.requests = script, requests

    def compute_etag(self) -> None:
        return None

    async def post(self) -> None:
        if self.requests is not None:
            self.requests.append((dict(self.request.headers), self.request.body))
        self.set_header("Content-Type", "text/event-stream")
        await self.script(self)


@async_test
async def test_a_chunked_webhook_answer_streams_as_it_is_written():
    go, requests = asyncio.Event(), []

    async def chunked(handler):
        handler.set_header("Content-Type", "text/plain; charset=utf-8")
        line = "第一行\n".encode("utf-8")
        handler.write(line[:4])  # a character cut in two between chunks
        await handler.flush()
        handler.write(line[4:])
        await handler.flush()
        await go.wait()  # the last part only once the first has reached the reader
        handler.write("second line\n")

    async def first_arrived(piece):
        go.set()

    async with Loopback() as net:
        base = net.serve(("/hook", Scripted, dict(script=chunked, requests=requests)))
        body = webhooks.body_for({"content": "你好", "from_user": "zhangsan"}, "stream", "assistant")
        headers = streams.signed_headers(body, "stream", "webhook-secret", delivery="42")
        pieces = await collect(streams.stream_webhook(net.client, base + "/hook?token=t0ps3cret", body, headers),
                               first_arrived)
        assert "".join(pieces) == "第一行\nsecond line\n" and len(pieces) >= 2
        [(sent, received)] = requests
        assert received == body and webhooks.verify("webhook-secret", body, sent["X-Wecomd-Signature"])
        assert (sent["X-Wecomd-Rule"], sent["X-Wecomd-Delivery"]) == ("stream", "42")


@async_test
async def test_an_event_stream_webhook_yields_each_events_text():
    go = asyncio.Event()

    async def events(handler):
        handler.write(": a comment\n\ndata: {\"content\": \"你好，\"}\r\n\r\n")
        await handler.flush()
        await go.wait()
        handler.write("data: plain text,\n\nevent: delta\ndata: {\"delta\": {\"text\": \" 第二\"}}\n\n")
        handler.write("data: line one\ndata: line two\n\n")
        split = "data: {\"text\": \"尾\"}\r\n\r\n".encode("utf-8")
        for part in (split[:17], split[17:22], split[22:]):  # cut inside 尾, then between "\r" and "\n"
            handler.write(part)
            await handler.flush()
        handler.write(b"data: [DONE]\n\ndata: after the end\n\n")

    async def first_arrived(piece):
        go.set()

    async with Loopback() as net:
        base = net.serve(("/sse", Scripted, dict(script=events)))
        pieces = await collect(streams.stream_webhook(net.client, base + "/sse", b"{}", {}), first_arrived)
        assert pieces == ["你好，", "plain text,", " 第二", "line one\nline two", "尾"]


@async_test
async def test_webhook_failures_never_show_the_url():
    async def broken(handler):
        handler.set_status(502)
        handler.set_header("Content-Type", "text/plain")
        handler.write("upstream   is\n down")

    async def error_event(handler):
        handler.write("data: {\"text\": \"a\"}\n\ndata: {\"error\": \"quota exceeded\"}\n\n")

    async def json_reply(handler):
        handler.set_header("Content-Type", "application/json")
        handler.write({"reply": "一次性回答"})

    release = asyncio.Event()

    async def slow(handler):
        handler.write("data: a\n\n")
        await handler.flush()
        await release.wait()  # past the reader's timeout; then it ends normally

    async with Loopback() as net:
        base = net.serve(("/broken", Scripted, dict(script=broken)), ("/error", Scripted, dict(script=error_event)),
                         ("/json", Scripted, dict(script=json_reply)), ("/slow", Scripted, dict(script=slow)))
        _, error = await failure(streams.stream_webhook(net.client, base + "/broken?token=t0ps3cret", b"{}", {}))
        assert error == "webhook: HTTP 502 Bad Gateway: upstream is down"
        pieces, error = await failure(streams.stream_webhook(net.client, base + "/error?token=t0ps3cret", b"{}", {}))
        assert (pieces, error) == (["a"], "webhook: quota exceeded")
        assert await collect(streams.stream_webhook(net.client, base + "/json", b"{}", {})) == ["一次性回答"]
        started = time.monotonic()
        pieces, error = await failure(streams.stream_webhook(net.client, base + "/slow?token=t0ps3cret", b"{}", {},
                                                             timeout=0.5))
        assert (pieces, error) == (["a"], "webhook: no complete answer within 0.5 s")
        assert time.monotonic() - started < 1
        release.set()


# --- a command ----------------------------------------------------------------------------------

def sh(text: str) -> list:
    return ["/bin/sh", "-c", text]


@async_test
async def test_a_slow_command_yields_its_lines_as_they_come(tmp_path):
    go = tmp_path / "go"

    async def first_arrived(piece):
        go.touch()

    # The last line waits for a file that the test makes once the first line has arrived.
    command = 'echo "第一行 $WECOMD_CONTENT"; while [ ! -f "%s" ]; do sleep 0.02; done; printf "二\\n三"' % go
    pieces = await collect(streams.stream_command(sh(command), {"WECOMD_CONTENT": "你好"}, timeout=10), first_arrived)
    assert pieces == ["第一行 你好\n", "二\n", "三"]


@async_test
async def test_a_failing_command_ends_with_its_exit_and_the_end_of_stderr():
    pieces, error = await failure(streams.stream_command(sh("echo partial; echo 'no such order' >&2; exit 3"), {}, 10))
    assert (pieces, error) == (["partial\n"], "command /bin/sh: exited with code 3: no such order")
    _, error = await failure(streams.stream_command(sh("kill -SEGV $$"), {}, 10))
    assert error == "command /bin/sh: killed by signal SIGSEGV"
    _, error = await failure(streams.stream_command(["/nonexistent/program"], {}, 10))
    assert error == "could not start /nonexistent/program: No such file or directory"


@async_test
async def test_a_command_past_its_timeout_is_stopped_with_its_group(tmp_path):
    pids = tmp_path / "pids"
    command = 'sleep 30 & echo $! > "%s"; echo started; wait' % pids
    started = time.monotonic()
    pieces, error = await failure(streams.stream_command(sh(command), {}, timeout=0.5))
    assert pieces == ["started\n"] and error == "command /bin/sh: did not finish within 0.5 s; stopped with SIGTERM"
    assert time.monotonic() - started < 2
    await until(lambda: _gone(int(pids.read_text())), 2)


@async_test
async def test_closing_a_command_stream_early_stops_the_command():
    async with aclosing(streams.stream_command(sh("echo $$; exec sleep 30"), {}, timeout=30)) as stream:
        pid = int(await stream.__anext__())
    await until(lambda: _gone(pid), 2)


@async_test
async def test_command_output_is_limited_and_the_daemons_environment_is_not_passed(monkeypatch):
    monkeypatch.setenv("WECOMD_ADMIN_COOKIE_SECRET", "daemon-secret")
    code = "import os, sys; print(os.environ.get('WECOMD_ADMIN_COOKIE_SECRET', 'none')); sys.stdout.write('x' * 10000)"
    pieces = await collect(streams.stream_command([sys.executable, "-c", code], {}, timeout=10, output_limit=1000))
    text = "".join(pieces)
    assert text.startswith("none\n") and text.endswith("\n…[output truncated: 9005 bytes]")
    assert text.count("x") == 995


@async_test
async def test_a_long_line_comes_in_pieces():
    code = "import sys, time; sys.stdout.write('y' * 10000); sys.stdout.flush(); time.sleep(0.3); print('!')"
    pieces = await collect(streams.stream_command([sys.executable, "-c", code], {}, timeout=10))
    assert "".join(pieces) == "y" * 10000 + "!\n"
    assert len(pieces) >= 3 and all(len(piece) <= streams.PIECE_LIMIT for piece in pieces)


async def _gone(pid: int) -> bool:
    try:
        text = Path("/proc/%d/stat" % pid).read_text()
    except FileNotFoundError:
        return True
    return text.rsplit(")", 1)[1].split()[0] == "Z" or not os.path.exists("/proc/%d" % pid)
