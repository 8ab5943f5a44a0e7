"""
Listeners built from endpoint descriptions: implicit TLS, PROXY protocol behind a load
balancer (the real client address drives the relay rules), reload, and shutdown.
"""

from __future__ import annotations

import ipaddress

import attrs
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.inbound.harness import (
    ERP_PASSWORD,
    NOWHERE,
    connect,
    ehlo,
    inline,
    make_config,
    plain,
    until,
)
from xrelay.config import ListenerConfig, UserConfig
from xrelay.inbound.testing import MemorySpool
from xrelay.passwords import hash_password
from xrelay.testing.spool import FIRST_ID

#: The tests' load balancer is this process, on loopback.
PROXIES = (ipaddress.ip_network("127.0.0.1/32"),)


@pytest_twisted.ensureDeferred
async def test_implicit_tls_listener(relay, certs):
    config = make_config(certs, allow_networks=NOWHERE, listen=(
        ListenerConfig("tcp:0:interface=127.0.0.1", implicit_tls=True),))
    r = await relay(config)
    client = await connect(r.port, tls=certs)
    assert client.greeting == "220 relay.test ESMTP xrelay ready"
    reply = await ehlo(client)
    lines = reply.split("\n")
    assert "250-STARTTLS" not in lines and "250-AUTH PLAIN LOGIN" in lines
    assert (await client.command(b"STARTTLS")) == "502 5.5.1 STARTTLS not available"
    assert (await client.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))) == (
        "235 2.7.0 Authentication successful")
    await client.command(b"MAIL FROM:<x@example.com>")
    await client.command(b"RCPT TO:<y@example.org>")
    await client.command(b"DATA")
    assert (await client.command(b"hi\r\n.\r\n")) == "250 2.0.0 Ok: queued as " + FIRST_ID
    [(_, data)] = r.spool.messages()
    assert b" with ESMTPSA id " in data


@pytest_twisted.ensureDeferred
async def test_haproxy_v1_uses_the_real_client_address(relay):
    lan = (ipaddress.ip_network("192.168.10.0/24"),)
    config = make_config(allow_networks=lan, max_connections_per_client=1,
                         trusted_proxies=PROXIES, listen=(
                             ListenerConfig("haproxy:tcp:0:interface=127.0.0.1"),))
    r = await relay(config)
    inside = await connect(r.port, prefix=b"PROXY TCP4 192.168.10.7 10.0.0.1 40000 25\r\n")
    assert inside.greeting == "220 relay.test ESMTP xrelay ready"
    await ehlo(inside)
    await inside.command(b"MAIL FROM:<scan@example.com>")
    await inside.command(b"RCPT TO:<a@example.org>")
    await inside.command(b"DATA")
    assert (await inside.command(b"hi\r\n.\r\n")) == "250 2.0.0 Ok: queued as " + FIRST_ID
    [(envelope, data)] = r.spool.messages()
    assert envelope.client_address == "192.168.10.7"
    assert data.startswith(b"Received: from client.test ([192.168.10.7])\r\n")
    # Another client behind the same balancer is judged by its own address...
    outside = await connect(r.port, prefix=b"PROXY TCP4 203.0.113.5 10.0.0.1 40001 25\r\n")
    await ehlo(outside)
    assert (await outside.command(b"MAIL FROM:<scan@example.com>")).startswith(
        "550 5.7.1 Relaying denied: your address 203.0.113.5 is not in")
    # ...and the per-client cap counts real clients, not the balancer.
    again = await connect(r.port, prefix=b"PROXY TCP4 192.168.10.7 10.0.0.1 40002 25\r\n")
    assert again.greeting == ("421 4.7.0 relay.test Too many connections from your "
                              "address, try again later")


@pytest_twisted.ensureDeferred
async def test_haproxy_v2_ipv6_and_starttls(relay, certs):
    import socket
    import struct

    header = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x21]) + struct.pack("!H", 36)
              + socket.inet_pton(socket.AF_INET6, "2001:db8::7")
              + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
              + struct.pack("!HH", 40000, 25))
    config = make_config(certs, allow_networks=(ipaddress.ip_network("2001:db8::/64"),),
                         trusted_proxies=PROXIES,
                         listen=(ListenerConfig("haproxy:tcp:0:interface=127.0.0.1"),))
    r = await relay(config)
    client = await connect(r.port, prefix=header)
    await ehlo(client)
    assert (await client.command(b"STARTTLS")) == "220 2.0.0 Ready to start TLS"
    client.start_tls(certs)
    await ehlo(client)
    await client.command(b"MAIL FROM:<scan@example.com>")
    await client.command(b"RCPT TO:<a@example.org>")
    await client.command(b"DATA")
    assert (await client.command(b"hi\r\n.\r\n")) == "250 2.0.0 Ok: queued as " + FIRST_ID
    [(envelope, data)] = r.spool.messages()
    assert envelope.client_address == "2001:db8::7"
    assert data.startswith(b"Received: from client.test ([IPv6:2001:db8::7])\r\n\tby "
                           b"relay.test (xrelay) with ESMTPS id ")


@pytest_twisted.ensureDeferred
async def test_haproxy_listener_without_header_is_closed_without_greeting(relay):
    r = await relay(make_config(trusted_proxies=PROXIES, listen=(
        ListenerConfig("haproxy:tcp:0:interface=127.0.0.1"),)))
    client = await connect(r.port, greeting=False, prefix=b"EHLO direct.test\r\n")
    await client.wait_closed()
    assert client.replies == [] and r.spool.started == []


@pytest_twisted.ensureDeferred
async def test_connections_waiting_for_their_proxy_header_hold_a_small_share(relay):
    # max_connections 20: a tenth (2) may wait for their header; they count in the cap.
    r = await relay(make_config(max_connections=20, reserved_connections=0,
                                trusted_proxies=PROXIES, listen=(
                                    ListenerConfig("haproxy:tcp:0:interface=127.0.0.1"),)))
    silent = [await connect(r.port, greeting=False) for _ in range(2)]
    await until(lambda: r.service.connections.awaiting_header == 2)
    third = await connect(r.port, greeting=False)
    assert (await third.read(1)) == ["421 4.7.0 relay.test Too many connections without "
                                     "a PROXY header, try again later"]
    await third.wait_closed()
    silent[0].transport.loseConnection()
    await until(lambda: r.service.connections.awaiting_header == 1)
    fourth = await connect(r.port, prefix=b"PROXY TCP4 192.0.2.9 10.0.0.1 1 25\r\n")
    assert fourth.greeting == "220 relay.test ESMTP xrelay ready"
    assert (r.service.connections.total, r.service.connections.awaiting_header) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_reconfigure_changes_new_connections_only(relay):
    r = await relay(make_config(require_tls_for_auth=False, allow_networks=NOWHERE),
                    run_blocking=inline)
    live = await connect(r.port)
    await ehlo(live)
    new_password = "rotated-password"
    users = (UserConfig("erp", hash_password(new_password, log2_n=4)),)
    r.service.reconfigure(attrs.evolve(r.service.config, users=users))
    # The live connection still uses the configuration it started with.
    assert (await live.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))) == (
        "235 2.7.0 Authentication successful")
    fresh = await connect(r.port)
    await ehlo(fresh)
    assert (await fresh.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))) == (
        "535 5.7.8 Authentication credentials invalid")
    assert (await fresh.command(b"AUTH PLAIN " + plain("erp", new_password))) == (
        "235 2.7.0 Authentication successful")


@pytest_twisted.ensureDeferred
async def test_shutdown_tells_idle_clients_and_finishes_transactions(relay):
    spool = MemorySpool(hold_commits=True)
    r = await relay(make_config(), spool=spool)
    idle = await connect(r.port)
    busy = await connect(r.port)
    await ehlo(busy)
    await busy.command(b"MAIL FROM:<a@example.com>")
    await busy.command(b"RCPT TO:<b@example.org>")
    await busy.command(b"DATA")
    busy.send(b"in flight\r\n.\r\n")
    await until(lambda: len(spool.held) == 1)
    stopped = r.service.stopService()
    assert (await idle.read(1)) == [
        "421 4.3.2 relay.test Service shutting down, try again later"]
    await idle.wait_closed()
    await deferLater(reactor, 0.1, lambda: None)
    assert not stopped.called
    spool.release()
    assert (await busy.read(2)) == [
        "250 2.0.0 Ok: queued as " + FIRST_ID,
        "421 4.3.2 relay.test Service shutting down, try again later"]
    await stopped
    assert len(spool.stored) == 1
