"""`wecomd doctor`'s 微信客服 check: for each `kf = yes` app, the kf accounts it may manage
(kf/account/list), and what WeCom's refusals mean for the setup (wecom-kf.md §1)."""
from __future__ import annotations

from typing import List

from wecomd.cli.doctor.check import Check
from wecomd.config import AppConfig, Config
from wecomd.wecom.api import WecomApiError, WecomClient

ACCOUNT_LIST = "/cgi-bin/kf/account/list"
ENROL = "微信客服 → 可调用接口的应用: add this self-built app there"
# errcode -> what it means for the 微信客服 setup
SETUP_ERRORS = {
    48002: "this app may not call the 微信客服 API: %s" % ENROL,
    60011: "this app's visible range does not cover the 微信客服 accounts' servicers: widen it (应用管理 → the app → 可见范围)",
    40001: "the secret was refused. Since 2023-12-01 the 微信客服 system app's own secret no longer works: "
           "use the secret of the self-built app listed under %s" % ENROL,
    95011: "the corp already uses 微信客服 inside the WeCom client: %s" % ENROL,
}


async def check_kf(config: Config, timeout: float) -> List[Check]:
    """One check per app with kf = yes."""
    apps = [app for app in config.apps.values() if app.kf]
    if not apps:
        return []
    client = WecomClient(config.wecom.api_base, request_timeout=timeout)
    try:
        return [await _accounts(client, app) for app in apps]
    finally:
        client.close()


async def _accounts(client: WecomClient, app: AppConfig) -> Check:
    name = "kf:%s" % app.name
    try:
        answer = await client.call(app, "POST", ACCOUNT_LIST, json_body={"offset": 0, "limit": 100})
    except WecomApiError as exc:
        hint = SETUP_ERRORS.get(exc.errcode or 0, exc.hint)
        return Check(name, "fail", "kf/account/list: errcode %s (%s)" % (exc.errcode, exc.errmsg.split(", hint:")[0]), hint)
    except OSError as exc:
        return Check(name, "fail", "kf/account/list: %s" % exc, "is [wecom] api_base reachable?")
    accounts = [a for a in answer.get("account_list") or [] if isinstance(a, dict)]
    details = ["%s %s%s" % (a.get("open_kfid"), a.get("name") or "",
                            "" if a.get("manage_privilege", True) else " (not 通过API管理: cannot be served)")
               for a in accounts]
    served = [a for a in accounts if a.get("manage_privilege", True) and app.serves_kf(a.get("open_kfid") or "")]
    missing = [kfid for kfid in app.kf_accounts if kfid not in {a.get("open_kfid") for a in accounts}]
    if missing:
        return Check(name, "fail", "kf_accounts names %s, which this app may not manage" % ", ".join(missing),
                     "set those accounts to 通过API管理 (微信客服 → 通过API管理微信客服账号), or fix kf_accounts",
                     details)
    if not served:
        return Check(name, "warn", "no 微信客服 account this app may serve (%d listed)" % len(accounts),
                     "set the accounts to 通过API管理 (微信客服 → 通过API管理微信客服账号) and give the app their servicers",
                     details)
    return Check(name, "ok", "%d 微信客服 account(s) served: %s" % (len(served), ", ".join(
        "%s (%s)" % (a.get("open_kfid"), a.get("name") or "") for a in served)), details=details)
