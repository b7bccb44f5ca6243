"""智能机器人 streams under load: N concurrent answers, each polled by "WeCom" every 500 ms.

    python bench/bot_streams.py [--streams 50] [--interval 0.5] [--words 40] [--delay 0.1]

Starts `wecomd serve` (a separate process, SQLite, synchronous=FULL) with a bot whose `ask` rule
streams an echo model served by this process (each word `--delay` seconds apart, so an answer
takes words x delay), sends N messages at once, then polls every stream every `--interval` seconds
as WeCom does until all are finished. Prints the poll latency (p50/p99/max), and the lag from the
model producing an answer's first word to the first poll that showed it, against the poll interval.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wecomd.automation import echo_model  # noqa: E402
from wecomd.wecom.simulate import BotSimulator  # noqa: E402

TOKEN, AES_KEY = "BenchBotToken0123", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


class TimedEcho(echo_model.EchoModel):
    """The echo model, remembering when each answer's first word went out (by the question)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.first_word: dict = {}
        self.chunks_sent = 0

    def __setattr__(self, name, value):  # chunks_sent is bumped just before each word is sent
        if name == "chunks_sent" and value and hasattr(self, "requests") and self.requests:
            question = self.answer(self.requests[-1])[1]
            self.first_word.setdefault(question, time.monotonic())
        super().__setattr__(name, value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(args) -> None:
    model = TimedEcho(delay=args.delay)
    model_server, model_url = await echo_model.start(model)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "wecomd.conf"
        conf.write_text(
            "[server]\nlisten = 127.0.0.1:%d\ndatabase = bench.db\nlog_level = warning\n\n"
            "[bot:bench]\ntoken = %s\nencoding_aes_key = %s\nstream_deadline = 300\n\n"
            "[llm:echo]\nbase_url = %s\nmodel = echo\n\n[rule:ask]\napp = bench\nwhen = any\nask = echo\n"
            % (port, TOKEN, AES_KEY, model_url), encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-m", "wecomd", "serve", "-c", str(conf)], cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=1)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            sims = [BotSimulator("http://127.0.0.1:%d/callback/bench" % port, token=TOKEN, aes_key=AES_KEY)
                    for _ in range(args.streams)]
            questions = [" ".join("w%d_%d" % (n, i) for i in range(args.words)) for n in range(args.streams)]
            firsts = await asyncio.gather(*(sim.post(sim.message(q, user="u%d" % n))
                                            for n, (sim, q) in enumerate(zip(sims, questions))))
            streams = [json.loads(r.reply)["stream"]["id"] for r in firsts]
            latencies, seen_first, done = [], {}, set()

            async def poller(n: int) -> None:
                # Each stream on its own clock, as WeCom polls each message's stream on its own.
                sim = sims[n]
                await asyncio.sleep(args.interval * n / len(streams))
                while n not in done:
                    t0 = time.monotonic()
                    result = await sim.post({"msgid": "p%d-%f" % (n, t0), "aibotid": sim.agent_id,
                                             "chattype": "single", "from": {"userid": "u%d" % n},
                                             "msgtype": "stream", "stream": {"id": streams[n]}})
                    latencies.append((time.monotonic() - t0) * 1000)
                    frame = json.loads(result.reply)["stream"]
                    if frame["content"] and n not in seen_first:
                        seen_first[n] = time.monotonic()
                    if frame["finish"]:
                        done.add(n)
                        return
                    await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - t0)))

            await asyncio.wait_for(asyncio.gather(*(poller(n) for n in range(len(streams)))), 600)
            for sim in sims:
                sim.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            model_server.stop()
    latencies.sort()
    lags = [seen_first[n] - model.first_word[q] for n, q in enumerate(questions)
            if n in seen_first and q in model.first_word]
    print("%d streams of %d words (%.1f s each), polled every %.1f s: %d polls" %
          (args.streams, args.words, args.words * args.delay, args.interval, len(latencies)))
    print("poll answered in: p50 %.1f ms, p99 %.1f ms, max %.1f ms" %
          (statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1], latencies[-1]))
    if lags:
        lags.sort()
        print("first word produced -> first poll showing it: p50 %.0f ms, max %.0f ms (poll interval %.0f ms)"
              % (statistics.median(lags) * 1000, lags[-1] * 1000, args.interval * 1000))
    print("finished: %d of %d" % (len(done), args.streams))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--words", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.1)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
