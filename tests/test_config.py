"""Tests for wecomd.config (schema, loading, validation, rendering) and wecomd.passwords."""
import configparser
import dataclasses
import re
import time
from pathlib import Path

import pytest

from wecomd import checks, config, passwords
from wecomd.config import REQUIRED, SCHEMA, ConfigError

REPO = Path(__file__).resolve().parent.parent
TOKEN = "Tk9dR2xq"
KEY = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"  # 43
APP = """
[app:helpdesk]
corp_id = ww0123456789abcdef
agent_id = 1000002
token = %s
encoding_aes_key = %s
""" % (TOKEN, KEY)


def write(tmp_path: Path, text: str, name: str = "wecomd.conf") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str, environ=None) -> list:
    found = config.problems(write(tmp_path, text), environ or {})
    assert found, "expected problems"
    return found


def one_problem(tmp_path: Path, text: str, environ=None) -> str:
    found = problems(tmp_path, text, environ)
    assert len(found) == 1, found
    return found[0]


def app_with(**options) -> str:
    """The valid helpdesk app with some options replaced (None removes one)."""
    lines = []
    for line in APP.strip().splitlines():
        name = line.split(" = ")[0]
        value = options.pop(name, line)
        if value is not None:
            lines.append(value if value is line else "%s = %s" % (name, value))
    return "\n".join(lines + ["%s = %s" % item for item in options.items()]) + "\n"


# --- the sample config and the docs --------------------------------------------------------------

def test_sample_config_loads_without_problems():
    sample = REPO / "wecomd.conf"
    assert config.problems(sample, {}) == []
    loaded = config.load(sample, {})
    assert (loaded.server.listen_host, loaded.server.listen_port) == ("127.0.0.1", 8080)
    assert loaded.server.database == str(REPO / "wecomd.db")
    assert list(loaded.apps) == ["demo"]
    assert loaded.apps["demo"].reply == "已收到"


def _sample_parser() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.read(REPO / "wecomd.conf", encoding="utf-8")
    return parser


def _commented_bot(header: str = "[bot:assistant]") -> configparser.RawConfigParser:
    """The sample's commented-out example section `header`, uncommented."""
    lines = (REPO / "wecomd.conf").read_text(encoding="utf-8").splitlines()
    start = lines.index("# " + header)
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    parser = configparser.RawConfigParser(interpolation=None)
    parser.read_string("\n".join(block))
    return parser


@pytest.mark.parametrize("section", list(SCHEMA))
def test_sample_config_has_every_option(section):
    commented = {"bot:NAME": "bot:assistant", "llm:NAME": "llm:local", "group:NAME": "group:ops"}
    parser = _commented_bot("[%s]" % commented[section]) if section in commented else _sample_parser()
    present = {"app:NAME": "app:demo", **commented}.get(section, section)
    assert list(parser[present]) == list(SCHEMA[section])
    for option, spec in SCHEMA[section].items():
        if spec.default is not REQUIRED and not spec.secret:
            assert parser[present][option] == spec.default or section in ("app:NAME", "bot:NAME", "llm:NAME",
                                                                          "group:NAME")


def _doc_sections() -> dict:
    # [rules] is documented with the rules themselves, in docs/rules.md.
    text = "\n".join((REPO / "docs" / name).read_text(encoding="utf-8")
                     for name in ("configuration.md", "rules.md"))
    chunks = re.split(r"^## \[([^\]]+)\]$", text, flags=re.M)
    return dict(zip(chunks[1::2], chunks[2::2]))


@pytest.mark.parametrize("section,option", [(s, o) for s in SCHEMA for o in SCHEMA[s]])
def test_every_option_is_documented_with_its_default(section, option):
    chunk = _doc_sections()[section]
    match = re.search(r"^### %s\n\n(.+)$" % re.escape(option), chunk, flags=re.M)
    assert match, "docs/configuration.md: [%s] has no '### %s' heading" % (section, option)
    default = SCHEMA[section][option].default
    if default is REQUIRED:
        assert match.group(1) == "Required."
    elif default == "":
        assert match.group(1).startswith("Default: empty")
    else:
        assert match.group(1) == "Default: `%s`" % default


def test_docs_name_the_environment_variables():
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for section, option in [("server", "listen"), ("app:helpdesk", "secret"), ("app:it-desk", "token")]:
        assert "`%s`" % config.env_name(section, option) in text


# --- problems: each is found, named with its source, never showing a secret ---------------------

def test_valid_app_loads(tmp_path):
    loaded = config.load(write(tmp_path, APP), {})
    app = loaded.apps["helpdesk"]
    assert (app.name, app.corp_id, app.agent_id, app.token, app.encoding_aes_key) == (
        "helpdesk", "ww0123456789abcdef", "1000002", TOKEN, KEY)
    assert (app.secret, app.reply) == ("", "")


@pytest.mark.parametrize("key,expected", [
    (KEY[:42], "must be exactly 43 characters of A-Z a-z 0-9 (got 42)"),
    (KEY + "Z", "must be exactly 43 characters of A-Z a-z 0-9 (got 44)"),
    (KEY[:42] + "=", "must be exactly 43 characters of A-Z a-z 0-9 (got a character outside that set)"),
    (KEY + "=", "(got 44: drop the trailing '=')"),
    (KEY[:41] + "+/", "must be exactly 43 characters of A-Z a-z 0-9 (got a character outside that set)"),
])
def test_bad_encoding_aes_key(tmp_path, key, expected):
    problem = one_problem(tmp_path, app_with(encoding_aes_key=key))
    assert problem.startswith("%s: [app:helpdesk] encoding_aes_key: " % (tmp_path / "wecomd.conf"))
    assert problem.endswith(expected)
    assert key not in problem and key[:20] not in problem


@pytest.mark.parametrize("token,expected", [
    ("a" * 33, "must be 1 to 32 characters of A-Z a-z 0-9 (got 33)"),
    ("abc-def", "must be 1 to 32 characters of A-Z a-z 0-9 (got a character outside that set)"),
    ("", "empty (required)"),
])
def test_bad_token(tmp_path, token, expected):
    problem = one_problem(tmp_path, app_with(token=token))
    assert problem.endswith("[app:helpdesk] token: " + expected)
    assert not token or token not in problem


def test_32_character_token_is_fine(tmp_path):
    assert config.problems(write(tmp_path, app_with(token="Z9" * 16)), {}) == []


def test_missing_required_options_are_each_named(tmp_path):
    found = problems(tmp_path, app_with(token=None, corp_id=None))
    assert found == ["%s: [app:helpdesk] corp_id: missing (required)" % (tmp_path / "wecomd.conf"),
                     "%s: [app:helpdesk] token: missing (required; or token_file, or WECOMD_APP_HELPDESK_TOKEN in the "
                     "environment)" % (tmp_path / "wecomd.conf")]


def test_agent_id_must_be_digits(tmp_path):
    assert one_problem(tmp_path, app_with(agent_id="10000x2")).endswith(
        "[app:helpdesk] agent_id: must be digits, e.g. 1000002 (got '10000x2')")


def test_unknown_option_with_suggestion(tmp_path):
    problem = one_problem(tmp_path, "[server]\nlistn = 127.0.0.1:1\n")
    assert problem == "%s: [server] listn: unknown option (did you mean listen?)" % (tmp_path / "wecomd.conf")


def test_unknown_section(tmp_path):
    assert one_problem(tmp_path, "[foo]\nx = 1\n").endswith(": [foo]: unknown section")
    assert one_problem(tmp_path, "[DEFAULT]\nx = 1\n").endswith(": [DEFAULT]: unknown section")


@pytest.mark.parametrize("listen", ["8080", "localhost", "127.0.0.1:", "127.0.0.1:-1", "127.0.0.1:65536",
                                    "::1:8080", "[nothere]:80", "bad host:80", ":8080",
                                    "127.0.0.1:²", "127.0.0.1:٣", "127.0.0.1:0x50"])
def test_bad_listen(tmp_path, listen):
    problem = one_problem(tmp_path, "[server]\nlisten = %s\n" % listen)
    assert "[server] listen: " in problem and repr(listen) in problem
    assert "invalid literal" not in problem  # the reason is ours, not int()'s


@pytest.mark.parametrize("listen,host,port", [("[::1]:8080", "::1", 8080), ("0.0.0.0:80", "0.0.0.0", 80),
                                              ("localhost:65535", "localhost", 65535), ("[::]:1", "::", 1),
                                              ("127.0.0.1:0", "127.0.0.1", 0)])
def test_good_listen(tmp_path, listen, host, port):
    server = config.load(write(tmp_path, "[server]\nlisten = %s\n" % listen), {}).server
    assert (server.listen_host, server.listen_port) == (host, port)


@pytest.mark.parametrize("option,value,expected", [
    ("max_body", "1MB", "not an integer (got '1MB')"),
    ("max_body", "0", "must be 1 or more (got '0')"),
    ("timestamp_window", "-1", "must be 0 or more (got '-1')"),
    ("timestamp_window", "5.5", "not an integer"),
    ("xheaders", "maybe", "not a boolean: use yes or no"),
    ("log_level", "verbose", "must be debug, info, warning or error"),
    ("database", "mysql://u:pw@x/y", "must start with sqlite://, postgres:// or postgresql://"),
    ("media_dir", "", "must not be empty"),
])
def test_bad_server_values(tmp_path, option, value, expected):
    problem = one_problem(tmp_path, "[server]\n%s = %s\n" % (option, value))
    assert "[server] %s: " % option in problem and expected in problem
    assert (value in problem) is not SCHEMA["server"][option].secret


def test_zero_timestamp_window_is_allowed(tmp_path):
    assert config.load(write(tmp_path, "[server]\ntimestamp_window = 0\n"), {}).server.timestamp_window == 0


@pytest.mark.parametrize("name", ["help/desk", "help desk", "x" * 65, "", "客服"])
def test_bad_app_name(tmp_path, name):
    problem = one_problem(tmp_path, APP.replace("[app:helpdesk]", "[app:%s]" % name))
    assert problem.endswith("[app:%s]: an app name is 1 to 64 characters of A-Z a-z 0-9 _ -" % name)


def test_duplicate_option_and_section_are_problems(tmp_path):
    text = "[server]\nlisten = 127.0.0.1:1\nlisten = 127.0.0.1:2\n[admin]\n[server]\nmax_body = 5\n"
    label = tmp_path / "wecomd.conf"
    assert problems(tmp_path, text) == ["%s: line 3: [server] listen: duplicate option" % label,
                                        "%s: line 5: [server]: duplicate section" % label]


def test_every_problem_is_reported_at_once(tmp_path):
    text = "[server]\nlisten = nowhere\nmax_body = big\nlistn = x\n[nope]\n" + app_with(token="a-b")
    found = problems(tmp_path, text, {"WECOMD_SERVER_TIMESTAMP_WINDOW": "-5"})
    assert len(found) == 6, found
    assert str(ConfigError(found)) == "\n".join(found)
    with pytest.raises(ConfigError) as caught:
        config.load(tmp_path / "wecomd.conf", {"WECOMD_SERVER_TIMESTAMP_WINDOW": "-5"})
    assert caught.value.problems == found


def test_syntax_errors_do_not_echo_the_line(tmp_path):
    problem = one_problem(tmp_path, app_with() + "token %s\n" % ("S" * 20))
    assert problem.endswith("line 6: not a [section], option = value, or comment")
    assert "S" * 20 not in problem
    assert one_problem(tmp_path, "listen = x\n").endswith("line 1: an option before any [section] header")


def test_unreadable_paths(tmp_path):
    with pytest.raises(ConfigError, match="not a file"):
        config.load(tmp_path, {})
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "missing.conf", {})
    (tmp_path / "latin1.conf").write_bytes("[app:x]\nreply = caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(tmp_path / "latin1.conf", {})


def test_password_hash_must_be_a_hash(tmp_path):
    assert one_problem(tmp_path, "[admin]\npassword_hash = hunter2\n").endswith(
        "[admin] password_hash: not a hash made by `wecomd hash-password`")
    stored = passwords.hash_password("pw")
    loaded = config.load(write(tmp_path, "[admin]\npassword_hash = %s\n" % stored), {})
    assert loaded.admin.password_hash == stored


def test_api_base(tmp_path):
    loaded = config.load(write(tmp_path, "[wecom]\napi_base = http://127.0.0.1:9/fake/\n"), {})
    assert loaded.wecom.api_base == "http://127.0.0.1:9/fake"
    assert "api_base: must be an http:// or https:// URL" in one_problem(
        tmp_path, "[wecom]\napi_base = ftp://qyapi.weixin.qq.com\n")


def test_duplicate_check_interval(tmp_path):
    assert config.load(write(tmp_path, "[wecom]\n"), {}).wecom.duplicate_check_interval == 0
    loaded = config.load(write(tmp_path, "[wecom]\nduplicate_check_interval = 1800\n"), {})
    assert loaded.wecom.duplicate_check_interval == 1800
    assert "duplicate_check_interval: must be at most 14400 seconds (4 hours), got 14401" in one_problem(
        tmp_path, "[wecom]\nduplicate_check_interval = 14401\n")


def test_inline_comments_as_in_the_design_example(tmp_path):
    text = "[server]\nlisten = 127.0.0.1:9000          ; host:port\n[admin]\napi_token =     ; optional\n"
    loaded = config.load(write(tmp_path, text), {})
    assert loaded.server.listen_port == 9000 and loaded.admin.api_token == ""


def test_percent_is_not_interpolated(tmp_path):
    url = "postgresql://wecomd:p%40ss@db/wecomd"
    assert config.load(write(tmp_path, "[server]\ndatabase = %s\n" % url), {}).server.database == url


def test_rule_sections_are_kept_raw_in_file_order(tmp_path):
    text = APP + "[rule:zeta]\nwhen = click RUN_BACKUP\nrun = /bin/true\n[rule:alpha]\nwhen = any\nreply = 好\n"
    loaded = config.load(write(tmp_path, text), {})
    assert loaded.rules == {"zeta": {"when": "click RUN_BACKUP", "run": "/bin/true"},
                            "alpha": {"when": "any", "reply": "好"}}
    assert list(loaded.rules) == ["zeta", "alpha"]


def test_rule_problems_are_reported_with_the_other_problems(tmp_path):
    text = app_with(token="bad-token") + "[rules]\nmax_commands = 0\n"
    text += "[rule:greet]\napp = helpdsk\nwhen = text contains 你好\nreply = {form_user}\nkeyword = x\n"
    found = problems(tmp_path, text)
    label = str(tmp_path / "wecomd.conf")
    assert all(problem.startswith(label + ": ") for problem in found), found
    assert any(p.endswith("[app:helpdesk] token: must be 1 to 32 characters of A-Z a-z 0-9 "
                          "(got a character outside that set)") for p in found)
    assert "%s: [rules] max_commands: must be 1 or more (got '0')" % label in found
    assert "%s: [rule:greet] keyword: unknown option" % label in found
    assert "%s: [rule:greet] app: no [app:helpdsk] section (did you mean helpdesk?)" % label in found
    assert any(p.startswith("%s: [rule:greet] reply: {form_user}: unknown field (did you mean from_user?)"
                            % label) for p in found)
    assert len(found) == 5, found


def test_a_rule_for_a_known_app_loads(tmp_path):
    text = APP + "[rule:greet]\napp = helpdesk\nwhen = text contains 你好\nreply = 你好\n"
    assert config.problems(write(tmp_path, text), {}) == []


def test_rules_settings(tmp_path):
    text = "[rules]\ntakeover_minutes = 0\npassive_budget = 4.5\nmax_commands = 1\noutput_limit = 10\n"
    loaded = config.load(write(tmp_path, text), {"WECOMD_RULES_PASSIVE_BUDGET": "0"})
    assert loaded.rules_settings == config.RulesConfig(takeover_minutes=0, passive_budget=0.0,
                                                       max_commands=1, output_limit=10)
    assert loaded.sources[("rules", "passive_budget")] == "environment WECOMD_RULES_PASSIVE_BUDGET"


@pytest.mark.parametrize("option,value,expected", [
    ("takeover_minutes", "-1", "must be 0 or more"),
    ("takeover_minutes", "half", "not an integer"),
    ("passive_budget", "5", "must be from 0 to 4.5 seconds"),
    ("passive_budget", "-0.5", "must be from 0 to 4.5 seconds"),
    ("passive_budget", "soon", "not a number of seconds"),
    ("passive_budget", "nan", "must be from 0 to 4.5 seconds"),
    ("max_commands", "0", "must be 1 or more"),
    ("output_limit", "64k", "not an integer"),
])
def test_bad_rules_settings(tmp_path, option, value, expected):
    problem = one_problem(tmp_path, "[rules]\n%s = %s\n" % (option, value))
    assert problem.endswith("[rules] %s: %s (got %r)" % (option, expected, value))


def test_apps_keep_file_order(tmp_path):
    text = APP.replace("helpdesk", "zeta") + APP.replace("helpdesk", "alpha").replace("1000002", "1000003")
    assert list(config.load(write(tmp_path, text), {}).apps) == ["zeta", "alpha"]


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = config.load(None, {})
    assert loaded.path is None and loaded.apps == {} and loaded.rules == {}
    assert loaded.rules_settings == config.RulesConfig(30, 3.5, 4, 65536)
    assert loaded.server == config.ServerConfig("127.0.0.1", 8080, str(tmp_path / "wecomd.db"),
                                                tmp_path / "media", 1048576, 300, False, "info")
    assert loaded.admin.username == "admin" and loaded.wecom.api_base == "https://qyapi.weixin.qq.com"


# --- environment overrides ----------------------------------------------------------------------

def test_env_override_wins_over_file(tmp_path):
    path = write(tmp_path, "[server]\nlisten = 127.0.0.1:1\n" + APP)
    environ = {"WECOMD_SERVER_LISTEN": "0.0.0.0:2", "WECOMD_APP_HELPDESK_SECRET": " s3cret \n"}
    loaded = config.load(path, environ)
    assert (loaded.server.listen_host, loaded.server.listen_port) == ("0.0.0.0", 2)
    assert loaded.apps["helpdesk"].secret == "s3cret"
    assert loaded.sources[("server", "listen")] == "environment WECOMD_SERVER_LISTEN"
    assert loaded.sources[("app:helpdesk", "token")] == str(path)
    assert loaded.sources[("server", "max_body")] == "default"


def test_env_fills_a_missing_option_and_a_missing_fixed_section(tmp_path):
    path = write(tmp_path, app_with(token=None))
    loaded = config.load(path, {"WECOMD_APP_HELPDESK_TOKEN": "fromenv", "WECOMD_ADMIN_API_TOKEN": "t" * 40})
    assert loaded.apps["helpdesk"].token == "fromenv" and loaded.admin.api_token == "t" * 40


def test_env_names_with_dashes():
    assert config.env_name("app:it-desk", "encoding_aes_key") == "WECOMD_APP_IT_DESK_ENCODING_AES_KEY"
    assert config.env_name("server", "max_body") == "WECOMD_SERVER_MAX_BODY"


def test_env_bad_value_names_the_variable(tmp_path):
    environ = {"WECOMD_SERVER_MAX_BODY": "lots", "WECOMD_APP_HELPDESK_ENCODING_AES_KEY": "short"}
    found = problems(tmp_path, APP, environ)
    assert found == ["environment WECOMD_APP_HELPDESK_ENCODING_AES_KEY: must be exactly 43 characters of "
                     "A-Z a-z 0-9 (got 5)",
                     "environment WECOMD_SERVER_MAX_BODY: not an integer (got 'lots')"]


def test_env_cannot_create_an_app_and_unknown_names_are_ignored(tmp_path):
    environ = {"WECOMD_APP_OTHER_TOKEN": "abc", "WECOMD_SERVER_LISTN": "x", "WECOMD_CONFIG": "/nowhere",
               "WECOMDX": "1"}
    loaded = config.load(write(tmp_path, APP), environ)
    assert list(loaded.apps) == ["helpdesk"]
    assert loaded.ignored_env == ("WECOMD_APP_OTHER_TOKEN", "WECOMD_SERVER_LISTN")
    assert [w for w in checks.warnings(loaded) if w.startswith("environment")] == [
        "environment WECOMD_APP_OTHER_TOKEN: matches no option and is ignored (the environment cannot add "
        "an [app:NAME] section)",
        "environment WECOMD_SERVER_LISTN: matches no option and is ignored (the environment cannot add "
        "an [app:NAME] section)"]


def test_env_ambiguous_between_two_app_names(tmp_path):
    text = APP.replace("helpdesk", "my_app") + APP.replace("helpdesk", "my-app").replace("1000002", "1000003")
    assert config.problems(write(tmp_path, text), {}) == []
    assert one_problem(tmp_path, text, {"WECOMD_APP_MY_APP_REPLY": "hi"}) == (
        "environment WECOMD_APP_MY_APP_REPLY: ambiguous: [app:my_app] reply and [app:my-app] reply")


# --- paths --------------------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_config_directory(tmp_path, monkeypatch):
    conf_dir, elsewhere = tmp_path / "etc", tmp_path / "cwd"
    conf_dir.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(conf_dir, "[server]\ndatabase = data/w.db\nmedia_dir = files\n")
    loaded = config.load(Path("..") / "etc" / "wecomd.conf", {})
    assert loaded.path == elsewhere / ".." / "etc" / "wecomd.conf" and loaded.path.resolve() == path
    assert Path(loaded.server.database).resolve() == conf_dir / "data" / "w.db"
    assert loaded.server.media_dir.resolve() == conf_dir / "files"
    assert loaded.server.media_dir.is_absolute()


def test_relative_sqlite_url_is_taken_from_the_config_directory(tmp_path):
    loaded = config.load(write(tmp_path, "[server]\ndatabase = sqlite:///data/relative.db\n"), {})
    assert loaded.server.database == "sqlite:///%s" % (tmp_path.absolute() / "data/relative.db")
    assert loaded.server.database.startswith("sqlite:////")


@pytest.mark.parametrize("database", ["sqlite:////var/lib/wecomd/w.db",
                                      "postgresql://u:p@localhost/wecomd", "/abs/w.db"])
def test_urls_and_absolute_paths_are_kept(tmp_path, database):
    loaded = config.load(write(tmp_path, "[server]\ndatabase = %s\n" % database), {})
    assert loaded.server.database == database


# --- find_config --------------------------------------------------------------------------------

@pytest.fixture
def places(tmp_path, monkeypatch):
    """A working directory and a stand-in for /etc/wecomd/wecomd.conf."""
    cwd, etc = tmp_path / "cwd", tmp_path / "etc"
    cwd.mkdir(), etc.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(config, "SEARCH_PATHS", (Path("wecomd.conf"), etc / "wecomd.conf"))
    return cwd, etc


def test_find_config_precedence(places, tmp_path):
    cwd, etc = places
    explicit, from_env = write(tmp_path, "", "explicit.conf"), write(tmp_path, "", "env.conf")
    with pytest.raises(ConfigError, match="no config file"):
        config.find_config(None, {})
    write(etc, "")
    assert config.find_config(None, {}) == etc / "wecomd.conf"
    write(cwd, "")
    assert config.find_config(None, {}) == Path("wecomd.conf")
    assert config.find_config(None, {"WECOMD_CONFIG": str(from_env)}) == from_env
    assert config.find_config(str(explicit), {"WECOMD_CONFIG": str(from_env)}) == explicit


def test_find_config_does_not_fall_through_a_missing_named_file(places, tmp_path):
    write(places[0], "")
    with pytest.raises(ConfigError, match=r"nope.conf: no such file \(from -c\)"):
        config.find_config(str(tmp_path / "nope.conf"), {})
    with pytest.raises(ConfigError, match=r"no such file \(from WECOMD_CONFIG\)"):
        config.find_config(None, {"WECOMD_CONFIG": str(tmp_path / "nope.conf")})


# --- render -------------------------------------------------------------------------------------

def test_render_loads_back_with_the_same_values(tmp_path):
    stored = passwords.hash_password("pw")
    values = {
        "server": {"listen": "[::1]:8443", "max_body": "2048", "xheaders": "yes"},
        "admin": {"password_hash": stored, "cookie_secret": "c" * 43, "api_token": "t" * 32},
        "app:helpdesk": {"corp_id": "ww1", "agent_id": "1000002", "token": TOKEN, "encoding_aes_key": KEY,
                         "secret": "sec", "reply": "已收到"},
        "app:it-desk": {"corp_id": "ww1", "agent_id": "1000009", "token": "x", "encoding_aes_key": KEY},
    }
    text = config.render(values)
    assert "# host:port to listen on" in text and "# One WeCom self-built app; its callback URL path is " \
                                                  "/callback/helpdesk." in text
    loaded = config.load(write(tmp_path, text), {})
    server = loaded.server
    assert (server.listen_host, server.listen_port, server.max_body) == ("::1", 8443, 2048)
    assert loaded.server.xheaders is True and loaded.server.timestamp_window == 300
    assert (loaded.admin.password_hash, loaded.admin.cookie_secret, loaded.admin.api_token) == (
        stored, "c" * 43, "t" * 32)
    assert list(loaded.apps) == ["helpdesk", "it-desk"]
    assert loaded.apps["helpdesk"] == config.AppConfig("helpdesk", "ww1", "1000002", TOKEN, KEY, "sec", "已收到")
    assert loaded.apps["it-desk"].secret == "" and loaded.apps["it-desk"].token == "x"


def test_render_of_nothing_is_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.load(write(tmp_path, config.render({})), {}) == dataclasses.replace(
        config.load(None, {}), path=tmp_path / "wecomd.conf", sources=config.load(
            tmp_path / "wecomd.conf", {}).sources)


def test_render_refuses_what_would_not_load_back():
    with pytest.raises(ValueError):
        config.render({"sever": {}})
    with pytest.raises(ValueError):
        config.render({"server": {"listn": "x"}})
    app = {"corp_id": "ww1", "agent_id": "1", "token": "t", "encoding_aes_key": KEY}
    config.render({"app:x": app})
    for values in ({"app:x": dict(app, reply="ok ;)")}, {"app:x": dict(app, reply=";)")},
                   {"app:x/y": app}, {"app:x": dict(app, token=REQUIRED)}, {"app:x": {"reply": "hi"}}):
        with pytest.raises(ValueError):
            config.render(values)


def test_a_value_starting_with_a_semicolon_is_a_comment(tmp_path):
    loaded = config.load(write(tmp_path, app_with(reply=";)")), {})
    assert loaded.apps["helpdesk"].reply == ""


def test_render_keeps_multiline_values(tmp_path):
    app = {"corp_id": "ww1", "agent_id": "1", "token": "t", "encoding_aes_key": KEY, "reply": "收到\n\n稍后回复"}
    loaded = config.load(write(tmp_path, config.render({"app:x": app})), {})
    assert loaded.apps["x"].reply == "收到\n\n稍后回复"


# --- secrets stay out of repr -------------------------------------------------------------------

def test_repr_never_shows_secrets(tmp_path):
    secrets = {"password_hash": passwords.hash_password("pw"), "cookie_secret": "C00kieSecretValue" * 3,
               "api_token": "ApiTokenValue" * 3}
    text = "[admin]\n" + "".join("%s = %s\n" % item for item in secrets.items())
    text += "[server]\ndatabase = postgresql://wecomd:DbPassword@db/wecomd\n"
    loaded = config.load(write(tmp_path, text + app_with(secret="AppSecretValue")), {})
    shown = repr(loaded) + str(loaded) + repr(loaded.apps) + repr(loaded.admin) + repr(loaded.server)
    for value in [*secrets.values(), "AppSecretValue", TOKEN, KEY, "DbPassword"]:
        assert value not in shown
    assert "helpdesk" in shown and "ww0123456789abcdef" in shown


def test_secret_options_are_exactly_the_unrepr_fields():
    classes = {"server": config.ServerConfig, "admin": config.AdminConfig, "wecom": config.WecomConfig,
               "rules": config.RulesConfig, "app:NAME": config.AppConfig, "bot:NAME": config.BotConfig,
               "llm:NAME": config.LlmConfig, "group:NAME": config.GroupConfig}
    for section, options in SCHEMA.items():
        hidden = {f.name for f in dataclasses.fields(classes[section]) if not f.repr}
        assert hidden == {name for name, option in options.items() if option.secret}, section


# --- warnings -----------------------------------------------------------------------------------

def test_warnings(tmp_path):
    loaded = config.load(write(tmp_path, "[server]\ntimestamp_window = 0\n"), {})
    found = checks.warnings(loaded)
    assert checks.check(tmp_path / "wecomd.conf", {})[0] == [checks.NO_APP]
    assert "[admin] cookie_secret is empty: dashboard sessions cannot be signed" in found
    assert any(w.startswith("[admin] password_hash is empty") for w in found)
    assert any(w.startswith("[server] timestamp_window = 0") for w in found)


def test_warnings_for_apps_sharing_an_agent_and_short_secrets(tmp_path):
    text = "[admin]\ncookie_secret = short\n" + APP + APP.replace("helpdesk", "copy")
    text += app_with(corp_id="ww_CHANGE_ME", agent_id="7").replace("helpdesk", "main")
    found = checks.warnings(config.load(write(tmp_path, text), {}))
    assert "[app:helpdesk] and [app:copy] have the same corp_id and agent_id" in found
    assert "[admin] cookie_secret is shorter than 32 characters" in found
    assert "[app:main] corp_id does not look like a CorpID (ww or wx, then 16 hex digits)" in found


def test_warnings_for_public_xheaders_and_missing_database_directory(tmp_path):
    text = "[server]\nlisten = 0.0.0.0:80\nxheaders = yes\ndatabase = no/such/dir/w.db\n"
    found = checks.warnings(config.load(write(tmp_path, text), {}))
    assert any(w.startswith("[server] xheaders = yes") for w in found)
    assert any(w.startswith("[server] database: directory") for w in found)


def test_a_complete_config_has_no_warnings(tmp_path):
    text = "[admin]\npassword_hash = %s\ncookie_secret = %s\n" % (passwords.hash_password("x"), "k" * 40)
    assert checks.warnings(config.load(write(tmp_path, text + APP), {})) == []


# --- passwords ----------------------------------------------------------------------------------

def test_password_hash_and_verify():
    stored = passwords.hash_password("correct horse 电池")
    assert re.fullmatch(r"scrypt\$n=16384,r=8,p=1\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+", stored)
    assert passwords.verify_password("correct horse 电池", stored)
    assert not passwords.verify_password("correct horse 电", stored)
    assert not passwords.verify_password("", stored)
    assert stored != passwords.hash_password("correct horse 电池")  # salted
    assert passwords.is_hash(stored)


def test_password_normalisation():
    assert passwords.verify_password("caf\u00e9", passwords.hash_password("cafe\u0301"))


@pytest.mark.parametrize("stored", [
    "", "plain", None, 42, "scrypt$", "scrypt$n=16384,r=8,p=1$c2FsdA", "md5$n=16384,r=8,p=1$c2FsdA$aGFzaA",
    "scrypt$n=16384,r=8$c2FsdA$" + "A" * 43, "scrypt$n=1000,r=8,p=1$c2FsdA$" + "A" * 43,
    "scrypt$n=16384,r=8,p=1$!!!$" + "A" * 43, "scrypt$n=16384,r=8,p=1$c2FsdA$短",
    "scrypt$n=16384,r=8,p=1$c2FsdA$QQ", "scrypt$n=x,r=8,p=1$c2FsdA$" + "A" * 43,
    "scrypt$n=16384,r=8,p=1,q=2$c2FsdA$" + "A" * 43, "scrypt$n=16384,r=8,p=1$$" + "A" * 43,
])
def test_malformed_stored_hash_is_a_mismatch_not_an_error(stored):
    assert passwords.verify_password("pw", stored) is False
    assert passwords.is_hash(stored) is False


def test_absurd_cost_parameters_are_refused_quickly():
    start = time.monotonic()
    assert not passwords.verify_password("pw", "scrypt$n=1073741824,r=8,p=1$c2FsdA$" + "A" * 43)
    assert not passwords.verify_password("pw", "scrypt$n=16384,r=8,p=99$c2FsdA$" + "A" * 43)
    assert time.monotonic() - start < 1


def test_other_cost_parameters_round_trip():
    stored = passwords.hash_password("pw", n=2 ** 10, r=4, p=2)
    assert stored.startswith("scrypt$n=1024,r=4,p=2$") and passwords.verify_password("pw", stored)
    assert not passwords.verify_password(b"pw", stored)


# --- [bot:NAME] ---------------------------------------------------------------------------------

BOT = """
[bot:assistant]
token = BotToken0123456789
encoding_aes_key = abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
"""


def test_a_bot_section_loads_with_its_defaults_and_env_overrides(tmp_path):
    loaded = config.load(write(tmp_path, APP + BOT), {"WECOMD_BOT_ASSISTANT_TOKEN": "FromTheEnvironment1"})
    bot = loaded.bots["assistant"]
    assert (bot.token, bot.aibotid, bot.reply, bot.stream_deadline) == ("FromTheEnvironment1", "", "", 30)
    assert "FromTheEnvironment1" not in repr(bot) and "abcdefghij" not in repr(bot)
    assert list(loaded.apps) == ["helpdesk"]


def test_an_app_and_a_bot_cannot_share_a_name(tmp_path):
    found = problems(tmp_path, APP + BOT.replace("[bot:assistant]", "[bot:helpdesk]"))
    assert any("[bot:helpdesk]: an app is named helpdesk too" in p for p in found), found


def test_bot_names_and_options_are_checked(tmp_path):
    found = problems(tmp_path, APP + BOT.replace("[bot:assistant]", "[bot:bad name]") +
                     "\n[bot:other]\ntoken = x!\nencoding_aes_key = short\nstream_deadline = 0\n")
    assert any("[bot:bad name]: a bot name" in p for p in found), found
    assert any("[bot:other] token" in p for p in found) and any("[bot:other] encoding_aes_key" in p for p in found)
    assert any("[bot:other] stream_deadline" in p for p in found), found


def test_a_rule_may_name_a_bot(tmp_path):
    loaded = config.load(write(tmp_path, APP + BOT + "\n[rule:hi]\napp = assistant\nwhen = text contains 你好\nreply = 你好！\n"), {})
    assert loaded.rules["hi"]["app"] == "assistant"


# --- [llm:NAME] and ask = NAME -------------------------------------------------------------------

LLM = """
[llm:local]
base_url = http://127.0.0.1:11434/
model = qwen2.5:7b
"""


def test_an_llm_section_loads_with_its_defaults_and_env_overrides(tmp_path):
    key_file = write(tmp_path, "sk-from-a-file\n", "key")
    loaded = config.load(write(tmp_path, APP + LLM), {"WECOMD_LLM_LOCAL_API_KEY_FILE": str(key_file),
                                                      "WECOMD_LLM_LOCAL_MAX_TOKENS": "256"})
    llm = loaded.llms["local"]
    assert (llm.name, llm.base_url, llm.model, llm.system) == ("local", "http://127.0.0.1:11434", "qwen2.5:7b", "")
    assert (llm.api_key, llm.max_tokens, llm.timeout) == ("sk-from-a-file", 256, 60)
    assert "sk-from-a-file" not in repr(loaded)
    assert config.load(write(tmp_path, APP + LLM), {}).llms["local"].api_key == ""
    direct = config.load(write(tmp_path, APP + LLM + "api_key = sk-in-the-file\n"),
                         {"WECOMD_LLM_LOCAL_API_KEY": "sk-from-the-env"})
    assert direct.llms["local"].api_key == "sk-from-the-env"
    assert direct.sources[("llm:local", "api_key")] == "environment WECOMD_LLM_LOCAL_API_KEY"


def test_llm_options_are_checked_and_the_key_is_never_shown(tmp_path):
    found = problems(tmp_path, APP + "[llm:bad]\nbase_url = ftp://models.example\napi_key = sk-secret-value\n"
                     "max_tokens = 0\ntimeout = soon\nmodl = x\n")
    assert any("[llm:bad] base_url: must be an http:// or https:// URL" in p for p in found), found
    assert any("[llm:bad] model: missing (required" in p for p in found), found
    assert any("[llm:bad] max_tokens: must be 1 or more" in p for p in found), found
    assert any("[llm:bad] timeout: not an integer" in p for p in found), found
    assert any("[llm:bad] modl: unknown option (did you mean model?)" in p for p in found), found
    assert not any("sk-secret-value" in p for p in found)
    assert any("[llm:]: unknown section" in p for p in problems(tmp_path, APP + "[llm:]\nmodel = x\n"))


def test_a_rule_asks_a_configured_llm(tmp_path):
    rule = "\n[rule:ask]\nwhen = msgtype text\nask = local\nhistory = 4\n"
    loaded = config.load(write(tmp_path, APP + LLM + rule), {})
    assert loaded.rules["ask"] == {"when": "msgtype text", "ask": "local", "history": "4"}
    assert one_problem(tmp_path, APP + LLM + rule.replace("ask = local", "ask = locl")) == (
        "%s: [rule:ask] ask: no [llm:locl] section (did you mean local?)" % (tmp_path / "wecomd.conf"))
    found = problems(tmp_path, APP + rule.replace("history = 4", "history = 101"))
    assert any("[rule:ask] ask: no [llm:local] section" in p for p in found), found
    assert any("[rule:ask] history: must be from 0 to 100 messages (got '101')" in p for p in found), found
    assert "history: set without an ask" in one_problem(
        tmp_path, APP + "\n[rule:r]\nwhen = any\nreply = x\nhistory = 3\n")
    assert "nothing to do: set reply, run or webhook, or ask" in one_problem(tmp_path, APP + "\n[rule:r]\nwhen = any\n")


def test_the_commented_llm_and_ask_examples_load(tmp_path):
    text = "\n".join("[%s]\n%s" % (name, "\n".join("%s = %s" % item for item in section.items()))
                     for name in ("bot:assistant", "llm:local", "rule:ask")
                     for section in [_commented_bot("[%s]" % name)[name]])
    text = text.replace("(from the bot's API settings: 1 to 32 of A-Z a-z 0-9)", TOKEN)
    text = text.replace("(from the bot's API settings: 43 of A-Z a-z 0-9)", KEY)
    loaded = config.load(write(tmp_path, text), {})
    assert loaded.llms["local"].model == "qwen2.5:7b" and loaded.rules["ask"]["ask"] == "local"
