"""One doctor result line, and URLs shown without their credentials: a leaf the checks import."""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import List


@dataclass
class Check:
    """One result line: `status` is ok, warn, fail, skip or info; `hint` says what to do."""

    name: str
    status: str
    message: str
    hint: str = ""
    details: List[str] = field(default_factory=list)  # more lines, shown indented


def shown_url(url: str) -> str:
    """`url` without what may hold a credential (user:password@, the query), for printing."""
    parts = urllib.parse.urlsplit(url)
    return "%s://%s%s" % (parts.scheme, parts.netloc.rpartition("@")[2], parts.path)
