"""Operator accounts and their API tokens (tables `operator` and `api_token`, migration 0008).

An account has a role (models.OPERATOR_ROLES) and optionally a list of apps it may see. Passwords
are stored as passwords.hash_password hashes and tokens as the SHA-256 of the token, so a copy of
the database (a backup) opens no account. `wecomd user` and the Operators page both write here;
wecomd.accounts reads an account on every request, so a change made by either, in any process,
holds from the next request on.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

import peewee

from .errors import guarded
from .models import OPERATOR_ROLES, ApiToken, Operator
from .times import iso, utcnow

OPERATOR_FIELDS = ("name", "role", "apps", "disabled", "created_at", "updated_at")


class OperatorExists(ValueError):
    """An account of that name exists already."""


def operator_json(row: Operator, with_hash: bool = False) -> dict:
    """An account as the API and `wecomd user list` show it; `with_hash` adds its password hash
    (for the credential fingerprint of sessions, never sent anywhere)."""
    out = dict(name=row.name, role=row.role, apps=split_apps(row.apps), disabled=bool(row.disabled),
               created_at=iso(row.created_at), updated_at=iso(row.updated_at))
    if with_hash:
        out["password_hash"] = row.password_hash
    return out


def split_apps(apps: Optional[str]) -> Optional[list[str]]:
    """The stored comma-separated app list as a list; None: every app."""
    return [name for name in apps.split(",") if name] if apps else None


def _join_apps(apps: Optional[list[str]]) -> Optional[str]:
    return ",".join(apps) if apps else None


def _check_role(role: str) -> None:
    if role not in OPERATOR_ROLES:
        raise ValueError("role must be one of %s, not %r" % (", ".join(OPERATOR_ROLES), role))


class Operators:
    """The accounts and tokens of the database `db` (named `name`)."""

    def __init__(self, db: peewee.Database, name: str, Operator: type[Operator], ApiToken: type[ApiToken]) -> None:
        self.db, self.name, self.Operator, self.ApiToken = db, name, Operator, ApiToken

    # ------------------------------------------------------------ accounts

    @guarded("add an operator")
    def add(self, name: str, role: str, password_hash: str, apps: Optional[list[str]] = None) -> dict:
        """Create an account; OperatorExists when the name is taken, ValueError for a bad role."""
        _check_role(role)
        now = utcnow(whole_seconds=True)
        try:
            with self.db.atomic():
                self.Operator.insert(name=name, role=role, apps=_join_apps(apps), password_hash=password_hash,
                                     disabled=0, created_at=now, updated_at=now).execute()
        except peewee.IntegrityError:
            raise OperatorExists("operator %r exists already" % name)
        return self.get(name)

    @guarded("read an operator")
    def get(self, name: str, with_hash: bool = False) -> Optional[dict]:
        """One account's JSON (see operator_json), or None."""
        row = self.Operator.get_or_none(self.Operator.name == name)
        return operator_json(row, with_hash) if row is not None else None

    @guarded("list operators")
    def all(self) -> list[dict]:
        """Every account, by name."""
        return [operator_json(row) for row in self.Operator.select().order_by(self.Operator.name)]

    @guarded("change an operator")
    def update(self, name: str, *, role: Optional[str] = None, apps: Optional[list[str]] = None,
               clear_apps: bool = False, password_hash: Optional[str] = None,
               disabled: Optional[bool] = None) -> dict:
        """Change what is given of one account; KeyError when there is none. `clear_apps`: every app."""
        Op = self.Operator
        changes: dict = {Op.updated_at: utcnow(whole_seconds=True)}
        if role is not None:
            _check_role(role)
            changes[Op.role] = role
        if apps is not None or clear_apps:
            changes[Op.apps] = None if clear_apps else _join_apps(apps)
        if password_hash is not None:
            changes[Op.password_hash] = password_hash
        if disabled is not None:
            changes[Op.disabled] = int(disabled)
        with self.db.atomic():
            if not Op.update(changes).where(Op.name == name).execute():
                raise KeyError("no operator %r" % name)
        return self.get(name)

    # ------------------------------------------------------------ tokens

    @guarded("save an API token")
    def add_token(self, operator: str, token_hash: str, label: Optional[str], created_by: str) -> dict:
        """Keep a new token (its hash) of `operator`; KeyError when there is no such account."""
        if self.Operator.get_or_none(self.Operator.name == operator) is None:
            raise KeyError("no operator %r" % operator)
        now = utcnow(whole_seconds=True)
        with self.db.atomic():
            token_id = self.ApiToken.insert(token_hash=token_hash, operator=operator, label=label,
                                            created_by=created_by, created_at=now).execute()
        return self._token_json(self.ApiToken.get_by_id(token_id))

    @guarded("list API tokens")
    def tokens(self, operator: Optional[str] = None) -> list[dict]:
        """The tokens (never their hashes), newest first; of one operator when given."""
        T = self.ApiToken
        query = T.select().order_by(T.id.desc())
        if operator is not None:
            query = query.where(T.operator == operator)
        return [self._token_json(row) for row in query]

    @guarded("revoke an API token")
    def revoke_token(self, token_id: int) -> dict:
        """Revoke a token now; KeyError when there is none. Revoking twice keeps the first time."""
        T = self.ApiToken
        with self.db.atomic():
            row = T.get_or_none(T.id == token_id)
            if row is None:
                raise KeyError("no API token %r" % token_id)
            if row.revoked_at is None:
                T.update({T.revoked_at: utcnow(whole_seconds=True)}).where(T.id == token_id).execute()
        return self._token_json(T.get_by_id(token_id))

    @guarded("read an API token")
    def token_owner(self, token_hash: str, now: datetime) -> Optional[dict]:
        """The account (with its hash) a live token belongs to, or None (unknown or revoked token).
        Records when the token was last used, at most once a minute."""
        T = self.ApiToken
        row = T.get_or_none((T.token_hash == token_hash) & T.revoked_at.is_null())
        if row is None:
            return None
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() >= 60:
            with self.db.atomic():
                T.update({T.last_used_at: now}).where(T.id == row.id).execute()
        return self.get(row.operator, with_hash=True)

    @staticmethod
    def _token_json(row: ApiToken) -> dict:
        return dict(id=row.id, operator=row.operator, label=row.label, created_by=row.created_by,
                    created_at=iso(row.created_at), last_used_at=iso(row.last_used_at),
                    revoked_at=iso(row.revoked_at))
