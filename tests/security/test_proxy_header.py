"""
Finding (high): a haproxy: listener believed a PROXY header from anyone, so any client
could claim a printer's address and relay without AUTH, or fail AUTH under a device's
address until the device was locked out.  Kept here with the bytes the attacker sent.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from tests.inbound.harness import (
    SCANNER_PASSWORD,
    connect,
    ehlo,
    inline,
    make_config,
    plain,
    until,
)
from xrelay.config import ConfigError, ListenerConfig
from xrelay.configfile import read_config
from xrelay.testing.spool import FIRST_ID

LAN = (ipaddress.ip_network("192.168.10.0/24"),)
#: The load balancer of these tests: 127.0.0.1.  Attackers come from 127.0.0.2.
BALANCER = (ipaddress.ip_network("127.0.0.1/32"),)
HAPROXY = ListenerConfig("haproxy:tcp:0:interface=127.0.0.1")
REFUSED = ("421 4.7.0 relay.test Not a trusted proxy; connect to a listener without "
           "haproxy:")

#: What the attacker sent: a header naming a printer inside relay.allow_networks, then
#: a whole relay transaction to an outside recipient, pipelined.
TRANSACTION = (b"EHLO attacker.test\r\nMAIL FROM:<ceo@example.com>\r\n"
               b"RCPT TO:<victim@example.org>\r\nDATA\r\nSubject: wire money\r\n\r\n"
               b"now\r\n.\r\nQUIT\r\n")
V1_HEADER = b"PROXY TCP4 192.168.10.7 10.0.0.1 40000 25\r\n"
V2_HEADER = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12)
             + socket.inet_aton("192.168.10.7") + socket.inet_aton("10.0.0.1")
             + struct.pack("!HH", 40000, 25))


@pytest.mark.parametrize("header", [V1_HEADER, V2_HEADER], ids=["v1", "v2"])
@pytest_twisted.ensureDeferred
async def test_proxy_header_from_an_untrusted_address_is_refused(relay, header):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        r = await relay(make_config(allow_networks=LAN, trusted_proxies=BALANCER,
                                    listen=(HAPROXY,)))
        attacker = await connect(r.port, greeting=False, source="127.0.0.2",
                                 prefix=header + TRANSACTION)
        await attacker.wait_closed()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert attacker.replies == [REFUSED]
    assert r.spool.started == [] and r.spool.stored == {}
    text = "\n".join(formatEvent(e) for e in events)
    # Logged with the real address, not the one the header claims.
    assert ("inbound connection from 127.0.0.2 on haproxy:tcp:0:interface=127.0.0.1 "
            "refused: not in server.trusted_proxies") in text


@pytest_twisted.ensureDeferred
async def test_the_trusted_balancer_still_carries_the_printer(relay):
    r = await relay(make_config(allow_networks=LAN, trusted_proxies=BALANCER,
                                listen=(HAPROXY,)))
    printer = await connect(r.port, greeting=False, prefix=V2_HEADER + TRANSACTION)
    await printer.wait_closed()
    assert printer.replies[0] == "220 relay.test ESMTP xrelay ready"
    assert "250 2.0.0 Ok: queued as " + FIRST_ID in printer.replies
    [(envelope, _)] = r.spool.messages()
    assert envelope.client_address == "192.168.10.7"


@pytest_twisted.ensureDeferred
async def test_failures_under_a_spoofed_address_do_not_lock_the_device_out(relay):
    r = await relay(make_config(allow_networks=(), trusted_proxies=BALANCER,
                                require_tls_for_auth=False, listen=(HAPROXY,)),
                    run_blocking=inline)
    r.service.auth_failures.base_delay = 0
    # Twelve wrong passwords claiming to be the scanner at 192.168.10.7.
    for _ in range(4):
        attacker = await connect(r.port, greeting=False, source="127.0.0.2", prefix=(
            V1_HEADER + b"EHLO x\r\n" + b"".join(
                b"AUTH PLAIN " + plain("scanner", f"guess{i}") + b"\r\n"
                for i in range(3))))
        await attacker.wait_closed()
        assert attacker.replies == [REFUSED]
    # The scanner, behind the real balancer, signs in with its password.
    device = await connect(r.port, prefix=V1_HEADER)
    await ehlo(device)
    assert (await device.command(b"AUTH PLAIN " + plain("scanner", SCANNER_PASSWORD))) == (
        "235 2.7.0 Authentication successful")


def test_haproxy_listener_without_trusted_proxies_is_a_configuration_error(tmp_path):
    path = tmp_path / "xrelay.toml"
    path.write_text('[server]\nlisten = ["haproxy:tcp:2525"]\nhostname = "relay.test"\n'
                    f'state_dir = "{tmp_path}"\n\n[[accounts]]\nname = "main"\n'
                    'user = "relay@example.com"\ntenant = "example.onmicrosoft.com"\n'
                    'client_id = "x"\nflow = "device_code"\n')
    with pytest.raises(ConfigError) as raised:
        read_config(str(path))
    message = str(raised.value)
    assert message.startswith(f"{path}: server.trusted_proxies: server.listen[0] is a "
                              "haproxy: listener")
    assert "\n" not in message
    path.write_text(path.read_text().replace(
        'hostname', 'trusted_proxies = ["127.0.0.1/32"]\nhostname'))
    config = read_config(str(path))
    assert config.server.trusted_proxies == BALANCER


@pytest_twisted.ensureDeferred
async def test_the_proxy_header_must_arrive_within_seconds(relay):
    clock = Clock()
    r = await relay(make_config(trusted_proxies=BALANCER, listen=(HAPROXY,)), clock=clock)
    silent = await connect(r.port, greeting=False)
    await until(lambda: r.service.connections.awaiting_header == 1)
    clock.advance(r.service.config.server.proxy_header_timeout)
    await silent.wait_closed()
    assert r.service.connections.awaiting_header == 0


@pytest_twisted.ensureDeferred
async def test_headerless_haproxy_connections_cannot_starve_a_plain_listener(relay):
    plain_listener = ListenerConfig("tcp:0:interface=127.0.0.1")
    r = await relay(make_config(max_connections=20, trusted_proxies=BALANCER,
                                listen=(HAPROXY, plain_listener)))
    haproxy_port, plain_port = r.ports
    # The attacker's 20 connections that never send a header (the cap is 20).
    silent = [await connect(haproxy_port, greeting=False) for _ in range(20)]
    await until(lambda: sum(1 for c in silent if c.replies) == 18)
    assert r.service.connections.awaiting_header == 2
    client = await connect(plain_port)
    assert client.greeting == "220 relay.test ESMTP xrelay ready"
