"""
A TCP proxy that puts a fixed one-way delay on each direction, to stand for the path
to Exchange Online or Gmail on loopback, and counts round trips.

    python bench/delayproxy.py --target-port 4587 --delay-ms 20 INFO.json

A round trip is counted each time data from the server reaches the proxy after data
from the client (a "turn" of the conversation), whatever TLS records or TCP segments
it comes in: a pipelined group and its replies are one, a command answered before the
next is sent is one each.  The delay is applied per direction in order (one queue and
one timer each way), and the connection to the target is opened one delay late, as a
SYN would travel.  Writes C{{"port": ..., "stats_port": ...}} to INFO.json once it
listens; a connection to C{stats_port} gets the counters as one JSON line.

With C{DELAYPROXY_TRACE=PATH} in the environment, every chunk's arrival is written to
C{PATH.<pid>} (connection, C or S, time, bytes; line-buffered, the proxy is killed at
the end): C{bench/turns.py} turns that into the time each side took per turn.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

TRACE = (open(os.environ["DELAYPROXY_TRACE"] + f".{os.getpid()}", "w", buffering=1)
         if os.environ.get("DELAYPROXY_TRACE") else None)
STATS = {"connections": 0, "round_trips": 0, "client_bytes": 0, "server_bytes": 0}


class Delayed:
    """One direction: bytes delivered C{delay} seconds after they arrived, in order."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.sink: Any = None
        self.timer: Any = None
        self.closing = False

    def put(self, data: bytes) -> None:
        self.queue.append((reactor.seconds() + self.delay, data))
        self._arm()

    def close(self) -> None:
        self.closing = True
        self._arm()

    def _arm(self) -> None:
        if self.timer is None or not self.timer.active():
            due = self.queue[0][0] if self.queue else reactor.seconds() + self.delay
            self.timer = reactor.callLater(max(0.0, due - reactor.seconds()), self._pump)

    def _pump(self) -> None:
        if self.sink is None:
            self.timer = reactor.callLater(0.001, self._pump)
            return
        now = reactor.seconds()
        while self.queue and self.queue[0][0] <= now + 1e-4:
            self.sink.write(self.queue.popleft()[1])
        if self.queue:
            self._arm()
        elif self.closing:
            self.sink.loseConnection()


class ServerSide(protocol.Protocol):
    def __init__(self, pair: "ClientSide") -> None:
        self.pair = pair

    def dataReceived(self, data: bytes) -> None:
        STATS["server_bytes"] += len(data)
        if TRACE is not None:
            TRACE.write(f"{id(self.pair)} S {reactor.seconds():.6f} {len(data)}\n")
        if self.pair.last == "client":
            STATS["round_trips"] += 1
        self.pair.last = "server"
        self.pair.to_client.put(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.pair.to_client.close()


class ClientSide(protocol.Protocol):
    def __init__(self, host: str, port: int, delay: float) -> None:
        self.host, self.port, self.delay = host, port, delay
        self.to_server = Delayed(delay)
        self.to_client = Delayed(delay)
        self.last = "none"
        self.server: ServerSide | None = None

    def connectionMade(self) -> None:
        STATS["connections"] += 1
        self.to_client.sink = self.transport
        reactor.callLater(self.delay, self._connect)

    def _connect(self) -> None:
        d = connectProtocol(TCP4ClientEndpoint(reactor, self.host, self.port),
                            ServerSide(self))

        def connected(server: ServerSide) -> None:
            self.server = server
            self.to_server.sink = server.transport

        d.addCallbacks(connected, lambda _: self.transport.loseConnection())

    def dataReceived(self, data: bytes) -> None:
        STATS["client_bytes"] += len(data)
        if TRACE is not None:
            TRACE.write(f"{id(self)} C {reactor.seconds():.6f} {len(data)}\n")
        self.last = "client"
        self.to_server.put(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.to_server.close()


class Stats(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.write(json.dumps(STATS).encode() + b"\n")
        self.transport.loseConnection()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=20.0, help="each way")
    parser.add_argument("info")
    args = parser.parse_args()
    delay = args.delay_ms / 1000
    factory = protocol.Factory()
    factory.protocol = lambda: ClientSide(args.target_host, args.target_port, delay)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    stats = protocol.Factory.forProtocol(Stats)
    stats.noisy = False
    stats_port = reactor.listenTCP(0, stats, interface="127.0.0.1")
    tmp = args.info + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"port": port.getHost().port, "stats_port": stats_port.getHost().port}, f)
    os.rename(tmp, args.info)
    reactor.run()


if __name__ == "__main__":
    main()
