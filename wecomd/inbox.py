"""Inbox: the one owner of the inbound path, whichever channel a message comes in by.

A channel (today "app": a self-built app's encrypted XML callbacks; the AI bot's JSON callbacks and
WeChat customer service's pulls come next) keeps its transport: HTTP, limits, crypto and parsing.
It hands the parsed Message, with its channel and app, to `Inbox.receive`, which:

1. stores it once, under its dedup key, in one writer call that also reads the takeover pause and,
   when no rule will run, keeps the app's own passive reply with the message and stores that reply
   as an automatic answer: the common case is one commit;
2. for a new message: pushes it live and wakes the media fetch when it has a file to download;
3. runs the matched rules (RuleRunner.handle, takeover included) and keeps the passive reply they
   decide on with the message, so that WeCom's retries get that same reply;
4. for a retry: answers with the first delivery's reply, waiting for it while the first delivery
   is still working it out. A retry runs nothing and costs one short statement: it comes when the
   daemon is slow already.

While a 微信客服 pull keeps the database busy (wecomd.intake), an app callback is only recorded in
the intake journal and answered empty; `apply` later does steps 1 to 3 for it, with the answers
sent through the API, since the passive moment has passed.

It returns an Inbound, which the channel turns into its answer. Nothing is acknowledged unless
stored: when the message cannot be stored, NotStored is raised and the channel must not answer
2xx, so that WeCom delivers it again.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Awaitable, Callable, Dict, List, Optional

from wecomd import logs
from wecomd.automation.rules import Match
from wecomd.automation.runner import RuleRunner, default_reply
from wecomd.automation.takeover import is_paused
from wecomd.config import AppConfig
from wecomd.live import message_event
from wecomd.store import StoreError
from wecomd.store.intake import once
from wecomd.store.writer import single_write
from wecomd.wecom import replies
from wecomd.wecom.messages import Message, dedup_key, parse

logger = logging.getLogger(__name__)


class NotStored(Exception):
    """The message could not be stored (the database refused or failed): do not acknowledge it."""


class AppliedBefore(Exception):
    """`receive` of a journal entry (its `stamp`) that was applied before: nothing was done."""


@dataclass(frozen=True)
class Inbound:
    """What became of one delivery. `reply` is the passive reply for the channel to send (for "app"
    the plaintext XML it encrypts), None for an empty answer; `detail` says why a stored message
    gets none that it should have had (its reply could not be recorded)."""

    id: Optional[int]  # None: recorded in the intake journal, stored once applied
    created: bool  # False: a retry of a message stored before
    deliveries: int
    reply: Optional[str] = None
    detail: Optional[str] = None
    journaled: bool = False


def _app_reply(app: AppConfig, message: Message, text: str) -> str:
    return replies.reply_text(message.from_user or "", app.corp_id, text)


# Per channel: how an answer's text becomes that channel's passive reply (what is kept for retries).
PASSIVE_REPLIES: "MappingProxyType[str, Callable[[AppConfig, Message, str], str]]" = MappingProxyType({
    "app": _app_reply,
    "bot": lambda bot, message, text: text,  # the 智能机器人 channel streams the text (wecomd.bots)
})


class Inbox:
    """One per process, built by `Services`; see the module docstring."""

    def __init__(self, run_db: Callable[..., Awaitable[Any]], store: Any, rules: RuleRunner,
                 publish: Callable[[dict], None], wake_media: Callable[[], None], intake: Any = None) -> None:
        self.run_db, self.store, self.rules = run_db, store, rules
        self.publish, self.wake_media = publish, wake_media
        self.intake = intake  # wecomd.intake.Intake: the app channel's callbacks while a pull runs
        if intake is not None:
            intake.register("app", self.apply)
        # message id -> the passive reply of its first delivery, while that is still being worked out,
        # so that a WeCom retry overlapping it gets the same answer (not an empty one).
        self._first: Dict[int, asyncio.Future] = {}

    async def receive(self, channel: str, app: AppConfig, message: Message, stamp: Optional[tuple] = None,
                      stored: Optional[asyncio.Future] = None) -> Inbound:
        """Store, announce and answer one delivery of `message` to `app` by `channel`; NotStored
        when it could not be stored. ValueError for a channel the inbox does not know. With the
        `stamp` of an intake journal entry (a channel applying it), the delivery is stored in one
        transaction with the entry's mark (store.intake.once); AppliedBefore when it was already.
        `stored`, when given, gets the row's id as soon as the delivery is committed, before its
        rules run (the 智能机器人 channel's applier goes on from there)."""
        passive = PASSIVE_REPLIES.get(channel)
        if passive is None:
            raise ValueError("unknown channel %r" % (channel,))
        if channel == "app" and stamp is None and self.intake is not None and self.intake.active():
            return await self._journal(app, message)
        matches = self.rules.select(app.name, message)
        row, created, paused, answer = await self._store(app, message, matches, passive, stamp)
        if stored is not None:
            stored.set_result(row["id"])
        if not created:  # a retry: only a new message runs the rules
            return Inbound(row["id"], False, row["deliveries"], await self._retry(row))
        self._announce(row)
        if answer is not None:  # the app's own reply, stored as an automatic answer with the message
            self.publish(message_event(answer))
        if not matches:
            return Inbound(row["id"], True, row["deliveries"], row.get("reply"))
        reply, detail = await self._first_delivery(app, row, message, matches, paused, passive)
        return Inbound(row["id"], True, row["deliveries"], reply, detail)

    async def _journal(self, app: AppConfig, message: Message) -> Inbound:
        """Record the delivery in the intake journal (a pull keeps the database busy) and answer it
        empty: it is stored, announced and automated when applied (`apply`)."""
        try:
            await self.intake.record("app", app.name, message.raw)
        except StoreError as exc:
            raise NotStored(str(exc)) from exc
        return Inbound(None, True, 1, journaled=True)

    async def apply(self, app: Optional[AppConfig], name: str, body: str, stamp: tuple) -> None:
        """Apply one journaled delivery (wecomd.intake): store it once, in one transaction with its
        journal mark; a new message is announced and its rules run, and what they (or the app's
        `reply =`) answer goes out through the API: the callback was answered already."""
        message = parse(body)
        done, result = await self.keep_journaled(name, message, stamp)
        if not done:
            return
        row, created, paused = result
        if not created or app is None:
            return
        self._announce(row)
        matches = self.rules.select(name, message)
        if not message.from_user or not (matches or default_reply(app, message, matches)):
            return
        try:
            answer = await self.rules.handle(app, row, message, matches, paused, budget=0.0)
            if answer is not None:
                await self.rules.send_answer(name, message.from_user, answer)
        except (StoreError, ValueError) as exc:  # the message is stored; its answer is not
            logger.warning("message id=%s: automation failed: %s", row["id"], exc)

    async def keep_journaled(self, name: str, message: Message, stamp: tuple) -> tuple:
        """Store a journaled delivery to app or bot `name` once, in one transaction with its journal
        mark, and nothing else: (True, (row, created, paused)), or (False, None) if applied before."""
        return await self.run_db(once, self.store, stamp, apply_inbound, self.store, name, message, dedup_key(message))

    async def _store(self, app: AppConfig, message: Message, matches: List[Match], passive: Callable,
                     stamp: Optional[tuple] = None) -> tuple:
        """One writer call: (row, created, paused, answer). With no rule to run, the app's own reply
        is decided now and saved with the message (see store_answered). With a journal entry's
        `stamp`, in one transaction with its mark."""
        text = None if matches else default_reply(app, message, matches)
        key = dedup_key(message)
        call: tuple = (store_answered, self.store, app.name, message, key, passive(app, message, text), text) \
            if text and message.from_user else (store_inbound, self.store, app.name, message, key)
        try:
            if stamp is None:
                return await self.run_db(*call)
            done, result = await self.run_db(once, self.store, stamp, *call)
        except StoreError as exc:
            raise NotStored(str(exc)) from exc
        if not done:
            raise AppliedBefore(str(stamp))
        return result

    def _announce(self, row: dict) -> None:
        """A new message is committed: push it live and fetch its media."""
        if logger.isEnabledFor(logging.DEBUG):  # logs.content formats only for a line that is written
            logger.debug("message id=%s app=%s type=%s from=%s stored: content %s, event_key %s", row.get("id"),
                         row.get("app"), row.get("msgtype"), row.get("from_user"),
                         logs.content(row.get("content") or ""), logs.content(row.get("event_key") or ""))
        self.publish(message_event(row))
        if (row.get("media") or {}).get("status") == "pending":
            self.wake_media()

    async def _first_delivery(self, app: AppConfig, row: dict, message: Message, matches: List[Match],
                              paused: bool, passive: Callable) -> tuple:
        """Run the rules; (the passive reply, why there is none although there should be)."""
        answer = self._first[row["id"]] = asyncio.get_running_loop().create_future()
        try:
            reply, detail = await self._automate(app, row, message, matches, paused, passive)
            answer.set_result(reply)
            return reply, detail
        finally:
            if not answer.done():
                answer.set_result(None)
            self._first.pop(row["id"], None)

    async def _retry(self, row: dict) -> Optional[str]:
        first = self._first.get(row["id"])
        if first is None:
            return row.get("reply")
        try:
            return await asyncio.wait_for(asyncio.shield(first), self.rules.settings.passive_budget + 1.0)
        except asyncio.TimeoutError:
            return None

    async def _automate(self, app: AppConfig, row: dict, message: Message, matches: List[Match],
                        paused: bool, passive: Callable) -> tuple:
        """Run the matched rules, and save the passive reply for WeCom's retries, and as an
        automatic answer in the thread."""
        try:
            answer = await self.rules.handle(app, row, message, matches, paused)
            if answer is None or not message.from_user:
                return None, None
            reply = passive(app, message, answer.text)
            kept, stored = await self.run_db(self.store.messages.save_passive_reply, row["id"], reply, answer.text,
                                             answer.rule, answer.run_id)
            if stored is not None:
                self.publish(message_event(stored))
            return kept, None
        except StoreError as exc:
            # The message itself is stored: acknowledge it, without an answer we could not record.
            return None, "automation: %s" % exc


# ---------------------------------------------------------------- writer calls (on the database thread)

@single_write
def store_inbound(store: Any, app: str, message: Message, key: str) -> tuple:
    """Save a delivery without a ready-made reply: (row, created, paused, None). A retry's row is
    brief (id, deliveries and the first delivery's reply): a retry is answered, never shown.
    One statement where the store can (Messages.save_delivery), the pause read inside it."""
    if store.messages.one_statement:
        return store.messages.save_delivery(app, message, key)
    paused = is_paused(store, app, message.conversation or message.from_user)
    row, created = store.messages.save_inbound(app, message, key, brief=True)
    return row, created, paused, None


@single_write
def store_answered(store: Any, app: str, message: Message, key: str, reply: str, text: str) -> tuple:
    """Save a delivery and its ready-made passive reply (the app's own `reply =` when no rule
    matched): (row, created, paused, answer).

    Unless automation is paused for the sender, the reply is kept with the message and, for a new
    message, its `text` is stored as an automatic answer (Store.save_answer), whose JSON is `answer`;
    a retry (created False) stores none. One statement where the store can
    (Messages.save_delivery); elsewhere two INSERTs in a savepoint of their own, one change.
    """
    if store.messages.one_statement:
        return store.messages.save_delivery(app, message, key, reply, text)
    with store.db.atomic():
        user = message.conversation or message.from_user  # a bot's group chat: the group
        paused = is_paused(store, app, user)
        row, created = store.messages.save_inbound(app, message, key, None if paused else reply, brief=True)
        answer = store.messages.save_answer(app, user, text) if created and not paused else None
    return row, created, paused, answer


def apply_inbound(store: Any, app: str, message: Message, key: str) -> tuple:
    """Save a journaled delivery (inside store.intake.once): (row, created, paused)."""
    paused = is_paused(store, app, message.conversation or message.from_user)
    row, created = store.messages.save_inbound(app, message, key, brief=True)
    return row, created, paused
