"""The INI config: its schema as data, loading with environment overrides, validation, rendering.

Values are layered defaults → file → ``WECOMD_<SECTION>_<OPTION>`` environment variables. Every
problem found is collected and raised together in one `ConfigError`, each naming its source.
"""
from __future__ import annotations

import base64
import configparser
import difflib
import ipaddress
import os
import re
import textwrap
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

from wecomd import passwords
from wecomd.automation import rules as _rules

REQUIRED = object()  # the default of an option that has none
SEARCH_PATHS = (Path("wecomd.conf"), Path("/etc/wecomd/wecomd.conf"))
ENV_PREFIX, ENV_CONFIG = "WECOMD_", "WECOMD_CONFIG"
# `<option>_file`: a secret option read from a file (systemd credentials: LoadCredential=), in the
# INI or as WECOMD_..._FILE; a relative name is taken from $CREDENTIALS_DIRECTORY when it is set.
FILE_SUFFIX, CREDENTIALS_DIRECTORY = "_file", "CREDENTIALS_DIRECTORY"
RULE_SECRETS = ("webhook_secret",)  # the secret options of a [rule:NAME] section (wecomd.automation.rules)
MAX_SECRET_FILE = 65536  # bytes; a larger "secret" is a wrong path (/dev/zero, a log file)
FIXED_SECTIONS = ("server", "admin", "wecom", "rules")
MIN_SECRET_LENGTH = 32
_APP_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # an app's or a bot's: a URL path segment
NAMED = {"app:NAME": "an app", "bot:NAME": "a bot"}  # sections whose NAME is a /callback/NAME


def valid_name(name: str) -> bool:
    """Whether `name` can be an app's or a bot's NAME (a /callback/NAME path segment)."""
    return bool(_APP_NAME.fullmatch(name))
_ALNUM = re.compile(r"[A-Za-z0-9]*")


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, problems: Union[str, List[str]]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class Option(NamedTuple):
    default: Any  # the text form, or REQUIRED
    convert: Callable[[str], Any]  # raises ValueError saying what is wrong, without the value
    help: str
    secret: bool = False  # never shown: not in problems, not in repr


# --- converters: text -> value, or ValueError --------------------------------------------------

def _matching(pattern: str, message: str) -> Callable[[str], str]:
    regex = re.compile(pattern, re.DOTALL)

    def convert(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(message)
        return value
    return convert


_NONEMPTY = _matching(r".+", "must not be empty")


def _integer(minimum: int) -> Callable[[str], int]:
    def convert(value: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]+", value):
            raise ValueError("not an integer")
        if int(value) < minimum:
            raise ValueError("must be %d or more" % minimum)
        return int(value)
    return convert


def _boolean(value: str) -> bool:
    states = configparser.RawConfigParser.BOOLEAN_STATES
    if value.lower() not in states:
        raise ValueError("not a boolean: use yes or no")
    return states[value.lower()]


def _kf_accounts(value: str) -> Tuple[str, ...]:
    ids = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    for open_kfid in ids:
        if not re.fullmatch(r"[0-9A-Za-z_\-]{1,64}", open_kfid):
            raise ValueError("%r is not an open_kfid (like wkAbCdEf…, comma-separated)" % open_kfid)
    return ids


def _listen(value: str) -> Tuple[str, int]:
    host, _, port = value.rpartition(":")
    # ASCII digits only: str.isdigit() also takes '²' (int() refuses it) and '٣' (int() reads 3).
    if not host or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError("expected host:port with a port from 0 to 65535, e.g. 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port)
        except ValueError:
            raise ValueError("not an IPv6 address in brackets") from None
    if ":" in host:
        raise ValueError("write an IPv6 address in brackets, e.g. [::1]:8080")
    return _matching(r"[A-Za-z0-9.-]+", "not a host name or IP address")(host), int(port)


def _networks(value: str) -> Tuple[Any, ...]:
    """Comma-separated addresses or CIDR networks, e.g. "127.0.0.1, 10.0.0.0/8"."""
    found = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError("%r is not an IP address or network such as 10.0.0.0/8" % item) from None
    return tuple(found)


def _database(value: str) -> str:
    if "://" in value and value.split("://")[0].lower() not in ("sqlite", "postgres", "postgresql"):
        raise ValueError("a database URL must start with sqlite://, postgres:// or postgresql://")
    return _NONEMPTY(value)


def _api_base(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("must be an http:// or https:// URL without query")
    return value.rstrip("/")


def _ip_echo_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.netloc):
        raise ValueError("must be an http:// or https:// URL, or empty")
    return value


def _passive_budget(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("not a number of seconds") from None
    if not 0 <= seconds <= 4.5:  # WeCom waits 5 s for the answer (wecom-protocol.md §4); keep a margin
        raise ValueError("must be from 0 to 4.5 seconds")
    return seconds


def _password_hash(value: str) -> str:
    if value and not passwords.is_hash(value):
        raise ValueError("not a hash made by `wecomd hash-password`")
    return value


def _duplicate_check(value: str) -> int:
    seconds = _integer(0)(value)
    if seconds > 14400:  # WeCom's maximum, 4 hours
        raise ValueError("must be at most 14400 seconds (4 hours), got %d" % seconds)
    return seconds


def _webhook_key(value: str) -> str:
    # A key goes into the URL's query as it is, so nothing that would change the query may be in it.
    if "key=" in value or "://" in value:
        raise ValueError("the key alone, not the whole webhook URL: the part after key=")
    if not re.fullmatch(r"[A-Za-z0-9_.~-]{1,128}", value):
        raise ValueError("must be 1 to 128 characters of A-Z a-z 0-9 - _ . ~")
    return value


def _token(value: str) -> str:  # wecom-protocol.md §1
    return _alnum(value, 1, 32, "must be 1 to 32 characters of A-Z a-z 0-9")


def _aes_key(value: str) -> str:  # wecom-protocol.md §1 and §3: base64 of 32 bytes, '=' dropped
    rule = "must be exactly 43 characters of A-Z a-z 0-9"
    if len(value) == 44 and value.endswith("="):
        raise ValueError("%s (got 44: drop the trailing '=')" % rule)
    _alnum(value, 43, 43, rule)
    if len(base64.b64decode(value + "=")) != 32:
        raise ValueError("does not decode to a 32-byte AES key")
    return value


def _alnum(value: str, shortest: int, longest: int, rule: str) -> str:
    if not _ALNUM.fullmatch(value):
        raise ValueError("%s (got a character outside that set)" % rule)
    if not shortest <= len(value) <= longest:
        raise ValueError("%s (got %d)" % (rule, len(value)))
    return value


# --- the schema --------------------------------------------------------------------------------

SECTION_HELP = {
    "server": "The HTTP server.",
    "admin": "The dashboard login, and the API token for scripts.",
    "wecom": "The WeCom server API (access tokens, replies through the API, media download).",
    "rules": "Settings shared by every [rule:NAME] section (keyword replies, menu commands, webhooks; "
             "see docs/rules.md).",
    "app:NAME": "One WeCom self-built app; its callback URL path is /callback/NAME. Enter that URL, the "
                "token and the encoding_aes_key in the WeCom admin console (应用 → 接收消息 → 设置API接收).",
    "bot:NAME": "One 智能机器人 (AI bot) in API mode; its callback URL path is /callback/NAME, in the same "
                "namespace as the apps. Enter that URL, the token and the encoding_aes_key in the bot's "
                "API settings (docs/bots.md).",
    "llm:NAME": "An OpenAI-compatible model server that a rule's `ask = NAME` streams answers from "
                "(/v1/chat/completions with stream: true; docs/rules.md).",
    "group:NAME": "A WeCom group robot (群机器人) that a rule's `notify = NAME` posts to, at most 20 "
                  "messages a minute (docs/rules.md).",
}

SCHEMA: Dict[str, Dict[str, Option]] = {
    "server": {
        "listen": Option("127.0.0.1:8080", _listen, "host:port to listen on; IPv6 as [::1]:8080; "
                         "port 0 picks a free one."),
        "database": Option("wecomd.db", _database, "SQLite file (relative to this file's directory) or a "
                           "database URL: sqlite:///..., postgresql://user:pass@host/db.", secret=True),
        "media_dir": Option("media", _NONEMPTY, "Directory for downloaded images, voice, video and files "
                            "(relative to this file's directory)."),
        "retention_days": Option("0", _integer(0), "Delete messages received more than this many days "
                                 "ago, with their rule runs and media files, checked hourly; 0: keep "
                                 "everything. Pending outbound messages are never deleted."),
        "audit_retention_days": Option("0", _integer(0), "Delete audit log rows older than this many days, "
                                       "checked hourly; 0: keep them for good. retention_days never "
                                       "deletes them."),
        "max_body": Option("1048576", _integer(1), "Largest callback body in bytes; larger ones get 413."),
        "timestamp_window": Option("300", _integer(0), "Seconds of clock skew accepted on callback "
                                   "timestamps; 0 turns the check off."),
        "xheaders": Option("no", _boolean, "yes: trust X-Real-IP / X-Forwarded-For from any peer (legacy; "
                           "prefer trusted_proxies, which trusts only the proxies you name)."),
        "trusted_proxies": Option("", _networks, "Addresses or networks of reverse proxies (comma-separated, "
                                  "e.g. 127.0.0.1, 10.0.0.0/8) whose X-Forwarded-For / X-Real-IP give the "
                                  "client address; empty: the TCP peer is the client."),
        "idle_timeout": Option("60", _integer(1), "Seconds an idle keep-alive connection, or one that has "
                               "not finished sending its request headers, is kept open."),
        "body_timeout": Option("30", _integer(1), "Seconds a client may take to send a request body."),
        "max_connections": Option("0", _integer(0), "Connections open at once, in total; more are refused. "
                                  "0: automatic, from the open-file limit (LimitNOFILE) less a reserve."),
        "max_connections_per_ip": Option("64", _integer(0), "Connections open at once from one client "
                                         "address (trusted proxies exempt); 0: no per-address cap."),
        "log_level": Option("info", _matching(r"debug|info|warning|error", "must be debug, info, warning "
                                              "or error"), "debug, info, warning or error."),
        "log_format": Option("text", _matching(r"text|json", "must be text or json"), "text, or json for "
                             "one JSON object a line (log shippers). Under systemd each line carries its "
                             "syslog priority."),
        "log_content": Option("no", _boolean, "yes: the debug level may log message contents; no: never."),
        "kf_pull": Option("process", _matching(r"process|inline", "must be process or inline"),
                          "Where 微信客服's pulls run: process (a child process of its own, so that "
                          "callbacks are answered within milliseconds while a backlog is stored) or "
                          "inline (in the daemon). See docs/kf.md."),
    },
    "admin": {
        "username": Option("admin", _NONEMPTY, "Dashboard login name."),
        "password_hash": Option("", _password_hash, "Dashboard password hash from `wecomd hash-password`; "
                                "empty: nobody can log in.", secret=True),
        "cookie_secret": Option("", str, "Long random string that signs session cookies "
                                "(`wecomd init` generates one).", secret=True),
        "api_token": Option("", str, "Optional: scripts send `Authorization: Bearer <api_token>` to "
                            "/api/*; empty: off.", secret=True),
        "metrics_token": Option("", str, "Optional: a token that opens /metrics and nothing else "
                                "(`Authorization: Bearer <metrics_token>`), for Prometheus; empty: off.",
                                secret=True),
    },
    "wecom": {
        "api_base": Option("https://qyapi.weixin.qq.com", _api_base, "Base URL of the WeCom API; tests "
                           "and `wecomd demo` point it at a local fake."),
        "ip_echo_url": Option("https://api.ipify.org", _ip_echo_url, "A \"what is my IP\" URL that "
                              "answers this server's outgoing IP as plain text; `wecomd doctor` shows "
                              "it for the app's trusted IP list (企业可信IP). Empty: not asked."),
        "duplicate_check_interval": Option("0", _duplicate_check, "Seconds (at most 14400): every send "
                                           "asks WeCom to drop a message identical to one sent to the "
                                           "same user within this time (enable_duplicate_check), so a "
                                           "reply resent after a crash is not delivered twice; but two "
                                           "identical replies within it arrive once. 0: off."),
        "contact_refresh_hours": Option("24", _integer(1), "Hours a contact's name and departments (WeCom's "
                                        "user/get and department/list) are kept before they are asked again."),
    },
    "rules": {
        "takeover_minutes": Option("30", _integer(0), "After an operator replies by hand, automation pauses "
                                   "for that user this many minutes; 0: never pauses."),
        "passive_budget": Option("3.5", _passive_budget, "Seconds an action may take and still answer as "
                                 "the passive reply (WeCom waits 5); slower results go through the API."),
        "max_commands": Option("4", _integer(1), "Commands (run =) running at once, process-wide."),
        "output_limit": Option("65536", _integer(1), "Bytes of a command's output kept."),
    },
    "app:NAME": {
        "corp_id": Option(REQUIRED, _matching(r"\S{1,64}", "must be 1 to 64 characters without spaces"),
                           "The CorpID (我的企业 → 企业信息)."),
        "agent_id": Option(REQUIRED, _matching(r"[0-9]+", "must be digits, e.g. 1000002"),
                           "The app's AgentId, digits."),
        "token": Option(REQUIRED, _token, "The callback Token: 1 to 32 of A-Z a-z 0-9.", secret=True),
        "encoding_aes_key": Option(REQUIRED, _aes_key, "The callback EncodingAESKey: exactly 43 of "
                                   "A-Z a-z 0-9.", secret=True),
        "secret": Option("", str, "Optional: the app's Secret; enables replies through the API and media "
                         "download.", secret=True),
        "reply": Option("", str, "Optional: a passive text reply to every message, e.g. 已收到; "
                        "empty: none."),
        "kf": Option("no", _boolean, "yes: this app is the one listed under 微信客服 → 可调用接口的应用; its "
                     "kf_msg_or_event callbacks are pulled with kf/sync_msg and answered with kf/send_msg "
                     "(needs its secret). See docs/kf.md."),
        "kf_accounts": Option("", _kf_accounts, "Optional, with kf = yes: the open_kfid of each 微信客服 "
                              "account to serve, comma-separated; empty: every account the app may manage."),
    },
    "bot:NAME": {
        "token": Option(REQUIRED, _token, "The bot's callback Token: 1 to 32 of A-Z a-z 0-9.", secret=True),
        "encoding_aes_key": Option(REQUIRED, _aes_key, "The bot's callback EncodingAESKey: exactly 43 of "
                                   "A-Z a-z 0-9.", secret=True),
        "aibotid": Option("", str, "Optional: the bot's id (aibotid); when set, callbacks naming another "
                          "bot are refused."),
        "reply": Option("", str, "Optional: the answer when no rule answers, sent as one finished "
                        "stream; empty: none."),
        "stream_deadline": Option("30", _integer(1), "Seconds a streamed answer may take; past them the "
                                  "stream is closed with a notice and the answer goes once to the "
                                  "message's response_url."),
    },
    "llm:NAME": {
        "base_url": Option(REQUIRED, _api_base, "The server's base URL, e.g. https://api.example.com or "
                           "http://127.0.0.1:11434; /v1/chat/completions is added (a path that already "
                           "ends in a version such as /v1 gets only /chat/completions)."),
        "api_key": Option("", str, "Optional: sent as Authorization: Bearer <api_key>; empty: no "
                          "Authorization header (local servers).", secret=True),
        "model": Option(REQUIRED, _NONEMPTY, "The model name the server knows, e.g. qwen-plus."),
        "system": Option("", str, "Optional: the system prompt sent first; empty: none."),
        "max_tokens": Option("1024", _integer(1), "The most tokens one answer may have (max_tokens)."),
        "timeout": Option("60", _integer(1), "Seconds one answer may take in all, from the request to "
                          "its last piece; past them the answer ends with a notice."),
    },
    "group:NAME": {
        "webhook_key": Option(REQUIRED, _webhook_key, "The robot's key: the part after key= of its webhook "
                              "URL (the group's 消息推送 / 群机器人 settings).", secret=True),
    },
}


# --- the result --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerConfig:
    listen_host: str
    listen_port: int
    database: str = field(repr=False)  # an absolute file path, or a URL as written (it may hold a password)
    media_dir: Path  # absolute
    max_body: int
    timestamp_window: int  # 0 = off
    xheaders: bool
    log_level: str
    retention_days: int = 0  # 0 = keep messages forever
    audit_retention_days: int = 0  # 0 = keep the audit log forever
    trusted_proxies: Tuple[Any, ...] = ()  # ipaddress networks; () = the TCP peer is the client
    idle_timeout: int = 60  # seconds
    body_timeout: int = 30  # seconds
    max_connections: int = 0  # 0 = automatic, from RLIMIT_NOFILE
    max_connections_per_ip: int = 64  # 0 = no per-address cap
    log_format: str = "text"  # text | json
    log_content: bool = False  # debug lines may carry message contents only when True
    kf_pull: str = "process"  # process | inline: where 微信客服's pulls run (wecomd.kf.process)


@dataclass(frozen=True)
class AdminConfig:
    username: str
    password_hash: str = field(repr=False)  # "" = nobody can log in
    cookie_secret: str = field(repr=False)
    api_token: str = field(repr=False)  # "" = off
    metrics_token: str = field(default="", repr=False)  # "" = off; opens /metrics only


@dataclass(frozen=True)
class WecomConfig:
    api_base: str  # no trailing slash
    ip_echo_url: str = "https://api.ipify.org"  # "" = off; only `wecomd doctor` asks it
    duplicate_check_interval: int = 0  # seconds; 0 = off (wecom-protocol.md, message/send)
    contact_refresh_hours: int = 24  # the contact directory's cache lifetime


@dataclass(frozen=True)
class RulesConfig:
    takeover_minutes: int = 30  # 0 = never pause automation
    passive_budget: float = 3.5  # seconds
    max_commands: int = 4
    output_limit: int = 65536  # bytes


@dataclass(frozen=True)
class BotConfig:
    """A 智能机器人 in API mode ([bot:NAME]); its callbacks come to /callback/NAME."""

    name: str
    token: str = field(repr=False)
    encoding_aes_key: str = field(repr=False)
    aibotid: str = ""
    reply: str = ""
    stream_deadline: int = 30  # seconds


@dataclass(frozen=True)
class LlmConfig:
    """An OpenAI-compatible model server ([llm:NAME]); rules name it with `ask = NAME`."""

    name: str
    base_url: str  # no trailing slash
    api_key: str = field(repr=False)  # "" = no Authorization header
    model: str
    system: str = ""  # "" = no system message
    max_tokens: int = 1024
    timeout: int = 60  # seconds, the whole answer


@dataclass(frozen=True)
class GroupConfig:
    """A group robot (群机器人, [group:NAME]); rules post to it with `notify = NAME`."""

    name: str
    webhook_key: str = field(repr=False)


@dataclass(frozen=True)
class AppConfig:
    name: str
    corp_id: str
    agent_id: str  # digits, kept as text like the XML's AgentID
    token: str = field(repr=False)
    encoding_aes_key: str = field(repr=False)
    secret: str = field(repr=False)  # "" = none
    reply: str  # "" = none
    kf: bool = False  # 微信客服: kf_msg_or_event callbacks are pulled (wecomd.kf)
    kf_accounts: Tuple[str, ...] = ()  # the open_kfids served; (): all the app may manage

    def serves_kf(self, open_kfid: str) -> bool:
        """Whether this app's 微信客服 channel takes the account `open_kfid`."""
        return self.kf and (not self.kf_accounts or open_kfid in self.kf_accounts)


@dataclass(frozen=True)
class Config:
    path: Optional[Path]  # absolute; None when built from defaults and environment only
    server: ServerConfig
    admin: AdminConfig
    wecom: WecomConfig
    apps: Dict[str, AppConfig]  # by NAME, in file order
    bots: Dict[str, "BotConfig"] = field(default_factory=dict)  # [bot:NAME], file order
    llms: Dict[str, "LlmConfig"] = field(default_factory=dict)  # [llm:NAME], file order
    groups: Dict[str, "GroupConfig"] = field(default_factory=dict)  # [group:NAME], file order
    rules: Dict[str, Dict[str, str]] = field(default_factory=dict)  # [rule:NAME] as written, file order
    rules_settings: RulesConfig = field(default_factory=RulesConfig)  # [rules]
    # (section, option) -> where its value came from: "default", the file, or "environment WECOMD_..."
    sources: Dict[Tuple[str, str], str] = field(default_factory=dict, repr=False)
    ignored_env: Tuple[str, ...] = field(default=(), repr=False)  # WECOMD_* names that matched nothing


# --- loading -----------------------------------------------------------------------------------

Raw = Dict[str, Dict[str, Tuple[str, str]]]  # section -> option -> (text, source)


def env_name(section: str, option: str) -> str:
    """The environment variable that overrides `option` of `section`."""
    return ENV_PREFIX + re.sub(r"[:-]", "_", section.upper()) + "_" + option.upper()


def find_config(explicit: Optional[str], environ: Optional[Mapping[str, str]] = None) -> Path:
    """The config file: `explicit` (-c), else $WECOMD_CONFIG, else the first of SEARCH_PATHS that exists."""
    environ = os.environ if environ is None else environ
    for given, origin in ((explicit, "-c"), (environ.get(ENV_CONFIG), ENV_CONFIG)):
        if given:
            if not Path(given).exists():
                raise ConfigError("%s: no such file (from %s)" % (given, origin))
            return Path(given)
    for candidate in SEARCH_PATHS:
        if candidate.exists():
            return candidate
    raise ConfigError("no config file: none of %s exists; pass -c FILE, set %s, or run `wecomd init`"
                      % (", ".join(map(str, SEARCH_PATHS)), ENV_CONFIG))


def load(path: Union[str, Path, None], environ: Optional[Mapping[str, str]] = None) -> Config:
    """Read, override and validate the config; raise ConfigError naming every problem found.

    Relative paths are resolved against the config file's directory (the working directory when
    `path` is None). `environ` defaults to os.environ.
    """
    environ = os.environ if environ is None else environ
    problems: List[str] = []
    label = str(path) if path is not None else "defaults"
    raw = _read_file(Path(path), label, problems) if path is not None else {}
    ignored = _apply_env(raw, environ, problems)
    base = Path(path).absolute().parent if path is not None else Path.cwd()
    _read_secret_files(raw, label, Path(environ.get(CREDENTIALS_DIRECTORY) or base), problems)
    values, sources, rules = {}, {}, {}
    for section in dict.fromkeys([*raw, *FIXED_SECTIONS]):
        kind = _kind(section)
        if kind is None:
            problems.append("%s: [%s]: unknown section%s" % (label, section, _suggest(section, SCHEMA)))
        elif kind == "rule":
            rules[section[5:]] = {option: text for option, (text, _) in raw[section].items()}
            sources.update(((section, option), source) for option, (_, source) in raw[section].items()
                           if option in RULE_SECRETS)
        elif kind in NAMED and not _APP_NAME.fullmatch(section[4:]):
            problems.append("%s: [%s]: %s name is 1 to 64 characters of A-Z a-z 0-9 _ -"
                            % (label, section, NAMED[kind]))
        elif kind == "group:NAME" and not _APP_NAME.fullmatch(section[6:]):
            problems.append("%s: [%s]: a group's name is 1 to 64 characters of A-Z a-z 0-9 _ -" % (label, section))
        else:
            values[section] = _convert(section, SCHEMA[kind], raw.get(section, {}), label, problems,
                                       sources)
    apps = [section[4:] for section in raw
            if _kind(section) in NAMED and _APP_NAME.fullmatch(section[4:])]
    problems.extend("%s: [bot:%s]: an app is named %s too: apps and bots share /callback/NAME, give one "
                    "another name" % (label, name, name) for name in sorted({n for n in apps if apps.count(n) > 1}))
    problems.extend(_kf_problems(values, label))
    llms = [section[4:] for section in raw if _kind(section) == "llm:NAME"]
    groups = [section[6:] for section in raw if _kind(section) == "group:NAME"]
    problems.extend("%s: %s" % (label, problem)
                    for problem in _rules.problems(rules, list(dict.fromkeys(apps)), llm_names=llms,
                                                   group_names=groups))
    if problems:
        raise ConfigError(problems)
    absolute = Path(path).absolute() if path is not None else None
    return _build(absolute, absolute.parent if absolute else Path.cwd(), values, rules, sources, ignored)


def _kf_problems(values: Dict[str, Dict[str, Any]], label: str) -> List[str]:
    """微信客服 needs the app's secret (every pull and send is an API call), and an account served by
    two apps would be pulled twice."""
    found, owners = [], {}
    for section, options in values.items():
        if not section.startswith("app:"):
            continue
        if options.get("kf_accounts") and not options.get("kf"):
            found.append("%s: [%s] kf_accounts: set without kf = yes" % (label, section))
        if options.get("kf") and not options.get("secret"):
            found.append("%s: [%s] kf: 微信客服 pulls and sends through the API: set the app's secret" % (label, section))
        if options.get("kf"):
            for open_kfid in options.get("kf_accounts") or ("*",):
                if open_kfid in owners:
                    found.append("%s: [%s] kf_accounts: %s is served by [%s] already: one app per account"
                                 % (label, section, "every account" if open_kfid == "*" else open_kfid, owners[open_kfid]))
                owners[open_kfid] = section
    return found


def problems(path: Union[str, Path, None], environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Every problem `load` would raise, or [] when the config is usable."""
    try:
        load(path, environ)
    except ConfigError as exc:
        return exc.problems
    return []


def _kind(section: str) -> Optional[str]:
    if section in FIXED_SECTIONS:
        return section
    if section.startswith("app:"):
        return "app:NAME"
    if section.startswith("bot:"):
        return "bot:NAME"
    if section.startswith("llm:") and len(section) > 4:
        return "llm:NAME"
    if section.startswith("group:") and len(section) > 6:
        return "group:NAME"
    if section.startswith("rule:") and len(section) > 5:
        return "rule"  # kept raw here; wecomd.automation.rules validates and compiles it
    return None


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return " (did you mean %s?)" % close[0] if close else ""


def _parser(strict: bool) -> configparser.RawConfigParser:
    # `;` after whitespace starts a comment, as in design.md's example. No [DEFAULT] magic.
    return configparser.RawConfigParser(strict=strict, inline_comment_prefixes=(";",),
                                        default_section="\0none", interpolation=None)


def _read_file(path: Path, label: str, problems: List[str]) -> Raw:
    try:
        if not path.is_file():
            problems.append("%s: %s" % (label, "not a file" if path.exists() else "no such file"))
            return {}
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        problems.append("%s: cannot read: %s" % (label, exc.strerror or exc))
        return {}
    except UnicodeDecodeError as exc:
        problems.append("%s: not UTF-8 text (byte %d)" % (label, exc.start))
        return {}
    parser = _parser(strict=False)
    try:
        parser.read_string(text, source=label)
    except configparser.MissingSectionHeaderError as exc:
        problems.append("%s: line %d: an option before any [section] header" % (label, exc.lineno))
        return {}
    except configparser.ParsingError as exc:  # raised after reading all it could; the line may hold a secret
        problems.extend("%s: line %d: not a [section], option = value, or comment" % (label, lineno)
                        for lineno, _ in exc.errors)
    problems.extend(_duplicates(text, label))
    return {section: {option: (text, label) for option, text in parser.items(section)}
            for section in parser.sections()}


def _duplicates(text: str, label: str) -> List[str]:
    """Every repeated section or option (strict configparser stops at the first: blank it out, retry)."""
    # split("\n"), not splitlines(): configparser breaks lines only there (not at \x0c, \x85 ...).
    lines, found = text.split("\n"), []
    for _ in range(len(lines) + 1):
        try:
            _parser(strict=True).read_string("\n".join(lines), source=label)
        except configparser.DuplicateOptionError as exc:
            found.append("%s: line %d: [%s] %s: duplicate option"
                         % (label, exc.lineno, exc.section, exc.option))
            lines[exc.lineno - 1] = ""
        except configparser.DuplicateSectionError as exc:
            found.append("%s: line %d: [%s]: duplicate section" % (label, exc.lineno, exc.section))
            lines[exc.lineno - 1] = "[\0duplicate %d]" % exc.lineno
        except configparser.Error:
            break
        else:
            break
    return found


def secret_options(section: str) -> Tuple[str, ...]:
    """The options of `section` that hold secrets; each also has an `<option>_file` form."""
    kind = _kind(section)
    if kind == "rule":
        return RULE_SECRETS
    return tuple(name for name, option in SCHEMA[kind].items() if option.secret) if kind in SCHEMA else ()


def _env_options(section: str) -> Tuple[str, ...]:
    """What the environment may set in `section`: every option, and `<secret>_file` for its secrets."""
    kind = _kind(section)
    options = tuple(_rules.OPTIONS) if kind == "rule" else tuple(SCHEMA[kind])
    return options + tuple(name + FILE_SUFFIX for name in secret_options(section))


def _apply_env(raw: Raw, environ: Mapping[str, str], problems: List[str]) -> Tuple[str, ...]:
    """Overlay WECOMD_* variables onto `raw`; return the names that matched no option.

    Only existing sections are targets (the fixed ones, and the app and rule sections in the file):
    the environment cannot create an app or a rule, since `app:my_app` and `app:my-app` would share
    a name. A secret set from the environment, as itself or as `<option>_FILE`, replaces both forms
    in the file.
    """
    targets: Dict[str, List[Tuple[str, str]]] = {}
    for section in dict.fromkeys([*FIXED_SECTIONS, *raw]):
        kind = _kind(section)
        if kind == "rule" or kind in SCHEMA and (kind not in NAMED or _APP_NAME.fullmatch(section[4:])):
            for option in _env_options(section):
                targets.setdefault(env_name(section, option), []).append((section, option))
    ignored = []
    for name in sorted(n for n in environ if n.startswith(ENV_PREFIX) and n != ENV_CONFIG):
        hits = targets.get(name, [])
        if len(hits) == 1:
            section, option = hits[0]
            options = raw.setdefault(section, {})
            secret = option[:-len(FILE_SUFFIX)] if option.endswith(FILE_SUFFIX) else option
            if secret in secret_options(section):  # the file's value gives way, in either form
                for form in (secret, secret + FILE_SUFFIX):
                    if form in options and not options[form][1].startswith("environment "):
                        del options[form]
            options[option] = (environ[name].strip(), "environment " + name)
        elif hits:
            names = " and ".join("[%s] %s" % hit for hit in hits)
            problems.append("environment %s: ambiguous: %s" % (name, names))
        else:
            ignored.append(name)
    return tuple(ignored)


def _read_secret_files(raw: Raw, label: str, folder: Path, problems: List[str]) -> None:
    """Replace every `<secret>_file` in `raw` by the secret read from that file.

    A relative file name is taken from `folder` ($CREDENTIALS_DIRECTORY, else the config file's
    directory). One trailing newline is dropped. Problems name the file, never what it holds.
    """
    for section, options in raw.items():
        for secret in secret_options(section):
            entry = options.pop(secret + FILE_SUFFIX, None)
            if entry is None:
                continue
            text, source = entry
            where = source if source.startswith("environment ") else "%s: [%s] %s%s" % (
                label, section, secret, FILE_SUFFIX)
            if secret in options:
                other = options[secret][1]
                other = other if other.startswith("environment ") else "%s: [%s] %s" % (label, section, secret)
                problems.append("%s: %s is set too: give the secret or a file, not both" % (where, other))
                continue
            if not text:
                problems.append("%s: empty: name the file that holds [%s] %s" % (where, section, secret))
                continue
            file = Path(text).expanduser()
            file = file if file.is_absolute() else folder / file
            try:
                options[secret] = (read_secret(file), "file %s (from %s)" % (file, where))
            except ValueError as exc:
                problems.append("%s: %s: %s" % (where, file, exc))


def read_secret(path: Path) -> str:
    """The secret held in the file at `path`, less one trailing newline; ValueError saying why it
    cannot be read, without its contents."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_FILE + 1)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("a directory, not a file") from None
    except OSError as exc:
        raise ValueError("cannot read: %s" % (exc.strerror or type(exc).__name__)) from None
    except ValueError:  # a NUL in the name
        raise ValueError("not a usable file name") from None
    if len(data) > MAX_SECRET_FILE:
        raise ValueError("larger than %d bytes: not a secret" % MAX_SECRET_FILE)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("not UTF-8 text (byte %d)" % exc.start) from None
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return text


def _convert(section: str, schema: Dict[str, Option], raw: Dict[str, Tuple[str, str]], label: str,
             problems: List[str], sources: dict) -> Dict[str, Any]:
    values = {}
    for name, option in schema.items():
        text, source = raw.get(name, (option.default, "default"))
        where = source if source.startswith(("environment ", "file ")) else "%s: [%s] %s" % (label, section, name)
        if text is REQUIRED or (option.default is REQUIRED and not text):
            elsewhere = "; or %s%s, or %s in the environment" % (name, FILE_SUFFIX, env_name(section, name))
            problems.append("%s: %s (required%s)" % (where, "missing" if text is REQUIRED else "empty",
                                                      elsewhere if option.secret and text is REQUIRED else ""))
            continue
        try:
            values[name], sources[(section, name)] = option.convert(text), source
        except ValueError as exc:
            got = "" if option.secret else " (got %r)" % text
            problems.append("%s: %s%s" % (where, exc, got))
    for name in raw.keys() - schema.keys():
        problems.append("%s: [%s] %s: unknown option%s" % (label, section, name, _suggest(name, schema)))
    return values


def _resolve(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _build(path, base, values, rules, sources, ignored) -> Config:
    server = dict(values["server"])
    host, port = server.pop("listen")
    database = server.pop("database")
    if "://" not in database:
        database = str(_resolve(base, database))
    elif database.startswith("sqlite:///") and not database.startswith("sqlite:////"):
        # sqlite:///rel.db is relative: to the config file's directory, like a plain path.
        database = "sqlite:///" + str(_resolve(base, database[len("sqlite:///"):]))
    server_config = ServerConfig(listen_host=host, listen_port=port, database=database,
                                 media_dir=_resolve(base, server.pop("media_dir")), **server)
    apps = {section[4:]: AppConfig(name=section[4:], **options)
            for section, options in values.items() if section.startswith("app:")}
    bots = {section[4:]: BotConfig(name=section[4:], **options)
            for section, options in values.items() if section.startswith("bot:")}
    llms = {section[4:]: LlmConfig(name=section[4:], **options)
            for section, options in values.items() if section.startswith("llm:")}
    groups = {section[6:]: GroupConfig(name=section[6:], **options)
              for section, options in values.items() if section.startswith("group:")}
    return Config(path=path, server=server_config, admin=AdminConfig(**values["admin"]),
                  wecom=WecomConfig(**values["wecom"]), apps=apps, bots=bots, llms=llms, groups=groups,
                  rules=rules,
                  rules_settings=RulesConfig(**values["rules"]), sources=sources, ignored_env=ignored)


# --- rendering ---------------------------------------------------------------------------------

def render(values: Dict[str, Dict[str, str]], elsewhere: Optional[Mapping[Tuple[str, str], str]] = None) -> str:
    """A commented INI file built from the schema's help texts, with `values` over the defaults.

    `values` maps section → option → text; app sections are "app:NAME" and must carry their
    required options, except those in `elsewhere`, (section, option) → where the value is kept
    instead (e.g. an environment file), written as a comment in the option's place. Raises
    ValueError for a section or option the schema does not know.
    """
    lines = ["# wecomd configuration; every option is described in docs/configuration.md.",
             "# Any option can be overridden by an environment variable WECOMD_<SECTION>_<OPTION>,",
             "# e.g. WECOMD_APP_HELPDESK_SECRET, so secrets can live in a systemd EnvironmentFile;",
             "# a secret can also be read from a file: token_file = ..., or WECOMD_APP_HELPDESK_TOKEN_FILE.", ""]
    for section in dict.fromkeys([*FIXED_SECTIONS, *values]):
        lines += _render_section(section, values.get(section, {}), elsewhere or {})
    return "\n".join(lines)


def _render_section(section: str, given: Dict[str, str], elsewhere: Mapping[Tuple[str, str], str]) -> List[str]:
    kind = _kind(section)
    if kind == "rule":
        return ["[%s]" % section] + ["%s = %s" % (k, _render_value(v)) for k, v in given.items()] + [""]
    bad_name = kind in NAMED and not _APP_NAME.fullmatch(section[4:])
    if kind not in SCHEMA or bad_name or set(given) - set(SCHEMA[kind]):
        raise ValueError("[%s]: unknown section, bad app name, or unknown options %s"
                         % (section, sorted(given)))
    help_text = SECTION_HELP[kind].replace("/NAME", "/" + section[4:])
    lines = _comment(help_text) + ["[%s]" % section]
    for name, option in SCHEMA[kind].items():
        if (section, name) in elsewhere:
            lines += _comment(option.help) + _comment("%s: %s" % (name, elsewhere[section, name]))
            continue
        text = given.get(name, option.default)
        if text is REQUIRED:
            raise ValueError("[%s] %s: required" % (section, name))
        lines += _comment(option.help) + [("%s = %s" % (name, _render_value(text))).rstrip()]
    return lines + [""]


def _render_value(text: str) -> str:
    text = str(text)
    if re.search(r"(^|\s);", text):
        raise ValueError("a value cannot start with ';' or hold whitespace then ';': that starts a comment")
    if re.search(r"\n\s*#", text) or "\r" in text:
        raise ValueError("a value cannot hold a carriage return, or a line that starts with '#' (a comment)")
    return text.replace("\n", "\n    ")


def _comment(text: str) -> List[str]:
    return ["# " + line for line in textwrap.wrap(text, 96)]
