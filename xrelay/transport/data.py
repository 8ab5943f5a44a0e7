"""
Message data on its way upstream: dot-stuffing (RFC 5321 4.5.2) of a spool file read in
chunks, and the producers that stream it into an SMTP connection: L{DataSender} for
DATA, L{ChunkSender} for BDAT (RFC 3030), which sends the bytes as they are.

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

from typing import IO, Any, Callable

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
class _FileProducer:
    """
    What the two senders share: a pull producer registered with the consumer, whose
    L{done} Deferred fires at the end of the data or fails with L{DataInterrupted}
    when the connection goes away first.
    """

    consumer: IConsumer
    done: Deferred[Any]
    _finished: bool

    def start(self) -> Deferred[Any]:
        """Begin; L{done} fires when the data is out."""
        self.consumer.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        raise NotImplementedError("each sender writes its own kind of data")

    def stopProducing(self) -> None:
        """The connection went away before the end of the data."""
        self._finished = True
        if not self.done.called:
            self.done.errback(DataInterrupted())

    def _stop(self) -> None:
        self._finished = True
        self.consumer.unregisterProducer()


@implementer(IPullProducer)
@attrs.define(eq=False)
class DataSender(_FileProducer):
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



#: Largest BDAT chunk (RFC 3030): a refusal of one chunk stops the rest from being sent,
#: and each chunk is still read from the file in L{CHUNK_SIZE} pieces.
BDAT_CHUNK_SIZE = 1024 * 1024


class DataShrunk(Exception):
    """The spool file ended before the size announced in a BDAT command."""


@implementer(IPullProducer)
@attrs.define(eq=False)
class ChunkSender(_FileProducer):
    """
    Streams a spool file as BDAT chunks (RFC 3030) into a consumer: each chunk is a
    C{BDAT n} command followed by exactly C{n} bytes of the file as they are (no
    dot-stuffing: the length, not the content, ends a chunk), the last one
    C{BDAT n LAST}.  C{prefix} (the pipelined MAIL and RCPT commands) goes in the same
    write as the first chunk, so a small message is one write.

    @ivar size: the file's length, fixed before the first byte goes out.
    @ivar on_chunk: called just before each chunk's command is written, so its reply
        can be awaited in order.
    @ivar proceed: asked before each chunk after the first; C{False} (a refusal came
        back) stops the data there.  L{done} fires with C{True} when the C{LAST} chunk
        went out, C{False} when it stopped early.
    """

    file: IO[bytes]
    size: int
    consumer: IConsumer
    prefix: bytes = b""
    on_chunk: Callable[[], None] = lambda: None
    proceed: Callable[[], bool] = lambda: True
    progress: Callable[[], None] = lambda: None
    chunk_size: int = BDAT_CHUNK_SIZE
    read_size: int = CHUNK_SIZE
    done: "Deferred[bool]" = attrs.field(factory=Deferred)
    chunks: int = 0
    _left: int = attrs.field(init=False)
    _left_in_chunk: int = 0
    _finished: bool = False

    def __attrs_post_init__(self) -> None:
        self._left = self.size

    def resumeProducing(self) -> None:
        if self._finished:
            return
        self.progress()
        head = b""
        if self._left_in_chunk == 0:
            if self.chunks and not self.proceed():
                self._stop()
                self.done.callback(False)
                return
            n = min(self.chunk_size, self._left)
            last = b" LAST" if n == self._left else b""
            self.on_chunk()
            head = (self.prefix if not self.chunks else b"") + b"BDAT %d%s\r\n" % (n, last)
            self.chunks += 1
            self._left_in_chunk = n
        piece = b""
        if self._left_in_chunk:
            wanted = min(self.read_size, self._left_in_chunk)
            try:
                piece = self.file.read(wanted)
            except OSError as e:
                self._stop()
                self.done.errback(e)
                return
            if len(piece) != wanted:
                # A chunk's length was promised: the connection cannot be saved.
                self._stop()
                self.done.errback(DataShrunk())
                return
            self._left_in_chunk -= wanted
            self._left -= wanted
        self.consumer.write(head + piece if head else piece)
        if self._left == 0 and self._left_in_chunk == 0:
            self._stop()
            self.done.callback(True)
