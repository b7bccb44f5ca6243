"""`wecomd simulate`: play WeCom against a callback URL (wecomd.wecom.simulate does the protocol)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time

from wecomd import config as configmod
from wecomd.cli import options
from wecomd.wecom.crypto import CryptoError
from wecomd.wecom.samples import KINDS, build
from wecomd.wecom.simulate import BotSimulator, Result, Simulator
from wecomd.wecom.simulate_kf import KfCustomer, SandboxError

NAME, HELP = "simulate", "play WeCom against a callback URL"


def main(args: argparse.Namespace) -> int:
    return asyncio.run(run(args))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `wecomd simulate` options to `parser`."""
    parser.add_argument("url", metavar="URL",
                        help="callback URL, e.g. http://127.0.0.1:8080/callback/helpdesk")
    parser.add_argument("--token", help="app Token (default: $WECOMD_SIM_TOKEN)")
    parser.add_argument("--aes-key", help="app EncodingAESKey, 43 chars (default: $WECOMD_SIM_AES_KEY)")
    parser.add_argument("--corp-id", help="CorpID (default: $WECOMD_SIM_CORP_ID)")
    parser.add_argument("--agent-id", default="1000002", help="AgentID (default: %(default)s)")
    parser.add_argument("--bot", action="store_true",
                        help="play a 智能机器人's side instead: JSON callbacks, receive-id \"\" (no --corp-id), "
                             "and poll the streamed answer until it finishes, printing it as it grows")
    parser.add_argument("--group", metavar="CHATID", help="with --bot: send in this group chat")
    parser.add_argument("--kf", metavar="OPEN_KFID",
                        help="play 微信客服 instead: a WeChat customer's message goes into the sandbox WeCom, then "
                             "the app's kf_msg_or_event callback for this account rings the daemon, which pulls it")
    parser.add_argument("--customer", metavar="EXTERNAL_USERID", default="wmDemoXiaoming",
                        help="with --kf: the customer's external_userid (default: %(default)s)")
    parser.add_argument("--sandbox", metavar="URL",
                        help="with --kf: the sandbox WeCom's base URL (default: [wecom] api_base of -c)")
    parser.add_argument("-c", "--config", metavar="FILE", help="with --kf: the config whose [wecom] api_base "
                                                               "is the sandbox")
    parser.add_argument("--enter", action="store_true",
                        help="with --kf: the customer opens the chat first (enter_session with a welcome_code)")
    parser.add_argument("--poll", type=float, default=0.5, metavar="SECONDS",
                        help="with --bot: seconds between refresh polls (default: %(default)s)")
    checks = parser.add_mutually_exclusive_group()
    checks.add_argument("--verify-only", action="store_true", help="only do the GET URL verification")
    checks.add_argument("--no-verify", action="store_true", help="skip the GET URL verification")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--type", dest="kind", choices=KINDS, default="text", metavar="KIND",
                      help="message or event kind (default: text); one of: " + ", ".join(KINDS))
    what.add_argument("--xml", metavar="FILE", help="send this file's plaintext XML as-is")
    parser.add_argument("--from", dest="from_user", default="zhangsan", help="sender UserID")
    parser.add_argument("--content", default="hello", help="text content (text, link)")
    parser.add_argument("--event-key", default="", help="EventKey for menu and card events")
    parser.add_argument("--repeat", type=_positive_int, default=1,
                        help="send each envelope N times, identical, as WeCom retries do")
    parser.add_argument("--count", type=_positive_int, default=1,
                        help="send N distinct messages (with --xml: the file N times)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default: 10)")


class _UsageError(Exception):
    """A bad option value: reported in one line with exit code 2."""


def _setting(args: argparse.Namespace, attr: str, env: str, flag: str) -> str:
    value = getattr(args, attr, None) or os.environ.get(env, "")
    if not value:
        raise _UsageError("%s is required (or set %s)" % (flag, env))
    return value


def _simulator(args: argparse.Namespace) -> Simulator:
    token = _setting(args, "token", "WECOMD_SIM_TOKEN", "--token")
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", token):
        raise _UsageError("the token must be 1-32 letters or digits (got %d characters)" % len(token))
    aes_key = _setting(args, "aes_key", "WECOMD_SIM_AES_KEY", "--aes-key")
    try:
        if args.bot:
            return BotSimulator(args.url, token=token, aes_key=aes_key, timeout=args.timeout)
        corp_id = _setting(args, "corp_id", "WECOMD_SIM_CORP_ID", "--corp-id")
        return Simulator(args.url, token=token, aes_key=aes_key, corp_id=corp_id,
                         agent_id=args.agent_id, timeout=args.timeout)
    except CryptoError as exc:  # the message names lengths and rules, never the key itself
        raise _UsageError("bad --aes-key: %s" % exc) from None


def _plaintexts(args: argparse.Namespace, sim: Simulator) -> list[tuple[str, str]]:
    if args.xml:
        try:
            with open(args.xml, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise _UsageError("cannot read --xml %s: %s" % (args.xml, exc)) from None
        return [("xml", text)] * args.count
    # Distinct CreateTimes keep N events distinct under any dedup key (§4), ending at now.
    start = int(time.time()) - args.count + 1
    return [(args.kind, build(args.kind, corp_id=sim.corp_id, agent_id=sim.agent_id,
                              from_user=args.from_user, content=args.content,
                              event_key=args.event_key, create_time=start + i))
            for i in range(args.count)]


def _line(label: str, result: Result) -> str:
    if result.error:
        return "%s: %d, error: %s (%.1f ms)" % (label, result.status, result.error, result.elapsed_ms)
    if result.reply is None:
        return "%s: %d, no reply (%.1f ms)" % (label, result.status, result.elapsed_ms)
    # One line per step: drop the newlines between elements, not inside them.
    reply = re.sub(r">\s*\n\s*<", "><", result.reply.strip())
    return "%s: %d, reply: %s (%.1f ms)" % (label, result.status, reply, result.elapsed_ms)


def _sandbox(args: argparse.Namespace) -> str:
    """--kf's sandbox: --sandbox, else the -c config's [wecom] api_base."""
    if args.bot:
        raise _UsageError("--kf and --bot exclude each other")
    if args.sandbox:
        return args.sandbox
    if not args.config:
        raise _UsageError("--kf needs --sandbox URL (or -c with the sandbox as [wecom] api_base)")
    try:
        return options.load(args).wecom.api_base
    except configmod.ConfigError as exc:
        raise _UsageError("cannot read -c %s: %s" % (args.config, exc)) from None


async def _steps(args: argparse.Namespace, sim: Simulator,
                 plaintexts: list[tuple[str, str]], sandbox: str = "") -> list[Result]:
    results: list[Result] = []
    if not args.no_verify:
        result = await sim.verify()
        results.append(result)
        hint = "" if args.verify_only else "; no messages sent (--no-verify skips the GET)"
        print("verify: ok (%.1f ms)" % result.elapsed_ms if result.ok else
              "verify: failed: %s (%.1f ms)%s" % (result.error, result.elapsed_ms, hint), flush=True)
        if not result.ok or args.verify_only:
            return results
    if args.bot:
        return results + await _bot_steps(args, sim)
    if args.kf:
        return results + await _kf_steps(args, sim, sandbox)
    for number, (label, plaintext) in enumerate(plaintexts, 1):
        for attempt, result in enumerate(await sim.send(plaintext, repeat=args.repeat), 1):
            suffix = " try %d/%d" % (attempt, args.repeat) if args.repeat > 1 else ""
            print(_line("POST %s #%d%s" % (label, number, suffix), result), flush=True)
            results.append(result)
    return results


async def _bot_steps(args: argparse.Namespace, sim: BotSimulator) -> list[Result]:
    """Each message, then its stream polled to the end: one line per frame that changed."""
    results: list[Result] = []
    for number in range(1, args.count + 1):
        shown: list = []

        def show(frame: dict) -> None:
            stream = frame.get("stream") or {}
            text = stream.get("content") if frame.get("msgtype") == "stream" else json.dumps(frame, ensure_ascii=False)
            state = "finish" if stream.get("finish") or frame.get("msgtype") != "stream" else "streaming"
            if (text, state) != (shown[-1] if shown else None):
                shown.append((text, state))
                print("  %s %s: %s" % (stream.get("id") or frame.get("msgtype"), state, text), flush=True)

        payload = sim.message(args.content, user=args.from_user, chatid=args.group)
        steps = await sim.converse(payload, interval=args.poll, on_frame=show)
        for attempt, result in enumerate(steps, 1):
            if result.error or attempt == 1:
                label = "POST bot message #%d" % number if attempt == 1 else "POST stream refresh #%d" % attempt
                print(_line(label, result) if result.error else "%s: %d (%.1f ms)" % (label, result.status,
                                                                                       result.elapsed_ms), flush=True)
        print("  %d refresh poll(s)" % (len(steps) - 1), flush=True)
        results += steps
    return results


async def _kf_steps(args: argparse.Namespace, sim: Simulator, sandbox: str) -> list[Result]:
    """The customer enters (--enter) and writes --count messages; each put into the sandbox, then
    its callback sent (--repeat times): one line for each."""
    customer = KfCustomer(sandbox, sim, args.kf, args.customer, timeout=args.timeout)
    results: list[Result] = []
    try:
        actions = [("enter_session", customer.enter)] if args.enter else []
        actions += [("text", lambda repeat: customer.say(args.content, repeat=repeat))] * args.count
        for number, (label, action) in enumerate(actions, 1):
            item, steps = await action(repeat=args.repeat)
            print("kf: %s msgid %s from %s/%s in the sandbox" % (label, item["msgid"], args.kf, args.customer),
                  flush=True)
            for attempt, result in enumerate(steps, 1):
                suffix = " try %d/%d" % (attempt, args.repeat) if args.repeat > 1 else ""
                print(_line("POST kf_msg_or_event #%d%s" % (number, suffix), result), flush=True)
            results += steps
    except SandboxError as exc:
        print("kf: %s" % exc, flush=True)
        results.append(Result(599, b"", None, 0.0, str(exc)))
    finally:
        customer.close()
    return results


async def run(args: argparse.Namespace) -> int:
    """Run `wecomd simulate`: 0 when every step succeeded, 1 on any failure, 2 on bad options."""
    try:
        sandbox = _sandbox(args) if args.kf else ""
        sim = _simulator(args)
        plaintexts = [] if args.verify_only or args.bot or args.kf else _plaintexts(args, sim)
    except _UsageError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        results = await _steps(args, sim, plaintexts, sandbox)
    finally:
        sim.close()
    elapsed = max(time.perf_counter() - started, 1e-9)
    failed = sum(1 for r in results if not r.ok)
    print("sent %d, ok %d, failed %d, %.1f msg/s" % (
        len(results), len(results) - failed, failed, len(results) / elapsed))
    return 0 if failed == 0 and results else 1
