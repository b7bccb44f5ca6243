"""The live hub: fans stored-message and status events out to dashboard websockets."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable, Optional

logger = logging.getLogger(__name__)

QUEUE_SIZE = 256  # events a client may fall behind before it is disconnected
CLOSE_TOO_SLOW = 1013  # "try again later": the page reconnects and re-fetches what it missed


class Subscriber:
    """One websocket: a bounded queue drained in order by its own send task."""

    def __init__(self, send: Callable[[str], Awaitable[Any]], close: Callable[[int, str], None], size: int) -> None:
        self._send, self._close = send, close
        self.queue: asyncio.Queue[Optional[str]] = asyncio.Queue(size)
        self.task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while True:
            texts = [await self.queue.get()]
            while not self.queue.empty():  # write what else is queued now, then wait once
                texts.append(self.queue.get_nowait())
            try:
                for text in texts:
                    if text is None:
                        return
                    sent = self._send(text)
                await sent
            except Exception as exc:  # a vanished peer: the handler's on_close unsubscribes
                logger.debug("live: send failed (%s); dropping subscriber", exc)
                return

    def offer(self, text: str) -> bool:
        """Queue an event; False when the client is too far behind."""
        try:
            self.queue.put_nowait(text)
            return True
        except asyncio.QueueFull:
            return False

    def close(self, code: int, reason: str) -> None:
        self.task.cancel()
        self._close(code, reason)


class Hub:
    """Subscribers belong to the hub instance that `Services` owns, never to a class."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._subscribers: set[Subscriber] = set()

    @property
    def count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, send: Callable[[str], Awaitable[Any]], close: Callable[[int, str], None]) -> Subscriber:
        subscriber = Subscriber(send, close, self.queue_size)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.discard(subscriber)
            subscriber.task.cancel()

    def publish(self, event: dict) -> None:
        """Send `event` to every subscriber; call it only after the change is committed."""
        if not self._subscribers:
            return
        text = json.dumps(event, ensure_ascii=False)
        for subscriber in list(self._subscribers):
            if not subscriber.offer(text):
                logger.warning("live: a client fell %d events behind; disconnecting it", self.queue_size)
                self._subscribers.discard(subscriber)
                subscriber.close(CLOSE_TOO_SLOW, "too slow")

    def close_all(self) -> None:
        """Close every websocket (HTTPServer.close_all_connections does not)."""
        for subscriber in list(self._subscribers):
            self._subscribers.discard(subscriber)
            subscriber.close(1001, "server shutting down")
