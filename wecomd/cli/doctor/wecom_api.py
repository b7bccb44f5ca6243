"""`wecomd doctor`'s network checks: gettoken for every app with a secret, through the daemon's own
WecomClient (whose error table, wecomd.wecom.errcodes.classify, says what each errcode means and what to do), and
this server's outgoing IP for the apps' trusted IP lists (企业可信IP)."""
from __future__ import annotations

import asyncio
import ipaddress
import re
from typing import List, Optional, Tuple

from tornado import httpclient, iostream

from wecomd.config import AppConfig, Config
from wecomd.cli.doctor.check import Check, shown_url
from wecomd.wecom.api import WecomApiError, WecomClient

UNTRUSTED_IP = 60020
# WeCom's errmsg ends in "from ip: 1.2.3.4, more info at ..." (wecom-protocol.md §8.2): its view of us.
_FROM_IP = re.compile(r"from ip:\s*([0-9A-Fa-f.:]+[0-9A-Fa-f])")
TRUSTED_IP_FORM = "应用管理 → the app → 企业可信IP (required for apps created since 2022-06-20; applies in about a minute)"


async def check_wecom(config: Config, timeout: float) -> Tuple[List[Check], Optional[str]]:
    """One check per app, then the egress IP check; and the egress IP found (or None)."""
    client = WecomClient(config.wecom.api_base, request_timeout=timeout)
    seen: List[str] = []  # addresses WeCom named in its error answers
    try:
        *checks, (echoed, error) = await asyncio.gather(
            *(_gettoken(client, config, app, seen) for app in config.apps.values()),
            _ask_echo(config.wecom.ip_echo_url, timeout))
    finally:
        client.close()
    ip_check, ip = _egress(config.wecom.ip_echo_url, echoed, error, seen[0] if seen else None)
    return checks + [ip_check], ip


async def _gettoken(client: WecomClient, config: Config, app: AppConfig, seen: List[str]) -> Check:
    name = "wecom:%s" % app.name
    if not app.secret:
        return Check(name, "skip", "no secret: replies through the API and media download are off",
                     "to use them, set [app:%s] secret to the app's Secret (应用管理 → the app)" % app.name)
    # Which secret was tried, never the secret: its length and where it came from (file or environment).
    used = "corp_id %s, secret of %d characters from %s" % (
        app.corp_id, len(app.secret), config.sources.get(("app:%s" % app.name, "secret"), "the config"))
    try:
        await client.access_token(app)
    except WecomApiError as exc:
        if exc.errcode is None:
            return Check(name, "fail", "gettoken via %s: %s" % (shown_url(client.api_base), exc.errmsg), exc.hint)
        meaning = exc.errmsg.split(", hint:")[0].strip()  # without WeCom's noise
        found = _FROM_IP.search(exc.errmsg)
        hint = exc.hint
        if found:
            seen.append(found.group(1))
            if exc.errcode == UNTRUSTED_IP:
                hint = "add %s (the address WeCom saw) to this app's trusted IPs: %s" % (found.group(1), TRUSTED_IP_FORM)
        return Check(name, "fail", "gettoken: errcode %d (%s); tried %s" % (exc.errcode, meaning, used), hint)
    return Check(name, "ok", "gettoken: access token received (%s)" % used)


async def _ask_echo(url: str, timeout: float) -> Tuple[Optional[str], str]:
    """(this server's IP as the "what is my IP" service at `url` sees it, or None; why not)."""
    if not url:
        return None, ""
    http = httpclient.AsyncHTTPClient(force_instance=True, max_body_size=4096)
    try:
        response = await http.fetch(url, request_timeout=timeout, connect_timeout=timeout, raise_error=False)
        if response.code != 200:
            return None, "HTTP %d" % response.code
        text = (response.body or b"").decode("ascii", "replace").strip()
        return str(ipaddress.ip_address(text)), ""
    except ValueError:
        return None, "the answer is not an IP address"
    except (OSError, httpclient.HTTPClientError, iostream.StreamClosedError) as exc:
        return None, "%s: %s" % (type(exc).__name__, exc)
    finally:
        http.close()


def _egress(url: str, echoed: Optional[str], error: str, wecom_saw: Optional[str]) -> Tuple[Check, Optional[str]]:
    use, url = "; list it in each app's trusted IPs: %s" % TRUSTED_IP_FORM, shown_url(url) if url else url
    if echoed and wecom_saw and echoed != wecom_saw:
        return Check("egress-ip", "warn", "WeCom saw %s, but %s answered %s" % (wecom_saw, url, echoed),
                     "this server leaves through more than one address (a proxy or a NAT pool): list %s, the "
                     "one WeCom saw, and any other it may use" % wecom_saw), wecom_saw
    if echoed:
        return Check("egress-ip", "ok", "%s (from %s)%s" % (echoed, url, use)), echoed
    if wecom_saw:
        told = "; %s: %s" % (url, error) if url else ""
        return Check("egress-ip", "ok", "%s (as WeCom saw it%s)%s" % (wecom_saw, told, use)), wecom_saw
    if url:
        return Check("egress-ip", "warn", "unknown: %s: %s" % (url, error),
                     "set [wecom] ip_echo_url to a \"what is my IP\" service this server can reach, or "
                     "look the address up in your provider's console"), None
    return Check("egress-ip", "skip", "unknown: [wecom] ip_echo_url is empty",
                 "set it to a \"what is my IP\" service, e.g. https://api.ipify.org"), None
