"""A pulled kf/sync_msg item as the store keeps it (store.kf.Pulled): the message, its direction by
`origin` (3 the customer, 5 a human agent from the WeCom client, 4 a system event), and what it
changes: the customer's reply window, the session state, a send_msg_on_event code, a failed send, a
recall (wecom-kf.md §3, §4)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional

from wecomd.store.kf import Pulled
from wecomd.wecom import kf as kfproto

WELCOME_LIFE = timedelta(seconds=20)  # a welcome_code works 20 s (wecom-kf.md §6)
END_LIFE = timedelta(seconds=20)  # the end-of-session code
TAKEN_LIFE = timedelta(hours=48)  # the "taken from the queue" code

# session_status_change change_type -> (the new service_state, the msg_code's kind and lifetime)
CHANGES = {1: (3, "human", TAKEN_LIFE), 2: (3, None, None), 3: (4, "end", END_LIFE), 4: (3, None, None)}


def dedup_key(msgid: str) -> str:
    return "kf:" + msgid


# The fields a customer's plain text item may carry to be stored by SQL (plain_text).
_PLAIN_KEYS = frozenset(("msgid", "open_kfid", "external_userid", "send_time", "origin", "msgtype", "text"))


def plain_text(item) -> bool:
    """Whether `item` is a customer's plain text message, which store.kf.store_texts stores in SQL
    with the very columns, session change and counts `decode` and store_slice give it: origin 3,
    msgtype text, a text with content (no menu_id), a send_time, ids without "/", and no other field.
    Anything else goes the Python way (decode)."""
    if not isinstance(item, dict) or not _PLAIN_KEYS.issuperset(item) or item.get("msgtype") != "text":
        return False
    origin, sent, text = item.get("origin"), item.get("send_time"), item.get("text")
    if type(origin) is not int or origin != kfproto.ORIGIN_CUSTOMER or type(sent) is not int or sent <= 0:
        return False
    if not isinstance(text, dict) or list(text) != ["content"]:
        return False
    content = text["content"]
    if not isinstance(content, str) or not content.strip():
        return False
    return all(isinstance(item.get(name), str) and item[name] and kfproto.SEPARATOR not in item[name]
               for name in ("msgid", "open_kfid", "external_userid"))


def decode(item: dict, now: datetime) -> Pulled:
    """The Pulled of one item; kfproto's MessageError when it has no msgid or msgtype."""
    message = kfproto.parse_item(item)
    origin = kfproto.origin(item)
    event = item.get("event") if isinstance(item.get("event"), dict) else {}
    open_kfid = item.get("open_kfid") or event.get("open_kfid")
    external = item.get("external_userid") or event.get("external_userid")
    session = (open_kfid, external) if open_kfid and external else None
    sent_at = _time(item.get("send_time")) or now
    base = dict(message=message, dedup_key=dedup_key(message.msg_id), session=session)
    if origin == kfproto.ORIGIN_CUSTOMER:
        return Pulled(**base, customer_at=sent_at)
    if origin == kfproto.ORIGIN_SERVICER:
        return Pulled(**base, outbound_by=item.get("servicer_userid") or "servicer", state=3,
                      servicer=item.get("servicer_userid"))
    kind = event.get("event_type")
    if kind == "enter_session" and event.get("welcome_code"):
        return Pulled(**base, code=("welcome", event["welcome_code"], sent_at + WELCOME_LIFE))
    if kind == "session_status_change":
        state, code_kind, life = CHANGES.get(_int(event.get("change_type")), (None, None, None))
        code = (code_kind, event["msg_code"], sent_at + life) if code_kind and event.get("msg_code") else None
        return Pulled(**base, state=state, servicer=event.get("new_servicer_userid") if state == 3 else None,
                      code=code)
    if kind == "msg_send_fail" and event.get("fail_msgid"):
        fail_type = _int(event.get("fail_type"))
        return Pulled(**base, failed_msgid=event["fail_msgid"],
                      failure="WeCom could not deliver it: %s (fail_type %s)"
                      % (kfproto.FAIL_TYPES.get(fail_type, "unknown reason"), fail_type))
    if kind in ("user_recall_msg", "servicer_recall_msg") and event.get("recall_msgid"):
        return Pulled(**base, recalled_msgid=event["recall_msgid"])
    return Pulled(**base)


def _time(value) -> Optional[datetime]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return datetime.fromtimestamp(value, timezone.utc)
    return None


def _int(value) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None

