"""SQLite only: the full-text index (message_fts) is merged in small steps, never in a write's way.

FTS5 writes each transaction's new rows as a small segment and, by default (automerge 4), merges
segments inside whichever write transaction finds enough of them: a callback or a slice of a
微信客服 page then did tens of milliseconds of someone else's merging. Here automerge is off; the
search-index upkeep (wecomd.workers.search_index) merges with FTS5's 'merge' command, a few pages a
step, each step a writer call of its own, so callbacks go between them. crisismerge (64 segments on
one level) still merges inside a write if the upkeep is ever stopped for long.
"""
from peewee import SqliteDatabase

SETTINGS = (("automerge", 0), ("crisismerge", 64))
DEFAULTS = (("automerge", 4), ("crisismerge", 16))


def _set(db, settings) -> None:
    for name, value in settings:
        db.execute_sql("INSERT INTO message_fts(message_fts, rank) VALUES ('%s', %d)" % (name, value))


def up(migrator, db):
    if isinstance(db, SqliteDatabase):
        _set(db, SETTINGS)


def down(migrator, db):
    if isinstance(db, SqliteDatabase):
        _set(db, DEFAULTS)
