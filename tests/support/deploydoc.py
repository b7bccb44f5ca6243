"""docs/deploy.md's examples, read from the document itself (tests/test_deploy.py runs them; the
connection tests load its config): fenced blocks, command lines, the environment file and the
config with its placeholders made valid."""
from __future__ import annotations

import configparser
import re
import secrets
from pathlib import Path

from support import ROOT
from support.config import API_TOKEN, APP_SECRET, admin_hash
from support.peer import AES_KEY, TOKEN
from wecomd import config as configmod

DOC = ROOT / "docs" / "deploy.md"


def fenced(lang: str) -> list:
    """The bodies of the document's ```lang blocks, in order."""
    text = DOC.read_text(encoding="utf-8")
    return [m.group(1) for m in re.finditer(r"^```%s\n(.*?)^```" % re.escape(lang), text, re.M | re.S)]


def titled(lang: str, title: str) -> str:
    """The ```lang block whose first line is the comment `# title`."""
    found = [block for block in fenced(lang) if block.splitlines()[0].strip() == "# " + title]
    assert len(found) == 1, "docs/deploy.md needs exactly one ```%s block starting with '# %s'" % (lang, title)
    return found[0]


def shell_line(*words: str) -> str:
    """The one command line in the ```sh blocks that contains every word, without `sudo `."""
    lines = {line.strip() for block in fenced("sh") for line in block.splitlines()
             if all(word in line for word in words)}
    assert len(lines) == 1, "expected one command with %s in docs/deploy.md, found %s" % (words, lines)
    return re.sub(r"^sudo ", "", lines.pop())


def doc_env() -> dict:
    """Every WECOMD_NAME=value line of the document's code blocks."""
    found = {}
    for lang in ("sh", "ini"):
        for block in fenced(lang):
            for line in block.splitlines():
                match = re.match(r"\s*(WECOMD_[A-Za-z0-9_]+)=(.*)$", line)
                if match:
                    found[match.group(1)] = match.group(2)
    return found


def doc_config_text() -> str:
    return titled("ini", "/etc/wecomd/wecomd.conf   (root:wecomd, mode 640)")


def doc_config_sections() -> list:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    parser.read_string(doc_config_text())
    return parser


def env_targets(sections) -> dict:
    """WECOMD_* name -> (section, option) for every option of these sections."""
    targets = {}
    for section in sections:
        kind = "app:NAME" if section.startswith("app:") else section
        for option in configmod.SCHEMA[kind]:
            targets[configmod.env_name(section, option)] = (section, option)
    return targets


def sample_value(option: str) -> str:
    """A valid value for a secret option, in place of the document's placeholders."""
    return {"token": TOKEN, "encoding_aes_key": AES_KEY, "secret": APP_SECRET, "api_token": API_TOKEN,
            "cookie_secret": secrets.token_urlsafe(32), "password_hash": admin_hash()}[option]


def write_doc_config(directory: Path) -> tuple:
    """The document's wecomd.conf and wecomd.env in `directory`, placeholders made valid."""
    text = re.sub(r"(?m)^password_hash = .*$", "password_hash = %s" % admin_hash(), doc_config_text())
    conf = directory / "wecomd.conf"
    conf.write_text(text, encoding="utf-8")
    targets = env_targets([*configmod.FIXED_SECTIONS, *doc_config_sections().sections()])
    environ = {name: sample_value(targets[name][1]) for name in doc_env()}
    env_file = directory / "wecomd.env"
    env_file.write_text("".join("%s=%s\n" % item for item in environ.items()))
    env_file.chmod(0o600)
    return conf, env_file, environ
