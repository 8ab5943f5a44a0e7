"""
The floor for the acceptance benchmark: the least an SMTP server on this machine can do.

A minimal Twisted SMTP sink on loopback that parses commands, offers PIPELINING, reads
DATA to the final dot and answers 250 without storing anything.  xrelay's acceptance
rate is printed as a ratio to this sink's, measured in the same run with the same load
generator, so the figure says how much the relay's own work (policy, spool, fsync) costs.
Optionally (C{durable=True}) it appends each message to one file and fsyncs it before
answering: the rate a naive durable server without group commit reaches.
"""

from __future__ import annotations

import os

from twisted.internet import protocol, threads
from twisted.protocols.basic import LineOnlyReceiver


class SinkProtocol(LineOnlyReceiver):
    MAX_LENGTH = 65536

    def __init__(self, durable_path: str | None) -> None:
        self.in_data = False
        self.durable_path = durable_path
        self.buffer: list[bytes] = []

    def connectionMade(self) -> None:
        self.sendLine(b"220 sink ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                if self.durable_path:
                    data, self.buffer = b"\r\n".join(self.buffer), []
                    threads.deferToThread(self.store, data).addCallback(
                        lambda _: self.sendLine(b"250 2.0.0 stored"))
                else:
                    self.sendLine(b"250 2.0.0 discarded")
            elif self.durable_path:
                self.buffer.append(line)
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME")
        elif verb == b"DATA":
            self.in_data = True
            self.sendLine(b"354 go ahead")
        elif verb == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 2.0.0 ok")

    def store(self, data: bytes) -> None:
        fd = os.open(self.durable_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


class SinkFactory(protocol.Factory):
    def __init__(self, durable_path: str | None = None) -> None:
        self.durable_path = durable_path

    def buildProtocol(self, addr: object) -> SinkProtocol:
        return SinkProtocol(self.durable_path)
