"""The PostgreSQL database TEST_POSTGRES_URL names (`.ci/run` starts one); without it the
`postgres` tests are skipped (conftest.py)."""
from __future__ import annotations

import functools
import os

import pytest

PG_URL = os.environ.get("TEST_POSTGRES_URL")
# The `postgres` marker (setup.cfg): `pytest -m postgres` selects these; without PG_URL they skip.
needs_postgres = pytest.mark.postgres

# Everything a migration defines in the schema, in a comparable form; the migration log included.
_SCHEMA = (
    "SELECT table_name, column_name, ordinal_position, data_type, character_maximum_length, column_default,"
    " is_nullable FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY 1, 2",
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1, 2",
    "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
    " JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = current_schema() ORDER BY 1, 2",
    "SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t"
    " JOIN pg_class r ON r.oid = t.tgrelid JOIN pg_namespace n ON n.oid = r.relnamespace"
    " WHERE NOT t.tgisinternal AND n.nspname = current_schema() ORDER BY 1, 2",
    "SELECT p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc) FROM pg_proc p"
    " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = current_schema() ORDER BY 1, 2",
    "SELECT table_name, view_definition FROM information_schema.views WHERE table_schema = current_schema()"
    " ORDER BY 1",
    "SELECT sequence_name, start_value, increment FROM information_schema.sequences"
    " WHERE sequence_schema = current_schema() ORDER BY 1",
    "SELECT name FROM schema_migration ORDER BY 1",
)
MIGRATION_LOG = "schema_migration"


def postgres_store():
    """A Store on TEST_POSTGRES_URL as a fresh migration leaves it: every table there, all empty.

    The first call in a test process drops every table and migrates (about half a second of DDL).
    Later calls only empty the tables and restart the sequences, while the schema is still exactly
    what that migration made; a test that changed it gets the full drop and migration again.
    """
    from wecomd.store import Store

    store = Store(PG_URL)
    migrated = _migrated_schema()
    if migrated is not None and _schema(store.db) == migrated:
        _empty(store.db)
    else:
        _drop_and_migrate(store)
    return store


@functools.lru_cache(maxsize=None)
def _migrated_schema():
    """The schema of a freshly migrated database (made now, once per process); None when the
    migration also left rows behind, which emptying the tables would lose."""
    from wecomd.store import Store

    store = Store(PG_URL)
    try:
        _drop_and_migrate(store)
        tables = [t for t in store.db.get_tables() if t != MIGRATION_LOG]
        if any(store.db.execute_sql('SELECT 1 FROM "%s" LIMIT 1' % t).fetchone() for t in tables):
            return None
        return _schema(store.db)
    finally:
        store.db.close()


def _schema(db) -> tuple:
    if MIGRATION_LOG not in db.get_tables():
        return ()
    return tuple(tuple(db.execute_sql(sql).fetchall()) for sql in _SCHEMA)


def _empty(db) -> None:
    tables = [t for t in db.get_tables() if t != MIGRATION_LOG]
    with db.atomic():
        if tables:
            db.execute_sql("TRUNCATE %s RESTART IDENTITY CASCADE" % ", ".join('"%s"' % t for t in tables))
        for (sequence,) in db.execute_sql("SELECT sequence_name FROM information_schema.sequences"
                                          " WHERE sequence_schema = current_schema()").fetchall():
            db.execute_sql('ALTER SEQUENCE "%s" RESTART' % sequence)


def _drop_and_migrate(store) -> None:
    tables = store.db.get_tables()
    if tables:
        store.db.execute_sql("DROP TABLE IF EXISTS %s CASCADE" % ", ".join('"%s"' % t for t in tables))
    store.migrate()
