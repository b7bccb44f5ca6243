"""The live hub: fans stored-message and status events out to dashboard websockets.

Every event is built by a function here (`message_event`, `status_event`, `assignment_event`,
`note_event`, `kf_session_event`), so the websocket frames have one shape.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable, FrozenSet, Optional

logger = logging.getLogger(__name__)

MAX_BEHIND = 256  # events a client may leave unsent before it is disconnected
FLUSH_INTERVAL = 0.010  # seconds: at most one frame per client per interval, events published meanwhile share it
CLOSE_TOO_SLOW = 1013  # "try again later": the page reconnects and re-fetches what it missed


def message_event(message: dict) -> dict:
    """The live event of a stored message that is new or changed: the dashboard merges it by id.

    The passive reply kept with an inbound message (its "reply", the XML WeCom's retries get) is the
    callback's business, never the dashboard's, so it is left out here, for every publisher.
    """
    if "reply" in message:
        message = {key: value for key, value in message.items() if key != "reply"}
    return {"type": "message", "message": message}


def status_event(message: dict) -> dict:
    """The live event of an outbound message whose delivery status changed (with its app: only who
    may see that app gets it)."""
    return {"type": "status", "id": message["id"], "app": message["app"], "status": message["status"],
            "error": message["error"]}


def assignment_event(state: dict) -> dict:
    """The live event of a conversation assigned, unassigned, opened or closed: its assignee and
    state as store.assignments gives them (with its app, for the hub's app scoping)."""
    return {"type": "assignment", "app": state["app"], "user": state["user"], "assignee": state["assignee"],
            "state": state["state"], "updated_by": state["updated_by"], "updated_at": state["updated_at"]}


def kf_session_event(session: dict, transitions: list) -> dict:
    """The live event of a 微信客服 session whose state changed (store.kf's session JSON): the
    conversation list's tag and an open thread's session bar follow it."""
    user = "%s/%s" % (session["open_kfid"], session["external_userid"])
    kf = {key: session.get(key) for key in ("open_kfid", "external_userid", "service_state", "servicer_userid",
                                            "last_customer_at", "sends")}
    return {"type": "kf_session", "app": session["app"], "user": user, "kf": dict(kf, transitions=transitions)}


def note_event(note: dict) -> dict:
    """The live event of a new internal note (note JSON, with its app for the hub's app scoping)."""
    return {"type": "note", "app": note["app"], "user": note["user"], "note": note}


class Subscriber:
    """One websocket. `behind` counts the events in frames written but not yet taken by its socket."""

    def __init__(self, send: Callable[[bytes], Awaitable[Any]], close: Callable[[int, str], None],
                 apps: Optional[FrozenSet[str]] = None) -> None:
        self._send, self._close = send, close
        self.apps = apps  # None: every app's events; else only those of these apps
        self.behind = 0

    def offer(self, frame: bytes, events: int) -> None:
        """Write one frame; raises when the socket is gone. Frames go out in the order offered."""
        sent = self._send(frame)
        self.behind += events
        sent.add_done_callback(lambda done: self._sent(done, events))

    def _sent(self, done: asyncio.Future, events: int) -> None:
        self.behind -= events
        if not done.cancelled() and done.exception() is not None:  # a vanished peer: on_close unsubscribes
            logger.debug("live: send failed (%s)", done.exception())

    def close(self, code: int, reason: str) -> None:
        self._close(code, reason)


class Hub:
    """Subscribers belong to the hub instance that `Services` owns, never to a class.

    `publish` encodes an event at once (later changes to the dict are not sent) and queues it;
    one flush on the IOLoop, soon after and at most every `interval` seconds, joins everything
    queued into one frame, a JSON array, and writes those same bytes to every subscriber. So the
    cost per client is one websocket write per flush, however many events there were. A subscriber
    limited to some apps (an operator account's `apps`) gets a frame of its own, of those apps' events.
    """

    def __init__(self, max_behind: int = MAX_BEHIND, interval: float = FLUSH_INTERVAL) -> None:
        self.max_behind, self.interval = max_behind, interval
        self._subscribers: set[Subscriber] = set()
        self._pending: list[tuple[Optional[str], str]] = []  # (the event's app, its JSON)
        self._flush_at: Optional[asyncio.Handle] = None
        self._flushed = 0.0  # time.monotonic() of the last flush

    @property
    def count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, send: Callable[[bytes], Awaitable[Any]], close: Callable[[int, str], None],
                  apps: Optional[FrozenSet[str]] = None) -> Subscriber:
        subscriber = Subscriber(send, close, apps)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def publish(self, event: dict) -> None:
        """Send `event` to every subscriber that may see its app (a message event's message's, a
        status event's own); call it only after the change is committed."""
        if not self._subscribers:
            return
        app = event["message"].get("app") if "message" in event else event.get("app")
        self._pending.append((app, json.dumps(event, ensure_ascii=False)))
        if self._flush_at is None:  # the first event since the last flush: schedule the next one
            loop = asyncio.get_running_loop()
            wait = self._flushed + self.interval - time.monotonic()
            self._flush_at = loop.call_later(wait, self.flush) if wait > 0 else loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued events, as one frame, to every subscriber."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if not self._pending:
            return
        self._flushed = time.monotonic()
        pending, self._pending = self._pending, []
        frames: dict = {}  # apps -> (frame, events): one encoding per distinct scope
        for subscriber in list(self._subscribers):
            if subscriber.apps not in frames:
                texts = [text for app, text in pending if subscriber.apps is None or app in subscriber.apps]
                frames[subscriber.apps] = ("[" + ",".join(texts) + "]").encode(), len(texts)
            frame, events = frames[subscriber.apps]
            if not events:
                continue
            # Checked before writing, so one big frame alone never drops a healthy client; a slow one
            # holds at most max_behind events plus this frame. A write the socket takes at once only
            # counts until its future's callback runs, on the next loop iteration.
            if subscriber.behind > self.max_behind:
                logger.warning("live: a client fell %d events behind; disconnecting it", subscriber.behind)
                self._drop(subscriber, CLOSE_TOO_SLOW, "too slow")
                continue
            try:
                subscriber.offer(frame, events)
            except Exception as exc:  # closed already: the handler's on_close unsubscribes it too
                logger.debug("live: send failed (%s); dropping subscriber", exc)
                self._subscribers.discard(subscriber)

    def close_all(self) -> None:
        """Send what is queued, then close every websocket (HTTPServer.close_all_connections does not)."""
        self.flush()
        for subscriber in list(self._subscribers):
            self._drop(subscriber, 1001, "server shutting down")

    def _drop(self, subscriber: Subscriber, code: int, reason: str) -> None:
        self._subscribers.discard(subscriber)
        try:
            subscriber.close(code, reason)
        except Exception as exc:
            logger.debug("live: close failed (%s)", exc)
