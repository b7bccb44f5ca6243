"""StoreError, and the guard that turns a query's database failure into it."""
from __future__ import annotations

import functools
import sqlite3
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol, TypeVar

import peewee
from playhouse import migrations

# What a database call may raise besides the queries' own KeyError and ValueError.
DATABASE_ERRORS = (peewee.PeeweeException, migrations.MigrationError, OSError, sqlite3.Error)


class StoreError(Exception):
    """The database could not be opened, read or written (wecomd.store re-exports it)."""


class Named(Protocol):
    """What `guarded` needs of the object whose method it wraps: the database's name, for the message."""

    name: str


@contextmanager
def store_errors(name: str, action: str) -> Iterator[None]:
    """Raise a database failure inside the block as StoreError("<name>: could not <action>: ...")."""
    try:
        yield
    except DATABASE_ERRORS as exc:
        raise StoreError("%s: could not %s: %s" % (name, action, exc)) from exc


F = TypeVar("F", bound=Callable)


def guarded(action: str) -> Callable[[F], F]:
    """Decorate a method of a query class (a `Named`) so that database failures become StoreError."""
    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: Named, *args, **kwargs):
            # store_errors inline: a generator context manager per call cost more than some queries
            try:
                return method(self, *args, **kwargs)
            except DATABASE_ERRORS as exc:
                raise StoreError("%s: could not %s: %s" % (self.name, action, exc)) from exc
        return wrapper  # type: ignore[return-value]
    return decorate
