"""Rows as JSON: the documented Message JSON (design.md) with its media, a rule run in full and as
Message JSON's "automation" entries, and the text of the `fields` column."""
from __future__ import annotations

import json
from typing import Any, Optional

from .times import iso

# One rule run as it appears in a Message's "automation" list: never its url or webhook body.
AUTOMATION_KEYS = ("id", "rule", "action", "status", "path", "exit_code", "duration_ms", "output",
                   "error", "started_at", "finished_at")
_RUN_INTERNAL_KEYS = ("message_id", "app", "user", "reply_message_id", "url", "payload", "attempts",
                      "next_attempt_at")
_RUN_TIMES = ("started_at", "finished_at", "next_attempt_at")


# Every Message column to_json and media_json read. Pages and exports select these alone, as named
# tuples: model instances of every column (the raw body and the search text too) took most of the
# time of a page of 500 (tests/test_store.py checks that to_json reads nothing else).
JSON_COLUMNS = ("id", "app", "direction", "msgtype", "event", "event_key", "from_user", "to_user", "agent_id",
                "msg_id", "wecom_msgid", "create_time", "received_at", "content", "status", "error", "fields",
                "deliveries", "operator", "attempts", "media_status", "media_size", "media_type", "media_name",
                "media_error", "automatic", "rule")


def json_select(Message: Any) -> Any:
    """A select of the bound `Message` model's JSON_COLUMNS, its rows named tuples."""
    return Message.select(*[getattr(Message, name) for name in JSON_COLUMNS]).namedtuples()


def to_json(row: Any, fields: Optional[dict] = None) -> dict:
    """The documented Message JSON plus `deliveries`; never the raw XML or a path. Without "automation"
    (the message's rule runs): rule_runs.RuleRuns.attach adds it. `fields`: the row's fields as a
    dict, when the caller has them (else read from the row's text)."""
    return {
        "id": row.id, "app": row.app, "direction": row.direction, "msgtype": row.msgtype,
        "event": row.event, "event_key": row.event_key, "from_user": row.from_user,
        "to_user": row.to_user, "agent_id": row.agent_id,
        # For an outbound row, WeCom's id is the msgid its send API answered with.
        "msg_id": row.msg_id if row.direction == "in" else row.wecom_msgid,
        "create_time": row.create_time, "received_at": iso(row.received_at),
        "content": row.content, "status": row.status, "error": row.error,
        "fields": fields if fields is not None else json.loads(row.fields or "{}"), "deliveries": row.deliveries,
        "operator": row.operator if row.direction == "out" else None,
        "attempts": row.attempts or 0, "media": media_json(row),
        # An automatic answer: how it went out ("passive" or "api") and the rule (None: the app's reply =).
        "automatic": row.automatic, "rule": row.rule,
    }


def media_json(row: Any) -> Optional[dict]:
    """The public view of a row's media: null without media, never the filesystem path."""
    if row.media_status is None:
        return None
    return {"status": row.media_status, "size": row.media_size, "type": row.media_type,
            "name": row.media_name, "error": row.media_error}


def run_json(run: Any) -> dict:
    """Every column of a rule run (what the rule runner and the webhook sender work with)."""
    keys = AUTOMATION_KEYS + _RUN_INTERNAL_KEYS
    return {key: iso(getattr(run, key)) if key in _RUN_TIMES else getattr(run, key) for key in keys}


def automation_json(run: Any) -> dict:
    """The public view of a rule run, an entry of Message JSON "automation"."""
    return {key: iso(getattr(run, key)) if key in _RUN_TIMES else getattr(run, key)
            for key in AUTOMATION_KEYS}


def dumps(fields: Optional[dict]) -> str:
    """The `fields` column's text: compact JSON, non-ASCII kept as it is."""
    return json.dumps(fields or {}, ensure_ascii=False, separators=(",", ":"))
