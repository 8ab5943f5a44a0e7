"""
The delivery path in pieces, to see which one bounds the end-to-end rate:

 - transport: L{xrelay.transport.pool.SMTPTransport} alone sending 10 KB messages to the
   sandbox's Exchange (a process of its own, rate limit off) with C{max_connections}
   attempts in flight: the upstream conversation (connection reuse, pipelining, TLS);
 - spool: the state changes of one delivery (queued -> active, then removed) on a real
   L{xrelay.spool.Spool}, with the same number in flight: the disk work per message;
 - engine: the L{xrelay.delivery.DeliveryEngine} draining a spool of C{messages} through
   a fresh transport: both of the above plus the engine's own work.

    .venv/bin/python bench/delivery_path.py [--messages 600] [--connections 3] [--delay-ms 20]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import Processes  # noqa: E402
from smtpload import make_message  # noqa: E402


async def in_flight(count: int, parallel: int, one: Any) -> float:
    """Run C{one(i)} for i in range(count), C{parallel} at a time; the rate."""
    from twisted.internet import defer

    numbers = iter(range(count))

    async def lane() -> None:
        for i in numbers:
            await one(i)

    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(lane()) for _ in range(parallel)])
    return count / (time.perf_counter() - start)


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from twisted.internet import reactor, threads

    from xrelay.addresses import SenderPattern
    from xrelay.config import AccountConfig
    from xrelay.envelope import Envelope, OutboundMessage
    from xrelay.spool import ACTIVE, Spool
    from xrelay.transport.pool import SMTPTransport
    from xrelay.transport.testing import ClientCredentialsTokenSource

    results: dict[str, Any] = {"connections": args.connections, "messages": args.messages,
                               "delay_ms_each_way": args.delay_ms}
    processes = Processes(work)
    proxy = None
    try:
        info = await threads.deferToThread(processes.start_sandbox)
        raw = info["account"]
        if args.delay_ms:
            from compare import start_proxy, stop

            proxy, proxy_info = await threads.deferToThread(
                start_proxy, work, raw["smtp_port"], args.delay_ms)
            raw = dict(raw, smtp_port=proxy_info["port"])
        account = AccountConfig(
            name=raw["name"], provider=raw["provider"], user=raw["user"],
            flow=raw["flow"], senders=(SenderPattern.parse("*"),), tenant=raw["tenant"],
            client_id=raw["client_id"], client_secret_file=raw["client_secret_file"],
            authority=raw["authority"], smtp_host=raw["smtp_host"],
            smtp_port=raw["smtp_port"], ca_file=raw["ca_file"],
            max_connections=args.connections, messages_per_minute=0)
        with open(raw["client_secret_file"]) as f:
            secret = f.read().strip()
        tokens = ClientCredentialsTokenSource(
            f"{raw['authority']}/{raw['tenant']}/oauth2/v2.0/token", raw["client_id"],
            secret, "https://outlook.office365.com/.default", raw["ca_file"], reactor)
        transport = SMTPTransport(account, tokens, reactor, helo_name="bench.test")
        path = work / "message.eml"
        data = make_message(10240, 0)
        path.write_bytes(data)
        message = OutboundMessage("bench", "bench@example.com", ("sink@example.net",),
                                  str(path), len(data))
        failures = []

        async def send(i: int) -> None:
            result = await transport.deliver(message)
            if not all(r.reply.code == 250 for r in result.recipients):
                failures.append(str(result.recipients[0].reply))

        await send(-1)  # token and first connection outside the timing
        rate = await in_flight(args.messages, args.connections, send)
        await transport.close()
        results["transport_messages_per_second"] = round(rate, 1)
        results["transport_failures"] = len(failures)

        spool = Spool(str(work / "spool"), reactor=reactor)
        envelope = Envelope(sender="bench@example.com", recipients=("sink@example.net",))
        ids = []
        for _ in range(args.messages):
            incoming = spool.incoming(envelope)
            incoming.write(data)
            ids.append(await incoming.commit())

        async def settle(i: int) -> None:
            entry = spool.get(ids[i])
            entry = await spool.move(entry, ACTIVE)
            await spool.remove(entry)

        rate = await in_flight(args.messages, args.connections, settle)
        results["spool_move_remove_per_second"] = round(rate, 1)

        # The whole delivery stage: the engine draining a full spool through a fresh
        # transport (pacing off, max_connections as above).
        from twisted.internet import task

        from xrelay.config import Config, ServerConfig
        from xrelay.delivery import DeliveryEngine

        for _ in range(args.messages):
            incoming = spool.incoming(envelope)
            incoming.write(data)
            await incoming.commit()
        transport = SMTPTransport(account, tokens, reactor, helo_name="bench.test")
        config = Config(server=ServerConfig(state_dir=str(work)), accounts=(account,))
        engine = DeliveryEngine(config, spool, {account.name: transport}, reactor=reactor)
        start = time.perf_counter()
        engine.startService()
        while engine.totals["delivered"] < args.messages:
            await task.deferLater(reactor, 0.005, lambda: None)
            if engine.totals["deferred"] or engine.totals["failed"]:
                results["engine_problems"] = dict(engine.totals)
                break
        results["engine_messages_per_second"] = round(
            engine.totals["delivered"] / (time.perf_counter() - start), 1)
        await engine.stopService()
        await transport.close()
    finally:
        processes.stop_all()
        if proxy is not None:
            stop(proxy)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--connections", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp", help="on the disk under test")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="one-way delay of a bench/delayproxy.py in front of the sandbox")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xrelay-delivery-bench-", dir=args.dir))

    from twisted.internet import defer
    from twisted.internet.task import react

    def go(_reactor: Any) -> Any:
        return defer.ensureDeferred(measure(args, work)).addCallback(
            lambda r: print(json.dumps(r)))

    try:
        react(go)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
