"""
The inbound ESMTP server protocol: speaks SMTP to one client and nothing else.

Decisions (may this client relay, may it use this sender, is this address a trick) are
asked of L{xrelay.policy}; message bytes go to an L{IIncomingMessage} line by line; the
password check runs in a thread.  The protocol only sequences the conversation.

Why not C{twisted.mail.smtp.ESMTP}: this is written on L{Protocol} with our own bounded
line splitter (L{xrelay.inbound.lines}), because each of the weaknesses the relay must
defeat sits in the stock class's core rather than in a hook:
 - its C{LineReceiver} turns an over-long line into C{lineLengthExceeded}, which in
   DATA drops the rest of the message into command mode (message text executed as
   commands);
 - it ends DATA on a bare C{"\\n.\\n"}-style line (the SMTP smuggling family), since
   C{LineReceiver} splits on the delimiter only after the fact;
 - bytes pipelined with STARTTLS are delivered to the protocol after the TLS switch;
 - its pipelining of asynchronous decisions (C{validateTo} returning a Deferred) is
   done by pausing the transport, which does not stop lines already in the buffer;
 - its debug logging writes whole command lines, AUTH responses included;
 - and it keeps message data in a list when the message is not streamed.
The replies and enhanced status codes follow RFC 5321, 3463, 2034 (enhanced codes on
every reply except the greeting and the EHLO/HELO reply) and 4954.

This protocol must never: end DATA on anything but CRLF "." CRLF (or, for a trusted
device only, a "." line with bare LF ends; see L{xrelay.inbound.lines}), execute a
byte that arrived before a TLS handshake as a command after it, answer 250 to DATA before the
spool's commit fired, hold a line or a message in memory beyond the line limit, or
log a password, an AUTH response line or a token.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from xrelay.config import Config, UserConfig
from xrelay.inbound.conduct import JUNK_COMMANDS, Conduct
from xrelay.inbound.handler import connect_refusal, session_of
from xrelay.inbound.lines import Line, LineBuffer
from xrelay.inbound.sessioncommands import SessionCommands
from xrelay.inbound.smtpauth import AuthCommands
from xrelay.inbound.states import (
    AUTH_LOGIN_PASSWORD,
    AUTH_LOGIN_USER,
    AUTH_PLAIN,
    CLOSED,
    COMMAND,
    DATA,
    PROXY,
)
from xrelay.inbound.mailtransaction import Transaction
from xrelay.inbound.transaction import MailCommands, pass_through_reply
from xrelay.inbound.tlsprofile import report_failed_handshake
from xrelay.records import Refusal
from xrelay.streams import IStreamTransport

if TYPE_CHECKING:
    from xrelay.inbound.factory import InboundFactory

__all__ = ["AUTH_RESERVE_SECONDS", "ESMTPServer", "pass_through_reply", "canonical_address"]

log = Logger()

#: Seconds a client admitted to the authenticated sessions' reserve has to authenticate
#: (a device's EHLO, STARTTLS, EHLO and AUTH take a second or two); see
#: L{xrelay.inbound.factory.ConnectionCounter}.
AUTH_RESERVE_SECONDS = 15

#: Bytes buffered while waiting for an asynchronous decision before reading pauses.
PAUSE_BUFFER = 256 * 1024

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ESMTPServer(SessionCommands, AuthCommands, MailCommands, Protocol):
    """
    One client connection: the connection's life, the line loop, replies and timers;
    HELO, EHLO, STARTTLS and the small commands are in L{SessionCommands}, AUTH is in
    L{AuthCommands}, the mail transaction in L{MailCommands}.  Built by L{xrelay.inbound.factory.InboundFactory}, whose
    configuration snapshot it keeps for its whole life (a reload changes new
    connections only).
    """

    factory: "InboundFactory"
    transport: IStreamTransport  # connected over TCP for its whole life (xrelay.streams)

    def __init__(self, factory: "InboundFactory") -> None:
        self.factory = factory
        self.config: Config = factory.config
        self.clock = factory.clock
        self.tls_options = factory.tls_options
        self.checker = factory.checker
        self.lines = LineBuffer(self.config.server.max_line_length)
        self.state = PROXY if factory.proxied else COMMAND
        self.client_address = ""
        self.admitted = False
        self.helo: str | None = None
        self.esmtp = False
        self.tls = factory.implicit_tls
        self.user: UserConfig | None = None
        self.transaction: Transaction | None = None
        #: Errors and junk commands against server.max_errors / max_junk_commands: a
        #: client sending garbage (or an HTTP request) is cut off quickly.
        self.conduct = Conduct(self.config.server.max_errors,
                               self.config.server.max_junk_commands)
        self.auth_failures = 0
        self._login_name = ""
        self._busy = False
        self._running = False
        self._paused = False
        self._timer: Any = None
        #: When the client last moved towards a message (connected, its first HELO or
        #: EHLO of a session, a successful AUTH, a transaction): the silence allowed
        #: before MAIL counts from there, so NOOP, RSET, HELP and refused commands do not
        #: keep a slot.
        self._useful_at = 0.0
        #: The user whose successful AUTH last counted as moving towards a message.
        self._user_seen: UserConfig | None = None
        #: Admitted to the authenticated sessions' reserve: the call that closes the
        #: connection unless it authenticated (L{xrelay.inbound.factory.Admitted}).
        self._probation: Any = None
        self._shutting_down = False
        self._awaiting_header = False
        #: The inbound handler refused the client with a 554 greeting: only QUIT now.
        self._no_service = False

    # -- connection life -----------------------------------------------------------

    def connectionMade(self) -> None:
        self.factory.live.add(self)
        self._useful_at = self.clock.seconds()
        self._restart_timer()
        if self.state != PROXY:
            self.begin()
            return
        refusal = self.factory.connections.await_header(self.config)
        if refusal is not None:
            log.warn("inbound connection on {listener} refused before its PROXY header: "
                     "{reply}", listener=self.factory.listener.endpoint, reply=str(refusal))
            self.reply(refusal.code, refusal.enhanced, refusal.text)
            self.close()
            return
        self._awaiting_header = True

    def _header_wait_over(self) -> None:
        if self._awaiting_header:
            self._awaiting_header = False
            self.factory.connections.awaiting_header -= 1

    def proxy_header_received(self) -> None:
        """The PROXY header was read: the client's real address is known now."""
        if self.state == PROXY:
            self._header_wait_over()
            self.state = COMMAND
            self.begin()
            self._restart_timer()

    def begin(self) -> None:
        """Admit the client (connection caps) and greet it."""
        peer = self.transport.getPeer()
        self.client_address = canonical_address(getattr(peer, "host", "") or str(peer))
        admission = self.factory.connections.admit(self.client_address, self.config)
        if isinstance(admission, Refusal):
            log.warn("inbound connection from {client} refused: {reply}",
                     client=self.client_address, reply=str(admission))
            self.factory.devices.refused(self, "connect", admission.code,
                                         admission.enhanced, admission.text)
            self.reply(admission.code, admission.enhanced, admission.text)
            self.close()
            return
        self.admitted = True
        self._useful_at = self.clock.seconds()
        if admission.probation:
            self._probation = self.clock.callLater(AUTH_RESERVE_SECONDS,
                                                   self._probation_over)
        decision = connect_refusal(self.factory.handler, session_of(self), self.clock)
        if isinstance(decision, Deferred):
            # The handler must wait: what the client sends meanwhile stays buffered and
            # is read after the greeting (the command loop resumes when it fires).
            self._wait(decision.addCallback(self._greet))
            return
        self._greet(decision)
        self._run()

    def _greet(self, refusal: "Refusal | None") -> None:
        """The greeting, or the connect hook's refusal instead of it."""
        if self.state == CLOSED:
            return
        if refusal is not None:
            log.warn("inbound connection from {client} refused by the inbound handler: "
                     "{reply}", client=self.client_address, reply=str(refusal))
            self.factory.devices.refused(self, "connect", refusal.code,
                                         refusal.enhanced, refusal.text)
            self.reply(refusal.code, refusal.enhanced, refusal.text)
            if refusal.code != 554:
                self.close()
                return
            # RFC 5321 3.1: after a 554 greeting, wait for QUIT and answer 503 meanwhile
            # (server.max_errors and the idle timeout still end a client that won't).
            self._no_service = True
            return
        log.info("inbound connection from {client} on {listener}",
                 client=self.client_address, listener=self.factory.listener.endpoint)
        self.factory.events.connection(self.factory.listener.endpoint)
        self.write_lines(220, [f"{self.config.server.hostname} ESMTP xrelay ready"])

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.tls:  # once per connection: why the TLS handshake failed, if it did
            report_failed_handshake(self, reason)
        self.state = CLOSED
        self._cancel_timer()
        self.factory.live.discard(self)
        self._header_wait_over()
        summary = self.conduct.summary()
        if summary is not None:
            log.info("inbound client {client}: {summary}", client=self.client_address,
                     summary=summary)
        self._end_probation()
        if self.admitted:
            self.factory.connections.release(self.client_address)
            self.admitted = False
        self._drop_transaction("connection lost")

    def close(self) -> None:
        self.state = CLOSED
        self._cancel_timer()
        self.transport.loseConnection()

    def shutdown(self) -> None:
        """
        The service is stopping: an idle connection is told at once; one in the middle
        of a message is told after its transaction ends.
        """
        self._shutting_down = True
        if self.state not in (DATA, CLOSED) and not self._busy:
            self.reply(421, "4.3.2", f"{self.config.server.hostname} Service shutting "
                       "down, try again later")
            self.close()

    # -- timers --------------------------------------------------------------------

    def _restart_timer(self) -> None:
        self._cancel_timer()
        now = self.clock.seconds()
        if self.user is not self._user_seen:  # an AUTH succeeded (or STARTTLS reset it)
            self._user_seen = self.user
            if self.user is not None:
                self._useful_at = now
                self._end_probation()
        if self.state != CLOSED:
            wait: float = self._idle_limit()
            if self.transaction is not None or self.state == DATA:
                self._useful_at = now
            elif self.state != PROXY:
                wait = max(0.0, self._useful_at + wait - now)
            self._timer = self.clock.callLater(wait, self._timed_out)

    def _end_probation(self) -> None:
        if self._probation is not None:
            if self._probation.active():
                self._probation.cancel()
            self._probation = None
            self.factory.connections.end_probation(self.client_address)

    def _probation_over(self) -> None:
        if self.user is None and self.state != CLOSED and self._busy:
            # An AUTH check is under way: its answer decides, not the clock.
            self._probation = self.clock.callLater(1, self._probation_over)
            return
        self._probation = None
        self.factory.connections.end_probation(self.client_address)
        if self.user is not None or self.state == CLOSED:
            return
        log.warn("inbound client {client} took a slot kept for authenticated sessions "
                 "(server.reserved_auth_connections) and did not authenticate within "
                 "{seconds}s, closing", client=self.client_address,
                 seconds=AUTH_RESERVE_SECONDS)
        self._drop_transaction("not authenticated in the reserve")
        self.reply(421, "4.7.0", f"{self.config.server.hostname} Too many connections; "
                   f"the free ones are for clients that authenticate within "
                   f"{AUTH_RESERVE_SECONDS}s, try again later")
        self.close()

    def _idle_limit(self) -> int:
        """
        Seconds of silence allowed now: a few for the PROXY header, a short while
        outside a mail transaction (a slot held by an idle client is a slot a printer
        cannot have), C{idle_timeout} within one.
        """
        server = self.config.server
        if self.state == PROXY:
            return server.proxy_header_timeout
        if self.transaction is None and self.state != DATA:
            return min(server.idle_timeout_before_mail, server.idle_timeout)
        return server.idle_timeout

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.state == PROXY:
            log.warn("inbound connection from {peer} on {listener}: no PROXY header within "
                     "{seconds}s, closing", peer=self.transport.getPeer(),
                     listener=self.factory.listener.endpoint, seconds=self._idle_limit())
        hint = self._data_timeout_hint()  # bare line ends, read strictly: say so
        log.info("inbound client {client} idle for {seconds}s in state {state}, closing"
                 "{hint}", client=self.client_address, state=self.state,
                 seconds=self._idle_limit(), hint=f"; {hint}" if hint else "")
        self._drop_transaction("timeout")
        self.reply(421, "4.4.2", f"{self.config.server.hostname} Error: timeout exceeded"
                   + (f" waiting for the end of data; {hint}" if hint else ""))
        self.close()

    # -- replies ---------------------------------------------------------------

    def write_lines(self, code: int, texts: list[str]) -> None:
        clean = [t.replace("\r", " ").replace("\n", " ") for t in texts] or [""]
        out = [f"{code}-{t}" for t in clean[:-1]] + [f"{code} {clean[-1]}"]
        self.transport.write(("\r\n".join(out) + "\r\n").encode("utf-8"))

    def reply(self, code: int, enhanced: str, text: str) -> None:
        """One reply with its enhanced status code on every line (RFC 2034)."""
        lines = text.split("\n") if text else [""]
        prefix = f"{enhanced} " if enhanced else ""
        self.write_lines(code, [prefix + line for line in lines])

    def refuse(self, refusal: Refusal) -> None:
        """A refused command: counted like an error (see L{error})."""
        if (refusal.code, refusal.enhanced) == (452, "4.5.3") and not (
                self.conduct.excess_recipient()):
            # Too many recipients: the client is told to send the rest in another
            # message (RFC 5321 4.5.3.1.10), which is not misbehaviour, up to
            # RECIPIENT_OVERSHOOT of them; past that each counts (Conduct).
            self.reply(refusal.code, refusal.enhanced, refusal.text)
            return
        self.error(refusal.code, refusal.enhanced, refusal.text)

    def error(self, code: int, enhanced: str, text: str) -> None:
        """
        A protocol error or a refusal: counted, and C{server.max_errors} of them end the
        connection with 421.  The first few of a connection are logged one by one, the
        rest in one summary line at its end.
        """
        # The reply, never the offending line: it may carry an AUTH response.
        if self.conduct.log_refusal(f"{code} {enhanced} {text}"):
            log.info("inbound client {client} in state {state}: {code} {enhanced} {text}",
                     client=self.client_address, state=self.state, code=code,
                     enhanced=enhanced, text=text)
        if self.conduct.error():
            log.warn("inbound client {client}: {count} errors or refused commands "
                     "without a message accepted (server.max_errors), closing",
                     client=self.client_address, count=self.conduct.errors)
            self.reply(421, "4.7.0", f"{self.config.server.hostname} Too many errors, "
                       "closing connection")
            self.close()
            return
        self.reply(code, enhanced, text)

    # -- the line loop ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self.lines.feed(data)
        if self.state == PROXY:
            return
        self._run()

    def _run(self) -> None:
        """
        Handle complete lines in order.  A handler that must wait (a password check, a
        commit) returns a Deferred; later lines stay buffered until it fires, which is
        what keeps pipelined replies in order.
        """
        if self._running:
            return
        self._running = True
        handled = False
        try:
            while not self._busy and self.state not in (CLOSED, PROXY):
                if self.state == DATA and self.transaction is not None:
                    # The common case in DATA, a run of ordinary lines, in one piece.
                    block = self.lines.plain_lines()
                    if block:
                        handled = True
                        try:
                            self._data_block(block)
                        except Exception:
                            log.failure("inbound: error storing data from {client}",
                                        client=self.client_address)
                            self._data_failed()
                        continue
                line = self.lines.next()
                if line is None:
                    break
                handled = True
                try:
                    if self.state != DATA:
                        d = self._dispatch(line)
                        self._restart_timer()
                    else:
                        self._useful_at = self.clock.seconds()
                        d = self._data_line(line)
                except Exception:
                    # A bug must cost the client one reply, not the connection; the
                    # line itself is not logged (it may be an AUTH response).
                    log.failure("inbound: error handling a line from {client}",
                                client=self.client_address)
                    d = None
                    if self.state == DATA:
                        self._data_failed()  # 451 at the end of data, nothing kept
                    elif self.state != CLOSED:
                        self.reply(451, "4.3.0", "Local error in processing, try again "
                                   "later")
                if d is not None:
                    self._wait(d)
            if self.state == DATA and self.transaction is not None:
                # Only complete lines count as activity: a client that never ends its
                # line is timed out like a silent one.
                if handled:
                    self._restart_timer()
                self._flush()
        finally:
            self._running = False
        if self._busy and self.lines.pending > PAUSE_BUFFER and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _wait(self, d: "Deferred[Any]") -> None:
        self._busy = True
        self._cancel_timer()  # the client is waiting for us, not the other way round

        def done(result: Any) -> None:
            self._busy = False
            if isinstance(result, Failure):
                log.failure("inbound: unexpected error from {client}", result,
                            client=self.client_address)
                if self.state != CLOSED:
                    self.reply(451, "4.3.0", "Local error in processing, try again later")
            if self.state == CLOSED:
                return
            if self._shutting_down and self.state != DATA:
                self.shutdown()
                return
            self._restart_timer()
            if self._paused:
                self._paused = False
                self.transport.resumeProducing()
            self._run()

        d.addBoth(done)

    def _dispatch(self, line: Line) -> "Deferred[Any] | None":
        if self.state in (AUTH_PLAIN, AUTH_LOGIN_USER, AUTH_LOGIN_PASSWORD):
            return self._auth_response(line)
        if line.overlong:
            self.error(500, "5.5.2", f"Line too long; the limit is "
                       f"{self.config.server.max_line_length} bytes")
            return None
        raw = line.content
        if b"\x00" in raw:
            self.error(500, "5.5.2", "NUL character in command")
            return None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            utf8 = self._utf8_command(raw)
            if utf8 is None:
                self.error(500, "5.5.2", "Non-ASCII characters in command; they are "
                           "allowed only in addresses, with SMTPUTF8")
                return None
            text = utf8
        if _CONTROL.search(text):
            self.error(500, "5.5.2", "Control characters in command")
            return None
        verb, _, argument = text.strip(" ").partition(" ")
        if self._no_service and verb.upper() != "QUIT":
            self.error(503, "5.5.1", "No SMTP service here for you; send QUIT")
            return None
        handler: Callable[[str], "Deferred[Any] | None"] | None = getattr(
            self, "do_" + verb.upper(), None) if verb.isalpha() else None
        if handler is None:
            self.error(500, "5.5.2", "Command not recognised")
            return None
        if verb.upper() in JUNK_COMMANDS and self.conduct.junk_command():
            log.warn("inbound client {client}: {count} commands without mail "
                     "(server.max_junk_commands), closing", client=self.client_address,
                     count=self.conduct.junk - 1)
            self.reply(421, "4.7.0", f"{self.config.server.hostname} Too many commands "
                       "without mail, closing connection")
            self.close()
            return None
        return handler(argument.strip(" "))

    def _utf8_command(self, raw: bytes) -> str | None:
        """Non-ASCII is allowed in MAIL with SMTPUTF8 and in RCPT of such a transaction."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        verb = text.split(" ", 1)[0].upper()
        if verb == "MAIL" and re.search(r"\sSMTPUTF8(\s|$)", text, re.I):
            return text
        if verb == "RCPT" and self.transaction is not None and self.transaction.smtputf8:
            return text
        return None


def canonical_address(host: str) -> str:
    """
    One spelling per client address (PROXY v2 gives IPv6 uncompressed; a dual-stack
    socket gives IPv4 clients as ::ffff:a.b.c.d), so that caps, logs and the
    C{Received:} header agree.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
