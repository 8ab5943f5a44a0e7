"""
The sandbox's SMTP submission server as SMTP: a plain C{LineReceiver} that reads
commands, SASL exchanges, DATA and BDAT chunks, speaks STARTTLS, and writes the replies
that L{xrelay.sandbox.exchangerules} chooses (Exchange Online's C{smtp.office365.com:587}
or, with C{flavor="gmail"}, C{smtp.gmail.com:587}).  L{ExchangeServer} is the rules with
the open connections, the one object the sandbox hands out; the names of
L{xrelay.sandbox.exchangerules} stay importable from here.

It is written as a plain C{LineReceiver} rather than on C{twisted.mail} so that every
byte it sends is the one Exchange sends, and so that importing it never installs a
reactor.  It decides nothing itself: who may authenticate, send as whom, and which reply
comes are the rules' answers.  It must never record a token: AUTH payloads are redacted
in transcripts.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.utils
import re
import uuid
from email import policy as email_policy
from typing import Callable

import attrs
from twisted.internet import defer
from twisted.internet.protocol import ServerFactory
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin

from .exchangerules import (
    PROVIDER_REPLIES, SEND_AS_DIAGNOSTIC, STEPS, ExchangeRules, Injection, Session, Transcript,
)
from xrelay.streams import IStreamTransport

__all__ = [
    "PROVIDER_REPLIES", "SEND_AS_DIAGNOSTIC", "STEPS", "ExchangeFactory", "ExchangeRules", "ExchangeSMTP",
    "ExchangeServer", "Injection", "Session", "Transcript",
]

_MAIL = re.compile(r"^MAIL\s+FROM:\s*<([^<>]*)>\s*(.*)$", re.IGNORECASE)
_RCPT = re.compile(r"^RCPT\s+TO:\s*<([^<>]*)>\s*(.*)$", re.IGNORECASE)


@attrs.define
class ExchangeServer(ExchangeRules):
    """
    The SMTP server: the state and rules of L{ExchangeRules} (every test switch is
    there) with its open connections; L{factory} makes the protocol factory.
    """

    protocols: set["ExchangeSMTP"] = attrs.field(factory=set, repr=False)

    def concurrent_sessions(self, mailbox: str) -> int:
        return sum(1 for p in self.protocols if p.session is not None and p.session.mailbox.lower() == mailbox.lower())

    def factory(self) -> "ExchangeFactory":
        return ExchangeFactory(self)

    def close_connections(self) -> defer.Deferred[None]:
        """Abort every open connection; fires once they are all gone."""
        waiting = []
        for protocol in list(self.protocols):
            d: defer.Deferred[None] = defer.Deferred()
            protocol.on_close.append(d)
            waiting.append(d)
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        return defer.gatherResults(waiting).addCallback(lambda _: None)


class ExchangeFactory(ServerFactory):

    #: One log line per connection is enough; "Starting factory" twice is noise.
    noisy = False
    def __init__(self, server: ExchangeServer) -> None:
        self.server = server

    def buildProtocol(self, addr: object) -> "ExchangeSMTP":
        protocol = ExchangeSMTP(self.server)
        protocol.factory = self
        return protocol


class ExchangeSMTP(LineReceiver, TimeoutMixin):
    """One SMTP connection.  State: greeting → (EHLO) → TLS → AUTH → MAIL → RCPT → DATA."""

    delimiter = b"\r\n"
    MAX_LENGTH = 64 * 1024 * 1024
    COMMAND_MAX = 2048
    transport: IStreamTransport  # connected over TCP for its whole life (xrelay.streams)

    def __init__(self, server: ExchangeServer) -> None:
        self.server = server
        self.transcript: Transcript | None = None
        self.session: Session | None = None
        self.ehlo: str | None = None
        self.tls = False
        self.mail_from: str | None = None
        self.rcpt_to: list[str] = []
        self.receiving = False
        self.data: list[bytes] = []
        self.data_size = 0
        self.continuation: Callable[[str], None] | None = None
        self.bdat_remaining = 0
        self.bdat_last = False
        self.bdat_failed: str | None = None
        self.on_close: list[defer.Deferred[None]] = []
        self.closing = False

    # -- plumbing --------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.server.protocols.add(self)
        peer = self.transport.getPeer()
        self.transcript = Transcript(len(self.server.transcripts) + 1, getattr(peer, "host", str(peer)))
        self.server.transcripts.append(self.transcript)
        self.setTimeout(self.server.idle_timeout)
        if self.server.down:
            self.closing = True
            self.transport.abortConnection()
            return
        if self._inject("CONNECT"):
            return
        self.reply(self.server.banner())

    def connectionLost(self, reason: object = None) -> None:
        self.setTimeout(None)
        self.server.protocols.discard(self)
        if self.transcript is not None:
            self.transcript.closed = True
        waiting, self.on_close = self.on_close, []
        for d in waiting:
            d.callback(None)

    def timeoutConnection(self) -> None:
        self.reply("421 4.4.1 Connection timed out. Total session duration: 00:10:00.0000000")
        self.transport.loseConnection()

    def reply(self, text: str) -> None:
        if self.closing:
            return
        for line in text.split("\r\n"):
            assert self.transcript is not None
            self.transcript.lines.append(("S", line))
        self.transport.write(text.encode("utf-8") + b"\r\n")

    def close_with(self, text: str) -> None:
        self.reply(text)
        self.closing = True
        self.transport.loseConnection()

    def record(self, text: str) -> None:
        assert self.transcript is not None
        self.transcript.lines.append(("C", text))

    def _inject(self, step: str, recipient: str | None = None) -> bool:
        """Apply a queued failure for this step; True when it took the step's place."""
        injection = self.server.take_injection(step, recipient)
        if injection is None:
            return False
        if injection.reply is None:
            self.closing = True
            self.transport.abortConnection()
        elif injection.reply.startswith("421") or step == "CONNECT" and injection.reply[:1] in "45":
            self.close_with(injection.reply)
        else:
            self.reply(injection.reply)
        return True

    def lineLengthExceeded(self, line: bytes) -> None:
        self.close_with("500 5.5.2 Line too long")

    def rawDataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if self.closing:
            return
        if self.data_size == 0 and self._inject("DATA_BODY"):
            return  # dropped in the middle of the first chunk
        chunk, rest = data[: self.bdat_remaining], data[self.bdat_remaining :]
        self.bdat_remaining -= len(chunk)
        self.data_size += len(chunk)
        if self.data_size <= self.server.max_message_size:
            self.data.append(chunk)
        if self.bdat_remaining == 0:
            self.setLineMode(rest)
            self.bdat_chunk_done()

    def lineReceived(self, raw: bytes) -> None:
        self.resetTimeout()
        if self.closing:
            return
        if self.receiving:
            self.data_line(raw)
            return
        line = raw.decode("utf-8", "replace")
        if self.continuation is not None:
            self.record("<redacted>")
            handler, self.continuation = self.continuation, None
            handler(line)
            return
        if len(raw) > self.COMMAND_MAX:
            self.record(line[:80] + "...")
            self.reply("500 5.5.2 Line too long")
            return
        verb = line.split(" ", 1)[0].upper()
        self.record(self._redacted(verb, line))
        command = getattr(self, "smtp_" + verb, None)
        if command is None:
            self.reply(f"500 5.3.3 Unrecognized command '{line.split(' ', 1)[0][:40]}'")
            return
        command(line[len(verb) :].strip())

    @staticmethod
    def _redacted(verb: str, line: str) -> str:
        if verb == "AUTH":
            parts = line.split()
            return " ".join(parts[:2] + (["<redacted>"] if len(parts) > 2 else []))
        return line

    def reset_transaction(self) -> None:
        self.mail_from = None
        self.rcpt_to = []
        self.data = []
        self.data_size = 0
        self.receiving = False
        self.bdat_failed = None

    # -- commands --------------------------------------------------------------------

    def _greeted(self, argument: str) -> str | None:
        """EHLO and HELO alike: the client's peer address once the greeting is taken."""
        if self._inject("EHLO"):
            return None
        if not argument:
            self.reply("501 5.5.4 Invalid domain name")
            return None
        self.ehlo = argument
        self.reset_transaction()
        return self.transcript.peer if self.transcript else ""

    def smtp_EHLO(self, argument: str) -> None:
        peer = self._greeted(argument)
        if peer is not None:
            self.reply("\r\n".join(self.server.ehlo_lines(argument, peer, self.tls)))

    def smtp_HELO(self, argument: str) -> None:
        peer = self._greeted(argument)
        if peer is not None:
            self.reply(f"250 {self.server.hostname} Hello [{peer}]")

    def smtp_STARTTLS(self, argument: str) -> None:
        if self._inject("STARTTLS"):
            return
        if self.tls:
            self.reply("503 5.5.1 Bad sequence of commands" if self.server.flavor == "gmail" else "554 5.7.3 Unable to initialize security subsystem")
            return
        self.reply("220 2.0.0 Ready to start TLS" if self.server.flavor == "gmail" else "220 2.0.0 SMTP server ready")
        # Anything pipelined after STARTTLS arrived in clear text: discard it
        # (the CVE-2011-0411 command-injection defence every real server has).
        self.clearLineBuffer()
        self.transport.startTLS(self.server.tls_options)
        self.tls = True
        self.ehlo = None
        self.reset_transaction()
        if self.transcript is not None:
            self.transcript.tls = True

    def smtp_AUTH(self, argument: str) -> None:
        if self._inject("AUTH"):
            return
        if self.ehlo is None:
            self.reply("503 5.5.2 Send hello first")
            return
        if not self.tls:
            self.reply(f"504 5.7.4 Unrecognized authentication type [{self.server.hostname}]")
            return
        if self.session is not None:
            self.reply("503 5.5.2 Already authenticated")
            return
        parts = argument.split()
        mechanism = parts[0].upper() if parts else ""
        initial = parts[1] if len(parts) > 1 else None
        if mechanism == "XOAUTH2":
            if initial is None:
                self.continuation = self._xoauth2
                self.reply("334 ")
            else:
                self._xoauth2(initial)
        elif mechanism in ("LOGIN", "PLAIN") and (mechanism == "LOGIN" or self.server.flavor == "gmail"):
            if mechanism == "LOGIN" and initial is None:
                self.continuation = lambda _user: self._ask_password()
                self.reply("334 VXNlcm5hbWU6")
            elif mechanism == "LOGIN":
                self._ask_password()
            else:
                self.reply(self.server.basic_auth_disabled())
        else:
            self.reply(f"504 5.7.4 Unrecognized authentication type [{self.server.hostname}]")

    def _ask_password(self) -> None:
        self.continuation = lambda _password: self.reply(self.server.basic_auth_disabled())
        self.reply("334 UGFzc3dvcmQ6")

    def _xoauth2(self, payload: str) -> None:
        if payload == "*":
            self.reply("501 5.0.0 Authentication cancelled")
            return
        session = None
        try:
            decoded = base64.b64decode(payload, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            decoded = ""
        fields = dict(part.split("=", 1) for part in decoded.split("\x01") if "=" in part)
        user = fields.get("user", "")
        auth = fields.get("auth", "")
        if decoded.endswith("\x01\x01") and auth.startswith("Bearer ") and user:
            session = self.server.authenticate_xoauth2(user, auth[len("Bearer ") :])
        if session is None:
            if self.server.flavor == "gmail":
                challenge = base64.b64encode(b'{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}').decode()
                self.continuation = lambda _empty: self.reply(self.server.auth_failed())
                self.reply(f"334 {challenge}")
            else:
                self.reply(self.server.auth_failed())
            return
        switched = self.server.mailbox_reply(session.mailbox, "AUTH")
        if switched is not None:
            self.reply(switched)
            return
        self.session = session
        if self.transcript is not None:
            self.transcript.mailbox = session.mailbox
            self.transcript.auth_mechanism = "XOAUTH2"
        self.reply("235 2.7.0 Accepted" if self.server.flavor == "gmail" else "235 2.7.0 Authentication successful")

    def smtp_MAIL(self, argument: str) -> None:
        if self._inject("MAIL"):
            return
        if self.ehlo is None:
            self.reply("503 5.5.2 Send hello first")
            return
        if self.session is None:
            self.reply(self.server.not_authenticated())
            return
        if self.mail_from is not None:
            self.reply("503 5.5.2 Sender already specified")
            return
        switched = self.server.mailbox_reply(self.session.mailbox, "MAIL")
        if switched is not None:
            if switched.startswith("421"):
                self.close_with(switched)
            else:
                self.reply(switched)
            return
        match = _MAIL.match("MAIL " + argument)
        if match is None:
            self.reply("501 5.5.4 Invalid arguments")
            return
        sender, params = match.group(1), match.group(2).split()
        for param in params:
            key, _, value = param.partition("=")
            if key.upper() == "SIZE" and value.isdigit() and int(value) > self.server.max_message_size:
                self.reply(self.server.too_big())
                return
        if self.server.max_concurrent_connections and self.server.concurrent_sessions(self.session.mailbox) > self.server.max_concurrent_connections:
            self.reply(self.server.thread_limit())
            return
        if self.server.over_rate(self.session.mailbox):
            self.close_with(self.server.rate_exceeded())
            return
        self.mail_from = sender
        self.reply("250 2.1.0 OK" if self.server.flavor == "gmail" else "250 2.1.0 Sender OK")

    def smtp_RCPT(self, argument: str) -> None:
        match = _RCPT.match("RCPT " + argument)
        recipient = match.group(1) if match else None
        if self._inject("RCPT", recipient):
            return
        if self.mail_from is None:
            self.reply("503 5.5.2 Need mail command")
            return
        if match is None or not recipient or "@" not in recipient:
            self.reply("501 5.1.3 Invalid address")
            return
        if len(self.rcpt_to) >= self.server.max_recipients:
            self.reply(self.server.too_many_recipients())
            return
        rejected = self.server.rejected_recipients.get(recipient.lower()) or (
            self.server.mailbox_reply(self.session.mailbox if self.session else None, "RCPT"))
        if rejected is not None:
            self.reply(rejected)
            return
        self.rcpt_to.append(recipient)
        self.reply("250 2.1.5 OK" if self.server.flavor == "gmail" else "250 2.1.5 Recipient OK")

    def smtp_DATA(self, argument: str) -> None:
        if self._inject("DATA"):
            return
        if self.mail_from is None:
            self.reply("503 5.5.2 Need mail command")
            return
        if not self.rcpt_to:
            self.reply("503 5.5.2 Need rcpt command")
            return
        self.receiving = True
        self.data = []
        self.data_size = 0
        self.reply("354 Go ahead" if self.server.flavor == "gmail" else "354 Start mail input; end with <CRLF>.<CRLF>")

    def data_line(self, raw: bytes) -> None:
        if raw == b".":
            self.receiving = False
            self.record(f"<data: {self.data_size} bytes>")
            self.record(".")
            self.end_of_data()
            return
        if self.data_size == 0 and self._inject("DATA_BODY"):
            return
        if raw.startswith(b"."):
            raw = raw[1:]
        self.data_size += len(raw) + 2
        if self.data_size <= self.server.max_message_size:
            self.data.append(raw + b"\r\n")

    def smtp_BDAT(self, argument: str) -> None:
        parts = argument.split()
        if not parts or not parts[0].isdigit() or len(parts) > 2 or (len(parts) == 2 and parts[1].upper() != "LAST"):
            self.reply("501 5.5.4 Invalid arguments")
            return
        size = int(parts[0])
        self.bdat_last = len(parts) == 2
        if self.mail_from is None or not self.rcpt_to:
            # The chunk must still be read so the stream stays in sync.
            self.bdat_failed = "503 5.5.2 Need rcpt command" if self.mail_from else "503 5.5.2 Need mail command"
        self.bdat_remaining = size
        if size == 0:
            self.bdat_chunk_done()
        else:
            self.setRawMode()

    def bdat_chunk_done(self) -> None:
        size_text = f"<data: {self.data_size} bytes>"
        if self.bdat_failed is not None:
            failed, self.bdat_failed = self.bdat_failed, None
            self.reply(failed)
            return
        if not self.bdat_last:
            self.reply(f"250 2.0.0 {self.data_size} bytes received" if self.server.flavor != "gmail" else "250 2.0.0 BDAT ok")
            return
        self.record(size_text)
        self.end_of_data()

    def end_of_data(self) -> None:
        session = self.session
        assert session is not None and self.mail_from is not None
        if self._inject("END_OF_DATA"):
            self.reset_transaction()
            return
        switched = self.server.mailbox_reply(session.mailbox, "END_OF_DATA")
        if switched is not None:
            self.reply(switched)
            self.reset_transaction()
            return
        if self.data_size > self.server.max_message_size:
            self.reply(self.server.too_big())
            self.reset_transaction()
            return
        data = b"".join(self.data)
        headers = email.parser.BytesHeaderParser(policy=email_policy.compat32).parsebytes(data)
        senders = [self.mail_from]
        if self.server.check_from_header:
            senders += [address for _, address in email.utils.getaddresses(headers.get_all("From", [])) if address]
        for sender in senders:
            if not self.server.may_send_as(session, sender):
                self.reply(self.server.send_as_denied(session.mailbox, sender or "<>"))
                self.reset_transaction()
                return
        message_id = (headers.get("Message-ID") or "").strip() or f"<{uuid.uuid4()}@{self.server.backend_hostname}>"
        internal_id = self.server.accepted(session.mailbox)
        self.server.mailbox.deliver(
            self.mail_from, tuple(self.rcpt_to), data, session.mailbox, session.mechanism,
            self.transcript.number if self.transcript else 0, "smtp", message_id,
        )
        self.reset_transaction()
        if self._inject("AFTER_QUEUED"):
            return
        self.reply(self.server.queued(message_id, internal_id))

    def smtp_RSET(self, argument: str) -> None:
        if self._inject("RSET"):
            return
        self.reset_transaction()
        self.reply("250 2.0.0 Resetting" if self.server.flavor != "gmail" else "250 2.1.5 Flushed")

    def smtp_NOOP(self, argument: str) -> None:
        self.reply("250 2.0.0 OK")

    def smtp_VRFY(self, argument: str) -> None:
        self.reply("252 2.1.5 Cannot VRFY user")

    def smtp_QUIT(self, argument: str) -> None:
        if self._inject("QUIT"):
            return
        self.close_with("221 2.0.0 closing connection" if self.server.flavor == "gmail" else "221 2.0.0 Service closing transmission channel")
