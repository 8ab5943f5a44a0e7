"""
Finding (high): one source filled the relay's connection cap.  200 idle connections from
ten addresses, each sending one NOOP every 299 s, locked everyone out, the printers too.
Kept here: the caps per network, the share kept for relay.allow_networks, the short
silence allowed outside a transaction and the cap on commands that move no mail.
"""

from __future__ import annotations

import ipaddress

import pytest_twisted
from twisted.internet.task import Clock

from tests.inbound.harness import connect, ehlo, make_config, until
from xrelay.testing.spool import FIRST_ID

PRINTERS = (ipaddress.ip_network("127.0.9.0/24"),)
BUSY = "421 4.7.0 relay.test Too many connections, try again later"
BUSY_NETWORK = ("421 4.7.0 relay.test Too many connections from your network, try "
                "again later")


async def hold(port: int, source: str):  # type: ignore[no-untyped-def]
    """One attacker connection: its greeting, or its refusal."""
    return await connect(port, source=source)


@pytest_twisted.ensureDeferred
async def test_slot_exhaustion_from_one_network_leaves_room_for_printers(relay):
    # (The authenticated sessions' reserve is off here: test_slot_reserves.py.)
    r = await relay(make_config(allow_networks=PRINTERS, max_connections=30,
                                reserved_connections=10, max_connections_per_client=5,
                                max_connections_per_network=10,
                                reserved_auth_connections=0))
    # Ten addresses of one /24 try 5 connections each: the network holds 10.
    attempts = [await hold(r.port, f"127.0.0.{host}") for host in range(2, 12)
                for _ in range(5)]
    held = [c for c in attempts if c.greeting.startswith("220")]
    assert len(held) == 10
    assert {c.greeting for c in attempts if c not in held} == {BUSY_NETWORK}
    # More outside networks: together they stop short of the printers' share.
    for network in (1, 2, 3):
        attempts += [await hold(r.port, f"127.0.{network}.{host}") for host in range(2, 6)
                     for _ in range(3)]
    held = [c for c in attempts if c.greeting.startswith("220")]
    assert len(held) == 20
    assert BUSY in {c.greeting for c in attempts}
    # A printer still gets in, and sends its mail.
    printer = await connect(r.port, source="127.0.9.7")
    assert printer.greeting == "220 relay.test ESMTP xrelay ready"
    await ehlo(printer)
    await printer.command(b"MAIL FROM:<scan@example.com>")
    await printer.command(b"RCPT TO:<someone@example.org>")
    await printer.command(b"DATA")
    assert (await printer.command(b"scan\r\n.\r\n")) == "250 2.0.0 Ok: queued as " + FIRST_ID


@pytest_twisted.ensureDeferred
async def test_a_silent_client_outside_a_transaction_is_cut_off_in_a_minute(relay):
    clock = Clock()
    r = await relay(make_config(), clock=clock)  # idle_timeout 300, before mail 60
    idle = await connect(r.port)
    await ehlo(idle)
    clock.advance(59)
    assert idle.replies == []
    clock.advance(1)
    assert (await idle.read(1)) == ["421 4.4.2 relay.test Error: timeout exceeded"]
    await idle.wait_closed()
    await until(lambda: r.service.connections.total == 0)


@pytest_twisted.ensureDeferred
async def test_idle_noop_holders_are_cut_off(relay):
    clock = Clock()
    r = await relay(make_config(), clock=clock)
    holder = await connect(r.port)
    await ehlo(holder)  # the EHLO is one of the hundred
    for _ in range(99):
        # Back to back, inside the 60 s that NOOPs do not extend: only the command cap
        # stops it (the 60 s do otherwise: test_slot_reserves.py).
        assert (await holder.command(b"NOOP")) == "250 2.0.0 Ok"
    assert (await holder.command(b"NOOP")) == (
        "421 4.7.0 relay.test Too many commands without mail, closing connection")
    await holder.wait_closed()


@pytest_twisted.ensureDeferred
async def test_a_client_that_sends_mail_is_not_cut_off_by_the_command_cap(relay):
    r = await relay(make_config(max_junk_commands=3))
    client = await connect(r.port)
    for _ in range(3):
        await ehlo(client)
        await client.command(b"MAIL FROM:<a@example.com>")
        await client.command(b"RCPT TO:<b@example.org>")
        await client.command(b"DATA")
        assert (await client.command(b"hi\r\n.\r\n")).startswith("250 2.0.0 Ok: queued")
        assert (await client.command(b"NOOP")) == "250 2.0.0 Ok"
        assert (await client.command(b"RSET")) == "250 2.0.0 Ok"


def test_networks_are_counted_by_their_slash_24_and_slash_64() -> None:
    from xrelay.policy import client_network

    assert client_network("192.0.2.7") == client_network("192.0.2.250") == "192.0.2.0/24"
    assert client_network("::ffff:192.0.2.7") == "192.0.2.0/24"  # dual-stack socket
    assert client_network("2001:db8:0:1::7") == client_network("2001:db8:0:1:ffff::1") == (
        "2001:db8:0:1::/64")
    assert client_network("2001:db8:0:2::7") != client_network("2001:db8:0:1::7")
