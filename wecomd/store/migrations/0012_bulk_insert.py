"""SQLite only: a page inserted in bulk (微信客服's sync_msg) is counted and indexed per page.

The 0004 triggers count each new message in its conversation and index it for search, one row at a
time; for a page of pulled messages that was four fifths of its database work. While the one-row
table `bulk_insert` holds a row (only ever inside the writer's transaction that inserts a page, so
no other connection sees it), the three INSERT triggers stand aside, and the inserter counts and
indexes the page's rows with one statement each (Conversations.count_inserted,
Search.index_inserted). Every other INSERT is counted and indexed by the triggers as before.
"""
from peewee import SqliteDatabase

TABLE = 'CREATE TABLE IF NOT EXISTS bulk_insert (active INTEGER NOT NULL)'
TABLE_DROP = 'DROP TABLE IF EXISTS bulk_insert'
IDLE = 'NOT EXISTS (SELECT 1 FROM bulk_insert)'
NAMES = ('conversation_tally', 'conversation_tally_no_user', 'message_fts_insert')

# 0004's three INSERT triggers, frozen: `down` restores them, `up` adds the IDLE condition.
TALLY = (
    'CREATE TRIGGER conversation_tally AFTER INSERT ON message WHEN new."user" IS NOT NULL{and_idle} BEGIN '
    'INSERT INTO conversation (app, "user", last_id, messages, unread) VALUES (new.app, new."user", '
    "new.id, 1, CASE WHEN new.direction = 'in' AND new.id > COALESCE((SELECT r.last_read_id "
    'FROM conversation_read AS r WHERE r.app = new.app AND r."user" = new."user"), 0) '
    'THEN 1 ELSE 0 END) ON CONFLICT (app, "user") DO UPDATE SET '
    'last_id = CASE WHEN excluded.last_id > conversation.last_id THEN excluded.last_id '
    'ELSE conversation.last_id END, messages = conversation.messages + 1, '
    'unread = conversation.unread + excluded.unread; END',
    'CREATE TRIGGER conversation_tally_no_user AFTER INSERT ON message WHEN new."user" IS NULL{and_idle} BEGIN '
    'UPDATE conversation SET last_id = CASE WHEN new.id > last_id THEN new.id ELSE last_id END, '
    "messages = messages + 1, unread = unread + CASE WHEN new.direction = 'in' THEN 1 ELSE 0 END "
    'WHERE app = new.app AND "user" IS NULL; '
    'INSERT INTO conversation (app, "user", last_id, messages, unread) SELECT new.app, NULL, new.id, '
    "1, CASE WHEN new.direction = 'in' THEN 1 ELSE 0 END WHERE NOT EXISTS (SELECT 1 FROM "
    'conversation WHERE app = new.app AND "user" IS NULL); END',
    'CREATE TRIGGER message_fts_insert AFTER INSERT ON message{when_idle} BEGIN '
    'INSERT INTO message_fts(rowid, search_text) VALUES (new.id, new.search_text || char(10, 10)); END',
)


def _create(idle: bool) -> list:
    and_idle, when_idle = (' AND ' + IDLE, ' WHEN ' + IDLE) if idle else ('', '')
    return ['DROP TRIGGER IF EXISTS %s' % name for name in NAMES] + \
        [sql.format(and_idle=and_idle, when_idle=when_idle) for sql in TALLY]


def up(migrator, db):
    if isinstance(db, SqliteDatabase):
        for statement in [TABLE] + _create(idle=True):
            db.execute_sql(statement)


def down(migrator, db):
    if isinstance(db, SqliteDatabase):
        for statement in _create(idle=False) + [TABLE_DROP]:
            db.execute_sql(statement)
