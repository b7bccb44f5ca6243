"""Messages (table `message`): storing what WeCom delivers, with its dedup, and reading messages back."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from wecomd.wecom.messages import Message

from .media import media_columns
from .search import search_text
from .serialize import dumps


def inbound_row(app: str, message: Message, dedup_key: str, reply: Optional[str],
                now: datetime) -> dict[str, Any]:
    """Column values for a newly received message."""
    return dict(
        app=app, direction="in", dedup_key=dedup_key, user=message.from_user,
        msgtype=message.msgtype, event=message.event, event_key=message.event_key,
        from_user=message.from_user, to_user=message.to_user,
        agent_id=_text(message.agent_id), msg_id=_text(message.msg_id),
        create_time=message.create_time, received_at=now, content=message.content,
        status="received", fields=dumps(message.fields), raw_xml=message.raw or "",
        reply=reply, deliveries=1, updated_at=now,
        search_text=search_text(message.msgtype, message.content, message.fields),
        **media_columns(message.fields))


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)
