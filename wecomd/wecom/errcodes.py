"""WeCom's errcodes: what kind of failure each is (token, config, retry, request) and what to tell the operator.

The API client raises WecomApiError with these; the workers decide on retries from its `kind`.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

# Branch on errcode only: errmsg carries "hint: [...]" and "from ip: ..." noise (wecom-protocol.md §8.2).
TOKEN_CODES = frozenset({40014, 42001, 41001})
CONFIG_CODES = frozenset({40001, 40013, 40091, 60020, 48002, 301002, 40056, 41011})
RETRY_CODES = frozenset({-1, 45009, 45033})

_TOKEN_HINT = ("WeCom rejected a freshly fetched access token too; if this repeats, check that [app:NAME] "
               "secret is this app's own Secret")
_HINTS: Dict[int, str] = {
    40014: _TOKEN_HINT, 42001: _TOKEN_HINT, 41001: _TOKEN_HINT,
    40001: "the app's secret is wrong or was reset: copy it again into [app:NAME] secret",
    40013: "the corp ID is wrong: copy 我的企业 → 企业信息 → 企业ID into [app:NAME] corp_id",
    40091: "the secret is not this corp's: copy the app's Secret (应用管理 → the app) into "
           "[app:NAME] secret",
    60020: "add this server's egress IP to the app's 企业可信IP (trusted IP) list in the WeCom admin "
           "console; the change takes about a minute",
    48002: "this API is not allowed for this token: use the self-built app's own Secret (not the "
           "contacts-sync one or another app's) in [app:NAME] secret",
    301002: "the secret belongs to another app than agent_id: take [app:NAME] agent_id and secret "
            "from the same app",
    40056: "agent_id is wrong: copy the app's AgentId into [app:NAME] agent_id",
    41011: "agent_id is missing: set [app:NAME] agent_id",
    -1: "WeCom is busy: retry later",
    45009: "WeCom's rate limit was hit: wait before retrying (a block lasts for the limit's window)",
    45033: "too many concurrent calls to WeCom: retry later",
    40003: "a recipient UserID is unknown: check it in 通讯录",
    40007: "the media_id is invalid or expired (media ids live 3 days)",
    40008: "WeCom does not know this msgtype",
    40058: "WeCom could not read the request: a parameter or the JSON is wrong",
    44004: "the text is empty",
    45002: "the content is too long: text is limited to 2048 bytes",
    60011: "the app may not reach this member, department or tag: widen the app's 可见范围 "
           "(visible range)",
    81013: "no recipient is valid: check the UserIDs and the app's 可见范围 (visible range)",
    82001: "no recipient was given",
    830002: "the file is over 20 MB and must be fetched in ranges",
}
_NETWORK_HINT = "WeCom could not be reached at [wecom] api_base: check DNS, the firewall and any proxy"


def classify(errcode: int) -> Tuple[str, str]:
    """(kind, hint) for a WeCom errcode; kind is token, config, retry or request."""
    if errcode in TOKEN_CODES:
        kind = "token"
    elif errcode in CONFIG_CODES:
        kind = "config"
    elif errcode in RETRY_CODES:
        kind = "retry"
    else:
        kind = "request"
    return kind, _HINTS.get(errcode, "see WeCom error code %d" % errcode)


class WecomApiError(Exception):
    """A WeCom API call failed; `kind` says what to do about it, `hint` tells the operator how.

    kind: "token" (a token errcode survived one refresh), "config" (the operator must fix something:
    do not retry), "retry" (busy, rate-limited, network or HTTP 5xx: back off), "request" (this
    message is bad: do not retry). errcode is None for failures without a WeCom answer.
    """

    def __init__(self, errcode: Optional[int], errmsg: str, *, kind: Optional[str] = None,
                 hint: Optional[str] = None, path: str = "") -> None:
        default_kind, default_hint = classify(errcode) if errcode is not None else ("retry", _NETWORK_HINT)
        self.errcode, self.errmsg, self.path = errcode, errmsg, path
        self.kind = kind or default_kind
        self.hint = default_hint if hint is None else hint
        super().__init__(errcode, errmsg)

    @property
    def retryable(self) -> bool:
        return self.kind == "retry"

    def __str__(self) -> str:
        what = "errcode %d: %s" % (self.errcode, self.errmsg) if self.errcode is not None else self.errmsg
        return "WeCom %s: %s%s" % (self.path or "API", what, " (%s)" % self.hint if self.hint else "")
