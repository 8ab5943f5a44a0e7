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

This protocol must never: end DATA on anything but CRLF "." CRLF, execute a byte that
arrived before a TLS handshake as a command after it, answer 250 to DATA before the
spool's commit fired, hold a line or a message in memory beyond the line limit, or
log a password, an AUTH response line or a token.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from typing import TYPE_CHECKING, Any, Callable

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from xrelay.config import AccountConfig, Config, UserConfig
from xrelay.envelope import DeliveryResult, Envelope, Outcome
from xrelay.inbound.auth import (
    LOGIN_PASSWORD_PROMPT,
    LOGIN_USERNAME_PROMPT,
    MECHANISMS,
    MalformedResponse,
    decode_response,
    decode_text,
    parse_plain,
)
from xrelay.inbound.errors import SpoolFull
from xrelay.inbound.lines import Line, LineBuffer, data_line_bytes
from xrelay.inbound.received import protocol_keyword, received_header
from xrelay.interfaces import IIncomingMessage
from xrelay.policy import (
    Refusal,
    address_refusal,
    recipient_limit_refusal,
    relay_refusal,
    sender_refusal,
)

if TYPE_CHECKING:
    from xrelay.inbound.factory import InboundFactory

__all__ = ["ESMTPServer", "pass_through_reply"]

log = Logger()

#: Protocol errors tolerated on one connection before it is closed: a client sending
#: garbage (or an HTTP request, a cross-protocol attack) is cut off quickly.
MAX_ERRORS = 10

#: Bytes buffered while waiting for an asynchronous decision before reading pauses.
PAUSE_BUFFER = 256 * 1024

#: Spool writes are gathered up to this many bytes (one packet's worth of lines).
WRITE_BATCH = 64 * 1024

_MAIL = re.compile(r"^FROM:\s*(?:<([^<>]*)>|([^<>\s]+))(?:\s+(.*))?$", re.I | re.S)
_RCPT = re.compile(r"^TO:\s*(?:<([^<>]*)>|([^<>\s]+))(?:\s+(.*))?$", re.I | re.S)
_HELO_NAME = re.compile(r"^[\x21-\x7e]{1,255}$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# The states of one connection.  PROXY: waiting for the PROXY header; COMMAND: reading
# commands; AUTH_*: reading a SASL response; DATA: reading message lines; CLOSED.
PROXY, COMMAND, AUTH_PLAIN, AUTH_LOGIN_USER, AUTH_LOGIN_PASSWORD, DATA, CLOSED = (
    "proxy", "command", "auth-plain", "auth-login-user", "auth-login-password", "data",
    "closed",
)


@attrs.define
class Transaction:
    """One mail transaction, from MAIL FROM to the end of DATA or RSET."""

    sender: str
    account: AccountConfig
    size: int | None = None
    smtputf8: bool = False
    body_8bitmime: bool = False
    recipients: list[str] = attrs.field(factory=list)
    id: str = attrs.field(factory=lambda: secrets.token_hex(6))
    # While DATA is read:
    message: IIncomingMessage | None = None
    received: int = 0
    pending: list[bytes] = attrs.field(factory=list)
    pending_size: int = 0
    #: Why the message will be refused at the end of DATA, once it is known.
    refusal: tuple[int, str, str] | None = None
    previous_crlf: bool = True
    bare_line_ends: int = 0


def pass_through_reply(result: DeliveryResult, entry_id: str) -> tuple[int, str, str]:
    """
    The end-of-DATA reply of a pass-through listener, from the upstream's result.

    All delivered: 250.  Otherwise the first failed recipient's upstream reply, code and
    text verbatim (C{554 5.2.252 SendAsDenied; ...}) when nothing was delivered.  When
    some recipients were delivered, a 5xx would make the device send the message again
    to those too, so the reply is 250 with the failures named (the spool retries or
    bounces the rest).
    """
    failed = [r for r in result.recipients if r.outcome is not Outcome.DELIVERED]
    if not failed:
        return 250, "2.0.0", f"Ok: delivered as {entry_id}"
    delivered = len(result.recipients) - len(failed)
    if delivered:
        first = failed[0].reply
        return 250, "2.0.0", (f"Ok: queued as {entry_id}; delivered to {delivered} of "
                              f"{len(result.recipients)}, upstream said {first}")
    reply = failed[0].reply
    enhanced = reply.enhanced or ""
    text = reply.text[len(enhanced):].lstrip() if enhanced else reply.text
    return reply.code, enhanced, text


class ESMTPServer(Protocol):
    """
    One client connection.  Built by L{xrelay.inbound.factory.InboundFactory}, whose
    configuration snapshot it keeps for its whole life (a reload changes new
    connections only).
    """

    factory: "InboundFactory"

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
        self.errors = 0
        self.auth_failures = 0
        self._login_name = ""
        self._busy = False
        self._running = False
        self._paused = False
        self._timer: Any = None
        self._shutting_down = False
        self._awaiting_header = False

    # -- connection life -----------------------------------------------------------

    def connectionMade(self) -> None:
        self.factory.live.add(self)
        self._restart_timer()
        if self.state != PROXY:
            self.begin()
            return
        refusal = self.factory.connections.full(self.config)
        if refusal is not None:
            log.warn("inbound connection on {listener} refused before its PROXY header: "
                     "{reply}", listener=self.factory.listener.endpoint, reply=str(refusal))
            self.refuse(refusal)
            self.close()
            return
        self.factory.connections.awaiting_header += 1
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

    def begin(self) -> None:
        """Admit the client (connection caps) and greet it."""
        peer = self.transport.getPeer()
        self.client_address = canonical_address(getattr(peer, "host", "") or str(peer))
        refusal = self.factory.connections.admit(self.client_address, self.config)
        if refusal is not None:
            log.warn("inbound connection from {client} refused: {reply}",
                     client=self.client_address, reply=str(refusal))
            self.reply(refusal.code, refusal.enhanced, refusal.text)
            self.close()
            return
        self.admitted = True
        log.info("inbound connection from {client} on {listener}",
                 client=self.client_address, listener=self.factory.listener.endpoint)
        self.write_lines(220, [f"{self.config.server.hostname} ESMTP xrelay ready"])
        self._run()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.state = CLOSED
        self._cancel_timer()
        self.factory.live.discard(self)
        self._header_wait_over()
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
        if self.state != CLOSED:
            self._timer = self.clock.callLater(self.config.server.idle_timeout,
                                               self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        log.info("inbound client {client} idle for {seconds}s in state {state}, closing",
                 client=self.client_address, seconds=self.config.server.idle_timeout,
                 state=self.state)
        self._drop_transaction("timeout")
        self.reply(421, "4.4.2", f"{self.config.server.hostname} Error: timeout exceeded")
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
        self.reply(refusal.code, refusal.enhanced, refusal.text)

    def error(self, code: int, enhanced: str, text: str) -> None:
        """A protocol error: counted, and too many of them end the connection."""
        self.errors += 1
        if self.errors >= MAX_ERRORS:
            log.warn("inbound client {client}: too many errors, closing",
                     client=self.client_address)
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
                line = self.lines.next()
                if line is None:
                    break
                handled = True
                try:
                    if self.state != DATA:
                        self._restart_timer()
                        d = self._dispatch(line)
                    else:
                        d = self._data_line(line)
                except Exception:
                    # A bug must cost the client one reply, not the connection; the
                    # line itself is not logged (it may be an AUTH response).
                    log.failure("inbound: error handling a line from {client}",
                                client=self.client_address)
                    d = None
                    if self.state != DATA and self.state != CLOSED:
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
            text = self._utf8_command(raw)
            if text is None:
                self.error(500, "5.5.2", "Non-ASCII characters in command; they are "
                           "allowed only in addresses, with SMTPUTF8")
                return None
        if _CONTROL.search(text):
            self.error(500, "5.5.2", "Control characters in command")
            return None
        verb, _, argument = text.strip(" ").partition(" ")
        handler: Callable[[str], "Deferred[Any] | None"] | None = getattr(
            self, "do_" + verb.upper(), None) if verb.isalpha() else None
        if handler is None:
            log.info("inbound client {client}: unknown command", client=self.client_address)
            self.error(500, "5.5.2", "Command not recognised")
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

    # -- session commands ------------------------------------------------------

    def do_HELO(self, argument: str) -> None:
        self._hello(argument, esmtp=False)

    def do_EHLO(self, argument: str) -> None:
        self._hello(argument, esmtp=True)

    def _hello(self, argument: str, esmtp: bool) -> None:
        if not _HELO_NAME.match(argument):
            self.error(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
            return
        self._drop_transaction("new EHLO")
        self.helo, self.esmtp = argument, esmtp
        hostname = self.config.server.hostname
        if not esmtp:
            self.write_lines(250, [hostname])
            return
        lines = [hostname, "PIPELINING", f"SIZE {self.config.server.max_message_size}",
                 "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
        if self._starttls_available():
            lines.append("STARTTLS")
        if self._auth_advertised():
            lines.append("AUTH " + " ".join(MECHANISMS))
        lines.append("HELP")
        self.write_lines(250, lines)

    def _starttls_available(self) -> bool:
        return self.tls_options is not None and not self.tls

    def _auth_advertised(self) -> bool:
        return (bool(self.config.users) and self.user is None
                and (self.tls or not self.config.server.require_tls_for_auth))

    def do_NOOP(self, argument: str) -> None:
        self.reply(250, "2.0.0", "Ok")

    def do_RSET(self, argument: str) -> None:
        self._drop_transaction("RSET")
        self.reply(250, "2.0.0", "Ok")

    def do_QUIT(self, argument: str) -> None:
        self.reply(221, "2.0.0", "Bye")
        self.close()

    def do_VRFY(self, argument: str) -> None:
        self.reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt "
                   "delivery")

    def do_EXPN(self, argument: str) -> None:
        self.reply(502, "5.5.1", "EXPN not available")

    def do_HELP(self, argument: str) -> None:
        self.reply(214, "2.0.0", "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET "
                   "NOOP VRFY HELP QUIT\nxrelay relays mail from this network to the "
                   "organisation's mail service")

    def do_BDAT(self, argument: str) -> None:
        self.error(502, "5.5.1", "BDAT not available; use DATA")

    def do_STARTTLS(self, argument: str) -> None:
        if self.tls_options is None or self.factory.implicit_tls:
            self.error(502, "5.5.1", "STARTTLS not available")
            return
        if self.tls:
            self.error(503, "5.5.1", "TLS already active")
            return
        if argument:
            self.error(501, "5.5.4", "Syntax: STARTTLS")
            return
        self.reply(220, "2.0.0", "Ready to start TLS")
        dropped = self.lines.clear()
        if dropped:
            # RFC 3207 section 6 (and CVE-2011-0411): bytes sent before the handshake
            # are not protected by it and must not be taken as commands after it.
            log.warn("inbound client {client} pipelined {count} bytes after STARTTLS; "
                     "discarded", client=self.client_address, count=dropped)
        self.transport.startTLS(self.tls_options)
        self.tls = True
        # A new session: everything learnt before TLS is forgotten (RFC 3207 4.2).
        self.helo, self.esmtp, self.user = None, False, None
        self._drop_transaction("STARTTLS")

    # -- AUTH --------------------------------------------------------------------

    def do_AUTH(self, argument: str) -> "Deferred[Any] | None":
        if not self.config.users:
            self.error(502, "5.5.1", "AUTH not available")
            return None
        if self.config.server.require_tls_for_auth and not self.tls:
            self.error(530, "5.7.0", "Must issue a STARTTLS command first")
            return None
        if self.helo is None:
            self.error(503, "5.5.1", "Send EHLO first")
            return None
        if self.user is not None:
            self.error(503, "5.5.1", "Already authenticated")
            return None
        if self.transaction is not None:
            self.error(503, "5.5.1", "AUTH not permitted during a mail transaction")
            return None
        if self.factory.auth_failures.blocked(self.client_address, self.clock.seconds()):
            log.warn("inbound client {client}: AUTH refused, too many failures from this "
                     "address", client=self.client_address)
            self.reply(421, "4.7.0", "Too many failed authentication attempts")
            self.close()
            return None
        mechanism, _, initial = argument.partition(" ")
        mechanism, initial = mechanism.upper(), initial.strip(" ")
        if not mechanism:
            self.error(501, "5.5.2", "Syntax: AUTH mechanism [initial-response]")
            return None
        if mechanism not in MECHANISMS:
            self.error(504, "5.5.4", "Unrecognised authentication mechanism; use "
                       + " or ".join(MECHANISMS))
            return None
        if mechanism == "PLAIN":
            if not initial:
                self.state = AUTH_PLAIN
                self.write_lines(334, [""])
                return None
            return self._plain(initial)
        if initial:
            try:
                self._login_name = decode_text(decode_response(initial))
            except MalformedResponse:
                self.error(501, "5.5.2", "Cannot decode AUTH response")
                return None
            self.state = AUTH_LOGIN_PASSWORD
            self.write_lines(334, [LOGIN_PASSWORD_PROMPT])
            return None
        self.state = AUTH_LOGIN_USER
        self.write_lines(334, [LOGIN_USERNAME_PROMPT])
        return None

    def _auth_response(self, line: Line) -> "Deferred[Any] | None":
        """A SASL response line.  Never logged: it carries the password."""
        state, self.state = self.state, COMMAND
        if line.overlong:
            self.error(500, "5.5.2", "Line too long")
            return None
        try:
            text = line.content.decode("ascii").strip()
        except UnicodeDecodeError:
            self.error(501, "5.5.2", "Cannot decode AUTH response")
            return None
        if text == "*":
            self.error(501, "5.7.0", "Authentication cancelled")
            return None
        if state == AUTH_PLAIN:
            return self._plain(text)
        try:
            value = decode_text(decode_response(text))
        except MalformedResponse:
            self.error(501, "5.5.2", "Cannot decode AUTH response")
            return None
        if state == AUTH_LOGIN_USER:
            self._login_name = value
            self.state = AUTH_LOGIN_PASSWORD
            self.write_lines(334, [LOGIN_PASSWORD_PROMPT])
            return None
        name, self._login_name = self._login_name, ""
        return self._check(name, value, "LOGIN")

    def _plain(self, text: str) -> "Deferred[Any] | None":
        try:
            name, password = parse_plain(decode_response(text))
        except MalformedResponse:
            self.error(501, "5.5.2", "Cannot decode AUTH response")
            return None
        return self._check(name, password, "PLAIN")

    def _check(self, name: str, password: str, mechanism: str) -> "Deferred[Any]":
        failures = self.factory.auth_failures
        delay = failures.delay(self.client_address, self.clock.seconds())
        d = self.checker.check(name, password)
        if delay:
            # The back-off: an address that keeps failing waits longer for every answer
            # (right or wrong, so the wait itself tells nothing).
            d.addCallback(lambda user: defer_later(self.clock, delay, user))
        return d.addCallback(self._checked, mechanism)

    def _checked(self, user: UserConfig | None, mechanism: str) -> None:
        if self.state == CLOSED:
            return
        if user is not None:
            self.factory.auth_failures.succeeded(self.client_address)
            self.user = user
            log.info("inbound client {client} authenticated as {user} ({mechanism})",
                     client=self.client_address, user=user.name, mechanism=mechanism)
            self.reply(235, "2.7.0", "Authentication successful")
            return
        self.factory.auth_failures.failed(self.client_address, self.clock.seconds())
        self.auth_failures += 1
        log.warn("inbound client {client}: authentication failed ({mechanism}), "
                 "{count} on this connection", client=self.client_address,
                 mechanism=mechanism, count=self.auth_failures)
        if self.auth_failures >= self.config.server.max_auth_failures:
            self.reply(421, "4.7.0", "Too many failed authentication attempts")
            self.close()
            return
        self.reply(535, "5.7.8", "Authentication credentials invalid")

    # -- the mail transaction ----------------------------------------------------

    def do_MAIL(self, argument: str) -> None:
        if self.helo is None:
            self.error(503, "5.5.1", "Send EHLO/HELO first")
            return
        if self.transaction is not None:
            self.error(503, "5.5.1", "Nested MAIL command")
            return
        match = _MAIL.match(argument)
        if match is None:
            self.error(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
            return
        sender = match.group(1) if match.group(1) is not None else match.group(2)
        size, smtputf8, body_8bit = None, False, False
        for parameter in (match.group(3) or "").split():
            key, _, value = parameter.partition("=")
            key = key.upper()
            if key == "SIZE" and value.isdigit() and len(value) < 20 and self.esmtp:
                size = int(value)
            elif key == "BODY" and value.upper() in ("7BIT", "8BITMIME") and self.esmtp:
                body_8bit = value.upper() == "8BITMIME"
            elif key == "SMTPUTF8" and not value and self.esmtp:
                smtputf8 = True
            elif key == "AUTH" and self.esmtp:
                pass  # RFC 4954 5: the original submitter; nothing to do with it
            else:
                self.error(555, "5.5.4", f"MAIL FROM parameter {key} not recognised")
                return
        if size is not None and size > self.config.server.max_message_size:
            self.reply(552, "5.3.4", f"Message size exceeds fixed maximum message size "
                       f"of {self.config.server.max_message_size} bytes")
            return
        refusal = relay_refusal(self.config, self.client_address, self.user,
                                self._starttls_available())
        if refusal is not None:
            log.warn("inbound client {client}: relaying denied for sender {sender}",
                     client=self.client_address, sender=sender)
            self.refuse(refusal)
            return
        if sender:
            refusal = address_refusal(sender, "sender")
            if refusal is not None:
                log.info("inbound client {client}: sender refused: {reply}",
                         client=self.client_address, reply=str(refusal))
                self.refuse(refusal)
                return
        refusal, account = sender_refusal(self.config, self.client_address, self.user,
                                          sender)
        if refusal is not None or account is None:
            log.warn("inbound client {client} user {user}: sender {sender} refused: "
                     "{reply}", client=self.client_address, sender=sender,
                     user=self.user.name if self.user else None, reply=str(refusal))
            assert refusal is not None
            self.refuse(refusal)
            return
        self.transaction = Transaction(sender, account, size, smtputf8, body_8bit)
        self.reply(250, "2.1.0", "Ok")

    def do_RCPT(self, argument: str) -> None:
        transaction = self.transaction
        if transaction is None:
            self.error(503, "5.5.1", "Need MAIL command first")
            return
        match = _RCPT.match(argument)
        if match is None:
            self.error(501, "5.5.4", "Syntax: RCPT TO:<address>")
            return
        if match.group(3):
            self.error(555, "5.5.4", "RCPT TO parameters not recognised")
            return
        recipient = match.group(1) if match.group(1) is not None else match.group(2)
        # Checked again here although MAIL did: a recipient must never be accepted from
        # a client that may not relay, whatever happened to the session in between.
        refusal = relay_refusal(self.config, self.client_address, self.user,
                                self._starttls_available())
        if refusal is None:
            refusal = address_refusal(recipient, "recipient")
        if refusal is None and recipient.lower() not in (
            r.lower() for r in transaction.recipients
        ):
            refusal = recipient_limit_refusal(self.config, len(transaction.recipients))
        if refusal is not None:
            log.info("inbound client {client}: recipient refused: {reply}",
                     client=self.client_address, reply=str(refusal))
            self.refuse(refusal)
            return
        if recipient.lower() not in (r.lower() for r in transaction.recipients):
            transaction.recipients.append(recipient)
        self.reply(250, "2.1.5", "Ok")

    def do_DATA(self, argument: str) -> None:
        transaction = self.transaction
        if transaction is None:
            self.error(503, "5.5.1", "Need MAIL command first")
            return
        if not transaction.recipients:
            self.error(554, "5.5.1", "No valid recipients")
            return
        if argument:
            self.error(501, "5.5.4", "Syntax: DATA")
            return
        envelope = Envelope(
            sender=transaction.sender,
            recipients=tuple(transaction.recipients),
            client_address=self.client_address,
            client_helo=self.helo or "",
            authenticated_user=self.user.name if self.user else None,
            account=transaction.account.name,
            received_at=time.time(),
            smtputf8=transaction.smtputf8,
            body_8bitmime=transaction.body_8bitmime,
        )
        try:
            transaction.message = self.factory.spool.incoming(envelope)
        except SpoolFull:
            log.warn("inbound message {message} from {client}: spool full",
                     message=transaction.id, client=self.client_address)
            self._drop_transaction("spool full")
            self.reply(452, "4.3.1", "Insufficient system storage")
            return
        except Exception:
            log.failure("inbound message {message}: cannot start spool entry",
                        message=transaction.id)
            self._drop_transaction("spool error")
            self.reply(451, "4.3.0", "Local error in processing, try again later")
            return
        self.state = DATA
        self.reply(354, "", "End data with <CR><LF>.<CR><LF>")
        header = received_header(
            helo=self.helo or "", client_address=self.client_address,
            hostname=self.config.server.hostname,
            keyword=protocol_keyword(self.esmtp, self.tls, self.user is not None,
                                     transaction.smtputf8),
            transaction_id=transaction.id, when=envelope.received_at)
        transaction.pending.append(header)
        transaction.pending_size += len(header)

    # -- DATA --------------------------------------------------------------------

    def _data_line(self, line: Line) -> "Deferred[Any] | None":
        transaction = self.transaction
        assert transaction is not None
        previous_crlf, transaction.previous_crlf = transaction.previous_crlf, line.crlf
        if line.overlong:
            self._refuse_message(552, "5.6.0", "Message refused: a line is longer than "
                                 f"{self.config.server.max_line_length} bytes")
            return None
        if line.crlf and previous_crlf and line.content == b".":
            return self._end_of_data()
        if not line.crlf or b"\r" in line.content:
            transaction.bare_line_ends += 1
        if transaction.refusal is not None:
            return None  # reading to the end of the message, keeping nothing
        data = data_line_bytes(line)
        transaction.received += len(data)
        if transaction.received > self.config.server.max_message_size:
            self._refuse_message(552, "5.3.4", "Message too big; the limit is "
                                 f"{self.config.server.max_message_size} bytes")
            return None
        transaction.pending.append(data)
        transaction.pending_size += len(data)
        if transaction.pending_size >= WRITE_BATCH:
            self._flush()
        return None

    def _flush(self) -> None:
        """Hand the gathered lines to the spool."""
        transaction = self.transaction
        if transaction is None or transaction.message is None or not transaction.pending:
            return
        chunk = b"".join(transaction.pending)
        transaction.pending.clear()
        transaction.pending_size = 0
        try:
            transaction.message.write(chunk)
        except SpoolFull:
            log.warn("inbound message {message} from {client}: spool full while "
                     "receiving", message=transaction.id, client=self.client_address)
            self._refuse_message(452, "4.3.1", "Insufficient system storage")
        except Exception:
            log.failure("inbound message {message}: spool write failed",
                        message=transaction.id)
            self._refuse_message(451, "4.3.0", "Local error in processing, try again "
                                 "later")

    def _refuse_message(self, code: int, enhanced: str, text: str) -> None:
        """Keep reading until the real end of DATA, then refuse; store nothing more."""
        transaction = self.transaction
        assert transaction is not None
        if transaction.refusal is None:
            transaction.refusal = (code, enhanced, text)
            transaction.pending.clear()
            transaction.pending_size = 0
            if transaction.message is not None:
                transaction.message.abort()
                transaction.message = None

    def _end_of_data(self) -> "Deferred[Any] | None":
        transaction = self.transaction
        assert transaction is not None
        self._flush()
        self.state = COMMAND
        self.transaction = None
        if transaction.bare_line_ends:
            log.info("inbound message {message} from {client}: {count} bare CR/LF line "
                     "ends normalised to CRLF", message=transaction.id,
                     client=self.client_address, count=transaction.bare_line_ends)
        if transaction.refusal is not None or transaction.message is None:
            code, enhanced, text = transaction.refusal or (
                451, "4.3.0", "Local error in processing, try again later")
            log.warn("inbound message {message} from {client} sender {sender} refused: "
                     "{code} {enhanced} {text}", message=transaction.id,
                     client=self.client_address, sender=transaction.sender, code=code,
                     enhanced=enhanced, text=text)
            self.reply(code, enhanced, text)
            return None
        message = transaction.message
        transaction.message = None
        d = defer.maybeDeferred(message.commit)
        d.addCallbacks(self._committed, self._commit_failed,
                       callbackArgs=(transaction,), errbackArgs=(transaction, message))
        return d

    def _commit_failed(self, failure: Failure, transaction: Transaction,
                       message: IIncomingMessage) -> None:
        try:
            message.abort()
        except Exception:
            pass  # a failed commit has already removed what it could
        if failure.check(SpoolFull):
            log.warn("inbound message {message} from {client}: spool full at commit",
                     message=transaction.id, client=self.client_address)
            code, enhanced, text = 452, "4.3.1", "Insufficient system storage"
        else:
            log.failure("inbound message {message}: commit failed", failure,
                        message=transaction.id)
            code, enhanced, text = 451, "4.3.0", "Local error in processing, try again later"
        if self.state != CLOSED:
            self.reply(code, enhanced, text)

    def _committed(self, entry_id: str, transaction: Transaction) -> "Deferred[Any] | None":
        log.info("inbound message {message} queued as {entry} from {client} sender "
                 "{sender} user {user} account {account} recipients {count} size {size}",
                 message=transaction.id, entry=entry_id, client=self.client_address,
                 sender=transaction.sender, user=self.user.name if self.user else None,
                 account=transaction.account.name, count=len(transaction.recipients),
                 size=transaction.received)
        if not self.factory.listener.pass_through:
            if self.state != CLOSED:
                self.reply(250, "2.0.0", f"Ok: queued as {entry_id}")
            self._submit(entry_id)
            return None
        d = defer.maybeDeferred(self.factory.delivery.deliver_now, entry_id)

        def answered(result: DeliveryResult) -> None:
            code, enhanced, text = pass_through_reply(result, entry_id)
            log.info("inbound message {message} entry {entry} pass-through upstream "
                     "reply: {code} {enhanced} {text}", message=transaction.id,
                     entry=entry_id, code=code, enhanced=enhanced, text=text)
            if self.state != CLOSED:
                self.reply(code, enhanced, text)

        def failed(failure: Failure) -> None:
            # The entry is safely queued; the delivery engine retries it as usual.
            log.failure("inbound message {message} entry {entry}: pass-through delivery "
                        "failed; left queued", failure, message=transaction.id,
                        entry=entry_id)
            if self.state != CLOSED:
                self.reply(250, "2.0.0", f"Ok: queued as {entry_id}")
            self._submit(entry_id)

        return d.addCallbacks(answered, failed)

    def _submit(self, entry_id: str) -> None:
        """
        Wake the delivery engine.  The message is already durable and acknowledged, so
        a failure here must not turn into an error reply (the client would send the
        message again); the spool's own scan finds the entry anyway.
        """
        try:
            self.factory.delivery.submitted(entry_id)
        except Exception:
            log.failure("inbound: delivery.submitted({entry}) failed; the entry stays "
                        "queued", entry=entry_id)

    def _drop_transaction(self, why: str) -> None:
        transaction, self.transaction = self.transaction, None
        if self.state == DATA:
            self.state = COMMAND
        if transaction is not None and transaction.message is not None:
            log.info("inbound message {message} from {client} abandoned: {why}",
                     message=transaction.id, client=self.client_address, why=why)
            transaction.message.abort()
            transaction.message = None


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


def defer_later(clock: Any, delay: float, value: Any) -> "Deferred[Any]":
    """Fire with C{value} after C{delay} seconds of C{clock}."""
    d: Deferred[Any] = Deferred()
    clock.callLater(delay, d.callback, value)
    return d
