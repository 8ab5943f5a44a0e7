"""
The event observer counts the stages' own log events: connections and AUTH failures by
listener, accepted messages, token refreshes and failures, delivery outcomes.  The
events here are emitted through real Loggers with the namespaces and fields that the
stages use, so a change in the stages' events shows up as a failure here.
"""

from __future__ import annotations

from twisted.logger import LogPublisher, Logger

from tests.operations.test_metrics import samples
from xrelay.operations.events import EventObserver, entry_received_at
from xrelay.operations.metrics import RelayMetrics


def publisher_with_metrics() -> tuple[LogPublisher, RelayMetrics]:
    metrics = RelayMetrics()
    publisher = LogPublisher(EventObserver(metrics))
    return publisher, metrics


def test_inbound_and_token_events_are_counted() -> None:
    publisher, metrics = publisher_with_metrics()
    inbound = Logger(namespace="xrelay.inbound.protocol", observer=publisher)
    transaction = Logger(namespace="xrelay.inbound.transaction", observer=publisher)
    tokens = Logger(namespace="xrelay.tokens", observer=publisher)

    inbound.info("inbound connection from {client} on {listener}", client="10.0.0.7",
                 listener="tcp:2525")
    inbound.info("inbound connection from {client} on {listener}", client="10.0.0.8",
                 listener="tcp:587")
    for _ in range(2):
        inbound.warn("inbound client {client}: authentication failed ({mechanism}), "
                     "{count} on this connection", client="10.0.0.8", mechanism="PLAIN",
                     count=1)
    transaction.info("inbound message {message} queued as {entry} from {client} sender "
                     "{sender} user {user} account {account} recipients {count} size {size}",
                     message="m1", entry="e1", client="10.0.0.7", sender="a@example.com",
                     user=None, account="main", count=1, size=10)
    tokens.info("New access token for account {account}, valid for {lifetime:.0f}s",
                account="main", lifetime=3599.0)
    tokens.error("Account {account} needs sign-in: {error}. Its mail waits in the "
                 "queue; to resume, {hint}", account="boss", error="invalid_grant",
                 hint="run `xrelay login boss`")
    tokens.warn("No token for account {account}: {error}; retrying in {delay:.0f}s",
                account="main", error="503", delay=5.0)

    s = samples(metrics)
    assert s[("xrelay_connections_total", (("listener", "tcp:2525"),))] == 1
    assert s[("xrelay_connections_total", (("listener", "tcp:587"),))] == 1
    assert s[("xrelay_auth_failures_total", (("listener", "tcp:587"),))] == 2
    assert s[("xrelay_messages_accepted_total", (("account", "main"),))] == 1
    assert s[("xrelay_token_refreshes_total", (("account", "main"),))] == 1
    assert s[("xrelay_token_failures_total",
              (("account", "boss"), ("reason", "needs_sign_in")))] == 1
    assert s[("xrelay_token_failures_total",
              (("account", "main"), ("reason", "unavailable")))] == 1


def test_delivery_outcomes_are_counted_with_latency() -> None:
    publisher, metrics = publisher_with_metrics()
    engine = Logger(namespace="xrelay.delivery.engine", observer=publisher)
    received = entry_received_at("20261129T060000.500000-1-000000")
    assert received == 1795932000.5

    def outcome(entry_id: str, outcome: str, failure: str,
                bounce_of: str | None = None) -> None:
        engine.info("{entry_id} ... {outcome} ... upstream: {upstream_reply}",
                    entry_id=entry_id, sender="a@example.com", account="main",
                    outcome=outcome, delivered=1, deferred=0, failed=0, recipient_count=1,
                    upstream_reply="250 ok", failure=failure, attempts=1,
                    bounce_of=bounce_of)

    outcome("20261129T060000.500000-1-000000", "delivered", "none")
    outcome("20261129T060001.000000-1-000001", "deferred", "connection")
    outcome("20261129T060002.000000-1-000002", "partial", "none")
    outcome("20261129T060003.000000-1-000003", "failed", "send_as_denied")
    outcome("20261129T060004.000000-1-000004", "failed", "none")
    outcome("20261129T060005.000000-1-000005", "handed back", "send_as_denied")
    # The bounce for ...003 delivered: a bounce sent, not a device's message delivered.
    outcome("20261129T060006.000000-1-000006", "delivered", "none",
            bounce_of="20261129T060003.000000-1-000003")

    s = samples(metrics)
    assert s[("xrelay_messages_delivered_total", (("account", "main"),))] == 1
    assert s[("xrelay_messages_deferred_total",
              (("account", "main"), ("reason", "connection")))] == 1
    assert s[("xrelay_messages_deferred_total",
              (("account", "main"), ("reason", "temporary")))] == 1
    assert s[("xrelay_messages_bounced_total",
              (("account", "main"), ("reason", "send_as_denied")))] == 1
    assert s[("xrelay_messages_bounced_total",
              (("account", "main"), ("reason", "rejected")))] == 1
    assert s[("xrelay_messages_handed_back_total",
              (("account", "main"), ("reason", "send_as_denied")))] == 1
    assert s[("xrelay_delivery_latency_seconds_count", (("account", "main"),))] == 1
    assert s[("xrelay_bounces_sent_total", (("account", "main"),))] == 1


def test_a_broken_event_never_breaks_logging() -> None:
    """Observers that raise are removed by Twisted: this one swallows its own errors."""
    metrics = RelayMetrics()
    observer = EventObserver(metrics)
    observer({"log_namespace": "xrelay.delivery.engine", "outcome": "delivered",
              "upstream_reply": None, "account": "main",
              "entry_id": "20261129T060000.500000-1-000000", "log_time": "not a time"})
    observer({"log_namespace": "xrelay.tokens", "account": "main"})
    observer({})
    # The delivery was counted before the latency computation failed.
    assert samples(metrics)[("xrelay_messages_delivered_total", (("account", "main"),))] == 1
