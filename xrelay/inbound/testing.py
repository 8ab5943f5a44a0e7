"""
Test doubles for the seams the inbound side talks to: the in-memory L{ISpool}
(L{xrelay.testing.spool.MemorySpool}, which can be told to run out of space or to hold
its commits), and an L{IDelivery} that records what it was given and answers
pass-through deliveries with a chosen result.

For tests of the inbound side (ours and users' own); the real spool is
L{xrelay.spool.Spool}.  Nothing here may be used in production.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from xrelay.envelope import DeliveryResult, Outcome, Reply
from xrelay.interfaces import IDelivery
from xrelay.testing.spool import MemoryMessage, MemorySpool

__all__ = ["MemorySpool", "MemoryMessage", "RecordingDelivery"]


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
