"""wecomd.wecom.kf, the 微信客服 protocol without I/O: the callback's doorbell fields, conversation
keys, sync_msg items as Messages, msgids and send bodies, the reply window, session moves, errcodes
and customer batches (facts: wecom-kf.md)."""
from __future__ import annotations

import ast
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from wecomd.wecom import kf, messages
from wecomd.wecom.messages import MessageError

NOW = datetime(2024, 5, 1, 12, 0, 0)

CALLBACK = ("<xml><ToUserName><![CDATA[ww12345678910]]></ToUserName><CreateTime>1348831860</CreateTime>"
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>"
            "<Token><![CDATA[ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR]]></Token>"
            "<OpenKfId><![CDATA[wkxxxxxx]]></OpenKfId></xml>")


def item(msgtype="text", origin=3, **body):
    found = {"msgid": "from_msgid_4622416642169452483", "open_kfid": "wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q",
             "external_userid": "wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw", "send_time": 1615478585,
             "origin": origin, "msgtype": msgtype}
    found.update(body)
    return found


# --- the callback ------------------------------------------------------------------------------------


def test_the_doorbell_fields_of_a_callback():
    message = messages.parse(CALLBACK)
    assert message.event == kf.KF_EVENT
    assert kf.callback_token(message) == "ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR"
    assert kf.callback_open_kfid(message) == "wkxxxxxx"
    bare = messages.parse("<xml><MsgType>event</MsgType><Event>kf_msg_or_event</Event><Token></Token></xml>")
    assert kf.callback_token(bare) is None and kf.callback_open_kfid(bare) is None


# --- conversation keys ---------------------------------------------------------------------------------


def test_conversation_keys_round_trip_and_other_users_are_not_kf():
    key = kf.conversation_key("wkAbC", "wmXyZ-1_2")
    assert key == "wkAbC/wmXyZ-1_2"
    assert kf.split_key(key) == ("wkAbC", "wmXyZ-1_2")
    for user in ("zhangsan", "", None, 42, "wk/", "/wm", "a/b/c", "wrkSFfCgAAxxx"):
        assert kf.split_key(user) is None, user


@pytest.mark.parametrize("ids", [("", "wm1"), ("wk1", ""), ("wk/1", "wm1"), ("wk1", "wm/1"), (None, "wm1")])
def test_a_key_that_could_not_be_split_back_is_refused(ids):
    with pytest.raises(ValueError):
        kf.conversation_key(*ids)


# --- sync_msg items ------------------------------------------------------------------------------------


def test_a_customer_text_becomes_an_inbound_kf_message():
    raw = item(text={"content": "你在干什么", "menu_id": "101"})
    message = kf.parse_item(raw)
    assert message.channel == "kf" and message.msgtype == "text" and not message.is_event
    assert message.msg_id == "from_msgid_4622416642169452483" and message.create_time == 1615478585
    assert message.conversation == "wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q/wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw"
    # from_user is the conversation, so that every reader files the message under it
    assert message.from_user == "wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q/wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw"
    assert message.to_user == "wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q"
    assert message.content == "你在干什么" and message.event_key == "101"  # the menu click's id
    assert message.fields is raw and json.loads(message.raw) == raw
    assert "你在干什么" in message.raw  # readable, not \\u-escaped


def test_a_servicer_message_is_from_the_servicer_to_the_customer():
    message = kf.parse_item(item(origin=5, servicer_userid="zhangsan", text={"content": "您好"}))
    assert message.from_user == "zhangsan"
    assert message.to_user == "wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q/wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw"
    assert message.conversation == "wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q/wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw"
    assert kf.origin(message.fields) == kf.ORIGIN_SERVICER


@pytest.mark.parametrize("msgtype, body, content", [
    ("image", {"media_id": "2iSLeVyqzk4eX0IB5kTi9Ljfa2rt9dwfq5WKRQ4Nvvgw"}, "[图片]"),
    ("voice", {"media_id": "m"}, "[语音]"),
    ("file", {"media_id": "m"}, "[文件]"),
    ("location", {"latitude": 23.1, "longitude": 113.3, "name": "广州国际媒体港", "address": "广州市海珠区"},
     "[位置] 广州国际媒体港 广州市海珠区"),
    ("link", {"title": "TITLE", "desc": "DESC", "url": "URL", "pic_url": "PIC"}, "[链接] TITLE"),
    ("business_card", {"userid": "USERID"}, "[名片] USERID"),
    ("miniprogram", {"title": "TITLE", "appid": "APPID"}, "[小程序] TITLE"),
    ("channels_shop_order", {"order_id": "1", "product_titles": ["杯子", "碗"]}, "[视频号订单] 杯子、碗"),
    ("some_new_type", {"x": 1}, "[some_new_type]"),
])
def test_other_types_have_a_short_summary_and_are_kept_whole(msgtype, body, content):
    raw = item(msgtype, **{msgtype: body})
    message = kf.parse_item(raw)
    assert message.content == content and message.msgtype == msgtype
    assert message.fields[msgtype] == body and json.loads(message.raw) == raw


def test_an_event_takes_its_ids_from_inside_the_event():
    raw = {"msgid": "ev1", "send_time": 1615478585, "origin": 4, "msgtype": "event",
           "event": {"event_type": "enter_session", "open_kfid": "wk1", "external_userid": "wm1",
                     "scene": "123", "scene_param": "abc", "welcome_code": "aaaaaa"}}
    message = kf.parse_item(raw)
    assert message.is_event and message.event == "enter_session" and message.event_key == "abc"
    assert message.conversation == "wk1/wm1" and message.from_user == "wk1/wm1" and message.to_user == "wk1"
    assert message.content == "[进入会话] scene 123"


def test_events_in_words():
    def content(event):
        return kf.parse_item({"msgid": "e", "msgtype": "event", "origin": 4, "event": event}).content

    assert content({"event_type": "msg_send_fail", "fail_msgid": "m", "fail_type": 4}) == \
        "[发送失败] the session expired (over 48 hours)"
    assert content({"event_type": "session_status_change", "change_type": 3}) == "[会话状态] ended by the servicer"
    assert content({"event_type": "servicer_status_change", "servicer_userid": "lisi", "status": 2}) == \
        "[接待人员] lisi 停止接待"
    assert content({"event_type": "user_recall_msg", "recall_msgid": "m"}) == "[客户撤回了一条消息]"
    assert content({"event_type": "kf_new_thing"}) == "[事件] kf_new_thing"


def test_a_system_event_without_a_customer_has_no_conversation():
    message = kf.parse_item({"msgid": "e2", "msgtype": "event", "origin": 4,
                             "event": {"event_type": "servicer_status_change", "open_kfid": "wk1",
                                       "servicer_userid": "lisi", "status": 1}})
    assert message.conversation is None and message.from_user is None and message.to_user == "wk1"


@pytest.mark.parametrize("bad", [None, [], "text", {"msgtype": "text"}, {"msgid": "1"}, {"msgid": "", "msgtype": "text"},
                                 {"msgid": 5, "msgtype": "text"}])
def test_an_item_without_msgid_or_msgtype_is_a_message_error(bad):
    with pytest.raises(MessageError):
        kf.parse_item(bad)


def test_origin():
    assert (kf.ORIGIN_CUSTOMER, kf.ORIGIN_SYSTEM, kf.ORIGIN_SERVICER) == (3, 4, 5)
    assert kf.origin({"origin": 3}) == 3 and kf.origin({"origin": "5"}) == 5
    assert kf.origin({}) is None and kf.origin({"origin": True}) is None and kf.origin("x") is None


# --- sending -------------------------------------------------------------------------------------------


def test_msgids_are_deterministic_valid_and_apart():
    for row_id in (0, 1, 987654, 2**63 - 1):
        for msgid in (kf.send_msgid(row_id), kf.event_msgid(row_id)):
            assert kf.MSGID_PATTERN.fullmatch(msgid) and len(msgid.encode()) <= 32
    assert kf.send_msgid(7) == kf.send_msgid(7) == "wecomd-7"
    assert kf.event_msgid(7) != kf.send_msgid(7)
    assert len({kf.send_msgid(i) for i in range(50)} | {kf.event_msgid(i) for i in range(50)}) == 100
    for bad in (-1, 2**63, True, "7", 1.0):
        with pytest.raises(ValueError):
            kf.send_msgid(bad)


def test_a_text_payload_and_its_2048_byte_limit():
    payload = kf.send_msg_payload("wk1", "wm1", "wecomd-1", "text", {"content": "你好"})
    assert payload == {"touser": "wm1", "open_kfid": "wk1", "msgid": "wecomd-1", "msgtype": "text",
                       "text": {"content": "你好"}}
    fits = "中" * 682 + "ab"  # 2,048 bytes
    assert kf.send_msg_payload("wk1", "wm1", None, "text", {"content": fits})["text"]["content"] == fits
    with pytest.raises(ValueError, match="2048"):
        kf.send_msg_payload("wk1", "wm1", None, "text", {"content": fits + "c"})
    with pytest.raises(ValueError):
        kf.send_msg_payload("wk1", "wm1", None, "text", {"content": ""})


def test_other_bodies_go_as_given_and_bad_ones_are_refused():
    menu = {"head_content": "您对本次服务是否满意呢? ", "list": [{"type": "click", "click": {"id": "101", "content": "满意"}}]}
    payload = kf.send_msg_payload("wk1", "wm1", None, "msgmenu", menu)
    assert payload["msgmenu"] == menu and "msgid" not in payload
    assert kf.send_msg_payload("wk1", "wm1", "a_B-9", "image", {"media_id": "MEDIA"})["image"] == {"media_id": "MEDIA"}
    for args in (("wk1", "wm1", "has space", "text", {"content": "x"}), ("wk1", "wm1", "x" * 33, "text", {"content": "x"}),
                 ("wk1", "wm1", None, "markdown", {"content": "x"}), ("wk1", "wm1", None, "link", "not a dict"),
                 ("", "wm1", None, "text", {"content": "x"})):
        with pytest.raises(ValueError):
            kf.send_msg_payload(*args)


def test_an_event_answer_payload():
    assert kf.on_event_payload("CODE", kf.event_msgid(3), "text", {"content": "欢迎"}) == {
        "code": "CODE", "msgid": "wecomd-ev-3", "msgtype": "text", "text": {"content": "欢迎"}}
    with pytest.raises(ValueError):
        kf.on_event_payload("CODE", None, "image", {"media_id": "m"})
    with pytest.raises(ValueError):
        kf.on_event_payload("", None, "text", {"content": "x"})


# --- the reply window ----------------------------------------------------------------------------------


def test_the_window_is_48_hours_after_the_customer_last_wrote():
    assert kf.window_refusal(NOW - timedelta(hours=47, minutes=59), 0, NOW) is None
    assert kf.window_refusal(NOW - kf.WINDOW, 0, NOW) is None
    late = kf.window_refusal(NOW - kf.WINDOW - timedelta(seconds=1), 0, NOW)
    assert late and "48 hours" in late and "2024-04-29 11:59" in late
    never = kf.window_refusal(None, 0, NOW)
    assert never and "not written" in never


def test_at_most_5_sends_until_the_customer_writes_again():
    assert kf.MAX_SENDS == 5
    assert kf.window_refusal(NOW, 4, NOW) is None
    refusal = kf.window_refusal(NOW, 5, NOW)
    assert refusal and "5" in refusal


def test_aware_and_naive_times_compare_in_utc():
    aware = datetime(2024, 5, 1, 20, 0, tzinfo=timezone(timedelta(hours=8)))  # 12:00 UTC
    assert kf.window_refusal(aware, 0, NOW + timedelta(hours=47)) is None
    assert kf.window_refusal(aware, 0, NOW + timedelta(hours=49)) is not None


# --- sessions, errcodes, customers ---------------------------------------------------------------------


def test_the_documented_moves_only():
    assert kf.TRANSITIONS == {0: (1, 2, 3), 1: (2, 3), 2: (3,), 3: (3, 4), 4: ()}
    assert set(kf.SERVICE_STATES) == set(kf.SERVICE_STATE_LABELS) == set(range(5))
    assert kf.SERVICE_STATES[3] == "human" and kf.SERVICE_STATE_LABELS[3] == "由人工接待"
    assert kf.allowed(0, 3) and kf.allowed(3, 3) and kf.allowed(3, 4) and kf.allowed(2, 3)
    for old in range(5):  # a session a human serves never goes back to the bot
        assert kf.allowed(3, old) == (old in (3, 4))
    assert not kf.allowed(2, 1) and not kf.allowed(1, 0) and not any(kf.allowed(4, new) for new in range(5))
    assert not kf.allowed(None, 1) and not kf.allowed(0, True) and not kf.allowed(9, 1) and not kf.allowed("0", "1")


def test_errcodes_and_reasons():
    assert kf.HUMAN_SERVING == 95018 and 95007 in kf.TOKEN_ERRORS
    for code in (95018, 95011, 45009, 40014, 42001, 60011, 60111):
        assert kf.describe(code), code
    assert "human" in kf.describe(95018) and kf.describe(12345) is None
    assert kf.FAIL_TYPES[6] == "over the limit of 5 messages" and kf.FAIL_TYPES[10].startswith("the customer refused")
    assert set(kf.CHANGE_TYPES) == {1, 2, 3, 4}


def test_customer_batches_of_at_most_100():
    ids = ["wm%03d" % i for i in range(250)]
    batches = kf.customer_batches(ids + ids[:10] + [""])
    assert [len(b) for b in batches] == [100, 100, 50] and sum(batches, []) == ids
    assert kf.customer_batches([]) == [] and kf.customer_batches(["a", "b", "c"], size=2) == [["a", "b"], ["c"]]
    with pytest.raises(ValueError):
        kf.customer_batches(ids, size=0)


def test_the_module_imports_only_messages_from_wecomd():
    tree = ast.parse(Path(kf.__file__).read_text(encoding="utf-8"))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {name for name in names if name.startswith("wecomd")} == {"wecomd.wecom.messages"}


def test_media_id_of_pulled_media_items_only():
    image = {"msgid": "m1", "origin": 3, "msgtype": "image", "image": {"media_id": "MEDIA1"}}
    assert kf.media_id(image) == "MEDIA1"
    assert kf.media_id({"msgid": "m2", "origin": 3, "msgtype": "file", "file": {"media_id": "F"}}) == "F"
    assert kf.media_id({"msgid": "m3", "origin": 3, "msgtype": "text", "text": {"content": "x"}}) is None
    assert kf.media_id({"MsgType": "image", "MediaId": "APP"}) is None  # an app's XML fields: not kf
    assert kf.media_id({"msgid": "m4", "origin": 3, "msgtype": "image", "image": {}}) is None


PLAIN = {"msgid": "m1", "open_kfid": "wkA", "external_userid": "wmB", "send_time": 1764748800, "origin": 3,
         "msgtype": "text", "text": {"content": "你好"}}


@pytest.mark.parametrize("change", [
    {"origin": 5}, {"origin": "3"}, {"origin": True}, {"msgtype": "image"}, {"text": {"content": "你好", "menu_id": "1"}},
    {"text": {"content": " \n\u3000"}}, {"text": {"content": 7}}, {"text": "你好"}, {"send_time": None},
    {"send_time": "1764748800"}, {"send_time": 0}, {"msgid": ""}, {"external_userid": "wm/B"}, {"open_kfid": None},
    {"servicer_userid": "zhangsan"}, {"event": {}},
])
def test_only_a_customers_plain_text_goes_the_sql_way(change):
    """store.kf.store_texts makes the rows of plain_text items in SQL: anything it would store
    otherwise than decode does goes the Python way."""
    from wecomd.kf.items import plain_text

    assert plain_text(PLAIN) and not plain_text(dict(PLAIN, **change))
    assert not plain_text({k: v for k, v in PLAIN.items() if k != "send_time"}) and not plain_text([PLAIN])
