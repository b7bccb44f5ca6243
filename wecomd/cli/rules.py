"""Dry runs of the rules: `wecomd rules test` (one made-up message) and `wecomd rules replay` (history).

Nothing here runs a command, calls a webhook or sends a message: it only says what would happen,
the app's own `reply =` included when it would answer (automation.default_reply).
"""
from __future__ import annotations

import argparse
import collections
import sys
from typing import IO, Optional

from wecomd.automation import rules
from wecomd.cli.options import EXIT_USAGE, config_arg, load, parse_iso
from wecomd.config import Config
from wecomd.wecom import messages, samples

NAME, HELP = "rules", "dry runs of the rules: `rules test TEXT|--click KEY`, `rules replay --since ISO`"
APP_REPLY = "the app's own reply"  # its name in the replay's summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(metavar="ACTION")
    test = sub.add_parser("test", help="which rule would answer a message, and with what")
    config_arg(test)
    test.add_argument("--app", help="the app the message arrives at (default: the first app)")
    test.add_argument("--from", dest="from_user", default="test_user", help="sender UserID (default: test_user)")
    what = test.add_mutually_exclusive_group(required=True)
    what.add_argument("text", nargs="?", help="a text message")
    what.add_argument("--click", metavar="KEY", help="a menu click with this EventKey")
    what.add_argument("--type", dest="kind", choices=samples.KINDS, metavar="KIND",
                      help="any other message or event kind, as `wecomd simulate --type` (e.g. enter_agent, image)")
    test.set_defaults(rules_action=run_test)
    replay = sub.add_parser("replay", help="run the rules over stored messages as a dry run")
    config_arg(replay)
    replay.add_argument("--since", type=parse_iso, help="only messages received at or after this ISO time")
    replay.add_argument("--app", help="only this app")
    replay.set_defaults(rules_action=run_replay)


def main(args: argparse.Namespace) -> int:
    if not getattr(args, "rules_action", None):
        print("wecomd rules: say `test` or `replay` (see wecomd rules --help)", file=sys.stderr)
        return EXIT_USAGE
    return args.rules_action(load(args), args)


def run_test(config: Config, args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    app = args.app or next(iter(config.apps), None)
    if app not in config.apps:
        print("wecomd: no app %r in the config" % app, file=sys.stderr)
        return 2
    message = messages.parse(_sample(config, app, args))
    compiled = rules.compile_rules(config.rules)
    described = explain(compiled, config, app, message)
    fallback = _fallback(config, app, message, rules.select(compiled, app, message))
    for line in described + ([fallback] if fallback else []):
        print(line, file=out)
    return 0


def run_replay(config: Config, args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    from wecomd.automation.runner import default_reply
    from wecomd.store import Store, StoreError

    compiled = rules.compile_rules(config.rules)
    store = Store(config.server.database)
    hits: collections.Counter = collections.Counter()
    seen = 0
    try:
        for row in store.messages.iter_inbound(since=args.since, app=args.app):
            seen += 1
            if row["app"] not in config.apps:
                continue
            message = messages.parse(row["raw"])
            head = "#%d %s %s %s: " % (row["id"], row["received_at"], row["app"], message.from_user)
            matches = rules.select(compiled, row["app"], message)
            for match in matches:
                hits[match.rule.name] += 1
                print(head + _action_text(rules.describe(match, row["app"], message)), file=out)
            reply = default_reply(config.apps[row["app"]], message, matches)
            if reply and message.from_user:
                hits[APP_REPLY] += 1
                print(head + "%s %r" % (APP_REPLY, reply), file=out)
    except StoreError as exc:
        print("wecomd: replay failed: %s" % exc, file=sys.stderr)
        return 1
    finally:
        store.close()
    print("dry run over %d stored message(s): %s" % (seen, ", ".join(
        "%s %d" % kv for kv in hits.most_common()) or "no rule matched"), file=out)
    return 0


def explain(compiled: list, config: Config, app: str, message: messages.Message) -> list:
    """One line per rule that would fire, in order."""
    return ["rule %s (when %s): %s" % (m.rule.name, m.rule.when, _action_text(rules.describe(m, app, message)))
            for m in rules.select(compiled, app, message)]


def _action_text(d: dict) -> str:
    parts = []
    if d.get("reply") is not None:
        parts.append("reply %r" % d["reply"])
    if d.get("run"):
        parts.append("run %s" % d["run"])
    if d.get("webhook"):
        parts.append("webhook %s" % d["webhook"])
    if d.get("notify"):
        parts.append("notify group %s (%s) %r" % (d["notify"], d["notify_format"], d["notify_text"]))
    return "; ".join(parts) + ("; continue" if d.get("continue") else "")


def _fallback(config: Config, app: str, message: messages.Message, matches: list) -> Optional[str]:
    """What the app's own `reply =` does for `message`: the line to print, or None when a rule that
    answers matched (or a rule matched and the app has no reply)."""
    from wecomd.automation.runner import default_reply  # with the workers and the store: only for a dry run

    reply = default_reply(config.apps[app], message, matches)
    if reply and matches:
        return "no rule replies; %s would answer (unless a webhook replies first): %r" % (APP_REPLY, reply)
    if reply:
        return "no rule matches; %s would answer: %r" % (APP_REPLY, reply)
    return None if matches else "no rule matches: no answer (an empty 200)"


def _sample(config: Config, app: str, args: argparse.Namespace) -> str:
    a = config.apps[app]
    if args.click:
        return samples.build("click", corp_id=a.corp_id, agent_id=a.agent_id, from_user=args.from_user,
                              event_key=args.click)
    if args.kind:
        return samples.build(args.kind, corp_id=a.corp_id, agent_id=a.agent_id, from_user=args.from_user)
    return samples.build("text", corp_id=a.corp_id, agent_id=a.agent_id, from_user=args.from_user, content=args.text)
