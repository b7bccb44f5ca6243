"""The team's routes (admins only, but /api/me): operator accounts, their API tokens and the audit
log. The same changes as `wecomd user`, each written to the audit log by the admin who made it."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Optional

from tornado import web

from wecomd import accounts, passwords
from wecomd.handlers.args import ID, int_arg
from wecomd.handlers.base import ApiHandler
from wecomd.store import OperatorExists

MIN_PASSWORD = 8


class MeHandler(ApiHandler):
    """Who is signed in: name, role and apps (None: every app); the pages show and hide by it."""

    def get(self) -> None:
        self.write_json(self.identity.json())


class OperatorsHandler(ApiHandler):
    role = "admin"

    async def get(self) -> None:
        rows = await self.services.read(self.services.store.operators.all)
        self.write_json({"operators": rows, "bootstrap_admin": self.services.config.admin.username})

    async def post(self) -> None:
        body = self.json_body()
        name, role = body.get("name"), body.get("role")
        if not isinstance(name, str) or not re.fullmatch(accounts.NAME_PATTERN, name):
            raise web.HTTPError(400, "name: 1-64 letters, digits and . _ @ -")
        if name in (self.services.config.admin.username, accounts.API_TOKEN_USER):
            raise web.HTTPError(409, "%r is the config file's [admin] (or the api_token's) name", name)
        if role not in accounts.ROLES:
            raise web.HTTPError(400, "role must be one of %s", ", ".join(accounts.ROLES))
        apps = self._apps(body.get("apps"))
        password_hash = self._password_hash(body.get("password"))
        try:
            row = await self.services.db(self.services.store.operators.add, name, role, password_hash, apps)
        except OperatorExists as exc:
            raise web.HTTPError(409, "%s", exc)
        await self.audit("operator_add", "operator:%s" % name, dict(role=role, apps=apps))
        self.write_json(row, status=201)

    def _apps(self, apps: Any) -> Optional[list]:
        if apps is None:
            return None
        if not isinstance(apps, list) or not all(isinstance(a, str) and a in self.services.config.apps for a in apps):
            raise web.HTTPError(400, "apps must be null (every app) or a list of configured app names")
        return apps or None

    @staticmethod
    def _password_hash(password: Any) -> str:
        if not isinstance(password, str) or len(password) < MIN_PASSWORD:
            raise web.HTTPError(400, "password: at least %d characters", MIN_PASSWORD)
        return passwords.hash_password(password)


class OperatorHandler(OperatorsHandler):
    """POST {role?, apps?, disabled?, password?}: change one account; its sessions and tokens follow
    from the next request (a new password or disabling ends them)."""

    async def get(self, name: str) -> None:
        row = await self.services.read(self.services.store.operators.get, name)
        if row is None:
            raise web.HTTPError(404, "no operator %r", name)
        self.write_json(row)

    async def post(self, name: str) -> None:
        body = self.json_body()
        changes: dict = {}
        if "role" in body:
            if body["role"] not in accounts.ROLES:
                raise web.HTTPError(400, "role must be one of %s", ", ".join(accounts.ROLES))
            changes["role"] = body["role"]
        if "apps" in body:
            changes["apps"] = self._apps(body["apps"])
            changes["clear_apps"] = changes["apps"] is None
        if "disabled" in body:
            if not isinstance(body["disabled"], bool):
                raise web.HTTPError(400, "disabled must be true or false")
            changes["disabled"] = body["disabled"]
        if "password" in body:
            changes["password_hash"] = self._password_hash(body["password"])
        if not changes:
            raise web.HTTPError(400, "send one of role, apps, disabled, password")
        try:
            row = await self.services.db(self.services.store.operators.update, name, **changes)
        except KeyError:
            raise web.HTTPError(404, "no operator %r", name)
        detail = {key: body[key] for key in ("role", "apps", "disabled") if key in body}
        if "password" in body:
            detail["password"] = "changed"
        await self.audit("operator_change", "operator:%s" % name, detail)
        self.write_json(row)


class TokensHandler(ApiHandler):
    """GET: every token (never the token itself); POST {operator, label?}: a new one, shown once."""

    role = "admin"

    async def get(self) -> None:
        rows = await self.services.read(self.services.store.operators.tokens, self.get_query_argument("operator", None))
        self.write_json({"tokens": rows})

    async def post(self) -> None:
        body = self.json_body()
        operator, label = body.get("operator"), body.get("label")
        if not isinstance(operator, str) or (label is not None and not isinstance(label, str)):
            raise web.HTTPError(400, "send {\"operator\": str, \"label\": str?}")
        token, token_hash = accounts.new_token()
        try:
            row = await self.services.db(self.services.store.operators.add_token, operator, token_hash,
                                         (label or "")[:200] or None, self.current_user)
        except KeyError:
            raise web.HTTPError(404, "no operator %r", operator)
        await self.audit("token_create", "operator:%s" % operator, dict(token_id=row["id"], label=row["label"]))
        self.write_json(dict(row, token=token), status=201)


class TokenRevokeHandler(ApiHandler):
    role = "admin"

    async def post(self, token_id: str) -> None:
        try:
            row = await self.services.db(self.services.store.operators.revoke_token, int(token_id))
        except KeyError:
            raise web.HTTPError(404, "no API token %s", token_id)
        await self.audit("token_revoke", "operator:%s" % row["operator"], dict(token_id=row["id"]))
        self.write_json(row)


class AuditHandler(ApiHandler):
    """GET ?actor=&action=&target=&since=&until=&before=&limit=: the audit log, newest first."""

    role = "admin"

    async def get(self) -> None:
        filters = {name: value for name in ("actor", "action", "target")
                   if (value := self.get_query_argument(name, "").strip())}
        for name in ("since", "until"):
            value = self.get_query_argument(name, "").strip()
            if value:
                filters[name] = _time(name, value)
        rows, cursor = await self.services.read(self.services.store.audit.page, before=int_arg(self, "before"),
                                                limit=int_arg(self, "limit") or 50, **filters)
        await self.write_page("audit", rows, cursor)


def _time(name: str, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise web.HTTPError(400, "%s must be an ISO 8601 time", name)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def routes(services: Any) -> list:
    kw = dict(services=services)
    return [
        (r"/api/me", MeHandler, kw),
        (r"/api/operators", OperatorsHandler, kw),
        (r"/api/operators/(%s)" % accounts.NAME_PATTERN, OperatorHandler, kw),
        (r"/api/tokens", TokensHandler, kw),
        (r"/api/tokens/%s/revoke" % ID, TokenRevokeHandler, kw),
        (r"/api/audit", AuditHandler, kw),
    ]
