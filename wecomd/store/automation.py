"""Storage of rules and automation: rule runs (with the webhook queue), takeover pauses, and the
automatic answers stored as outbound messages.

`Store` inherits these queries from `AutomationQueries`; the models are declared here unbound and
bound per Store, as the message models are.
"""
from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Iterator, Optional, Sequence, Union

import peewee
from peewee import EXCLUDED, Case, fn

from .models import OPEN_RUN_STATUSES, RUN_ACTIONS, RUN_FAILURE_STATUSES, RUN_PATHS, RUN_STATUSES, RuleRun, Takeover
from .errors import guarded
from .search import search_text
from .serialize import automation_json, dumps, run_json, to_json
from .times import iso, naive_utc, utcnow

INTERRUPTED = "interrupted: wecomd stopped while it ran"


class AutomationQueries:
    """Rule runs, the webhook queue and takeover pauses; a part of Store.

    Expects `db`, `Message`, `RuleRun`, `Takeover` and `_failures` from Store. Times are naive UTC
    (aware datetimes are converted); JSON times are ISO 8601 with "Z".
    """

    db: peewee.Database
    Message: type
    RuleRun: type[RuleRun]
    Takeover: type[Takeover]
    _sql_cache: dict
    _blank_row: dict
    _returning: bool

    # ------------------------------------------------------------ automatic answers

    @guarded("save the automatic answer")
    def save_answer(self, app: str, user: str, text: str, rule: Optional[str] = None) -> dict:
        """Store a passive reply (a rule's, or the app's own `reply =` when `rule` is None) as an
        outbound message, in the caller's transaction; return its JSON.

        The row is "sent" at once: WeCom got it in the callback's answer, so the outbox never
        takes it. It is marked automatic ("passive") with its rule, and counted in its
        conversation. On the callback path (automation.store_answered): one INSERT, its SQL built
        once, and its JSON built from the values rather than read back.
        """
        now = utcnow(whole_seconds=True)
        fields = {"msgtype": "text", "text": {"content": text}}
        values = dict(
            app=app, direction="out", user=user, msgtype="text", to_user=user,
            create_time=int(now.replace(tzinfo=timezone.utc).timestamp()), received_at=now,
            content=text, status="sent", fields=dumps(fields), raw_xml="", deliveries=1,
            operator="rule:%s" % rule if rule is not None else None, updated_at=now,
            search_text=search_text("text", text, fields), attempts=0, automatic="passive", rule=rule)
        sql = self._sql_cache.get("answer")
        if sql is None:
            model_fields = self.Message._meta.fields
            sql = 'INSERT INTO "message" (%s) VALUES (%s)' % (
                ", ".join('"%s"' % model_fields[name].column_name for name in values),
                ", ".join([self.db.param] * len(values)))
            if self._returning:
                sql += ' RETURNING "id"'
            self._sql_cache["answer"] = sql
        model_fields = self.Message._meta.fields
        cursor = self.db.execute_sql(sql, [model_fields[k].db_value(v) for k, v in values.items()])
        row_id = cursor.fetchone()[0] if self._returning else cursor.lastrowid
        self._count_new(app, user, row_id, inbound=False)  # type: ignore[attr-defined]  # Store's
        return dict(to_json(SimpleNamespace(**{**self._blank_row, **values, "id": row_id})), automation=[])

    @guarded("save the passive reply")
    def save_passive_reply(self, message_id: int, reply: str, text: str, rule: Optional[str] = None,
                           run_id: Optional[int] = None) -> tuple[str, Optional[dict]]:
        """Keep the passive reply (XML) the rules gave an inbound message, and store its `text` as an
        automatic answer (save_answer) linked to the rule run `run_id`; return (the reply kept, the
        answer's JSON).

        The first reply saved wins, as in save_inbound, so every WeCom retry gets the same answer;
        a message that has one already gets no second answer row: (its reply, None). KeyError
        without such an inbound message.
        """
        M = self.Message
        with self.db.atomic():
            row = M.select(M.app, M.user, M.reply).where((M.id == message_id) & (M.direction == "in")).first()
            if row is None:
                raise KeyError("no inbound message with id %r" % (message_id,))
            if row.reply is not None:
                return row.reply, None
            M.update({M.reply: reply, M.updated_at: utcnow(whole_seconds=True)}).where(M.id == message_id).execute()
            answer = self.save_answer(row.app, row.user, text, rule)
            if run_id is not None:
                R = self.RuleRun
                R.update({R.reply_message_id: answer["id"]}).where(R.id == run_id).execute()
        return reply, answer

    # ------------------------------------------------------------ rule runs

    @guarded("record the rule run")
    def start_run(self, message_id: int, app: str, user: Optional[str], rule: str, action: str,
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
    def finish_run(self, run_id: int, status: str, *, exit_code: Optional[int] = None,
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
        return self._update_run(run_id, changes)

    @guarded("set the rule run's path")
    def set_run_path(self, run_id: int, path: str, reply_message_id: Optional[int] = None) -> dict:
        """Record how a run's answer went out (passive, api or none); return the run."""
        _check(path, RUN_PATHS, "path")
        R = self.RuleRun
        changes = {R.path: path}
        if reply_message_id is not None:
            changes[R.reply_message_id] = reply_message_id
        return self._update_run(run_id, changes)

    @guarded("read the rule run")
    def get_run(self, run_id: int) -> Optional[dict]:
        """Every column of one run, or None."""
        run = self.RuleRun.get_or_none(self.RuleRun.id == run_id)
        return run_json(run) if run is not None else None

    @guarded("read rule runs")
    def runs_for(self, message_ids: Sequence[int]) -> dict[int, list[dict]]:
        """The "automation" lists of these messages, oldest run first, in one query.

        Every id asked for is a key; a message without runs maps to [].
        """
        return self._runs_for(message_ids)

    def _runs_for(self, message_ids: Sequence[int]) -> dict[int, list[dict]]:
        found: dict[int, list[dict]] = {int(i): [] for i in message_ids}
        if not found:
            return found
        R = self.RuleRun
        for run in R.select().where(R.message_id.in_(list(found))).order_by(R.id):
            found[run.message_id].append(automation_json(run))
        return found

    @guarded("count rule runs")
    def rule_stats(self) -> dict[str, dict]:
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

    @guarded("count the outbox")
    def outbox_depth(self) -> int:
        """How many outbound messages are pending (waiting to be sent or retried): one COUNT, for /metrics."""
        M = self.Message
        return M.select().where((M.direction == "out") & (M.status == "pending")).count()

    def _update_run(self, run_id: int, changes: dict, only_if: Optional[str] = None) -> dict:
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

    # ------------------------------------------------------------ webhook queue

    @guarded("list due webhooks")
    def due_webhooks(self, now: datetime, limit: int = 20) -> list[dict]:
        """Pending webhook runs whose next attempt is due at `now`, oldest first."""
        R = self.RuleRun
        due = R.next_attempt_at.is_null() | (R.next_attempt_at <= naive_utc(now))
        query = R.select().where((R.action == "webhook") & (R.status == "pending") & due)
        return [run_json(run) for run in query.order_by(R.id).limit(max(1, int(limit)))]

    @guarded("record a webhook attempt")
    def record_run_attempt(self, run_id: int, error: Optional[str],
                           next_attempt_at: Optional[datetime]) -> dict:
        """Count one failed delivery of a pending run and schedule the next; it stays pending.

        KeyError without such a run; ValueError unless it is pending.
        """
        R = self.RuleRun
        changes = {R.attempts: R.attempts + 1, R.error: error,
                   R.next_attempt_at: naive_utc(next_attempt_at)}
        return self._update_run(run_id, changes, only_if="pending")

    # ------------------------------------------------------------ takeover

    @guarded("pause automation")
    def pause(self, app: str, user: str, until: datetime, operator: Optional[str] = None) -> None:
        """Pause automation for (app, user) until `until`; never shortens a later pause."""
        T = self.Takeover
        with self.db.atomic():
            T.insert(app=app, user=user, until=naive_utc(until), operator=operator).on_conflict(
                conflict_target=[T.app, T.user],
                update={T.until: EXCLUDED.until, T.operator: EXCLUDED.operator},
                where=EXCLUDED.until > T.until).execute()

    @guarded("resume automation")
    def resume(self, app: str, user: str) -> None:
        """End a pause of (app, user) now; nothing happens without one."""
        T = self.Takeover
        with self.db.atomic():
            T.delete().where((T.app == app) & (T.user == user)).execute()

    @guarded("read the takeover pause")
    def paused_until(self, app: str, user: str, now: datetime) -> Optional[datetime]:
        """When the pause of (app, user) ends (naive UTC), or None when absent or over at `now`."""
        # On every callback: plain SQL rather than the query builder, which costs more than the lookup.
        T = self.Takeover
        sql = 'SELECT "until" FROM "takeover" WHERE "app" = {0} AND "user" = {0} AND "until" > {0}'.format(self.db.param)
        row = self.db.execute_sql(sql, (app, user, T.until.db_value(naive_utc(now)))).fetchone()
        return T.until.python_value(row[0]) if row else None

    # ------------------------------------------------------------ replay

    def iter_inbound(self, since: Optional[datetime] = None, app: Optional[str] = None,
                     batch: int = 500) -> Iterator[dict]:
        """Yield inbound messages oldest first as {"id", "app", "raw", "received_at"}.

        For `wecomd rules replay`, which parses `raw` (the decrypted XML) again. Reads `batch`
        rows per query; `since` filters on received_at (naive datetimes are UTC).
        """
        M, batch = self.Message, max(1, int(batch))
        query = M.select(M.id, M.app, M.raw_xml, M.received_at).where(M.direction == "in")
        if app:
            query = query.where(M.app == app)
        if since is not None:
            query = query.where(M.received_at >= naive_utc(since))
        query = query.order_by(M.id).limit(batch)
        last_id = 0
        while True:
            with self._failures("read inbound messages"):
                rows = list(query.where(M.id > last_id))
            yield from ({"id": row.id, "app": row.app, "raw": row.raw_xml,
                         "received_at": iso(row.received_at)} for row in rows)
            if len(rows) < batch:
                return
            last_id = rows[-1].id

    def _failures(self, action: str):  # provided by Store
        raise NotImplementedError


def _check(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError("%s must be one of %s, not %r" % (what, ", ".join(allowed), value))
