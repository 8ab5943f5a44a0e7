"""
A large scan through Microsoft Graph with upload sessions: memory stays flat.

The Graph transport alone (this process) sends one message of about C{--megabytes}
(a text part and one PDF attachment, base64 in 76-character lines, as scanners send
it) to the sandbox's Graph, a process of its own (this script with C{--serve}, the app
granted C{Mail.ReadWrite}): a draft without the attachment, the attachment through an
upload session in ranges of at most 4 MB decoded from the spooled file as they go, then
send.  Prints the peak RSS growth of this process (VmHWM, after a warm-up message that
took the same path) and the time, as one JSON line.

    .venv/bin/python bench/graph_upload_memory.py [--megabytes 150]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import measure_in_folder, rss_kib, wait_for  # noqa: E402


def write_scan(path: Path, megabytes: float) -> int:
    """A message of about C{megabytes} MB whose bulk is one base64 PDF attachment."""
    raw_block = os.urandom(57 * 1024)  # 57 bytes a line: 76 base64 characters
    encoded = base64.encodebytes(raw_block).replace(b"\n", b"\r\n")
    blocks = max(1, int(megabytes * 1024 * 1024 // len(encoded)))
    with open(path, "wb") as f:
        f.write(b"From: scanner@example.com\r\nTo: alice@example.net\r\nSubject: scan\r\n"
                b"Message-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
                b"--b\r\nContent-Type: text/plain\r\n\r\nScan attached.\r\n"
                b"--b\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\n"
                b"Content-Disposition: attachment; filename=\"scan.pdf\"\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n")
        for _ in range(blocks):
            f.write(encoded)
        f.write(b"--b--\r\n")
    return path.stat().st_size


def serve(directory: str, info: str) -> None:
    """The sandbox, its app allowed drafts and upload sessions (Mail.ReadWrite)."""
    from twisted.internet import reactor
    from twisted.python.filepath import FilePath

    from xrelay.sandbox import Sandbox
    from xrelay.sandbox.identity import GRAPH_RESOURCE

    os.makedirs(directory, exist_ok=True)
    sandbox = Sandbox(FilePath(directory), reactor=reactor)
    sandbox.default_app.roles[GRAPH_RESOURCE] = ("Mail.Send", "Mail.ReadWrite")
    sandbox.start()
    with open(info + ".tmp", "w") as f:
        json.dump({"account": sandbox.default_account()}, f)
    os.rename(info + ".tmp", info)
    reactor.run()


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from twisted.internet import reactor

    from xrelay.addresses import SenderPattern
    from xrelay.config import AccountConfig
    from xrelay.envelope import OutboundMessage
    from xrelay.transport.graph import GraphTransport
    from xrelay.transport.testing import ClientCredentialsTokenSource

    info_path = work / "sandbox.json"
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(work / "sandbox"),
                              str(info_path)], stdout=subprocess.DEVNULL,
                             stderr=open(work / "sandbox.log", "wb"))
    try:
        wait_for(info_path.exists, 60, "the sandbox")
        raw = json.loads(info_path.read_text())["account"]
        account = AccountConfig(
            name=raw["name"], provider=raw["provider"], user=raw["user"],
            flow=raw["flow"], senders=(SenderPattern.parse("*"),), tenant=raw["tenant"],
            client_id=raw["client_id"], client_secret_file=raw["client_secret_file"],
            authority=raw["authority"], ca_file=raw["ca_file"], graph_url=raw["graph_url"],
            transport="graph", graph_large_messages="upload_session")
        with open(raw["client_secret_file"]) as f:
            secret = f.read().strip()
        tokens = ClientCredentialsTokenSource(
            f"{raw['authority']}/{raw['tenant']}/oauth2/v2.0/token", raw["client_id"],
            secret, "https://graph.microsoft.com/.default", raw["ca_file"], reactor)
        transport = GraphTransport(account, tokens, reactor, timeout=600)
        # A 5 MB scan first: connection, TLS, token and the upload path are not the figure.
        small = work / "small.eml"
        small_size = write_scan(small, 5)
        await transport.deliver(OutboundMessage("warm", "relay@sandbox.example",
                                                ("alice@example.net",), str(small),
                                                small_size))
        path = work / "big.eml"
        size = write_scan(path, args.megabytes)
        base = rss_kib(os.getpid(), "VmHWM")
        start = time.perf_counter()
        result = await transport.deliver(OutboundMessage(
            "big", "relay@sandbox.example", ("alice@example.net",), str(path), size))
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
        child.terminate()
        child.wait(30)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=150)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    measure_in_folder(measure, args, "xrelay-graph-")


if __name__ == "__main__":
    main()
