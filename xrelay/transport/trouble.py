"""
What can go wrong on an upstream SMTP connection, and the result one reply makes for
a message: shared by the DATA conversation (L{xrelay.transport.smtp}) and the BDAT one
(L{xrelay.transport.chunking}), below both so that neither imports the other for them.

Values and texts only: never a socket, never a secret in a text.
"""

from __future__ import annotations

import attrs
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from xrelay.envelope import DeliveryResult, FailureKind, OutboundMessage, RecipientResult, Reply
from xrelay.transport.classify import failure_of, outcome_of

__all__ = ["ConnectionTrouble", "EnvelopeReplies", "StaleConnection", "UpstreamRefused",
           "describe_loss", "whole_result"]


class ConnectionTrouble(Exception):
    """
    The connection is unusable: it failed, dropped, timed out, or the upstream broke
    the protocol.  The text names the step and never contains a secret.
    """

    def __init__(self, step: str, why: str, dropped: bool = False) -> None:
        super().__init__(step, why)
        self.step = step
        self.why = why
        #: The connection went away (rather than timing out or misbehaving).
        self.dropped = dropped

    def __str__(self) -> str:
        return f"{self.why} during {self.step}"


class StaleConnection(Exception):
    """
    A reused connection failed its RSET: the upstream closed it while it was idle (or
    it broke).  Nothing that could deliver a message was sent on it.
    """


class UpstreamRefused(Exception):
    """The upstream refused a step of setting up the connection (EHLO, STARTTLS)."""

    def __init__(self, reply: Reply, step: str) -> None:
        super().__init__(reply, step)
        self.reply = reply
        self.step = step


def whole_result(
    message: OutboundMessage,
    reply: Reply,
    recipients: list[str] | None = None,
    refused: tuple[RecipientResult, ...] = (),
) -> DeliveryResult:
    """One reply for every (accepted) recipient, plus those refused at RCPT."""
    applies = message.recipients if recipients is None else recipients
    results = tuple(RecipientResult(r, outcome_of(reply), reply) for r in applies)
    failure = failure_of(reply) if reply.code // 100 != 2 else FailureKind.NONE
    return DeliveryResult(results + refused, failure)


@attrs.frozen
class EnvelopeReplies:
    """
    The envelope phase of one transaction, the same for DATA and BDAT: the reply to
    MAIL and one reply per recipient (fewer while they are still being read).
    """

    message: OutboundMessage
    mail: Reply
    rcpts: tuple[Reply, ...] = ()

    @property
    def accepted(self) -> list[str]:
        return [r for r, reply in zip(self.message.recipients, self.rcpts, strict=False)
                if reply.code // 100 == 2]

    @property
    def refused(self) -> tuple[RecipientResult, ...]:
        return tuple(RecipientResult(r, outcome_of(reply), reply)
                     for r, reply in zip(self.message.recipients, self.rcpts, strict=False)
                     if reply.code // 100 != 2)

    @property
    def complete(self) -> bool:
        """Every recipient has its reply."""
        return len(self.rcpts) == len(self.message.recipients)

    def refusal(self) -> DeliveryResult | None:
        """
        The result when the envelope was refused as a whole (MAIL, or every RCPT once
        all have answered): no data phase; C{None} when the message may be sent.
        """
        if self.mail.code // 100 != 2:
            return whole_result(self.message, self.mail)
        if self.complete and not self.accepted:
            refused = self.refused
            return DeliveryResult(refused, failure_of(refused[0].reply) if refused
                                  else FailureKind.NONE)
        return None

    def result(self, final: Reply) -> DeliveryResult:
        """The data phase ended with C{final}: it applies to the accepted recipients."""
        return whole_result(self.message, final, self.accepted, self.refused)


def describe_loss(reason: Failure) -> str:
    """A short, secret-free text for why a connection ended."""
    if reason.check(VerificationError):
        return "TLS failed (the upstream's certificate is not valid for the host name)"
    if isinstance(reason.value, SSL.Error):
        errors = reason.value.args[0] if reason.value.args else None
        texts = [e[-1] for e in errors if isinstance(e, tuple) and e] if isinstance(errors, list) else []
        return f"TLS failed ({'; '.join(texts) or reason.getErrorMessage()})"
    if reason.check(ConnectionDone):
        return "the upstream closed the connection"
    if reason.check(ConnectionLost):
        return "the connection was lost"
    return reason.getErrorMessage() or type(reason.value).__name__
