"""The PostgreSQL database TEST_POSTGRES_URL names (`.ci/run` starts one); without it the
`postgres` tests are skipped (conftest.py)."""
from __future__ import annotations

import os

import pytest

PG_URL = os.environ.get("TEST_POSTGRES_URL")
# The `postgres` marker (setup.cfg): `pytest -m postgres` selects these; without PG_URL they skip.
needs_postgres = pytest.mark.postgres


def postgres_store():
    """A Store on TEST_POSTGRES_URL with every table dropped, migrated afresh."""
    from wecomd.store import Store

    store = Store(PG_URL)
    tables = store.db.get_tables()
    if tables:
        store.db.execute_sql("DROP TABLE IF EXISTS %s CASCADE" % ", ".join('"%s"' % t for t in tables))
    store.migrate()
    return store
