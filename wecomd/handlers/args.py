"""What the panels' JSON routes read from a request: message ids, cursors and page sizes, filters."""
from __future__ import annotations

import re
from typing import Any, Optional

from tornado import web

# A message id in a path: ASCII digits, at most 18 of them so that it always fits the database's
# 64-bit integers (longer ones are answered 400 by IdOutOfRangeHandler, not passed to SQLite).
ID = r"([0-9]{1,18})"
_ID_ARG = re.compile(r"[0-9]{1,18}\Z")


def message_filters(handler: Any) -> dict:
    """app, user, msgtype and q from the query string; empty ones are left out. The app is scoped to
    what the handler's identity may see (BaseHandler.app_scope)."""
    names = ("user", "msgtype", "q")
    filters = {name: value for name in names if (value := handler.get_query_argument(name, "").strip())}
    app = handler.app_scope(handler.get_query_argument("app", "").strip() or None)
    if app is not None:
        filters["app"] = app
    return filters


def int_arg(handler: web.RequestHandler, name: str) -> Optional[int]:
    """A cursor or page size from the query string: ASCII digits, at most 18 (str.isdigit() would
    take '²', and a number past 2**63 overflows the database's integers)."""
    value = handler.get_query_argument(name, "")
    if not value:
        return None
    if not _ID_ARG.match(value):
        raise web.HTTPError(400, "%s must be a positive integer of at most 18 digits", name)
    return int(value)


def is_id(value: Any) -> bool:
    """A JSON number usable as a message id: an integer (not true/false) within 64 bits."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 63
