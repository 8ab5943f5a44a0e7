"""
The rules of the sandbox's SMTP submission server, as Exchange Online's
C{smtp.office365.com:587} applies them (or, with C{flavor="gmail"}, C{smtp.gmail.com:587}):
who may submit as which mailbox with which XOAUTH2 token (checked against tokens the
sandbox identity platform issued), Send As grants, sending limits, and the exact reply
text each service gives; plus the switches that make it fail on purpose
(L{ExchangeRules.fail_next}, L{ExchangeRules.drop_next}, L{ExchangeRules.answer_as}) and
the transcripts of what was said.

L{xrelay.sandbox.exchange} speaks the SMTP wire over L{ExchangeRules} and keeps the open
connections.  This module must never touch a socket, parse a command line, or record a
token (AUTH payloads reach a transcript redacted).
"""

from __future__ import annotations

import email.utils
import fnmatch
import time
import uuid

import attrs
from twisted.internet import ssl
from twisted.internet.interfaces import IReactorTime

from .identity import IdentityPlatform
from .identityrecords import OUTLOOK_RESOURCES
from .mailbox import Mailbox

#: The points of a session at which a reply can be injected or the connection dropped.
#: C{DATA_BODY} is in the middle of the message data; C{AFTER_QUEUED} is after the message
#: was stored but before the 250 was sent (the client cannot know it was accepted).
STEPS = ("CONNECT", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "DATA_BODY", "END_OF_DATA", "AFTER_QUEUED", "RSET", "QUIT")

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
    "recipient-over-quota": ("RCPT", "452-4.2.2 The recipient's inbox is out of storage space. Please direct the\r\n452-4.2.2 recipient to\r\n452 4.2.2  https://support.google.com/mail/?p=OverQuotaTemp - gsmtp"),
    "recipient-over-quota-permanent": ("RCPT", "552-5.2.2 The email account that you tried to reach is over quota.\r\n552 5.2.2  - gsmtp"),
    "sender-mailbox-full": ("END_OF_DATA", "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionQuotaExceeded; Failed to process message due to a permanent exception with message Cannot submit message. [Hostname=SB1PR01MB0001.sandbox.prod.outlook.com]"),
    "banned-sender": ("MAIL", "550 5.7.501 Access denied, spam abuse detected. [SB1PR01MB0001.sandbox.prod.outlook.com]"),
    "not-authenticated-5.7.57": ("MAIL", "530 5.7.57 Client not authenticated to send mail. [SB1PR01CA0001.sandbox.prod.outlook.com]"),
    "smtp-auth-conditional-access": ("AUTH", "535 5.7.139 Authentication unsuccessful, the request did not meet the criteria to be authenticated successfully. Contact your administrator."),
    # (representative wording: the account's own lock, as Exchange reports it under 5.7.139)
    "smtp-auth-account-locked": ("AUTH", "535 5.7.139 Authentication unsuccessful, the user account is locked. Contact your administrator."),
    "gmail-auth-required": ("MAIL", "530-5.7.0 Authentication Required. Learn more at\r\n530 5.7.0  https://support.google.com/mail/?p=WantAuthError - gsmtp"),
    "gmail-recipient-rate": ("RCPT", "450-4.2.1 The user you are trying to contact is receiving mail at a rate that\r\n450-4.2.1 prevents additional messages from being delivered. Please resend your\r\n450 4.2.1 message at a later time. - gsmtp"),
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
class ExchangeRules:
    """
    The state and rules of the SMTP server; L{xrelay.sandbox.exchange.ExchangeServer}
    adds the connections and makes the protocol factory.

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

    def accepted(self, mailbox: str) -> int:
        self._sent.setdefault(mailbox.lower(), []).append(self.clock.seconds())
        self._internal_id += 1
        return self._internal_id

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
