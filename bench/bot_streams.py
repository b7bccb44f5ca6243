"""智能机器人 streams under load: N concurrent answers, each polled by "WeCom" every 500 ms.

    python bench/bot_streams.py [--streams 50] [--interval 0.5] [--words 40] [--delay 0.1]

Starts `wecomd serve` (a separate process, SQLite, synchronous=FULL) with a bot whose `ask` rule
streams an echo model served by this process (each word `--delay` seconds apart, so an answer
takes words x delay); a third process plays WeCom: N users ask within the first interval (or all
at once with --burst), and every stream is polled every `--interval` seconds as WeCom does until
all are finished. Prints the poll latency (p50/p99/max), and the lag from the
model producing an answer's first word to the first poll that showed it, against the poll interval.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wecom_side(port: int, args, questions: list) -> dict:
    """WeCom: each user asks at their own moment within the first interval (--burst: all at once),
    then every message's stream is polled on its own clock until it finishes."""
    sims = [BotSimulator("http://127.0.0.1:%d/callback/bench" % port, token=TOKEN, aes_key=AES_KEY)
            for _ in range(args.streams)]
    streams: dict = {}
    latencies, done, posts, polls = [], set(), [], []

    async def poller(n: int) -> None:
        sim = sims[n]
        await asyncio.sleep(0 if args.burst else args.interval * n / args.streams)
        t0 = time.monotonic()
        first = await sim.post(sim.message(questions[n], user="u%d" % n))
        posts.append((time.monotonic() - t0) * 1000)
        streams[n] = json.loads(first.reply)["stream"]["id"]
        await asyncio.sleep(args.interval)
        while n not in done:
            t0 = time.monotonic()
            result = await sim.post({"msgid": "p%d-%f" % (n, t0), "aibotid": sim.agent_id,
                                     "chattype": "single", "from": {"userid": "u%d" % n},
                                     "msgtype": "stream", "stream": {"id": streams[n]}})
            t1 = time.monotonic()
            latencies.append((t1 - t0) * 1000)
            frame = json.loads(result.reply)["stream"]
            polls.append((n, t0, t1, bool(frame["content"])))
            if frame["finish"]:
                done.add(n)
                return
            await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - t0)))

    await asyncio.wait_for(asyncio.gather(*(poller(n) for n in range(args.streams))), 600)
    for sim in sims:
        sim.close()
    return {"latencies": latencies, "posts": posts, "polls": polls, "done": len(done)}


def wecom_process(port: int, args, questions: list, results) -> None:
    """WeCom's side in a process of its own, apart from the model server: each process's event loop
    then times only its own work (CLOCK_MONOTONIC is the same clock in both)."""
    results.put(asyncio.run(wecom_side(port, args, questions)))


async def run(args) -> None:
    model = echo_model.EchoModel(delay=args.delay)
    model_server, model_url = await echo_model.start(model)
    port = free_port()
    questions = [" ".join("w%d_%d" % (n, i) for i in range(args.words)) for n in range(args.streams)]
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
            context = multiprocessing.get_context("spawn")
            results = context.Queue()
            wecom = context.Process(target=wecom_process, args=(port, args, questions, results))
            wecom.start()
            loop = asyncio.get_running_loop()
            measured = await loop.run_in_executor(None, results.get)  # the model keeps serving meanwhile
            await loop.run_in_executor(None, wecom.join)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            model_server.stop()
    report(args, model, questions, measured)


def report(args, model, questions: list, measured: dict) -> None:
    latencies, posts, polls = sorted(measured["latencies"]), sorted(measured["posts"]), measured["polls"]
    first_word = model.first_word_at
    seen_first: dict = {}
    for n, _, t1, shown in sorted(polls, key=lambda poll: poll[2]):
        if shown:
            seen_first.setdefault(n, t1)
    lags = sorted(seen_first[n] - first_word[q] for n, q in enumerate(questions) if n in seen_first and q in first_word)
    print("%d streams of %d words (%.1f s each), asked %s, polled every %.1f s: %d polls" %
          (args.streams, args.words, args.words * args.delay, "all at once" if args.burst else "within the first interval",
           args.interval, len(latencies)))
    print("first answer frame (message callback) in: p50 %.1f ms, max %.1f ms" % (statistics.median(posts), posts[-1]))
    print("poll answered in: p50 %.1f ms, p99 %.1f ms, max %.1f ms" %
          (statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1], latencies[-1]))
    if lags:
        print("first word produced -> first poll showing it: p50 %.0f ms, max %.0f ms (poll interval %.0f ms)"
              % (statistics.median(lags) * 1000, lags[-1] * 1000, args.interval * 1000))
    # How long after the model produced a first word a poll could still miss it: the latest start,
    # relative to that word, of a poll that showed nothing.
    blind = [t0 - first_word[questions[n]] for n, t0, _, shown in polls
             if not shown and questions[n] in first_word and t0 > first_word[questions[n]]]
    print("polls started after the first word that still missed it: %d (latest %.0f ms after it)"
          % (len(blind), max(blind, default=0) * 1000))
    print("finished: %d of %d" % (measured["done"], args.streams))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--words", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--burst", action="store_true", help="all users ask in the same instant")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
