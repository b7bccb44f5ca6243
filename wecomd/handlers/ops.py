"""/healthz: can the database be read and written right now."""
from __future__ import annotations

import logging
from typing import Any

from wecomd.handlers.base import BaseHandler
from wecomd.store import StoreError

logger = logging.getLogger(__name__)


class HealthHandler(BaseHandler):
    """200 {"status": "ok"} when the database answers and takes a write, else 503.

    The probe runs on the writer thread like a callback's store call, so it fails exactly when
    callbacks would: database locked past busy_timeout, read-only, disk full (wecomd.store.health). It
    remembers nothing: the first probe after the trouble ends answers 200 again.
    """

    public = True  # for monitors; it tells nothing but "up"

    async def get(self) -> None:
        try:
            await self.services.db(_probe, self.services.store)
        except StoreError as exc:
            logger.warning("healthz: database unavailable: %s", exc)
            # Public endpoint: the reason goes to the log, not to whoever asks.
            return self.write_json({"status": "error", "error": "database unavailable"}, status=503)
        self.write_json({"status": "ok"})


def _probe(store: Any) -> None:
    store.health.ping()
    store.health.check_writable()


def routes(services: Any) -> list:
    return [(r"/healthz", HealthHandler, dict(services=services))]
