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

OUTBOUND_STATUSES = ("pending", "sent", "failed", "recalled")  # message.status of an outbound row
MEDIA_STATUSES = ("pending", "stored", "failed")  # message.media_status; NULL: no media
RUN_ACTIONS = ("reply", "run", "webhook", "notify", "card")  # notify: a post to a group robot (workers/notify.py); card: a 智能机器人 card
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
            (("app", "id"), False),  # an app's newest messages (migration 0017)
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
    """One action (reply, run, webhook or notify) a rule fired for one inbound message."""

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
    url = TextField(null=True)  # webhook; notify: the robot's URL with its key redacted
    payload = TextField(null=True)  # webhook body: exactly the bytes signed, as UTF-8; notify: its parts (JSON)
    attempts = IntegerField(default=0)  # failed webhook or notify deliveries
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


OPERATOR_ROLES = ("viewer", "operator", "admin")  # each can do what the one before can, and more
CONVERSATION_STATES = ("open", "closed")


class Operator(Model):
    """A dashboard account (`wecomd user`); the `[admin]` of the config file is not one of these."""

    name = CharField(unique=True)
    role = CharField()  # OPERATOR_ROLES
    apps = TextField(null=True)  # comma-separated app names it may see; NULL: every app
    password_hash = TextField()  # passwords.hash_password's "scrypt$..." form
    disabled = IntegerField(default=0)  # 1: no sign-in, its sessions and tokens stop at once
    created_at = DateTimeField()
    updated_at = DateTimeField()

    class Meta:
        table_name = "operator"


class ApiToken(Model):
    """A bearer token for /api/* and the websocket, with its operator's role and apps."""

    token_hash = CharField(unique=True)  # hex SHA-256 of the token, which is shown once
    operator = CharField(index=True)  # an Operator's name
    label = CharField(null=True)
    created_by = CharField()
    created_at = DateTimeField()
    last_used_at = DateTimeField(null=True)
    revoked_at = DateTimeField(null=True)

    class Meta:
        table_name = "api_token"


class AuditEvent(Model):
    """One thing an operator (or someone trying to be one) did: who, when, what, to what."""

    at = DateTimeField(index=True)
    actor = CharField(index=True)  # the operator's name; the name tried for a failed sign-in
    action = CharField(index=True)  # e.g. "login", "login_failed", "reply", "assign"
    target = TextField(null=True)  # what it acted on: "message:12", "conversation:app/user", "operator:li"
    detail = TextField(null=True)  # JSON object: the rest (the new role, the note's id, ...)
    client = CharField(null=True)  # the client address

    class Meta:
        table_name = "audit"


class Contact(Model):
    """What WeCom's user/get and department/list said about one UserID of one corp (a cache)."""

    corp_id = CharField()
    userid = CharField()
    name = CharField(null=True)  # NULL: unknown (an error, or not fetched yet)
    departments = TextField(null=True)  # JSON list of department names
    position = CharField(null=True)
    errcode = IntegerField(null=True)  # WeCom's errcode of the last failed lookup; NULL when it worked
    error = TextField(null=True)
    fetched_at = DateTimeField()

    class Meta:
        table_name = "contact"
        indexes = ((("corp_id", "userid"), True), (("name",), False))


class ConversationState(Model):
    """A conversation's assignment and open/closed state; no row: unassigned and open."""

    app = CharField()
    user = CharField()
    assignee = CharField(null=True)  # an operator's name
    state = CharField(default="open")  # CONVERSATION_STATES
    updated_at = DateTimeField()
    updated_by = CharField(null=True)
    # The id of the conversation's newest message when it was closed (migration 0009): an inbound
    # message after it makes the conversation open again (store/assignments.py), with no write.
    closed_last_id = IntegerField(null=True)

    class Meta:
        table_name = "conversation_state"
        indexes = ((("app", "user"), True), (("assignee",), False))


class Note(Model):
    """An internal note in a conversation's thread: never sent to WeCom."""

    app = CharField()
    user = CharField()
    author = CharField()
    text = TextField()
    created_at = DateTimeField()
    # The id of the conversation's newest message when the note was written (migration 0009): the
    # thread and the export show the note right after that message.
    after_id = IntegerField(null=True)

    class Meta:
        table_name = "note"
        indexes = ((("app", "user", "id"), False),)


class QuickReply(Model):
    """A saved snippet for the reply box; `owner` NULL: shared with everyone."""

    shortcut = CharField()
    text = TextField()
    owner = CharField(null=True)
    created_at = DateTimeField()
    updated_at = DateTimeField()

    class Meta:
        table_name = "quick_reply"
        indexes = ((("owner", "shortcut"), False),)



RESPONSE_STATES = ("pending", "sent", "failed", "expired")  # bot_stream.response_state; NULL: not needed


class BotStream(Model):
    """One streamed answer of a 智能机器人 to one message: the whole content so far, and whether and
    how the answer went to the message's response_url (used at most once)."""

    stream_id = CharField(unique=True)
    bot = CharField()
    message_id = IntegerField(index=True)  # the inbound message it answers
    content = TextField(default="")  # everything so far: each refresh gets all of it
    finished = IntegerField(default=0)  # 1: the finish frame was (or will be) answered
    notice = TextField(null=True)  # why it closed early (an error, the deadline)
    source = CharField(null=True)  # where the answer comes from: "rule:NAME", "reply", "model:NAME" ...
    feedback_id = CharField(null=True, index=True)  # a feedback_event finds its stream by it (migration 0015)
    feedback = TextField(null=True)  # JSON of the feedback_event that rated it
    response_url = TextField(null=True)
    response_state = CharField(null=True)  # RESPONSE_STATES
    response_error = TextField(null=True)
    deadline_at = DateTimeField()
    created_at = DateTimeField()
    updated_at = DateTimeField()

    class Meta:
        table_name = "bot_stream"

class KfCursor(Model):
    """微信客服: per kf account, where the last pull stopped (kf/sync_msg's next_cursor, saved with the
    messages of its page), the newest callback token not yet pulled with, and which process pulls."""

    open_kfid = CharField(unique=True)
    app = CharField()
    cursor = CharField(null=True)  # NULL: never pulled (the first pull starts 3 days back)
    token = TextField(null=True)  # from the newest kf_msg_or_event callback; valid 10 minutes
    token_at = DateTimeField(null=True)
    pending = IntegerField(default=0)  # 1: a callback came that no finished pull has covered yet
    lease_owner = CharField(null=True)  # the process pulling it now, until lease_until
    lease_until = DateTimeField(null=True)
    pulled_at = DateTimeField(null=True)
    updated_at = DateTimeField()

    class Meta:
        table_name = "kf_cursor"


class KfSession(Model):
    """微信客服: one customer of one kf account: the session state as last known, the reply window."""

    app = CharField()
    open_kfid = CharField()
    external_userid = CharField()
    service_state = IntegerField(null=True)  # 0-4 (wecom.kf.SERVICE_STATES); NULL: unknown
    servicer_userid = CharField(null=True)
    last_customer_at = DateTimeField(null=True)  # the customer's newest message (send_time)
    sends = IntegerField(default=0)  # sent to the customer since then (WeCom allows 5)
    state_at = DateTimeField(null=True)
    updated_at = DateTimeField()

    class Meta:
        table_name = "kf_session"
        indexes = ((("open_kfid", "external_userid"), True),)


class KfCode(Model):
    """微信客服: a code for send_msg_on_event (a welcome_code, a msg_code), used at most once."""

    code = CharField(unique=True)
    kind = CharField()  # welcome, queue, human, end
    open_kfid = CharField()
    external_userid = CharField(null=True)
    message_id = IntegerField(null=True)  # the event message it came with
    expires_at = DateTimeField()
    used_at = DateTimeField(null=True)
    used_by = IntegerField(null=True)  # the outbound message that used it
    created_at = DateTimeField()

    class Meta:
        table_name = "kf_code"


class KfPage(Model):
    """微信客服: a sync_msg page committed with its cursor and not yet wholly stored as messages
    (wecomd.kf.pull): its items as WeCom sent them; deleted with its last slice. Never updated: a
    row this size is rewritten whole by any update."""

    app = CharField()
    open_kfid = CharField()
    items = TextField()  # a JSON array of sync_msg items
    created_at = DateTimeField()

    class Meta:
        table_name = "kf_page"


class KfCustomer(Model):
    """微信客服: a WeChat customer's nickname and avatar (kf/customer/batchget), or that WeCom could not
    resolve the id (invalid)."""

    external_userid = CharField(unique=True)
    nickname = CharField(null=True)
    avatar = TextField(null=True)
    gender = IntegerField(null=True)
    unionid = CharField(null=True)
    scene = CharField(null=True)
    scene_param = TextField(null=True)
    invalid = IntegerField(default=0)
    fetched_at = DateTimeField()

    class Meta:
        table_name = "kf_customer"


class IntakeApplied(Model):
    """The callback intake journal (store.intake): per journal file (its generation), the sequence
    number of the last entry applied to this database, written in the transaction that applied it."""

    journal = CharField(primary_key=True)
    seq = BigIntegerField()

    class Meta:
        table_name = "intake_applied"


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
    Operator: type[Operator]
    ApiToken: type[ApiToken]
    AuditEvent: type[AuditEvent]
    Contact: type[Contact]
    ConversationState: type[ConversationState]
    Note: type[Note]
    QuickReply: type[QuickReply]
    BotStream: type[BotStream]
    KfCursor: type[KfCursor]
    KfSession: type[KfSession]
    KfCode: type[KfCode]
    KfCustomer: type[KfCustomer]
    KfPage: type[KfPage]
    IntakeApplied: type[IntakeApplied]

    @classmethod
    def bound_to(cls, db: peewee.Database) -> "Models":
        declared = {model.__name__: model for model in (Message, ReadMark, Conversation, RuleRun, Takeover,
                                                        CallbackFailure, Session, Operator, ApiToken,
                                                        AuditEvent, Contact, ConversationState, Note,
                                                        QuickReply, BotStream, KfCursor, KfSession, KfCode,
                                                        KfCustomer, KfPage, IntakeApplied)}
        return cls(**{field.name: bind(declared[field.name], db) for field in fields(cls)})

    def all(self) -> list[type[Model]]:
        """Every bound model, in the order of the fields above."""
        return [getattr(self, field.name) for field in fields(self)]
