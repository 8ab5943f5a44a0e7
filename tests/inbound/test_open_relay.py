"""
The open-relay matrix: client networks x authentication x address tricks.  A message
is accepted only from an allowed network or an authenticated user, and only for plain
addresses; in every other cell nothing reaches the spool.
"""

from __future__ import annotations

import itertools

import pytest
import pytest_twisted

from tests.inbound.harness import (
    ERP_PASSWORD,
    NOWHERE,
    connect,
    ehlo,
    inline,
    make_config,
    plain,
)
from xrelay.testing.spool import FIRST_ID

NETWORKS = {"in-allow-networks": None, "outside": NOWHERE}
AUTH = ["none", "failed", "succeeded"]
RECIPIENTS = {
    "plain": "alice@example.org",
    "percent-hack": "alice%elsewhere.test@example.org",
    "source-route": "@relay.example.org:alice@elsewhere.test",
    "quoted": '"alice@elsewhere.test"@example.org',
    "bang-path": "elsewhere.test!alice@example.org",
    "bang-only": "elsewhere.test!alice",
    "two-ats": "alice@elsewhere.test@example.org",
}
SENDERS = {
    "plain": "invoices@example.com",
    "percent-hack": "invoices%evil.test@example.com",
    "source-route": "@evil.test:invoices@example.com",
}


def expected_admitted(network: str, auth: str) -> bool:
    return network == "in-allow-networks" or auth == "succeeded"


async def session(relay, network, auth):  # type: ignore[no-untyped-def]
    config = make_config(allow_networks=NETWORKS[network], require_tls_for_auth=False,
                         max_auth_failures=5)
    r = await relay(config, run_blocking=inline)
    r.service.auth_failures.base_delay = 0
    client = await connect(r.port)
    await ehlo(client)
    if auth != "none":
        password = ERP_PASSWORD if auth == "succeeded" else "wrong"
        reply = await client.command(b"AUTH PLAIN " + plain("erp", password))
        assert reply.startswith("235" if auth == "succeeded" else "535")
    return r, client


@pytest.mark.parametrize("network, auth, trick", list(itertools.product(
    NETWORKS, AUTH, RECIPIENTS)))
@pytest_twisted.ensureDeferred
async def test_recipient_matrix(relay, network, auth, trick):
    r, client = await session(relay, network, auth)
    recipient = RECIPIENTS[trick].encode()
    # Pipelined, as a spammer would: the whole transaction in one packet.
    client.send(b"MAIL FROM:<invoices@example.com>\r\nRCPT TO:<" + recipient + b">\r\n"
                b"DATA\r\nSubject: relay test\r\n\r\nbody\r\n.\r\n")
    mail, rcpt, data = await client.read(3)
    admitted = expected_admitted(network, auth)
    if not admitted:
        assert mail.startswith("550 5.7.1 Relaying denied: your address 127.0.0.1 is not "
                               "in relay.allow_networks")
        assert rcpt == "503 5.5.1 Need MAIL command first"
        assert data == "503 5.5.1 Need MAIL command first"
    elif trick != "plain":
        assert mail == "250 2.1.0 Ok"
        assert rcpt.startswith(f"553 5.1.3 Address <{RECIPIENTS[trick]}> ")
        assert data == "554 5.5.1 No valid recipients"
    else:
        assert (mail, rcpt) == ("250 2.1.0 Ok", "250 2.1.5 Ok")
        assert data == "354 End data with <CR><LF>.<CR><LF>"
        assert (await client.read(1)) == ["250 2.0.0 Ok: queued as " + FIRST_ID]
    if not (admitted and trick == "plain"):
        # DATA was refused, so the message lines arrive as commands; none is run.
        assert (await client.read(4)) == ["500 5.5.2 Command not recognised"] * 4
    # Whatever happened, the session is in command mode now.
    assert (await client.command(b"RSET")) == "250 2.0.0 Ok"
    if admitted and trick == "plain":
        [(envelope, _)] = r.spool.messages()
        assert envelope.recipients == ("alice@example.org",)
    else:
        assert r.spool.started == [] and r.spool.stored == {}


@pytest.mark.parametrize("network, auth, trick", list(itertools.product(
    NETWORKS, AUTH, SENDERS)))
@pytest_twisted.ensureDeferred
async def test_sender_matrix(relay, network, auth, trick):
    r, client = await session(relay, network, auth)
    reply = await client.command(b"MAIL FROM:<" + SENDERS[trick].encode() + b">")
    if not expected_admitted(network, auth):
        assert reply.startswith("550 5.7.1 Relaying denied")
    elif trick != "plain":
        assert reply.startswith(f"553 5.1.7 Address <{SENDERS[trick]}> ")
    else:
        assert reply == "250 2.1.0 Ok"


@pytest_twisted.ensureDeferred
async def test_rejected_client_cannot_sneak_in_after_a_failed_auth_and_rset(relay):
    r, client = await session(relay, "outside", "failed")
    for command in (b"RSET", b"EHLO again.test", b"HELO again.test"):
        await client.command(command)
        assert (await client.command(b"MAIL FROM:<invoices@example.com>")).startswith(
            "550 5.7.1 Relaying denied")
    assert r.spool.started == []
