"""RuleRunner: runs the rules on each new inbound message and delivers every answer exactly once.

An answer (a reply template, a command's result, a webhook's `{"reply": ...}`) that is ready within
`[rules] passive_budget` seconds becomes the passive reply to WeCom; any other answer goes out later
through the send API, via the durable outbox. Each action is recorded as a rule run linked to the
message, with the path its answer took. WeCom's retries never get here (the inbox calls `handle`
only for a newly stored message), so an action never starts twice. After an operator replies by hand,
replies and commands pause for that user (wecomd.automation.takeover); webhooks still forward, and
group robots (`notify`) are still told, through their own queue (wecomd.workers.notify).

Every answer the user gets is also stored as an outbound message marked automatic, naming its rule
(none for the app's own `reply =`): a passive one by the inbox, "sent", in the writer call that keeps
the passive reply, one sent later through the outbox as its pending rows. A WeCom retry never stores
a second one.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, List, Optional, Tuple

from wecomd.automation import rules as rulesmod
from wecomd.automation.commands import CommandResult, CommandRunner, refused
from wecomd.automation.takeover import PAUSED
from wecomd.config import AppConfig, BotConfig, Config
from wecomd.live import message_event
from wecomd.wecom.messages import Message
from wecomd.workers.notify import payload_for, redacted_url
from wecomd.workers.webhooks import WebhookSender, body_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """The passive reply to a message: its text, the rule that gave it (None: the app's own
    `reply =`) and that rule's run."""

    text: str
    rule: Optional[str] = None
    run_id: Optional[int] = None


class _Answers:
    """Decides, once per answer, whether it is the passive reply or goes through the send API."""

    def __init__(self) -> None:
        self.passive: Optional[Answer] = None
        self.closed = False  # the budget is over, or the passive slot is taken
        self.ready = asyncio.Event()

    def offer(self, text: str, run: dict) -> bool:
        """True when `text` (the answer of `run`) becomes the passive reply; False means: send it
        through the API."""
        if self.closed or self.passive is not None:
            return False
        self.passive, self.closed = Answer(text, run["rule"], run["id"]), True
        self.ready.set()
        return True

    def close(self) -> None:
        self.closed = True
        self.ready.set()


class RuleRunner:
    """One per process, owned by `Services`. It holds the compiled rules and the [rules] settings;
    `reconfigure` replaces both (a reload), and actions already started finish under the old ones."""

    def __init__(self, run_db: Callable[..., Awaitable[Any]], store: Any, outbox: Any, webhooks: WebhookSender,
                 commands: CommandRunner, config: Config, publish: Optional[Callable[[dict], None]] = None,
                 notifier: Any = None) -> None:
        self.run_db, self.store, self.outbox, self.webhooks = run_db, store, outbox, webhooks
        self.publish, self.notifier = publish, notifier  # notifier: workers.notify.NotifySender
        self.commands = commands
        # (app, user) -> the user's name for {user_name}, or None; set by Services (the directory, 微信客服).
        self.name_of: Optional[Callable[[str, Optional[str]], Awaitable[Optional[str]]]] = None
        self._tasks: set[asyncio.Task] = set()
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take the rules and settings of `config` (already checked by config.load: RuleError here
        would be a bug)."""
        self.rules = rulesmod.compile_rules(config.rules)
        self.settings = config.rules_settings
        self.api_base = config.wecom.api_base

    def select(self, app: str, message: Message) -> List[rulesmod.Match]:
        """The rules that fire for `message` of `app`, in the order they run."""
        return rulesmod.select(self.rules, app, message)

    def has_rules(self, app: str) -> bool:
        """Whether any rule may fire for a message of `app` (one with no `app =`, or naming it)."""
        return any(rule.app is None or rule.app == app for rule in self.rules)

    def webhook_target(self, rule_name: str) -> Tuple[Optional[str], Optional[str]]:
        """(url, secret) of a rule in the current config; (None, None) once it is gone."""
        rule = next((r for r in self.rules if r.name == rule_name), None)
        return (rule.webhook, rule.webhook_secret) if rule else (None, None)

    async def handle(self, app: AppConfig, row: dict, message: Message, matches: List[rulesmod.Match],
                     paused: bool, budget: Optional[float] = None) -> Optional[Answer]:
        """Run the matched rules for a newly stored message; return the passive reply, if any: a
        rule's, or else the app's own `reply =` (default_reply). `budget`: seconds to wait for a
        passive answer, [rules] passive_budget unless given (0 when no passive reply can be sent:
        the caller sends the one returned with send_answer)."""
        answers, started = _Answers(), []
        for match in matches:
            started += await self._start(match, app, row, message, answers, paused)
        await self._wait(answers, started, self.settings.passive_budget if budget is None else budget)
        answers.close()
        await self._changed(row["id"])
        if answers.passive is None and not paused and default_reply(app, message, matches):
            return Answer(app.reply)
        return answers.passive

    async def _wait(self, answers: _Answers, started: List[asyncio.Task], budget: float) -> None:
        """Until an answer is passive, every action of this message is done, or the budget is over."""
        loop = asyncio.get_running_loop()
        deadline, pending = loop.time() + budget, set(started)
        waiter = asyncio.ensure_future(answers.ready.wait())
        try:
            while pending and not answers.closed and loop.time() < deadline:
                _, pending = await asyncio.wait(pending | {waiter}, timeout=deadline - loop.time(),
                                                return_when=asyncio.FIRST_COMPLETED)
                pending.discard(waiter)
        finally:
            waiter.cancel()

    async def _start(self, match: rulesmod.Match, app: AppConfig, row: dict, message: Message,
                     answers: _Answers, paused: bool) -> List[asyncio.Task]:
        """Start one rule's actions; returns the tasks whose answers may still become passive."""
        rule, started = match.rule, []
        # The sender's name may cost a lookup (a 微信客服 nickname): only for a rule that uses it.
        name = await self._user_name(app.name, row) if rule.wants("user_name") else None
        fields = rulesmod.template_fields(match, app.name, message, name)
        if rule.webhook and not (rule.stream and isinstance(app, BotConfig)):  # a bot streams it (bots.RuleSources)
            started.append(await self._webhook(rule, app, row, answers))
        if rule.notify and self.notifier is not None:
            # Queued for the group robot: not awaited and never an answer, so neither the callback
            # nor the passive-reply budget waits for it. Like a webhook, it runs during a takeover.
            self._spawn(self._notify(match, fields, app, row, message))
        for action, configured in (("reply", rule.reply), ("run", rule.run)):
            if configured and paused:
                run = await self._record(row, app, rule, action, "skipped")
                await self.run_db(self.store.runs.finish, run["id"], "skipped", error=PAUSED, path="none")
            elif configured and action == "run" and isinstance(app, BotConfig):
                continue  # a 智能机器人 streams the command's output instead (wecomd.bots.RuleSources)
            elif configured and action == "reply":
                run = await self._record(row, app, rule, "reply", "running")
                await self._deliver(run, app, row, rulesmod.render(rule.reply, fields), answers, status="ok")
            elif configured:
                run = await self._record(row, app, rule, "run", "running")
                started.append(self._spawn(self._command(run, rule, fields, message, app, row, answers)))
        return started

    async def _record(self, row: dict, app: AppConfig, rule: rulesmod.Rule, action: str, status: str, **kw: Any) -> dict:
        return await self.run_db(self.store.runs.start, row["id"], app.name, row.get("from_user") or "",
                                 rule.name, action, status, **kw)

    async def _command(self, run: dict, rule: rulesmod.Rule, fields: dict, message: Message,
                       app: AppConfig, row: dict, answers: _Answers) -> None:
        try:
            argv = rulesmod.command_argv(rule, fields)
        except rulesmod.CommandRefused as exc:  # a message tried to pass an option: nothing runs
            result = refused(exc.program, str(exc), exc.why)
        else:
            result = await self.commands.run(argv, rulesmod.command_env(fields, message), rule.timeout)
        await self.run_db(self.store.runs.finish, run["id"], result.status, exit_code=result.exit_code,
                          duration_ms=result.duration_ms, output=result.excerpt(), error=result.error)
        await self._deliver(run, app, row, command_answer(result, rule), answers)
        await self._changed(row["id"])

    async def _webhook(self, rule: rulesmod.Rule, app: AppConfig, row: dict, answers: _Answers) -> asyncio.Task:
        public = {k: v for k, v in row.items() if k != "reply"}
        payload = body_for(public, rule.name, app.name).decode("utf-8")
        run = await self._record(row, app, rule, "webhook", "pending", url=rule.webhook, payload=payload)

        async def first_attempt() -> None:
            delivered, reply = await self.webhooks.attempt(run)
            if reply:
                await self._deliver(run, app, row, reply, answers)
            elif delivered:
                await self.run_db(self.store.runs.set_path, run["id"], "none")

        return self._spawn(first_attempt())

    async def _notify(self, match: rulesmod.Match, fields: dict, app: AppConfig, row: dict, message: Message) -> None:
        rule = match.rule
        payload = payload_for(rule.notify, rule.notify_format, rulesmod.notify_text(match, fields, message))
        await self._record(row, app, rule, "notify", "pending", url=redacted_url(self.api_base), payload=payload)
        self.notifier.wake()
        await self._changed(row["id"])

    async def _deliver(self, run: dict, app: AppConfig, row: dict, text: str, answers: _Answers,
                       status: Optional[str] = None) -> None:
        """Passive if still possible, else exactly one message through the outbox."""
        if status:
            await self.run_db(self.store.runs.finish, run["id"], status)
        if not text.strip():
            await self.run_db(self.store.runs.set_path, run["id"], "none")
        elif answers.offer(text, run):
            await self.run_db(self.store.runs.set_path, run["id"], "passive")
        else:
            await self.send_later(run, app.name, row.get("from_user") or "", text)

    async def send_later(self, run: dict, app: str, user: str, text: str) -> None:
        """Deliver an answer that missed the passive budget through the send API (the outbox)."""
        rows = await self.outbox.submit(app, user, text, operator="rule:%s" % run["rule"], rule=run["rule"])
        await self.run_db(self.store.runs.set_path, run["id"], "api", rows[0]["id"])

    async def _user_name(self, app: str, row: dict) -> Optional[str]:
        """{user_name}: the sender's name from `name_of` (set by Services), None when unknown."""
        try:
            return await self.name_of(app, row.get("from_user")) if self.name_of is not None else None
        except Exception:  # a name is never worth an answer: {user_name} falls back to from_user
            logger.exception("rules: the name of %s could not be read", row.get("from_user"))
            return None

    async def send_answer(self, app: str, user: str, answer: Answer) -> list:
        """Send what `handle` returned through the outbox instead, for a channel or a delivery that
        has no passive reply (微信客服; a callback answered from the intake journal); its rows."""
        rows = await self.outbox.submit(app, user, answer.text, rule=answer.rule)
        if answer.run_id is not None:
            await self.run_db(self.store.runs.set_path, answer.run_id, "api", rows[0]["id"])
        return rows

    async def on_webhook_reply(self, run: dict, text: str) -> None:
        """A retried webhook delivery answered with a reply: always too late to be passive."""
        await self.send_later(run, run["app"], run["user"], text)

    async def _changed(self, message_id: int) -> None:
        """Push the message again with its automation list, as the dashboard merges by id."""
        if self.publish is not None:
            message = await self.run_db(self.store.messages.get, message_id)
            if message is not None:
                self.publish(message_event(message))

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task:
        task = asyncio.ensure_future(self._guard(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("automation: an action failed unexpectedly")

    async def close(self) -> None:
        """Cancel actions still running (their commands are killed); their runs stay recorded."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def running(self) -> int:
        return len(self._tasks)


def default_reply(app: AppConfig, message: Message, matches: List[rulesmod.Match]) -> Optional[str]:
    """The app's own `reply =`, when it answers: ordinary messages that no rule answers (a
    webhook-only rule, such as a forwarder with `continue = yes`, does not count unless it replies)."""
    # A bot's answer may also come from a model (ask), a streaming webhook or a card (wecomd.bots).
    answering = any(m.rule.reply or m.rule.run or m.rule.ask or m.rule.card is not None
                    or (m.rule.webhook and m.rule.stream) for m in matches)
    return app.reply if app.reply and message.msgtype != "event" and not answering else None


def command_answer(result: CommandResult, rule: rulesmod.Rule) -> str:
    """What the user is told when a command finishes: its output, or why it did not succeed."""
    output = result.output.strip()
    if result.status == "ok":
        return output or "已完成"
    if result.status == "timeout":
        return "执行超时（%g 秒）" % rule.timeout
    if result.status == "failed":
        tail = ("\n" + output[-500:]) if output else ""
        return "执行失败（退出码 %s）%s" % (result.exit_code, tail)
    return "无法执行：%s" % (result.error or "unknown error")
