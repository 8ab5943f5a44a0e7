"""
Turns the structured log events that the stages already emit into metric counts.

The stages log every fact an operator cares about (a connection, a failed AUTH, a
message queued, a delivery outcome, a token refresh) with structured fields; this
observer recognises those events by their namespace and fields and counts them, so the
stages need no metrics code of their own.  It only reads events: it never changes them,
never raises (a log observer that raises is removed by Twisted), and never copies any
field other than the bounded labels it needs.

Limitation: loggers are per module, so two relays in one process are both seen by each
relay's observer.  A daemon runs one relay; tests that count exactly run one at a time.
"""

from __future__ import annotations

import calendar
import collections
import time
from typing import Any

from twisted.logger import ILogObserver, LogLevel
from zope.interface import implementer

from xrelay.operations.metrics import RelayMetrics

__all__ = ["EventObserver", "entry_received_at"]

#: Clients remembered to label their AUTH failures with the listener they came in on.
_CLIENTS_REMEMBERED = 4096


def entry_received_at(entry_id: str) -> float | None:
    """
    When a spool entry was received, from its id (C{YYYYmmddTHHMMSS.ffffff-...}, UTC):
    the delivery outcome event carries the id, not the time.
    """
    try:
        stamp, rest = entry_id.split(".", 1)
        micros = int(rest[:6])
        return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%S")) + micros / 1e6
    except (ValueError, IndexError):
        return None


@implementer(ILogObserver)
class EventObserver:
    """Counts the events of one relay into its L{RelayMetrics}."""

    def __init__(self, metrics: RelayMetrics) -> None:
        self.metrics = metrics
        self._listener_of: collections.OrderedDict[str, str] = collections.OrderedDict()

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            self._observe(event)
        except Exception:
            pass  # never let counting break logging

    def _observe(self, event: dict[str, Any]) -> None:
        namespace = str(event.get("log_namespace", ""))
        if namespace.startswith("xrelay.inbound"):
            self._inbound(event)
        elif namespace.startswith("xrelay.delivery"):
            self._delivery(event)
        elif namespace.startswith("xrelay.tokens"):
            self._tokens(event)

    def _inbound(self, event: dict[str, Any]) -> None:
        m = self.metrics
        if "entry" in event and "account" in event and "size" in event:
            m.accepted(str(event["account"]))
        elif "listener" in event and "client" in event:
            client, listener = str(event["client"]), str(event["listener"])
            m.connection(listener)
            self._listener_of[client] = listener
            self._listener_of.move_to_end(client)
            while len(self._listener_of) > _CLIENTS_REMEMBERED:
                self._listener_of.popitem(last=False)
        elif "mechanism" in event and "count" in event and \
                event.get("log_level") == LogLevel.warn:
            m.auth_failed(self._listener_of.get(str(event.get("client")), "unknown"))

    def _delivery(self, event: dict[str, Any]) -> None:
        if "outcome" not in event or "upstream_reply" not in event:
            return
        m = self.metrics
        account = str(event.get("account", ""))
        if account == "(none)":
            account = "none"
        outcome = event["outcome"]
        failure = str(event.get("failure") or "none")
        if outcome == "delivered" and event.get("bounce_of"):
            m.bounce_sent(account)  # the relay's own DSN, not a device's message
        elif outcome == "delivered":
            m.delivered(account, self._latency(event))
        elif outcome in ("deferred", "partial"):
            m.deferred(account, failure if failure != "none" else "temporary")
        elif outcome == "failed":
            m.bounced(account, failure if failure != "none" else "rejected")
        elif outcome == "handed back":
            m.handed_back(account, failure if failure != "none" else "rejected")

    @staticmethod
    def _latency(event: dict[str, Any]) -> float | None:
        """Seconds from acceptance to this outcome; None when it cannot be known."""
        received = entry_received_at(str(event.get("entry_id", "")))
        try:
            return float(event.get("log_time") or time.time()) - received  # type: ignore[operator]
        except (TypeError, ValueError):
            return None

    def _tokens(self, event: dict[str, Any]) -> None:
        account = event.get("account")
        if account is None:
            return
        m = self.metrics
        if "lifetime" in event:
            m.token_refreshed(str(account))
        elif "hint" in event and event.get("log_level") == LogLevel.error:
            m.token_failed(str(account), "needs_sign_in")
        elif "delay" in event and "error" in event:
            m.token_failed(str(account), "unavailable")
