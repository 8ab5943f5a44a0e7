"""
The device inventory's file: rows merge (counts add, newest facts win, lists stay
short), 10,000 distinct clients do not grow memory or the file beyond the cap, a
corrupt file is set aside at start with one log line and the collector starts, and
rows older than the retention go.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from xrelay.devices import Device, DeviceCollector, DeviceStore, Sighting, read_devices
from xrelay.devices.records import MAX_SENDERS
from xrelay.devices.store import MAX_DEVICES
from tests.inbound.harness import make_config


@attrs.define
class _Listener:
    endpoint: str = "tcp:2525"


@attrs.define
class _Factory:
    listener: _Listener = attrs.field(factory=_Listener)


@attrs.define
class Session:
    """The few things the collector reads of an inbound protocol."""

    client_address: str
    helo: str | None = "printer.lan"
    user: Any = None
    tls: bool = False
    factory: _Factory = attrs.field(factory=_Factory)


def config_in(state_dir: Path) -> Any:
    config = make_config()
    return attrs.evolve(config, server=attrs.evolve(config.server,
                                                    state_dir=str(state_dir)))


def test_a_change_merges_into_its_row() -> None:
    row = Device.seen(Sighting("192.168.10.44", helo="old"), 100.0)
    row.accepted = 2
    change = Device.seen(Sighting("192.168.10.44", helo="new", tls="TLS 1.2"), 200.0)
    change.refused = 1
    change.refusal(200.0, "mail", "550 5.7.1 Relaying denied")
    change.senders = [f"s{i}@example.com" for i in range(MAX_SENDERS + 5)]
    row.merge(change)
    assert (row.first_seen, row.last_seen) == (100.0, 200.0)
    assert row.helo_names == ["old", "new"]
    assert (row.accepted, row.refused, row.tls) == (2, 1, "TLS 1.2")
    assert len(row.senders) == MAX_SENDERS and row.senders[-1] == "s24@example.com"
    assert row.failing
    later = Device.seen(Sighting("192.168.10.44"), 300.0)
    later.accepted, later.last_accepted = 1, 300.0
    row.merge(later)
    assert not row.failing and row.last_refusal is not None
    assert Device.from_stored(row.stored()) == row


@pytest_twisted.ensureDeferred
async def test_ten_thousand_clients_stay_within_the_cap(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    collector = DeviceCollector(lambda: config, reactor)  # the cap: MAX_DEVICES
    collector.startService()
    try:
        most_pending = 0
        for i in range(10_000):
            address = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
            collector.refused(Session(address), "mail", 550, "5.7.1", "Relaying denied")
            most_pending = max(most_pending, len(collector.pending))
            if i % 500 == 499:
                await collector.flush()
        await collector.flush()
    finally:
        await collector.stopService()
    assert most_pending <= MAX_DEVICES
    devices = read_devices(collector.path)
    assert len(devices) == MAX_DEVICES
    # The least recently seen were forgotten: the last ones are kept.
    assert {d.address for d in devices} == {
        f"10.0.{i // 256 % 256}.{i % 256}" for i in range(10_000 - MAX_DEVICES, 10_000)}
    assert collector.counts == {"failing": MAX_DEVICES, "ok": 0}
    size = os.path.getsize(collector.path)
    assert size < MAX_DEVICES * 2048, size


@pytest_twisted.ensureDeferred
async def test_a_corrupt_inventory_is_set_aside_at_start(tmp_path: Path) -> None:
    path = tmp_path / "devices.sqlite"
    path.write_bytes(b"this is not an SQLite database" * 100)
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "xrelay.devices":
            lines.append(formatEvent(event))

    config = config_in(tmp_path)
    globalLogPublisher.addObserver(observe)
    try:
        collector = DeviceCollector(lambda: config, reactor)
        collector.startService()
        collector.refused(Session("192.168.10.44"), "mail", 550, "5.7.1", "denied")
        await collector.stopService()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(lines) == 1, lines
    assert "unreadable" in lines[0] and "devices.sqlite.corrupt" in lines[0]
    assert (tmp_path / "devices.sqlite.corrupt").read_bytes().startswith(b"this is not")
    [device] = read_devices(str(path))
    assert device.address == "192.168.10.44" and device.refused == 1
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_rows_older_than_the_retention_go(tmp_path: Path) -> None:
    store = DeviceStore(str(tmp_path / "devices.sqlite"), warn=print)
    store.open()
    store.merge([Device.seen(Sighting("192.168.10.1"), 1000.0)], 1000.0, days=1)
    store.merge([Device.seen(Sighting("192.168.10.2"), 1000.0 + 86400)],
                1000.0 + 86401, days=1)
    assert store.count() == 1
    store.close()
    with sqlite3.connect(tmp_path / "devices.sqlite") as db:
        assert db.execute("SELECT address FROM device").fetchall() == [("192.168.10.2",)]


@pytest_twisted.ensureDeferred
async def test_a_flood_of_new_clients_between_writes_is_cut_at_the_cap(
        tmp_path: Path) -> None:
    config = config_in(tmp_path)
    collector = DeviceCollector(lambda: config, reactor, limit=100)
    collector.startService()
    try:
        for i in range(250):  # all within one gathering interval, no write between
            collector.refused(Session(f"10.1.{i // 256}.{i % 256}"), "connect", 421,
                              "4.7.0", "Too many connections")
        assert len(collector.pending) == 100
        assert collector.dropped == 150
        await collector.flush()
        assert collector.pending == {} and collector.dropped == 0
    finally:
        await collector.stopService()
    assert len(read_devices(collector.path)) == 100


def test_both_sinks_provide_the_device_events_seam(tmp_path: Path) -> None:
    from zope.interface.verify import verifyObject

    from xrelay.devices import NullDevices
    from xrelay.interfaces import IDeviceEvents

    config = config_in(tmp_path)
    assert verifyObject(IDeviceEvents, DeviceCollector(lambda: config, reactor))
    assert verifyObject(IDeviceEvents, NullDevices())


@pytest_twisted.ensureDeferred
async def test_an_unwritable_inventory_never_stops_the_collector(tmp_path: Path) -> None:
    (tmp_path / "devices.sqlite").mkdir()  # a folder where the file should be
    config = config_in(tmp_path)
    collector = DeviceCollector(lambda: config, reactor)
    collector.startService()  # logs and goes on
    collector.refused(Session("192.168.10.44"), "mail", 550, "5.7.1", "denied")
    await collector.flush()
    assert collector.store.failing
    (tmp_path / "devices.sqlite").rmdir()
    collector.refused(Session("192.168.10.45"), "mail", 550, "5.7.1", "denied")
    await collector.flush()
    await collector.stopService()
    assert not collector.store.failing
    assert [d.address for d in read_devices(collector.path)] == ["192.168.10.45"]
