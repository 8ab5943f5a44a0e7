"""
The stages tell their L{IRelayEvents} sink what happened, explicitly: connections and
AUTH failures by listener from a real inbound listener, accepted messages, token
refreshes and failures from a token source, delivery outcomes with their latency from
the delivery engine.  Nothing here reads a log event: the counts are the sink's own.
Also the helpers: the guard that keeps a broken sink out of the mail path (and says so
once), the fan-out, the null sink.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from tests.delivery.delivery_harness import Harness
from tests.delivery.test_engine import BUSY, SEND_AS, UNKNOWN
from tests.inbound.harness import (
    ERP_PASSWORD,
    connect,
    ehlo,
    inline,
    make_config,
    plain,
    start,
    stop,
)
from tests.operations.test_metrics import samples
from tests.tokens.test_source import ScriptedGrant
from xrelay.config import ListenerConfig
from xrelay.delivery.testing import fail_all, per_recipient
from xrelay.envelope import FailureKind
from xrelay.interfaces import IRelayEvents
from xrelay.events import (
    FanOutEvents,
    GuardedEvents,
    NullEvents,
    entry_received_at,
    guarded,
)
from xrelay.operations.metrics import RelayMetrics
from xrelay.tokens.source import RefreshingTokenSource
from xrelay.transport.pool import trouble_reply
from xrelay.transport.trouble import ConnectionTrouble

FIRST = "tcp:0:interface=127.0.0.1"
SECOND = "tcp:0:interface=127.0.0.2"  # all of 127/8 is loopback: a second listener label


def two_listeners(**server: Any) -> Any:
    return make_config(listen=(ListenerConfig(FIRST), ListenerConfig(SECOND)),
                       require_tls_for_auth=False, **server)


async def send_one(port: int, host: str = "127.0.0.1") -> str:
    client = await connect(port, host=host)
    await ehlo(client)
    assert (await client.command(b"MAIL FROM:<scanner@example.com>")) == "250 2.1.0 Ok"
    await client.command(b"RCPT TO:<alice@example.org>")
    await client.command(b"DATA")
    reply: str = await client.command(b"Subject: x\r\n\r\nscan\r\n.\r\n")
    await client.command(b"QUIT")
    return reply


@pytest_twisted.ensureDeferred
async def test_inbound_events_are_counted_by_listener() -> None:
    metrics = RelayMetrics()
    running = await start(two_listeners(), run_blocking=inline, events=metrics)
    try:
        assert (await send_one(running.ports[0])).startswith("250 2.0.0 Ok: queued as")
        client = await connect(running.ports[1], host="127.0.0.2")
        await ehlo(client)
        for _ in range(2):
            assert (await client.command(b"AUTH PLAIN " + plain("erp", "wrong"))) == (
                "535 5.7.8 Authentication credentials invalid")
        assert (await client.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))) == (
            "235 2.7.0 Authentication successful")
    finally:
        await stop(running)

    s = samples(metrics)
    assert s[("xrelay_connections_total", (("listener", FIRST),))] == 1
    assert s[("xrelay_connections_total", (("listener", SECOND),))] == 1
    assert s[("xrelay_auth_failures_total", (("listener", SECOND),))] == 2
    assert ("xrelay_auth_failures_total", (("listener", FIRST),)) not in s
    assert s[("xrelay_messages_accepted_total", (("account", "main"),))] == 1


def test_token_events_are_counted() -> None:
    clock = Clock()
    metrics = RelayMetrics()
    main_grant, boss_grant = ScriptedGrant(), ScriptedGrant(hint="run `xrelay login boss`")
    main = RefreshingTokenSource("main", main_grant, clock, events=metrics)
    boss = RefreshingTokenSource("boss", boss_grant, clock, events=metrics)
    main.start()
    boss.start()
    main_grant.answer("token-1", lifetime=3600)
    boss_grant.refuse()
    clock.advance(3600)  # the refresh ahead of expiry asks again; the platform is down
    assert len(main_grant.pending) == 1
    main_grant.unavailable()

    s = samples(metrics)
    assert s[("xrelay_token_refreshes_total", (("account", "main"),))] == 1
    assert ("xrelay_token_refreshes_total", (("account", "boss"),)) not in s
    assert s[("xrelay_token_failures_total",
              (("account", "boss"), ("reason", "needs_sign_in")))] == 1
    assert s[("xrelay_token_failures_total",
              (("account", "main"), ("reason", "unavailable")))] == 1
    main.stop()
    boss.stop()


def test_delivery_outcomes_are_counted_with_latency(tmp_path) -> None:
    metrics = RelayMetrics()
    harness = Harness(tmp_path)
    engine = harness.start(events=metrics)
    transport = harness.transport

    transport.hold = True
    harness.receive()
    harness.clock.advance(7.5)  # accepted 7.5 s before the upstream took it
    transport.release()
    transport.hold = False
    transport.script = [per_recipient({"b@example.org": BUSY})]
    harness.receive(recipients=("a@example.org", "b@example.org"))
    # Both permanent failures bounce to scanner@example.com; the bounces are accepted.
    transport.script = [fail_all(SEND_AS, FailureKind.SEND_AS_DENIED)]
    harness.receive()
    transport.script = [fail_all(UNKNOWN)]
    harness.receive()
    transport.script = [fail_all(SEND_AS, FailureKind.SEND_AS_DENIED)]
    handed_back = harness.receive(submit=False)
    result: Any = engine.deliver_now(handed_back).result
    assert result.handed_back
    # Last: an upstream that cannot be reached pauses the account.
    transport.script = [fail_all(trouble_reply("smtp.office365.com:587", ConnectionTrouble(
        "connect", "Connection refused")), FailureKind.CONNECTION)]
    harness.receive()

    # The upstream accepted 4 messages: the device's first one, the partial one's first
    # recipient, and the 2 bounces.  Only the first is a device's message delivered.
    assert engine.totals == {"delivered": 3, "deferred": 2, "failed": 2, "bounces": 2}
    s = samples(metrics)
    assert s[("xrelay_messages_delivered_total", (("account", "main"),))] == 1
    assert s[("xrelay_bounces_sent_total", (("account", "main"),))] == 2
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
    assert s[("xrelay_delivery_latency_seconds_sum", (("account", "main"),))] == 7.5


def test_entry_ids_tell_when_they_were_received() -> None:
    assert entry_received_at("20261129T060000.500000-1-000000") == 1795932000.5
    assert entry_received_at("not-an-id") is None


class BrokenSink:
    """A sink with a bug in every method."""

    def __getattr__(self, name: str) -> Any:
        def broken(*arguments: Any) -> None:
            raise ZeroDivisionError(f"bug in {name}")
        return broken


@pytest.fixture
def failures() -> Any:
    """The log.failure events logged while the test runs."""
    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            seen.append(event)
    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_a_broken_sink_never_breaks_delivery_and_is_logged_once(tmp_path,
                                                                 failures) -> None:
    harness = Harness(tmp_path)
    engine = harness.start(events=BrokenSink())
    harness.transport.script = [fail_all(UNKNOWN)]  # a bounce too: two delivered events
    first = harness.receive()
    harness.receive()
    harness.receive()

    assert engine.totals == {"delivered": 3, "deferred": 0, "failed": 1, "bounces": 1}
    assert harness.spool is not None
    assert harness.spool.counts()["queued"] == 0 and [
        e.entry_id for e in harness.spool.entries()] == [first]  # the failed one only
    assert isinstance(engine.events, GuardedEvents)
    assert engine.events.failures == {"delivered": 2, "bounced": 1, "bounce_sent": 1}
    logged = sorted((e["event"], e["log_failure"].type) for e in failures)
    assert logged == [("bounce_sent", ZeroDivisionError), ("bounced", ZeroDivisionError),
                      ("delivered", ZeroDivisionError)]
    [text] = [formatEvent(e) for e in failures if e["event"] == "delivered"]
    assert "failed on delivered('main', " in text and "this count is lost" in text, text


@pytest_twisted.ensureDeferred
async def test_a_broken_sink_never_costs_a_250(failures) -> None:
    running = await start(two_listeners(), run_blocking=inline, events=BrokenSink())
    try:
        assert (await send_one(running.ports[0])).startswith("250 2.0.0 Ok: queued as")
        assert (await send_one(running.ports[1], "127.0.0.2")).startswith("250 2.0.0 Ok")
    finally:
        await stop(running)
    assert len(running.spool.messages()) == 2
    assert sorted(e["event"] for e in failures) == ["accepted", "connection"]
    assert running.service.events.failures == {"accepted": 2, "connection": 2}


def test_fan_out_tells_every_sink_even_past_a_broken_one(failures) -> None:
    first, second = RelayMetrics(), RelayMetrics()
    events = FanOutEvents(BrokenSink(), first, second)
    events.accepted("main")
    events.delivered("main", 2.0)
    events.token_failed("main", "unavailable")
    for metrics in (first, second):
        s = samples(metrics)
        assert s[("xrelay_messages_accepted_total", (("account", "main"),))] == 1
        assert s[("xrelay_messages_delivered_total", (("account", "main"),))] == 1
        assert s[("xrelay_token_failures_total",
                  (("account", "main"), ("reason", "unavailable")))] == 1
    assert len(failures) == 3


def test_the_sinks_provide_the_interface() -> None:
    for sink in (RelayMetrics(), NullEvents(), GuardedEvents(RelayMetrics()),
                 FanOutEvents(RelayMetrics())):
        assert verifyObject(IRelayEvents, sink)
    shared = guarded(RelayMetrics())
    assert guarded(shared) is shared  # one guard per relay, shared by its stages
    assert isinstance(guarded(None), NullEvents)
    NullEvents().delivered("main", 1.0)  # counts nothing, raises nothing
