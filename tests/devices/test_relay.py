"""
The inventory against a real relay on loopback: a trusted printer, a device outside
allow_networks, a device with a wrong then the right password, and a TLS 1.0 device on
a default listener; `xrelay devices --json` lists each with the right counts, TLS, user
and last refusal, with the daemon running (asked over the control socket) and stopped;
the metric per state.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from twisted.logger import formatEvent, globalLogPublisher

from tests.admin.conftest import start_relay
from tests.admin.test_web import until
from tests.devices.scenario import (AUTHENTICATING, OUTSIDE, TRUSTED, by_device, configure,
                                    devices_json, eventually, log_in_wrong_then_right,
                                    send_from, tls1_device, xrelay_json)
from tests.inbound.tlsclient import OPENSSL
from xrelay.devices import devices_path, read_devices


async def meet_the_devices(world: Any) -> Any:
    """
    Start the relay, let each device try, wait until the trusted ones delivered; the
    relay and the certificates its STARTTLS uses.
    """
    certs = configure(world)
    relay = start_relay(world)
    await relay.inbound.when_listening()
    port = world.smtp_port
    assert await send_from(port, TRUSTED, "printer-2.lan", "printer@sandbox.example") is None
    refused = await send_from(port, OUTSIDE, "scanner-3.lan", "scanner3@example.com")
    assert refused is not None and refused.smtp_code == 550
    lines: list[str] = []
    observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        wrong, failed = await log_in_wrong_then_right(port, certs)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert wrong is not None and wrong.smtp_code == 535 and failed == {}
    # The log names the device and the user it tried, never the password.
    assert (f"inbound client {AUTHENTICATING}: authentication failed for user 'scanner' "
            "(PLAIN), 1 on this connection") in lines, lines
    assert not any("not the password" in line for line in lines)
    if OPENSSL is not None:
        run = await tls1_device(port, world.tmp)
        assert "queued as" not in run.output

        # The relay tells the failed handshake when the connection is gone, which may
        # be a moment after the client has ended: wait for it to be in the inventory.
        async def handshake_counted() -> bool:
            await relay.devices.flush()
            return any(d.key == ("127.0.0.1", "") for d in read_devices(
                devices_path(str(world.state_dir))))
        await eventually(handshake_counted)
    await until(lambda: len(world.sandbox.mailbox.messages) == 2)
    return relay, certs


def check_rows(rows: list[dict[str, Any]]) -> None:
    devices = by_device(rows)
    printer = devices[TRUSTED, ""]
    assert printer["helo_names"] == ["printer-2.lan"]
    assert printer["tls"] == "none"
    assert (printer["accepted"], printer["delivered"], printer["refused"]) == (1, 1, 0)
    assert printer["senders"] == ["printer@sandbox.example"]
    assert printer["state"] == "ok" and printer["last_refusal"] is None

    outside = devices[OUTSIDE, ""]
    assert outside["helo_names"] == ["scanner-3.lan"]
    assert (outside["accepted"], outside["refused"]) == (0, 1)
    assert outside["state"] == "failing"
    assert outside["last_refusal"]["stage"] == "mail"
    assert outside["last_refusal"]["reply"].startswith(
        "550 5.7.1 Relaying denied: your address 127.0.0.3 is not in relay.allow_networks")
    assert outside["reason"] == "refused (not in allow_networks)"
    assert outside["actions"] == ["address", "password"]
    assert outside["senders"] == ["scanner3@example.com"]

    scanner = devices[AUTHENTICATING, "scanner"]
    assert scanner["user"] == "scanner" and scanner["mechanism"] in ("PLAIN", "LOGIN")
    assert scanner["tls"] in ("TLS 1.2", "TLS 1.3")
    assert scanner["helo_names"] == ["mfp-4.lan"]
    assert (scanner["auth_failures"], scanner["auth_failed_user"]) == (1, "scanner")
    assert (scanner["accepted"], scanner["delivered"]) == (1, 1)
    assert scanner["last_refusal"]["stage"] == "auth"
    assert scanner["last_refusal"]["reply"].startswith("535 5.7.8")
    assert "not the password" not in str(rows)
    assert scanner["state"] == "ok"  # it sent after the refusal

    if OPENSSL is not None:
        tls1 = devices["127.0.0.1", ""]
        assert tls1["tls_failures"] == 1 and tls1["state"] == "failing"
        assert "client offered only TLS 1.0" in tls1["tls_failure"]
        assert tls1["reason"] == "TLS 1.0 refused"
        assert tls1["actions"] == ["legacy-tls"]


@pytest_twisted.ensureDeferred
async def test_devices_command_lists_every_device_with_the_daemon_running_and_stopped(
        world) -> None:
    relay, _ = await meet_the_devices(world)
    rows: list[Any] = []

    async def listed() -> bool:
        rows[:] = await devices_json(world)
        found = by_device(rows)
        return (found.get((TRUSTED, ""), {}).get("delivered") == 1
                and found.get((AUTHENTICATING, "scanner"), {}).get("delivered") == 1)

    await eventually(listed)
    check_rows(rows)
    assert rows[0]["state"] == "failing"  # failing devices first
    failing = await devices_json(world, "--failing")
    assert {row["address"] for row in failing} == (
        {OUTSIDE, "127.0.0.1"} if OPENSSL else {OUTSIDE})

    metrics = relay.metrics.exposition().decode()
    assert f'xrelay_devices{{state="failing"}} {float(len(failing))}' in metrics
    assert 'xrelay_devices{state="ok"} 2.0' in metrics

    # A device's messages in the trace, as the page's link finds them.
    await relay.history.flush()
    traced = await xrelay_json(world, "trace", "--client", TRUSTED, "--json")
    assert [(m["client"], m["sender"]) for m in traced] == [
        (TRUSTED, "printer@sandbox.example")]

    await relay.stopService()
    check_rows(await devices_json(world))


@pytest_twisted.ensureDeferred
async def test_the_switch_off_keeps_nothing(world) -> None:
    configure(world, extra_relay="device_inventory = false")
    relay = start_relay(world)
    await relay.inbound.when_listening()
    refused = await send_from(world.smtp_port, OUTSIDE, "scanner-3.lan", "s@example.com")
    assert refused is not None
    assert relay.devices is None
    assert not (world.state_dir / "devices.sqlite").exists()




@pytest_twisted.ensureDeferred
async def test_the_relay_starts_over_a_corrupt_inventory_and_sets_it_aside(world) -> None:
    configure(world)
    world.state_dir.mkdir(parents=True, exist_ok=True)
    (world.state_dir / "devices.sqlite").write_bytes(b"\x00garbage" * 512)
    lines: list[str] = []
    observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        relay = start_relay(world)
        await relay.inbound.when_listening()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert relay.running
    aside = [line for line in lines if "device inventory" in line]
    assert len(aside) == 1 and "moved it aside" in aside[0], aside
    assert (world.state_dir / "devices.sqlite.corrupt").read_bytes().startswith(b"\x00garb")
    assert await send_from(world.smtp_port, TRUSTED, "printer-2.lan",
                           "printer@sandbox.example") is None
    rows = await devices_json(world)
    assert [(row["address"], row["accepted"]) for row in rows] == [(TRUSTED, 1)]
