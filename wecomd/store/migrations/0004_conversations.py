"""Dashboard at scale: conversation summaries, and search for one- and two-character queries.

1. `conversation`: one row per (app, user) with its newest message id, its message count and its
   unread count, built from the messages already stored. /api/conversations used to group every
   message by (app, user) on each request, which took a second at 100,000 messages; it now reads
   this table through its (last_id) and (app, last_id) indexes. wecomd.store.conversations keeps
   it up to date: on SQLite two AFTER INSERT triggers count each new message within its INSERT
   statement; elsewhere the store runs the same UPSERT after the INSERT.
2. SQLite only: the FTS5 trigram index of 0002 indexes search_text followed by two newlines (through
   the view `message_search`), so that every occurrence of every one- or two-character string is
   the start of some indexed trigram; `message_fts_terms` (fts5vocab) lists those trigrams. A short
   query that is rare then costs a few index lookups instead of a scan of every message
   (Store._matches). The index is rebuilt once: seconds at a million messages.
"""
from peewee import JOIN, Case, CharField, IntegerField, Model, SqliteDatabase, fn


def _frozen_models(db):
    # A frozen copy of the schema as of this migration, independent of wecomd.store.conversations.
    class Conversation(Model):
        app = CharField()
        user = CharField(null=True)
        last_id = IntegerField()
        messages = IntegerField(default=0)
        unread = IntegerField(default=0)

        class Meta:
            database = db
            table_name = 'conversation'
            indexes = (
                (('app', 'user'), True),
                (('last_id',), False),
                (('app', 'last_id'), False),
            )

    class ReadMark(Model):
        app = CharField()
        user = CharField()
        last_read_id = IntegerField(default=0)

        class Meta:
            database = db
            table_name = 'conversation_read'

    class Message(Model):
        # Only the columns the back-fill reads.
        app = CharField()
        user = CharField(null=True)
        direction = CharField()

        class Meta:
            database = db
            table_name = 'message'

    return Conversation, ReadMark, Message


# A new message counts in its conversation: inbound ones as unread unless the read mark is
# already at or past them. A retried delivery updates the stored row (ON CONFLICT (dedup_key) DO
# UPDATE), which fires no INSERT trigger, so it is never counted twice. Rows with a NULL user never
# conflict in the unique index: the second trigger finds their conversation by hand.
TRIGGERS = (
    'CREATE TRIGGER conversation_tally AFTER INSERT ON message WHEN new."user" IS NOT NULL BEGIN '
    'INSERT INTO conversation (app, "user", last_id, messages, unread) VALUES (new.app, new."user", '
    "new.id, 1, CASE WHEN new.direction = 'in' AND new.id > COALESCE((SELECT r.last_read_id "
    'FROM conversation_read AS r WHERE r.app = new.app AND r."user" = new."user"), 0) '
    'THEN 1 ELSE 0 END) ON CONFLICT (app, "user") DO UPDATE SET '
    'last_id = CASE WHEN excluded.last_id > conversation.last_id THEN excluded.last_id '
    'ELSE conversation.last_id END, messages = conversation.messages + 1, '
    'unread = conversation.unread + excluded.unread; END',
    'CREATE TRIGGER conversation_tally_no_user AFTER INSERT ON message WHEN new."user" IS NULL BEGIN '
    'UPDATE conversation SET last_id = CASE WHEN new.id > last_id THEN new.id ELSE last_id END, '
    "messages = messages + 1, unread = unread + CASE WHEN new.direction = 'in' THEN 1 ELSE 0 END "
    'WHERE app = new.app AND "user" IS NULL; '
    'INSERT INTO conversation (app, "user", last_id, messages, unread) SELECT new.app, NULL, new.id, '
    "1, CASE WHEN new.direction = 'in' THEN 1 ELSE 0 END WHERE NOT EXISTS (SELECT 1 FROM "
    'conversation WHERE app = new.app AND "user" IS NULL); END',
)
TRIGGERS_DROP = (
    'DROP TRIGGER IF EXISTS conversation_tally_no_user',
    'DROP TRIGGER IF EXISTS conversation_tally',
)

# 0002's index, to replace and (down) to restore; frozen copies.
FTS_0002_DROP = (
    "DROP TRIGGER IF EXISTS message_fts_update",
    "DROP TRIGGER IF EXISTS message_fts_delete",
    "DROP TRIGGER IF EXISTS message_fts_insert",
    "DROP TABLE IF EXISTS message_fts",
)
FTS_0002 = (
    "CREATE VIRTUAL TABLE message_fts USING fts5("
    "search_text, content='message', content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER message_fts_insert AFTER INSERT ON message BEGIN "
    "INSERT INTO message_fts(rowid, search_text) VALUES (new.id, new.search_text); END",
    "CREATE TRIGGER message_fts_delete AFTER DELETE ON message BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, search_text) "
    "VALUES ('delete', old.id, old.search_text); END",
    "CREATE TRIGGER message_fts_update AFTER UPDATE OF search_text ON message BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, search_text) "
    "VALUES ('delete', old.id, old.search_text); "
    "INSERT INTO message_fts(rowid, search_text) VALUES (new.id, new.search_text); END",
)
# The same index over search_text || "\n\n": the view is its external content (what 'rebuild' and
# 'integrity-check' read), the triggers index exactly what the view returns.
FTS = (
    "CREATE VIEW message_search (id, search_text) AS "
    "SELECT id, search_text || char(10, 10) FROM message",
    "CREATE VIRTUAL TABLE message_fts USING fts5("
    "search_text, content='message_search', content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER message_fts_insert AFTER INSERT ON message BEGIN "
    "INSERT INTO message_fts(rowid, search_text) VALUES (new.id, new.search_text || char(10, 10)); END",
    "CREATE TRIGGER message_fts_delete AFTER DELETE ON message BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, search_text) "
    "VALUES ('delete', old.id, old.search_text || char(10, 10)); END",
    "CREATE TRIGGER message_fts_update AFTER UPDATE OF search_text ON message BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, search_text) "
    "VALUES ('delete', old.id, old.search_text || char(10, 10)); "
    "INSERT INTO message_fts(rowid, search_text) VALUES (new.id, new.search_text || char(10, 10)); END",
    "CREATE VIRTUAL TABLE message_fts_terms USING fts5vocab(message_fts, 'row')",
)
FTS_DROP = (
    "DROP TABLE IF EXISTS message_fts_terms",
    "DROP TRIGGER IF EXISTS message_fts_update",
    "DROP TRIGGER IF EXISTS message_fts_delete",
    "DROP TRIGGER IF EXISTS message_fts_insert",
    "DROP TABLE IF EXISTS message_fts",
    "DROP VIEW IF EXISTS message_search",
)
REBUILD = "INSERT INTO message_fts(message_fts) VALUES ('rebuild')"


def up(migrator, db):
    conversation, read_mark, message = _frozen_models(db)
    db.create_tables([conversation])
    # One INSERT ... SELECT ... GROUP BY over every stored message: the same rows, counts and
    # unread as the query it replaces.
    after_mark = (message.direction == 'in') & (message.id > fn.COALESCE(read_mark.last_read_id, 0))
    groups = (message.select(message.app, message.user, fn.MAX(message.id), fn.COUNT(message.id),
                             fn.COUNT(Case(None, [(after_mark, 1)])))
              .join(read_mark, JOIN.LEFT_OUTER,
                    on=(read_mark.app == message.app) & (read_mark.user == message.user))
              .group_by(message.app, message.user))
    conversation.insert_from(groups, [conversation.app, conversation.user, conversation.last_id,
                                      conversation.messages, conversation.unread]).execute()
    if isinstance(db, SqliteDatabase):
        for statement in TRIGGERS + FTS_0002_DROP + FTS + (REBUILD,):
            db.execute_sql(statement)


def down(migrator, db):
    if isinstance(db, SqliteDatabase):
        for statement in TRIGGERS_DROP + FTS_DROP + FTS_0002 + (REBUILD,):
            db.execute_sql(statement)
    conversation, _, _ = _frozen_models(db)
    db.drop_tables([conversation])
