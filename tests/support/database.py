"""An empty, fully migrated SQLite database for the tests that need one, as a copy.

Migrating a fresh file runs every migration's DDL with a commit (and an fsync) each: about
100 ms, paid by hundreds of tests. The template is migrated once per test process by the current
code, closed (so its WAL is checkpointed into the file), and copied; a copy is the same file a
fresh migration writes, and `Store.migrate()` on it applies nothing.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

NAME = "wecomd.db"


@functools.lru_cache(maxsize=None)
def _template() -> Path:
    from wecomd.store import Store

    directory = Path(tempfile.mkdtemp(prefix="wecomd-template-"))
    atexit.register(shutil.rmtree, directory, True)
    store = Store(NAME, base_dir=directory)
    store.migrate()
    store.close()
    return directory / NAME


def migrated_sqlite(directory: Path, name: str = NAME) -> Path:
    """Write the migrated database to directory/name and return its path. An existing database
    there (a test reopening its store, as after a restart) is left as it is."""
    target = Path(directory) / name
    if not target.exists():
        shutil.copyfile(_template(), target)
    return target
