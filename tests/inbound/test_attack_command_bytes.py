"""
NUL bytes, control characters and non-ASCII in commands: 500 5.5.2, nothing executed,
and a client that only sends garbage is disconnected.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.inbound.harness import connect, ehlo, make_config

NON_ASCII = ("500 5.5.2 Non-ASCII characters in command; they are allowed only in "
             "addresses, with SMTPUTF8")


@pytest.mark.parametrize("line, reply", [
    (b"NOOP\x00", "500 5.5.2 NUL character in command"),
    (b"MAIL FROM:<a@example.com>\x00RCPT TO:<b@example.org>",
     "500 5.5.2 NUL character in command"),
    (b"\x00", "500 5.5.2 NUL character in command"),
    ("MAIL FROM:<jörg@example.com>".encode(), NON_ASCII),
    ("NOOP ü".encode(), NON_ASCII),
    (b"MAIL FROM:<\xff\xfe@example.com> SMTPUTF8", NON_ASCII),  # not even UTF-8
    (b"NO\x1bOP", "500 5.5.2 Control characters in command"),
    (b"NOOP\rRSET", "500 5.5.2 Control characters in command"),
    (b"\x16\x03\x01\x02\x00\x01\x00", "500 5.5.2 NUL character in command"),  # TLS hello
])
@pytest_twisted.ensureDeferred
async def test_bad_bytes_in_commands(relay, line, reply):
    r = await relay(make_config())
    client = await connect(r.port)
    await ehlo(client)
    assert (await client.command(line)) == reply
    # Nothing of it ran: no transaction exists.
    assert (await client.command(b"RCPT TO:<b@example.org>")) == (
        "503 5.5.1 Need MAIL command first")


@pytest_twisted.ensureDeferred
async def test_non_ascii_recipient_needs_smtputf8_transaction(relay):
    r = await relay(make_config())
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<a@example.com>")
    assert (await client.command("RCPT TO:<zoë@example.org>".encode())) == NON_ASCII


@pytest_twisted.ensureDeferred
async def test_garbage_client_is_disconnected(relay):
    r = await relay(make_config(max_errors=10))
    client = await connect(r.port)
    client.send(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n" + b"\x00junk\r\n" * 10)
    replies = await client.read(10)
    assert replies[:3] == ["500 5.5.2 Command not recognised"] * 3
    assert replies[-1] == "421 4.7.0 relay.test Too many errors, closing connection"
    await client.wait_closed()
    assert r.spool.started == []
