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

import inspect
from typing import TYPE_CHECKING, Any, Sequence

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from xrelay.envelope import Envelope
from xrelay.interfaces import IInboundHandler
from xrelay.policy import (
    address_refusal,
    header_sender_refusal,
    recipient_limit_refusal,
    relay_refusal,
    sender_refusal,
)
from xrelay.records import InboundSession, Refusal

if TYPE_CHECKING:
    from xrelay.inbound.headers import HeaderBlock
    from xrelay.interfaces import IIncomingMessage

__all__ = ["HANDLER_TIMEOUT", "InboundSession", "PolicyHandler", "connect_refusal", "decided",
           "message_refusal", "session_of"]

log = Logger()

#: What a client hears when a handler fails instead of deciding: try again later.
HANDLER_FAILED = Refusal(451, "4.3.0", "Local error in processing, try again later")


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


#: How long the protocol waits for a handler that returned a Deferred or a coroutine
#: before it gives up on it and answers as for a failing handler.  Pipelined commands
#: behind it wait too (their replies stay in order), so this is short next to the
#: client's own command timeout (RFC 5321 4.5.3.2.7: 5 minutes).
HANDLER_TIMEOUT = 30.0


def decided(answer: Any, clock: Any, step: str, client: str,
            failed: Refusal = HANDLER_FAILED,
            timeout: float = HANDLER_TIMEOUT) -> "Refusal | None | Deferred[Refusal | None]":
    """
    A handler's answer as the protocol uses it: a refusal or C{None} as it is; a
    Deferred or a coroutine (an C{async def} hook) as a Deferred that fires with the
    decision, or with C{failed} (logged) when the handler fails or takes longer than
    C{timeout} seconds on C{clock}.
    """
    if isinstance(answer, Refusal) or answer is None:
        return answer
    if inspect.iscoroutine(answer):
        answer = Deferred.fromCoroutine(answer)
    if not isinstance(answer, Deferred):
        log.error("inbound: the inbound handler answered {step} from {client} with "
                  "{kind}, not a Refusal, None or a Deferred; answering {reply}",
                  step=step, client=client, kind=type(answer).__name__, reply=str(failed))
        return failed
    if clock is None:
        from twisted.internet import reactor as clock
    waiting: Deferred[Refusal | None] = answer
    waiting.addTimeout(timeout, clock)

    def checked(result: Any) -> Refusal | None:
        if isinstance(result, Refusal) or result is None:
            return result
        log.error("inbound: the inbound handler's Deferred for {step} from {client} "
                  "fired with {kind}, not a Refusal or None; answering {reply}",
                  step=step, client=client, kind=type(result).__name__, reply=str(failed))
        return failed

    def failure(reason: Failure) -> Refusal:
        if reason.check(defer.TimeoutError):
            log.warn("inbound: the inbound handler did not decide {step} from {client} "
                     "within {timeout:g}s; answering {reply}", step=step, client=client,
                     timeout=timeout, reply=str(failed))
        else:
            log.failure("inbound: the inbound handler failed at {step} from {client}; "
                        "answering {reply}", reason, step=step, client=client,
                        reply=str(failed))
        return failed

    return waiting.addCallbacks(checked, failure)


def connect_refusal(handler: IInboundHandler, session: InboundSession,
                    clock: Any = None) -> "Refusal | None | Deferred[Refusal | None]":
    """
    The handler's word on a new connection.  One that raises (or whose Deferred fails
    or times out) refuses the client for now (421, which RFC 5321 3.8 allows instead
    of the greeting) rather than letting an unasked client in or leaving it without a
    greeting.  (The other steps run inside the protocol's command loop, which answers
    a failing step with 451 4.3.0.)
    """
    failed = Refusal(421, "4.3.0", f"{session.config.server.hostname} Local error in "
                     "processing, try again later")
    try:
        answer = handler.connect(session)
    except Exception:
        log.failure("inbound: the inbound handler failed at the connection from "
                    "{client}; answering 421", client=session.client_address)
        return failed
    return decided(answer, clock, "the connection", session.client_address, failed)


def message_refusal(handler: IInboundHandler, session: InboundSession,
                    headers: "HeaderBlock", message: "IIncomingMessage",
                    size: int, clock: Any = None
                    ) -> "Refusal | None | Deferred[Refusal | None]":
    """
    The handler's last two questions about a received message (its header fields, then
    end of data), each of which may wait.  A handler that raises costs the client a
    451, never the message a leftover spool entry: the caller aborts the message on any
    refusal.
    """
    client = session.client_address

    def then_end_of_data(refusal: Refusal | None
                         ) -> "Refusal | None | Deferred[Refusal | None]":
        if refusal is not None:
            return refusal
        try:
            answer = handler.end_of_data(session, message.envelope, size)
        except Exception:
            log.failure("inbound: the inbound handler failed at the end of data from "
                        "{client}; answering 451", client=client)
            return HANDLER_FAILED
        return decided(answer, clock, "the end of data", client)

    try:
        first = decided(handler.headers(session, headers), clock, "the header fields",
                        client)
    except Exception:
        log.failure("inbound: the inbound handler failed at the end of data from "
                    "{client}; answering 451", client=client)
        return HANDLER_FAILED
    if isinstance(first, Deferred):
        return first.addCallback(then_end_of_data)
    return then_end_of_data(first)


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
