"""The callbacks' floor on this machine: bench/kf_pull.py's daemon, sandbox WeCom and load process,
with nothing to pull.

    python bench/callback_floor.py [--seconds 30] [--rate 20] [--doorbells] [--others-nice 10] [--rounds 3]

`wecomd serve` (SQLite, synchronous=FULL, its pull process) answers app text callbacks at `--rate`
a second, each stored durably before it is answered, for `--seconds`; with `--doorbells`, as many
kf_msg_or_event doorbells as well, each a pull of an account that holds nothing. It prints the
server's own time per callback (its log: request read to answer written), per round and pooled.

It is the reference for bench/kf_pull.py's "p99 ≤ 10 ms while a pull runs": what the same daemon
gives on the same machine when no backlog is pulled at all (docs/kf.md, Speed).
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kf_pull as bench  # noqa: E402  (its server, sandbox, load process and figures)


def one_round(args: argparse.Namespace) -> list:
    """One daemon under the load for args.seconds: the server's own time of each callback, ms."""
    with bench.daemon_and_sandbox("process", args.others_nice) as (_, port, log, _, _):
        stop, doorbells, results = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Queue()
        if args.doorbells:
            doorbells.set()
        load = multiprocessing.Process(target=bench.load_process, daemon=True,
                                       args=(port, args.rate, "no-token", doorbells, stop, results, "lockstep",
                                             0.0, args.others_nice))
        load.start()
        time.sleep(1.0)  # the load's first connections
        started = time.time()
        time.sleep(args.seconds)
        ended = time.time()
        stop.set()
        outcome = results.get(timeout=60)
        load.join(10)
    if outcome["error_count"]:
        print("callback errors: %d, e.g. %s" % (outcome["error_count"], outcome["errors"]))
    during, _, outcomes, apps = bench.server_latencies(log, started, ended)
    print("%.0f s, no backlog: %s; outcomes: %s" % (args.seconds, bench.percentiles(during),
                                                    ", ".join("%s %d" % kv for kv in sorted(outcomes.items()))))
    for app, latencies in sorted(apps.items()):
        print("  /callback/%s: %s" % (app, bench.percentiles(latencies)))
    return during


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="app callbacks a second (and doorbells, if any)")
    parser.add_argument("--doorbells", action="store_true",
                        help="kf doorbells too, each a pull of the empty account")
    parser.add_argument("--others-nice", type=int, default=10,
                        help="niceness of the sandbox WeCom and the load process (as bench/kf_pull.py)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pooled = []
    for number in range(1, args.rounds + 1):
        print("== round %d of %d" % (number, args.rounds), flush=True)
        pooled += one_round(args)
    print("all rounds pooled, the server's own time: %s" % bench.percentiles(pooled))
    return 0


if __name__ == "__main__":
    sys.exit(main())
