"""Rule runs (table `rule_run`): what each rule did for each inbound message, the webhook queue (runs
of action "webhook" still "pending") and the group robot queue (action "notify"), the rule
statistics, and the runs in Message JSON "automation".

Times are naive UTC (aware datetimes are converted); JSON times are ISO 8601 with "Z".
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterable, Optional, Sequence, Union

import peewee
from peewee import Case, fn

from .errors import guarded
from .models import (OPEN_RUN_STATUSES, RUN_ACTIONS, RUN_FAILURE_STATUSES, RUN_PATHS, RUN_STATUSES,
                     Message, RuleRun)
from .serialize import automation_json, run_json, to_json
from .times import iso, naive_utc, utcnow

INTERRUPTED = "interrupted: wecomd stopped while it ran"


class RuleRuns:
    """The runs in the database `db` (named `name`), through the bound models `RuleRun` and `Message`
    (a run is only started for a stored message)."""

    def __init__(self, db: peewee.Database, name: str, RuleRun: type[RuleRun], Message: type[Message]) -> None:
        self.db, self.name, self.RuleRun, self.Message = db, name, RuleRun, Message

    @guarded("record the rule run")
    def start(self, message_id: int, app: str, user: Optional[str], rule: str, action: str,
              status: str = "running", url: Optional[str] = None,
              payload: Union[str, bytes, None] = None) -> dict:
        """Record that `rule` fired `action` for message `message_id`; return the run.

        `payload` (a webhook body) is kept as UTF-8 text, so encoding it gives back the exact
        bytes. A run started in a final status ("skipped", ...) is finished at once. KeyError
        without such a message; ValueError for an unknown action or status.
        """
        _check(action, RUN_ACTIONS, "action")
        _check(status, RUN_STATUSES, "status")
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8")
        now = utcnow(whole_seconds=True)
        with self.db.atomic():
            if not self.Message.select().where(self.Message.id == message_id).exists():
                raise KeyError("no message with id %r" % (message_id,))
            run = self.RuleRun.create(
                message_id=message_id, app=app, user=user, rule=rule, action=action, status=status,
                url=url, payload=payload, attempts=0, started_at=now,
                finished_at=None if status in OPEN_RUN_STATUSES else now)
            run = self.RuleRun.get_by_id(run.id)
        return run_json(run)

    @guarded("finish the rule run")
    def finish(self, run_id: int, status: str, *, exit_code: Optional[int] = None,
               duration_ms: Optional[float] = None, output: Optional[str] = None,
               error: Optional[str] = None, path: Optional[str] = None,
               reply_message_id: Optional[int] = None) -> dict:
        """Give a run its final status and set finished_at; return the run.

        Only the optional values given (not None) change. The retry schedule is cleared.
        ValueError unless `status` is final (ok, failed, timeout, error, skipped); KeyError
        without such a run.
        """
        if status in OPEN_RUN_STATUSES:
            raise ValueError("finish_run needs a final status, not %r" % (status,))
        _check(status, RUN_STATUSES, "status")
        R = self.RuleRun
        changes = {R.status: status, R.finished_at: utcnow(whole_seconds=True), R.next_attempt_at: None}
        if path is not None:
            _check(path, RUN_PATHS, "path")
        for column, value in ((R.exit_code, exit_code), (R.duration_ms, duration_ms),
                              (R.output, output), (R.error, error), (R.path, path),
                              (R.reply_message_id, reply_message_id)):
            if value is not None:
                changes[column] = value
        return self._update(run_id, changes)

    @guarded("set the rule run's path")
    def set_path(self, run_id: int, path: str, reply_message_id: Optional[int] = None) -> dict:
        """Record how a run's answer went out (passive, api or none); return the run."""
        _check(path, RUN_PATHS, "path")
        R = self.RuleRun
        changes = {R.path: path}
        if reply_message_id is not None:
            changes[R.reply_message_id] = reply_message_id
        return self._update(run_id, changes)

    def link_answer(self, run_id: int, message_id: int) -> None:
        """Record `message_id` as the answer of run `run_id`; no run, no change. Part of the caller's
        transaction and error guard (Messages.save_passive_reply)."""
        R = self.RuleRun
        R.update({R.reply_message_id: message_id}).where(R.id == run_id).execute()

    @guarded("read the rule run")
    def get(self, run_id: int) -> Optional[dict]:
        """Every column of one run, or None."""
        run = self.RuleRun.get_or_none(self.RuleRun.id == run_id)
        return run_json(run) if run is not None else None

    @guarded("read rule runs")
    def for_messages(self, message_ids: Sequence[int]) -> dict[int, list[dict]]:
        """The "automation" lists of these messages, oldest run first, in one query.

        Every id asked for is a key; a message without runs maps to [].
        """
        return self._automation(message_ids)

    def attach(self, rows: Iterable[Message]) -> list[dict]:
        """Message JSON of message rows, with their "automation" lists read in one query (a database
        failure is the caller's: it reads the rows it shows)."""
        rows = list(rows)
        runs = self._automation([row.id for row in rows])
        return [dict(to_json(row), automation=runs[row.id]) for row in rows]

    def _automation(self, message_ids: Sequence[int]) -> dict[int, list[dict]]:
        found: dict[int, list[dict]] = {int(i): [] for i in message_ids}
        if not found:
            return found
        R = self.RuleRun
        for run in R.select().where(R.message_id.in_(list(found))).order_by(R.id):
            found[run.message_id].append(automation_json(run))
        return found

    @guarded("count rule runs")
    def stats(self) -> dict[str, dict]:
        """{rule: {"hits", "last_fired", "failures"}} for every rule that has runs.

        hits: distinct messages the rule fired on; last_fired: when it last did (ISO "Z"), both
        leaving out "skipped" runs (automation paused, nothing done); failures: runs that
        failed, timed out or broke (status failed, timeout or error). Configured rules that
        never fired are absent.
        """
        R = self.RuleRun
        fired = R.status != "skipped"
        query = R.select(
            R.rule, fn.COUNT(fn.DISTINCT(Case(None, [(fired, R.message_id)]))).alias("hits"),
            fn.MAX(Case(None, [(fired, R.started_at)])).alias("last_fired"),
            fn.COUNT(Case(None, [(R.status.in_(RUN_FAILURE_STATUSES), 1)])).alias("failures"),
        ).group_by(R.rule)
        return {row["rule"]: {"hits": row["hits"], "failures": row["failures"],
                              "last_fired": iso(R.started_at.python_value(row["last_fired"]))}
                for row in query.dicts()}

    @guarded("mark interrupted rule runs")
    def interrupt_running(self, now: datetime) -> int:
        """At start-up: runs a crash left "running" become "error"; return how many."""
        R = self.RuleRun
        with self.db.atomic():
            return R.update({R.status: "error", R.error: INTERRUPTED, R.finished_at: naive_utc(now)}) \
                .where(R.status == "running").execute()

    # ------------------------------------------------------------ the webhook queue

    @guarded("list due webhooks")
    def due_webhooks(self, now: datetime, limit: int = 20) -> list[dict]:
        """Pending webhook runs whose next attempt is due at `now`, oldest first."""
        R = self.RuleRun
        due = R.next_attempt_at.is_null() | (R.next_attempt_at <= naive_utc(now))
        query = R.select().where((R.action == "webhook") & (R.status == "pending") & due)
        return [run_json(run) for run in query.order_by(R.id).limit(max(1, int(limit)))]

    @guarded("record a webhook attempt")
    def record_webhook_attempt(self, run_id: int, error: Optional[str],
                               next_attempt_at: Optional[datetime]) -> dict:
        """Count one failed delivery of a pending run (webhook or notify) and schedule the next; it
        stays pending.

        KeyError without such a run; ValueError unless it is pending.
        """
        R = self.RuleRun
        changes = {R.attempts: R.attempts + 1, R.error: error,
                   R.next_attempt_at: naive_utc(next_attempt_at)}
        return self._update(run_id, changes, only_if="pending")

    # ------------------------------------------------------------ the group robot queue (notify)

    @guarded("list due group robot posts")
    def due_notifies(self, now: datetime, limit: int = 20) -> list[dict]:
        """Pending notify runs whose next attempt is due at `now`, oldest first."""
        R = self.RuleRun
        due = R.next_attempt_at.is_null() | (R.next_attempt_at <= naive_utc(now))
        query = R.select().where((R.action == "notify") & (R.status == "pending") & due)
        return [run_json(run) for run in query.order_by(R.id).limit(max(1, int(limit)))]

    @guarded("record a group robot post's progress")
    def notify_progress(self, run_id: int, payload: Optional[str] = None,
                        next_attempt_at: Optional[datetime] = None) -> dict:
        """Keep a pending notify run's payload (the parts it has sent so far) and when it is due
        next (None: now); its attempts are not counted. KeyError without such a run; ValueError
        unless it is pending."""
        R = self.RuleRun
        changes = {R.next_attempt_at: naive_utc(next_attempt_at)}
        if payload is not None:
            changes[R.payload] = payload
        return self._update(run_id, changes, only_if="pending")

    @guarded("read recent group robot posts")
    def recent_notifies(self, since: datetime) -> list[tuple[str, datetime]]:
        """(payload, finished_at) of the notify runs that finished "ok" at `since` or later: what
        the robots were sent before a restart (their per-minute limit outlives the process)."""
        R = self.RuleRun
        query = R.select(R.payload, R.finished_at).where(
            (R.action == "notify") & (R.status == "ok") & (R.finished_at >= naive_utc(since)))
        return [(run.payload, run.finished_at) for run in query.order_by(R.id)]

    def _update(self, run_id: int, changes: dict, only_if: Optional[str] = None) -> dict:
        R = self.RuleRun
        with self.db.atomic():
            run = R.get_or_none(R.id == run_id)
            if run is None:
                raise KeyError("no rule run with id %r" % (run_id,))
            if only_if is not None and run.status != only_if:
                raise ValueError("rule run %r is %s, not %s" % (run_id, run.status, only_if))
            R.update(changes).where(R.id == run_id).execute()
            run = R.get_by_id(run_id)
        return run_json(run)


def _check(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError("%s must be one of %s, not %r" % (what, ", ".join(allowed), value))
