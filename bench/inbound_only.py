"""
Acceptance without delivery: the inbound listener and the real spool in this process
(delivery is a recorder that sends nothing), the load generator in a child process.
Tells what acceptance costs by itself, apart from the delivery work the full relay does
at the same time on the same cores.

    .venv/bin/python bench/inbound_only.py [--concurrency 100] [--messages 10] [--history]

Prints one JSON object: the load generator's summary plus the spool's group-commit
counters (batches, messages per batch).  With C{--history} the message trace records
every accepted message (its SQLite writer thread in this process, as in the relay);
C{bench/history_ab.py} compares the two.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

LOAD = """
import json, sys
sys.path.insert(0, {here!r})
from smtpload import run_load
from twisted.internet import defer
from twisted.internet.task import react
async def go():
    r = await run_load("127.0.0.1", {port}, {concurrency}, {messages}, 10240)
    print(json.dumps(r.summary()))
react(lambda _r: defer.ensureDeferred(go()))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--messages", type=int, default=10, help="per connection")
    parser.add_argument("--dir", default="/var/tmp", help="on the disk under test")
    parser.add_argument("--history", action="store_true",
                        help="record every message in the message trace (SQLite)")
    args = parser.parse_args()

    from twisted.internet import defer, reactor, threads
    from twisted.internet.task import react

    from xrelay.addresses import SenderPattern
    from xrelay.config import AccountConfig, Config, ListenerConfig, ServerConfig
    from xrelay.inbound import InboundService
    from xrelay.inbound.testing import RecordingDelivery
    from xrelay.spool import Spool

    directory = tempfile.mkdtemp(prefix="xrelay-inbound-", dir=args.dir)
    config = Config(
        server=ServerConfig(listen=(ListenerConfig("tcp:0:interface=127.0.0.1"),),
                            hostname="bench.test", state_dir=directory,
                            max_connections=2000, max_connections_per_client=2000),
        accounts=(AccountConfig(name="bench", provider="microsoft",
                                user="relay@example.com", flow="client_credentials",
                                senders=(SenderPattern.parse("*"),),
                                tenant="example.onmicrosoft.com", client_id="bench",
                                client_secret_file="unused-secret.txt"),))
    spool = Spool(os.path.join(directory, "spool"), reactor=reactor)
    history = None
    if args.history:
        from xrelay.history import SqliteHistory, history_path

        history = SqliteHistory(history_path(directory), days=30, reactor=reactor)
    service = InboundService(config, spool, RecordingDelivery(), reactor=reactor,
                             history=history)

    import resource

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # this process: not the load
        return usage.ru_utime + usage.ru_stime

    async def run() -> None:
        if history is not None:
            history.startService()
        service.startService()
        port = (await service.when_listening())[0].getHost().port
        cpu_before = cpu()
        code = LOAD.format(here=str(HERE), port=port, concurrency=args.concurrency,
                           messages=args.messages)
        done = await threads.deferToThread(
            subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True)
        cpu_used = cpu() - cpu_before
        summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        summary["server_cpu_ms_per_message"] = round(
            cpu_used * 1000 / max(summary["messages_ok"], 1), 3)
        summary.update(concurrency=args.concurrency, per_connection=args.messages,
                       commit_batches=spool.commit_batches,
                       messages_per_batch=round(spool.committed_messages
                                                / max(spool.commit_batches, 1), 1))
        await service.stopService()
        if history is not None:
            await history.stopService()
            summary["history_records"] = history.written
            summary["history_writer_cpu_us_per_message"] = round(
                history.cpu_seconds * 1e6 / max(history.written, 1), 1)
        summary["history"] = history is not None
        print(json.dumps(summary))

    try:
        react(lambda _r: defer.ensureDeferred(run()))
    finally:
        subprocess.run(["rm", "-rf", directory], check=False)


if __name__ == "__main__":
    main()
