"""
The values that travel between the stages: an envelope, an upstream reply, and the
outcome of a delivery attempt.

These are plain immutable attrs classes with no behaviour that does I/O, so that every
stage (inbound, spool, delivery, transport) can exchange them and tests can build them
by hand.  Nothing here may import Twisted's reactor or C{twisted.mail}.
"""

from __future__ import annotations

import enum

import attrs


@attrs.frozen
class Envelope:
    """
    The SMTP envelope of one accepted message, as the inbound side saw it.

    @ivar sender: the reverse path without angle brackets; C{""} for the null sender
        (bounces), which must never itself be bounced.
    @ivar recipients: forward paths, in the order the client gave them.
    @ivar client_address: the client's IP address (after PROXY protocol, if any).
    @ivar client_helo: the name the client gave in HELO/EHLO.
    @ivar authenticated_user: the local C{[[users]]} name when the client used SMTP AUTH.
    @ivar account: the name of the upstream account the message is routed through.
    @ivar received_at: POSIX time at which the final C{.} was received.
    """

    sender: str
    recipients: tuple[str, ...]
    client_address: str = ""
    client_helo: str = ""
    authenticated_user: str | None = None
    account: str = ""
    received_at: float = 0.0
    smtputf8: bool = False
    body_8bitmime: bool = False


@attrs.frozen
class Reply:
    """
    One SMTP reply, kept verbatim so that an operator (and a device, in pass-through
    mode) sees exactly what the upstream said.

    @ivar code: the three-digit basic status code.
    @ivar text: the reply text, lines joined with C{"\\n"}, including the enhanced
        status code when the server sent one (C{"5.2.252 SendAsDenied; ..."}).
    """

    code: int
    text: str

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code at the start of the text, if any."""
        first = self.text.split(None, 1)[0] if self.text else ""
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] in "245":
            return first
        return None

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class Outcome(enum.Enum):
    """
    How the delivery engine must treat the result for one recipient.
    """

    #: Accepted upstream; remove the recipient from the entry.
    DELIVERED = "delivered"
    #: Try again later (4xx, connection lost, timeout, token endpoint down).
    TEMPORARY = "temporary"
    #: Will never succeed as sent (5xx): bounce.
    PERMANENT = "permanent"


class FailureKind(enum.Enum):
    """
    Why a whole attempt failed, when the reason is more specific than the reply code:
    the delivery engine and the operator act on these differently.
    """

    NONE = "none"
    #: The upstream refused the token (535).  The transport has already asked the token
    #: source for a fresh token once; the engine defers.
    AUTHENTICATION = "authentication"
    #: The account needs an operator to sign in again; defer, do not bounce.
    NEEDS_SIGN_IN = "needs_sign_in"
    #: The mailbox may not send as this envelope sender (554 5.2.252 SendAsDenied).
    SEND_AS_DENIED = "send_as_denied"
    #: Connection, TLS or timeout trouble.
    CONNECTION = "connection"
    #: The message is larger than the upstream accepts.
    TOO_BIG = "too_big"
    #: The upstream asked us to slow down (throttling, 429, 4.7.x rate replies).
    THROTTLED = "throttled"
    #: The provider refuses the whole account (restricted mailbox, SMTP AUTH off, app
    #: not authorised): hold the account, keep the mail (L{xrelay.replies}).
    ACCOUNT_HELD = "account_held"


@attrs.frozen
class RecipientResult:
    recipient: str
    outcome: Outcome
    reply: Reply


@attrs.frozen
class DeliveryResult:
    """
    The result of one delivery attempt of one message through one account.

    @ivar recipients: one result per recipient that was attempted.
    @ivar failure: the reason when the whole attempt failed, else L{FailureKind.NONE}.
    @ivar detail: text for the operator and for bounces, e.g. how to grant Send As.
        Never contains a secret.
    @ivar retry_after: seconds the upstream asked us to wait (Graph C{Retry-After}).
    @ivar handed_back: pass-through only: nothing was delivered and the delivery engine
        has removed the entry, because the device is about to be told so with the
        upstream's own reply and keeps the message itself (no retry, no bounce).
    """

    recipients: tuple[RecipientResult, ...]
    failure: FailureKind = FailureKind.NONE
    detail: str = ""
    retry_after: float | None = None
    handed_back: bool = False

    @classmethod
    def for_all(
        cls,
        recipients: "tuple[str, ...] | list[str]",
        outcome: Outcome,
        reply: Reply,
        failure: FailureKind = FailureKind.NONE,
        detail: str = "",
        retry_after: float | None = None,
    ) -> "DeliveryResult":
        """The same result for every recipient: for failures of the whole attempt."""
        return cls(
            tuple(RecipientResult(r, outcome, reply) for r in recipients),
            failure,
            detail,
            retry_after,
        )


@attrs.frozen
class OutboundMessage:
    """
    What a transport needs to send one spool entry.

    @ivar data_path: the spool file holding the message exactly as received, in wire
        format (CRLF line endings, no dot-stuffing).  The transport streams it; it must
        not load a large message into memory.
    """

    entry_id: str
    sender: str
    recipients: tuple[str, ...]
    data_path: str
    size: int
    smtputf8: bool = False
    body_8bitmime: bool = False
