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

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from xrelay.envelope import (
    DeliveryResult,
    FailureKind,
    OutboundMessage,
    RecipientResult,
    Reply,
)
from xrelay.transport.classify import failure_of, outcome_of
from xrelay.transport.data import ChunkSender, DataInterrupted, DataShrunk
from xrelay.transport.trouble import ConnectionTrouble, whole_result

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
    protocol = connection.protocol
    mail = connection.mail_from(message)
    rcpts = [f"RCPT TO:<{r}>".encode("utf-8") for r in message.recipients]
    group = [b"RSET", mail, *rcpts] if reset else [mail, *rcpts]
    waits: list[Deferred[Reply]] = [protocol.expect() for _ in group]
    chunk_waits: list[Deferred[Reply]] = []
    refused_seen: list[bool] = []
    size = _length(data)
    connection.clean = False

    def on_chunk() -> None:
        d = protocol.expect()
        d.addCallback(_note_refusal, refused_seen)
        chunk_waits.append(d)

    stalled: list[bool] = []
    sender = ChunkSender(
        data, size, protocol.transport,
        prefix=b"".join(line + b"\r\n" for line in group),
        on_chunk=on_chunk, proceed=lambda: not refused_seen,
        chunk_size=connection.bdat_chunk_size,
    )
    watchdog = connection.clock.callLater(connection.timeouts.data_block,
                                          lambda: _stall(connection, stalled))

    def progress() -> None:
        if watchdog.active():
            watchdog.reset(connection.timeouts.data_block)

    sender.progress = progress
    sending = sender.start()

    def quiet() -> None:
        pending: list[Deferred[Any]] = [*waits, *chunk_waits, sending]
        for w in pending:
            w.addErrback(lambda _: None)

    mail_reply: Reply | None = None
    rcpt_replies: list[Reply] = []
    try:
        if reset:
            try:
                await connection.pipelined_reset(waits)
            except BaseException:
                quiet()
                raise
            waits = waits[1:]
        try:
            mail_reply = await connection.first_reply(waits, stale)
        except BaseException:
            quiet()
            raise
        if mail_reply.code // 100 != 2:
            refused_seen.append(True)
        else:
            for w in waits[1:]:
                rcpt_replies.append(await connection.command_reply(w, "RCPT TO"))
            if not any(reply.code // 100 == 2 for reply in rcpt_replies):
                refused_seen.append(True)
        complete = await _sent(sending, connection, stalled)
        if watchdog.active():
            # The data is out: from here the reply timeouts apply, as after DATA's dot.
            watchdog.cancel()
        chunk_replies = []
        for i, w in enumerate(chunk_waits):
            last = complete and i == len(chunk_waits) - 1
            step = "end of data" if last else "message data"
            seconds = connection.timeouts.data_end if last else connection.timeouts.command
            chunk_replies.append(await connection.wait(w, step, seconds))
    except ConnectionTrouble:
        quiet()
        if stalled:  # we gave up on the upstream, whatever was awaited when it happened
            raise _stalled(connection) from None
        if mail_reply is not None and mail_reply.code // 100 != 2:
            return whole_result(message, mail_reply)  # the refusal is the news, not the close
        if len(rcpt_replies) == len(message.recipients) and not any(
                reply.code // 100 == 2 for reply in rcpt_replies):
            return _refused(message, rcpt_replies)
        raise
    finally:
        if watchdog.active():
            watchdog.cancel()
    if any(r.code == 421 for r in chunk_replies):
        connection.broken = True
    if mail_reply.code // 100 != 2:
        return whole_result(message, mail_reply)
    accepted = [r for r, reply in zip(message.recipients, rcpt_replies, strict=True)
                if reply.code // 100 == 2]
    if not accepted:
        return _refused(message, rcpt_replies)
    refused = _refused(message, rcpt_replies).recipients
    bad = next((r for r in chunk_replies if r.code // 100 != 2), None)
    if bad is not None:
        return whole_result(message, bad, accepted, refused)
    if not complete:  # pragma: no cover - the data stops only after a refusal
        raise ConnectionTrouble("message data", "the data stopped before its end")
    final = chunk_replies[-1]
    connection.messages_sent += 1
    connection.clean = final.code == 250
    return whole_result(message, final, accepted, refused)


def _refused(message: OutboundMessage, rcpt_replies: list[Reply]) -> DeliveryResult:
    """The recipients refused at RCPT (the failure kind of the first refusal)."""
    refused = tuple(
        RecipientResult(r, outcome_of(reply), reply)
        for r, reply in zip(message.recipients, rcpt_replies, strict=True) if reply.code // 100 != 2)
    return DeliveryResult(refused, failure_of(refused[0].reply) if refused
                          else FailureKind.NONE)


def _note_refusal(reply: Reply, seen: list[bool]) -> Reply:
    if reply.code // 100 != 2:
        seen.append(True)
    return reply


def _length(data: Any) -> int:
    import os

    return os.fstat(data.fileno()).st_size


def _stalled(connection: UpstreamConnection) -> Exception:
    return ConnectionTrouble(
        "message data", f"timed out after {connection.timeouts.data_block:g}s without progress")


def _stall(connection: UpstreamConnection, stalled: list[bool]) -> None:
    stalled.append(True)
    connection.broken = True
    connection.protocol.abort()


async def _sent(sending: "Deferred[bool]", connection: UpstreamConnection,
                stalled: list[bool]) -> bool:
    """Wait for the chunks to be written; whether the LAST one went out."""
    try:
        complete: bool = await sending
    except (DataInterrupted, DataShrunk, OSError) as e:
        connection.broken = True
        connection.protocol.abort()
        if stalled:
            raise _stalled(connection) from None
        if isinstance(e, DataInterrupted):
            raise ConnectionTrouble("message data", "the connection was lost",
                                    dropped=True) from None
        why = "the spooled message is shorter than its size" if isinstance(
            e, DataShrunk) else f"reading the spooled message failed ({e.strerror})"
        raise ConnectionTrouble("message data", why) from None
    return complete
