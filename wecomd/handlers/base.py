"""BaseHandler: service accessors, default security headers, in-flight accounting, plain-text errors."""
from __future__ import annotations

import json
from typing import Any

from tornado import web
from tornado.log import app_log, gen_log

from wecomd.services import Services


class BaseHandler(web.RequestHandler):
    """Base of every wecomd handler; routes pass `services` into `initialize`."""

    _counted = False

    def initialize(self, services: Services) -> None:
        self.services = services

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")

    def prepare(self) -> Any:
        # Counted so that SIGTERM can wait for requests that are being served.
        self._counted = True
        self.services.inflight.enter()

    def on_finish(self) -> None:
        self._uncount()

    def on_connection_close(self) -> None:
        self._uncount()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.services.inflight.leave()

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Like Tornado's, but with the path instead of the URI: query strings carry signatures.
        where = "%s %s (%s)" % (self.request.method, self.request.path, self.request.remote_ip)
        if isinstance(value, web.HTTPError):
            if value.log_message:
                message = value.log_message % value.args if value.args else value.log_message
                gen_log.warning("%d %s: %s", value.status_code, where, message)
        else:
            app_log.error("uncaught exception %s", where, exc_info=(typ, value, tb))

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(payload, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Short plain-text errors: no traceback and no HTML, whatever the debug setting.
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message and status_code < 500:
            reason = exc.log_message % exc.args if exc.args else exc.log_message
        self.finish("%d %s\n" % (status_code, reason))
