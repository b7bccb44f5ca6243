"""A test config on disk: two apps, an admin password, an API token and an app secret."""
from __future__ import annotations

import functools
from pathlib import Path

from support.peer import AES_KEY, AGENT_ID, CORP_ID, TOKEN

ADMIN_PASSWORD = "correct horse battery staple"
API_TOKEN = "test-api-token-0123456789abcdef0123456789"
APP_SECRET = "helpdesk-secret-0123456789"


@functools.lru_cache(maxsize=None)
def admin_hash() -> str:
    """ADMIN_PASSWORD's hash, computed once: scrypt is slow on purpose."""
    from wecomd.passwords import hash_password

    return hash_password(ADMIN_PASSWORD)


def write_config(directory: Path, port: int = 0, extra: str = "", api_base: str = "http://127.0.0.1:9",
                 wecom: str = "", **server: str) -> Path:
    """Write a test config with two apps: `helpdesk` (default reply, a secret) and `quiet` (neither).
    `wecom`: more lines of the [wecom] section."""
    settings = {"listen": "127.0.0.1:%d" % port, "database": "wecomd.db", "media_dir": "media", **server}
    lines = ["[server]"] + ["%s = %s" % kv for kv in settings.items()]
    lines += [
        "", "[admin]", "username = admin", "cookie_secret = test-cookie-secret-0123456789abcdef0123",
        "password_hash = %s" % admin_hash(), "api_token = %s" % API_TOKEN,
        "", "[wecom]", "api_base = %s" % api_base, wecom,
        "", "[app:helpdesk]", "corp_id = %s" % CORP_ID, "agent_id = %s" % AGENT_ID,
        "token = %s" % TOKEN, "encoding_aes_key = %s" % AES_KEY, "reply = 已收到", "secret = %s" % APP_SECRET,
        "", "[app:quiet]", "corp_id = %s" % CORP_ID, "agent_id = 1000003",
        "token = %s" % TOKEN, "encoding_aes_key = %s" % AES_KEY, "", extra,
    ]
    path = directory / "wecomd.conf"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def kf_app_section(secret: str = "kefu-secret-0123456789", more: str = "") -> str:
    """The [app:kefu] section of a 微信客服 app (kf = yes) with the peer's token and key, and `more`
    lines (kf_accounts, reply ...)."""
    return "\n".join(["", "[app:kefu]", "corp_id = %s" % CORP_ID, "agent_id = 1000009", "token = %s" % TOKEN,
                      "encoding_aes_key = %s" % AES_KEY, "secret = %s" % secret, "kf = yes", more, ""])
