"""wecomd.wecom.simulate against a real loopback Tornado server whose crypto is wechatpy's, not ours."""
from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional
from urllib.parse import parse_qs, urlsplit

import pytest
from defusedxml import ElementTree
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from wechatpy.enterprise.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException

from wecomd.wecom import simulate

from wecomd.cli import simulate as simulate_cli
from wecomd.wecom.simulate import Simulator
from wecomd.wecom.samples import KINDS, build

TOKEN = "SimTok3n4Tests"
AES_KEY = "Zy9xW8vU7tS6rQ5pO4nM3lK2jI1hG0fEdCbA9876543"
CORP_ID = "wwsimulate0000001"
AGENT_ID = "1000005"
EVENT_KINDS = [k for k in KINDS if k not in ("text", "image", "voice", "video", "location", "link", "file")]


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


@dataclass
class Seen:
    """What the peer server received."""

    gets: list = field(default_factory=list)
    posts: list = field(default_factory=list)  # (uri, body)
    plaintexts: list = field(default_factory=list)


class PeerHandler(web.RequestHandler):
    """A WeCom callback endpoint written with wechatpy; `mode` selects a misbehaviour."""

    def initialize(self, seen: Seen, mode: str) -> None:
        self.seen, self.mode = seen, mode
        self.crypto = WeChatCrypto(TOKEN, AES_KEY, CORP_ID)

    def _args(self) -> tuple[str, str, str]:
        return tuple(self.get_argument(n) for n in ("msg_signature", "timestamp", "nonce"))

    def get(self) -> None:
        self.seen.gets.append(self.request.uri)
        try:
            echo = self.crypto.check_signature(*self._args(), self.get_argument("echostr"))
        except InvalidSignatureException:
            raise web.HTTPError(403)
        self.set_header("Content-Type", "text/plain")
        self.write('"%s"\n' % echo if self.mode == "quoted" else echo)

    def post(self) -> None:
        self.seen.posts.append((self.request.uri, self.request.body))
        if self.mode == "forbidden":
            raise web.HTTPError(403)
        sig, ts, nonce = self._args()
        try:
            plain = self.crypto.decrypt_message(self.request.body, sig, ts, nonce)
        except InvalidSignatureException:
            raise web.HTTPError(403)
        self.seen.plaintexts.append(plain)
        if self.mode == "empty":
            return
        if self.mode == "garbage":
            self.write("success")
            return
        self.write(self._reply(plain, ts, nonce))

    def _reply(self, plain: str, ts: str, nonce: str) -> str:
        msg = ElementTree.fromstring(plain.encode("utf-8"))
        text = msg.findtext("Content") or "got %s/%s" % (msg.findtext("MsgType"), msg.findtext("Event"))
        reply = ("<xml><ToUserName>%s</ToUserName><FromUserName>%s</FromUserName><CreateTime>%d</CreateTime>"
                 "<MsgType><![CDATA[text]]></MsgType><Content>%s</Content></xml>" % (
                     _cdata(msg.findtext("FromUserName")), _cdata(CORP_ID), int(time.time()), _cdata(text)))
        envelope = self.crypto.encrypt_message(reply, nonce, ts)
        if self.mode == "badsig":
            good = ElementTree.fromstring(envelope.encode()).findtext("MsgSignature")
            envelope = envelope.replace(good, "0" * 40)
        return envelope


def against(mode: str, scenario: Callable[[str, Seen], Awaitable]):
    """Run `scenario(url, seen)` with a peer server on a loopback port, in a fresh event loop."""

    async def main():
        seen = Seen()
        sock, port = bind_unused_port()
        server = HTTPServer(web.Application([(r"/cb", PeerHandler, dict(seen=seen, mode=mode))]))
        server.add_sockets([sock])
        try:
            return await scenario("http://127.0.0.1:%d/cb" % port, seen)
        finally:
            server.stop()
            await server.close_all_connections()

    return asyncio.run(main())


def simulator(url: str) -> Simulator:
    return Simulator(url, token=TOKEN, aes_key=AES_KEY, corp_id=CORP_ID, agent_id=AGENT_ID, timeout=5)


async def send_once(url: str, plaintext: str, repeat: int = 1) -> list[simulate.Result]:
    sim = simulator(url)
    try:
        return await sim.send(plaintext, repeat=repeat)
    finally:
        sim.close()


def text(content: str = "hello", **kw) -> str:
    return build("text", corp_id=CORP_ID, agent_id=AGENT_ID, content=content, **kw)


# --- build() ---------------------------------------------------------------------------------


def test_build_unknown_kind_lists_kinds():
    with pytest.raises(ValueError) as info:
        build("nope", corp_id=CORP_ID, agent_id=AGENT_ID)
    assert "template_card_menu_event" in str(info.value) and "text" in str(info.value)


def test_build_message_fields_and_fresh_msgid():
    first, second = ElementTree.fromstring(text()), ElementTree.fromstring(text())
    assert first.findtext("MsgId") != second.findtext("MsgId")
    assert first.findtext("MsgId").isdigit() and len(first.findtext("MsgId")) >= 18
    fixed = text(msg_id="123", create_time=1700000000)
    assert "<MsgId>123</MsgId>" in fixed and "<CreateTime>1700000000</CreateTime>" in fixed
    assert "<AgentID>%s</AgentID>" % AGENT_ID in fixed  # numbers bare, strings CDATA
    assert "<ToUserName><![CDATA[%s]]></ToUserName>" % CORP_ID in fixed


def test_build_escapes_cdata_terminator_and_illegal_chars():
    content = "a]]>b <i>&amp; {brace} 中文\x01"
    xml = text(content)
    assert "]]]]><![CDATA[>" in xml
    assert ElementTree.fromstring(xml).findtext("Content") == content.replace("\x01", "")


def test_build_events_have_no_msgid_and_system_sender():
    for kind in EVENT_KINDS:
        root = ElementTree.fromstring(build(kind, corp_id=CORP_ID, agent_id=AGENT_ID))
        assert root.find("MsgId") is None and root.findtext("Event") == kind
    contact = ElementTree.fromstring(
        build("change_contact", corp_id=CORP_ID, agent_id=AGENT_ID, from_user="lisi"))
    assert contact.findtext("FromUserName") == "sys" and contact.findtext("UserID") == "lisi"
    click = ElementTree.fromstring(build("click", corp_id=CORP_ID, agent_id=AGENT_ID, event_key="K1"))
    assert click.findtext("EventKey") == "K1"


# --- Simulator against the wechatpy peer --------------------------------------------------------


async def verify_once(url: str, seen: Seen) -> tuple[simulate.Result, Seen]:
    sim = simulator(url)
    try:
        return await sim.verify(), seen
    finally:
        sim.close()


def test_verify_ok_and_echostr_encoded_once():
    result, seen = against("ok", verify_once)
    assert result.ok and result.status == 200, result.error
    query = urlsplit(seen.gets[0]).query
    echostr = query.split("echostr=")[1]
    assert "+" not in echostr and "/" not in echostr and "=" not in echostr and "%25" not in echostr
    assert set(parse_qs(query)) == {"msg_signature", "timestamp", "nonce", "echostr"}


def test_verify_rejects_quoted_echo():
    result, _ = against("quoted", verify_once)
    assert result.status == 200 and "not the bare echo" in result.error


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_decrypted_by_peer_and_reply_decrypted(kind):
    plaintext = build(kind, corp_id=CORP_ID, agent_id=AGENT_ID)

    async def scenario(url, seen):
        return await send_once(url, plaintext), seen

    (result,), seen = against("ok", scenario)
    assert result.ok and result.status == 200, result.error
    assert seen.plaintexts == [plaintext]
    received = ElementTree.fromstring(seen.plaintexts[0].encode("utf-8"))
    assert received.findtext("MsgType") == ("event" if kind in EVENT_KINDS else kind)
    assert received.findtext("Event") == (kind if kind in EVENT_KINDS else None)
    assert received.findtext("ToUserName") == CORP_ID and received.findtext("AgentID") == AGENT_ID
    reply = ElementTree.fromstring(result.reply.encode("utf-8"))
    assert reply.findtext("FromUserName") == CORP_ID and reply.findtext("MsgType") == "text"


def test_envelope_shape():
    async def scenario(url, seen):
        await send_once(url, text())
        return seen

    seen = against("empty", scenario)
    envelope = ElementTree.fromstring(seen.posts[0][1])
    assert [child.tag for child in envelope] == ["ToUserName", "AgentID", "Encrypt"]
    assert envelope.findtext("ToUserName") == CORP_ID and envelope.findtext("AgentID") == AGENT_ID


def test_repeat_sends_identical_envelopes():
    async def scenario(url, seen):
        return await send_once(url, text(), repeat=3), seen

    results, seen = against("ok", scenario)
    assert len(results) == 3 and all(r.ok for r in results)
    assert len(seen.posts) == 3 and len(set(seen.posts)) == 1


def test_empty_200_is_no_reply_and_no_error():
    async def scenario(url, seen):
        return await send_once(url, text())

    (result,) = against("empty", scenario)
    assert result.status == 200 and result.reply is None and result.error is None and result.body == b""


def test_wrong_reply_signature_is_an_error():
    (result,) = against("badsig", lambda url, seen: send_once(url, text()))
    assert result.status == 200 and result.reply is None and "MsgSignature" in result.error


def test_non_envelope_reply_is_an_error():
    (result,) = against("garbage", lambda url, seen: send_once(url, text()))
    assert result.reply is None and "not an XML envelope" in result.error


def test_403_is_recorded():
    (result,) = against("forbidden", lambda url, seen: send_once(url, text()))
    assert result.status == 403 and "403" in result.error and result.reply is None


def test_special_content_survives_both_ways():
    content = "x]]>y <b>&nbsp; 你好，世界 😀 {0}"

    async def scenario(url, seen):
        return await send_once(url, text(content)), seen

    (result,), seen = against("ok", scenario)
    assert result.ok, result.error
    assert ElementTree.fromstring(seen.plaintexts[0].encode("utf-8")).findtext("Content") == content
    assert ElementTree.fromstring(result.reply.encode("utf-8")).findtext("Content") == content


def test_unreachable_server_is_a_result_not_an_exception():
    sock, port = bind_unused_port()
    sock.close()

    async def main():
        sim = simulator("http://127.0.0.1:%d/cb" % port)
        try:
            return await sim.verify(), await sim.send(text())
        finally:
            sim.close()

    verify, (post,) = asyncio.run(main())
    assert verify.status == 599 and "request failed" in verify.error
    assert post.status == 599 and post.error


def test_bad_aes_key_raises_crypto_error():
    from wecomd.wecom.crypto import CryptoError

    with pytest.raises(CryptoError):
        Simulator("http://127.0.0.1:1/", token=TOKEN, aes_key="short", corp_id=CORP_ID)


# --- run(args): the command line ------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wecomd simulate")
    simulate_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def secrets_args(url: str) -> list[str]:
    return [url, "--token", TOKEN, "--aes-key", AES_KEY, "--corp-id", CORP_ID, "--agent-id", AGENT_ID]


def run_cli(mode: str, *extra: str, url: Optional[str] = None, secrets: bool = True):
    async def scenario(peer_url, seen):
        target = url or peer_url
        argv = secrets_args(target) if secrets else [target]
        return await simulate_cli.run(parse(*argv, *extra)), seen

    return against(mode, scenario)


def test_run_end_to_end_prints_reply(capsys):
    code, seen = run_cli("ok", "--content", "你好 wecomd")
    out, err = capsys.readouterr()
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert lines[0].startswith("verify: ok (")
    assert lines[1].startswith("POST text #1: 200, reply: <xml>") and "你好 wecomd" in lines[1]
    assert lines[-1].startswith("sent 2, ok 2, failed 0, ") and lines[-1].endswith(" msg/s")
    assert TOKEN not in out + err and AES_KEY not in out + err
    assert len(seen.gets) == 1 and len(seen.posts) == 1


def test_run_secrets_from_environment(capsys, monkeypatch):
    monkeypatch.setenv("WECOMD_SIM_TOKEN", TOKEN)
    monkeypatch.setenv("WECOMD_SIM_AES_KEY", AES_KEY)
    monkeypatch.setenv("WECOMD_SIM_CORP_ID", CORP_ID)
    code, _ = run_cli("ok", "--type", "click", "--event-key", "RUN", secrets=False)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "POST click #1: 200, reply:" in out and "got event/click" in out


def test_run_count_repeat_and_no_verify(capsys):
    code, seen = run_cli("ok", "--no-verify", "--type", "click", "--count", "3", "--repeat", "2")
    out, _ = capsys.readouterr()
    assert code == 0, out
    assert not seen.gets and len(seen.posts) == 6 and len(set(seen.posts)) == 3
    assert len(set(seen.plaintexts)) == 3  # distinct events (distinct CreateTime)
    assert "POST click #3 try 2/2: 200" in out and "sent 6, ok 6, failed 0" in out


def test_run_xml_file_sent_as_is(capsys, tmp_path):
    raw = ("<xml>\n<ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[u1]]></FromUserName>"
           "<CreateTime>1</CreateTime><MsgType><![CDATA[event]]></MsgType>"
           "<Event><![CDATA[kf_msg_or_event]]></Event><Token>t</Token></xml>\n" % CORP_ID)
    path = tmp_path / "event.xml"
    path.write_text(raw, encoding="utf-8")
    code, seen = run_cli("empty", "--xml", str(path))
    out, _ = capsys.readouterr()
    assert code == 0, out
    assert seen.plaintexts == [raw] and "POST xml #1: 200, no reply" in out


def test_run_verify_only(capsys):
    code, seen = run_cli("ok", "--verify-only")
    out, _ = capsys.readouterr()
    assert code == 0 and not seen.posts and "sent 1, ok 1, failed 0" in out


def test_run_failure_exits_1(capsys):
    code, _ = run_cli("forbidden", "--no-verify")
    out, _ = capsys.readouterr()
    assert code == 1 and "POST text #1: 403, error: HTTP 403" in out and "failed 1" in out


def test_run_failed_verify_stops(capsys):
    code, seen = run_cli("quoted")
    out, _ = capsys.readouterr()
    assert code == 1 and not seen.posts and out.startswith("verify: failed: ")


@pytest.mark.parametrize("bad", [
    ["--aes-key", "not-a-valid-key"],
    ["--aes-key", "x" * 42 + "!"],
    ["--token", "has space"],
    ["--corp-id", ""],
])
def test_run_bad_options_exit_2_without_traceback(capsys, bad):
    argv = secrets_args("http://127.0.0.1:9/cb") + bad  # later flags win
    code = asyncio.run(simulate_cli.run(parse(*argv)))
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err and not out
    assert AES_KEY not in err and (not bad[1] or bad[1] not in err)


def test_run_unreadable_xml_exit_2(capsys, tmp_path):
    code = asyncio.run(simulate_cli.run(parse(*secrets_args("http://127.0.0.1:9/cb"), "--xml",
                                          str(tmp_path / "missing.xml"))))
    assert code == 2 and "cannot read --xml" in capsys.readouterr().err
