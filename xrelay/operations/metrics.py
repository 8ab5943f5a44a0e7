"""
The relay's Prometheus metrics: counters for what happened, and gauges read at scrape
time for what is (queue depth and age, token states).

Each relay has its own L{CollectorRegistry}, never the process-global one, so that two
relays embedded in one program (or in one test run) never add to each other's numbers.
L{RelayMetrics} is the relay's L{IRelayEvents} sink: the stages call it explicitly
(C{makeService} gives the same one to all of them), never through the log, so a counter
does not depend on a log line's fields nor on log output being on.  The gauges are
computed by collectors that read the spool and the token sources only when someone
scrapes.

Labels are bounded sets (account names, listener descriptions, failure kinds), never
addresses or reply texts: a label per recipient would grow without end.  Nothing here
may carry a secret.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.metrics_core import Metric
from zope.interface import implementer

from xrelay.interfaces import IRelayEvents, ISpool
from xrelay.tokens.status import TokenState

__all__ = ["RelayMetrics", "QueueCollector", "TokenCollector", "ExpiryCollector",
           "CONTENT_TYPE"]

#: What C{/metrics} answers with: the Prometheus text format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Delivery latency buckets in seconds: from "at once" to "after a day of retries".
LATENCY_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)

#: The queue states that count as waiting for delivery (failed entries are finished).
WAITING_STATES = ("queued", "active", "deferred")


@implementer(IRelayEvents)
class RelayMetrics:
    """
    The metrics of one relay, and its L{IRelayEvents} sink.

    @param registry: where to register; a fresh registry by default.
    @param clock: seconds since the epoch, for ages (C{time.time} by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock
        r = self.registry
        self.messages_accepted = Counter(
            "xrelay_messages_accepted", "Messages accepted from clients and spooled.",
            ["account"], registry=r)
        self.messages_delivered = Counter(
            "xrelay_messages_delivered", "Messages delivered upstream (all recipients "
            "done), bounces not included (see xrelay_bounces_sent).", ["account"],
            registry=r)
        self.bounces_sent = Counter(
            "xrelay_bounces_sent", "Bounces (DSNs the relay wrote) delivered upstream to "
            "the senders of failed messages.", ["account"], registry=r)
        self.messages_deferred = Counter(
            "xrelay_messages_deferred", "Delivery attempts that ended in a retry later.",
            ["account", "reason"], registry=r)
        self.messages_bounced = Counter(
            "xrelay_messages_bounced", "Messages (or some of their recipients) failed "
            "for good and bounced.", ["account", "reason"], registry=r)
        self.messages_handed_back = Counter(
            "xrelay_messages_handed_back", "Pass-through messages refused upstream and "
            "handed back to the client with the upstream's reply (no retry, no bounce).",
            ["account", "reason"], registry=r)
        self.token_refreshes = Counter(
            "xrelay_token_refreshes", "Access tokens obtained from the identity platform.",
            ["account"], registry=r)
        self.token_failures = Counter(
            "xrelay_token_failures", "Token requests that failed.",
            ["account", "reason"], registry=r)
        self.connections = Counter(
            "xrelay_connections", "SMTP client connections accepted.",
            ["listener"], registry=r)
        self.auth_failures = Counter(
            "xrelay_auth_failures", "Failed SMTP AUTH attempts.", ["listener"], registry=r)
        self.delivery_latency = Histogram(
            "xrelay_delivery_latency_seconds", "Time from acceptance to upstream "
            "acceptance of a message.", ["account"], buckets=LATENCY_BUCKETS, registry=r)

    # -- events ----------------------------------------------------------------

    def accepted(self, account: str) -> None:
        self.messages_accepted.labels(account=account or "none").inc()

    def delivered(self, account: str, latency: float | None = None) -> None:
        self.messages_delivered.labels(account=account or "none").inc()
        if latency is not None and latency >= 0:
            self.delivery_latency.labels(account=account or "none").observe(latency)

    def bounce_sent(self, account: str) -> None:
        self.bounces_sent.labels(account=account or "none").inc()

    def deferred(self, account: str, reason: str) -> None:
        self.messages_deferred.labels(account=account or "none", reason=reason).inc()

    def bounced(self, account: str, reason: str) -> None:
        self.messages_bounced.labels(account=account or "none", reason=reason).inc()

    def handed_back(self, account: str, reason: str) -> None:
        self.messages_handed_back.labels(account=account or "none", reason=reason).inc()

    def token_refreshed(self, account: str) -> None:
        self.token_refreshes.labels(account=account).inc()

    def token_failed(self, account: str, reason: str) -> None:
        self.token_failures.labels(account=account, reason=reason).inc()

    def connection(self, listener: str) -> None:
        self.connections.labels(listener=listener).inc()

    def auth_failed(self, listener: str) -> None:
        self.auth_failures.labels(listener=listener).inc()

    # -- state read at scrape time ------------------------------------------------

    def watch_relay(self, relay: Any) -> None:
        """
        Report this relay's state at every scrape: its spool's queue, its accounts'
        token and provider states, its credentials' expiry dates.  C{relay.tokens} and
        C{relay.delivery} are looked up at scrape time.
        """
        self.watch_queue(relay.spool)
        self.watch_tokens(lambda: relay.tokens.status().values())
        self.watch_accounts(lambda: relay.delivery.status().accounts.values())
        self.watch_expiries(lambda: relay.tokens.expiries())
        if getattr(relay, "devices", None) is not None:
            self.registry.register(DeviceStateCollector(lambda: relay.devices.counts))

    def watch_queue(self, spool: ISpool) -> None:
        """Report this spool's depth and oldest waiting entry at every scrape."""
        self.registry.register(QueueCollector(spool, self.clock))

    def watch_tokens(self, statuses: Callable[[], Iterable[Any]]) -> None:
        """Report the token states that C{statuses()} gives at every scrape."""
        self.registry.register(TokenCollector(statuses, self.clock))

    def watch_accounts(self, statuses: Callable[[], Iterable[Any]]) -> None:
        """Report the provider states (held or ok) that C{statuses()} gives."""
        self.registry.register(AccountStateCollector(statuses))
    def watch_expiries(self, expiries: Callable[[], Iterable[Any]]) -> None:
        """Report the credentials' end dates that C{expiries()} gives at every scrape."""
        self.registry.register(ExpiryCollector(expiries))

    def exposition(self) -> bytes:
        """The whole registry in the Prometheus text format."""
        return generate_latest(self.registry)


class QueueCollector(Collector):
    """
    Queue depth per state and the age of the oldest waiting entry, from the spool
    folders themselves: the numbers are true even right after a restart.
    """

    def __init__(self, spool: ISpool, clock: Callable[[], float]) -> None:
        self.spool = spool
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("xrelay_queue_messages",
                                  "Messages in the spool, by state.", labels=["state"])
        oldest_id: str | None = None
        for state, count in sorted(self.spool.counts().items()):
            depth.add_metric([state], count)
            if state in WAITING_STATES and count:
                ids = self.spool.ids(state)
                if ids and (oldest_id is None or ids[0] < oldest_id):
                    oldest_id = ids[0]
        yield depth
        age = 0.0
        if oldest_id is not None:
            try:
                received = self.spool.get(oldest_id).received_at
            except KeyError:  # delivered while we looked: nothing is that old any more
                received = None
            if received:
                age = max(0.0, self.clock() - received)
        yield GaugeMetricFamily("xrelay_queue_oldest_age_seconds",
                                "Age of the oldest message waiting for delivery "
                                "(0 when none waits).", value=age)


class TokenCollector(Collector):
    """One gauge per account and token state (1 for the current one), and expiry."""

    STATES = tuple(s.value for s in TokenState)

    def __init__(self, statuses: Callable[[], Iterable[Any]],
                 clock: Callable[[], float]) -> None:
        self.statuses = statuses
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily("xrelay_token_state", "1 for the account's current "
                                  "token state.", labels=["account", "state"])
        expires = GaugeMetricFamily("xrelay_token_expires_in_seconds", "Seconds until "
                                    "the account's access token expires.",
                                    labels=["account"])
        for status in self.statuses():
            for name in self.STATES:
                state.add_metric([status.account, name], 1.0 if status.state == name else 0.0)
            if status.expires_at is not None:
                expires.add_metric([status.account], status.expires_at - self.clock())
        yield state
        yield expires


class DeviceStateCollector(Collector):
    """
    C{xrelay_devices{state}}: devices in the inventory per state ("failing": the last
    thing it tried was refused; "ok"), as of the inventory's last write.
    """

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from xrelay.devices.records import STATES

        family = GaugeMetricFamily("xrelay_devices", "Devices in the inventory per state "
                                   "(failing: its last attempt was refused).",
                                   labels=["state"])
        counts = self.counts()
        for state in STATES:
            family.add_metric([state], float(counts.get(state, 0)))
        yield family


class AccountStateCollector(Collector):
    """C{xrelay_account_state{account,state}}: 1 for the account's current provider
    state (ok, blocked by provider, SMTP AUTH disabled, ...), 0 for the others."""

    def __init__(self, statuses: Callable[[], Iterable[Any]]) -> None:
        self.statuses = statuses

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from xrelay.delivery.accounts import STATES

        family = GaugeMetricFamily("xrelay_account_state", "1 for the account's current "
                                   "provider state.", labels=["account", "state"])
        for status in self.statuses():
            for name in STATES:
                family.add_metric([status.account, name],
                                  1.0 if status.state == name else 0.0)
        yield family
class ExpiryCollector(Collector):
    """
    C{xrelay_credential_expiry_timestamp_seconds}: when each credential stops working,
    labelled C{account} (client certificates and secrets) or C{listener} (the server's
    TLS certificate), and C{credential}.  Alert on C{... - time() < 14 * 86400}.
    """

    NAME = "xrelay_credential_expiry_timestamp_seconds"

    def __init__(self, expiries: Callable[[], Iterable[Any]]) -> None:
        self.expiries = expiries

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.NAME, "When the credential expires (POSIX time): client "
                        "certificates and secrets of accounts, TLS certificates of "
                        "listeners.", "gauge")
        for e in self.expiries():
            metric.add_sample(self.NAME, {e.scope: e.owner, "credential": e.credential},
                              e.expires_at)
        yield metric
