"""
The relay's metrics as C{makeService} wires them, against the sandbox over real SMTP
and HTTP: exact counts with log output switched off entirely, two relays in one process
that keep their own counts, the metrics of a relay without an admin page, and an
embedding program's own L{IRelayEvents} sink told everything the metrics are told.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from tests.admin.conftest import free_port, start_relay, write_config
from tests.admin.test_web import (
    metric_samples,
    metrics_after_a_known_sequence,
    smtp_send,
    until,
)
from xrelay.configfile import read_config
from xrelay.interfaces import IRelayEvents
from xrelay.service import makeService

SENDER = "printer@sandbox.example"


@pytest_twisted.ensureDeferred
async def test_metrics_count_with_log_output_switched_off(world) -> None:
    """
    Every observer of the global log publisher (where every Logger in xrelay emits:
    the log file, twistd's, the startup buffer, everyone's) is removed while the relay
    starts, takes three messages, delivers and bounces, and is scraped: no log event
    reaches anybody, so metrics that came from the log would all be missing, and the
    counts are exact all the same.
    """
    observers = list(globalLogPublisher._observers)
    assert observers, "nothing to switch off: the test would prove nothing"
    for observer in observers:
        globalLogPublisher.removeObserver(observer)
    try:
        await metrics_after_a_known_sequence(world)
        assert globalLogPublisher._observers == []  # still off at the end
    finally:
        for observer in observers:
            globalLogPublisher.addObserver(observer)


async def scrape(world: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await treq.get(world.admin_url + "/metrics")
    return metric_samples((await response.content()).decode())


@pytest_twisted.ensureDeferred
async def test_two_relays_in_one_process_keep_their_own_counts(world) -> None:
    first = start_relay(world)
    other = attrs.evolve(world, config_path=world.tmp / "second.toml",
                         state_dir=world.tmp / "second-state", smtp_port=free_port(),
                         admin_port=free_port(), relay=None)
    write_config(other)
    second = start_relay(other)
    try:
        await smtp_send(world.smtp_port, SENDER, ["a@example.net"])
        await smtp_send(world.smtp_port, SENDER, ["b@example.net"])
        await smtp_send(other.smtp_port, SENDER, ["c@example.net"])
        await until(lambda: len(world.sandbox.mailbox.messages) == 3
                    and first.delivery.totals["delivered"] == 2
                    and second.delivery.totals["delivered"] == 1)
        mine, theirs = await scrape(world), await scrape(other)
    finally:
        await second.stopService()

    assert first.metrics is not second.metrics
    accepted = ("xrelay_messages_accepted_total", (("account", "sandbox"),))
    delivered = ("xrelay_messages_delivered_total", (("account", "sandbox"),))
    refreshes = ("xrelay_token_refreshes_total", (("account", "sandbox"),))
    latencies = ("xrelay_delivery_latency_seconds_count", (("account", "sandbox"),))
    assert (mine[accepted], mine[delivered], mine[latencies]) == (2, 2, 2)
    assert (theirs[accepted], theirs[delivered], theirs[latencies]) == (1, 1, 1)
    assert mine[refreshes] == theirs[refreshes] == 1  # each relay's own token source
    listener = "tcp:{}:interface=127.0.0.1".format
    connections = {k[1]: v for k, v in mine.items() if k[0] == "xrelay_connections_total"}
    assert connections == {(("listener", listener(world.smtp_port)),): 2}
    connections = {k[1]: v for k, v in theirs.items() if k[0] == "xrelay_connections_total"}
    assert connections == {(("listener", listener(other.smtp_port)),): 1}


@implementer(IRelayEvents)
class RecordingEvents:
    """An embedding program's sink: writes down every event."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        if name not in IRelayEvents.names():
            raise AttributeError(name)
        return lambda *arguments: self.events.append((name, *arguments))


@pytest_twisted.ensureDeferred
async def test_an_embedder_sink_hears_what_the_metrics_count_without_an_admin_page(
        world) -> None:
    recorder = RecordingEvents()
    config = attrs.evolve(read_config(str(world.config_path)), admin=None)
    relay = makeService(config, reactor=reactor, events=recorder)
    relay.startService()
    world.relay = relay
    assert relay.admin is None
    await smtp_send(world.smtp_port, SENDER, ["a@example.net"])
    await until(lambda: relay.delivery.totals["delivered"] == 1)

    listener = f"tcp:{world.smtp_port}:interface=127.0.0.1"
    heard = [e for e in recorder.events if e[0] != "token_failed"]  # boss: not signed in
    [delivered] = [e for e in heard if e[0] == "delivered"]
    assert delivered[:2] == ("delivered", "sandbox") and delivered[2] >= 0
    assert sorted(e for e in heard if e[0] != "delivered") == [
        ("accepted", "sandbox"), ("connection", listener), ("token_refreshed", "sandbox")]
    s = metric_samples(relay.metrics.exposition().decode())
    assert s[("xrelay_messages_accepted_total", (("account", "sandbox"),))] == 1
    assert s[("xrelay_messages_delivered_total", (("account", "sandbox"),))] == 1
    assert s[("xrelay_connections_total", (("listener", listener),))] == 1
    assert s[("xrelay_queue_messages", (("state", "queued"),))] == 0  # gauges too
