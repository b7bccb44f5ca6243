"""/static/*, /favicon.ico, /robots.txt: Tornado's StaticFileHandler, minus its tracebacks."""
from __future__ import annotations

from typing import Optional

from tornado import web


class StaticHandler(web.StaticFileHandler):
    """A path with a NUL byte (`/static/app.js%00.png`) names no file: 404, where Tornado's own
    handler lets the os module raise ValueError (500, with a traceback in the log)."""

    def validate_absolute_path(self, root: str, absolute_path: str) -> Optional[str]:
        if "\x00" in absolute_path:
            raise web.HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)
