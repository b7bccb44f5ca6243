"""GET /metrics: Prometheus text exposition format, for the metrics token, a signed-in operator or the api token."""
from __future__ import annotations

import logging
from typing import Any, Optional

from wecomd import auth
from wecomd.accounts import Identity
from wecomd.handlers.base import ApiHandler
from wecomd.metrics import CONTENT_TYPE
from wecomd.store import StoreError

logger = logging.getLogger(__name__)


class MetricsHandler(ApiHandler):
    """Scrape with `Authorization: Bearer <metrics_token>` (Prometheus: `authorization: {credentials: ...}`).

    `[admin] metrics_token` opens this handler and no other: only it asks for that token. The api token
    and a dashboard session work here too.
    """

    async def identify(self) -> Optional[Identity]:
        if auth.check_metrics_token(self.services.config.admin, self.request.headers.get("Authorization")):
            return Identity("metrics", "viewer", frozenset(), "metrics_token")
        return await super().identify()

    async def get(self) -> None:
        metrics = self.services.metrics
        try:
            # One COUNT on the reader thread, so a scrape never waits behind the writer's queue.
            depth = await self.services.read(self.services.store.outbox.depth)
        except StoreError as exc:
            logger.warning("metrics: cannot count the outbox: %s", exc)
            depth = float("nan")  # unknown, rather than a stale number
        metrics.outbox_pending.set(depth)
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(metrics.render())


def routes(services: Any) -> list:
    return [(r"/metrics", MetricsHandler, dict(services=services))]
