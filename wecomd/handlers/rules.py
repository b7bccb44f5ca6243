"""The rules panel's route (its view: static/rules.js): /api/rules, what the automation is configured to
do and what each rule has done. Resuming a paused conversation is the thread's (handlers/thread.py)."""
from __future__ import annotations

from typing import Any

from wecomd.handlers.base import ApiHandler


class RulesHandler(ApiHandler):
    """The rules in the order they are tried, with hit counts and when each last fired."""

    async def get(self) -> None:
        stats = await self.services.read(self.services.store.runs.stats)
        rules = [dict(public_rule(rule), **stats.get(rule.name, {"hits": 0, "last_fired": None, "failures": 0}))
                 for rule in self.services.rules]
        self.write_json({"rules": rules, "settings": {
            "takeover_minutes": self.services.config.rules_settings.takeover_minutes,
            "passive_budget": self.services.config.rules_settings.passive_budget,
        }})


def public_rule(rule: Any) -> dict:
    """A rule as the dashboard may see it: never its webhook secret (nor a group robot's key, which
    is in [group:NAME], not in the rule)."""
    return {"name": rule.name, "app": rule.app, "when": rule.when, "reply": rule.reply, "run": rule.run,
            "timeout": rule.timeout, "webhook": rule.webhook, "continue": rule.cont, "priority": rule.priority,
            "notify": rule.notify, "notify_format": rule.notify_format, "notify_text": rule.notify_text}


def routes(services: Any) -> list:
    kw = dict(services=services)
    return [(r"/api/rules", RulesHandler, kw)]
