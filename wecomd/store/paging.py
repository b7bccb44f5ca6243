"""Pages of rows: how many one holds, and the keyset cursor to the next."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, TypeVar

MAX_PAGE = 500  # the most rows one page of messages or conversations holds

T = TypeVar("T")


def page_size(limit: int) -> int:
    """A page's row count: ValueError below 1, at most MAX_PAGE."""
    if int(limit) < 1:
        raise ValueError("limit must be at least 1")
    return min(int(limit), MAX_PAGE)


def keyset(rows: Sequence[T], limit: int, key: Callable[[T], int]) -> tuple[list[T], Optional[int]]:
    """(the first `limit` of `rows`, the cursor of the next page or None): read limit + 1 rows, and
    the one past the page says whether there is more; the cursor is the last row's key."""
    page = list(rows[:limit])
    return page, (key(page[-1]) if len(rows) > limit else None)
