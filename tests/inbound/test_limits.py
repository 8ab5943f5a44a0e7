"""
Idle timeouts in every state and the caps on concurrent connections, overall and per
client address (IPv4 and IPv6 clients counted apart).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from tests.inbound.harness import connect, ehlo, make_config, only_connection, until
from xrelay.config import ListenerConfig
from xrelay.testing.spool import FIRST_ID

TIMEOUT = "421 4.4.2 relay.test Error: timeout exceeded"


async def to_state(client, state):  # type: ignore[no-untyped-def]
    if state == "greeted":
        return
    await ehlo(client)
    if state == "ehlo":
        return
    if state == "auth":
        assert (await client.command(b"AUTH LOGIN")) == "334 VXNlcm5hbWU6"
        return
    await client.command(b"MAIL FROM:<a@example.com>")
    if state == "mail":
        return
    await client.command(b"RCPT TO:<b@example.org>")
    if state == "rcpt":
        return
    assert (await client.command(b"DATA")).startswith("354")
    client.send(b"Subject: half a message\r\n")


@pytest.mark.parametrize("state", ["greeted", "ehlo", "auth", "mail", "rcpt", "data"])
@pytest_twisted.ensureDeferred
async def test_idle_timeout_in_every_state(relay, state):
    clock = Clock()
    r = await relay(make_config(idle_timeout=120, idle_timeout_before_mail=120,
                                require_tls_for_auth=False), clock=clock)
    client = await connect(r.port)
    await to_state(client, state)
    if state == "data":
        await until(lambda: only_connection(r).transaction.received > 0)
    clock.advance(119)
    assert client.replies == []
    clock.advance(1)
    assert (await client.read(1)) == [TIMEOUT]
    await client.wait_closed()
    assert r.spool.stored == {}
    if state == "data":
        assert len(r.spool.aborted) == 1


@pytest_twisted.ensureDeferred
async def test_activity_restarts_the_idle_timer(relay):
    clock = Clock()
    r = await relay(make_config(idle_timeout=120, idle_timeout_before_mail=120),
                    clock=clock)
    client = await connect(r.port)
    # Within a transaction any command is activity; before MAIL only commands that move
    # towards a message are (tests/security/test_connection_slots.py).
    await client.command(b"EHLO client.test")
    await client.command(b"MAIL FROM:<a@example.com>")
    for _ in range(3):
        clock.advance(100)
        assert (await client.command(b"NOOP")) == "250 2.0.0 Ok"
    clock.advance(119)
    assert client.replies == []


@pytest_twisted.ensureDeferred
async def test_overall_connection_cap(relay):
    r = await relay(make_config(max_connections=2))
    first = await connect(r.port)
    second = await connect(r.port)
    third = await connect(r.port)
    assert third.greeting == "421 4.7.0 relay.test Too many connections, try again later"
    await third.wait_closed()
    await first.command(b"QUIT")
    await first.wait_closed()
    await until(lambda: r.service.connections.total == 1)
    fourth = await connect(r.port)
    assert fourth.greeting == "220 relay.test ESMTP xrelay ready"
    assert (await second.command(b"NOOP")) == "250 2.0.0 Ok"


@pytest_twisted.ensureDeferred
async def test_per_client_cap_counts_addresses_apart(relay):
    config = make_config(max_connections_per_client=2, listen=(
        ListenerConfig("tcp:0:interface=127.0.0.1"), ListenerConfig("tcp6:0:interface=\\:\\:1")))
    r = await relay(config)
    v4, v6 = r.ports
    a = await connect(v4)
    b = await connect(v4)
    c = await connect(v4)
    assert c.greeting == ("421 4.7.0 relay.test Too many connections from your address, "
                          "try again later")
    await c.wait_closed()
    # Another client address (::1) is not affected.
    d = await connect(v6, host="::1")
    assert d.greeting == "220 relay.test ESMTP xrelay ready"
    await ehlo(d)
    await d.command(b"MAIL FROM:<a@example.com>")
    await d.command(b"RCPT TO:<b@example.org>")
    await d.command(b"DATA")
    assert (await d.command(b"v6\r\n.\r\n")) == "250 2.0.0 Ok: queued as " + FIRST_ID
    [(envelope, _)] = r.spool.messages()
    assert envelope.client_address == "::1"
    assert r.service.connections.per_client == {"127.0.0.1": 2, "::1": 1}
    for client in (a, b):
        assert (await client.command(b"NOOP")) == "250 2.0.0 Ok"
