"""
Finding (low): refused commands were unlimited, and each was logged (100,000 refused
RCPTs in 23 s wrote 44 MB of log).  Now C{server.max_errors} refusals end the session
with 421 4.7.0, and repeats are logged in one summary line.
"""

from __future__ import annotations

import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from tests.inbound.harness import NOWHERE, connect, ehlo, make_config
from xrelay.testing.spool import FIRST_ID
from xrelay.inbound.conduct import RECIPIENT_OVERSHOOT

TOO_MANY = "421 4.7.0 relay.test Too many errors, closing connection"


@pytest_twisted.ensureDeferred
async def test_rcpt_floods_end_in_421_and_are_logged_in_summary(relay):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        r = await relay(make_config())
        client = await connect(r.port)
        await ehlo(client)
        assert (await client.command(b"MAIL FROM:<a@example.com>")) == "250 2.1.0 Ok"
        # 1,000 refused recipients (the %-hack), pipelined in one write.
        client.send(b"".join(b"RCPT TO:<victim%%%d@example.org>\r\n" % i
                             for i in range(1000)))
        await client.wait_closed()
    finally:
        globalLogPublisher.removeObserver(events.append)
    limit = r.service.config.server.max_errors
    assert len(client.replies) == limit
    assert all(reply.startswith("553 5.1.3 Address <victim%") for reply in
               client.replies[:-1])
    assert client.replies[-1] == TOO_MANY
    lines = [formatEvent(e) for e in events if "127.0.0.1" in formatEvent(e)]
    refusals = [line for line in lines if "553 5.1.3" in line]
    assert len(refusals) <= 4, refusals
    assert any(f"{limit - 3} more refused commands not logged one by one" in line
               for line in lines), lines


@pytest_twisted.ensureDeferred
async def test_relay_denied_floods_end_in_421(relay):
    r = await relay(make_config(allow_networks=NOWHERE, max_errors=5))
    client = await connect(r.port)
    await ehlo(client)
    client.send(b"MAIL FROM:<a@example.com>\r\n" * 50)
    await client.wait_closed()
    assert len(client.replies) == 5
    assert client.replies[0].startswith("550 5.7.1 Relaying denied")
    assert client.replies[-1] == TOO_MANY


@pytest_twisted.ensureDeferred
async def test_too_many_recipients_is_not_an_error(relay):
    # 452 4.5.3 tells an honest client to send the rest in another message (RFC 5321
    # 4.5.3.1.10); it must not be cut off for doing what it was told.
    r = await relay(make_config(max_recipients=2, max_errors=3))
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<a@example.com>")
    client.send(b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(10)))
    replies = await client.read(10)
    assert replies[:2] == ["250 2.1.5 Ok"] * 2
    assert all(reply.startswith("452 4.5.3 Too many recipients") for reply in replies[2:])
    assert (await client.command(b"DATA")).startswith("354")
    assert (await client.command(b"hi\r\n.\r\n")) == "250 2.0.0 Ok: queued as " + FIRST_ID


@pytest_twisted.ensureDeferred
async def test_an_accepted_message_starts_the_count_again(relay):
    r = await relay(make_config(max_errors=3))
    client = await connect(r.port)
    await ehlo(client)
    for _ in range(3):
        assert (await client.command(b"FOO")) == "500 5.5.2 Command not recognised"
        assert (await client.command(b"BAR")) == "500 5.5.2 Command not recognised"
        await client.command(b"MAIL FROM:<a@example.com>")
        await client.command(b"RCPT TO:<b@example.org>")
        await client.command(b"DATA")
        assert (await client.command(b"hi\r\n.\r\n")).startswith("250 2.0.0 Ok: queued")
    await client.command(b"FOO")
    await client.command(b"FOO")
    assert (await client.command(b"FOO")) == TOO_MANY


@pytest_twisted.ensureDeferred
async def test_a_recipient_flood_past_the_overshoot_counts_as_errors(relay):
    # Finding (low): 100,000 pipelined RCPTs were all answered 452 4.5.3, none counted.
    # Past RECIPIENT_OVERSHOOT of them (Postfix's smtpd_recipient_overshoot_limit)
    # each is an error toward max_errors.
    r = await relay(make_config(max_recipients=2, max_errors=5))
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<a@example.com>")
    flood = 2 + RECIPIENT_OVERSHOOT + 100
    client.send(b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(flood)))
    await client.wait_closed()
    replies = client.replies
    # 2 accepted, the overshoot answered 452 freely, then 4 counted 452s and the 421.
    assert replies[:2] == ["250 2.1.5 Ok"] * 2
    assert len(replies) == 2 + RECIPIENT_OVERSHOOT + 4 + 1
    assert all(reply.startswith("452 4.5.3 Too many recipients") for reply in replies[2:-1])
    assert replies[-1] == TOO_MANY
