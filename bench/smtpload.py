"""
A Twisted SMTP load generator for the benchmarks.

It opens C{concurrency} connections, sends C{per_connection} messages on each (MAIL,
RCPT and DATA pipelined when the server offers PIPELINING), and checks every reply: a
message counts only when its final reply is 250, so a fast wrong answer is not counted.
It records the latency from the end of DATA (the final C{.}) to the 250, which is what a
durable relay makes a device wait for.

Run alone: C{python bench/smtpload.py --port 2525 --concurrency 10 --messages 100}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import attrs
from twisted.internet import defer, reactor
from twisted.protocols.basic import LineOnlyReceiver


def make_message(size: int, number: int) -> bytes:
    """A message of about C{size} bytes in wire format (CRLF, no leading dots)."""
    header = (f"From: bench@example.com\r\nTo: sink@example.net\r\n"
              f"Subject: bench {number}\r\nMessage-ID: <bench-{number}@example.com>\r\n\r\n")
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(header)) // len(line))
    return header.encode() + body


@attrs.define
class Results:
    started: float = 0.0
    finished: float = 0.0
    ok: int = 0
    failed: int = 0
    latencies: list[float] = attrs.Factory(list)
    errors: dict[str, int] = attrs.Factory(dict)

    def error(self, text: str) -> None:
        self.failed += 1
        key = text[:60]
        self.errors[key] = self.errors.get(key, 0) + 1

    @property
    def rate(self) -> float:
        elapsed = self.finished - self.started
        return self.ok / elapsed if elapsed > 0 else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "messages_ok": self.ok,
            "messages_failed": self.failed,
            "seconds": round(self.finished - self.started, 3),
            "messages_per_second": round(self.rate, 1),
            "latency_p50_ms": round(self.percentile(50) * 1000, 2),
            "latency_p99_ms": round(self.percentile(99) * 1000, 2),
            "latency_mean_ms": round(statistics.fmean(self.latencies) * 1000, 2)
            if self.latencies else None,
            "errors": self.errors,
        }


class LoadClient(LineOnlyReceiver):
    """One connection: EHLO, then C{count} messages, then QUIT."""

    MAX_LENGTH = 65536

    def __init__(self, count: int, message: bytes, results: Results, done: defer.Deferred,
                 sender: str, recipient: str) -> None:
        self.count = count
        self.message = message
        self.results = results
        self.done = done
        self.sender = sender
        self.recipient = recipient
        self.pending: list[str] = []  # what each expected reply answers
        self.reply_lines: list[bytes] = []
        self.sent_at = 0.0
        self.finished = False

    def connectionMade(self) -> None:
        self.pending = ["banner"]

    def lineReceived(self, line: bytes) -> None:
        self.reply_lines.append(line)
        if len(line) >= 4 and line[3:4] == b"-":
            return
        lines, self.reply_lines = self.reply_lines, []
        code = int(lines[0][:3]) if lines[0][:3].isdigit() else 0
        step = self.pending.pop(0) if self.pending else "unexpected"
        self.reply(step, code, lines)

    def reply(self, step: str, code: int, lines: list[bytes]) -> None:
        if step == "banner":
            self.expect(code, 220, step, lines) and self.send_lines(["EHLO bench.example"],
                                                                     ["ehlo"])
        elif step == "ehlo":
            if self.expect(code, 250, step, lines):
                if not any(line[4:].upper().startswith(b"PIPELINING") for line in lines):
                    self.results.error("the server does not offer PIPELINING")
                    self.transport.loseConnection()
                    return
                self.next_message()
        elif step in ("mail", "rcpt"):
            if not self.expect(code, 250, step, lines):
                self.abort_transaction(step)
        elif step == "data":
            if self.expect(code, 354, step, lines):
                self.transport.write(self.message)
                self.transport.write(b".\r\n")
                self.sent_at = time.perf_counter()
                self.pending.append("dot")
            else:
                self.abort_transaction(step)
        elif step == "dot":
            if code == 250:
                self.results.ok += 1
                self.results.latencies.append(time.perf_counter() - self.sent_at)
            else:
                self.results.error(lines[0].decode("latin-1"))
            self.count -= 1
            self.next_message()
        elif step == "rset":
            self.next_message()
        elif step == "ignored":
            pass
        elif step == "quit":
            self.transport.loseConnection()

    def expect(self, code: int, wanted: int, step: str, lines: list[bytes]) -> bool:
        if code == wanted:
            return True
        self.results.error(f"{step}: " + lines[0].decode("latin-1"))
        return False

    def abort_transaction(self, step: str) -> None:
        # The rest of the pipelined group (RCPT/DATA) will fail too; drop their slots
        # and start over with RSET once they have answered.
        self.count -= 1
        self.pending = [s if s not in ("rcpt", "data") else "ignored" for s in self.pending]
        self.send_lines(["RSET"], ["rset"])

    def next_message(self) -> None:
        if self.count <= 0:
            self.send_lines(["QUIT"], ["quit"])
            return
        self.send_lines([f"MAIL FROM:<{self.sender}> SIZE={len(self.message)}",
                         f"RCPT TO:<{self.recipient}>", "DATA"], ["mail", "rcpt", "data"])

    def send_lines(self, lines: list[str], steps: list[str]) -> None:
        self.pending.extend(steps)
        self.transport.write("".join(line + "\r\n" for line in lines).encode())

    def connectionLost(self, reason: Any) -> None:
        if self.count > 0:
            self.results.error(f"connection lost with {self.count} messages unsent")
        if not self.done.called:
            self.done.callback(None)


async def run_load(host: str, port: int, concurrency: int, per_connection: int,
                   size: int, sender: str = "bench@example.com",
                   recipient: str = "sink@example.net") -> Results:
    """Run one load and return its results."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    results = Results()
    message = make_message(size, 0)
    results.started = time.perf_counter()
    waits = []
    for _ in range(concurrency):
        done: defer.Deferred[None] = defer.Deferred()
        client = LoadClient(per_connection, message, results, done, sender, recipient)
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=30)
        try:
            await connectProtocol(endpoint, client)
        except Exception as e:
            results.error(f"connect: {e}")
            continue
        waits.append(done)
    await defer.gatherResults(waits)
    results.finished = time.perf_counter()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--messages", type=int, default=10, help="per connection")
    parser.add_argument("--size", type=int, default=10240)
    args = parser.parse_args()

    async def go() -> None:
        results = await run_load(args.host, args.port, args.concurrency, args.messages,
                                 args.size)
        print(results.summary())

    from twisted.internet.task import react

    react(lambda _reactor: defer.ensureDeferred(go()))


if __name__ == "__main__":
    main()
