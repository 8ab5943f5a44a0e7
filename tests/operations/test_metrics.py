"""
The relay's metrics, read back with prometheus_client's own parser: exact counter values
after a known sequence of events, queue gauges from a real spool, token states.
"""

from __future__ import annotations

import os

from prometheus_client.parser import text_string_to_metric_families

from xrelay.envelope import Envelope
from xrelay.operations.metrics import RelayMetrics
from xrelay.spool import DEFERRED, Spool, run_inline
from xrelay.records import TokenStatus

NOW = 1_700_000_000.0


def samples(metrics: RelayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by name and sorted labels."""
    text = metrics.exposition().decode("utf-8")
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def test_counters_after_a_known_sequence() -> None:
    metrics = RelayMetrics(clock=lambda: NOW)
    for _ in range(3):
        metrics.accepted("main")
    metrics.accepted("google")
    metrics.delivered("main", latency=0.3)
    metrics.delivered("main", latency=42.0)
    metrics.deferred("main", "connection")
    metrics.deferred("main", "connection")
    metrics.deferred("main", "needs_sign_in")
    metrics.bounced("google", "send_as_denied")
    metrics.token_refreshed("main")
    metrics.token_failed("main", "unavailable")
    metrics.connection("tcp:2525")
    metrics.connection("tcp:2525")
    metrics.auth_failed("tcp:2525")

    s = samples(metrics)
    assert s[("xrelay_messages_accepted_total", (("account", "main"),))] == 3
    assert s[("xrelay_messages_accepted_total", (("account", "google"),))] == 1
    assert s[("xrelay_messages_delivered_total", (("account", "main"),))] == 2
    assert s[("xrelay_messages_deferred_total",
              (("account", "main"), ("reason", "connection")))] == 2
    assert s[("xrelay_messages_deferred_total",
              (("account", "main"), ("reason", "needs_sign_in")))] == 1
    assert s[("xrelay_messages_bounced_total",
              (("account", "google"), ("reason", "send_as_denied")))] == 1
    assert s[("xrelay_token_refreshes_total", (("account", "main"),))] == 1
    assert s[("xrelay_token_failures_total",
              (("account", "main"), ("reason", "unavailable")))] == 1
    assert s[("xrelay_connections_total", (("listener", "tcp:2525"),))] == 2
    assert s[("xrelay_auth_failures_total", (("listener", "tcp:2525"),))] == 1
    # The histogram: one delivery in the 0.5 s bucket, both in the 60 s bucket.
    assert s[("xrelay_delivery_latency_seconds_bucket",
              (("account", "main"), ("le", "0.5")))] == 1
    assert s[("xrelay_delivery_latency_seconds_bucket",
              (("account", "main"), ("le", "60.0")))] == 2
    assert s[("xrelay_delivery_latency_seconds_count", (("account", "main"),))] == 2
    assert s[("xrelay_delivery_latency_seconds_sum", (("account", "main"),))] == 42.3


def test_each_relay_has_its_own_registry() -> None:
    """Two relays in one process never add to each other's counters."""
    first, second = RelayMetrics(), RelayMetrics()
    first.accepted("main")
    assert ("xrelay_messages_accepted_total", (("account", "main"),)) in samples(first)
    assert ("xrelay_messages_accepted_total", (("account", "main"),)) not in samples(second)


def _spool_with(tmp_path: str, received: list[float]) -> Spool:
    spool = Spool(os.path.join(tmp_path, "spool"), reactor=object(), run_blocking=run_inline)
    for when in received:
        message = spool.incoming(Envelope("a@example.com", ("b@example.org",),
                                          account="main", received_at=when))
        message.write(b"Subject: x\r\n\r\nbody\r\n")
        message.commit()
    return spool


def test_queue_depth_and_oldest_age_from_the_spool(tmp_path) -> None:
    spool = _spool_with(str(tmp_path), [NOW - 600, NOW - 60, NOW - 5])
    oldest = spool.get(spool.ids("queued")[0])
    spool.move(oldest, DEFERRED)
    metrics = RelayMetrics(clock=lambda: NOW)
    metrics.watch_queue(spool)

    s = samples(metrics)
    assert s[("xrelay_queue_messages", (("state", "queued"),))] == 2
    assert s[("xrelay_queue_messages", (("state", "deferred"),))] == 1
    assert s[("xrelay_queue_messages", (("state", "active"),))] == 0
    assert s[("xrelay_queue_messages", (("state", "failed"),))] == 0
    assert s[("xrelay_queue_oldest_age_seconds", ())] == 600.0


def test_empty_queue_has_no_age(tmp_path) -> None:
    metrics = RelayMetrics(clock=lambda: NOW)
    metrics.watch_queue(_spool_with(str(tmp_path), []))
    assert samples(metrics)[("xrelay_queue_oldest_age_seconds", ())] == 0.0


def test_token_states_read_at_scrape_time() -> None:
    statuses = [TokenStatus("main", "ok", expires_at=NOW + 3000),
                TokenStatus("boss", "needs sign-in")]
    metrics = RelayMetrics(clock=lambda: NOW)
    metrics.watch_tokens(lambda: statuses)

    s = samples(metrics)
    assert s[("xrelay_token_state", (("account", "main"), ("state", "ok")))] == 1
    assert s[("xrelay_token_state", (("account", "main"), ("state", "needs sign-in")))] == 0
    assert s[("xrelay_token_state", (("account", "boss"), ("state", "needs sign-in")))] == 1
    assert s[("xrelay_token_expires_in_seconds", (("account", "main"),))] == 3000
    assert ("xrelay_token_expires_in_seconds", (("account", "boss"),)) not in s

    statuses[1] = TokenStatus("boss", "ok", expires_at=NOW + 10)
    s = samples(metrics)
    assert s[("xrelay_token_state", (("account", "boss"), ("state", "ok")))] == 1
