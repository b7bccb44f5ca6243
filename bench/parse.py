"""Protocol-only micro-benchmark: what wecomd's own code adds to one callback's parsing and crypto.

    python bench/parse.py [--rounds 15] [--calls 2000] [--source DIR]

Times, in one process, on bench/load.py's text message (the same plaintext, envelope and app):
- bare ElementTree.fromstring of the envelope body and of the plaintext (the C parser, nothing else);
- the envelope parse (wecomd.wecom.envelopes.parse_xml) and the message parse (messages.parse),
  both with DOCTYPE and entities refused;
- decrypt (Base64, AES-CBC, padding and receive-id checks) and the signature check;
- the passive reply's encryption (encrypt_reply: random prefix, AES-CBC, signature, envelope).

Prints microseconds of CPU per call (the best of --rounds interleaved rounds, so a burst of other
load on the machine hits every case alike) and each figure as a ratio to the bare parse of the same XML
(the envelope to the envelope's, everything else to the plaintext's). Ratios are what to compare
between runs: absolute times move with the machine, the ratios much less.

--source DIR imports wecomd from another checkout (`git archive HEAD | tar -x -C /tmp/head`), for a
before/after pair: run once with it and once without.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
# bench/load.py's app and message, so the figures describe the callbacks that bench measures.
CORP_ID = "ww0123456789abcdef"
TOKEN = "BenchToken0123456789"
AES_KEY = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T0u1V"
TEXT = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[user%d]]></FromUserName>"
        "<CreateTime>%d</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[压测消息 %d]]></Content>"
        "<MsgId>%d</MsgId><AgentID>1000002</AgentID></xml>")
ENVELOPE = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><Encrypt><![CDATA[%s]]></Encrypt>"
            "<AgentID><![CDATA[1000002]]></AgentID></xml>")


def envelope_parser() -> Callable:
    try:
        from wecomd.wecom import envelopes
    except ImportError:  # a checkout from before envelopes.py (--source): the same parse, its old name
        from wecomd.wecom import messages
        return messages.parse_envelope
    return envelopes.parse_xml


def cases() -> List[Tuple[str, str, Callable[[], object]]]:
    """(name, the bare case it is a ratio to, a call of it) for each figure."""
    from xml.etree import ElementTree

    from wecomd.wecom import crypto, messages

    codec = crypto.WecomCrypto(TOKEN, AES_KEY, CORP_ID)
    now = int(time.time())
    plain = (TEXT % (CORP_ID, 7, now, 7, 7_000_000_000_000_000_007)).encode("utf-8")
    encrypted = codec.encrypt(plain)
    body = (ENVELOPE % (CORP_ID, encrypted)).encode("utf-8")
    timestamp, nonce = str(now), "1234567890"
    signature = crypto.signature(TOKEN, timestamp, nonce, encrypted)
    reply = ("<xml><ToUserName><![CDATA[user7]]></ToUserName><FromUserName><![CDATA[%s]]></FromUserName>"
             "<CreateTime>%d</CreateTime><MsgType><![CDATA[text]]></MsgType>"
             "<Content><![CDATA[已收到]]></Content></xml>" % (CORP_ID, now))
    parse_envelope = envelope_parser()
    # Every case is checked once, so a broken one cannot pass as fast.
    assert parse_envelope(body).encrypt == encrypted
    assert codec.decrypt(encrypted) == plain and messages.parse(plain).content == "压测消息 7"
    codec.verify_signature(signature, timestamp, nonce, encrypted)
    return [
        ("bare ElementTree.fromstring (envelope)", "", lambda: ElementTree.fromstring(body)),
        ("bare ElementTree.fromstring (plaintext)", "", lambda: ElementTree.fromstring(plain)),
        ("envelope parse", "bare ElementTree.fromstring (envelope)", lambda: parse_envelope(body)),
        ("message parse", "bare ElementTree.fromstring (plaintext)", lambda: messages.parse(plain)),
        ("decrypt", "bare ElementTree.fromstring (plaintext)", lambda: codec.decrypt(encrypted)),
        ("signature check", "bare ElementTree.fromstring (plaintext)",
         lambda: codec.verify_signature(signature, timestamp, nonce, encrypted)),
        ("encrypt reply", "bare ElementTree.fromstring (plaintext)",
         lambda: codec.encrypt_reply(reply, timestamp, nonce)),
    ]


def measure(table: List[Tuple[str, str, Callable[[], object]]], rounds: int, calls: int) -> Dict[str, float]:
    """Microseconds per call of each case: the best round, rounds interleaved across the cases.

    The thread's CPU time, not the wall clock: time spent descheduled by other processes on a
    busy machine is not counted (what they do to the caches still is).
    """
    best = {name: float("inf") for name, _, _ in table}
    for _ in range(rounds):
        for name, _, call in table:
            start = time.thread_time()
            for _ in range(calls):
                call()
            best[name] = min(best[name], (time.thread_time() - start) / calls * 1e6)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--source", type=Path, help="import wecomd from this checkout instead")
    args = parser.parse_args(argv)
    sys.path.insert(0, str((args.source or ROOT).resolve()))
    import wecomd

    table = cases()
    figures = measure(table, args.rounds, args.calls)
    print("wecomd from %s, Python %s" % (Path(wecomd.__file__).parent.parent, sys.version.split()[0]))
    print("%-42s %8s %8s" % ("", "us/call", "x bare"))
    for name, bare, _ in table:
        ratio = "%8.2f" % (figures[name] / figures[bare]) if bare else "%8s" % "1"
        print("%-42s %8.2f %s" % (name, figures[name], ratio))


if __name__ == "__main__":
    main()
