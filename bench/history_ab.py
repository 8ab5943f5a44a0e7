"""
A/B: does the message trace lower the acceptance rate?  Runs C{bench/inbound_only.py}
(the inbound listener and the real spool in one process, the load generator in another)
alternately without and with the history, so that both see the same machine, and prints
the median rate of each and their ratio.

    .venv/bin/python -u bench/history_ab.py [--rounds 3] [--concurrency 100] [--messages 10]

The history is written by its own thread; only putting a record on a queue happens on
the reactor thread after each commit.  Prints one line per run, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def run(history: bool, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(HERE / "inbound_only.py"), "--concurrency",
               str(args.concurrency), "--messages", str(args.messages), "--dir", args.dir]
    if history:
        command.append("--history")
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--messages", type=int, default=10, help="per connection")
    parser.add_argument("--dir", default="/var/tmp", help="on the disk under test")
    args = parser.parse_args()
    rates: dict[bool, list[float]] = {False: [], True: []}
    p50: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    writer: list[float] = []
    pairs: list[float] = []
    load_before = round(os.getloadavg()[0], 2)
    for round_number in range(args.rounds):
        order = (False, True) if round_number % 2 == 0 else (True, False)
        pair: dict[bool, float] = {}
        for history in order:
            result = run(history, args)
            if result["messages_failed"]:
                raise SystemExit(f"bench: {result['messages_failed']} messages failed: "
                                 f"{result['errors']}")
            if history and result.get("history_records") != result["messages_ok"]:
                raise SystemExit(f"bench: history wrote {result.get('history_records')} "
                                 f"records for {result['messages_ok']} messages")
            rates[history].append(result["messages_per_second"])
            pair[history] = result["messages_per_second"]
            cpu[history].append(result["server_cpu_ms_per_message"])
            if history:
                writer.append(result["history_writer_cpu_us_per_message"])
            p50[history].append(result["latency_p50_ms"])
            print(f"round {round_number + 1} history {'on ' if history else 'off'}: "
                  f"{result['messages_per_second']} msg/s, p50 {result['latency_p50_ms']} ms, "
                  f"server CPU {result['server_cpu_ms_per_message']} ms/message", flush=True)
        pairs.append(pair[True] / pair[False])
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(json.dumps({
        "concurrency": args.concurrency, "per_connection": args.messages,
        "rounds": args.rounds, "load_average_before": load_before,
        "load_average_after": round(os.getloadavg()[0], 2),
        "history_off_msg_per_s": rates[False], "history_on_msg_per_s": rates[True],
        "median_off": off, "median_on": on, "ratio_on_to_off": round(on / off, 3),
        "p50_ms_off": statistics.median(p50[False]), "p50_ms_on": statistics.median(p50[True]),
        "round_ratios_on_to_off": [round(r, 3) for r in pairs],
        "median_round_ratio": round(statistics.median(pairs), 3),
        "server_cpu_ms_per_message_off": statistics.median(cpu[False]),
        "server_cpu_ms_per_message_on": statistics.median(cpu[True]),
        "reactor_thread_us_per_message": reactor_thread_cost(),
        "writer_thread_cpu_us_per_message": statistics.median(writer),
    }))


def reactor_thread_cost(count: int = 20000) -> float:
    """
    What recording one accepted message costs the reactor thread: building the record
    and queueing it (the writer thread is not started, so nothing else competes).
    """
    import time

    sys.path.insert(0, str(HERE.parent))
    from xrelay.history import AcceptedMessage, SqliteHistory
    from xrelay.inbound.headers import HeaderBlock

    class Transaction:
        sender = "scanner@example.com"
        recipients = ["it@example.net"]
        received = 10240
        headers = HeaderBlock()

        class account:
            name = "main"

    class Protocol:
        client_address = "192.0.2.1"
        user = None

    Transaction.headers.feed(b"Subject: scan\r\nMessage-ID: <1@x>\r\n\r\n")
    history = SqliteHistory(os.devnull, days=30, reactor=object())
    start = time.perf_counter()
    for i in range(count):
        history.received(AcceptedMessage.of(f"e{i}", Transaction, Protocol))
    return round((time.perf_counter() - start) / count * 1e6, 2)


if __name__ == "__main__":
    main()
