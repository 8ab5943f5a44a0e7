"""
The inbound handler seam: who decides what an SMTP session may do.

The protocol asks an L{IInboundHandler} at each step (connect, HELO, MAIL, RCPT, the
message's header fields, end of data) and turns a L{Refusal} into the reply.
L{PolicyHandler}, the default, asks the pure decisions of L{xrelay.policy}; an
embedding program subclasses it to add its own rules and passes it to
L{xrelay.service.makeService}::

    class NoPartnerMail(PolicyHandler):
        def rcpt(self, session, recipient, recipients):
            if recipient.lower().endswith("@partner.example"):
                return Refusal(550, "5.7.1", "Mail to partner.example is not relayed")
            return super().rcpt(session, recipient, recipients)

The handler sees a session only through L{InboundSession}, a frozen snapshot, so it can
neither change the protocol's state nor keep the connection alive.  This module must
never do I/O or speak SMTP: the protocol replies and logs the refusal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import attrs
from twisted.logger import Logger
from zope.interface import implementer

from xrelay.config import Config, UserConfig
from xrelay.envelope import Envelope
from xrelay.interfaces import IInboundHandler
from xrelay.policy import (
    Refusal,
    address_refusal,
    header_sender_refusal,
    recipient_limit_refusal,
    relay_refusal,
    sender_refusal,
)

if TYPE_CHECKING:
    from xrelay.inbound.headers import HeaderBlock
    from xrelay.interfaces import IIncomingMessage

__all__ = ["InboundSession", "PolicyHandler", "connect_refusal", "message_refusal",
           "session_of"]

log = Logger()

#: What a client hears when a handler fails instead of deciding: try again later.
HANDLER_FAILED = Refusal(451, "4.3.0", "Local error in processing, try again later")


@attrs.frozen
class InboundSession:
    """
    What a handler may know about one SMTP session, at the moment it is asked.

    @ivar client_address: the client's IP address (behind C{haproxy:}, the real client's).
    @ivar helo: the EHLO/HELO name, C{None} before it (C{""} for a lenient MAIL without).
    @ivar user: the authenticated relay user (its C{name} and C{senders}), or C{None}.
    @ivar tls: whether the connection is encrypted (STARTTLS done, or implicit TLS).
    @ivar starttls_offered: whether STARTTLS is available and not yet done (a refusal
        may tell the client to use it).
    @ivar config: the configuration snapshot this connection runs under.
    @ivar sender: the envelope sender of the transaction under way, C{None} outside one.
    """

    client_address: str
    helo: str | None
    user: UserConfig | None
    tls: bool
    starttls_offered: bool
    config: Config
    sender: str | None = None

    @property
    def user_name(self) -> str | None:
        """The authenticated user's name, or C{None}."""
        return self.user.name if self.user is not None else None


def session_of(protocol: Any, transaction: Any = None) -> InboundSession:
    """
    The snapshot of an L{xrelay.inbound.protocol.ESMTPServer}'s session; C{transaction}
    is the one ending when the protocol has already let go of it (end of data).
    """
    transaction = transaction if transaction is not None else protocol.transaction
    return InboundSession(
        client_address=protocol.client_address, helo=protocol.helo, user=protocol.user,
        tls=bool(protocol.tls), starttls_offered=protocol._starttls_available(),
        config=protocol.config,
        sender=transaction.sender if transaction is not None else None)


def connect_refusal(handler: IInboundHandler, session: InboundSession) -> Refusal | None:
    """
    The handler's word on a new connection.  One that raises refuses the client for now
    (421, which RFC 5321 3.8 allows instead of the greeting) rather than letting an
    unasked client in or leaving it without a greeting.  (The other steps run inside the
    protocol's command loop, which answers a failing step with 451 4.3.0.)
    """
    try:
        return handler.connect(session)
    except Exception:
        log.failure("inbound: the inbound handler failed at the connection from "
                    "{client}; answering 421", client=session.client_address)
        return Refusal(421, "4.3.0", f"{session.config.server.hostname} Local error in "
                       "processing, try again later")


def message_refusal(handler: IInboundHandler, session: InboundSession,
                    headers: "HeaderBlock", message: "IIncomingMessage",
                    size: int) -> Refusal | None:
    """
    The handler's last two questions about a received message (its header fields, then
    end of data).  A handler that raises costs the client a 451, never the message a
    leftover spool entry: the caller aborts the message on any refusal.
    """
    try:
        return (handler.headers(session, headers)
                or handler.end_of_data(session, message.envelope, size))
    except Exception:
        log.failure("inbound: the inbound handler failed at the end of data from "
                    "{client}; answering 451", client=session.client_address)
        return HANDLER_FAILED


@implementer(IInboundHandler)
@attrs.define
class PolicyHandler:
    """
    The relay's own rules (L{xrelay.policy}): who may relay (C{relay.allow_networks} or
    SMTP AUTH), which senders each may use, no address tricks, at most
    C{server.max_recipients} recipients, and a restricted user's C{From:}/C{Sender:}
    matching its senders.  Connect, HELO and end of data accept everything (the
    connection caps and the syntax checks are the protocol's).  Stateless: one instance
    serves every connection and survives reloads.
    """

    def connect(self, session: InboundSession) -> Refusal | None:
        return None

    def helo(self, session: InboundSession, name: str) -> Refusal | None:
        return None

    def mail(self, session: InboundSession, sender: str) -> Refusal | None:
        refusal = relay_refusal(session.config, session.client_address, session.user,
                                session.starttls_offered)
        if refusal is None and sender:
            refusal = address_refusal(sender, "sender")
        if refusal is None:
            refusal, _ = sender_refusal(session.config, session.client_address,
                                        session.user, sender)
        return refusal

    def rcpt(self, session: InboundSession, recipient: str,
             recipients: Sequence[str]) -> Refusal | None:
        # Checked again although MAIL did: a recipient must never be accepted from a
        # client that may not relay, whatever happened to the session in between.
        refusal = relay_refusal(session.config, session.client_address, session.user,
                                session.starttls_offered)
        if refusal is None:
            refusal = address_refusal(recipient, "recipient")
        if refusal is None and recipient.lower() not in (r.lower() for r in recipients):
            refusal = recipient_limit_refusal(session.config, len(recipients))
        return refusal

    def headers(self, session: InboundSession, headers: "HeaderBlock") -> Refusal | None:
        return header_sender_refusal(session.user, headers, session.config.relay.senders)

    def end_of_data(self, session: InboundSession, envelope: Envelope,
                    size: int) -> Refusal | None:
        return None
