"""Dashboard schema: search text and its FTS5 index, media and retry columns, read marks."""
import json

from peewee import (SQL, CharField, DateTimeField, IntegerField, Model, SqliteDatabase,
                    TextField)

# Deliberately not frozen: old rows must become searchable exactly as new ones are.
from wecomd.store.media import media_columns
from wecomd.store.search import search_text

BATCH = 500


# A frozen copy of the columns this migration adds to `message`.
def _columns():
    return [
        ("search_text", TextField(null=True)),
        ("media_status", CharField(null=True)),
        ("media_path", TextField(null=True)),
        ("media_size", IntegerField(null=True)),
        ("media_type", CharField(null=True)),
        ("media_name", TextField(null=True)),
        ("media_error", TextField(null=True)),
        # NOT NULL DEFAULT 0 in one ALTER: SQLite before 3.53 would otherwise rebuild the table.
        ("attempts", IntegerField(default=0, constraints=[SQL("DEFAULT 0")])),
        ("next_attempt_at", DateTimeField(null=True)),
    ]


def _frozen_models(db):
    class ConversationRead(Model):
        app = CharField()
        user = CharField()
        last_read_id = IntegerField(default=0)

        class Meta:
            database = db
            table_name = 'conversation_read'
            indexes = ((('app', 'user'), True),)

    class Message(Model):
        # Only the columns the back-fill reads and writes.
        direction = CharField()
        msgtype = CharField()
        content = TextField(null=True)
        fields = TextField()
        search_text = TextField(null=True)
        media_status = CharField(null=True)
        media_name = TextField(null=True)

        class Meta:
            database = db
            table_name = 'message'

    return ConversationRead, Message


# External content over message.search_text, kept in sync by triggers. UPDATE fires only
# when search_text is assigned, so status and delivery updates leave the index alone.
FTS_DDL = (
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
FTS_DROP = (
    "DROP TRIGGER IF EXISTS message_fts_update",
    "DROP TRIGGER IF EXISTS message_fts_delete",
    "DROP TRIGGER IF EXISTS message_fts_insert",
    "DROP TABLE IF EXISTS message_fts",
)


def up(migrator, db):
    operations = [migrator.add_column('message', name, field, allow_not_null=not field.null)
                  for name, field in _columns()]
    operations += [
        migrator.drop_index('message', 'message_direction_status'),
        migrator.add_index('message', ('direction', 'status', 'next_attempt_at')),
        migrator.add_index('message', ('media_status',)),
    ]
    migrator.migrate(*operations)
    read_marks, message = _frozen_models(db)
    db.create_tables([read_marks])
    _backfill(message)
    if isinstance(db, SqliteDatabase):
        # Back-filled before the triggers exist; 'rebuild' then indexes every row once.
        for statement in FTS_DDL:
            db.execute_sql(statement)
        db.execute_sql("INSERT INTO message_fts(message_fts) VALUES ('rebuild')")


def down(migrator, db):
    if isinstance(db, SqliteDatabase):
        for statement in FTS_DROP:
            db.execute_sql(statement)
    read_marks, _ = _frozen_models(db)
    db.drop_tables([read_marks])
    operations = [
        migrator.drop_index('message', 'message_media_status'),
        migrator.drop_index('message', 'message_direction_status_next_attempt_at'),
        migrator.add_index('message', ('direction', 'status')),
    ]
    operations += [migrator.drop_column('message', name) for name, _ in _columns()]
    migrator.migrate(*operations)


def _backfill(Message):
    """Fill search_text (and media_status for media not yet downloaded) of existing rows."""
    last_id = 0
    while True:
        rows = list(Message.select().where(Message.id > last_id).order_by(Message.id).limit(BATCH))
        for row in rows:
            try:
                fields = json.loads(row.fields or '{}')
            except ValueError:
                fields = {}
            changes = media_columns(fields) if row.direction == 'in' else {}
            changes = {k: v for k, v in changes.items() if v is not None}
            text = search_text(row.msgtype, row.content, fields)
            if text is not None:
                changes['search_text'] = text
            if changes:
                Message.update(**changes).where(Message.id == row.id).execute()
        if len(rows) < BATCH:
            return
        last_id = rows[-1].id
