"""`wecomd demo`: the daemon, a sandbox WeCom API and a simulated WeCom, with nothing to set up."""
from __future__ import annotations

import argparse
import asyncio
import configparser
import logging
import secrets
import shutil
import string
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Optional, Sequence

from wecomd import checks, config, logs, passwords, paths

from wecomd.automation import echo_model
from wecomd.wecom import sandbox, sandbox_kf
from wecomd.wecom.simulate import Simulator
from wecomd.wecom.simulate_kf import KfCustomer, SandboxError
from wecomd.wecom.samples import build

logger = logging.getLogger(__name__)

APP = "demo"
LISTEN = "127.0.0.1:8080"
# (seconds after start, kind, sender, text or event key, sample media kind): a realistic first minute.
SCRIPT = (
    (0.5, "text", "zhangsan", "你好，VPN 连不上了，能帮忙看下吗？", None),
    (1.5, "image", "zhangsan", "", "image"),
    (2.5, "text", "zhangsan", "你好", None),
    (3.0, "enter_agent", "lisi", "", None),
    (4.0, "click", "lisi", "RUN_BACKUP", None),
    (6.0, "text", "wangwu", "打印机又卡纸了 🖨️", None),
    (8.0, "location", "wangwu", "", None),
    (10.0, "voice", "zhangsan", "", "voice"),
    (13.0, "text", "lisi", "<b>测试</b> 这条消息里有 HTML <script>alert(1)</script>，应显示为文本", None),
    (16.0, "subscribe", "zhaoliu", "", None),
    (18.0, "text", "zhaoliu", "Hi, is the wiki down? I get a 502.", None),
    (22.0, "file", "wangwu", "", "file"),
    (24.0, "text", "zhaoliu", "帮助", None),
    (26.0, "link", "lisi", "季度报告草稿", None),
    (28.0, "text", "zhaoliu", "请假 2 天 家里有事", None),
    (30.0, "template_card_event", "zhangsan", "approve", None),
    (35.0, "change_contact", "zhaoliu", "", None),
    (40.0, "text", "wangwu", "好的，谢谢！", None),
    (45.0, "scancode_waitmsg", "zhangsan", "", None),
    (50.0, "text", "lisi", "报销单已提交，请审批", None),
    (55.0, "open_approval_change", "lisi", "", None),
)
NAME, HELP = "demo", "a live dashboard with simulated traffic; nothing to set up"
DEMO_ACCOUNTS = (("operator", "operator"), ("viewer", "viewer"))  # beside the config's admin
BOT, BOT_LLM = "assistant", "echo"  # the demo's 智能机器人 and the model its ask rule streams
KF_APP = "kefu"  # the demo's 微信客服 app, serving the sandbox's account wkDEMO (售后客服)
# (seconds after start, customer, what they do: "enter", or a text; servicer: a human agent's reply)
KF_SCRIPT = (
    (2.0, "wmDemoXiaoming", "enter", None),
    (3.5, "wmDemoXiaoming", "你好，我上周买的耳机左边没有声音了", None),
    (7.0, "wmDemoLili", "请问退货地址是哪里？", None),
    (12.0, "wmDemoLili", "您好，退货地址已通过短信发给您，请查收", "zhangsan"),
    (20.0, "wmDemoAwei", "enter", None),
    (21.5, "wmDemoAwei", "价格能便宜点吗", None),
)
TRICKLE = ("还在吗？", "收到，马上处理", "会议室的投影仪坏了", "能把上周的日志发我一份吗？", "👍")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", help="host:port for the dashboard (default: %s, or the kept config's)" % LISTEN)
    p.add_argument("--dir", help="keep the config and database here (default: a temporary directory, removed at "
                   "exit); a wecomd.conf already there is kept and used, never overwritten")
    p.add_argument("--password", help="admin password (default: a generated one, printed; with a kept config, "
                   "the one it already has)")
    p.add_argument("--no-traffic", action="store_true", help="do not send simulated messages")


def main(args: argparse.Namespace) -> int:
    logs.setup("info")
    try:
        return asyncio.run(_main(args))
    except checks.StartupError as exc:  # e.g. port 8080 busy: one line, no traceback
        print(logs.error_line("wecomd demo: %s" % exc), file=sys.stderr)
        return 1


async def _main(args: argparse.Namespace) -> int:
    from wecomd import app  # the daemon (its handlers, store, workers) loads only when the demo runs

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="wecomd-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fake = sandbox.FakeWecom()
    media = sandbox.seed_samples(fake)
    sandbox.seed_directory(fake)
    sandbox_kf.demo_accounts(fake.kf)  # 微信客服: the account wkDEMO with customers who have nicknames
    # A tiny OpenAI-compatible model that echoes word by word: the demo bot's `ask` rule streams it.
    model_server, model_url = await echo_model.start(echo_model.EchoModel(delay=0.08, think=True))
    path = workdir / "wecomd.conf"
    kept = path.exists()
    if kept:  # an earlier run's config, perhaps edited: used as it is, with this run's sandbox
        password = args.password
        cfg, api_server = await _reuse(path, fake, args.listen, password, model_url)
    else:
        password = args.password or secrets.token_urlsafe(9)
        api_server, api_base = await sandbox.start(fake)
        values = {**_values(args.listen or LISTEN, api_base, password), **sample_rules(api_base),
                  **bot_sections(model_url)}
        values.update(kf_sections(values["app:" + APP]["corp_id"]))
        path.write_text(config.render(values), encoding="utf-8")
        cfg = config.load(path, {})
    accounts = _accounts(cfg)
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    serving = asyncio.ensure_future(app.serve(cfg, ready=ready.set_result))
    traffic: Optional[asyncio.Task] = None
    kf_traffic: Optional[asyncio.Task] = None
    try:
        port = await _first(ready, serving)
        url = "http://%s:%d" % (cfg.server.listen_host, port)
        _banner(url, cfg.admin.username, password, path, kept, accounts)
        if BOT in cfg.bots:
            # Its token and key stay in the config file (mode 600), out of the terminal's scrollback.
            print("  智能机器人: %s/callback/%s streams answers from a built-in echo model; try\n"
                  "    wecomd simulate --bot %s/callback/%s --token T --aes-key K --content 你好\n"
                  "  with T and K from [bot:%s] in %s\n" % (url, BOT, url, BOT, BOT, path), flush=True)
        if KF_APP in cfg.apps and cfg.apps[KF_APP].kf:
            print("  微信客服: the account %s (售后客服) through [app:%s]; a customer writes with\n"
                  "    wecomd simulate %s/callback/%s --token T --aes-key K --corp-id C --kf %s -c %s --content 你好\n"
                  "  with T, K and C from [app:%s]\n" % (sandbox_kf.DEMO_ACCOUNT, KF_APP, url, KF_APP,
                                                       sandbox_kf.DEMO_ACCOUNT, path, KF_APP), flush=True)
        if not args.no_traffic and APP not in cfg.apps:
            logger.warning("demo: the kept config has no [app:%s]: no simulated traffic", APP)
        elif not args.no_traffic:
            traffic = asyncio.ensure_future(_traffic(url + "/callback/" + APP, cfg.apps[APP], media))
        if not args.no_traffic and KF_APP in cfg.apps and cfg.apps[KF_APP].kf:
            kf_traffic = asyncio.ensure_future(_kf_traffic(url + "/callback/" + KF_APP, cfg.apps[KF_APP],
                                                           cfg.wecom.api_base))
        await serving
    finally:
        for task in (traffic, kf_traffic):
            if task:
                task.cancel()
        api_server.stop()
        model_server.stop()
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


async def _first(ready: asyncio.Future, serving: asyncio.Future) -> Any:
    await asyncio.wait({ready, serving}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        serving.result()  # re-raises why the daemon could not start
        raise RuntimeError("wecomd stopped before it was ready")
    return ready.result()


async def _reuse(path: Path, fake: sandbox.FakeWecom, listen: Optional[str],
                 password: Optional[str], model_url: str = "") -> tuple:
    """(config, sandbox server) for a config kept from an earlier run: its file is never written.

    The sandbox is started on the port the config names, when it is a loopback one that is free;
    otherwise this run's sandbox URL, `--listen` and `--password` come in as environment overrides.
    """
    old = config.load(path, {}).wecom.api_base
    parts = urllib.parse.urlsplit(old)
    api_server = None
    if parts.scheme == "http" and parts.hostname == "127.0.0.1" and parts.port:
        try:
            api_server, api_base = await sandbox.start(fake, port=parts.port)
        except OSError:  # taken by something else now
            pass
    if api_server is None:
        api_server, api_base = await sandbox.start(fake)
    environ = {}
    if api_base != old:
        environ = {config.env_name("wecom", "api_base"): api_base,
                   config.env_name("wecom", "ip_echo_url"): api_base + sandbox.IP_ECHO}
        for name, rule in config.load(path, {}).rules.items():  # webhooks to the old sandbox
            if rule.get("webhook", "").startswith(old + "/"):
                environ[config.env_name("rule:" + name, "webhook")] = api_base + rule["webhook"][len(old):]
    if BOT_LLM in config.load(path, {}).llms and model_url:  # this run's echo model
        environ[config.env_name("llm:" + BOT_LLM, "base_url")] = model_url
    if listen:
        environ[config.env_name("server", "listen")] = listen
    if password:
        environ[config.env_name("admin", "password_hash")] = passwords.hash_password(password)
    return config.load(path, environ), api_server


def _values(listen: str, api_base: str, password: str) -> dict:
    alnum = string.ascii_letters + string.digits
    return {
        "server": {"listen": listen, "database": "wecomd.db", "media_dir": "media"},
        "admin": {"username": "admin", "password_hash": passwords.hash_password(password),
                  "cookie_secret": secrets.token_urlsafe(32)},
        "wecom": {"api_base": api_base, "ip_echo_url": api_base + sandbox.IP_ECHO},
        "app:" + APP: {
            "corp_id": "ww" + secrets.token_hex(8), "agent_id": "1000002",
            "token": "".join(secrets.choice(alnum) for _ in range(32)),
            "encoding_aes_key": "".join(secrets.choice(alnum) for _ in range(43)),
            "secret": secrets.token_urlsafe(24), "reply": "已收到，我们会尽快回复",
        },
    }


def bot_sections(model_url: str) -> dict:
    """A 智能机器人 whose messages an `ask` rule answers from the echo model, streamed."""
    alnum = string.ascii_letters + string.digits
    return {
        "bot:" + BOT: {"token": "".join(secrets.choice(alnum) for _ in range(32)),
                       "encoding_aes_key": "".join(secrets.choice(alnum) for _ in range(43)),
                       "stream_deadline": "30"},
        "llm:" + BOT_LLM: {"base_url": model_url, "model": "echo", "system": "你是 wecomd 演示用的助手。"},
        "rule:bot-ask": {"app": BOT, "when": "any", "ask": BOT_LLM, "history": "6", "priority": "-5"},
    }


def kf_sections(corp_id: str) -> dict:
    """A 微信客服 app serving the sandbox's account wkDEMO, with a welcome and a price rule."""
    alnum = string.ascii_letters + string.digits
    return {
        "app:" + KF_APP: {
            "corp_id": corp_id, "agent_id": "1000003",
            "token": "".join(secrets.choice(alnum) for _ in range(32)),
            "encoding_aes_key": "".join(secrets.choice(alnum) for _ in range(43)),
            "secret": secrets.token_urlsafe(24), "reply": "", "kf": "yes", "kf_accounts": sandbox_kf.DEMO_ACCOUNT,
        },
        "rule:kf-welcome": {"app": KF_APP, "when": "event enter_session",
                            "reply": "您好，欢迎咨询售后客服！请描述您遇到的问题。"},
        "rule:kf-price": {"app": KF_APP, "when": "text contains 价格", "reply": "价格以商城页面为准，活动期间满 200 减 20。"},
    }


def sample_rules(api_base: str) -> dict:
    """The example rules of the shipped wecomd.conf, plus its commented-out webhook rule made live
    against the sandbox, so the demo shows every kind of rule at work."""
    sample = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=True)
    sample.read(paths.sample_config(), encoding="utf-8")
    sections = {name: dict(sample[name]) for name in sample.sections() if name == "rules" or name.startswith("rule:")}
    sections["rule:forward"] = {"priority": "-1", "when": "any", "webhook": api_base + sandbox.WEBHOOK,
                                "webhook_secret": secrets.token_urlsafe(24), "continue": "yes"}
    return sections


def _accounts(cfg: config.Config) -> list:
    """An operator and a viewer account beside the config's admin, made once per database with
    generated passwords; [(name, role, password or None when made by an earlier run)]."""
    from wecomd.store import OperatorExists, Store

    store = Store(cfg.server.database)
    made = []
    try:
        store.migrate()
        for name, role in DEMO_ACCOUNTS:
            password = secrets.token_urlsafe(9)
            try:
                store.operators.add(name, role, passwords.hash_password(password))
            except OperatorExists:
                password = None
            made.append((name, role, password))
    finally:
        store.close()
    return made


def _banner(url: str, user: str, password: Optional[str], path: Path, kept: bool = False,
            accounts: Sequence = ()) -> None:
    login = "%s / %s" % (user, password) if password else "%s, with the password of the run that wrote it" % user
    others = "".join("\n  or as      %s / %s (%s)" % (name, secret or "the password an earlier run printed", role)
                     for name, role, secret in accounts)
    print("\n  wecomd demo is running: open %s\n  sign in as  %s (admin)%s\n  config: %s%s (a sandbox WeCom API "
          "stands in for qyapi.weixin.qq.com)\n  Ctrl-C stops it.\n"
          % (url, login, others, path, ", kept from an earlier run" if kept else ""), flush=True)


async def _traffic(url: str, wecom_app: config.AppConfig, media: dict) -> None:
    """Play WeCom: the scripted first minute, then a message now and then."""
    sim = Simulator(url, token=wecom_app.token, aes_key=wecom_app.encoding_aes_key,
                    corp_id=wecom_app.corp_id, agent_id=wecom_app.agent_id)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for at, kind, user, text, sample in SCRIPT:
            await asyncio.sleep(max(0.0, started + at - loop.time()))
            await _send(sim, wecom_app, kind, user, text, media.get(sample) if sample else None)
        while True:
            await asyncio.sleep(20 + secrets.randbelow(25))
            user = secrets.choice(("zhangsan", "lisi", "wangwu", "zhaoliu"))
            await _send(sim, wecom_app, "text", user, secrets.choice(TRICKLE), None)
    finally:
        sim.close()


async def _kf_traffic(url: str, kf_app: config.AppConfig, sandbox_url: str) -> None:
    """Play WeChat customers of the account wkDEMO (and a human agent answering from the WeCom
    client): each action goes into the sandbox, then the kf_msg_or_event callback rings the daemon."""
    sim = Simulator(url, token=kf_app.token, aes_key=kf_app.encoding_aes_key, corp_id=kf_app.corp_id,
                    agent_id=kf_app.agent_id)
    customers = {external: KfCustomer(sandbox_url, sim, sandbox_kf.DEMO_ACCOUNT, external)
                 for external, _, _ in sandbox_kf.DEMO_CUSTOMERS}
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for at, external, what, servicer in KF_SCRIPT:
            await asyncio.sleep(max(0.0, started + at - loop.time()))
            customer = customers[external]
            try:
                if what == "enter":
                    _, results = await customer.enter("demo_qrcode")
                elif servicer:
                    _, results = await customer.say_as_servicer(servicer, what)
                else:
                    _, results = await customer.say(what)
            except SandboxError as exc:
                logger.warning("demo: 微信客服 %s: %s", external, exc)
                continue
            for result in results:
                if result.error:
                    logger.warning("demo: 微信客服 callback for %s failed: %s", external, result.error)
    finally:
        for customer in customers.values():
            customer.close()
        sim.close()


async def _send(sim: Simulator, wecom_app: config.AppConfig, kind: str, user: str, text: str,
                media_id: Optional[str]) -> None:
    xml = build(kind, corp_id=wecom_app.corp_id, agent_id=wecom_app.agent_id, from_user=user,
                content=text or "hello", event_key=text if kind not in ("text", "link") else "", media_id=media_id)
    for result in await sim.send(xml):
        if result.error:
            logger.warning("demo: simulated %s from %s failed: %s", kind, user, result.error)
