"""Operator accounts, API tokens and the audit log (migration 0008), the same on every database:
`TeamStoreTests` holds the tests and each backend runs them (PostgreSQL when TEST_POSTGRES_URL names one)."""
from __future__ import annotations

from datetime import timedelta

import pytest

from support.postgres import needs_postgres, postgres_store
from wecomd.store.operators import OperatorExists
from wecomd.store.times import utcnow


class TeamStoreTests:
    """Subclasses provide the `store` fixture."""

    def test_add_get_and_list_operators(self, store):
        added = store.operators.add("li", "operator", "scrypt$hash-li", apps=["helpdesk", "hr"])
        store.operators.add("ann", "viewer", "scrypt$hash-ann")
        assert added["name"] == "li" and added["role"] == "operator" and added["apps"] == ["helpdesk", "hr"]
        assert added["disabled"] is False and "password_hash" not in added
        assert store.operators.get("li", with_hash=True)["password_hash"] == "scrypt$hash-li"
        assert [o["name"] for o in store.operators.all()] == ["ann", "li"]
        assert store.operators.get("ann")["apps"] is None  # every app
        assert store.operators.get("nobody") is None

    def test_a_name_is_taken_once_and_roles_are_checked(self, store):
        store.operators.add("li", "operator", "h")
        with pytest.raises(OperatorExists):
            store.operators.add("li", "viewer", "h2")
        with pytest.raises(ValueError):
            store.operators.add("wang", "root", "h")
        assert [o["name"] for o in store.operators.all()] == ["li"]

    def test_update_changes_only_what_is_given(self, store):
        store.operators.add("li", "operator", "h1", apps=["hr"])
        changed = store.operators.update("li", disabled=True)
        assert (changed["disabled"], changed["role"], changed["apps"]) == (True, "operator", ["hr"])
        changed = store.operators.update("li", password_hash="h2", disabled=False, clear_apps=True, role="admin")
        assert (changed["disabled"], changed["role"], changed["apps"]) == (False, "admin", None)
        assert store.operators.get("li", with_hash=True)["password_hash"] == "h2"
        with pytest.raises(KeyError):
            store.operators.update("nobody", disabled=True)

    def test_tokens_map_to_their_operator_until_revoked(self, store):
        store.operators.add("li", "operator", "h1")
        token = store.operators.add_token("li", "a" * 64, "ci script", "admin")
        assert (token["operator"], token["label"], token["revoked_at"]) == ("li", "ci script", None)
        assert "token_hash" not in token
        now = utcnow(whole_seconds=True)
        owner = store.operators.token_owner("a" * 64, now)
        assert owner["name"] == "li" and owner["password_hash"] == "h1"
        assert store.operators.tokens("li")[0]["last_used_at"] is not None
        assert store.operators.token_owner("b" * 64, now) is None
        revoked = store.operators.revoke_token(token["id"])
        assert revoked["revoked_at"] is not None
        assert store.operators.token_owner("a" * 64, now) is None
        with pytest.raises(KeyError):
            store.operators.add_token("nobody", "c" * 64, None, "admin")
        with pytest.raises(KeyError):
            store.operators.revoke_token(999)

    def test_audit_records_pages_filters_and_prunes(self, store):
        old = utcnow(whole_seconds=True) - timedelta(days=40)
        store.audit.record("admin", "login", client="10.0.0.1", at=old)
        for n in range(5):
            store.audit.record("li", "reply", target="message:%d" % n, detail={"text": "好的 %d" % n})
        store.audit.record("mallory", "login_failed", client="10.0.0.9")
        rows, cursor = store.audit.page(limit=3)
        assert [r["action"] for r in rows] == ["login_failed", "reply", "reply"] and cursor is not None
        rest, cursor = store.audit.page(limit=10, before=cursor)
        assert len(rest) == 4 and cursor is None
        replies, _ = store.audit.page(actor="li", action="reply")
        assert [r["target"] for r in replies] == ["message:%d" % n for n in (4, 3, 2, 1, 0)]
        assert replies[0]["detail"] == {"text": "好的 4"}
        assert [r["actor"] for r in store.audit.page(since=old + timedelta(days=1))[0]][-1] == "li"
        assert [r["action"] for r in store.audit.iter_all(batch=2)] == ["login"] + ["reply"] * 5 + ["login_failed"]
        assert store.audit.prune(old + timedelta(days=1)) == 1
        assert [r["action"] for r in store.audit.iter_all()][0] == "reply"


class TestSqlite(TeamStoreTests):
    @pytest.fixture
    def store(self, sqlite_store):
        return sqlite_store


@needs_postgres
class TestPostgres(TeamStoreTests):
    @pytest.fixture
    def store(self):
        store = postgres_store()
        yield store
        store.close()
