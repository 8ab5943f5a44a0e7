"""
An SMTP submission server that behaves like Exchange Online's C{smtp.office365.com:587}
(or, with C{flavor="gmail"}, like C{smtp.gmail.com:587}): the banner and EHLO keywords,
STARTTLS before AUTH, SASL XOAUTH2 checked against tokens the sandbox identity platform
issued, Send As rules, sending limits and the real reply texts; plus switches that make
it fail on purpose (L{ExchangeServer.fail_next}, L{ExchangeServer.drop_next}).

It is written as a plain C{LineReceiver} rather than on C{twisted.mail} so that every
byte it sends is the one Exchange sends, and so that importing it never installs a
reactor.  It must never record a token: AUTH payloads are redacted in transcripts.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.utils
import fnmatch
import re
import time
import uuid
from email import policy as email_policy
from typing import Callable

import attrs
from twisted.internet import defer, ssl
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin

from .identity import OUTLOOK_RESOURCES, IdentityPlatform
from .mailbox import Mailbox
from xrelay.streams import IStreamTransport

#: The points of a session at which a reply can be injected or the connection dropped.
#: C{DATA_BODY} is in the middle of the message data; C{AFTER_QUEUED} is after the message
#: was stored but before the 250 was sent (the client cannot know it was accepted).
STEPS = ("CONNECT", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "DATA_BODY", "END_OF_DATA", "AFTER_QUEUED", "RSET", "QUIT")

_MAIL = re.compile(r"^MAIL\s+FROM:\s*<([^<>]*)>\s*(.*)$", re.IGNORECASE)
_RCPT = re.compile(r"^RCPT\s+TO:\s*<([^<>]*)>\s*(.*)$", re.IGNORECASE)

#: What Exchange prints in its diagnostic text, after the banner host.
SEND_AS_DIAGNOSTIC = (
    "0.35250:0A00C384, 1.36674:0A000000, 1.61250:00000000, 1.45378:02000000, 1.44866:C4000000, "
    "1.36674:0A000000, 1.61250:00000000, 1.45378:C9000000, 1.44866:00000000, 16.55847:4C070000, "
    "20.52176:140F139D0F0010100A000000, 20.50032:140F139D7F17000000000000, 0.35180:0A000000, "
    "255.23226:00000000, 255.27962:0A000000, 255.27962:0E000000, 255.31418:0A00C384, 0.35250:0A000000"
)


#: Replies Exchange Online and Gmail give when the account (not the message) is in
#: trouble, by name, with the step at which they come; for L{ExchangeServer.answer_as}.
#: The texts and their sources are those of L{xrelay.replies.KNOWN_REPLIES}.
PROVIDER_REPLIES: dict[str, tuple[str, str]] = {
    "outbound-spam": ("END_OF_DATA", "554 5.2.0 STOREDRV.Submission.Exception:OutboundSpamException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]WASCL UserAction verdict is not None. Actual verdict is Suspend, ShowTierUpgrade. OutboundSpamException: WASCL UserAction verdict is not None. Actual verdict is Suspend, ShowTierUpgrade.[EndDiagnosticData] [Hostname=SB1PR01MB0001.sandbox.prod.outlook.com]"),
    "bad-outbound-sender": ("MAIL", "550 5.1.8 Access denied, bad outbound sender"),
    "tenant-blocked": ("MAIL", "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP. For more information please go to http://go.microsoft.com/fwlink/?LinkId=526653 AS(7230) [SB1PR01MB0001.sandbox.prod.outlook.com]"),
    "smtp-auth-tenant": ("AUTH", "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."),
    "smtp-auth-mailbox": ("AUTH", "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information."),
    "smtp-auth-security-defaults": ("AUTH", "535 5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults policy. Contact your administrator."),
    "send-as-5.7.60": ("END_OF_DATA", "550 5.7.60 SMTP; Client does not have permissions to send as this sender [SB1PR01MB0001.sandbox.prod.outlook.com]"),
    "external-forwarding": ("RCPT", "550 5.7.520 Access denied, Your organization does not allow external forwarding. Please contact your administrator for further assistance. AS(7555)"),
    "tenant-external-recipient-limit": ("MAIL", "550 5.7.233 Your message can't be sent because your tenant exceeded its daily limit for sending email to external recipients"),
    "insufficient-resources": ("MAIL", "452 4.3.1 Insufficient system resources"),
    "server-busy": ("MAIL", "451 4.7.500 Server busy. Please try again later from [127.0.0.1]. (AS761) [SB1PR01CA0001.outlook.office365.com]"),
    "thread-limit": ("MAIL", "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"),
    "submission-rate": ("MAIL", "421 4.4.2 Message submission rate for this client has exceeded the configured limit"),
    "too-big": ("END_OF_DATA", "552 5.3.4 Message size exceeds fixed maximum message size"),
    "gmail-bad-credentials": ("AUTH", "535-5.7.8 Username and Password not accepted. For more information, go to\r\n535 5.7.8  https://support.google.com/mail/?p=BadCredentials - gsmtp"),
    "gmail-app-password": ("AUTH", "534-5.7.9 Application-specific password required. Learn more at\r\n534 5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor - gsmtp"),
    "gmail-auth-temporary": ("AUTH", "454 4.7.0 Too many login attempts, please try again later. - gsmtp"),
    "gmail-try-later": ("MAIL", "421-4.7.0 Try again later, closing connection.\r\n421 4.7.0  - gsmtp"),
    "gmail-daily-limit": ("MAIL", "550-5.4.5 Daily user sending limit exceeded. For more information on Gmail\r\n550 5.4.5 sending limits go to https://support.google.com/a/answer/166852 - gsmtp"),
    "recipient-over-quota": ("RCPT", "552-5.2.2 The email account that you tried to reach is over quota.\r\n552 5.2.2  - gsmtp"),
}


def _matches(pattern: str, address: str) -> bool:
    return fnmatch.fnmatchcase(address.lower(), pattern.lower())


@attrs.define
class Transcript:
    """
    One SMTP connection as the server saw it: C{lines} is every command (C{"C"}) and
    reply line (C{"S"}) in order, with AUTH payloads replaced by C{<redacted>} and message
    data summarised as C{<data: N bytes>}.
    """

    number: int
    peer: str
    lines: list[tuple[str, str]] = attrs.field(factory=list)
    tls: bool = False
    mailbox: str | None = None
    auth_mechanism: str | None = None
    closed: bool = False

    @property
    def commands(self) -> list[str]:
        return [text for who, text in self.lines if who == "C"]

    @property
    def replies(self) -> list[str]:
        return [text for who, text in self.lines if who == "S"]

    @property
    def auth_count(self) -> int:
        return sum(1 for c in self.commands if c.upper().startswith("AUTH"))

    @property
    def messages_accepted(self) -> int:
        return sum(1 for r in self.replies if r.startswith("250 2.6.0") or r.startswith("250 2.0.0 OK"))


@attrs.frozen
class Injection:
    step: str
    reply: str | None  # None: drop the connection
    recipient: str | None = None


@attrs.frozen
class Session:
    """Who authenticated on a connection: the mailbox, and the app for app-only tokens."""

    mailbox: str
    mechanism: str
    client_id: str | None
    app_only: bool


@attrs.define
class ExchangeServer:
    """
    The state and rules of the SMTP server; L{factory} makes the protocol factory.

    Switches for tests: L{fail_next}, L{drop_next}, L{reject_recipient},
    L{messages_per_minute} (0 = off), L{max_message_size}, L{max_recipients},
    L{max_concurrent_connections} (0 = off).
    """

    identity: IdentityPlatform
    mailbox: Mailbox
    tls_options: ssl.CertificateOptions = attrs.field(repr=False)
    clock: IReactorTime = attrs.field(repr=False)
    flavor: str = "exchange"
    hostname: str = attrs.field(default=attrs.Factory(lambda self: "smtp.gmail.com" if self.flavor == "gmail" else "SB1PR01CA0001.outlook.office365.com", takes_self=True))
    #: The host named in diagnostic texts ([Hostname=...]), a mailbox server in Exchange.
    backend_hostname: str = "SB1PR01MB0001.sandbox.prod.outlook.com"
    max_message_size: int = attrs.field(default=attrs.Factory(lambda self: 35882577 if self.flavor == "gmail" else 157286400, takes_self=True))
    max_recipients: int = attrs.field(default=attrs.Factory(lambda self: 100 if self.flavor == "gmail" else 500, takes_self=True))
    messages_per_minute: int = attrs.field(default=attrs.Factory(lambda self: 0 if self.flavor == "gmail" else 30, takes_self=True))
    max_concurrent_connections: int = attrs.field(default=attrs.Factory(lambda self: 0 if self.flavor == "gmail" else 3, takes_self=True))
    #: Check the From: header as well as MAIL FROM against Send As grants.
    check_from_header: bool = True
    idle_timeout: float = 600.0
    send_as: dict[str, list[str]] = attrs.field(factory=dict)
    app_mailboxes: dict[str, dict[str, bool]] = attrs.field(factory=dict)
    #: RBAC for Applications: (client id, role such as "Application SMTP.SendAsApp") ->
    #: the mailboxes its management scope covers; additive to the Entra consent.
    rbac_mailboxes: dict[tuple[str, str], set[str]] = attrs.field(factory=dict)
    rejected_recipients: dict[str, str] = attrs.field(factory=dict)
    transcripts: list[Transcript] = attrs.field(factory=list)
    _injections: list[Injection] = attrs.field(factory=list)
    #: mailbox -> (step, reply): every session of that mailbox gets it (L{answer_as}).
    mailbox_replies: dict[str, tuple[str, str]] = attrs.field(factory=dict)
    #: The upstream is down: every connection is dropped before the banner.
    down: bool = False
    _sent: dict[str, list[float]] = attrs.field(factory=dict)
    _internal_id: int = 10000
    protocols: set["ExchangeSMTP"] = attrs.field(factory=set, repr=False)
    #: Offer CHUNKING (BDAT, RFC 3030) as both real services do; off to test DATA.
    chunking: bool = True

    # -- configuration by tests ------------------------------------------------------

    @property
    def connections_count(self) -> int:
        """How many connections were made so far (open or closed)."""
        return len(self.transcripts)

    def grant_send_as(self, mailbox: str, sender_pattern: str) -> None:
        """Let C{mailbox} send as addresses matching C{sender_pattern} (C{*@example.com})."""
        self.send_as.setdefault(mailbox.lower(), []).append(sender_pattern)

    def grant_app_mailbox(self, client_id: str, mailbox: str, send_as_anyone: bool = False) -> None:
        """
        Let app C{client_id} authenticate app-only as C{mailbox} (Exchange's
        service principal + FullAccess), optionally with Send As for any sender.
        """
        self.app_mailboxes.setdefault(client_id, {})[mailbox.lower()] = send_as_anyone

    def grant_app_role(self, client_id: str, role: str, mailbox: str) -> None:
        """RBAC for Applications: app C{client_id} holds Exchange C{role} over C{mailbox}."""
        self.rbac_mailboxes.setdefault((client_id, role), set()).add(mailbox.lower())

    def holds_app_role(self, client_id: str | None, role: str, mailbox: str) -> bool:
        return client_id is not None and mailbox.lower() in self.rbac_mailboxes.get((client_id, role), set())

    def fail_next(self, command: str, reply_line: str, recipient: str | None = None) -> None:
        """
        Answer the next C{command} (a L{STEPS} name; C{"."} means END_OF_DATA) with
        C{reply_line} instead; a C{421} reply also closes the connection.  For RCPT,
        C{recipient} limits it to that address.
        """
        self._injections.append(Injection(self._step(command), reply_line, recipient))

    def drop_next(self, step: str) -> None:
        """Drop the connection (no reply) at the next C{step}, e.g. C{"DATA_BODY"}."""
        self._injections.append(Injection(self._step(step), None))

    def answer_as(self, mailbox: str, name: str | None) -> None:
        """
        From now on every session of C{mailbox} gets the provider reply named C{name}
        (a L{PROVIDER_REPLIES} key) at its step, until C{answer_as(mailbox, None)}.
        """
        if name is None:
            self.mailbox_replies.pop(mailbox.lower(), None)
        else:
            self.mailbox_replies[mailbox.lower()] = PROVIDER_REPLIES[name]

    def mailbox_reply(self, mailbox: str | None, step: str) -> str | None:
        found = self.mailbox_replies.get((mailbox or "").lower())
        return found[1] if found is not None and found[0] == step else None

    def reject_recipient(self, address: str, reply_line: str = "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup") -> None:
        """Every RCPT TO this address gets C{reply_line} (until removed from L{rejected_recipients})."""
        self.rejected_recipients[address.lower()] = reply_line

    @staticmethod
    def _step(command: str) -> str:
        step = command.upper().strip()
        step = {".": "END_OF_DATA", "HELO": "EHLO", "MAIL FROM": "MAIL", "RCPT TO": "RCPT", "END-OF-DATA": "END_OF_DATA", "MID-DATA": "DATA_BODY"}.get(step, step)
        if step not in STEPS:
            raise ValueError(f"unknown SMTP step {command!r}; one of {STEPS}")
        return step

    def take_injection(self, step: str, recipient: str | None = None) -> Injection | None:
        for i, injection in enumerate(self._injections):
            if injection.step == step and (injection.recipient is None or (recipient or "").lower() == injection.recipient.lower()):
                return self._injections.pop(i)
        return None

    # -- rules -----------------------------------------------------------------------

    def authenticate_xoauth2(self, user: str, token: str) -> Session | None:
        """
        The session if C{token} lets C{user} submit mail here: issued by the sandbox,
        unexpired, for Exchange (or Gmail), and for that mailbox.
        """
        if self.flavor == "gmail":
            record = self.identity.google.check_access_token(token)
            if record is None or record.email.lower() != user.lower() or "https://mail.google.com/" not in record.scope.split():
                return None
            return Session(record.email, "XOAUTH2", record.client_id, False)
        access = self.identity.check_access_token(token)
        if access is None or access.audience not in OUTLOOK_RESOURCES:
            return None
        if access.app_only:
            # Entra consent (SMTP.SendAsApp) plus Exchange's service principal and mailbox
            # permission, or an RBAC for Applications assignment covering the mailbox.
            consented = "SMTP.SendAsApp" in access.permissions and user.lower() in self.app_mailboxes.get(access.client_id, {})
            if not consented and not self.holds_app_role(access.client_id, "Application SMTP.SendAsApp", user):
                return None
            return Session(user, "XOAUTH2", access.client_id, True)
        if "SMTP.Send" not in access.permissions or (access.upn or "").lower() != user.lower():
            return None
        return Session(access.upn or user, "XOAUTH2", access.client_id, False)

    def may_send_as(self, session: Session, sender: str) -> bool:
        if self.flavor == "gmail":
            return True  # Gmail rewrites From instead of refusing
        if sender.lower() == session.mailbox.lower():
            return True
        if session.app_only and session.client_id is not None:
            if self.app_mailboxes.get(session.client_id, {}).get(session.mailbox.lower()):
                return True
        return any(_matches(p, sender) for p in self.send_as.get(session.mailbox.lower(), ()))

    def over_rate(self, mailbox: str) -> bool:
        if not self.messages_per_minute:
            return False
        now = self.clock.seconds()
        recent = [t for t in self._sent.get(mailbox.lower(), []) if t > now - 60]
        self._sent[mailbox.lower()] = recent
        return len(recent) >= self.messages_per_minute

    def concurrent_sessions(self, mailbox: str) -> int:
        return sum(1 for p in self.protocols if p.session is not None and p.session.mailbox.lower() == mailbox.lower())

    def accepted(self, mailbox: str) -> int:
        self._sent.setdefault(mailbox.lower(), []).append(self.clock.seconds())
        self._internal_id += 1
        return self._internal_id

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

    # -- reply texts -----------------------------------------------------------------

    def banner(self) -> str:
        if self.flavor == "gmail":
            return f"220 {self.hostname} ESMTP {uuid.uuid4().hex[:22]} - gsmtp"
        return f"220 {self.hostname} Microsoft ESMTP MAIL Service ready at {email.utils.formatdate(time.time())}"

    def ehlo_lines(self, client: str, peer: str, tls: bool) -> list[str]:
        if self.flavor == "gmail":
            head = f"{self.hostname} at your service, [{peer}]"
            keywords = [f"SIZE {self.max_message_size}", "8BITMIME"]
            keywords += ["AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH"] if tls else ["STARTTLS"]
            keywords += ["ENHANCEDSTATUSCODES", "PIPELINING", "CHUNKING", "SMTPUTF8"]
        else:
            head = f"{self.hostname} Hello [{peer}]"
            keywords = [f"SIZE {self.max_message_size}", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES"]
            keywords += ["AUTH LOGIN XOAUTH2"] if tls else ["STARTTLS"]
            keywords += ["8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8"]
        # Both lists as the real services print them after STARTTLS, CHUNKING included:
        # smtp.office365.com https://github.com/simonrob/email-oauth2-proxy/issues/95,
        # smtp.gmail.com (and its BDAT LAST reply) https://github.com/kisli/vmime/issues/110
        lines = [head] + [k for k in keywords if self.chunking or k != "CHUNKING"]
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    def auth_failed(self) -> str:
        if self.flavor == "gmail":
            return "535-5.7.8 Username and Password not accepted. For more information, go to\r\n535 5.7.8  https://support.google.com/mail/?p=BadCredentials - gsmtp"
        return f"535 5.7.3 Authentication unsuccessful [{self.hostname}]"

    def basic_auth_disabled(self) -> str:
        if self.flavor == "gmail":
            return "534-5.7.9 Application-specific password required. Learn more at\r\n534 5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor - gsmtp"
        return f"535 5.7.139 Authentication unsuccessful, basic authentication is disabled. [{self.hostname}]"

    def not_authenticated(self) -> str:
        if self.flavor == "gmail":
            return "530-5.7.0 Authentication Required. For more information, go to\r\n530 5.7.0  https://support.google.com/mail/?p=WantAuthError - gsmtp"
        return f"530 5.7.57 Client not authenticated to send mail. [{self.hostname}]"

    def send_as_denied(self, mailbox: str, sender: str) -> str:
        return (
            f"554 5.2.252 SendAsDenied; {mailbox} not allowed to send as {sender}; "
            "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; "
            "Failed to process message due to a permanent exception with message "
            f"[BeginDiagnosticData]Cannot submit message. {SEND_AS_DIAGNOSTIC}[EndDiagnosticData] "
            f"[Hostname={self.backend_hostname}]"
        )

    def queued(self, message_id: str, internal_id: int) -> str:
        if self.flavor == "gmail":
            return f"250 2.0.0 OK  {int(time.time())} {uuid.uuid4().hex[:20]} - gsmtp"
        return f"250 2.6.0 {message_id} [InternalId={internal_id}, Hostname={self.backend_hostname}] Queued mail for delivery"

    def too_big(self) -> str:
        if self.flavor == "gmail":
            return "552-5.3.4 Your message exceeded Google's message size limits. For more\r\n552 5.3.4 information, go to https://support.google.com/mail/?p=MaxSizeError - gsmtp"
        return "552 5.3.4 Message size exceeds fixed maximum message size"

    def too_many_recipients(self) -> str:
        if self.flavor == "gmail":
            return "452 4.5.3 Your message has too many recipients. For more information regarding Google's sending limits, go to https://support.google.com/mail/?p=TooManyRecipientsError - gsmtp"
        return "452 4.5.3 Too many recipients"

    def rate_exceeded(self) -> str:
        return "421 4.4.2 Message submission rate for this client has exceeded the configured limit"

    def thread_limit(self) -> str:
        return "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"


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
