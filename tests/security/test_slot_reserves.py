"""
Finding (low-medium): four /24 networks held every shared slot indefinitely with a NOOP
every 20 s (the silence allowed before MAIL restarted at any command, and the junk
command cap allowed about 98 minutes per connection), so devices that authenticate from
outside C{relay.allow_networks} (the README's port-587 case) were shut out: the reserve
protected only C{allow_networks}.
"""

from __future__ import annotations

import ipaddress

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from tests.inbound.harness import (
    SCANNER_PASSWORD,
    connect,
    ehlo,
    inline,
    make_config,
    plain,
    until,
)
from xrelay.inbound.protocol import AUTH_RESERVE_SECONDS
from xrelay.testing.spool import FIRST_ID

PRINTERS = (ipaddress.ip_network("127.0.9.0/24"),)
TIMEOUT = "421 4.4.2 relay.test Error: timeout exceeded"
BUSY = "421 4.7.0 relay.test Too many connections, try again later"
ATTACKERS = ("127.0.1", "127.0.2", "127.0.3", "127.0.4")


@pytest.mark.parametrize("command", [b"NOOP", b"RSET", b"HELP", b"VRFY postmaster",
                                     b"EHLO client.test", b"BOGUS"])
@pytest_twisted.ensureDeferred
async def test_commands_that_move_no_mail_do_not_keep_the_slot(relay, command):
    clock = Clock()
    r = await relay(make_config(), clock=clock)  # idle_timeout_before_mail = 60
    holder = await connect(r.port)
    await ehlo(holder)
    for _ in range(2):
        clock.advance(20)
        reply = await holder.command(command)
        assert not reply.startswith("421"), reply
    clock.advance(19.5)  # 59.5 s after the EHLO
    assert holder.replies == []
    clock.advance(0.5)
    assert (await holder.read(1)) == [TIMEOUT]
    await holder.wait_closed()
    await until(lambda: r.service.connections.total == 0)


@pytest.mark.parametrize("command", [b"MAIL FROM:<a@example.com>", b"EHLO",
                                     b"AUTH PLAIN " + plain("scanner", "wrong")])
@pytest_twisted.ensureDeferred
async def test_refused_commands_do_not_keep_the_slot_either(relay, command):
    clock = Clock()
    r = await relay(make_config(allow_networks=PRINTERS, require_tls_for_auth=False,
                                max_auth_failures=10), clock=clock, run_blocking=inline)
    r.service.auth_failures.base_delay = 0  # the wait for a wrong password is not tested
    holder = await connect(r.port)  # 127.0.0.1: outside allow_networks here
    await ehlo(holder)
    for _ in range(2):
        clock.advance(20)
        reply = await holder.command(command)
        assert reply[:1] in ("5", "4") and not reply.startswith("421"), reply
    clock.advance(20)
    assert (await holder.read(1)) == [TIMEOUT]


@pytest_twisted.ensureDeferred
async def test_the_silence_counts_from_the_last_command_that_moved_towards_mail(relay):
    clock = Clock()
    r = await relay(make_config(allow_networks=PRINTERS, require_tls_for_auth=False),
                    clock=clock, run_blocking=inline)
    client = await connect(r.port)
    await ehlo(client)
    clock.advance(50)
    assert (await client.command(b"AUTH PLAIN " + plain("scanner", SCANNER_PASSWORD))
            ) == "235 2.7.0 Authentication successful"
    clock.advance(59)  # 109 s after connecting, 59 s after AUTH
    assert client.replies == []
    # A message resets it too: the next 60 s count from its end.
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.org>")
    await client.command(b"DATA")
    clock.advance(200)  # within a transaction: idle_timeout (300)
    assert (await client.command(b"From: scanner@example.com\r\n\r\nscan\r\n.\r\n")
            ) == "250 2.0.0 Ok: queued as " + FIRST_ID
    clock.advance(30)
    assert (await client.command(b"NOOP")) == "250 2.0.0 Ok"
    clock.advance(29)
    assert client.replies == []
    clock.advance(1)
    assert (await client.read(1)) == [TIMEOUT]


def slots_config():  # type: ignore[no-untyped-def]
    # 30 slots: 10 for the printers, 5 for sessions that authenticate, 15 shared.
    return make_config(allow_networks=PRINTERS, require_tls_for_auth=False,
                       max_connections=30, reserved_connections=10,
                       reserved_auth_connections=5, max_connections_per_client=5,
                       max_connections_per_network=10)


async def fill(port: int, attempts: int = 6):  # type: ignore[no-untyped-def]
    """The four attacking /24s each try C{attempts} addresses x 3 connections."""
    return [await connect(port, source=f"{network}.{host}") for network in ATTACKERS
            for host in range(2, 2 + attempts) for _ in range(3)]


@pytest_twisted.ensureDeferred
async def test_an_authenticating_device_gets_in_while_four_networks_fill_the_slots(relay):
    clock = Clock()
    r = await relay(slots_config(), clock=clock, run_blocking=inline)
    attackers = await fill(r.port)
    held = [c for c in attackers if c.greeting.startswith("220")]
    # The 15 shared slots, and one reserve slot per attacking network at most (the
    # first network reached its own cap of 10 before the shared slots ran out).
    probation = r.service.connections.probation
    assert len(held) == 15 + len(probation) and set(probation.values()) == {1}
    assert len(probation) >= len(ATTACKERS) - 1
    assert {c.greeting for c in attackers if c not in held} <= {
        BUSY, "421 4.7.0 relay.test Too many connections from your network, try again "
        "later"}
    # The device at 127.0.5.7 (outside allow_networks) gets the reserve's last slot,
    # authenticates, and sends its mail.
    device = await connect(r.port, source="127.0.5.7")
    assert device.greeting == "220 relay.test ESMTP xrelay ready"
    await ehlo(device)
    assert (await device.command(b"AUTH PLAIN " + plain("scanner", SCANNER_PASSWORD))
            ) == "235 2.7.0 Authentication successful"
    # The attackers' reserve slots are theirs for AUTH_RESERVE_SECONDS only; the
    # device, authenticated, keeps its slot.
    clock.advance(AUTH_RESERVE_SECONDS)
    await until(lambda: r.service.connections.total == 15 + 1)
    assert not r.service.connections.probation
    await device.command(b"MAIL FROM:<scanner@example.com>")
    await device.command(b"RCPT TO:<alice@example.org>")
    await device.command(b"DATA")
    assert (await device.command(b"From: scanner@example.com\r\n\r\nscan\r\n.\r\n")
            ) == "250 2.0.0 Ok: queued as " + FIRST_ID
    # Trying again, the attackers get one slot per network back, and lose it again.
    again = await fill(r.port, attempts=2)
    assert len([c for c in again if c.greeting.startswith("220")]) == len(probation)


@pytest_twisted.ensureDeferred
async def test_a_reserve_slot_not_authenticated_in_time_is_closed_with_a_reason(relay):
    clock = Clock()
    r = await relay(slots_config(), clock=clock, run_blocking=inline)
    await fill(r.port)
    device = await connect(r.port, source="127.0.5.7")
    await ehlo(device)
    clock.advance(AUTH_RESERVE_SECONDS)
    assert (await device.read(1)) == [
        f"421 4.7.0 relay.test Too many connections; the free ones are for clients "
        f"that authenticate within {AUTH_RESERVE_SECONDS}s, try again later"]
    await device.wait_closed()


@pytest_twisted.ensureDeferred
async def test_printers_keep_their_own_share(relay):
    r = await relay(slots_config(), run_blocking=inline)
    await fill(r.port)
    # Outsiders from fresh networks take what is left of the reserve, then no more.
    outsiders = [await connect(r.port, source=f"127.0.{n}.7") for n in range(5, 10 - 1)]
    assert outsiders[-1].greeting == BUSY
    assert r.service.connections.total == 30 - 10
    printers = [await connect(r.port, source=f"127.0.9.{i}") for i in range(2, 12)]
    assert {p.greeting for p in printers} == {"220 relay.test ESMTP xrelay ready"}
