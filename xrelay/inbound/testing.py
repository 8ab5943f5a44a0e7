"""
Test doubles for the seams the inbound side talks to: an in-memory L{ISpool} that can
be told to run out of space or to hold its commits, and an L{IDelivery} that records
what it was given and answers pass-through deliveries with a chosen result.

For tests of the inbound side (ours and users' own); the real spool is
L{xrelay.spool.Spool}.  Nothing here may be used in production: the memory spool keeps
whole messages in memory and loses them on exit.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from xrelay.envelope import DeliveryResult, Envelope, Outcome, Reply
from xrelay.inbound.errors import SpoolFull
from xrelay.interfaces import IDelivery, IIncomingMessage, ISpool

__all__ = ["MemorySpool", "MemoryMessage", "RecordingDelivery"]


@implementer(IIncomingMessage)
@attrs.define
class MemoryMessage:
    spool: "MemorySpool"
    envelope: Envelope
    data: bytearray = attrs.field(factory=bytearray)
    writes: int = 0
    aborted: bool = False
    committed: bool = False

    def write(self, data: bytes) -> None:
        assert not self.aborted and not self.committed, "write after the end"
        limit = self.spool.full_after
        if limit is not None and self.spool.stored_bytes() + len(self.data) + len(data) > limit:
            raise SpoolFull("No space left on device")
        self.data += data
        self.writes += 1

    def commit(self) -> "Deferred[str]":
        assert not self.aborted and not self.committed, "commit after the end"
        if self.spool.fail_commit is not None:
            return defer.fail(self.spool.fail_commit)
        entry_id = f"entry{next(self.spool._ids)}"

        def done(_: Any) -> str:
            self.committed = True
            self.spool.committed[entry_id] = self
            return entry_id

        if self.spool.hold_commits:
            d: Deferred[Any] = Deferred()
            self.spool.held.append(d)
            return d.addCallback(done)
        return defer.succeed(done(None))

    def abort(self) -> None:
        self.aborted = True
        self.data = bytearray()
        self.spool.aborted.append(self)


@implementer(ISpool)
@attrs.define
class MemorySpool:
    """
    @ivar full_after: raise L{SpoolFull} once this many bytes are stored in total.
    @ivar fail_commit: an exception every commit fails with.
    @ivar hold_commits: commits wait until L{release} (for pipelining tests).
    @ivar full_at_incoming: L{incoming} itself raises L{SpoolFull}.
    """

    full_after: int | None = None
    fail_commit: Exception | None = None
    hold_commits: bool = False
    full_at_incoming: bool = False
    started: list[MemoryMessage] = attrs.field(factory=list)
    committed: dict[str, MemoryMessage] = attrs.field(factory=dict)
    aborted: list[MemoryMessage] = attrs.field(factory=list)
    held: list["Deferred[Any]"] = attrs.field(factory=list)
    _ids: Any = attrs.field(factory=lambda: itertools.count(1))

    def stored_bytes(self) -> int:
        return sum(len(m.data) for m in self.committed.values())

    def incoming(self, envelope: Envelope) -> MemoryMessage:
        if self.full_at_incoming:
            raise SpoolFull("No space left on device")
        message = MemoryMessage(self, envelope)
        self.started.append(message)
        return message

    def recover(self) -> None:
        pass

    def release(self) -> None:
        """Let held commits complete, in order."""
        held, self.held = self.held, []
        for d in held:
            d.callback(None)

    def messages(self) -> list[tuple[Envelope, bytes]]:
        """Committed messages in commit order: envelope and exact bytes."""
        return [(m.envelope, bytes(m.data)) for m in self.committed.values()]


@implementer(IDelivery)
@attrs.define
class RecordingDelivery:
    """
    @ivar result: what L{deliver_now} answers (a L{DeliveryResult}, or an exception to
        fail with); by default every recipient delivered with C{250 2.0.0 OK}.
    """

    result: DeliveryResult | Exception | None = None
    submissions: list[str] = attrs.field(factory=list)
    passed_through: list[str] = attrs.field(factory=list)

    def submitted(self, entry_id: str) -> None:
        self.submissions.append(entry_id)

    def deliver_now(self, entry_id: str) -> "Deferred[DeliveryResult]":
        self.passed_through.append(entry_id)
        if isinstance(self.result, Exception):
            return defer.fail(self.result)
        if self.result is not None:
            return defer.succeed(self.result)
        return defer.succeed(DeliveryResult.for_all(
            ("someone@example.com",), Outcome.DELIVERED, Reply(250, "2.0.0 OK")))
