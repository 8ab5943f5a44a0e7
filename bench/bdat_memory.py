"""
A 150 MB message upstream with BDAT: memory stays flat.

The SMTP transport alone (this process) sends one message of C{--megabytes} (8-bit
lines, each starting with a dot) to the sandbox's Exchange, a process of its own
(C{bench/sandbox_server.py}, size limit raised), which offers CHUNKING as Exchange Online
does: the message goes as 1 MiB BDAT chunks read in 64 KiB pieces.  Prints the peak RSS
growth of this process (VmHWM, after a warm-up message) and the time, as one JSON line.

    .venv/bin/python bench/bdat_memory.py [--megabytes 150]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import Processes, measure_in_folder, rss_kib  # noqa: E402


def write_message(path: Path, megabytes: int) -> int:
    """A message of about C{megabytes} MB: 8-bit lines, some starting with a dot."""
    line = (b"." + "é".encode() * 30 + b"x" * 900 + b"\r\n")
    count = megabytes * 1024 * 1024 // len(line)
    with open(path, "wb") as f:
        f.write(b"From: scanner@example.com\r\nTo: alice@example.net\r\n"
                b"Subject: big\r\n\r\n")
        block = line * 1024
        for _ in range(count // 1024):
            f.write(block)
    return path.stat().st_size


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from twisted.internet import reactor, threads

    from xrelay.addresses import SenderPattern
    from xrelay.config import AccountConfig
    from xrelay.envelope import OutboundMessage
    from xrelay.transport.pool import SMTPTransport
    from xrelay.transport.testing import ClientCredentialsTokenSource

    processes = Processes(work)
    try:
        info = await threads.deferToThread(processes.start_sandbox)
        raw = info["account"]
        account = AccountConfig(
            name=raw["name"], provider=raw["provider"], user=raw["user"],
            flow=raw["flow"], senders=(SenderPattern.parse("*"),), tenant=raw["tenant"],
            client_id=raw["client_id"], client_secret_file=raw["client_secret_file"],
            authority=raw["authority"], smtp_host=raw["smtp_host"],
            smtp_port=raw["smtp_port"], ca_file=raw["ca_file"], messages_per_minute=0)
        with open(raw["client_secret_file"]) as f:
            secret = f.read().strip()
        tokens = ClientCredentialsTokenSource(
            f"{raw['authority']}/{raw['tenant']}/oauth2/v2.0/token", raw["client_id"],
            secret, "https://outlook.office365.com/.default", raw["ca_file"], reactor)
        path = work / "big.eml"
        size = write_message(path, args.megabytes)
        transport = SMTPTransport(account, tokens, reactor, helo_name="bench.test")
        # A small message first: the connection, TLS and the token are not the figure.
        small = work / "small.eml"
        small.write_bytes(b"Subject: warm\r\n\r\nup\r\n")
        await transport.deliver(OutboundMessage("warm", "scanner@example.com",
                                                ("alice@example.net",), str(small), 20))
        base = rss_kib(os.getpid(), "VmHWM")
        start = time.perf_counter()
        result = await transport.deliver(OutboundMessage(
            "big", "scanner@example.com", ("alice@example.net",), str(path), size,
            body_8bitmime=True))
        elapsed = time.perf_counter() - start
        peak = rss_kib(os.getpid(), "VmHWM")
        await transport.close()
        return {"megabytes": round(size / 1024 / 1024, 1),
                "outcome": result.recipients[0].outcome.value,
                "reply": str(result.recipients[0].reply)[:80],
                "seconds": round(elapsed, 2),
                "peak_rss_growth_mib": round((peak - base) / 1024, 1),
                "base_rss_mib": round(base / 1024, 1)}
    finally:
        processes.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=150)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    measure_in_folder(measure, args, "xrelay-bdat-")


if __name__ == "__main__":
    main()
