"""
Memory per idle inbound connection, counted two ways in the listening process itself:
Python allocations (tracemalloc) and resident memory after a garbage collection, both
taken before and after C{count} clients connect, get the banner, send EHLO and then
sit idle.  The clients live in a child process, so their sockets are not counted.

    .venv/bin/python bench/idle_connections.py [--connections 1000]

Prints one JSON object.  The kernel's socket buffers are not in either figure (they
are the kernel's, and small for an idle socket); C{bench/run.py} also reports the
relay process's RSS growth for the same load from outside.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
from typing import Any

CLIENTS = textwrap.dedent("""
    import socket, sys, time
    port, count = int(sys.argv[1]), int(sys.argv[2])
    held = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        held.append(s)
    for s in held:
        s.recv(4096)                       # the banner
        s.sendall(b"EHLO idle.example\\r\\n")
    for s in held:
        data = b""
        while not data.endswith(b"250 HELP\\r\\n"):
            data += s.recv(4096)
    print("ready", flush=True)
    sys.stdin.readline()                   # hold them until told
""")


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise KeyError("VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()

    from twisted.internet import reactor, threads

    from xrelay.addresses import SenderPattern
    from xrelay.config import AccountConfig, Config, ListenerConfig, ServerConfig
    from xrelay.inbound import InboundService
    from xrelay.inbound.testing import RecordingDelivery
    from xrelay.spool import Spool

    directory = tempfile.mkdtemp(prefix="xrelay-idle-", dir="/var/tmp")
    config = Config(server=ServerConfig(
        listen=(ListenerConfig("tcp:0:interface=127.0.0.1"),), hostname="bench.test",
        state_dir=directory, max_connections=args.connections + 10,
        max_connections_per_client=args.connections + 10),
        accounts=(AccountConfig(name="bench", provider="microsoft", user="relay@example.com",
                                flow="client_credentials",
                                senders=(SenderPattern.parse("*@example.com"),),
                                tenant="example.onmicrosoft.com", client_id="bench",
                                client_secret_file="unused-secret.txt"),))
    spool = Spool(os.path.join(directory, "spool"), reactor=reactor)
    service = InboundService(config, spool, RecordingDelivery(), reactor=reactor)
    result: dict[str, Any] = {"connections": args.connections}

    def measure() -> tuple[int, int]:
        gc.collect()
        return tracemalloc.get_traced_memory()[0], rss_kib()

    async def run() -> None:
        service.startService()
        ports = await service.when_listening()
        port = ports[0].getHost().port
        # Warm up: one connection through its EHLO, so first-use allocations are in
        # the baseline.
        await threads.deferToThread(_hold, port, 1, None)
        # Resident memory first, without tracemalloc's own bookkeeping in it.
        gc.collect()
        rss_before = rss_kib()
        clients: list[subprocess.Popen[str]] = []
        await threads.deferToThread(_hold, port, args.connections, clients)
        live = len(service.live)
        gc.collect()
        rss_after = rss_kib()
        await threads.deferToThread(_release, clients)
        # Then Python's allocations for a second crowd (the first one's freed memory is
        # reused, which is why RSS is measured on the first).
        tracemalloc.start()
        python_before = measure()[0]
        await threads.deferToThread(_hold, port, args.connections, clients)
        python_after = measure()[0]
        tracemalloc.stop()
        await threads.deferToThread(_release, clients)
        result.update(
            live_connections=live,
            python_bytes_per_connection=round((python_after - python_before)
                                              / args.connections),
            rss_kib_per_connection=round((rss_after - rss_before) / args.connections, 2),
        )
        await service.stopService()
        print(json.dumps(result))

    def _hold(port: int, count: int, keep: list | None) -> None:
        child = subprocess.Popen([sys.executable, "-c", CLIENTS, str(port), str(count)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        import time

        time.sleep(0.5)  # the last EHLO replies are written; the server is idle
        if keep is None:
            child.stdin.close()  # type: ignore[union-attr]
            child.wait()
        else:
            keep.append(child)

    def _release(clients: list) -> None:
        while clients:
            child = clients.pop()
            child.stdin.close()
            child.wait()
        import time

        time.sleep(0.5)  # the server sees the connections close

    from twisted.internet import defer
    from twisted.internet.task import react

    react(lambda _r: defer.ensureDeferred(run()))


if __name__ == "__main__":
    main()
