"""Keyword, menu-click and event rules from `[rule:NAME]` sections: validation, matching, templates.

Pure: no I/O and no tornado. The daemon asks `select` which rules a message triggers, renders their
replies with `render`, and runs their commands with `command_argv` and `command_env` (never a shell).
"""
from __future__ import annotations

import difflib
import math
import re
import shlex
import string
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Pattern, Sequence, Tuple

from wecomd.wecom import cards
from wecomd.wecom.messages import Message

OPTIONS = ("app", "when", "reply", "run", "end_of_options", "timeout", "webhook", "webhook_secret", "priority",
           "continue", "ask", "history", "notify", "notify_text", "notify_format", "stream", "card")
NOTIFY_FORMATS = ("text", "markdown")  # what a group robot is sent (`notify_format`)
WHEN_FORMS = ("text equals X | text contains X | text matches REGEX | click KEY | event NAME | "
              "msgtype NAME | any")
FIELDS = ("from_user", "content", "event_key", "app", "msgtype", "event", "to_user", "agent_id",
          "msg_id", "create_time", "rule", "user_name")
DEFAULT_TIMEOUT = 60.0
DEFAULT_HISTORY = 10  # earlier messages of the conversation sent with an `ask`
MAX_HISTORY = 100  # more would rarely fit a model's context, and each one is read from the database
_BOOLEANS = {"1": True, "yes": True, "true": True, "on": True,
             "0": False, "no": False, "false": False, "off": False}
_TEXT_KINDS = {"equals": "text_equals", "contains": "text_contains", "matches": "text_matches"}
_NAMED_KINDS = {"click": "click", "event": "event", "msgtype": "msgtype"}
_FORMATTER = string.Formatter()


class RuleError(ValueError):
    """Rules that cannot be used; `problems` lists every reason, one line each, naming the rule."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class CommandRefused(RuleError):
    """A `run` argument filled in from the message starts with "-": nothing may run.

    A program would read it as an option (`date -f/etc/passwd` prints the file), so the command is
    refused unless the rule says `end_of_options = yes`. `str()` is the reason for the run record
    (the value included); `why` names only the argument, for the log, which never holds message text.
    """

    def __init__(self, rule: str, program: str, position: int, template: str, value: str) -> None:
        self.program, self.position = program, position
        self.why = "argument %d (%s) starts with \"-\"" % (position, template)
        shown = value if len(value) <= 40 else value[:40] + "…"
        super().__init__(["argument %d (%s = %r) starts with \"-\", so %s would read it as an option: "
                          "refused, nothing was run (the rule's end_of_options = yes passes such text "
                          "after \"--\")" % (position, template, shown, program)])


@dataclass(frozen=True)
class Match:
    """A rule that matched a message, with the regex groups of `text matches` ("" for unmatched ones)."""

    rule: "Rule"
    groups: Tuple[str, ...] = ()
    named: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """One compiled `[rule:NAME]` section."""

    name: str
    app: Optional[str]
    when: str  # as written
    kind: str  # text_equals text_contains text_matches click event msgtype any
    arg: Optional[str]
    reply: Optional[str] = None
    run: Optional[str] = None
    end_of_options: bool = False  # put "--" before the first argument of `run` that starts with a field
    timeout: float = DEFAULT_TIMEOUT
    webhook: Optional[str] = None
    webhook_secret: Optional[str] = field(default=None, repr=False)
    priority: Optional[int] = None
    cont: bool = False
    order: int = 0
    regex: Optional[Pattern] = field(default=None, repr=False, compare=False)
    ask: Optional[str] = None  # an [llm:NAME] to stream the answer from
    history: int = DEFAULT_HISTORY  # earlier messages of the conversation sent with `ask`
    notify: Optional[str] = None  # a [group:NAME] robot told about the message
    notify_text: Optional[str] = None  # its template; None: the message's own text
    notify_format: str = "text"  # NOTIFY_FORMATS
    stream: bool = False  # a bot's webhook: its response body streams into the bot's answer
    card: Optional[Mapping[str, Any]] = field(default=None, compare=False)  # a bot's template card

    def wants(self, name: str) -> bool:
        """Whether this rule's reply or notify_text uses field `name`, or it runs a command (which gets
        every field in its environment, command_env)."""
        return bool(self.run) or any(name in _field_names(text) for text in (self.reply, self.notify_text) if text)

    def matches(self, app: str, message: Message) -> Optional[Match]:
        """The Match when this rule fires for `message` received by `app`, else None."""
        if self.app is not None and self.app != app:
            return None
        kind, arg = self.kind, self.arg or ""
        if kind == "any":
            return Match(self)
        if kind.startswith("text_"):
            return self._match_text(message)
        if kind == "msgtype":
            return Match(self) if (message.msgtype or "").lower() == arg.lower() else None
        if message.msgtype != "event":
            return None
        # wecom-protocol.md §6: Event is sent as-is, `LOCATION` upper-case and the rest lower-case.
        event = (message.event or "").lower()
        if kind == "event":  # event NAME, or event NAME KEY: its EventKey too
            name, _, key = arg.partition(" ")
            return Match(self) if event == name.lower() and (not key or message.event_key == key.strip()) else None
        # click KEY: a menu click, or a button of a 智能机器人's card (template_card_event)
        return Match(self) if event in ("click", "template_card_event") and message.event_key == arg else None

    def _match_text(self, message: Message) -> Optional[Match]:
        if message.msgtype != "text":
            return None
        content = message.content or ""
        if self.kind == "text_equals":
            return Match(self) if content.strip() == self.arg else None
        if self.kind == "text_contains":
            return Match(self) if (self.arg or "") in content else None
        found = self.regex.search(content) if self.regex is not None else None
        if found is None:
            return None
        named = {name: value or "" for name, value in found.groupdict().items()}
        return Match(self, tuple(value or "" for value in found.groups()), named)


# --- compiling --------------------------------------------------------------------------------

def compile_rules(raw: Mapping[str, Mapping[str, str]]) -> List[Rule]:
    """Compile `{name: {option: text}}` (file order) into rules in evaluation order.

    The order is by (priority, file order), where a rule without `priority` counts as 0: a
    negative priority runs before unprioritised rules, a positive one after. Raises RuleError
    naming every problem (apps are not checked here: see `problems`).
    """
    found: List[str] = []
    compiled = [_compile(name, options, order, found) for order, (name, options) in enumerate(raw.items())]
    if found:
        raise RuleError(found)
    return sorted(compiled, key=lambda rule: (rule.priority or 0, rule.order))


def problems(raw: Mapping[str, Mapping[str, str]], app_names: Iterable[str],
             llm_names: Optional[Iterable[str]] = None, group_names: Optional[Iterable[str]] = None) -> List[str]:
    """Every problem of the rules, each starting with `[rule:NAME] option:`; [] when all are usable.

    `ask = NAME` is checked against `llm_names` (the [llm:NAME] sections) and `notify = NAME`
    against `group_names` (the [group:NAME] sections) when they are given.
    """
    found: List[str] = []
    apps = list(app_names)
    llms = None if llm_names is None else list(llm_names)
    groups = None if group_names is None else list(group_names)
    for order, (name, options) in enumerate(raw.items()):
        _compile(name, options, order, found)
        app = (options.get("app") or "").strip()
        if app and app not in apps:
            found.append("[rule:%s] app: no [app:%s] section%s" % (name, app, _suggest(app, apps)))
        ask = (options.get("ask") or "").strip()
        if ask and llms is not None and ask not in llms:
            found.append("[rule:%s] ask: no [llm:%s] section%s" % (name, ask, _suggest(ask, llms)))
        group = (options.get("notify") or "").strip()
        if group and groups is not None and group not in groups:
            found.append("[rule:%s] notify: no [group:%s] section%s" % (name, group, _suggest(group, groups)))
    return found


def _compile(name: str, options: Mapping[str, str], order: int, found: List[str]) -> Rule:
    """The Rule for one section; problems go to `found` (the Rule is then only a placeholder)."""
    def report(option: str, problem: str) -> None:
        found.append("[rule:%s] %s: %s" % (name, option, problem))

    for option in options:
        if option not in OPTIONS:
            report(option, "unknown option%s" % _suggest(option, OPTIONS))
    text = {option: (options.get(option) or "").strip() or None for option in OPTIONS}
    if text["when"] is None:
        report("when", "missing (required): one of " + WHEN_FORMS)
        kind, arg, regex = "any", None, None
    else:
        kind, arg, regex = _parse_when(text["when"], report)
    if not (text["reply"] or text["run"] or text["webhook"] or text["ask"] or text["notify"] or text["card"]):
        found.append("[rule:%s]: nothing to do: set reply, run or webhook, or ask an [llm:NAME], or notify "
                     "a [group:NAME], or answer with a card" % name)
    groups = regex.groups if regex is not None else None
    named = set(regex.groupindex) if regex is not None else set()
    for shadowed in sorted(named & set(FIELDS)):
        report("when", "the named group (?P<%s>) has the name of a built-in field: rename it" % shadowed)
    if text["reply"]:
        for problem in _template_problems(text["reply"], groups, named):
            report("reply", problem)
    end_of_options = _converted(text["end_of_options"], _boolean, False, "end_of_options", report)
    if text["run"]:
        _check_run(text["run"], groups, named, end_of_options, report)
    elif text["end_of_options"]:
        report("end_of_options", "set without a run")
    if text["webhook"] and not _is_http_url(text["webhook"]):
        report("webhook", "must be an http:// or https:// URL")
    if text["webhook_secret"] and not text["webhook"]:
        report("webhook_secret", "set without a webhook")
    if text["history"] and not text["ask"]:
        report("history", "set without an ask")
    if text["notify_text"]:
        for problem in _template_problems(text["notify_text"], groups, named):
            report("notify_text", problem)
    for option in ("notify_text", "notify_format"):
        if text[option] and not text["notify"]:
            report(option, "set without a notify")
    if text["stream"] and not text["webhook"]:
        report("stream", "set without a webhook")
    card = _card(text["card"], groups, named, report) if text["card"] else None
    if card is not None and (text["reply"] or text["ask"] or text["run"]):
        report("card", "a card is the whole answer: set it without reply, run or ask")
    notify_format = (text["notify_format"] or "text").lower()
    if notify_format not in NOTIFY_FORMATS:
        report("notify_format", "must be text or markdown (got %r)" % text["notify_format"])
    return Rule(name=name, app=text["app"], when=text["when"] or "", kind=kind, arg=arg,
                reply=text["reply"], run=text["run"], end_of_options=end_of_options,
                timeout=_converted(text["timeout"], _timeout, DEFAULT_TIMEOUT, "timeout", report),
                webhook=text["webhook"], webhook_secret=text["webhook_secret"],
                priority=_converted(text["priority"], _priority, None, "priority", report),
                cont=_converted(text["continue"], _boolean, False, "continue", report),
                order=order, regex=regex, ask=text["ask"],
                history=_converted(text["history"], _history, DEFAULT_HISTORY, "history", report),
                notify=text["notify"], notify_text=text["notify_text"], notify_format=notify_format,
                stream=_converted(text["stream"], _boolean, False, "stream", report), card=card)


def _card(text: str, groups: Optional[int], named: set, report) -> Optional[dict]:
    """The JSON template card of `card =` (its texts may hold template fields), or None after a report."""
    try:
        card = cards.parse(text)
    except cards.CardError as exc:
        report("card", str(exc))
        return None
    seen: List[str] = []
    cards.render(card, lambda value: seen.append(value) or value)
    for problem in sorted({p for value in seen for p in _template_problems(value, groups, named)}):
        report("card", problem)
    return card


def render_card(card: Mapping[str, Any], fields: Mapping[str, str]) -> dict:
    """A rule's card with every text's template fields filled in."""
    return cards.render(card, lambda value: render(value, fields))


def _parse_when(when: str, report) -> Tuple[str, Optional[str], Optional[Pattern]]:
    words = when.split(None, 2)
    head = words[0].lower()
    if head == "any":
        if len(words) > 1:
            report("when", "`any` takes nothing after it")
        return "any", None, None
    if head == "text" and len(words) > 1 and words[1].lower() in _TEXT_KINDS:
        kind = _TEXT_KINDS[words[1].lower()]
        if len(words) < 3:
            report("when", "`text %s` needs something after it" % words[1].lower())
            return kind, None, None
        return kind, words[2], _regex(words[2], report) if kind == "text_matches" else None
    if head in _NAMED_KINDS:
        arg = when.split(None, 1)[1] if len(words) > 1 else None
        most = {"click": None, "event": 2, "msgtype": 1}[head]  # event NAME [KEY]
        if arg is None or (most is not None and len(arg.split()) > most):
            report("when", "`%s` needs %s after it" % (head, {"click": "one KEY", "event": "one NAME (and "
                                                              "at most one KEY)", "msgtype": "one NAME"}[head]))
        return _NAMED_KINDS[head], arg, None
    report("when", "unknown form %r: use one of %s" % (when, WHEN_FORMS))
    return "any", None, None


def _regex(pattern: str, report) -> Optional[Pattern]:
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:  # a{99999999999}, deep nesting
        report("when", "bad regular expression: %s" % exc)
        return None


def _check_run(run: str, groups: Optional[int], named: set, end_of_options: bool, report) -> None:
    try:
        argv = shlex.split(run)
    except ValueError as exc:
        report("run", "cannot be split into arguments: %s" % exc)
        return
    if not argv or not argv[0]:
        report("run", "no command")
        return
    for index, argument in enumerate(argv):
        problems_here = _template_problems(argument, groups, named)
        for problem in problems_here:
            report("run", problem)
        if index == 0 and not problems_here and _field_names(argument):
            # The program itself must never come from a message: only its arguments may.
            report("run", "the command (first word) cannot contain a field")
            return
    if end_of_options:
        _check_end_of_options(argv, report)


def _check_end_of_options(argv: List[str], report) -> None:
    """With end_of_options, "--" goes before the first argument that starts with a field."""
    first = next((i for i, word in enumerate(argv) if _starts_with_field(i, word)), None)
    if first is None:
        return  # no argument can start with a message's text: nothing is inserted
    if "--" in argv[1:first]:
        report("end_of_options", "run already has -- before %s: remove end_of_options" % argv[first])
        return
    before = argv[first - 1]
    if first > 1 and before.startswith("-"):
        # Between an option and its value, "--" would become the value (in `date -d -- -x`, "--" is
        # the date and -x an option again), and wecomd cannot know which options take one.
        report("end_of_options", "%s comes right before %s: if %s takes a value, the -- put between them "
                                 "becomes that value; write %s%s (or --option=%s) for an option's value, "
                                 "or %s -- %s yourself, without end_of_options, for a flag"
               % (before, argv[first], before, before, argv[first], argv[first], before, argv[first]))
    for word in argv[first + 1:]:
        if word.startswith("-") and len(word) > 1:
            report("end_of_options", "%s comes after %s, so after the -- put before that field it is no "
                                     "longer an option: move it before %s" % (word, argv[first], argv[first]))


def _template_problems(template: str, groups: Optional[int], named: set) -> List[str]:
    """Why `template` cannot be rendered with the fields a rule provides ([] when it can)."""
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        return ["bad template: %s (write {{ and }} for literal braces)" % exc]
    found = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        whole = "{%s%s%s}" % (name, "!" + conversion if conversion else "", ":" + spec if spec else "")
        if spec or conversion or not _simple_name(name):
            found.append("%s: only plain fields like {from_user} or {1}: no attribute, index, "
                         "conversion or format spec (write {{ and }} for literal braces)" % whole)
        elif name.isdigit():
            # Very long numbers would exceed int()'s digit limit; any over 6 digits is out of range.
            found.extend(_group_problem(whole, int(name) if len(name) <= 6 else 10 ** 6, groups))
        elif name not in FIELDS and name not in named:
            choices = list(FIELDS) + sorted(named)
            found.append("%s: unknown field%s; the fields are %s" % (whole, _suggest(name, choices),
                                                                    ", ".join(choices)))
    return found


def _group_problem(whole: str, number: int, groups: Optional[int]) -> List[str]:
    if groups is None:
        return ["%s: numbered groups need `when = text matches REGEX`" % whole]
    if number == 0 or number > groups:
        plural = "" if groups == 1 else "s"
        return ["%s: the regex has %d group%s (numbered from 1)" % (whole, groups, plural)]
    return []


def _simple_name(name: str) -> bool:
    """A field name without attribute access or indexing: an identifier, or a group number."""
    return name.isidentifier() or bool(re.fullmatch(r"0|[1-9][0-9]*", name))


def _field_names(template: str) -> List[str]:
    return [name for _, name, _, _ in _FORMATTER.parse(template) if name is not None]


def _converted(text: Optional[str], convert, default, option: str, report):
    if text is None:
        return default
    try:
        return convert(text)
    except ValueError as exc:
        report(option, "%s (got %r)" % (exc, text))
        return default


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _priority(text: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError("not an integer")
    return int(text)


def _history(text: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError("not an integer")
    if not 0 <= int(text) <= MAX_HISTORY:
        raise ValueError("must be from 0 to %d messages" % MAX_HISTORY)
    return int(text)


def _boolean(text: str) -> bool:
    if text.lower() not in _BOOLEANS:
        raise ValueError("not a boolean: use yes or no")
    return _BOOLEANS[text.lower()]


def _is_http_url(text: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # e.g. a bracketed host that is not an IPv6 address (found by fuzzing)
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not any(c.isspace() for c in text)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return " (did you mean %s?)" % close[0] if close else ""


# --- using rules ------------------------------------------------------------------------------

def select(rules: Sequence[Rule], app: str, message: Message) -> List[Match]:
    """The matches in order: the first, then later ones for as long as each match said continue."""
    matches: List[Match] = []
    for rule in rules:
        match = rule.matches(app, message)
        if match is not None:
            matches.append(match)
            if not rule.cont:
                break
    return matches


def template_fields(match: Match, app: str, message: Message, user_name: Optional[str] = None) -> Dict[str, str]:
    """Every field a template of `match.rule` may use, as text ("" when the message lacks it).
    `user_name`: the sender's name as the console shows it (a member's contact name, a 微信客服
    customer's nickname); from_user when it is not known."""
    values = {
        "from_user": message.from_user, "user_name": user_name or message.from_user,
        "content": message.content, "event_key": message.event_key,
        "app": app, "msgtype": message.msgtype, "event": message.event, "to_user": message.to_user,
        "agent_id": message.agent_id, "msg_id": message.msg_id, "create_time": message.create_time,
        "rule": match.rule.name,
    }
    fields = {name: "" if value is None else str(value) for name, value in values.items()}
    fields.update((str(number), value) for number, value in enumerate(match.groups, 1))
    fields.update(match.named)
    return fields


def render(template: str, fields: Mapping[str, str]) -> str:
    """`template` with each {name} replaced by fields[name] ("" if absent); {{ and }} are braces.

    Only plain fields: attribute access, indexing, conversions and format specs raise RuleError
    (compile_rules refuses them earlier), so a template can never reach into Python objects.
    """
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise RuleError(["bad template: %s" % exc]) from None
    out = []
    for literal, name, spec, conversion in parts:
        out.append(literal)
        if name is None:
            continue
        if spec or conversion or not _simple_name(name):
            raise RuleError(["{%s}: only plain fields are allowed" % name])
        out.append(str(fields.get(name, "")))
    return "".join(out)


def notify_text(match: Match, fields: Mapping[str, str], message: Message) -> str:
    """What `notify` tells the group: `notify_text` rendered, else the message's own text, else (a
    picture, a file, an event) one line naming the sender and what they sent."""
    rule = match.rule
    if rule.notify_text:
        return render(rule.notify_text, fields)
    if message.content:
        return message.content
    what = message.msgtype or "message"
    if what == "event":
        what = " ".join(filter(None, ("event", message.event, message.event_key)))
    return "%s: [%s]" % (message.from_user or "?", what)


def command_argv(rule: Rule, fields: Mapping[str, str]) -> List[str]:
    """The argv of `rule.run`: the template is split first, then each word rendered on its own.

    So a field's value always stays inside exactly one argument (`; rm -rf /` from a user is one
    argument, never shell syntax); run it without a shell. NUL characters are dropped.

    Nor can a message pass an option: an argument that starts with a field (no text of the
    operator's before it) and comes out starting with "-" raises CommandRefused, unless it comes
    after a literal "--" argument or the rule has `end_of_options = yes`, which puts "--" before
    the first argument that starts with a field.
    """
    if not rule.run:
        raise RuleError(["[rule:%s] run: no command" % rule.name])
    words = shlex.split(rule.run)
    argv: List[str] = []
    operands = False  # after "--": arguments are operands, never options
    for index, word in enumerate(words):
        exposed = _starts_with_field(index, word) and not operands
        if exposed and rule.end_of_options:
            argv.append("--")
            operands, exposed = True, False
        value = render(word, fields).replace("\0", "")
        if exposed and value.startswith("-"):
            raise CommandRefused(rule.name, argv[0], index, word, value)
        argv.append(value)
        operands = operands or (index > 0 and word == "--")
    return argv


def _starts_with_field(index: int, word: str) -> bool:
    """An argument (not the program) whose text starts with a field's value, not the operator's."""
    parts = list(_FORMATTER.parse(word)) if index > 0 else []
    return bool(parts) and parts[0][0] == "" and parts[0][1] is not None


def command_env(fields: Mapping[str, str], message: Message) -> Dict[str, str]:
    """The WECOMD_* variables a command gets (NUL characters dropped, which an environment cannot hold)."""
    env = {"WECOMD_" + name.upper(): fields.get(name, "") for name in FIELDS if name != "rule"}
    env["WECOMD_MSGTYPE"] = fields.get("msgtype") or message.msgtype or ""
    env["WECOMD_RULE"] = fields.get("rule", "")
    for name, value in fields.items():
        if name.isdigit():
            env["WECOMD_GROUP_" + name] = value
        elif name not in FIELDS and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            env["WECOMD_GROUP_" + name.upper()] = value
    return {name: str(value).replace("\0", "") for name, value in env.items()}


def describe(match: Match, app: str, message: Message) -> dict:
    """What a match would do, for `wecomd rules test`: nothing is run or sent."""
    rule = match.rule
    fields = template_fields(match, app, message)
    try:
        run: Any = command_argv(rule, fields) if rule.run else None
    except CommandRefused as exc:
        run = "refused: %s" % exc
    described = {"rule": rule.name, "when": rule.when,
                 "reply": render(rule.reply, fields) if rule.reply else None,
                 "run": run, "webhook": rule.webhook, "continue": rule.cont}
    if rule.ask:
        described.update(ask=rule.ask, history=rule.history)
    if rule.notify:
        described.update(notify=rule.notify, notify_format=rule.notify_format,
                         notify_text=notify_text(match, fields, message))
    return described

