"""Helpers of the store tests (tests/store/): messages to store, the GROUP BY the conversation summary
must equal at every step, and what peewee logged."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from peewee import JOIN, Case, fn

from wecomd.store import MIGRATIONS_DIR
from wecomd.wecom.messages import Message

MESSAGE_KEYS = {"id", "app", "direction", "msgtype", "event", "event_key", "from_user", "to_user",
                "agent_id", "msg_id", "create_time", "received_at", "content", "status", "error",
                "fields"}
ROW_KEYS = MESSAGE_KEYS | {"deliveries", "operator", "attempts", "media", "automation", "automatic", "rule"}
MEDIA_KEYS = {"status", "size", "type", "name", "error"}
AUTOMATION_KEYS = {"id", "rule", "action", "status", "path", "exit_code", "duration_ms", "output",
                   "error", "started_at", "finished_at"}
RUN_KEYS = AUTOMATION_KEYS | {"message_id", "app", "user", "reply_message_id", "url", "payload",
                              "attempts", "next_attempt_at"}
BIG_MSG_ID = "7357159753458634752"  # above 2**53: a JSON number would lose digits

NOW = datetime(2026, 11, 28, 12, 0, 0)
OLD = NOW - timedelta(days=40)
CUTOFF = NOW - timedelta(days=30)
# The 0004 migration's triggers that count a new message in its conversation on SQLite.
TRIGGERS = ("conversation_tally", "conversation_tally_no_user")


# ------------------------------------------------------------------ messages to store

def text(user="zhangsan", content="hello", msg_id=None, raw=None, **extra):
    """A parsed text message from `user` (None: one without a FromUserName)."""
    fields = {"ToUserName": "ww0123", "MsgType": "text", "Content": content}
    if user is not None:
        fields["FromUserName"] = user
    return Message(msgtype="text", from_user=user, to_user="ww0123", agent_id="1000002",
                   create_time=1764370000, msg_id=msg_id, content=content, fields=fields,
                   raw=raw or "<xml><Content>%s</Content></xml>" % content, **extra)


def click(user="zhangsan", key="RUN_BACKUP"):
    return Message(msgtype="event", from_user=user, to_user="ww0123", agent_id="1000002",
                   create_time=1764370001, event="click", event_key=key,
                   fields={"Event": "click", "EventKey": key})


def receive(store, app="helpdesk", user="zhangsan", content="hello", key=None):
    """Store a text message (a fresh dedup key unless `key`); (its JSON, created)."""
    key = key or "%s|%s|%s|%d" % (app, user, content, store.messages.count())
    return store.messages.save_inbound(app, text(user, content), key)


def save(store, app="helpdesk", user="zhangsan", content="hello", key=None):
    """receive(), the stored message's JSON only."""
    return receive(store, app, user, content, key)[0]


def age(store, message_id, at):
    """Set one message's received_at, as a clock injected into the store would have."""
    M = store.models.Message
    M.update(received_at=at).where(M.id == message_id).execute()


def set_received_at(store, by_id, default):
    """Set every message's received_at to `default`, then those of `by_id` (id: time)."""
    M = store.models.Message
    M.update(received_at=default).execute()
    for message_id, value in by_id.items():
        age(store, message_id, value)


def drop_triggers(store):
    """Make a SQLite store count new messages the way it does on PostgreSQL: no triggers, one
    precompiled UPSERT from Python after each INSERT."""
    for name in TRIGGERS:
        store.db.execute_sql("DROP TRIGGER %s" % name)
    store.conversations.counted_by_triggers = False


# ------------------------------------------------------------------ reading back

def contents_of(store, **filters):
    """The contents of the messages page() finds, newest first."""
    return [m["content"] for m in store.messages.page(limit=500, **filters)[0]]


def key_of(store, message_id):
    M = store.models.Message
    return M.select(M.dedup_key).where(M.id == message_id).scalar()


def next_attempt_at_of(store, message_id):
    M = store.models.Message
    return M.select(M.next_attempt_at).where(M.id == message_id).scalar()


def public_run(run):
    """A run as it appears in Message JSON "automation"."""
    return {key: run[key] for key in AUTOMATION_KEYS}


def is_recent(iso_time):
    moment = datetime.strptime(iso_time, "%Y-%m-%dT%H:%M:%SZ")
    return abs(moment - datetime.now(timezone.utc).replace(tzinfo=None)) < timedelta(minutes=1)


def selects(caplog, table=None):
    """SELECT statements peewee logged, all of them or those reading FROM `table`."""
    return sum(1 for r in caplog.records
               if r.name == "peewee" and str(r.msg).startswith("('SELECT")
               and (table is None or 'FROM "%s"' % table in str(r.msg)))


def migrations_from(name):
    """Every migration from `name` on, in order: what migrating a database at the one before applies."""
    names = sorted(path.stem for path in MIGRATIONS_DIR.glob("[0-9]*.py"))
    return names[names.index(name):]


# ------------------------------------------------------------------ the conversation summary

def grouped(store, app=None, now=NOW):
    """The conversations as the pre-0004 query computed them: a GROUP BY over every message."""
    M, R, T = store.models.Message, store.models.ReadMark, store.models.Takeover
    last_id = fn.MAX(M.id)
    after_mark = (M.direction == "in") & (M.id > fn.COALESCE(R.last_read_id, 0))
    paused = (T.app == M.app) & (T.user == M.user) & (T.until > now)
    query = (M.select(M.app, M.user, last_id.alias("last_id"), fn.COUNT(M.id).alias("count"),
                      fn.COUNT(Case(None, [(after_mark, 1)])).alias("unread"),
                      fn.MAX(T.until).alias("paused_until"))
             .join(R, JOIN.LEFT_OUTER, on=(R.app == M.app) & (R.user == M.user))
             .join(T, JOIN.LEFT_OUTER, on=paused, src=M)
             .group_by(M.app, M.user).order_by(last_id.desc()))
    if app:
        query = query.where(M.app == app)
    return [dict(row, paused_until=T.until.python_value(row["paused_until"]) and
                 T.until.python_value(row["paused_until"]).strftime("%Y-%m-%dT%H:%M:%SZ"))
            for row in query.dicts()]


def summary(store, app=None, now=NOW):
    """The same columns from store.conversations (the summary table)."""
    keys = ("app", "user", "last_id", "count", "unread", "paused_until")
    return [{k: row[k] for k in keys} for row in store.conversations.all(app=app, now=now)]


def assert_same(store):
    """The summary is exactly the GROUP BY, and each conversation's last message is that message."""
    for app in (None, "helpdesk", "ops"):
        assert summary(store, app) == grouped(store, app)
    for row in store.conversations.all(now=NOW):
        assert row["last_message"] == store.messages.get(row["last_id"])
