"""
The seams between xrelay's stages.

Each stage depends on the next only through one of these interfaces, so that each can be
tested alone (with the sandbox or a test double) and replaced (an embedding program can
bring its own spool or token source).  Implementations are attrs classes declared with
C{@implementer}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from xrelay.envelope import DeliveryResult, Envelope, OutboundMessage
    from xrelay.tokens.status import TokenStatus


class IIncomingMessage(Interface):
    """
    A message being received: the inbound protocol streams the DATA lines into it, then
    commits or aborts.  Memory use must not grow with the message size.
    """

    envelope = Attribute(
        "The L{Envelope} given to L{ISpool.incoming}; the inbound side may replace it "
        "with an updated copy before L{commit} (an 8-bit body found while streaming), "
        "and the commit stores the one it holds then.")

    def write(data: bytes) -> None:
        """
        Append wire-format bytes (CRLF line endings, dot-stuffing already removed).

        May raise L{xrelay.spool.SpoolFull} (disk full, quota) which the inbound side turns
        into C{452 4.3.1}; nothing half-written may remain after L{abort}.
        """

    def commit() -> "Deferred[str]":
        """
        Make the message durable: data and envelope written, fsynced (file and directory)
        and renamed into the queue.  Fires with the entry id only then; the inbound side
        answers 250 only after it fires.  Fails with L{xrelay.spool.SpoolFull} or another
        error, in which case nothing of the message remains.
        """

    def abort() -> None:
        """Forget the message (client went away, size exceeded, RSET in the middle)."""


class ISpool(Interface):
    """
    Durable storage of accepted messages until they are delivered or bounced.
    """

    def incoming(envelope: "Envelope") -> IIncomingMessage:
        """Begin receiving a message with this envelope."""

    def recover() -> None:
        """
        Called once at start: discard entries that were never committed, and move
        entries left C{active} by a crash back to C{queued}.
        """


class ITokenSource(Interface):
    """
    Gives valid OAuth 2.0 access tokens for one upstream account.

    Implementations never log or put into exception text any token or secret.
    """

    account_name: str = Attribute("The C{[[accounts]]} name this source serves.")

    def access_token() -> "Deferred[str]":
        """
        A token that is valid now (refreshed ahead of expiry; concurrent callers share
        one refresh).  Fails with L{xrelay.tokens.NeedsSignIn} when an operator must sign
        in again, or L{xrelay.tokens.TokenUnavailable} for a temporary failure.
        """

    def token_rejected(token: str) -> None:
        """
        The upstream refused this token (535): drop it so that the next
        L{access_token} call fetches a fresh one.
        """

    def status() -> "TokenStatus":
        """The account's token state for the admin page, metrics and C{xrelay accounts}."""


class ITransport(Interface):
    """
    Delivers one message upstream through one account.
    """

    def deliver(message: "OutboundMessage") -> "Deferred[DeliveryResult]":
        """
        Send the message and report each recipient's result.  Never fails the Deferred
        for an expected condition (refused, connection lost, timeout): those are
        results.  Reuses connections where it can.
        """

    def close() -> "Deferred[None]":
        """Close idle connections (service stop)."""


class IDelivery(Interface):
    """
    What the inbound side needs from the delivery engine.
    """

    def submitted(entry_id: str) -> None:
        """A message was committed to the spool: schedule it (wakes the scheduler)."""

    def deliver_now(entry_id: str) -> "Deferred[DeliveryResult]":
        """
        Pass-through mode: deliver this committed entry at once and fire with the
        upstream's result, so that the device sees the upstream's own reply.  The entry
        stays in the spool (and is retried normally) if the result is temporary.
        """
