"""
Test doubles for the delivery stage, public so that embedding programs can test their
own wiring too.

L{ScriptedTransport} is an L{ITransport} whose results a test writes in advance (or
gives one by one while attempts are held), and which records every message it was
asked to send, bytes included.  Never use it outside tests: it delivers nothing.
"""

from __future__ import annotations

from typing import Callable, Union

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from xrelay.envelope import DeliveryResult, FailureKind, OutboundMessage, Outcome, Reply
from xrelay.interfaces import ITransport

Script = Union[DeliveryResult, Callable[[OutboundMessage], DeliveryResult]]

ACCEPTED = Reply(250, "2.6.0 Queued mail for delivery")


def accept_all(message: OutboundMessage) -> DeliveryResult:
    return DeliveryResult.for_all(message.recipients, Outcome.DELIVERED, ACCEPTED)


def fail_all(reply: Reply, failure: FailureKind = FailureKind.NONE, detail: str = "",
             retry_after: float | None = None) -> Callable[[OutboundMessage], DeliveryResult]:
    """A whole-attempt failure with this reply, for whatever recipients are sent."""
    outcome = Outcome.PERMANENT if reply.code >= 500 else Outcome.TEMPORARY

    def result(message: OutboundMessage) -> DeliveryResult:
        return DeliveryResult.for_all(message.recipients, outcome, reply, failure, detail,
                                      retry_after)
    return result


def per_recipient(replies: dict[str, Reply]) -> Callable[[OutboundMessage], DeliveryResult]:
    """Each recipient gets its own reply; unlisted ones are accepted."""
    from xrelay.envelope import RecipientResult

    def result(message: OutboundMessage) -> DeliveryResult:
        out = []
        for r in message.recipients:
            reply = replies.get(r, ACCEPTED)
            outcome = (Outcome.DELIVERED if reply.code < 400 else
                       Outcome.TEMPORARY if reply.code < 500 else Outcome.PERMANENT)
            out.append(RecipientResult(r, outcome, reply))
        return DeliveryResult(tuple(out))
    return result


@attrs.define
class Sent:
    message: OutboundMessage
    data: bytes
    result: "Deferred[DeliveryResult]"


@implementer(ITransport)
@attrs.define
class ScriptedTransport:
    """
    @ivar script: results for the next attempts, in order; when empty, every attempt
        is accepted (or held, with C{hold=True}).
    @ivar hold: leave attempts without a script entry pending until L{release}.
    """

    script: list[Script] = attrs.field(factory=list)
    hold: bool = False
    sent: list[Sent] = attrs.field(factory=list)
    held: list[Sent] = attrs.field(factory=list)
    closed: int = 0

    def deliver(self, message: OutboundMessage) -> "Deferred[DeliveryResult]":
        with open(message.data_path, "rb") as f:
            data = f.read()
        if self.script:
            step = self.script.pop(0)
            result = step(message) if callable(step) else step
            sent = Sent(message, data, defer.succeed(result))
        elif self.hold:
            sent = Sent(message, data, Deferred())
            self.held.append(sent)
        else:
            sent = Sent(message, data, defer.succeed(accept_all(message)))
        self.sent.append(sent)
        return sent.result

    def release(self, index: int = 0, step: Script = accept_all) -> None:
        """Answer a held attempt."""
        sent = self.held.pop(index)
        sent.result.callback(step(sent.message) if callable(step) else step)

    def close(self) -> "Deferred[None]":
        self.closed += 1
        return defer.succeed(None)
