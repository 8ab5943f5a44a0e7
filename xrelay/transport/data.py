"""
Message data on its way upstream: dot-stuffing (RFC 5321 4.5.2) of a spool file read in
chunks, and the producer that streams it into an SMTP connection.

The spool file is wire format (CRLF, not stuffed).  The encoder carries its position in
the line across chunk boundaries, so a line that starts exactly at the start of a chunk
is stuffed like any other (C{twisted.mail}'s client looks at each chunk alone and lets a
crafted message end DATA early and smuggle a second message upstream).  Only CRLF ends a
line, as it does for the upstream; bare CR and LF are passed through untouched, and since
every C{"."} that follows a CRLF is doubled, no content can form C{CRLF . CRLF}.

This module must never hold a whole message in memory, and never end the data except
through L{DotStuffer.finish}.
"""

from __future__ import annotations

from typing import IO, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPullProducer
from zope.interface import implementer

#: Read size: large enough to keep a TLS connection busy, small enough not to matter.
CHUNK_SIZE = 65536


@attrs.define
class DotStuffer:
    """
    Turns unstuffed wire-format data, fed in arbitrary pieces, into stuffed DATA
    content.  The state is the last two bytes seen, which is all it takes to know
    whether the next byte starts a line.
    """

    _tail: bytes = b"\r\n"  # the data begins at the start of a line

    def encode(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        # A "." begins a line when the two bytes before it are CRLF, looking back into
        # the previous chunk where needed.
        joined = self._tail + chunk
        stuffed = joined.replace(b"\r\n.", b"\r\n..")[len(self._tail):]
        self._tail = joined[-2:]
        return stuffed

    def finish(self) -> bytes:
        """The end of data: a CRLF if the content lacked one, then C{.CRLF}."""
        if self._tail == b"\r\n":
            return b".\r\n"
        return b"\r\n.\r\n"


class DataInterrupted(Exception):
    """The connection stopped taking data before the end (lost, aborted)."""


@implementer(IPullProducer)
@attrs.define(eq=False)
class DataSender:
    """
    Streams a spool file into a consumer (the SMTP connection's transport), stuffed,
    ending with C{.CRLF}.  A pull producer: the transport asks for the next chunk when
    its buffer has room, so memory use does not grow with the message.

    @ivar progress: called each time a chunk goes out, for the data timeout.
    """

    file: IO[bytes]
    consumer: IConsumer
    progress: Callable[[], None] = lambda: None
    chunk_size: int = CHUNK_SIZE
    done: Deferred[int] = attrs.field(factory=Deferred)
    _stuffer: DotStuffer = attrs.field(factory=DotStuffer)
    _sent: int = 0
    _finished: bool = False

    def start(self) -> Deferred[int]:
        """Begin; the Deferred fires with the number of bytes written."""
        self.consumer.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        if self._finished:
            return
        self.progress()
        try:
            chunk = self.file.read(self.chunk_size)
        except OSError as e:
            self._stop()
            self.done.errback(e)
            return
        if chunk:
            out = self._stuffer.encode(chunk)
        else:
            out = self._stuffer.finish()
        self._sent += len(out)
        self.consumer.write(out)
        if not chunk:
            self._stop()
            self.done.callback(self._sent)

    def stopProducing(self) -> None:
        """The connection went away before the end of the data."""
        self._finished = True
        if not self.done.called:
            self.done.errback(DataInterrupted())

    def _stop(self) -> None:
        self._finished = True
        self.consumer.unregisterProducer()
