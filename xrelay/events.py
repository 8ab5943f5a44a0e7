"""
The helpers beside the relay-events seam (L{IRelayEvents}): the event sinks other than
the Prometheus one, and how a delivery outcome becomes events.

They live beside the interface, below the stages, so that a stage reports its events
without importing the operator package above it.

The stages report what an operator counts (a connection, a failed AUTH, a message
accepted, a delivery outcome, a token refresh) by calling their sink, at the points
where they log the same facts; the Prometheus collector
(L{xrelay.operations.metrics.RelayMetrics}) is the relay's sink.  Here are the helpers:
L{NullEvents} (a stage built without a sink counts nothing), L{FanOutEvents} (one
relay's events to several sinks: its metrics and an embedding program's own) and
L{GuardedEvents}, which every stage puts around the sink it is given.

Nothing here reads log events: the log lines stay for people, and counts do not depend
on their wording or on which log observers are installed.  A sink is in the path of
mail, so nothing here may raise into a stage, block, or keep anything but the bounded
labels it is given.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from xrelay.interfaces import IRelayEvents
from xrelay.lifecycle import entry_received_at

__all__ = ["FanOutEvents", "GuardedEvents", "NullEvents", "entry_received_at", "guarded",
           "report_outcome"]

log = Logger(namespace="xrelay.events")


class _Dispatching:
    """The event methods, each handed to L{_call} by name (one place to guard or fan out)."""

    def _call(self, event: str, *arguments: Any) -> None:
        raise NotImplementedError

    def connection(self, listener: str) -> None:
        self._call("connection", listener)

    def auth_failed(self, listener: str) -> None:
        self._call("auth_failed", listener)

    def accepted(self, account: str) -> None:
        self._call("accepted", account)

    def delivered(self, account: str, latency: float | None = None) -> None:
        self._call("delivered", account, latency)

    def bounce_sent(self, account: str) -> None:
        self._call("bounce_sent", account)

    def deferred(self, account: str, reason: str) -> None:
        self._call("deferred", account, reason)

    def bounced(self, account: str, reason: str) -> None:
        self._call("bounced", account, reason)

    def handed_back(self, account: str, reason: str) -> None:
        self._call("handed_back", account, reason)

    def token_refreshed(self, account: str) -> None:
        self._call("token_refreshed", account)

    def token_failed(self, account: str, reason: str) -> None:
        self._call("token_failed", account, reason)


@implementer(IRelayEvents)
class NullEvents(_Dispatching):
    """Counts nothing: the sink of a stage built without one (tests, embedders)."""

    def _call(self, event: str, *arguments: Any) -> None:
        pass


@implementer(IRelayEvents)
class GuardedEvents(_Dispatching):
    """
    A sink that never raises into the stage that calls it: a metrics bug must not cost
    a 250 or a delivery.  Not silent either: the first failure of each event is logged
    with its traceback; later ones of the same event are only counted (in L{failures}),
    so that a broken sink does not write a traceback per message.

    @ivar sink: the L{IRelayEvents} that is guarded.
    @ivar failures: event name -> how many of its calls raised.
    """

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.failures: collections.Counter[str] = collections.Counter()

    def _call(self, event: str, *arguments: Any) -> None:
        try:
            getattr(self.sink, event)(*arguments)
        except Exception:
            self.failures[event] += 1
            if self.failures[event] == 1:
                log.failure(
                    "metrics: the event sink {sink!r} failed on {event}{arguments!r}; "
                    "mail is not affected, but this count is lost.  Later failures of "
                    "{event} are counted without being logged again: this is a bug in "
                    "the sink, please report it", sink=self.sink, event=event,
                    arguments=arguments)

    def __repr__(self) -> str:
        return f"GuardedEvents({self.sink!r})"


@implementer(IRelayEvents)
class FanOutEvents(_Dispatching):
    """
    Tells every one of C{sinks} each event, each through its own guard, so that one
    failing sink neither stops the others nor reaches the stage.
    """

    def __init__(self, *sinks: Any) -> None:
        self.sinks = tuple(guarded(s) for s in sinks)

    def _call(self, event: str, *arguments: Any) -> None:
        for sink in self.sinks:
            getattr(sink, event)(*arguments)


def guarded(sink: Any = None) -> IRelayEvents:
    """
    What a stage keeps for the C{events} it was given: L{NullEvents} for C{None}, the
    sink itself if it is already guarded (one guard per relay, shared by its stages,
    so the "logged once" holds for the relay), else the sink in a L{GuardedEvents}.
    """
    if sink is None:
        return NullEvents()
    if isinstance(sink, (GuardedEvents, NullEvents, FanOutEvents)):
        return sink
    return GuardedEvents(sink)


def report_outcome(events: IRelayEvents, outcome: str, account: str, failure: str,
                   entry: Any, now: float) -> None:
    """
    Tell C{events} what one delivery attempt came to.

    @param outcome: the engine's outcome: "delivered", "deferred", "partial" (some
        delivered, the rest deferred), "failed" or "handed back".
    @param account: the account it went through ("" when none could take it).
    @param failure: the attempt's L{xrelay.envelope.FailureKind} value ("none" when the
        replies say it all).
    @param entry: the spool entry: its C{bounce_of} tells the relay's own bounce from a
        device's message (only the latter counts as delivered), its C{received_at}
        gives the latency.
    @param now: the engine's clock at the outcome.
    """
    account = account or "none"
    reason = failure if failure and failure != "none" else ""
    if outcome == "delivered":
        if entry.bounce_of is not None:
            events.bounce_sent(account)
        else:
            received = entry.received_at or entry_received_at(entry.entry_id)
            events.delivered(account, now - received if received else None)
    elif outcome in ("deferred", "partial"):
        events.deferred(account, reason or "temporary")
    elif outcome == "failed":
        events.bounced(account, reason or "rejected")
    elif outcome == "handed back":
        events.handed_back(account, reason or "rejected")
