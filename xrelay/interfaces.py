"""
The seams between xrelay's stages.

Each stage depends on the next only through one of these interfaces, so that each can be
tested alone (with the sandbox or a test double) and replaced (an embedding program can
bring its own spool or token source).  Implementations are attrs classes declared with
C{@implementer}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

from zope.interface import Attribute, Interface

# Interfaces are stated in terms of the bottom layer only (values, errors, the entry
# lifecycle): never an implementation module (tests/test_imports.py holds this).
from xrelay.lifecycle import NotAnEntryId, TransitionRefused
from xrelay.records import ISpoolEntry

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from xrelay.envelope import DeliveryResult, Envelope, OutboundMessage
    from xrelay.history.records import AcceptedMessage
    from xrelay.inbound.headers import HeaderBlock
    from xrelay.records import InboundSession, OutcomeRecord, Refusal, SpoolEntry, TokenStatus

__all__ = [
    "IDelivery", "IInboundHandler", "IIncomingMessage", "IMessageHistory", "IRelayEvents",
    "IQueueControl", "ISpool", "ISpoolEntry", "ITokenSource", "ITransport", "NotAnEntryId", "SpoolFull",
    "TransitionRefused", "UnknownEntry",
]


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

        May raise L{SpoolFull} (disk full, quota) which the inbound side turns
        into C{452 4.3.1}; nothing half-written may remain after L{abort}.
        """

    def commit() -> "Deferred[str]":
        """
        Make the message durable: data and envelope written, fsynced (file and directory)
        and renamed into the queue.  Fires with the entry id only then; the inbound side
        answers 250 only after it fires.  Fails with L{SpoolFull} or another
        error, in which case nothing of the message remains.
        """

    def abort() -> None:
        """Forget the message (client went away, size exceeded, RSET in the middle)."""


class IInboundHandler(Interface):
    """
    The decisions an inbound SMTP session asks for, one method per step (as aiosmtpd's
    handler object): the protocol only speaks SMTP, the handler decides.

    Each method gets a read-only L{xrelay.records.InboundSession} (client
    address, HELO name, authenticated user, TLS, the current sender, the configuration
    snapshot of the connection) and returns C{None} to go on, or a
    L{xrelay.records.Refusal}, which the client receives as the reply (code, enhanced
    status code, text) and which is logged.  Methods are called on the reactor thread
    and must not block; one that must wait (a directory lookup) returns a Deferred
    firing with the decision, or is a coroutine: the pipelined commands behind it wait,
    and one that fails or takes longer than
    L{xrelay.inbound.handler.HANDLER_TIMEOUT} costs the client a 451 4.3.0.  The default,
    L{xrelay.inbound.handler.PolicyHandler}, asks L{xrelay.policy}; an embedding program
    subclasses it (calling C{super()} keeps the relay's own rules) and passes it to
    L{xrelay.service.makeService} as C{inbound_handler}.
    """

    def connect(session: "InboundSession") -> "Refusal | None":
        """
        A client was admitted by the connection caps and is about to be greeted; a
        refusal is sent instead of the greeting.  Use 554 5.7.1 ("no service for you":
        the client may only QUIT then, every other command gets 503, RFC 5321 3.1) or
        421 4.7.0 ("try later": the connection is closed).
        """

    def helo(session: "InboundSession", name: str) -> "Refusal | None":
        """EHLO/HELO with this (syntactically valid) name; C{session.helo} is the old one."""

    def mail(session: "InboundSession", sender: str) -> "Refusal | None":
        """
        MAIL FROM with this envelope sender (C{""} for the null sender): may this client
        relay at all, and with this sender?  An accepted sender must still be one an
        account sends as (L{xrelay.policy.route_refusal}); the handler cannot pick the
        account.
        """

    def rcpt(session: "InboundSession", recipient: str,
             recipients: "Sequence[str]") -> "Refusal | None":
        """
        RCPT TO with this recipient; C{recipients} are the ones accepted so far in this
        transaction (the recipient may be among them: a repeated RCPT).
        """

    def headers(session: "InboundSession", headers: "HeaderBlock") -> "Refusal | None":
        """
        The message's own header fields (L{xrelay.inbound.headers.HeaderBlock}), asked
        at the end of DATA before the message is committed; a refusal discards it.
        """

    def end_of_data(session: "InboundSession", envelope: "Envelope",
                    size: int) -> "Refusal | None":
        """
        The whole message was received (C{size} bytes as stored) and its headers were
        accepted; the last word before the commit and the 250.  A refusal discards it.
        """
class SpoolFull(Exception):
    """
    The spool cannot store the message now (disk full or quota exceeded).

    The inbound side answers C{452 4.3.1 Insufficient system storage}; nothing of the
    message remains in the spool.
    """


class UnknownEntry(KeyError):
    """No entry with this id exists in the spool (already delivered or removed)."""


class ISpool(Interface):
    """
    Durable storage of accepted messages until they are delivered or bounced.

    Promises every implementation keeps (the parametrised tests in
    C{tests/spool/test_interface.py} check them against each):

      - B{Durability}: L{IIncomingMessage.commit} fires only once the message survives
        a crash; L{move} and L{remove} fire only once the change does.  (The in-memory
        spool of L{xrelay.testing} keeps this promise only within one process.)
      - B{Lifecycle}: an entry's state changes only along
        L{xrelay.lifecycle.LIFECYCLE} (received -> queued -> active -> deferred ->
        delivered | failed | corrupt); L{move} and L{remove} raise
        L{TransitionRefused} for anything else, before anything changes.
      - B{Entry ids} have the syntax L{xrelay.lifecycle.ENTRY_ID}; L{get} answers
        L{UnknownEntry} and L{find} L{NotAnEntryId} for any other text, without
        touching storage (a path, a NUL or a glob never reaches a file name).
      - B{Corrupt entries}: a record that cannot be read is set aside (state
        C{corrupt}, with a C{problem}) with an error log line by whichever reader
        meets it, never delivered, never raised to the reader: one bad record never
        stops the relay or a listing.  Only L{find} and L{entries} show them, and
        L{remove} is the only transition out.

    Methods are called on the reactor thread; those that return a Deferred do their
    blocking work elsewhere.
    """

    directory: str = Attribute(
        "The folder on the local file system that holds the spool's files: the disk "
        "reserve (L{xrelay.diskspace}) measures its free space and the health check "
        "writes a probe file in its C{tmp/}.")

    def incoming(envelope: "Envelope", bounce_of: "str | None" = None
                 ) -> IIncomingMessage:
        """
        Begin receiving a message with this envelope (C{bounce_of}: the entry a bounce
        we generate reports on).  Nothing becomes an entry before the commit.

        @raise SpoolFull: when not even that can be started.
        """

    def recover() -> None:
        """
        Called once at start (later calls do nothing): discard entries that were never
        committed, move entries left C{active} by a crash back to C{queued}, and set
        aside what cannot be read.
        """

    def committed(entry_id: str) -> "SpoolEntry | None":
        """
        The entry just committed under C{entry_id}, while no transition has changed it,
        so the engine need not read it back; C{None}: read it with L{get}.
        """

    def take_committed(entry_id: str) -> "SpoolEntry | None":
        """L{committed}, for the last time (the first attempt takes it)."""

    def get(entry_id: str) -> "SpoolEntry":
        """
        A live entry (not one set aside).

        @raise UnknownEntry: not (or no longer) in the spool, set aside as corrupt, or
            not an entry id at all.
        """

    def find(entry_id: str) -> "SpoolEntry":
        """
        Like L{get}, but also what is known of an entry set aside as corrupt.

        @raise NotAnEntryId: for text that is not an entry id (nothing is touched).
        @raise UnknownEntry: no such entry.
        """

    def ids(state: str) -> "list[str]":
        """Entry ids in one state (or C{corrupt}), oldest first (ids sort by arrival)."""

    def entries(state: "str | None" = None) -> "Iterator[SpoolEntry]":
        """
        Every entry (or those in one state), oldest first within a state, states in
        lifecycle order, those set aside as corrupt last.  Unreadable ones met on the
        way are set aside and skipped.
        """

    def counts() -> "dict[str, int]":
        """Entries per state (every state of L{xrelay.lifecycle.STATES}; C{corrupt} only when any)."""

    def read_data(entry_id: str) -> bytes:
        """The whole message (for operators and small tests; delivery streams the file)."""

    def move(entry: "SpoolEntry", state: str, **changes: Any) -> "Deferred[SpoolEntry]":
        """
        Change an entry's record (C{changes}: its attributes) and/or state durably, and
        fire with the new entry.

        @raise ValueError: C{state} is not one of L{xrelay.lifecycle.STATES} (nothing is moved into
            C{corrupt} on request).
        @raise TransitionRefused: the lifecycle has no such transition (raised at once).
        The Deferred fails with L{UnknownEntry} when the entry is no longer in the state
        C{entry} says, or L{SpoolFull} when the change cannot be stored (then nothing
        changed).
        """

    def remove(entry: "SpoolEntry") -> "Deferred[None]":
        """
        The entry leaves the spool with its data (delivered, deleted by an operator,
        handed back).

        @raise TransitionRefused: from a state the lifecycle does not allow it.
        """

    def scratch_path(entry_id: str, suffix: str) -> str:
        """
        A file name for derived data (a rewritten copy sent instead of the original),
        which the caller removes; whatever is left there is removed by L{recover}.
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


class IQueueControl(IDelivery):
    """
    What an operator's queue commands (L{xrelay.operations.queue.QueueOperations}: the
    admin page, C{xrelay queue}, the control socket) may do to a running delivery
    engine: the engine's schedule is its own, and this is the only way in.

    Every method is called on the reactor thread and returns at once.
    """

    history: "IMessageHistory" = Attribute(
        "Where the engine reports what happens to each message; an operator's action "
        "is reported there too.")

    def in_flight(entry_id: str) -> bool:
        """Whether an attempt for this entry is under way (its outcome not yet settled)."""

    def hold(entry_id: str) -> None:
        """
        Take the entry out of the schedule before an operator changes it on disk; a no-op
        for an entry that is not scheduled.  The caller must first ask L{in_flight}.
        """

    def reschedule(entry: "SpoolEntry") -> None:
        """
        Put an entry back into the schedule as its record says (queued: now; deferred:
        at its C{next_attempt}), e.g. after an operator's change failed.
        """

    def release_bounce(bounce_id: str) -> None:
        """
        A bounce spooled by an operator's action may go now (the original's record is
        durable): counted and scheduled.
        """


class IMessageHistory(Interface):
    """
    Where the relay tells what happened to each message, for the message trace
    (C{xrelay trace}, the admin page's Trace page).

    Every method is called on the reactor thread in the path of mail and must return at
    once: an implementation queues the record and writes it elsewhere (another thread),
    and never raises, blocks or slows the reply to the client.  Losing a record is
    acceptable; losing or delaying mail because of one is not.
    """

    def received(message: "AcceptedMessage") -> None:
        """A message was accepted and is durable in the spool (after its commit)."""

    def attempted(record: "OutcomeRecord", delivered: "Sequence[Any]",
                  deferred: "Sequence[Any]", failed: "Sequence[Any]") -> None:
        """
        One delivery attempt ended.  C{record} is the engine's outcome of it (its
        C{outcome} says whether the message is finished: "delivered", "failed" and
        "handed back" are final); the sequences hold the recipients (objects with
        C{recipient} and C{reply}, failed ones with C{expired}) by what became of them.
        """

    def bounced(entry_id: str, bounce_id: str, to: "Sequence[str]", account: str,
                at: float) -> None:
        """A bounce (DSN) for C{entry_id} was spooled as C{bounce_id}, addressed to C{to}."""

    def finished(entry_id: str, outcome: str, at: float) -> None:
        """The message left the queue another way ("deleted" or "bounced" by an operator)."""


class IRelayEvents(Interface):
    """
    Where the stages report the facts an operator counts: the relay's metrics sink.

    The stages call it explicitly, at the points where they log the same facts, so that
    counts never depend on the wording or the fields of a log line, nor on which log
    observers are installed; each relay has its own sink (C{makeService} makes one), so
    two relays in one process never count each other's events.  Every method is called
    on the reactor thread in the path of mail and must return at once.  The stages wrap
    the sink they are given in L{xrelay.events.GuardedEvents}: a sink that
    raises is logged, never allowed to break mail.

    Labels are bounded sets (account and listener names, failure kinds): never an
    address, a reply text or a secret.
    """

    def connection(listener: str) -> None:
        """A client was admitted on this listener (its C{endpoint} description)."""

    def auth_failed(listener: str) -> None:
        """A client's SMTP AUTH on this listener failed (wrong name or password)."""

    def accepted(account: str) -> None:
        """A message for this account was accepted and is durable in the spool."""

    def delivered(account: str, latency: float | None) -> None:
        """
        A device's message was delivered upstream (all its recipients done), C{latency}
        seconds after it was accepted (C{None} when that is not known).  The relay's own
        bounces are reported by L{bounce_sent} instead.
        """

    def bounce_sent(account: str) -> None:
        """A bounce (a DSN the relay wrote) was delivered upstream through this account."""

    def deferred(account: str, reason: str) -> None:
        """An attempt ended in a retry later (C{reason}: a failure kind or "temporary")."""

    def bounced(account: str, reason: str) -> None:
        """A message (or some recipients) failed for good (C{reason}: kind or "rejected")."""

    def handed_back(account: str, reason: str) -> None:
        """Pass-through: the upstream refused and the client got its reply back."""

    def token_refreshed(account: str) -> None:
        """A new access token was obtained from the identity platform."""

    def token_failed(account: str, reason: str) -> None:
        """
        A token request failed: C{reason} is "needs_sign_in" (refused: an operator must
        act) or "unavailable" (temporary, retried).
        """


class IDeviceEvents(Interface):
    """
    Where the inbound side tells what each client did, for the device inventory
    (L{xrelay.devices.DeviceCollector}; L{xrelay.devices.NullDevices} when it is off).

    Unlike L{IRelayEvents}, these carry the client: each method gets the inbound
    protocol (L{xrelay.inbound.protocol.ESMTPServer}), takes what it needs of it at
    once (address, AUTH user, HELO name, TLS version, listener) and keeps nothing of
    the connection.  Called on the reactor thread in the path of mail: an
    implementation must return at once and never raise.  Never given a password.
    """

    def refused(protocol: Any, stage: str, code: int, enhanced: str, text: str,
                sender: "str | None" = None) -> None:
        """The client got this refusal at C{stage} ("connect", "mail", "rcpt", "data")."""

    def accepted(protocol: Any, sender: str) -> None:
        """A message from the client was accepted (durable, answered 250)."""

    def authenticated(protocol: Any, mechanism: str) -> None:
        """The client authenticated (C{protocol.user}) with this SASL mechanism."""

    def auth_failed(protocol: Any, name: str, mechanism: str, code: int, enhanced: str,
                    text: str) -> None:
        """An AUTH with this user name was refused with this reply."""

    def tls_failed(protocol: Any, why: str) -> None:
        """The client's TLS handshake failed, for this reason (in words)."""

    def flush() -> "Deferred[None]":
        """Fires once everything told so far is stored (for readers of the store)."""
