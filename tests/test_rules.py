"""Tests for wecomd.automation.rules: validation, matching, ordering, templates and command arguments."""
from pathlib import Path

import pytest

from wecomd import config

from wecomd.automation import rules
from wecomd.wecom.messages import Message
from wecomd.automation.rules import Match, RuleError

REPO = Path(__file__).resolve().parent.parent
INJECTION = "; rm -rf / && echo pwned $(id) `id` \"quoted\" 'q'"


def text(content, **attrs):
    return Message("text", from_user="zhangsan", to_user="ww0123456789abcdef", agent_id="1000002",
                   create_time=1764370000, msg_id="7001", content=content, **attrs)


def event(name, key=None, **attrs):
    return Message("event", from_user="zhangsan", to_user="ww0123456789abcdef", agent_id="1000002",
                   create_time=1764370000, event=name, event_key=key, **attrs)


def rule(when, **options):
    options.setdefault("reply", "ok")
    return rules.compile_rules({"r": dict(options, when=when)})[0]


def fires(when, message, app="helpdesk", **options):
    return rule(when, **options).matches(app, message) is not None


def problems_of(options, apps=("helpdesk",), name="r"):
    return rules.problems({name: options}, apps)


def one_problem(options, apps=("helpdesk",)):
    found = problems_of(options, apps)
    assert len(found) == 1, found
    return found[0]


def names(matches):
    return [match.rule.name for match in matches]


# --- every `when` form ----------------------------------------------------------------------------

@pytest.mark.parametrize("when,message,expected", [
    ("text equals 帮助", text("帮助"), True),
    ("text equals 帮助", text("  帮助\n"), True),
    ("text equals 帮助", text("帮助一下"), False),
    ("text equals help", text("HELP"), False),
    ("text equals 帮助", event("click", "帮助"), False),
    ("text contains 你好", text("老师你好呀"), True),
    ("text contains 你好", text("您好"), False),
    ("text contains OK", text("ok"), False),
    ("text contains 你好", Message("image", content="你好"), False),
    ("text contains a  b", text("xa  by"), True),
    ("text matches ^备份\\s+(\\S+)$", text("备份 db1"), True),
    ("text matches ^备份\\s+(\\S+)$", text("请备份 db1"), False),
    ("text matches 备份", text("请备份"), True),
    ("text matches (?i)^help$", text("HeLp"), True),
    ("text matches a.b", text("a\nb"), False),
    ("text matches (?s)a.b", text("a\nb"), True),
    ("TEXT Contains x", text("x"), True),
    ("click RUN_BACKUP", event("click", "RUN_BACKUP"), True),
    ("click RUN_BACKUP", event("click", "run_backup"), False),
    ("click RUN_BACKUP", event("view", "RUN_BACKUP"), False),
    ("click RUN_BACKUP", text("RUN_BACKUP"), False),
    ("click RUN_BACKUP", Message("text", event="click", event_key="RUN_BACKUP"), False),
    ("event enter_agent", event("enter_agent"), True),
    ("event enter_agent", event("subscribe"), False),
    ("event LOCATION", event("LOCATION"), True),
    ("event location", event("LOCATION"), True),
    ("event template_card_event", event("template_card_event", "btn"), True),
    ("event click", event("click", "ANY_KEY"), True),
    ("event enter_agent", Message("text", event="enter_agent"), False),
    ("msgtype image", Message("image"), True),
    ("msgtype image", text("image"), False),
    ("msgtype event", event("subscribe"), True),
    ("msgtype Voice", Message("voice"), True),
    ("any", text("x"), True),
    ("any", event("LOCATION"), True),
    ("any", Message("something_new"), True),
])
def test_when_forms(when, message, expected):
    assert fires(when, message) is expected


def test_text_forms_treat_missing_content_as_empty():
    assert not fires("text contains x", Message("text"))
    assert fires("text matches ^$", Message("text"))


def test_app_filter():
    only = rule("any", app="helpdesk")
    assert only.matches("helpdesk", text("x")) is not None
    assert only.matches("other", text("x")) is None
    assert rule("any").matches("other", text("x")) is not None


def test_compiled_fields():
    compiled = rule("text matches ^(a)(?P<b>b)$", run="/bin/true", timeout="2.5", priority="-3",
                    webhook="https://h.example/x", webhook_secret="s3cret-value", **{"continue": "yes"})
    assert (compiled.name, compiled.kind, compiled.arg, compiled.app) == ("r", "text_matches", "^(a)(?P<b>b)$", None)
    assert (compiled.timeout, compiled.priority, compiled.cont, compiled.order) == (2.5, -3, True, 0)
    assert compiled.when == "text matches ^(a)(?P<b>b)$"
    assert "s3cret-value" not in repr(compiled)
    defaults = rule("any")
    assert (defaults.timeout, defaults.priority, defaults.cont, defaults.run, defaults.webhook) == (
        60.0, None, False, None, None)


# --- order: first match, continue, priority -------------------------------------------------------

RAW = {
    "hello": {"when": "text contains 你好", "reply": "hi"},
    "log": {"when": "any", "webhook": "https://h.example/", "continue": "yes"},
    "fallback": {"when": "any", "reply": "已收到"},
    "never": {"when": "any", "reply": "never"},
}


def test_first_match_wins():
    compiled = rules.compile_rules(RAW)
    assert names(rules.select(compiled, "helpdesk", text("你好"))) == ["hello"]


def test_continue_chains_to_the_next_match_and_stops_at_a_rule_without_it():
    compiled = rules.compile_rules(RAW)
    assert names(rules.select(compiled, "helpdesk", text("再见"))) == ["log", "fallback"]


def test_continue_skips_rules_that_do_not_match():
    raw = {"a": {"when": "any", "reply": "a", "continue": "yes"},
           "b": {"when": "click X", "reply": "b"},
           "c": {"when": "text contains z", "reply": "c", "continue": "yes"}}
    assert names(rules.select(rules.compile_rules(raw), "helpdesk", text("z"))) == ["a", "c"]
    assert names(rules.select(rules.compile_rules(raw), "helpdesk", text("y"))) == ["a"]


def test_no_match():
    assert rules.select(rules.compile_rules({"a": {"when": "click X", "reply": "a"}}), "h", text("x")) == []


def test_priority_lower_first_then_file_order_and_unset_counts_as_zero():
    raw = {"plain1": {"when": "any", "reply": "1"}, "late": {"when": "any", "reply": "2", "priority": "5"},
           "early": {"when": "any", "reply": "3", "priority": "-1"}, "plain2": {"when": "any", "reply": "4"},
           "zero": {"when": "any", "reply": "5", "priority": "0"}, "early2": {"when": "any", "reply": "6",
                                                                              "priority": "-1"}}
    compiled = rules.compile_rules(raw)
    assert [r.name for r in compiled] == ["early", "early2", "plain1", "plain2", "zero", "late"]
    assert [r.order for r in compiled] == [2, 5, 0, 3, 4, 1]
    assert names(rules.select(compiled, "h", text("x"))) == ["early"]


def test_app_filtered_rule_is_skipped_for_other_apps():
    raw = {"a": {"when": "any", "app": "helpdesk", "reply": "a"}, "b": {"when": "any", "reply": "b"}}
    compiled = rules.compile_rules(raw)
    assert names(rules.select(compiled, "helpdesk", text("x"))) == ["a"]
    assert names(rules.select(compiled, "it", text("x"))) == ["b"]


# --- problems -------------------------------------------------------------------------------------

@pytest.mark.parametrize("options,expected", [
    ({"when": "any", "reply": "x", "repyl": "y"}, "[rule:r] repyl: unknown option (did you mean reply?)"),
    ({"reply": "x"}, "[rule:r] when: missing (required): one of text equals X | text contains X | text "
                     "matches REGEX | click KEY | event NAME | msgtype NAME | any"),
    ({"when": "  ", "reply": "x"}, "[rule:r] when: missing (required)"),
    ({"when": "keyword 你好", "reply": "x"}, "[rule:r] when: unknown form 'keyword 你好': use one of text "
                                            "equals X | text contains X"),
    ({"when": "text startswith a", "reply": "x"}, "[rule:r] when: unknown form 'text startswith a'"),
    ({"when": "text contains", "reply": "x"}, "[rule:r] when: `text contains` needs something after it"),
    ({"when": "click", "reply": "x"}, "[rule:r] when: `click` needs one KEY after it"),
    ({"when": "event enter agent now", "reply": "x"},
     "[rule:r] when: `event` needs one NAME (and at most one KEY) after it"),
    ({"when": "msgtype text image", "reply": "x"}, "[rule:r] when: `msgtype` needs one NAME after it"),
    ({"when": "any thing", "reply": "x"}, "[rule:r] when: `any` takes nothing after it"),
    ({"when": "text matches (unclosed", "reply": "x"},
     "[rule:r] when: bad regular expression: missing ), unterminated subpattern at position 0"),
    ({"when": "any"}, "[rule:r]: nothing to do: set reply, run or webhook"),
    ({"when": "any", "reply": "  ", "run": ""}, "[rule:r]: nothing to do"),
    ({"when": "any", "reply": "{form_user}"}, "[rule:r] reply: {form_user}: unknown field (did you mean "
                                              "from_user?); the fields are from_user, content"),
    ({"when": "text matches (a)(b)", "reply": "{3}"}, "[rule:r] reply: {3}: the regex has 2 groups (numbered from 1)"),
    ({"when": "text matches (a)", "reply": "{0}"}, "[rule:r] reply: {0}: the regex has 1 group (numbered from 1)"),
    ({"when": "text matches (?P<city>a)", "reply": "{town}"}, "[rule:r] reply: {town}: unknown field"),
    ({"when": "text contains a", "reply": "{1}"},
     "[rule:r] reply: {1}: numbered groups need `when = text matches REGEX`"),
    ({"when": "click K", "run": "/bin/echo {1}"},
     "[rule:r] run: {1}: numbered groups need `when = text matches REGEX`"),
    ({"when": "text matches (?P<content>a)", "reply": "x"},
     "[rule:r] when: the named group (?P<content>) has the name of a built-in field: rename it"),
    ({"when": "any", "reply": "{from_user"}, "[rule:r] reply: bad template: expected '}' before end of "
                                             "string (write {{ and }} for literal braces)"),
    ({"when": "any", "reply": "a } b"}, "[rule:r] reply: bad template: Single '}' encountered"),
    ({"when": "any", "reply": "x", "timeout": "0"}, "[rule:r] timeout: must be a positive number of seconds "
                                                    "(got '0')"),
    ({"when": "any", "reply": "x", "timeout": "-5"}, "[rule:r] timeout: must be a positive number"),
    ({"when": "any", "reply": "x", "timeout": "inf"}, "[rule:r] timeout: must be a positive number"),
    ({"when": "any", "reply": "x", "timeout": "soon"}, "[rule:r] timeout: not a number of seconds (got 'soon')"),
    ({"when": "any", "reply": "x", "priority": "high"}, "[rule:r] priority: not an integer (got 'high')"),
    ({"when": "any", "reply": "x", "continue": "maybe"}, "[rule:r] continue: not a boolean: use yes or no "
                                                         "(got 'maybe')"),
    ({"when": "any", "reply": "x", "app": "helpdsk"}, "[rule:r] app: no [app:helpdsk] section (did you "
                                                      "mean helpdesk?)"),
    ({"when": "any", "webhook": "ftp://h.example/x"}, "[rule:r] webhook: must be an http:// or https:// URL"),
    ({"when": "any", "webhook": "h.example/x"}, "[rule:r] webhook: must be an http:// or https:// URL"),
    ({"when": "any", "reply": "x", "webhook_secret": "s"}, "[rule:r] webhook_secret: set without a webhook"),
    ({"when": "any", "run": "/bin/echo 'unclosed"}, "[rule:r] run: cannot be split into arguments: "
                                                    "No closing quotation"),
    ({"when": "any", "run": "'' x"}, "[rule:r] run: no command"),
    ({"when": "any", "run": "{content} x"}, "[rule:r] run: the command (first word) cannot contain a field"),
])
def test_each_problem_names_the_rule_and_option(options, expected):
    problem = one_problem(options)
    assert problem.startswith(expected), problem


@pytest.mark.parametrize("template", ["{content.upper}", "{content[0]}", "{content!r}", "{content:>10}",
                                      "{}", "{01}", "{content:{from_user}}", "{0.__class__}"])
def test_attribute_index_conversion_and_format_spec_are_refused(template):
    problem = one_problem({"when": "text matches (a)", "reply": template})
    assert problem.startswith("[rule:r] reply: {"), problem
    assert "only plain fields" in problem
    with pytest.raises(RuleError):
        rules.render(template, {"content": "x", "0": "y", "01": "z"})


def test_every_problem_is_reported_at_once():
    raw = {"a": {"when": "bogus", "reply": "{nope}", "timeout": "x"},
           "b": {"when": "click K", "run": "/bin/echo {1} {nada}", "app": "ghost", "extra": "1"},
           "good": {"when": "any", "reply": "fine"}}
    found = rules.problems(raw, ["helpdesk"])
    assert len(found) == 7, found
    assert {p.split(": ")[0] for p in found} == {"[rule:a] when", "[rule:a] reply", "[rule:a] timeout",
                                                  "[rule:b] extra", "[rule:b] run", "[rule:b] app"}
    with pytest.raises(RuleError) as caught:
        rules.compile_rules(raw)
    assert len(caught.value.problems) == 6  # compile_rules does not know the apps
    assert str(caught.value) == "\n".join(caught.value.problems)


def test_problems_of_good_rules_is_empty():
    raw = {"a": {"when": "text matches ^(?P<x>a)(b)$", "reply": "{x}{1}{2}{{literal}}", "app": "helpdesk",
                 "run": "/bin/echo --x={x} '{content} {2}'", "timeout": "0.5", "priority": "+2",
                 "continue": "Yes", "webhook": "http://127.0.0.1:9/hook", "webhook_secret": "s"}}
    assert rules.problems(raw, ["helpdesk"]) == []


def test_a_webhook_secret_never_shows_in_problems():
    found = problems_of({"when": "bad form", "webhook": "nope", "webhook_secret": "TopSecretValue"})
    assert found and not any("TopSecretValue" in p for p in found)


# --- templates ------------------------------------------------------------------------------------

def test_template_fields_of_a_text_message():
    match = rule("text contains 你").matches("helpdesk", text("你好"))
    fields = rules.template_fields(match, "helpdesk", text("你好"))
    assert fields == {"from_user": "zhangsan", "content": "你好", "event_key": "", "app": "helpdesk",
                      "msgtype": "text", "event": "", "to_user": "ww0123456789abcdef", "agent_id": "1000002",
                      "msg_id": "7001", "create_time": "1764370000", "rule": "r", "user_name": "zhangsan"}
    # With the sender's name known (Services.user_name), {user_name} is that name.
    assert rules.template_fields(match, "helpdesk", text("你好"), "张三")["user_name"] == "张三"


def test_a_rule_wants_the_fields_its_templates_use_and_a_command_wants_them_all():
    assert rule("any", reply="你好，{user_name}").wants("user_name")
    assert not rule("any", reply="你好，{from_user}").wants("user_name")
    assert rule("any", reply="收到", notify="http://127.0.0.1:9/robot", notify_text="{user_name}：{content}") \
        .wants("user_name")
    assert rule("any", reply=None, run="/bin/echo {content}").wants("user_name")  # WECOMD_USER_NAME


def test_regex_groups_positional_and_named():
    compiled = rule(r"text matches ^请假\s*(?P<days>[0-9]+)\s*天\s*(原因(.*))?$",
                    reply="{from_user} {days}/{1} 天 [{2}] [{3}]")
    message = text("请假 3 天")
    match = compiled.matches("helpdesk", message)
    assert match.groups == ("3", "", "") and dict(match.named) == {"days": "3"}
    fields = rules.template_fields(match, "helpdesk", message)
    assert rules.render(compiled.reply, fields) == "zhangsan 3/3 天 [] []"
    message = text("请假 2 天原因看病")
    fields = rules.template_fields(compiled.matches("helpdesk", message), "helpdesk", message)
    assert rules.render(compiled.reply, fields) == "zhangsan 2/2 天 [原因看病] [看病]"


def test_render_escapes_and_missing_fields():
    assert rules.render("{{literal}} {a}{{", {"a": "A"}) == "{literal} A{"
    assert rules.render("[{absent}]", {}) == "[]"
    assert rules.render("{a}", {"a": "{b} {{x}}"}) == "{b} {{x}}"  # values are never templates
    with pytest.raises(RuleError):
        rules.render("{a", {"a": "x"})


def test_fields_of_an_event_and_missing_values_are_empty():
    message = event("click", "RUN_BACKUP")
    match = rule("click RUN_BACKUP").matches("it", message)
    fields = rules.template_fields(match, "it", message)
    assert (fields["event"], fields["event_key"], fields["content"], fields["msg_id"]) == (
        "click", "RUN_BACKUP", "", "")
    assert rules.template_fields(Match(match.rule), "it", Message("text"))["create_time"] == ""


# --- commands -------------------------------------------------------------------------------------

def argv_for(run, message, when="any"):
    compiled = rule(when, run=run)
    match = compiled.matches("helpdesk", message)
    return rules.command_argv(compiled, rules.template_fields(match, "helpdesk", message))


def test_injection_stays_one_argument():
    assert argv_for("/bin/echo {content}", text(INJECTION)) == ["/bin/echo", INJECTION]


def test_injection_inside_quoted_and_joined_arguments():
    message = event("click", "x; reboot $(id)")
    assert argv_for("/usr/local/bin/backup.sh --target={event_key}", message) == [
        "/usr/local/bin/backup.sh", "--target=x; reboot $(id)"]
    assert argv_for("/bin/echo '{from_user} said: {event_key}' -n", message) == [
        "/bin/echo", "zhangsan said: x; reboot $(id)", "-n"]
    assert argv_for("/bin/echo {content}", text("a' \"b {event_key} {{")) == ["/bin/echo", "a' \"b {event_key} {{"]


def test_empty_field_is_one_empty_argument_and_nul_is_dropped():
    assert argv_for("/bin/echo {event_key} end", text("x")) == ["/bin/echo", "", "end"]
    assert argv_for("/bin/echo {content}", text("a\0b")) == ["/bin/echo", "ab"]


def test_regex_groups_in_a_command():
    argv = argv_for("/bin/backup --db {1} --name={name}", text("备份 main 夜间"),
                    when=r"text matches ^备份 (\S+) (?P<name>\S+)$")
    assert argv == ["/bin/backup", "--db", "main", "--name=夜间"]


def test_command_env():
    compiled = rule(r"text matches ^(x)(?P<Target>y)(?P<名>z)?", run="/bin/true")
    message = text("xy\0!")
    match = compiled.matches("helpdesk", message)
    env = rules.command_env(rules.template_fields(match, "helpdesk", message), message)
    assert env == {"WECOMD_FROM_USER": "zhangsan", "WECOMD_CONTENT": "xy!", "WECOMD_EVENT_KEY": "",
                   "WECOMD_APP": "helpdesk", "WECOMD_MSGTYPE": "text", "WECOMD_EVENT": "",
                   "WECOMD_TO_USER": "ww0123456789abcdef", "WECOMD_AGENT_ID": "1000002",
                   "WECOMD_MSG_ID": "7001", "WECOMD_CREATE_TIME": "1764370000", "WECOMD_RULE": "r",
                   "WECOMD_USER_NAME": "zhangsan", "WECOMD_GROUP_1": "x", "WECOMD_GROUP_2": "y", "WECOMD_GROUP_3": "",
                   "WECOMD_GROUP_TARGET": "y"}


# --- the sample config and `rules test` -----------------------------------------------------------

def sample_rules():
    loaded = config.load(REPO / "wecomd.conf", {})
    return rules.compile_rules(loaded.rules)


def describe_all(message, app="demo"):
    return [rules.describe(match, app, message) for match in rules.select(sample_rules(), app, message)]


def test_sample_rules_compile_and_cover_every_kind():
    compiled = sample_rules()
    assert {r.kind for r in compiled} >= {"text_contains", "text_equals", "text_matches", "click", "event"}
    assert any(r.run for r in compiled)


def test_sample_describe_greeting():
    assert describe_all(text("你好呀")) == [{
        "rule": "greet", "when": "text contains 你好", "reply": "你好，zhangsan！发送“帮助”查看可以做什么。",
        "run": None, "webhook": None, "continue": False}]


def test_sample_describe_regex_and_app_filter():
    [found] = describe_all(text("请假 3 天 看病"))
    assert (found["rule"], found["reply"]) == ("leave", "已登记：zhangsan 请假 3 天，事由：看病")
    assert describe_all(text("请假 3 天 看病"), app="other") == []


def test_sample_describe_click_command():
    assert describe_all(event("click", "RUN_BACKUP")) == [{
        "rule": "backup", "when": "click RUN_BACKUP", "reply": "备份已开始",
        "run": ["/bin/echo", "备份开始", "RUN_BACKUP"], "webhook": None, "continue": False}]


def test_sample_describe_welcome_and_nothing():
    assert [d["reply"] for d in describe_all(event("enter_agent"))] == ["欢迎回来，zhangsan。"]
    assert describe_all(text("随便说点什么")) == []
    assert describe_all(Message("image", from_user="u")) == []


def test_template_mistakes_fail_at_compile_time_not_at_render():
    with pytest.raises(RuleError) as caught:
        rules.compile_rules({"greet": {"when": "text contains 你好", "reply": "你好 {form_user}"}})
    assert caught.value.problems[0].startswith("[rule:greet] reply: {form_user}: unknown field")
    compiled = rule("text contains 你好", reply="你好 {from_user}")
    message = text("你好")
    fields = rules.template_fields(compiled.matches("h", message), "h", message)
    assert rules.render(compiled.reply, fields) == "你好 zhangsan"
