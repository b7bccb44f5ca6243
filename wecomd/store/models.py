"""Every peewee model of wecomd, declared without a database, and `Models`: the set of them bound to one.

The schema itself is made by the migrations (wecomd/store/migrations), each with a frozen copy of its
models; these are the models the queries use, and tests check that they match what the migrations made.
Times are naive UTC. The value lists below (statuses, actions, paths) are what a column may hold.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypeVar

import peewee
from peewee import (BigIntegerField, CharField, DateTimeField, FloatField, IntegerField, Model,
                    TextField)

OUTBOUND_STATUSES = ("pending", "sent", "failed")  # message.status of an outbound row
MEDIA_STATUSES = ("pending", "stored", "failed")  # message.media_status; NULL: no media
RUN_ACTIONS = ("reply", "run", "webhook")
RUN_STATUSES = ("running", "pending", "ok", "failed", "timeout", "error", "skipped")
OPEN_RUN_STATUSES = ("running", "pending")  # not finished yet: finished_at is NULL
RUN_FAILURE_STATUSES = ("failed", "timeout", "error")
RUN_PATHS = ("passive", "api", "none")  # how a rule's answer went out


class Message(Model):
    """One stored message, inbound or outbound."""

    app = CharField()
    direction = CharField(max_length=3)
    dedup_key = TextField(null=True, unique=True)  # NULL for outbound rows
    user = CharField(null=True)  # the conversation counterpart
    msgtype = CharField(index=True)
    event = CharField(null=True)
    event_key = TextField(null=True)
    from_user = CharField(null=True)
    to_user = CharField(null=True)
    agent_id = CharField(null=True)
    msg_id = CharField(null=True)  # text: MsgIds are 64-bit and lose precision as JS numbers
    create_time = BigIntegerField(null=True)
    received_at = DateTimeField(index=True)
    content = TextField(null=True)
    status = CharField()  # "received" inbound; OUTBOUND_STATUSES outbound
    error = TextField(null=True)
    fields = TextField(default="{}")
    raw_xml = TextField(column_name="raw", default="")  # `raw` would shadow Model.raw()
    reply = TextField(null=True)
    deliveries = IntegerField(default=1)
    operator = CharField(null=True)
    wecom_msgid = CharField(null=True)
    updated_at = DateTimeField()
    search_text = TextField(null=True)  # search.search_text; indexed by message_fts
    media_status = CharField(null=True, index=True)  # NULL: no media; else MEDIA_STATUSES
    media_path = TextField(null=True)  # relative to [server] media_dir
    media_size = IntegerField(null=True)
    media_type = CharField(null=True)
    media_name = TextField(null=True)
    media_error = TextField(null=True)
    attempts = IntegerField(default=0)  # outbound sends or media downloads tried
    next_attempt_at = DateTimeField(null=True)  # NULL = due now
    # An automatic answer (outbound): "passive" (in the callback's answer) or "api"; NULL otherwise.
    automatic = CharField(null=True)
    rule = CharField(null=True)  # the rule that answered; NULL for the app's own `reply =`

    class Meta:
        table_name = "message"
        indexes = (
            (("app", "user", "id"), False),
            (("direction", "status", "next_attempt_at"), False),
        )


class ReadMark(Model):
    """How far the dashboard has read one conversation."""

    app = CharField()
    user = CharField()
    last_read_id = IntegerField(default=0)

    class Meta:
        table_name = "conversation_read"
        indexes = ((("app", "user"), True),)


class Conversation(Model):
    """One (app, user) that has messages: its newest message and its counts (store.conversations)."""

    app = CharField()
    user = CharField(null=True)  # NULL: the messages that came without a FromUserName
    last_id = IntegerField()  # the id of its newest message
    messages = IntegerField(default=0)  # "count" in the JSON: inbound and outbound
    unread = IntegerField(default=0)  # inbound messages after the read mark

    class Meta:
        table_name = "conversation"
        indexes = (
            (("app", "user"), True),
            (("last_id",), False),  # newest first, all apps
            (("app", "last_id"), False),  # newest first, one app
        )


class RuleRun(Model):
    """One action (reply, run or webhook) a rule fired for one inbound message."""

    message_id = IntegerField(index=True)  # the triggering message's id (no foreign key)
    app = CharField()
    user = CharField(null=True)
    rule = CharField()  # the [rule:NAME] name
    action = CharField()  # RUN_ACTIONS
    status = CharField()  # RUN_STATUSES
    path = CharField(null=True)  # RUN_PATHS; NULL until decided
    exit_code = IntegerField(null=True)
    duration_ms = FloatField(null=True)
    output = TextField(null=True)  # an excerpt
    error = TextField(null=True)
    reply_message_id = IntegerField(null=True)  # the outbound row of an answer sent through the API
    url = TextField(null=True)  # webhook
    payload = TextField(null=True)  # webhook body: exactly the bytes signed, as UTF-8
    attempts = IntegerField(default=0)  # failed webhook deliveries
    next_attempt_at = DateTimeField(null=True)  # NULL = due now
    started_at = DateTimeField()
    finished_at = DateTimeField(null=True)

    class Meta:
        table_name = "rule_run"
        indexes = (
            (("rule", "started_at"), False),
            (("action", "status", "next_attempt_at"), False),
        )


class Takeover(Model):
    """Automation paused for one user of one app until `until` (an operator answered by hand)."""

    app = CharField()
    user = CharField()
    until = DateTimeField()
    operator = CharField(null=True)

    class Meta:
        table_name = "takeover"
        indexes = ((("app", "user"), True),)


class CallbackFailure(Model):
    """One request to /callback/<app> answered with a 4xx or 5xx."""

    at = DateTimeField()
    app = CharField()  # the name in the URL path, a configured app or not
    kind = CharField()  # "verify" (GET) or "callback" (POST and anything else)
    status = IntegerField()  # the HTTP status answered
    category = CharField()  # metrics.FAILURE_REASONS: signature, timestamp, decrypt, ...
    reason = TextField()  # the exact reason the handler logged
    remote_ip = CharField(null=True)
    skipped = IntegerField(default=0)  # failures just before this one left out by the rate limit

    class Meta:
        table_name = "callback_failure"


class Session(Model):
    """One signed-in browser."""

    token_hash = CharField(unique=True)  # hex SHA-256 of the cookie's token
    user = CharField()  # the operator who signed in
    credential = CharField()  # fingerprint of that operator's password hash at sign-in
    client = CharField(null=True)  # the client address it signed in from
    created_at = DateTimeField()
    expires_at = DateTimeField(index=True)

    class Meta:
        table_name = "session"


ModelT = TypeVar("ModelT", bound=Model)


def bind(model: type[ModelT], db: peewee.Database) -> type[ModelT]:
    """A subclass of `model` bound to `db`, with the same table. Per database rather than
    Model.bind(db): two stores in one process (tests, export next to serve, doctor's read-only
    connection) must not rebind each other's models."""
    meta = type("Meta", (), {"database": db, "table_name": model._meta.table_name})
    return type("Bound" + model.__name__, (model,), {"Meta": meta, "__module__": model.__module__})


@dataclass(frozen=True)
class Models:
    """Every model, bound to one database (`Models.bound_to(db)`)."""

    Message: type[Message]
    ReadMark: type[ReadMark]
    Conversation: type[Conversation]
    RuleRun: type[RuleRun]
    Takeover: type[Takeover]
    CallbackFailure: type[CallbackFailure]
    Session: type[Session]

    @classmethod
    def bound_to(cls, db: peewee.Database) -> "Models":
        declared = {model.__name__: model for model in (Message, ReadMark, Conversation, RuleRun, Takeover,
                                                        CallbackFailure, Session)}
        return cls(**{field.name: bind(declared[field.name], db) for field in fields(cls)})

    def all(self) -> list[type[Model]]:
        """Every bound model, in the order of the fields above."""
        return [getattr(self, field.name) for field in fields(self)]
