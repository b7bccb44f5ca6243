"""wecomd.wecom.messages and envelopes: plaintext parsing, hostile XML, envelopes, dedup keys and passive replies."""
from __future__ import annotations

import ast
import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from support.samples import SAMPLES
from wecomd.wecom import bot, envelopes, messages, replies
from wecomd.wecom.envelopes import MissingEncryptError, parse_xml
from wecomd.wecom.messages import ForbiddenXmlError, MalformedXmlError, MessageError, dedup_key, parse, to_fields

VECTORS = json.loads(
    (Path(__file__).parent / "data" / "wecom-vectors.json").read_text(encoding="utf-8")
)["vectors"]
CORP = "ww0123456789abcdef"


def dig(fields, path):
    """Follow a dotted path; integer parts index lists."""
    value = fields
    for part in path.split("."):
        value = value[int(part)] if part.isdigit() else value[part]
    return value


def reserialise(xml: str) -> str:
    """The same document with CDATA turned into escaped text and different whitespace."""
    root = ET.fromstring(xml)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode")


def compact(xml: str) -> str:
    """The same document with every whitespace-only text between elements removed."""
    root = ET.fromstring(xml)
    for element in root.iter():
        if len(element) and element.text and not element.text.strip():
            element.text = None
        if element.tail and not element.tail.strip():
            element.tail = None
    return ET.tostring(root, encoding="unicode")


# ---------------------------------------------------------------- every sample

@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_parses(name):
    xml = SAMPLES[name]
    message = parse(xml)
    root = ET.fromstring(xml)
    assert message.msgtype == root.findtext("MsgType")
    assert message.event == root.findtext("Event")
    assert message.from_user == root.findtext("FromUserName")
    assert message.to_user == CORP
    assert message.create_time == 1764370000
    assert message.raw == xml
    assert message.fields["MsgType"] == message.msgtype
    assert parse(xml.encode("utf-8")) == message


def test_sample_names_cover_the_protocol():
    """Every message type of §5 and event of §6 that the brief lists has a sample."""
    wanted = {"text", "image", "voice", "video", "location", "link", "file", "unknown_msgtype"}
    wanted |= {"event:" + e for e in (
        "subscribe unsubscribe enter_agent LOCATION batch_job_result click view view_miniprogram "
        "scancode_push scancode_waitmsg pic_sysphoto pic_photo_or_album pic_weixin location_select "
        "open_approval_change sys_approval_change taskcard_click template_card_event "
        "template_card_menu_event share_agent_change close_inactive_agent change_external_contact "
        "unknown").split()}
    wanted |= {"change_contact:" + c for c in (
        "create_user update_user delete_user create_party update_party delete_party update_tag").split()}
    assert wanted <= set(SAMPLES)


MESSAGE_CASES = {
    "text": ({"content": "部署一下 staging，谢谢 🙏", "msg_id": "7304918230194725121"}, {}),
    "image": ({"content": None, "msg_id": "7304918230194725122"},
              {"PicUrl": "https://wework.qpic.cn/wwpic/48213_aBcD/0",
               "MediaId": "2-G6nrLmr5EC3MMb_-zK1dDdzmd0p7cNliYu9V5w7o8K0"}),
    "voice": ({"msg_id": "7304918230194725123"}, {"MediaId": "1ZfqTUkYg3hH5c0wVv1g9mB3q4Rqy", "Format": "amr"}),
    "video": ({}, {"MediaId": "3Vd7bq0Lm2kHh8uYcZp", "ThumbMediaId": "3Th9sPq2"}),
    "location": ({}, {"Location_X": "31.230416", "Location_Y": "121.473701", "Scale": "15",
                      "Label": "上海市黄浦区人民广场", "AppType": "wxwork"}),
    "link": ({}, {"Title": "季度报告", "Description": "Q3 summary",
                  "Url": "https://example.com/report?q=3&lang=zh", "PicUrl": "https://example.com/cover.png"}),
    "file": ({"msg_id": "7304918230194725127"}, {"MediaId": "2jf93Ka0cQ", "FileName": "报价单 v2.xlsx"}),
    "unknown_msgtype": ({"msgtype": "hologram", "msg_id": "7304918230194725128"},
                        {"Projection.Angle": "45", "Projection.Color": "teal"}),
}


@pytest.mark.parametrize("name", sorted(MESSAGE_CASES))
def test_ordinary_messages(name):
    columns, paths = MESSAGE_CASES[name]
    message = parse(SAMPLES[name])
    assert (message.from_user, message.agent_id, message.event, message.event_key) == (
        "zhangsan", "1000002", None, None)
    for attr, value in columns.items():
        assert getattr(message, attr) == value
    for path, value in paths.items():
        assert dig(message.fields, path) == value
    assert "Recognition" not in message.fields


EVENT_CASES = {
    "event:subscribe": ({"event_key": ""}, {}),
    "event:unsubscribe": ({"event_key": None}, {}),
    "event:enter_agent": ({"event_key": ""}, {}),
    "event:LOCATION": ({"event": "LOCATION"},
                       {"Latitude": "31.230416", "Longitude": "121.473701", "Precision": "30.000000",
                        "AppType": "wxwork"}),
    "event:batch_job_result": ({"from_user": "sys", "agent_id": None},
                               {"BatchJob.JobId": "S0MrnndvRG5fadSlLwiBqiDDbM143UqTmKP3152FZk4",
                                "BatchJob.JobType": "sync_user", "BatchJob.ErrCode": "0", "BatchJob.ErrMsg": "ok"}),
    "change_contact:create_user": (
        {"from_user": "sys", "event": "change_contact"},
        {"ChangeType": "create_user", "UserID": "lisi", "Name": "李四", "Department": "1,2,3",
         "IsLeaderInDept": "1,0,0", "Gender": "1", "Mobile": "13800000000",
         "ExtAttr.Item.0.Name": "爱好", "ExtAttr.Item.0.Text.Value": "旅游",
         "ExtAttr.Item.1.Type": "1", "ExtAttr.Item.1.Web.Url": "https://work.weixin.qq.com"}),
    "change_contact:update_user": ({}, {"ChangeType": "update_user", "UserID": "lisi", "NewUserID": "lisi2",
                                        "ExtAttr.Item.0.Text.Value": "跑步"}),
    "change_contact:delete_user": ({}, {"ChangeType": "delete_user", "UserID": "lisi2"}),
    "change_contact:create_party": ({}, {"ChangeType": "create_party", "Id": "2", "Name": "研发部",
                                         "ParentId": "1", "Order": "1"}),
    "change_contact:update_party": ({}, {"ChangeType": "update_party", "Id": "2", "Name": "研发中心"}),
    "change_contact:delete_party": ({}, {"ChangeType": "delete_party", "Id": "2"}),
    "change_contact:update_tag": ({}, {"ChangeType": "update_tag", "TagId": "7", "AddUserItems": "zhangsan,lisi",
                                       "DelUserItems": "wangwu", "AddPartyItems": "1,2", "DelPartyItems": ""}),
    "event:click": ({"event_key": "RUN_BACKUP", "agent_id": "1000002"}, {}),
    "event:view": ({"event_key": "https://example.com/dashboard?tab=1&x=2"}, {}),
    "event:view_miniprogram": ({"event_key": "pages/index/index"}, {}),
    "event:scancode_push": ({"event_key": "SCAN_1"},
                            {"ScanCodeInfo.ScanType": "qrcode", "ScanCodeInfo.ScanResult": "https://example.com/asset/42"}),
    "event:scancode_waitmsg": ({"event_key": "SCAN_2"},
                               {"ScanCodeInfo.ScanType": "barcode",
                                "ScanCodeInfo.ScanResult": "EAN_13,6901234567892"}),
    "event:pic_sysphoto": ({"event_key": "PHOTO"},
                           {"SendPicsInfo.Count": "2",
                            "SendPicsInfo.PicList": [{"PicMd5Sum": "1b5f7c23b5bf75682a53e7b6d163e185"},
                                                     {"PicMd5Sum": "8d5e2a4f0c1b9e7d6a3f2c1b0e9d8c7a"}]}),
    "event:pic_photo_or_album": ({}, {"SendPicsInfo.PicList": [{"PicMd5Sum": "5a105e8b9d40e1329780d62ea2265d8a"}]}),
    "event:pic_weixin": ({}, {"SendPicsInfo.PicList": [{"PicMd5Sum": "ad0234829205b9033196ba818f7a872b"},
                                                       {"PicMd5Sum": "8ad8757baa8564dc136c1e07507f4a98"}]}),
    "event:location_select": ({"event_key": "PICK_PLACE"},
                              {"SendLocationInfo.Location_X": "31.230416", "SendLocationInfo.Poiname": "人民广场",
                               "SendLocationInfo.Label": "上海市黄浦区人民大道200号", "AppType": "wxwork"}),
    "event:open_approval_change": (
        {"from_user": "sys"},
        {"ApprovalInfo.ThirdNo": "TN-20261128-0001", "ApprovalInfo.OpenSpStatus": "1",
         "ApprovalInfo.ApprovalNodes.ApprovalNode.0.Items.Item.0.ItemSpeech": "同意",
         "ApprovalInfo.ApprovalNodes.ApprovalNode.1.Items.Item.1.ItemUserId": "zhaoliu",
         "ApprovalInfo.ApprovalNodes.ApprovalNode.1.Items.Item.0.ItemSpeech": "",
         "ApprovalInfo.NotifyNodes.NotifyNode.0.ItemUserId": "qianqi",
         "ApprovalInfo.approverstep": "1"}),
    "event:sys_approval_change": (
        {"from_user": "sys"},
        {"ApprovalInfo.SpNo": "202611280001", "ApprovalInfo.Applyer.UserId": "zhangsan",
         "ApprovalInfo.SpRecord.0.Details.0.Approver.UserId": "lisi",
         "ApprovalInfo.Notifyer.0.UserId": "wangwu",
         "ApprovalInfo.Comments.0.CommentContent": "周五家里有事",
         "ApprovalInfo.StatuChangeEvent": "1"}),
    "event:taskcard_click": ({"agent_id": "1000002", "event_key": "approve"}, {"TaskId": "task-20261128-01",
                                                                              "AgentId": "1000002"}),
    "event:template_card_event": (
        {"event_key": "submit_survey"},
        {"TaskId": "survey-20261128", "CardType": "multiple_interaction",
         "ResponseCode": "ResponseCode_7Dk2mQ9xLp0aZ",
         "SelectedItems.SelectedItem.0.QuestionKey": "lunch",
         "SelectedItems.SelectedItem.0.OptionIds.OptionId": ["noodles"],
         "SelectedItems.SelectedItem.1.OptionIds.OptionId": ["tea", "juice"]}),
    "event:template_card_menu_event": ({"event_key": "mute_alerts"},
                                       {"CardType": "text_notice", "ResponseCode": "ResponseCode_Qm81bVn3sT"}),
    "event:share_agent_change": ({"agent_id": "1000002", "event_key": None}, {}),
    "event:close_inactive_agent": ({"agent_id": "1000002"}, {}),
    "event:change_external_contact": ({}, {"ChangeType": "add_external_contact", "UserID": "zhangsan",
                                           "ExternalUserID": "wmXyZ0AbCdEfGhIjKlMnOpQrStUvW",
                                           "WelcomeCode": "WELCOMECODE_Xp2"}),
    "event:unknown": ({"event": "quantum_entangled", "event_key": "q1"},
                      {"Widget.Spin": ["up", "down"], "Widget.Label": "未知事件"}),
}


@pytest.mark.parametrize("name", sorted(EVENT_CASES))
def test_events(name):
    columns, paths = EVENT_CASES[name]
    message = parse(SAMPLES[name])
    assert message.msgtype == "event"
    assert message.is_event
    assert (message.msg_id, message.content) == (None, None)
    for attr, value in columns.items():
        assert getattr(message, attr) == value
    for path, value in paths.items():
        assert dig(message.fields, path) == value


def test_piclist_quirk_has_the_shape_of_one_piclist_with_several_items():
    siblings = parse(SAMPLES["event:pic_sysphoto"]).fields["SendPicsInfo"]["PicList"]
    merged = SAMPLES["event:pic_sysphoto"].replace("</item></PicList><PicList><item>", "</item><item>")
    assert merged.count("<PicList>") == 1
    assert parse(merged).fields["SendPicsInfo"]["PicList"] == siblings


def test_known_repeatables_are_lists_even_once():
    fields = parse(SAMPLES["event:sys_approval_change"]).fields["ApprovalInfo"]
    for name in ("SpRecord", "Notifyer", "Comments"):
        assert isinstance(fields[name], list) and len(fields[name]) == 1
    assert isinstance(fields["SpRecord"][0]["Details"], list)
    fields = parse(SAMPLES["event:open_approval_change"]).fields["ApprovalInfo"]
    assert isinstance(fields["NotifyNodes"]["NotifyNode"], list)
    assert isinstance(parse(SAMPLES["change_contact:update_user"]).fields["ExtAttr"]["Item"], list)


def test_agentid_spellings_and_official_vectors():
    doc = next(v for v in VECTORS if v["id"] == "official-doc-post-decrypt")
    message = parse(doc["plaintext"])
    assert (message.msg_id, message.agent_id, message.content, message.from_user) == (
        "4561255354251345929", "218", "hello", "mycreate")
    utf8 = next(v for v in VECTORS if v["id"] == "official-python-post-decrypt-utf8")
    assert parse(utf8["plaintext"].encode("utf-8")).content == "你好"


def test_values_are_verbatim_and_whitespace_between_elements_is_not():
    xml = ("<xml>\n  <MsgType>text</MsgType>\n  <Content><![CDATA[  two  spaces \n]]></Content>\n"
           "  <Empty></Empty><SelfClosed/>\n  <Nested>\n    <A> a </A>\n  </Nested>\n</xml>")
    message = parse(xml)
    assert message.content == "  two  spaces \n"
    assert message.fields["Empty"] == message.fields["SelfClosed"] == ""
    assert message.fields["Nested"] == {"A": " a "}
    assert to_fields(xml) == message.fields
    assert to_fields(ET.fromstring(xml)) == message.fields


def test_only_msgtype_is_required():
    message = parse("<xml><MsgType>text</MsgType></xml>")
    assert message == messages.Message(msgtype="text", fields={"MsgType": "text"},
                                       raw="<xml><MsgType>text</MsgType></xml>")


@pytest.mark.parametrize("value, expected", [
    ("1764370000", 1764370000), (" 1764370000\n", 1764370000), ("1764370000.5", None), ("", None),
    ("abc", None), ("１２３", None), ("9" * 5000, None), ("9" * 19, None), ("-", None), ("--5", None),
    # Out of range but kept as sent: the dashboard flags these "time invalid".
    ("-5", -5), ("999999999999999999", 999999999999999999), ("-999999999999999999", -999999999999999999),
])
def test_create_time_is_an_int_or_none(value, expected):
    assert parse("<xml><MsgType>text</MsgType><CreateTime>%s</CreateTime></xml>" % value).create_time == expected


def test_msg_id_is_never_a_float():
    message = parse("<xml><MsgType>text</MsgType><MsgId>18446744073709551615</MsgId></xml>")
    assert message.msg_id == "18446744073709551615"


@pytest.mark.parametrize("xml", [
    "<xml><Content>hi</Content></xml>", "<xml><MsgType></MsgType></xml>",
    "<xml><MsgType><A>text</A></MsgType></xml>", "<xml/>",
])
def test_missing_msgtype_is_malformed(xml):
    with pytest.raises(MalformedXmlError, match="MsgType"):
        parse(xml)


# ---------------------------------------------------------------- hostile and broken input

BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "lol">'
                  + "".join('<!ENTITY %s "%s">' % (chr(98 + i), ("&%s;" % chr(97 + i)) * 10) for i in range(9))
                  + ']><xml><MsgType>text</MsgType><Content>&j;</Content></xml>')


@pytest.mark.parametrize("xml", [
    '<!DOCTYPE xml><xml><MsgType>text</MsgType></xml>',
    BILLION_LAUGHS,
    '<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><MsgType>&x;</MsgType></xml>',
    '<!DOCTYPE xml SYSTEM "http://203.0.113.1/evil.dtd"><xml><MsgType>text</MsgType></xml>',
    '<!DOCTYPE xml [<!ENTITY % p SYSTEM "http://203.0.113.1/p.dtd"> %p;]><xml/>',
    '\ufeff<?xml version="1.0" encoding="UTF-16"?>\n<!-- c -->\n<!DOCTYPE xml [<!ENTITY e "x">]><xml>&e;</xml>',
    '<!DOCTYPE xml [<!ENTITY e "<Encrypt>abc</Encrypt>">]><xml>&e;<MsgType>text</MsgType></xml>',
])
def test_dtds_and_entities_are_forbidden(xml):
    with pytest.raises(ForbiddenXmlError):
        parse(xml)
    with pytest.raises(ForbiddenXmlError):
        parse_xml(xml.encode("utf-8"))


_DTD = '<!DOCTYPE xml [<!ENTITY e "x">]><xml><MsgType>&e;</MsgType><Encrypt>a</Encrypt></xml>'


@pytest.mark.parametrize("body,error", [
    # Without a BOM, UTF-16 is valid UTF-8 (ASCII with NULs between), but expat reads it as UTF-16.
    (_DTD.encode("utf-16-be"), ForbiddenXmlError),
    (_DTD.encode("utf-16-le"), ForbiddenXmlError),
    ("\x00" + _DTD, MalformedXmlError),
    (_DTD.encode("utf-16"), MalformedXmlError),  # with its BOM: not UTF-8 at all
    (_DTD.encode("utf-32-be"), MalformedXmlError),
    (_DTD.replace("DOCTYPE", "doctype").encode(), MalformedXmlError),
    (_DTD.replace("<!DOCTYPE", "<! DOCTYPE").encode(), MalformedXmlError),
    (_DTD.replace("DOCTYPE", "DOC&#84;YPE").encode(), MalformedXmlError),
    (b'<xml><MsgType>text</MsgType><Encrypt>a</Encrypt><!ENTITY e "x"></xml>', MalformedXmlError),
])
def test_a_dtd_in_disguise_is_refused_or_not_xml(body, error):
    with pytest.raises(error):
        parse(body)
    with pytest.raises(error):
        parse_xml(body)


def test_doctype_text_inside_a_value_is_just_text():
    xml = "<xml><MsgType>text</MsgType><Content><![CDATA[<!DOCTYPE html><!ENTITY x>]]></Content></xml>"
    assert parse(xml).content == "<!DOCTYPE html><!ENTITY x>"


@pytest.mark.parametrize("xml", [
    b"", "", b"   ", b"\x00\x01\x02\xff\xfe junk \x89PNG\r\n", "\x00\x01 GET / HTTP/1.1\r\n",
    "<html><MsgType>text</MsgType></html>",
    "<xml><MsgType>text</MsgType><Content>cut",
    "<xml><MsgType>text</MsgType><Content>&undefined;</Content></xml>",
    b"<xml><MsgType>text</MsgType><Content>\xc3\x28</Content></xml>",
    "<xml><MsgType>text</MsgType></xml><xml/>",
    "<a>" * 10000 + "</a>" * 10000,
    "<xml><MsgType>text</MsgType>" + "<a>" * 10000 + "</a>" * 10000 + "</xml>",
])
def test_broken_xml_is_malformed(xml):
    with pytest.raises(MalformedXmlError):
        parse(xml)


def test_every_prefix_of_a_message_parses_or_raises_a_message_error():
    xml = SAMPLES["event:sys_approval_change"].encode("utf-8")
    for end in range(len(xml)):
        try:
            parse(xml[:end])
        except MessageError:
            pass


def test_errors_are_value_errors_with_a_message():
    with pytest.raises(ValueError, match="not well-formed"):
        parse("<xml>")
    assert issubclass(MissingEncryptError, MessageError)


def test_utf8_bom_is_accepted():
    assert parse(b"\xef\xbb\xbf<xml><MsgType>text</MsgType></xml>").msgtype == "text"


def _imports(module) -> set:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return imported | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_modules_are_pure():
    assert not {name for name in _imports(messages) if name and name.split(".")[0] in ("tornado", "wecomd", "peewee")}
    # The envelope readers build on messages' safe parse and bot's JSON reader, and on nothing else
    # of wecomd's; bot builds on messages alone.
    assert {name for name in _imports(envelopes) if name and name.split(".")[0] in ("tornado", "wecomd", "peewee")
            } == {"wecomd.wecom.messages", "wecomd.wecom.bot"}
    assert {name for name in _imports(bot) if name and name.split(".")[0] in ("tornado", "wecomd", "peewee")
            } == {"wecomd.wecom.messages"}


# ---------------------------------------------------------------- envelope

def test_envelope_with_encrypt_first_and_newlines():
    body = ("<xml>\n<Encrypt><![CDATA[RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zE==]]></Encrypt>\n"
            "<ToUserName><![CDATA[ww0123456789abcdef]]></ToUserName>\n<AgentID><![CDATA[1000002]]></AgentID>\n</xml>")
    envelope = parse_xml(body.encode("utf-8"))
    assert envelope == envelopes.Envelope(
        encrypt="RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zE==",
        to_user="ww0123456789abcdef", agent_id="1000002")


@pytest.mark.parametrize("vector", [v for v in VECTORS if "post_body" in v], ids=lambda v: v["id"])
def test_envelope_of_official_vectors(vector):
    envelope = parse_xml(vector["post_body"].encode("utf-8"))
    assert (envelope.encrypt, envelope.to_user) == (vector["encrypt"], vector["receive_id"])


def test_envelope_without_agent_id():
    envelope = parse_xml(b"<xml><ToUserName>ww1</ToUserName><Encrypt>abc</Encrypt></xml>")
    assert (envelope.encrypt, envelope.agent_id) == ("abc", None)


@pytest.mark.parametrize("body", [
    b"<xml><ToUserName>ww1</ToUserName><AgentID>1000002</AgentID></xml>",
    b"<xml><Encrypt></Encrypt></xml>",
    b"<xml><Encrypt>\n  </Encrypt></xml>",
    b"<xml><Wrapper><Encrypt>abc</Encrypt></Wrapper></xml>",
    b"<xml><Encrypt><Inner>abc</Inner></Encrypt></xml>",
])
def test_envelope_without_encrypt(body):
    with pytest.raises(MissingEncryptError):
        parse_xml(body)


def test_envelope_with_two_encrypts_is_refused():
    with pytest.raises(MalformedXmlError):
        parse_xml(b"<xml><Encrypt>abc</Encrypt><Encrypt>def</Encrypt></xml>")


@pytest.mark.parametrize("body", [b"", b"junk", b"<Envelope><Encrypt>a</Encrypt></Envelope>"])
def test_envelope_that_is_not_xml(body):
    with pytest.raises(MalformedXmlError):
        parse_xml(body)


# ---------------------------------------------------------------- dedup

def test_message_key_is_agent_sender_msgid():
    assert dedup_key(parse(SAMPLES["text"])) == "msg:1000002:zhangsan:7304918230194725121"
    other_agent = SAMPLES["text"].replace("<AgentID>1000002<", "<AgentID>1000003<")
    assert dedup_key(parse(other_agent)) == "msg:1000003:zhangsan:7304918230194725121"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_same_plaintext_reserialised_gets_the_same_key(name):
    key = dedup_key(parse(SAMPLES[name]))
    assert dedup_key(parse(reserialise(SAMPLES[name]))) == key
    assert dedup_key(parse(compact(SAMPLES[name]))) == key
    assert len(key) <= 255


def test_all_samples_have_distinct_keys():
    keys = {dedup_key(parse(xml)) for xml in SAMPLES.values()}
    assert len(keys) == len(SAMPLES)


def test_two_approvals_from_sys_in_one_second():
    first = SAMPLES["event:sys_approval_change"]
    second = first.replace("<SpNo>202611280001</SpNo>", "<SpNo>202611280002</SpNo>")
    keys = {dedup_key(parse(first)), dedup_key(parse(second))}
    assert len(keys) == 2
    assert all("SpNo=20261128000" in key for key in keys)


def test_two_contact_changes_from_sys_in_one_second():
    first = SAMPLES["change_contact:delete_user"]
    second = first.replace("lisi2", "wangwu")
    assert dedup_key(parse(first)) != dedup_key(parse(second))
    assert "UserID=wangwu" in dedup_key(parse(second))


def test_location_and_enter_agent_from_one_user_in_one_second():
    assert dedup_key(parse(SAMPLES["event:LOCATION"])) != dedup_key(parse(SAMPLES["event:enter_agent"]))


def test_unknown_events_differing_only_in_payload():
    first = SAMPLES["event:unknown"]
    second = first.replace("<Spin>down</Spin>", "<Spin>sideways</Spin>")
    assert dedup_key(parse(first)) != dedup_key(parse(second))


def test_event_key_is_readable():
    key = dedup_key(parse(SAMPLES["event:click"]))
    assert re.fullmatch(r"evt:zhangsan:1764370000:click:RUN_BACKUP:1000002:[0-9a-f]{16}", key)


def test_non_event_without_msgid_hashes_its_fields():
    xml = "<xml><MsgType>text</MsgType><Content>hi</Content></xml>"
    key = dedup_key(parse(xml))
    assert re.fullmatch(r"raw:[0-9a-f]{64}", key)
    assert dedup_key(parse("<xml>\n <MsgType><![CDATA[text]]></MsgType>\n <Content>hi</Content>\n</xml>")) == key
    assert dedup_key(parse(xml.replace("hi", "ho"))) != key


def test_long_keys_are_bounded_and_still_distinct():
    long_key = "K" * 400
    first = SAMPLES["event:click"].replace("RUN_BACKUP", long_key + "1")
    second = SAMPLES["event:click"].replace("RUN_BACKUP", long_key + "2")
    keys = [dedup_key(parse(first)), dedup_key(parse(second))]
    assert all(len(key) == 255 and key.startswith("evt:zhangsan:1764370000:click:KKK") for key in keys)
    assert keys[0] != keys[1]
    assert dedup_key(parse(first)) == keys[0]


# ---------------------------------------------------------------- replies

NASTY = "a ]]> b ]]]]> <script>alert('x')</script> & &amp; \x00\x01\x08\x0b\x0c\x1f\ufffe\ud800 tab\tnl\n 🙂 中文 ]]"
CLEAN = "a ]]> b ]]]]> <script>alert('x')</script> & &amp;  tab\tnl\n 🙂 中文 ]]"


def both_parsers(xml: str):
    """Parse a reply with our parser and with xml.etree; both must agree."""
    message = parse(xml)
    root = ET.fromstring(xml)
    assert message.fields == to_fields(root)
    return message, root


def test_text_reply_round_trip():
    xml = replies.reply_text("zhangsan", CORP, NASTY, create_time=1764370001)
    message, root = both_parsers(xml)
    assert message.content == root.findtext("Content") == CLEAN
    assert (message.to_user, message.from_user, message.create_time) == ("zhangsan", CORP, 1764370001)
    assert [child.tag for child in root] == ["ToUserName", "FromUserName", "CreateTime", "MsgType", "Content"]


def test_cdata_edges():
    for text in ("]]>", "]]>]]>", "]]", ">", "]", "x]]>", "]]>x", "]]]>>"):
        assert parse(replies.reply_text("u", CORP, text)).content == text


def test_every_text_value_is_sanitised():
    xml = replies.reply_text("zhang]]>san\x00", "ww<1>&", "hi", create_time=1)
    message, _ = both_parsers(xml)
    assert (message.to_user, message.from_user) == ("zhang]]>san", "ww<1>&")


def test_reply_create_time_defaults_to_now():
    before = int(time.time())
    stamp = parse(replies.reply_text("u", CORP, "hi")).create_time
    assert before <= stamp <= int(time.time())


@pytest.mark.parametrize("content, expected", [
    ("a" * 2048, "a" * 2048),
    ("a" * 2049, "a" * 2048),
    ("中" * 1000, "中" * 682),
    ("a" * 2047 + "中", "a" * 2047),
    ("a" * 2045 + "🙂", "a" * 2045),
    ("a" * 2044 + "🙂x", "a" * 2044 + "🙂"),
    ("]]>" * 1000, ("]]>" * 1000)[:2048]),
])
def test_text_reply_is_cut_at_2048_bytes_on_a_character(content, expected):
    assert parse(replies.reply_text("u", CORP, content)).content == expected


def test_media_replies():
    image, _ = both_parsers(replies.reply_image("u", CORP, "MEDIA]]>1", create_time=1))
    assert (image.msgtype, image.fields["Image"]) == ("image", {"MediaId": "MEDIA]]>1"})
    voice, _ = both_parsers(replies.reply_voice("u", CORP, "V1", create_time=1))
    assert (voice.msgtype, voice.fields["Voice"]) == ("voice", {"MediaId": "V1"})
    video, _ = both_parsers(replies.reply_video("u", CORP, "M2", title="标题 & <b>", description="描述",
                                                 create_time=1))
    assert (video.msgtype, video.fields["Video"]) == (
        "video", {"MediaId": "M2", "Title": "标题 & <b>", "Description": "描述"})
    bare, _ = both_parsers(replies.reply_video("u", CORP, "M3"))
    assert bare.fields["Video"] == {"MediaId": "M3", "Title": "", "Description": ""}


def article(n: int) -> dict:
    return {"title": "标题 %d ]]>" % n, "description": "d & e", "url": "https://example.com/?a=%d&b=2" % n,
            "picurl": "https://example.com/%d.png" % n}


@pytest.mark.parametrize("count", [1, 8])
def test_news_reply(count):
    message, root = both_parsers(replies.reply_news("u", CORP, [article(n) for n in range(count)]))
    assert message.msgtype == "news"
    assert message.fields["ArticleCount"] == str(count)
    items = message.fields["Articles"]["item"]
    assert len(items) == count
    assert items[-1] == {"Title": "标题 %d ]]>" % (count - 1), "Description": "d & e",
                         "PicUrl": "https://example.com/%d.png" % (count - 1),
                         "Url": "https://example.com/?a=%d&b=2" % (count - 1)}
    assert [child.tag for child in root.find("Articles/item")] == ["Title", "Description", "PicUrl", "Url"]


@pytest.mark.parametrize("articles", [
    [], [article(n) for n in range(9)], [{"description": "no title"}], [{"title": "t", "pic_url": "typo"}],
])
def test_news_reply_refuses_bad_articles(articles):
    with pytest.raises(ValueError):
        replies.reply_news("u", CORP, articles)


def test_update_button_and_taskcard():
    button, _ = both_parsers(replies.reply_update_button("u", CORP, "已处理 ]]>"))
    assert (button.msgtype, button.fields["Button"]) == ("update_button", {"ReplaceName": "已处理 ]]>"})
    task, _ = both_parsers(replies.reply_update_taskcard("u", CORP, "已同意"))
    assert (task.msgtype, task.fields["TaskCard"]) == ("update_taskcard", {"ReplaceName": "已同意"})


CARD = {
    "card_type": "vote_interaction",
    "source": {"icon_url": "https://example.com/i.png", "desc": "运维", "desc_color": 1},
    "action_menu": {"desc": "更多", "action_list": [{"text": "静音", "key": "mute"}, {"text": "退订", "key": "off"}]},
    "main_title": {"title": "午饭 ]]> <投票>", "desc": "周五"},
    "horizontal_content_list": [{"keyname": "发起人", "value": "张三", "type": 3, "userid": "zhangsan"}],
    "jump_list": [{"type": 2, "title": "小程序", "appid": "wx123", "pagepath": "pages/index"}],
    "card_action": {"type": 1, "url": "https://example.com/?a=1&b=2"},
    "task_id": "vote-1",
    "checkbox": {"question_key": "lunch", "mode": 1, "disable": False,
                 "option_list": [{"id": "a", "text": "面", "is_checked": True}, {"id": "b", "text": "饭"}]},
    "submit_button": {"text": "提交", "key": "submit"},
    "replace_text": "已投票",
    "quote_area": None,
}


def test_update_template_card_is_camelcase_xml():
    message, root = both_parsers(replies.reply_update_template_card("u", CORP, CARD, create_time=1))
    card = message.fields["TemplateCard"]
    assert message.msgtype == "update_template_card"
    assert card["CardType"] == "vote_interaction"
    assert card["Source"] == {"IconUrl": "https://example.com/i.png", "Desc": "运维", "DescColor": "1"}
    assert card["ActionMenu"]["ActionList"] == [{"Text": "静音", "Key": "mute"}, {"Text": "退订", "Key": "off"}]
    assert card["MainTitle"]["Title"] == "午饭 ]]> <投票>"
    assert card["HorizontalContentList"] == {"KeyName": "发起人", "Value": "张三", "Type": "3", "UserId": "zhangsan"}
    assert card["JumpList"] == {"Type": "2", "Title": "小程序", "AppId": "wx123", "PagePath": "pages/index"}
    assert card["CardAction"]["Url"] == "https://example.com/?a=1&b=2"
    assert card["TaskId"] == "vote-1"
    assert card["CheckBox"]["OptionList"][0] == {"Id": "a", "Text": "面", "IsChecked": "true"}
    assert card["CheckBox"]["Disable"] == "false"
    assert card["SubmitButton"] == {"Text": "提交", "Key": "submit"}
    assert card["ReplaceText"] == "已投票"
    assert "QuoteArea" not in card
    assert root.find("TemplateCard/Source/DescColor").text == "1"


def test_update_template_card_button_list_repeats():
    card = {"card_type": "button_interaction", "main_title": {"title": "t"},
            "button_list": [{"text": "同意", "style": 1, "key": "yes"}, {"text": "拒绝", "style": 2, "key": "no"}]}
    message, _ = both_parsers(replies.reply_update_template_card("u", CORP, card))
    assert message.fields["TemplateCard"]["ButtonList"] == [
        {"Text": "同意", "Style": "1", "Key": "yes"}, {"Text": "拒绝", "Style": "2", "Key": "no"}]


@pytest.mark.parametrize("card", [
    {}, {"main_title": {"title": "t"}}, {"card_type": "text_notice", "bad key": "x"},
    {"card_type": "text_notice", "x><y": "x"}, {"card_type": "text_notice", "grid": [[1, 2]]},
])
def test_update_template_card_refuses_bad_cards(card):
    with pytest.raises(ValueError):
        replies.reply_update_template_card("u", CORP, card)
