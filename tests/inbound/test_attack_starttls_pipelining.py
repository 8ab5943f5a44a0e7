"""
Commands pipelined in the same packet as STARTTLS (CVE-2011-0411 style): they arrive
before the TLS handshake, so they must be discarded, never run inside the TLS session.
"""

from __future__ import annotations

import pytest_twisted

from tests.inbound.harness import NOWHERE, connect, ehlo, make_config, plain


@pytest_twisted.ensureDeferred
async def test_commands_after_starttls_in_the_same_packet_are_discarded(relay, certs):
    r = await relay(make_config(certs))
    client = await connect(r.port)
    await ehlo(client)
    client.send(b"STARTTLS\r\nMAIL FROM:<ceo@example.com>\r\nRCPT TO:<v@example.org>\r\n"
                b"AUTH PLAIN " + plain("erp", "x") + b"\r\n")
    assert (await client.read(1)) == ["220 2.0.0 Ready to start TLS"]
    client.start_tls(certs)
    # The first reply inside TLS answers our EHLO: nothing of the injected commands ran.
    reply = await client.command(b"EHLO client.test")
    assert reply.startswith("250-relay.test")
    assert (await client.command(b"RCPT TO:<v@example.org>")) == (
        "503 5.5.1 Need MAIL command first")
    assert client.replies == []
    assert r.service.auth_failures.delay("127.0.0.1", 0) == 0


@pytest_twisted.ensureDeferred
async def test_session_is_reset_by_starttls(relay, certs):
    # From outside relay.allow_networks: a device inside may send MAIL without HELO.
    r = await relay(make_config(certs, allow_networks=NOWHERE))
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"STARTTLS")
    client.start_tls(certs)
    # EHLO must be given again after TLS (RFC 3207 4.2).
    assert (await client.command(b"MAIL FROM:<a@example.com>")) == (
        "503 5.5.1 Send EHLO/HELO first")
    await ehlo(client)
    assert (await client.command(b"STARTTLS")) == "503 5.5.1 TLS already active"
