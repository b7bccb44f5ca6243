"""/healthz: is the database answering."""
from __future__ import annotations

import logging
from typing import Any

from wecomd.handlers.base import BaseHandler
from wecomd.store import StoreError

logger = logging.getLogger(__name__)


class HealthHandler(BaseHandler):
    """200 {"status": "ok"} when the database answers, else 503 with the reason."""

    public = True  # for monitors; it tells nothing but "up"

    async def get(self) -> None:
        try:
            await self.services.db(self.services.store.ping)
        except StoreError as exc:
            logger.warning("healthz: database not answering: %s", exc)
            # Public endpoint: the reason goes to the log, not to whoever asks.
            return self.write_json({"status": "error", "error": "database unavailable"}, status=503)
        self.write_json({"status": "ok"})


def routes(services: Any) -> list:
    return [(r"/healthz", HealthHandler, dict(services=services))]
