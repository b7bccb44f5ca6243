"""The 智能机器人 channel: what a bot callback becomes, after its transport (handlers/bot.py) has
verified, decrypted and parsed it (wecomd.wecom.bot).

- A user message goes through the inbox like an app message (stored once by msgid, live, rules)
  and is answered with a stream. Its id is derived from the bot and the msgid, so a WeCom retry gets
  the same stream and never starts a second answer. An answer that is ready at once (a rule's reply
  template, the bot's `reply =`) is the first frame, finished; one that streams (an `ask` rule, a
  command or a streaming webhook: `StreamSource`) grows in the database while WeCom polls it.
- A refresh poll ("stream" message) is answered from the database: the whole content so far, and
  finish once done. An unknown or expired id gets finish at once, so WeCom stops polling.
- An answer not finished by the bot's `stream_deadline` closes the stream with a short notice;
  when it is complete it is posted once to the message's response_url (claimed in the database,
  so never twice, and never after its hour).
- enter_chat may be answered with a welcome text (a rule `when = event enter_chat`); feedback_event
  is stored with the answer it rates and answered empty; other events are answered empty.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from wecomd.config import BotConfig, Config
from wecomd.inbox import AppliedBefore, NotStored
from wecomd.store import StoreError
from wecomd.live import message_event
from wecomd.store.times import from_iso, utcnow
from wecomd.wecom import bot as botproto
from wecomd.wecom import cards
from wecomd.wecom.messages import Message

logger = logging.getLogger(__name__)

WRITE_EVERY = 0.2  # seconds between writes of a growing answer (each refresh reads the last one)
DEADLINE_NOTICE = "\n\n（回答还在生成，完成后会另行发送）"
RESTART_NOTICE = "\n\n（这条回答中断了，请再问一次）"
ORPHAN_GRACE = timedelta(seconds=5)  # past its deadline, an unfinished stream has no process working on it
ERROR_NOTICE = "\n\n（回答出错了：%s）"
RESPONSE_TIMEOUT = 10.0

# Where a streamed answer comes from: given the bot, the message and its stored row, an async
# iterator of text pieces (appended in order), or None when no streaming rule answers it.
StreamSource = Callable[[BotConfig, Message, dict], Optional[AsyncIterator[str]]]


def stream_id_for(bot: str, message: Message) -> str:
    """The stream of a message: the same for every delivery of it (a retry finds its stream)."""
    return _stream_id(bot, message.msg_id or message.raw)


def _feedback_of(message: Message) -> Optional[dict]:
    """A feedback_event's rating, with the id of the stream it rates; None for any other message."""
    event = (message.fields.get("event") or {}).get("feedback_event") if message.event == "feedback_event" else None
    return event if isinstance(event, dict) and isinstance(event.get("id"), str) else None


def _stream_id(bot: str, msgid: str) -> str:
    return "s" + hashlib.sha256(("%s\n%s" % (bot, msgid)).encode()).hexdigest()[:24]


class ReplyRefused(ValueError):
    """A manual reply a bot conversation cannot take now (WeCom allows one per message, within an hour)."""


def frame(stream: Optional[dict], stream_id: str, first: bool = False) -> dict:
    """The stream frame of `stream` as stored (a finished empty one when there is none)."""
    if stream is None:
        return botproto.stream_frame(stream_id, "", True)
    return botproto.stream_frame(stream["stream_id"], stream["content"], stream["finished"],
                                 feedback_id=stream["feedback_id"] if first else None)


class Labeled:
    """An answer's pieces with where they come from (`source`, kept with the stream)."""

    def __init__(self, pieces: AsyncIterator[str], source: str, rule: Optional[str] = None) -> None:
        self.pieces, self.source, self.rule = pieces, source, rule

    def __aiter__(self) -> AsyncIterator[str]:
        return self.pieces.__aiter__()

    async def aclose(self) -> None:
        closer = getattr(self.pieces, "aclose", None)
        if closer is not None:
            await closer()


class _Growing:
    """An answer as it grows, written to its stream at most every WRITE_EVERY seconds and at the
    latest WRITE_EVERY after a piece came: a first word is never held back until the next one.
    Each write carries the whole text so far; the database thread runs them in order."""

    def __init__(self, channel: "BotChannel", stream: dict) -> None:
        self.channel, self.stream = channel, stream
        self.text, self.written, self.open = "", "", True
        self.last_write = float("-inf")
        self.timer: Optional[asyncio.Task] = None

    async def add(self, piece: str) -> None:
        self.text += piece
        wait = self.last_write + WRITE_EVERY - time.monotonic()
        if wait <= 0:
            await self.write()
        elif self.timer is None:
            self.timer = self.channel._spawn(self._later(wait))

    async def _later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self.timer = None
        await self.write()

    async def write(self) -> None:
        if not self.open or self.text == self.written:
            return
        text, channel, stream_id = self.text, self.channel, self.stream["stream_id"]
        self.last_write, self.written = time.monotonic(), text
        try:
            self.open = await channel.run_db(channel.store.bot_streams.update, stream_id, botproto.cut(text),
                                             channel.clock())
        except StoreError as exc:  # the next write (or the finish) tries again with everything
            logger.warning("bot: stream %s: a growing answer was not written: %s", stream_id, exc)
            self.written = ""
            return
        if self.open and stream_id in channel._live:  # committed: polls may see it now
            channel._live[stream_id] = dict(self.stream, content=botproto.cut(text))
            channel._publish(dict(self.stream, content=text))
        elif not self.open:  # closed by the deadline: the rest goes to the response_url
            channel._live.pop(stream_id, None)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class RuleSources:
    """The StreamSource of the rules: a message whose first matching rule has `ask = NAME` is
    answered by that [llm:NAME] (wecomd.automation.streams.ask_llm), with the conversation's last
    `history` messages as the earlier turns."""

    def __init__(self, select: Callable[[str, Message], list], read: Callable[..., Awaitable[Any]], store: Any,
                 config: Config) -> None:
        self.select, self.read, self.store = select, read, store
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.llms = config.llms
        self.output_limit = config.rules_settings.output_limit

    def __call__(self, bot: BotConfig, message: Message, inbound: Any) -> Optional[AsyncIterator[str]]:
        for match in self.select(bot.name, message):
            rule = match.rule
            if rule.ask and rule.ask in self.llms:
                return Labeled(self._ask(bot, message, inbound, rule), "model:%s" % rule.ask, rule.name)
            if rule.run:  # the rule runner leaves a bot's commands to this: their stdout streams
                return Labeled(self._run(bot, message, match), "command:%s" % rule.name, rule.name)
            if rule.webhook and rule.stream:  # likewise a webhook with stream = yes: its body streams
                return Labeled(self._webhook(bot, inbound, rule), "webhook:%s" % rule.name, rule.name)
        return None

    def card(self, bot: BotConfig, message: Message) -> Optional[tuple]:
        """(rule name, card with its template fields filled in) of the first matching rule that
        answers with a card, or None when the first answering rule does not."""
        from wecomd.automation import rules as rulesmod

        for match in self.select(bot.name, message):
            rule = match.rule
            if rule.card is not None:
                return rule.name, rulesmod.render_card(rule.card, rulesmod.template_fields(match, bot.name, message))
            if rule.reply or rule.ask or rule.run or (rule.webhook and rule.stream):
                return None
        return None

    async def _webhook(self, bot: BotConfig, inbound: Any, rule: Any) -> AsyncIterator[str]:
        from wecomd.automation.streams import signed_headers, stream_webhook
        from wecomd.workers.webhooks import body_for

        row = await self.read(self.store.messages.get, inbound.id)
        body = body_for(row or {"id": inbound.id}, rule.name, bot.name)
        client = AsyncHTTPClient(force_instance=True)
        try:
            async for piece in stream_webhook(client, rule.webhook, body,
                                              signed_headers(body, rule.name, rule.webhook_secret, str(inbound.id))):
                yield piece
        finally:
            client.close()

    async def _run(self, bot: BotConfig, message: Message, match: Any) -> AsyncIterator[str]:
        from wecomd.automation import rules as rulesmod
        from wecomd.automation.streams import StreamSourceError, stream_command

        fields = rulesmod.template_fields(match, bot.name, message)
        try:
            argv = rulesmod.command_argv(match.rule, fields)
        except rulesmod.CommandRefused as exc:  # a message tried to pass an option: nothing runs
            raise StreamSourceError("refused: %s" % exc.why)
        async for line in stream_command(argv, rulesmod.command_env(fields, message), match.rule.timeout,
                                         self.output_limit):
            yield line

    async def _ask(self, bot: BotConfig, message: Message, inbound: Any, rule: Any) -> AsyncIterator[str]:
        from wecomd.automation.streams import ask_llm

        user = message.conversation or message.from_user
        rows, _ = await self.read(self.store.messages.page, app=bot.name, user=user, limit=rule.history + 1)
        turns = [("user" if row["direction"] == "in" else "assistant", row["content"])
                 for row in reversed(rows) if row["id"] != inbound.id and row["content"] and row["msgtype"] != "stream"]
        client = AsyncHTTPClient(force_instance=True)  # its own connection: a long stream holds it
        try:
            async for piece in ask_llm(client, self.llms[rule.ask], turns[-rule.history:], message.content or ""):
                yield piece
        finally:
            client.close()


class BotChannel:
    """One per process, built by Services; see the module docstring."""

    def __init__(self, run_db: Callable[..., Awaitable[Any]], read: Callable[..., Awaitable[Any]], store: Any,
                 inbox: Any, publish: Callable[[dict], None], config: Config,
                 sources: Optional[StreamSource] = None, clock: Callable[[], datetime] = utcnow,
                 intake: Any = None) -> None:
        self.run_db, self.read, self.store, self.inbox, self.publish = run_db, read, store, inbox, publish
        self.sources, self.clock = sources, clock
        self.reconfigure(config)
        self._tasks: set = set()
        self.responses = 0  # response_url calls made (tests, benchmarks)
        # stream id -> the stream as this process last wrote it, while it generates the answer: a poll
        # for it is answered without a database read (any other poll reads the database).
        self._live: dict = {}
        # wecomd.intake: while a 微信客服 pull keeps the database busy, a user's message is recorded in
        # the intake journal and answered with its stream, open and empty; the stream ids recorded
        # and not applied yet, with their bot: polls for them get the same frame until then.
        self.intake = intake
        self._waiting: dict = {}
        # stream id -> the rest of a journaled message's answer, once the message is stored (`apply`)
        self._answering: dict = {}
        if intake is not None:
            intake.register("bot", self.apply)

    def reconfigure(self, config: Config) -> None:
        self.bots = config.bots

    def bot(self, name: str) -> Optional[BotConfig]:
        return self.bots.get(name)

    async def handle(self, bot: BotConfig, message: Message) -> tuple:
        """(the plaintext frame to answer `message` with, or None for an empty answer; what became of
        it: "polled", "stored" or "journaled"). NotStored (from the inbox) when the message could not
        be stored or recorded: the channel must not answer 2xx."""
        if message.msgtype == "stream":
            return await self.refresh(bot, botproto.stream_id(message) or ""), "polled"
        if self._journals(bot, message):
            return await self._journal(bot, message), "journaled"
        return await self._answer(bot, message), "stored"

    def _journals(self, bot: BotConfig, message: Message) -> bool:
        """Whether `message` goes to the intake journal while it is in use: a user's message, unless
        a card rule answers it, and a feedback_event (answered empty in any case). Other events keep
        their path: their answer (a welcome, a card) is in the reply to the callback itself."""
        if self.intake is None or not self.intake.active():
            return False
        if message.msgtype == "event":
            return message.event == "feedback_event"
        card_of = getattr(self.sources, "card", None)
        return card_of is None or card_of(bot, message) is None

    async def _journal(self, bot: BotConfig, message: Message) -> Optional[dict]:
        try:
            await self.intake.record("bot", bot.name, message.raw)
        except StoreError as exc:
            raise NotStored(str(exc)) from exc
        if message.msgtype == "event":  # feedback: stored with the answer it rates once applied
            return None
        stream_id = stream_id_for(bot.name, message)
        self._waiting[stream_id] = bot.name
        return botproto.stream_frame(stream_id, "", False)

    async def apply(self, _app: Any, name: str, body: str, stamp: tuple) -> Optional[asyncio.Future]:
        """Apply one journaled message (wecomd.intake): stored once, with the entry's mark, then
        answered as `handle` answers it, into its stream (WeCom's polls read it from then on).

        Once the message is stored, what is left of its answer (a webhook rule waited for within the
        passive budget, as without the journal) is returned as a task: the intake applies the next
        entries meanwhile and a stop waits for it. A feedback_event waits for the answer it rates."""
        message = botproto.parse(body)
        stream_id = stream_id_for(name, message)
        rated = self._answering.get((_feedback_of(message) or {}).get("id"))
        if rated is not None:  # its stream is started by that answer: the rating is kept with it
            await asyncio.wait({rated})
        bot = self.bot(name)
        stored = asyncio.get_running_loop().create_future()
        answering = asyncio.ensure_future(self._answer(bot, message, stamp, stored) if bot is not None
                                          else self.inbox.keep_journaled(name, message, stamp))  # gone: not answered
        await asyncio.wait({answering, stored}, return_when=asyncio.FIRST_COMPLETED)
        if not answering.done():
            self._answering[stream_id] = answering
            answering.add_done_callback(lambda task: self._answered(stream_id, task))
            return answering
        self._waiting.pop(stream_id, None)
        try:
            answering.result()
        except AppliedBefore:
            pass
        except NotStored as exc:  # the database refused: the intake applies the entry again later
            raise exc.__cause__ if isinstance(exc.__cause__, StoreError) else StoreError(str(exc))
        return None

    def _answered(self, stream_id: str, task: asyncio.Future) -> None:
        """The rest of a journaled message's answer is done (`apply`): polls read its stream now. (A
        WeCom retry journaled meanwhile may have a task of its own for the stream: it stays.)"""
        self._waiting.pop(stream_id, None)
        if self._answering.get(stream_id) is task:
            del self._answering[stream_id]
        if not task.cancelled() and task.exception() is not None:  # stored; its answer failed
            logger.warning("bot: the answer of stream %s failed: %s", stream_id, task.exception())

    async def _answer(self, bot: BotConfig, message: Message, stamp: Optional[tuple] = None,
                      stored: Optional[asyncio.Future] = None) -> Optional[dict]:
        inbound = await self.inbox.receive("bot", bot, message, stamp=stamp, stored=stored)
        if message.event == "feedback_event":
            await self._feedback(message)
            return None
        card = await self._card(bot, message, inbound)
        if card is not None:
            return card
        if message.event == "enter_chat":
            return botproto.text_reply(inbound.reply) if inbound.reply else None
        if message.msgtype == "event":
            return None
        stream_id = stream_id_for(bot.name, message)
        if not inbound.created:  # a retry: the stream of the first delivery, whatever it holds now
            stream = await self.read(self.store.bot_streams.get, stream_id)
            return frame(stream, stream_id) if stream is not None or inbound.reply else None
        pieces = self.sources(bot, message, inbound) if self.sources and not inbound.reply else None
        if pieces is None and not inbound.reply:
            return None
        now = self.clock()
        stream, _ = await self.run_db(
            self.store.bot_streams.start, stream_id, bot.name, inbound.id, now,
            now + timedelta(seconds=bot.stream_deadline), content=inbound.reply or "", finished=pieces is None,
            source="reply" if pieces is None else getattr(pieces, "source", "stream"), feedback_id=stream_id,
            response_url=botproto.response_url(message))
        self._publish(stream)
        if pieces is not None:
            self._spawn(self._stream(bot, dict(stream, user=message.conversation or message.from_user), pieces))
        return frame(stream, stream_id, first=True)

    async def refresh(self, bot: BotConfig, stream_id: str) -> dict:
        """A refresh poll: the stream as stored; open and empty while its message waits in the
        intake journal; finished and empty when unknown (or another bot's)."""
        if self._waiting.get(stream_id) == bot.name:
            return botproto.stream_frame(stream_id, "", False)
        stream = self._live.get(stream_id)
        if stream is None and stream_id:
            stream = await self.read(self.store.bot_streams.get, stream_id)
        if stream is not None and stream["bot"] != bot.name:
            stream = None
        if stream is not None and not stream["finished"] and self._orphaned(stream):
            # The process answering it stopped (its deadline watchdog would have closed it): finish it
            # with what was written, so WeCom stops polling. Any instance may do this.
            stream = await self.run_db(self.store.bot_streams.finish, stream_id,
                                       botproto.cut(stream["content"] + RESTART_NOTICE), self.clock(),
                                       "interrupted") or await self.read(self.store.bot_streams.get, stream_id)
        return frame(stream, stream_id)

    def _orphaned(self, stream: dict) -> bool:
        deadline = from_iso(stream["deadline_at"])
        return self.clock() > deadline + ORPHAN_GRACE

    # ------------------------------------------------------------ template cards

    async def _card(self, bot: BotConfig, message: Message, inbound: Any) -> Optional[dict]:
        """The card answer of the first matching rule with `card =`, or None. To a template_card_event
        it replaces the clicked card (update_template_card with the event's task_id, within WeCom's
        5 s: nothing here waits on anything but the database); to a message or enter_chat it shows a
        new card whose task_id is derived from the message, so a retry shows the same one. Each card
        is recorded as the rule's run, and shown in the thread as an automatic answer."""
        card_of = getattr(self.sources, "card", None)
        found = card_of(bot, message) if card_of is not None else None
        if found is None:
            return None
        rule, card = found
        update = message.event == "template_card_event"
        task_id = botproto.card_task_id(message) if update else cards.task_id_for(bot.name, message.msg_id or message.raw)
        try:
            if update and not task_id:
                raise cards.CardError("the event carries no task_id")
            reply = cards.update_reply(card, task_id) if update else cards.card_reply(card, task_id)
        except cards.CardError as exc:  # a template field made it too long: nothing is sent
            logger.warning("bot %s: rule %s: the card cannot be sent: %s", bot.name, rule, exc)
            if inbound.created:
                await self._card_run(bot, message, inbound, rule, "error", str(exc))
            return None
        if inbound.created:
            await self._card_run(bot, message, inbound, rule, "ok", None, cards.title(card), update)
        return reply

    async def _card_run(self, bot: BotConfig, message: Message, inbound: Any, rule: str, status: str,
                        error: Optional[str], title: Optional[str] = None, update: bool = False) -> None:
        user = message.conversation or message.from_user or ""
        try:
            run = await self.run_db(self.store.runs.start, inbound.id, bot.name, message.from_user or "", rule,
                                    "card", "running")
            await self.run_db(self.store.runs.finish, run["id"], status, error=error,
                              path="passive" if status == "ok" else "none")
            if title is not None and user:
                text = ("[卡片已更新] " if update else "[卡片] ") + title
                answer = await self.run_db(self.store.messages.save_answer, bot.name, user, text, rule)
                self.publish(message_event(answer))
            row = await self.read(self.store.messages.get, inbound.id)
            if row is not None:
                self.publish(message_event(row))
        except StoreError as exc:  # the card still goes out: WeCom gets one chance at it
            logger.warning("bot %s: the card run of rule %s is not recorded: %s", bot.name, rule, exc)

    # ------------------------------------------------------------ a growing answer

    async def _stream(self, bot: BotConfig, stream: dict, pieces: AsyncIterator[str]) -> None:
        stream_id, notice = stream["stream_id"], None
        self._live[stream_id] = stream
        deadline = asyncio.get_running_loop().time() + bot.stream_deadline
        watchdog = self._spawn(self._close_at_deadline(stream_id, deadline))
        growing = _Growing(self, stream)
        try:
            async for piece in pieces:
                await growing.add(piece)
        except Exception as exc:  # any source failure ends the stream with a notice, never open
            logger.warning("bot %s: stream %s failed: %s", bot.name, stream_id, exc)
            notice = ERROR_NOTICE % (str(exc)[:200] or type(exc).__name__)
        finally:
            watchdog.cancel()
            growing.stop()
            self._live.pop(stream_id, None)  # from here on polls read the database
            closer = getattr(pieces, "aclose", None)
            if closer is not None:  # a stop mid-answer drops the model's connection or the command at once
                await closer()
        text = growing.text
        try:
            finished = await self.run_db(self.store.bot_streams.finish, stream_id, botproto.cut(text + (notice or "")),
                                         self.clock(), notice)
            if finished is not None:
                self._publish(finished)
                await self._keep_answer(bot, stream, text + (notice or ""), getattr(pieces, "rule", None))
                return
            await self._respond(stream_id, text + (notice or ""))  # closed by the deadline before this
            await self._keep_answer(bot, stream, text + (notice or ""), getattr(pieces, "rule", None))
        except StoreError as exc:
            logger.error("bot %s: stream %s could not be finished: %s", bot.name, stream_id, exc)

    async def _keep_answer(self, bot: BotConfig, stream: dict, text: str, rule: Optional[str]) -> None:
        """The finished answer as an automatic outbound message in the thread and exports."""
        if not text or not stream.get("user"):
            return
        try:
            answer = await self.run_db(self.store.messages.save_answer, bot.name, stream["user"], botproto.cut(text), rule)
        except StoreError as exc:
            logger.warning("bot %s: the answer of stream %s is not kept in the thread: %s", bot.name,
                           stream["stream_id"], exc)
            return
        self.publish(message_event(answer))

    async def _close_at_deadline(self, stream_id: str, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
        stream = self._live.get(stream_id) or await self.read(self.store.bot_streams.get, stream_id)
        content = (stream or {}).get("content") or ""
        self._live.pop(stream_id, None)  # closed: polls read the finished stream from the database
        closed = await self.run_db(self.store.bot_streams.finish, stream_id, botproto.cut(content + DEADLINE_NOTICE),
                                   self.clock(), "deadline", True)
        if closed is not None:
            logger.info("bot %s: stream %s passed its deadline; the answer goes to the response_url",
                        closed["bot"], stream_id)
            self._publish(closed)

    async def _respond(self, stream_id: str, text: str) -> Optional[str]:
        """Post `text` to the stream's message's response_url, at most once: None when WeCom took it,
        else why not (also kept on the stream)."""
        url = await self.run_db(self.store.bot_streams.claim_response, stream_id, self.clock())
        if url is None:
            logger.warning("bot: stream %s: no usable response_url (used, expired or none); answer not sent",
                           stream_id)
            await self._republish(stream_id)  # an expired one is marked so: the console shows it
            return "the message's response_url was used already, is older than an hour, or was never sent"
        self.responses += 1
        body = botproto.dumps(botproto.markdown_post(text))
        try:
            response = await AsyncHTTPClient().fetch(HTTPRequest(
                url, method="POST", body=body.encode("utf-8"), headers={"Content-Type": "application/json"},
                request_timeout=RESPONSE_TIMEOUT))
            answer = json.loads(response.body or b"{}")
            if answer.get("errcode"):
                raise ValueError("errcode %s: %s" % (answer.get("errcode"), answer.get("errmsg", "")))
        except (HTTPClientError, OSError, ValueError) as exc:
            logger.warning("bot: stream %s: response_url failed: %s", stream_id, exc)
            await self.run_db(self.store.bot_streams.response_failed, stream_id, str(exc), self.clock())
            await self._republish(stream_id)
            return str(exc)
        await self._republish(stream_id)
        return None

    async def _republish(self, stream_id: str) -> None:
        try:
            stream = await self.read(self.store.bot_streams.get, stream_id)
        except StoreError:
            return
        if stream is not None:
            self._publish(stream)

    async def reply(self, bot: BotConfig, user: str, text: str, operator: Optional[str]) -> dict:
        """An operator's reply in a bot conversation: through the response_url of the conversation's
        newest message, if it is unused and under an hour old (WeCom allows one call per message);
        ReplyRefused otherwise, with nothing sent. Stored as an outbound markdown message, "sent" or
        "failed" with WeCom's words."""
        rows, _ = await self.read(self.store.messages.page, app=bot.name, user=user, limit=50)
        last = next((row for row in rows if row["direction"] == "in" and row["msgtype"] != "stream"), None)
        url = botproto.response_url_of(last["fields"]) if last else None
        if last is None or not url:
            raise ReplyRefused("WeCom lets a bot answer only a message it was sent, through that message's "
                               "response_url; this conversation's newest message has none")
        stream_id, now = _stream_id(bot.name, last["msg_id"] or str(last["id"])), self.clock()
        await self.run_db(self.store.bot_streams.start, stream_id, bot.name, last["id"], now, now, finished=True,
                          source="manual", response_url=url)
        error = await self._respond(stream_id, text)
        if error is not None and error.startswith("the message's response_url"):
            raise ReplyRefused("the newest message's response_url was used already or is older than an "
                               "hour: WeCom allows one answer per message; wait for the user's next message")
        row = await self.run_db(self.store.outbox.save, bot.name, user, "markdown", text,
                                botproto.markdown_post(text), operator=operator,
                                status="failed" if error else "sent")
        if error:
            row = await self.run_db(self.store.outbox.set_status, row["id"], "failed", "response_url: " + error)
        self.publish(message_event(row))
        return row

    # ------------------------------------------------------------ the console

    async def annotate_messages(self, rows: list) -> list:
        """Message JSON rows with "answer" on each inbound bot message that has one: its source,
        notice, feedback and response_url state (BotStreams.answers); one read, none without bots."""
        wanted = [row["id"] for row in rows if row.get("direction") == "in" and row.get("app") in self.bots]
        if wanted:
            answers = await self.read(self.store.bot_streams.answers, wanted)
            for row in rows:
                if row["id"] in answers:
                    row["answer"] = answers[row["id"]]
        return rows

    async def annotate_conversations(self, rows: list) -> list:
        """Conversation JSON rows of bots with "chat": "group" or "single", from the newest inbound
        message (the last message may be the bot's own answer); one read, none without bots."""
        pairs = [(row["app"], row["user"]) for row in rows if row.get("app") in self.bots and row.get("user")]
        if pairs:
            found = await self.read(self.store.messages.newest_inbound_fields, pairs)
            for row in rows:
                fields = found.get((row.get("app"), row.get("user")))
                if fields is not None:
                    row["chat"] = "group" if fields.get("chattype") == "group" else "single"
        return rows

    async def _feedback(self, message: Message) -> None:
        event = _feedback_of(message)
        if event is not None:
            stream = await self.run_db(self.store.bot_streams.feedback, event["id"], event, self.clock())
            if stream is not None:
                self._publish(stream)

    # ------------------------------------------------------------ plumbing

    def _publish(self, stream: dict) -> None:
        self.publish({"type": "stream", "app": stream["bot"], "message_id": stream["message_id"],
                      "stream": {key: stream[key] for key in ("stream_id", "content", "finished", "notice",
                                                              "source", "feedback", "response_state", "response_error")}})

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop: streams in flight end here; their rows stay unfinished, and a poll after the restart
        gets what was written."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
