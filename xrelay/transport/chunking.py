"""
One mail transaction with BDAT (RFC 3030 CHUNKING) over a pipelining connection: the
RSET (only when the last transaction did not end cleanly), MAIL, every RCPT and the
first C{BDAT n [LAST]} with its data go out in one write, so a message costs one round
trip, where DATA costs two (the 354 must come back before the data may follow).

The data goes as it is in the spool (no dot-stuffing: a chunk ends by its length, so
no content can end it early), in chunks of at most
L{xrelay.transport.data.BDAT_CHUNK_SIZE}, each read from the file in bounded pieces.
Every reply is read, in order.  When MAIL or every RCPT was refused, the first chunk is
already on the wire: the server reads and refuses it (RFC 3030 section 2), nothing is
delivered, and no further chunk is sent.  A refused chunk likewise stops the rest.

This module must never count a message as delivered on anything but a 2xx reply to
its C{BDAT ... LAST}, and never send a chunk after a refusal it has seen.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred

from xrelay.envelope import (
    DeliveryResult,
    OutboundMessage,
    Reply,
)
from xrelay.transport.data import ChunkSender, DataInterrupted, DataShrunk
from xrelay.transport.trouble import ConnectionTrouble, EnvelopeReplies

__all__ = ["bdat_transaction"]


class UpstreamConnection(Protocol):
    """
    What a BDAT transaction uses of its connection
    (L{xrelay.transport.smtp.UpstreamConnection}, which calls it): typed here so that
    this module does not import the one that imports it.
    """

    protocol: Any
    clock: Any
    timeouts: Any
    clean: bool
    broken: bool
    messages_sent: int
    bdat_chunk_size: int

    def mail_from(self, message: OutboundMessage) -> bytes: ...

    async def pipelined_reset(self, waits: list[Deferred[Reply]]) -> None: ...

    async def first_reply(self, waits: list[Deferred[Reply]], stale: bool) -> Reply: ...

    async def command_reply(self, d: Deferred[Reply], step: str) -> Reply: ...

    async def wait(self, d: Deferred[Any], step: str, seconds: float) -> Any: ...


async def bdat_transaction(connection: UpstreamConnection, message: OutboundMessage,
                           data: Any, reset: bool, stale: bool) -> DeliveryResult:
    """
    Send C{message} (its spool file open as C{data}) with BDAT; the result has a reply
    for every recipient.

    @param reset: begin with RSET (pipelined, in the same write).
    @param stale: a reused connection without RSET: a drop before the first reply
        raises L{xrelay.transport.smtp.StaleConnection}.
    @raise ConnectionTrouble: the connection failed before the outcome was known.
    """
    return await BdatTransaction(connection, message, data, reset, stale).run()


@attrs.define
class BdatTransaction:
    """
    One BDAT transaction's state: what was sent, which replies are awaited, whether a
    refusal was seen (no further chunk goes out then) or the upstream stalled.
    """

    connection: UpstreamConnection
    message: OutboundMessage
    data: Any
    reset: bool
    stale: bool
    waits: list[Deferred[Reply]] = attrs.field(factory=list)
    chunk_waits: list[Deferred[Reply]] = attrs.field(factory=list)
    #: A refusal came back (MAIL, every RCPT, or a chunk): send no further chunk.
    refused_seen: bool = False
    #: The upstream took no data for C{data_block} seconds: the connection was aborted.
    stalled: bool = False
    envelope: EnvelopeReplies | None = None
    rcpt_replies: list[Reply] = attrs.field(factory=list)
    sending: Deferred[bool] | None = None
    watchdog: Any = None

    async def run(self) -> DeliveryResult:
        self._start()
        try:
            envelope = await self._envelope_phase()
            complete = await self._sent()
            if self.watchdog.active():
                # The data is out: from here the reply timeouts apply, as after DATA's dot.
                self.watchdog.cancel()
            chunk_replies = await self._chunk_replies(complete)
        except ConnectionTrouble as trouble:
            self._quiet()
            return self._after_trouble(trouble)
        finally:
            if self.watchdog.active():
                self.watchdog.cancel()
        return self._result(envelope, chunk_replies, complete)

    def _start(self) -> None:
        """One write: (RSET,) MAIL, every RCPT and the first chunk with its data."""
        connection = self.connection
        protocol = connection.protocol
        rcpts = [f"RCPT TO:<{r}>".encode("utf-8") for r in self.message.recipients]
        mail = connection.mail_from(self.message)
        group = [b"RSET", mail, *rcpts] if self.reset else [mail, *rcpts]
        self.waits = [protocol.expect() for _ in group]
        connection.clean = False
        sender = ChunkSender(
            self.data, _length(self.data), protocol.transport,
            prefix=b"".join(line + b"\r\n" for line in group),
            on_chunk=self._on_chunk, proceed=lambda: not self.refused_seen,
            chunk_size=connection.bdat_chunk_size,
        )
        self.watchdog = connection.clock.callLater(connection.timeouts.data_block,
                                                   self._stall)
        sender.progress = self._progress
        self.sending = sender.start()

    def _on_chunk(self) -> None:
        d = self.connection.protocol.expect()
        d.addCallback(self._note_refusal)
        self.chunk_waits.append(d)

    def _note_refusal(self, reply: Reply) -> Reply:
        if reply.code // 100 != 2:
            self.refused_seen = True
        return reply

    def _progress(self) -> None:
        if self.watchdog.active():
            self.watchdog.reset(self.connection.timeouts.data_block)

    def _stall(self) -> None:
        self.stalled = True
        self.connection.broken = True
        self.connection.protocol.abort()

    def _quiet(self) -> None:
        """Nothing awaited any more may fail unhandled."""
        pending: list[Deferred[Any]] = [*self.waits, *self.chunk_waits]
        if self.sending is not None:
            pending.append(self.sending)
        for w in pending:
            w.addErrback(lambda _: None)

    async def _envelope_phase(self) -> EnvelopeReplies:
        """The replies to (RSET,) MAIL and every RCPT, in order."""
        connection = self.connection
        waits = self.waits
        try:
            if self.reset:
                await connection.pipelined_reset(waits)
                waits = waits[1:]
            mail = await connection.first_reply(waits, self.stale)
        except BaseException:
            self._quiet()
            raise
        self.envelope = EnvelopeReplies(self.message, mail)
        if mail.code // 100 != 2:
            self.refused_seen = True
            return self.envelope
        for w in waits[1:]:
            self.rcpt_replies.append(await connection.command_reply(w, "RCPT TO"))
            self.envelope = EnvelopeReplies(self.message, mail, tuple(self.rcpt_replies))
        if not self.envelope.accepted:
            self.refused_seen = True
        return self.envelope

    async def _chunk_replies(self, complete: bool) -> list[Reply]:
        connection = self.connection
        replies = []
        for i, w in enumerate(self.chunk_waits):
            last = complete and i == len(self.chunk_waits) - 1
            step = "end of data" if last else "message data"
            seconds = connection.timeouts.data_end if last else connection.timeouts.command
            replies.append(await connection.wait(w, step, seconds))
        return replies

    def _after_trouble(self, trouble: ConnectionTrouble) -> DeliveryResult:
        """
        The connection failed: a refusal already seen is the news (not the close);
        otherwise the trouble goes up to the caller.
        """
        if self.stalled:  # we gave up on the upstream, whatever was awaited then
            raise self._stalled() from None
        if self.envelope is not None:
            refusal = self.envelope.refusal()
            if refusal is not None:
                return refusal
        raise trouble

    def _stalled(self) -> Exception:
        return ConnectionTrouble("message data", "timed out after "
                                 f"{self.connection.timeouts.data_block:g}s without progress")

    async def _sent(self) -> bool:
        """Wait for the chunks to be written; whether the LAST one went out."""
        assert self.sending is not None
        connection = self.connection
        try:
            complete: bool = await self.sending
        except (DataInterrupted, DataShrunk, OSError) as e:
            connection.broken = True
            connection.protocol.abort()
            if self.stalled:
                raise self._stalled() from None
            if isinstance(e, DataInterrupted):
                raise ConnectionTrouble("message data", "the connection was lost",
                                        dropped=True) from None
            why = "the spooled message is shorter than its size" if isinstance(
                e, DataShrunk) else f"reading the spooled message failed ({e.strerror})"
            raise ConnectionTrouble("message data", why) from None
        return complete

    def _result(self, envelope: EnvelopeReplies, chunk_replies: list[Reply],
                complete: bool) -> DeliveryResult:
        connection = self.connection
        if any(r.code == 421 for r in chunk_replies):
            connection.broken = True
        refusal = envelope.refusal()
        if refusal is not None:
            return refusal
        bad = next((r for r in chunk_replies if r.code // 100 != 2), None)
        if bad is not None:
            return envelope.result(bad)
        if not complete:  # pragma: no cover - the data stops only after a refusal
            raise ConnectionTrouble("message data", "the data stopped before its end")
        final = chunk_replies[-1]
        connection.messages_sent += 1
        connection.clean = final.code == 250
        return envelope.result(final)


def _length(data: Any) -> int:
    return os.fstat(data.fileno()).st_size
