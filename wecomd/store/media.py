"""Media of received messages (the media columns of `message`): which downloads are due, and their outcome."""
from __future__ import annotations

from typing import Optional


def media_columns(fields: Optional[dict]) -> dict[str, Optional[str]]:
    """media_status and media_name of a received message: "pending" when it has a MediaId.

    Image, voice, video and file messages carry one; a file's name is known at once.
    """
    fields = fields if isinstance(fields, dict) else {}
    media_id, name = fields.get("MediaId"), fields.get("FileName")
    if not (isinstance(media_id, str) and media_id.strip()):
        return {"media_status": None, "media_name": None}
    return {"media_status": "pending", "media_name": name if isinstance(name, str) else None}
