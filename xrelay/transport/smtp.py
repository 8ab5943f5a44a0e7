"""
The upstream ESMTP client: one connection to Exchange Online or Gmail, made secure
(STARTTLS or implicit TLS, certificate and host name verified), authenticated with SASL
XOAUTH2, then carrying any number of mail transactions.

The wire protocol (L{ClientProtocol}: lines, replies, TLS) is separate from the
conversation (L{UpstreamConnection}: which command when, what a reply means), and every
wait has a timeout that names the step it was waiting for.  Written for xrelay rather than
on C{twisted.mail.smtp.ESMTPClient}, whose data sender mis-stuffs lines at chunk
boundaries and whose debug mode logs the AUTH line.

This module must never write the AUTH line (which carries the token) anywhere but to the
TLS connection: not to a log, an exception, a reply text or a transcript.  It decides
nothing about retries or connection reuse; that is L{xrelay.transport.pool}'s job.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Callable

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from xrelay.envelope import FailureKind, Outcome, OutboundMessage, Reply
from xrelay.envelope import DeliveryResult
from xrelay.transport.data import BDAT_CHUNK_SIZE, DataInterrupted, DataSender
from xrelay.transport.chunking import bdat_transaction
from xrelay.transport.trouble import (ConnectionTrouble, EnvelopeReplies, StaleConnection,
                                      UpstreamRefused, describe_loss)
from xrelay.streams import IStreamTransport

log = Logger()


@attrs.frozen
class Timeouts:
    """
    Seconds to wait at each step; the reply waits follow RFC 5321 4.5.3.2, shortened
    where a healthy Exchange Online or Gmail answers in well under a second.
    """

    connect: float = 30
    tls: float = 30
    greeting: float = 120
    command: float = 300
    #: The wait for the 354 to DATA (RFC 5321 4.5.3.2.2, "DATA Initiation": 2 minutes).
    data_start: float = 120
    #: Longest time the upstream may take to accept the next chunk of data.
    data_block: float = 180
    data_end: float = 600
    quit: float = 10


class _Dropped(Exception):
    """The connection was lost while a reply was awaited."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def parse_capabilities(ehlo: Reply) -> dict[str, str]:
    """EHLO keywords (upper case) to their parameters: C{{"SIZE": "157286400"}}."""
    capabilities = {}
    for line in ehlo.text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            capabilities[keyword.upper()] = params.strip()
    return capabilities


def xoauth2_response(user: str, token: str) -> bytes:
    """The initial client response of SASL XOAUTH2, base64-encoded."""
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())


@implementer(IHandshakeListener)
class ClientProtocol(LineOnlyReceiver):
    """
    SMTP replies in, command lines out.  Each command (or L{expect} for the greeting
    and the end of data) queues a Deferred that the next complete reply fires, in
    order, which is all PIPELINING needs.
    """

    delimiter = b"\r\n"
    #: RFC 5321 allows 512 octets per reply line; be generous, not unbounded.
    MAX_LENGTH = 8192
    transport: IStreamTransport  # connected over TCP for its whole life (xrelay.streams)

    def __init__(self) -> None:
        self._waiting: list[Deferred[Reply]] = []
        self._lines: list[str] = []
        self.handshake: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.connected_ = False
        self.on_lost: Callable[[], None] = lambda: None

    def connectionMade(self) -> None:
        self.connected_ = True

    def handshakeCompleted(self) -> None:
        if not self.handshake.called:
            self.handshake.callback(None)

    def expect(self) -> Deferred[Reply]:
        d: Deferred[Reply] = Deferred()
        if not self.connected_:
            d.errback(_Dropped("the connection was already closed"))
        else:
            self._waiting.append(d)
        return d

    def command(self, line: bytes) -> Deferred[Reply]:
        """Send one command line; fires with its reply.  Never logs the line."""
        d = self.expect()
        if self.connected_:
            self.transport.write(line + b"\r\n")
        return d

    def commands(self, lines: list[bytes]) -> list[Deferred[Reply]]:
        """Pipelined commands (RFC 2920): one write, replies in order."""
        waits = [self.expect() for _ in lines]
        if self.connected_:
            self.transport.write(b"".join(line + b"\r\n" for line in lines))
        return waits

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        code, separator = text[:3], text[3:4]
        if not (code.isdigit() and separator in (" ", "-", "")):
            self._violation(f"the upstream sent a malformed reply line {text[:80]!r}")
            return
        self._lines.append(text[4:])
        if separator == "-":
            return
        reply = Reply(int(code), "\n".join(self._lines))
        self._lines = []
        while self._waiting:
            d = self._waiting.pop(0)
            if not d.called:  # a wait that timed out is skipped
                d.callback(reply)
                return
        # A reply nobody waits for (its wait timed out, and the connection is being
        # given up): nothing to do with it.

    def lineLengthExceeded(self, line: bytes) -> None:
        self._violation(f"the upstream sent a reply line longer than {self.MAX_LENGTH}")

    def _violation(self, why: str) -> None:
        self._fail_waiting(_Dropped(why))
        self.abort()

    def abort(self) -> None:
        if self.connected_ and self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected_ = False
        self._fail_waiting(_Dropped(describe_loss(reason)))
        if not self.handshake.called:
            self.handshake.errback(_Dropped(describe_loss(reason)))
            self.handshake.addErrback(lambda _: None)
        self.lost.callback(None)
        self.on_lost()

    def _fail_waiting(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.errback(error)


@attrs.define(eq=False)
class UpstreamConnection:
    """
    One secure, authenticated (once L{authenticate} succeeded) upstream connection.

    The states are: connected → greeted → secured (EHLO after TLS) → authenticated →
    (transaction → ready)* → closed.  L{open_connection} takes it to "secured"; the pool
    decides the rest.
    """

    protocol: ClientProtocol
    clock: IReactorTime
    timeouts: Timeouts
    where: str
    capabilities: dict[str, str] = attrs.field(factory=dict)
    messages_sent: int = 0
    broken: bool = False
    #: No transaction is open: nothing sent yet, or the last one ended with a 250 to its
    #: end of data (RFC 5321 4.1.1.4) or an RSET.  Only an unclean connection needs RSET.
    clean: bool = True
    #: Largest BDAT chunk when the upstream offers CHUNKING.
    bdat_chunk_size: int = BDAT_CHUNK_SIZE

    @property
    def open(self) -> bool:
        return self.protocol.connected_ and not self.broken

    async def wait(self, d: Deferred[Any], step: str, seconds: float) -> Any:
        """Wait for C{d}; on timeout or loss the connection is dead and the step named."""
        d.addTimeout(seconds, self.clock)
        try:
            return await d
        except defer.TimeoutError:
            self.broken = True
            self.protocol.abort()
            raise ConnectionTrouble(step, f"timed out after {seconds:g}s") from None
        except _Dropped as e:
            self.broken = True
            raise ConnectionTrouble(step, e.why, dropped=True) from None

    async def command(self, line: bytes, step: str, timeout: float | None = None) -> Reply:
        reply: Reply = await self.wait(
            self.protocol.command(line), step,
            self.timeouts.command if timeout is None else timeout
        )
        if reply.code == 421:
            self.broken = True  # the upstream is closing this connection
        return reply

    async def ehlo(self, name: str) -> None:
        reply = await self.command(b"EHLO " + name.encode("ascii", "replace"), "EHLO")
        if reply.code != 250:
            raise UpstreamRefused(reply, "EHLO")
        self.capabilities = parse_capabilities(reply)

    async def starttls(self, creator: IOpenSSLClientConnectionCreator, name: str) -> None:
        if "STARTTLS" not in self.capabilities:
            self.broken = True
            raise ConnectionTrouble(
                "STARTTLS",
                "the upstream does not offer STARTTLS; xrelay never sends a token "
                "without TLS",
            )
        reply = await self.command(b"STARTTLS", "STARTTLS")
        if reply.code != 220:
            raise UpstreamRefused(reply, "STARTTLS")
        self.protocol.transport.startTLS(creator)
        await self.wait(self.protocol.handshake, "TLS handshake", self.timeouts.tls)
        await self.ehlo(name)

    async def authenticate(self, user: str, token: str) -> Reply:
        """
        SASL XOAUTH2 with an initial response.  Gmail answers a bad token with C{334}
        and a base64 JSON error; the empty line we send then gets the final reply.
        """
        step = "AUTH XOAUTH2"
        reply = await self.command(b"AUTH XOAUTH2 " + xoauth2_response(user, token), step)
        if reply.code == 334:
            reply = await self.command(b"", step)
        return reply

    async def reset(self) -> bool:
        """RSET before reusing an idle connection: also proves it is still alive."""
        if not self.open:
            return False
        try:
            reply = await self.command(b"RSET", "RSET")
        except ConnectionTrouble:
            return False
        self.clean = reply.code == 250
        return reply.code == 250

    async def quit(self) -> None:
        """Say goodbye politely, but never wait long for it."""
        if self.protocol.connected_:
            self.broken = True
            try:
                await self.wait(self.protocol.command(b"QUIT"), "QUIT", self.timeouts.quit)
            except ConnectionTrouble:
                pass
            self.protocol.transport.loseConnection()

    async def send_message(self, message: OutboundMessage,
                           reset: bool = False, reused: bool = False) -> DeliveryResult:
        """
        One mail transaction.  Raises L{ConnectionTrouble} when the connection failed
        under it (the caller reports that for all recipients); every reply, good or
        bad, becomes part of the result.

        @param reset: a reused connection: begin with RSET, which also proves the
            connection still works.  With PIPELINING it goes in the same write as MAIL
            and RCPT, saving a round trip per message.
        @param reused: the connection carried a transaction before; without C{reset}
            (it ended cleanly, so RSET is redundant) a connection that drops before the
            first reply of this transaction counts as stale, as a failed RSET does.
        @raise StaleConnection: the RSET failed; nothing was sent on this connection
            that could deliver the message, so it may go on another one.
        """
        refusal = self._unsendable(message)
        if refusal is not None:
            return refusal
        try:
            data = open(message.data_path, "rb")
        except OSError as e:
            reply = Reply(451, f"4.3.0 xrelay cannot read the spooled message: {e.strerror}")
            return DeliveryResult.for_all(message.recipients, Outcome.TEMPORARY, reply)
        with data:
            if reset and "PIPELINING" not in self.capabilities and not await self.reset():
                raise StaleConnection()
            pipelined_reset = reset and "PIPELINING" in self.capabilities
            if "CHUNKING" in self.capabilities and "PIPELINING" in self.capabilities:
                return await bdat_transaction(self, message, data, pipelined_reset,
                                              reused and not reset)
            return await self._transaction(message, data, pipelined_reset,
                                           reused and not reset)

    def _unsendable(self, message: OutboundMessage) -> DeliveryResult | None:
        """Refusals decided before anything is sent: from the upstream's EHLO, and
        addresses that could smuggle commands (the inbound side should never let
        them through; this is the last line)."""
        for address in (message.sender, *message.recipients):
            if _UNSAFE_ADDRESS.search(address):
                reply = Reply(501, f"5.1.3 Address {address!r} contains characters that "
                                   "cannot be sent in an SMTP command")
                return DeliveryResult.for_all(message.recipients, Outcome.PERMANENT, reply)
        limit = self.capabilities.get("SIZE", "")
        if limit.isdigit() and int(limit) > 0 and message.size > int(limit):
            reply = Reply(
                552,
                f"5.3.4 Message size {message.size} exceeds the upstream's limit of "
                f"{limit} bytes ({self.where})",
            )
            return DeliveryResult.for_all(
                message.recipients, Outcome.PERMANENT, reply, FailureKind.TOO_BIG,
                f"The upstream {self.where} accepts at most {limit} bytes per message.",
            )
        if _needs_smtputf8(message) and "SMTPUTF8" not in self.capabilities:
            reply = Reply(
                553,
                "5.6.7 The message needs SMTPUTF8 (internationalized addresses) but the "
                f"upstream {self.where} does not support it",
            )
            return DeliveryResult.for_all(message.recipients, Outcome.PERMANENT, reply)
        if message.body_8bitmime and "8BITMIME" not in self.capabilities:
            # RFC 6152 section 3: 8-bit data may go only to a server that offers
            # 8BITMIME; xrelay does not downgrade messages to 7 bit.
            reply = Reply(
                554,
                "5.6.3 The message holds 8-bit data but the upstream "
                f"{self.where} does not offer 8BITMIME, and xrelay does not convert "
                "messages to 7 bit; have the sender encode the body (quoted-printable "
                "or base64), or use an upstream that offers 8BITMIME",
            )
            return DeliveryResult.for_all(message.recipients, Outcome.PERMANENT, reply)
        return None

    def mail_from(self, message: OutboundMessage) -> bytes:
        params = []
        if "SIZE" in self.capabilities:
            params.append(f"SIZE={message.size}")
        if message.body_8bitmime and "8BITMIME" in self.capabilities:
            params.append("BODY=8BITMIME")
        if _needs_smtputf8(message):
            params.append("SMTPUTF8")
        line = " ".join([f"MAIL FROM:<{message.sender}>", *params])
        return line.encode("utf-8")

    async def _transaction(self, message: OutboundMessage, data: Any,
                           reset: bool = False, stale: bool = False) -> DeliveryResult:
        mail = self.mail_from(message)
        self.clean = False
        rcpts = [f"RCPT TO:<{r}>".encode("utf-8") for r in message.recipients]
        data_reply: Deferred[Reply] | None = None
        if "PIPELINING" in self.capabilities:
            # RFC 2920: DATA may end the group, which saves a round trip per message.
            # Its reply is always read before anything else is sent (see _abandon_data).
            group = [mail, *rcpts, b"DATA"]
            waits = self.protocol.commands([b"RSET", *group] if reset else group)
            if reset:
                await self.pipelined_reset(waits)
                waits = waits[1:]
            data_reply = waits.pop()
            mail_reply = await self.first_reply([*waits, data_reply], stale)
            if mail_reply.code == 421:
                self.broken = True
            rcpt_replies = []
            for w in waits[1:]:
                try:
                    rcpt_replies.append(await self.wait(w, "RCPT TO", self.timeouts.command))
                except ConnectionTrouble:
                    if mail_reply.code // 100 == 2:
                        raise
                    # The refusal of MAIL (421 and a close) is the news, not the close.
                    break
        else:
            mail_reply = await self.command(mail, "MAIL FROM")
            rcpt_replies = []
            if mail_reply.code == 250:
                for line in rcpts:
                    rcpt_replies.append(await self.command(line, "RCPT TO"))
        # The envelope phase, as for BDAT: refused as a whole, or some recipients taken.
        envelope = EnvelopeReplies(message, mail_reply, tuple(rcpt_replies))
        refusal = envelope.refusal()
        if refusal is not None:
            await self._abandon_data(data_reply)
            return refusal
        if data_reply is None:
            reply = await self.command(b"DATA", "DATA", self.timeouts.data_start)
        else:
            reply = await self.command_reply(data_reply, "DATA", self.timeouts.data_start)
        if reply.code != 354:
            return envelope.result(reply)
        reply = await self._stream(data)
        self.messages_sent += 1
        self.clean = reply.code == 250
        return envelope.result(reply)

    async def first_reply(self, waits: list[Deferred[Reply]], stale: bool) -> Reply:
        """
        The reply to MAIL, the first of a pipelined group.  On a reused connection sent
        without RSET (C{stale}), a connection that went away before answering anything
        was closed while idle: nothing was taken, so L{StaleConnection} lets the
        message go on another connection, as a failed RSET would.
        """
        try:
            reply: Reply = await self.wait(waits[0], "MAIL FROM", self.timeouts.command)
        except ConnectionTrouble as trouble:
            if stale and trouble.dropped:
                for w in waits[1:]:
                    w.addErrback(lambda _: None)
                raise StaleConnection() from None
            raise
        if reply.code == 421:
            self.broken = True
        return reply

    async def _abandon_data(self, data_reply: "Deferred[Reply] | None") -> None:
        """
        A pipelined DATA whose transaction failed (MAIL or every RCPT refused): read
        its reply before anything else goes out.  A conforming server refuses it (503,
        554); one that answers 354 gets an empty message's lone dot, and the connection
        is not used again, since what it did with that is unknown.
        """
        if data_reply is None:
            return
        try:
            reply = await self.command_reply(data_reply, "DATA", self.timeouts.data_start)
        except ConnectionTrouble:
            self.broken = True
            return
        if reply.code == 354:
            self.broken = True
            try:
                await self.command(b".", "end of data")
            except ConnectionTrouble:
                pass

    async def pipelined_reset(self, waits: list[Deferred[Reply]]) -> None:
        """
        The RSET at the head of a pipelined group.  If it failed, the MAIL and RCPT
        behind it may still have been taken, so this connection is given up (DATA is
        never sent on it) and L{StaleConnection} tells the pool to use another.
        """
        try:
            reply = await self.command_reply(waits[0], "RSET")
        except ConnectionTrouble:
            reply = None
        if reply is None or reply.code != 250:
            self.broken = True
            self.protocol.abort()
            for w in waits[1:]:
                w.addErrback(lambda _: None)
            raise StaleConnection()

    async def command_reply(self, d: Deferred[Reply], step: str,
                            timeout: float | None = None) -> Reply:
        """The reply to a command already sent (pipelined), as L{command} treats it."""
        reply: Reply = await self.wait(d, step,
                                       self.timeouts.command if timeout is None else timeout)
        if reply.code == 421:
            self.broken = True
        return reply

    async def _stream(self, data: Any) -> Reply:
        """
        Send the data and wait for the reply to the final dot.  The data timeout is
        for progress: it fires when the upstream stops taking data for that long.
        """
        final = self.protocol.expect()
        stalled: list[bool] = []

        def stall() -> None:
            stalled.append(True)
            self.broken = True
            self.protocol.abort()

        watchdog = self.clock.callLater(self.timeouts.data_block, stall)

        def progress() -> None:
            if watchdog.active():
                watchdog.reset(self.timeouts.data_block)

        step = "end of data"
        try:
            await DataSender(data, self.protocol.transport, progress).start()
        except DataInterrupted:
            step = "message data"
        except OSError as e:
            self.broken = True
            self.protocol.abort()
            final.addErrback(lambda _: None)
            raise ConnectionTrouble(
                "message data", f"reading the spooled message failed ({e.strerror})"
            ) from None
        finally:
            if watchdog.active():
                watchdog.cancel()
        if stalled:
            final.addErrback(lambda _: None)
            raise ConnectionTrouble(
                "message data",
                f"timed out after {self.timeouts.data_block:g}s without progress",
            )
        return await self.wait(final, step, self.timeouts.data_end)


#: Control characters, spaces and angle brackets end or break an SMTP command line.
_UNSAFE_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")


def _needs_smtputf8(message: OutboundMessage) -> bool:
    return message.smtputf8 or not all(
        address.isascii() for address in (message.sender, *message.recipients)
    )


async def open_connection(
    reactor: Any,
    host: str,
    port: int,
    implicit_tls: bool,
    tls: IOpenSSLClientConnectionCreator,
    helo_name: str,
    timeouts: Timeouts,
) -> UpstreamConnection:
    """
    Connect, (TLS,) greeting, EHLO, STARTTLS, EHLO: a connection ready for AUTH.

    @raise ConnectionTrouble: anything went wrong; nothing was sent but EHLO/STARTTLS.
    @raise UpstreamRefused: the upstream refused EHLO or STARTTLS.
    """
    where = f"{host}:{port}"
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=timeouts.connect)
    if implicit_tls:
        endpoint = wrapClientTLS(tls, endpoint)
    factory = Factory.forProtocol(ClientProtocol)
    factory.noisy = False  # deliveries are logged per message; this is noise
    connecting = endpoint.connect(factory)
    connecting.addTimeout(timeouts.connect + 1, reactor)
    try:
        protocol: ClientProtocol = await connecting
    except defer.TimeoutError:
        raise ConnectionTrouble("connect", f"timed out after {timeouts.connect:g}s") from None
    except Exception as e:
        raise ConnectionTrouble("connect", str(e) or type(e).__name__) from None
    connection = UpstreamConnection(protocol, reactor, timeouts, where)
    try:
        if implicit_tls:
            await connection.wait(protocol.handshake, "TLS handshake", timeouts.tls)
        greeting = await connection.wait(protocol.expect(), "greeting", timeouts.greeting)
        if greeting.code != 220:
            raise UpstreamRefused(greeting, "greeting")
        await connection.ehlo(helo_name)
        if not implicit_tls:
            await connection.starttls(tls, helo_name)
    except BaseException:
        connection.broken = True
        protocol.abort()
        raise
    return connection
