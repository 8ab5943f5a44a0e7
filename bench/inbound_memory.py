"""
Memory benchmark for the inbound listener: a 100 MB message through a real socket into
the real spool, and the growth of this process's peak RSS while it passes.

Run:  .venv/bin/python bench/inbound_memory.py [--megabytes 100]

The client runs in a child process (its memory is not ours) and streams lines as it
makes them.  The listener must stream DATA to the spool line by line, so the peak RSS
of the relay process must grow by less than 20 MB whatever the message size.  Prints
the numbers and exits 1 when the bound is exceeded.  Not a timed test: the duration is
printed for information only.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time

from twisted.internet import reactor, threads

from xrelay.addresses import SenderPattern
from xrelay.config import AccountConfig, Config, ListenerConfig, ServerConfig
from xrelay.inbound import InboundService
from xrelay.inbound.testing import RecordingDelivery
from xrelay.spool import Spool

LIMIT_MB = 20

CLIENT = textwrap.dedent("""
    import socket, sys
    port, megabytes = int(sys.argv[1]), int(sys.argv[2])
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    def reply():
        while True:
            line = f.readline()
            if line[3:4] != b"-":
                return line
    reply()
    for command in (b"EHLO bench.test", b"MAIL FROM:<bench@example.com>",
                    b"RCPT TO:<someone@example.org>", b"DATA"):
        s.sendall(command + b"\\r\\n")
        reply()
    s.sendall(b"Subject: 100 MB\\r\\n\\r\\n")
    line = (b"0123456789" * 7 + b"abcdef") + b"\\r\\n"   # 78 bytes, like base64 text
    chunk = line * 840                                     # about 64 KB
    total = megabytes * 1024 * 1024
    sent = 0
    while sent < total:
        s.sendall(chunk)
        sent += len(chunk)
    s.sendall(b".\\r\\n")
    sys.stdout.write(reply().decode())
    s.sendall(b"QUIT\\r\\n")
    reply()
""")


def peak_rss_kb() -> int:
    """This process's peak resident set size (VmHWM), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="xrelay-bench-")
    spool = Spool(os.path.join(directory, "spool"), reactor=reactor)
    config = Config(server=ServerConfig(
        listen=(ListenerConfig("tcp:0:interface=127.0.0.1"),), hostname="bench.test",
        max_message_size=(args.megabytes + 10) * 1024 * 1024, state_dir=directory),
        accounts=(AccountConfig(name="bench", provider="microsoft", user="relay@example.com",
                                flow="client_credentials",
                                senders=(SenderPattern.parse("*@example.com"),),
                                tenant="example.onmicrosoft.com", client_id="bench",
                                client_secret_file="unused-secret.txt"),))
    service = InboundService(config, spool, RecordingDelivery(), reactor=reactor)
    outcome: dict[str, object] = {}

    def run() -> None:
        service.startService()

        def send(port: int, megabytes: int) -> object:
            return threads.deferToThread(
                subprocess.run, [sys.executable, "-c", CLIENT, str(port), str(megabytes)],
                capture_output=True, text=True, check=False)

        def listening(ports: list) -> object:
            port = ports[0].getHost().port
            # Warm up with a 1 MB message, so that first-use allocations (thread pool,
            # spool commit) are in the baseline rather than counted as growth.
            d = send(port, 1)

            def measure(warm_up: subprocess.CompletedProcess) -> object:
                outcome["warm_up"] = warm_up.stdout.strip() or warm_up.stderr.strip()
                outcome["before_kb"] = peak_rss_kb()
                outcome["started"] = time.monotonic()
                return send(port, args.megabytes)

            return d.addCallback(measure)

        def finished(result: subprocess.CompletedProcess) -> None:
            outcome["seconds"] = time.monotonic() - float(outcome["started"])  # type: ignore[arg-type]
            outcome["after_kb"] = peak_rss_kb()
            outcome["reply"] = result.stdout.strip() or result.stderr.strip()

        d = service.when_listening().addCallback(listening).addCallback(finished)
        d.addErrback(lambda f: outcome.setdefault("error", f.getTraceback()))
        d.addBoth(lambda _: service.stopService()).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    if "error" in outcome:
        print(outcome["error"])
        return 2
    growth_mb = (int(outcome["after_kb"]) - int(outcome["before_kb"])) / 1024  # type: ignore[call-overload]
    sizes = [os.path.getsize(os.path.join(spool.directory, "data", n))
             for n in os.listdir(os.path.join(spool.directory, "data"))]
    print(f"warm-up 1 MB: {outcome['warm_up']}")
    print(f"message: {args.megabytes} MB; reply: {outcome['reply']}")
    print(f"spooled bytes: {sizes}")
    print(f"peak RSS before: {int(outcome['before_kb']) / 1024:.1f} MB, after: "  # type: ignore[call-overload]
          f"{int(outcome['after_kb']) / 1024:.1f} MB, growth: {growth_mb:.1f} MB "  # type: ignore[call-overload]
          f"(limit {LIMIT_MB} MB)")
    print(f"duration (information only): {outcome['seconds']:.1f} s")
    ok = growth_mb < LIMIT_MB and str(outcome["reply"]).startswith("250 ")
    print("OK" if ok else "FAILED")
    subprocess.run(["rm", "-rf", directory], check=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
