"""The 智能机器人's protocol (wecom-aibot.md), without HTTP: the JSON envelope, the receive-id "",
every message type as a Message, dedup by msgid, stream frames and the JSON passive reply, checked
against wechatpy's independent AES implementation where it can be."""
from __future__ import annotations

import base64
import hashlib
import json

import pytest
from wechatpy.crypto import _get_signature
from wechatpy.enterprise.crypto import PrpCrypto

from wecomd.wecom import bot, envelopes
from wecomd.wecom.crypto import ReceiveIdError, WecomCrypto
from wecomd.wecom.messages import MessageError, dedup_key

TOKEN, AES_KEY = "BotToken0123456789", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
KEY = base64.b64decode(AES_KEY + "=")
GROUP_TEXT = {"msgid": "CAIQ16HMjQYY", "aibotid": "AIBOTID", "chatid": "CHATID", "chattype": "group",
              "from": {"userid": "zhangsan"}, "msgtype": "text", "text": {"content": "@RobotA 广州天气？"},
              "response_url": "https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=RC"}


def encrypted_by_wechatpy(plain: str, receive_id: str = "") -> str:
    out = PrpCrypto(KEY).encrypt(plain, receive_id)
    return out.decode() if isinstance(out, bytes) else out


def test_a_group_text_is_the_groups_conversation_with_its_sender():
    message = bot.parse(json.dumps(GROUP_TEXT, ensure_ascii=False).encode())
    assert (message.msgtype, message.content, message.from_user, message.conversation) == \
        ("text", "@RobotA 广州天气？", "zhangsan", "CHATID")
    assert (message.channel, message.msg_id, message.agent_id) == ("bot", "CAIQ16HMjQYY", "AIBOTID")
    assert bot.response_url(message).endswith("response_code=RC")
    assert message.fields == GROUP_TEXT  # kept whole


def test_a_single_chat_is_the_senders_conversation():
    single = dict(GROUP_TEXT, chattype="single")
    single.pop("chatid")
    assert bot.parse(json.dumps(single).encode()).conversation is None


@pytest.mark.parametrize("msgtype,body,content", [
    ("image", {"image": {"url": "https://x/i"}}, None),
    ("voice", {"voice": {"content": "明天开会吗"}}, "明天开会吗"),
    ("file", {"file": {"url": "https://x/f"}}, None),
    ("mixed", {"mixed": {"msg_item": [{"msgtype": "text", "text": {"content": "看图"}},
                                      {"msgtype": "image", "image": {"url": "https://x/i"}},
                                      {"msgtype": "text", "text": {"content": "谢谢"}}]}}, "看图\n谢谢"),
    ("brand_new_type", {"brand_new_type": {"whatever": [1, 2]}}, None),
])
def test_every_message_type(msgtype, body, content):
    data = {"msgid": "m-" + msgtype, "aibotid": "AIBOTID", "chattype": "single", "from": {"userid": "lisi"},
            "msgtype": msgtype, **body}
    message = bot.parse(json.dumps(data, ensure_ascii=False))
    assert (message.msgtype, message.content, message.fields) == (msgtype, content, data)


def test_events_and_stream_refreshes():
    base = {"msgid": "e1", "aibotid": "AIBOTID", "chattype": "single", "from": {"userid": "lisi"}}
    enter = bot.parse(json.dumps({**base, "msgtype": "event", "create_time": 1733467811,
                                  "event": {"eventtype": "enter_chat"}}))
    assert (enter.msgtype, enter.event, enter.create_time) == ("event", "enter_chat", 1733467811)
    card = bot.parse(json.dumps({**base, "msgtype": "event", "event": {
        "eventtype": "template_card_event", "template_card_event": {"card_type": "button_interaction",
                                                                     "event_key": "approve", "task_id": "t1"}}}))
    assert (card.event, card.event_key) == ("template_card_event", "approve")
    feedback = bot.parse(json.dumps({**base, "msgtype": "event", "event": {
        "eventtype": "feedback_event", "feedback_event": {"id": "fb-1", "type": 2, "inaccurate_reason_list": [1]}}}))
    assert feedback.event == "feedback_event"
    refresh = bot.parse(json.dumps({**base, "msgtype": "stream", "stream": {"id": "s-9f2c"}}))
    assert bot.stream_id(refresh) == "s-9f2c" and bot.stream_id(enter) is None


def test_dedup_is_by_msgid_for_messages_and_events_alike():
    first = bot.parse(json.dumps(GROUP_TEXT))
    again = bot.parse(json.dumps(dict(GROUP_TEXT, text={"content": "edited"})))
    other = bot.parse(json.dumps(dict(GROUP_TEXT, msgid="CAIQ-other")))
    assert dedup_key(first) == dedup_key(again) == "bot:AIBOTID:CAIQ16HMjQYY"
    assert dedup_key(other) != dedup_key(first)


@pytest.mark.parametrize("plain", [b"not json", b"[1, 2]", b'{"msgid": "x"}', b"\xff\xfe", b'"text"',
                                   ("[" * 100 + "]" * 100).encode(), b'{"msgtype": "text", "a": ' + b"[" * 40 +
                                   b"]" * 40 + b"}"])
def test_bad_plaintexts_are_message_errors(plain):
    with pytest.raises(MessageError):
        bot.parse(plain)


def test_the_json_envelope():
    assert envelopes.parse_json(b'{"encrypt": " kM7Q== "}').encrypt == "kM7Q=="
    for body in (b"", b"{}", b'{"encrypt": ""}', b'{"encrypt": 5}', b"<xml/>", b"[]"):
        with pytest.raises(MessageError):
            envelopes.parse_json(body)


def test_the_receive_id_is_the_empty_string():
    crypto = WecomCrypto(TOKEN, AES_KEY, "")
    assert crypto.decrypt(encrypted_by_wechatpy('{"msgtype":"text"}')) == b'{"msgtype":"text"}'
    with pytest.raises(ReceiveIdError):  # built with a CorpID, as the pitfall of wecom-aibot.md §9.1
        crypto.decrypt(encrypted_by_wechatpy('{"msgtype":"text"}', "ww0123456789abcdef"))


def test_the_passive_reply_is_signed_json_with_the_requests_timestamp_and_nonce():
    crypto = WecomCrypto(TOKEN, AES_KEY, "")
    frame = bot.stream_frame("s-9f2c", "", False, feedback_id="fb-1")
    body = json.loads(bot.reply_envelope(crypto, frame, "1733467811", "1597212914"))
    assert set(body) == {"encrypt", "msgsignature", "timestamp", "nonce"}
    assert (body["timestamp"], body["nonce"]) == (1733467811, "1597212914")
    assert body["msgsignature"] == _get_signature(TOKEN, "1733467811", "1597212914", body["encrypt"])
    plain = PrpCrypto(KEY).decrypt(body["encrypt"], "")
    plain = plain.decode() if isinstance(plain, bytes) else plain
    assert json.loads(plain) == {"msgtype": "stream",
                                 "stream": {"id": "s-9f2c", "finish": False, "content": "", "feedback": {"id": "fb-1"}}}


def test_stream_frames_cut_on_a_character_and_carry_images_only_when_finished():
    long = "天气" * 6000  # 36,000 bytes
    content = bot.stream_frame("s", long, False)["stream"]["content"]
    assert len(content.encode()) <= bot.MAX_STREAM_BYTES and long.startswith(content) and len(content) == 6826
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 100
    finished = bot.stream_frame("s", "好了", True, images=[png])["stream"]
    assert finished["msg_item"] == [{"msgtype": "image", "image": {"base64": base64.b64encode(png).decode(),
                                                                    "md5": hashlib.md5(png).hexdigest()}}]
    with pytest.raises(ValueError):
        bot.stream_frame("s", "x", False, images=[png])
    with pytest.raises(ValueError):
        bot.stream_frame("s", "x", True, images=[png] * 11)
    with pytest.raises(ValueError):
        bot.image_item(b"GIF89a" + b"0" * 10)
    with pytest.raises(ValueError):
        bot.image_item(b"\xff\xd8\xff" + b"0" * bot.MAX_IMAGE_BYTES)
    with pytest.raises(ValueError):
        bot.stream_frame("s", "x", False, feedback_id="f" * 257)
    assert bot.markdown_post("**答**", "fb")["markdown"] == {"content": "**答**", "feedback": {"id": "fb"}}
