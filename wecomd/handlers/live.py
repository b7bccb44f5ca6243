"""The live feed panel's route (its view: static/live.js): WS /api/live, the dashboard's feed of stored
messages and delivery status changes."""
from __future__ import annotations

import logging
from typing import Any, Optional

from tornado import web, websocket

from wecomd.handlers.base import ApiHandler
from wecomd.live import Subscriber

logger = logging.getLogger(__name__)


class LiveHandler(websocket.WebSocketHandler, ApiHandler):
    """Signed-in operators, or a bearer token as for /api/*: checked in prepare, before the upgrade.

    Tornado's default `check_origin` (same host only) stays in force.
    """

    count_inflight = False  # an open feed must not hold up a graceful shutdown
    subscriber: Optional[Subscriber] = None

    def deny(self) -> None:
        raise web.HTTPError(403, "sign in first")

    def open(self, *args: Any, **kwargs: Any) -> None:
        # The hub already batches events into frames; Nagle's algorithm would hold a frame back
        # until the previous one is acknowledged (up to the peer's delayed-ACK time, ~40 ms).
        self.set_nodelay(True)
        # An account limited to some apps gets only their events.
        self.subscriber = self.services.hub.subscribe(self.write_message, self.close, self.identity.apps)
        logger.info("live: %s connected (%d clients)", self.current_user, self.services.hub.count)

    def on_message(self, message: Any) -> None:
        pass  # the feed is one-way; the page talks to the JSON API

    def on_close(self) -> None:
        if self.subscriber is not None:
            self.services.hub.unsubscribe(self.subscriber)
            self.subscriber = None


def routes(services: Any) -> list:
    return [(r"/api/live", LiveHandler, dict(services=services))]
