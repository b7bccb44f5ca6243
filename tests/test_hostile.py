"""Hostile input: every route, signed in or not, answers it with a 4xx (never a 5xx) and logs no
traceback; an out-of-range CreateTime is kept as sent and never blanks the dashboard."""
from __future__ import annotations

import asyncio
import http.client
import logging
import re
import select
import socket
import time
import urllib.parse

import pytest

from support.base import WecomdTestCase
from support.config import ADMIN_PASSWORD, API_TOKEN
from support.samples import _event, _message
from wecomd import auth

# The browser harness of test_browser.py; its fixtures must be names in this module to be used here.
from support.browser import Demo, conversation, login, new_user, open_thread

MAX_BODY = 65536
TWO_63 = str(2 ** 63)  # one past SQLite's largest integer
HUGE = "9" * 20
# str.isdigit() is true for all three; int() takes the last two, which are not ASCII either.
ODD_DIGITS = ("²", "٣", "１")
WEIRD_METHODS = ("TRACE", "PROPFIND", "MKCOL", "BREW")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS") + WEIRD_METHODS
SIGNED = "msg_signature=abc&nonce=1&echostr=abc"
BAD_TIMESTAMPS = tuple(urllib.parse.quote(d) for d in ODD_DIGITS) + ("9" * 5000,)
BAD_CURSORS = (
    ["before=%s&limit=%s" % (urllib.parse.quote(d), urllib.parse.quote(d)) for d in ODD_DIGITS]
    + ["before=%s" % TWO_63, "limit=%s" % TWO_63, "before=%s&limit=%s" % (HUGE, HUGE), "before=-1&limit=-1"]
)
QUERIES = (
    ["timestamp=%s&%s" % (t, SIGNED) for t in BAD_TIMESTAMPS + ("-5", HUGE, "%00")] + BAD_CURSORS
    + ["to_user=%ED%A0%80&user=%ED%A0%80&app=%00&q=%00&msgtype=%00&format=%00&next=%00&echostr=%ED%A0%80"]
)
# JSON text (not Python): "\ud800" is a lone surrogate once decoded.
SURROGATE_BODIES = (
    '{"app": "helpdesk", "to_user": "\\ud800", "content": "hi", "user": "\\ud800", "up_to_id": 1}',
    '{"app": "helpdesk", "to_user": "zhangsan", "content": "\\udfff", "user": "zhangsan\\udfff"}',
    '{"app": "\\ud800", "user": "zhangsan", "up_to_id": 1}',
)
NUMBER_BODIES = tuple('{"app": "helpdesk", "user": "zhangsan", "up_to_id": %s}' % n
                      for n in (TWO_63, HUGE, "-" + HUGE, "1e400", "true"))
JSON_BODIES = SURROGATE_BODIES + NUMBER_BODIES + ('["not", "an", "object"]',)
FORM_BODY = "username=%ED%A0%80&password=%00&lang=%00&next=%00&_xsrf=%00"


class Records(logging.Handler):
    """Every log record of the process while a test runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return ["%s: %s" % (r.name, r.getMessage()) for r in self.records
                if r.exc_info or r.exc_text or "Traceback" in r.getMessage()]


class HostileTestCase(WecomdTestCase):
    server_settings = {"max_body": str(MAX_BODY)}

    def setUp(self) -> None:
        super().setUp()
        self.log = Records()
        root = logging.getLogger()
        level = root.level
        root.addHandler(self.log)
        root.setLevel(logging.INFO)
        self.addCleanup(root.setLevel, level)
        self.addCleanup(root.removeHandler, self.log)

    def in_thread(self, fn, *args):
        """Run a blocking client in a worker thread while this loop serves it."""
        return self.io_loop.run_sync(lambda: asyncio.get_running_loop().run_in_executor(None, fn, *args),
                                     timeout=600)

    def settled(self) -> None:
        """From the client thread: wait until the server's loop has finished the step that answered
        (which also wrote the request's log line), so records can be counted per request."""
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.io_loop.asyncio_loop).result(30)

    # --- blocking clients ------------------------------------------------------------------

    def request(self, method: str, path: str, headers: dict | None = None, body: str | bytes | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.get_http_port(), timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.settled()
        return resp.status, data

    def raw(self, head: bytes, chunks=(), chunk_size: int = 16384) -> tuple:
        """Send a request as bytes, then `chunks` (a chunked body), stopping once an answer has come.
        Returns (status or None, body, bytes of body sent)."""
        sock = socket.create_connection(("127.0.0.1", self.get_http_port()), timeout=30)
        received, sent = b"", 0
        try:
            sock.sendall(head)
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered (or closed): stop sending
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except OSError:
                    break
                sent += len(chunk)
            else:
                if chunks:
                    try:
                        sock.sendall(b"0\r\n\r\n")
                    except OSError:
                        pass
            received = _read_response(sock)
        finally:
            sock.close()
        self.settled()
        match = re.match(rb"HTTP/1\.[01] (\d{3})", received)
        return (int(match.group(1)) if match else None), received.partition(b"\r\n\r\n")[2], sent

    def sign_in(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.get_http_port(), timeout=30)
        conn.request("GET", "/login")
        form = conn.getresponse()
        form.read()
        xsrf = _set_cookie(form, "_xsrf")
        body = urllib.parse.urlencode({"username": "admin", "password": ADMIN_PASSWORD, "_xsrf": xsrf})
        conn.request("POST", "/login", body=body, headers={
            "Cookie": "_xsrf=%s" % xsrf, "Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 302, resp.status
        session = _set_cookie(resp, auth.SESSION_COOKIE)
        return {"Cookie": "_xsrf=%s; %s=%s" % (xsrf, auth.SESSION_COOKIE, session), "X-XSRFToken": xsrf}


def _set_cookie(resp: http.client.HTTPResponse, name: str) -> str:
    for header in resp.headers.get_all("Set-Cookie") or ():
        key, _, rest = header.partition("=")
        if key == name:
            return rest.split(";")[0]
    raise AssertionError("no %s cookie" % name)


def _read_response(sock: socket.socket) -> bytes:
    """Read an answer until its Content-Length is complete, the peer closes, or the peer resets."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if length and len(body) >= int(length.group(1)):
                return data
        try:
            more = sock.recv(65536)
        except OSError:
            return data
        if not more:
            return data
        data += more


def _paths(pattern: str) -> list[str]:
    """Concrete paths for a route's regex: a plain sample, then huge ids and NUL bytes."""
    ids = re.compile(r"\((?:\\d|\[0-9\])[^)]*\)")

    def fill(number: str) -> str:
        path = re.sub(r"\(\?P<app>[^)]*\)", "helpdesk", pattern.rstrip("$"))
        path = ids.sub(number, path)
        path = re.sub(r"\(\[A-Za-z0-9\._@-\]\{1,64\}\)", "li", path)  # an operator's name
        path = re.sub(r"\[0-9\]\{\d+,\d*\}", HUGE, path)  # a route for ids that are too long
        path = re.sub(r"\(\?:[^)]*\)\?", "", path)  # an optional part
        path = re.sub(r"\(\?:([^|)]*)\|[^)]*\)", r"\1", path)  # the first of alternatives
        path = re.sub(r"\((robots|favicon)\\\.(txt|ico)\)", r"\1.\2", path)
        return path.replace("(.*)", "app.js").replace("/?", "")

    plain = fill("1")
    assert re.match(pattern, plain), (pattern, plain)
    paths = [plain, plain + "%00", plain.replace("/api/", "/api/%00/")]
    if ids.search(pattern):
        paths += [fill(TWO_63), fill(HUGE)]
    if "(.*)" in pattern:
        paths += ["/static/app.js%00.png", "/static/%00", "/static/..%2f..%2fetc%2fpasswd"]
    return list(dict.fromkeys(paths))


@pytest.mark.slow  # a sweep: more than 2,000 requests over every route
class HostileSweepTest(HostileTestCase):
    def test_every_route_answers_hostile_input_with_4xx_and_no_traceback(self):
        patterns = [rule.matcher.regex.pattern for rule in self._app.wildcard_router.rules]
        self.assertGreater(len(patterns), 15)
        answers = self.in_thread(self._sweep, patterns)
        problems = sorted({"%s -> %s" % (what.split(" ", 1)[1][:200], status) for what, status, _ in answers
                           if status is None and "chunked" not in what or status is not None and status >= 500})
        self.assertEqual(problems, [], "5xx or no answer:\n" + "\n".join(problems))
        self.assertEqual(self.log.tracebacks(), [])
        self.assertGreater(len(answers), 2000)

        by = {what: (status, body) for what, status, body in answers}

        def expect_status(what: str, status: int) -> None:
            self.assertEqual(by[what][0], status, what)

        for auth_name in ("anonymous", "session", "bearer"):
            for timestamp in BAD_TIMESTAMPS:
                for method in ("GET", "POST"):
                    expect_status("%s %s /callback/helpdesk?timestamp=%s&%s" % (auth_name, method, timestamp, SIGNED), 400)
            status, body = by["%s POST /callback/helpdesk cross-site" % auth_name]
            self.assertEqual(status, 403)
            self.assertIn(b"cross-site", body)
            expect_status("%s GET /static/app.js%%00.png" % auth_name, 404)
        # Signed in, the API's own checks answer (anonymous requests stop at 401 first).
        for auth_name in ("session", "bearer"):
            for path in ("/api/messages/%s" % TWO_63, "/api/messages/%s" % HUGE, "/api/media/%s" % HUGE):
                expect_status("%s GET %s" % (auth_name, path), 400)
            expect_status("%s POST /api/messages/%s/retry" % (auth_name, HUGE), 400)
            for route in ("/api/conversations", "/api/messages"):
                for query in BAD_CURSORS:
                    expect_status("%s GET %s?%s" % (auth_name, route, query), 400)
            for route in ("/api/messages", "/api/conversations/read", "/api/takeover/resume"):
                for body in SURROGATE_BODIES:
                    expect_status("%s POST %s %s" % (auth_name, route, body), 400)
            for body in NUMBER_BODIES:
                expect_status("%s POST /api/conversations/read %s" % (auth_name, body), 400)

    def _sweep(self, patterns: list[str]) -> list[tuple]:
        answers = []
        sessions = {"anonymous": {}, "session": self.sign_in(),
                    "bearer": {"Authorization": "Bearer %s" % API_TOKEN}}
        # Signing out may end the session for good: /logout comes last.
        patterns = sorted(patterns, key=lambda pattern: pattern == "/logout$")
        for auth_name, headers in sessions.items():
            for pattern in patterns:
                for path in _paths(pattern):
                    answers += self._hit(auth_name, headers, path)
                # A chunked body past every limit.
                path = _paths(pattern)[0]
                status, body, _ = self.raw(_chunked_head(path, headers),
                                           [b"x" * 16384] * (1 + 4 * MAX_BODY // 16384 + 80))
                answers.append(("%s POST %s chunked" % (auth_name, path), status, body))
        # Content-Length that str.isdigit() accepts but int() does not.
        for value in ("²".encode("latin-1"), b"-1", HUGE.encode()):
            status, body, _ = self.raw(b"POST /callback/helpdesk?timestamp=1&" + SIGNED.encode() +
                                       b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n")
            answers.append(("POST /callback/helpdesk Content-Length %r" % value, status, body))
        return answers

    def _hit(self, auth_name: str, headers: dict, path: str) -> list[tuple]:
        """Every method, every hostile query and body, and a cross-site request, on `path`."""
        answers = []

        def hit(what: str, method: str, target: str, extra: dict | None = None, body=None):
            before = len(self.log.records)
            status, data = self.request(method, target, {**headers, **(extra or {})}, body)
            answers.append(("%s %s %s%s" % (auth_name, method, target, what), status, data))
            if method in WEIRD_METHODS:
                # What the request wrote (background workers' lines are not the request's).
                lines = [r.getMessage() for r in self.log.records[before:]
                         if r.name == "wecomd.access" or r.name.startswith(("wecomd.handlers", "tornado"))]
                self.assertEqual(status, 405, target)
                self.assertEqual(len(lines), 1, (method, target, lines))
                self.assertIn("405", lines[0])

        for method in METHODS:
            hit("", method, path, body=b"{}" if method in ("POST", "PUT", "PATCH") else None)
        for query in QUERIES:
            for method in ("GET", "POST"):
                hit("", method, "%s?%s" % (path, query), body=b"" if method == "POST" else None)
        for body in JSON_BODIES:
            hit(" " + body, "POST", path, {"Content-Type": "application/json"}, body.encode())
        hit(" form", "POST", path, {"Content-Type": "application/x-www-form-urlencoded"}, FORM_BODY)
        hit(" cross-site", "POST", path, {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, b"{}")
        return answers


def _chunked_head(path: str, headers: dict) -> bytes:
    lines = ["POST %s?timestamp=%d&%s HTTP/1.1" % (path, time.time(), SIGNED), "Host: 127.0.0.1",
             "Transfer-Encoding: chunked", "Content-Type: application/json"]
    lines += ["%s: %s" % item for item in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class CallbackBodyLimitTest(HostileTestCase):
    def _too_large(self) -> float:
        value = self.services.metrics.registry.get_sample_value(
            "wecomd_callback_failures_total", {"app": "helpdesk", "reason": "too_large"})
        return value or 0.0

    def test_chunked_body_over_max_body_is_413_with_its_log_line_and_metric(self):
        """Just past max_body, and far past the connection's own limit (which used to cut it silently)."""
        for size in (MAX_BODY + 1, 20 * MAX_BODY):
            before, counted = len(self.log.records), self._too_large()
            chunks = [b"x" * 1000] * (size // 1000) + [b"x" * (size % 1000)]
            status, body, _ = self.in_thread(self.raw, _chunked_head("/callback/helpdesk", {}), chunks)
            self.assertEqual(status, 413, size)
            self.assertIn(b"max_body (%d bytes)" % MAX_BODY, body)
            lines = [r.getMessage() for r in self.log.records[before:]]
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(lines[0], r"^callback app=helpdesk .* status=413 outcome=rejected reason=body larger")
            self.assertEqual(self._too_large(), counted + 1)
        self.assertEqual(self.fetch("/healthz").code, 200)

    def test_declared_body_over_max_body_is_413_with_its_log_line(self):
        for size in (MAX_BODY + 1, 20 * MAX_BODY):
            before = len(self.log.records)
            head = ("POST /callback/helpdesk?timestamp=1&%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                    % (SIGNED, size)).encode()
            status, body, _ = self.in_thread(self.raw, head)
            self.assertEqual(status, 413, size)
            lines = [r.getMessage() for r in self.log.records[before:]]
            self.assertEqual(len(lines), 1, lines)
            self.assertIn("status=413", lines[0])

    def test_body_of_exactly_max_body_is_read(self):
        status, body, _ = self.in_thread(self.raw, _chunked_head("/callback/helpdesk", {}), [b"x" * MAX_BODY])
        self.assertEqual(status, 400)  # read whole, then refused as not XML
        self.assertIn(b"bad envelope", body)


# ------------------------------------------------------------------ CreateTime out of range (item 4)

FAR_FUTURE = "999999999999999999"  # 18 digits: fits the column, but no date anyone can print
OUT_OF_RANGE = (FAR_FUTURE, "-5")


class CreateTimeTest(HostileTestCase):
    def test_out_of_range_create_time_is_kept_and_the_api_still_answers(self):
        sent = {"future": FAR_FUTURE, "past": "-5", "overlong": "9" * 25, "normal": "1764370000"}
        for n, (user, stamp) in enumerate(sent.items()):
            xml = _message("text", "<Content>hi %s</Content><MsgId>8%d</MsgId>" % (user, n), user, stamp)
            self.assertEqual(self.callback(xml).code, 200, user)
        self.assertEqual(self.callback(_event("click", "<EventKey>K</EventKey>", "past", "-5")).code, 200)
        kept = {row["from_user"]: row["create_time"] for row in self.inbound() if row["msgtype"] == "text"}
        self.assertEqual(kept, {"future": int(FAR_FUTURE), "past": -5, "overlong": None, "normal": 1764370000})

        status, answer = self.api("/api/conversations")
        self.assertEqual(status, 200)
        self.assertEqual({c["user"] for c in answer["conversations"]}, set(sent))
        status, answer = self.api("/api/messages", user="future")
        self.assertEqual(status, 200)
        first = [m for m in answer["messages"] if m["direction"] == "in"][0]
        self.assertEqual((first["create_time"], first["fields"]["CreateTime"]), (int(FAR_FUTURE), FAR_FUTURE))
        status, answer = self.api("/api/messages", user="overlong")
        self.assertEqual([m["fields"]["CreateTime"] for m in answer["messages"] if m["direction"] == "in"],
                         ["9" * 25])  # too long for the column: as sent in fields and the raw XML
        for fmt in ("jsonl", "csv"):
            status, body = self.api("/api/export", format=fmt)
            self.assertEqual(status, 200)
            self.assertIn(FAR_FUTURE.encode(), body)
        self.assertEqual(self.log.tracebacks(), [])


def _send_xml(server: Demo, tmp_path, user: str, xml: str) -> None:
    path = tmp_path / ("%s.xml" % user)
    path.write_text(xml, encoding="utf-8")
    server.simulate(user, "xml", "x", "--xml", str(path))


def test_out_of_range_create_time_is_flagged_and_the_list_stays(page, demo, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    flag = "时间无效"  # "time invalid" in the page's Chinese
    corp, agent = demo.app["corp_id"], demo.app["agent_id"]
    before, future, past = new_user("intime"), new_user("future"), new_user("past")
    demo.simulate(before, content="an ordinary message")
    text = ("<xml><ToUserName>%s</ToUserName><FromUserName>%s</FromUserName><CreateTime>%s</CreateTime>"
            "<MsgType>text</MsgType><Content>%s</Content><MsgId>%d</MsgId><AgentID>%s</AgentID></xml>")
    click = ("<xml><ToUserName>%s</ToUserName><FromUserName>%s</FromUserName><CreateTime>%s</CreateTime>"
             "<MsgType>event</MsgType><Event>click</Event><EventKey>NO_RULE</EventKey><AgentID>%s</AgentID></xml>")
    for n, (user, stamp, content) in enumerate(((future, FAR_FUTURE, "from the far future"),
                                                (past, "-5", "from before 1970"))):
        _send_xml(demo, tmp_path, user, text % (corp, user, stamp, content, 9100 + n, agent))
        # A click no rule answers gets no automatic answer: it stays the newest message, in the list.
        _send_xml(demo, tmp_path, user, click % (corp, user, stamp, agent))
    after = new_user("intime")
    demo.simulate(after, content="another ordinary message")

    login(page, demo)
    # The whole list is there, newest first, as the API has it.
    expected = page.evaluate("async () => (await (await fetch('/api/conversations')).json())"
                             ".conversations.map((c) => c.user)")
    assert {before, future, past, after} <= set(expected)
    links = page.locator("#conversations a.conv")
    expect(links).to_have_count(len(expected))
    assert links.evaluate_all("(links) => links.map((a) => a.dataset.user)") == expected
    for user, stamp in ((future, FAR_FUTURE), (past, "-5")):
        expect(conversation(page, user).locator(".time-invalid")).to_have_text(flag)
        expect(conversation(page, user).locator(".time-invalid")).to_have_attribute("title", "CreateTime " + stamp)
        expect(conversation(page, user).locator(".conv-time")).not_to_have_text("")
    for user in (before, after):
        expect(conversation(page, user).locator(".conv-time")).not_to_have_text("")
        expect(conversation(page, user).locator(".time-invalid")).to_have_count(0)

    for user, stamp, content in ((future, FAR_FUTURE, "from the far future"), (past, "-5", "from before 1970")):
        open_thread(page, user)
        row = page.locator("#message-list li.msg.in", has_text=content)
        expect(row.locator(".time-invalid")).to_have_text(flag)
        expect(row.locator(".time-invalid")).to_have_attribute("title", "CreateTime " + stamp)
        expect(row.locator(".meta time")).not_to_have_text("")  # placed by when wecomd stored it
        expect(page.locator("#message-list li.system .time-invalid")).to_have_text(flag)
        expect(page.locator("#message-list .time-invalid")).to_have_count(2)  # not on the app's reply
        expect(page.locator("#message-list li.day")).to_have_count(1)  # today, not 1969 or year 31 billion
