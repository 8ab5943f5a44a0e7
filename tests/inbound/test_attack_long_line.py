"""
An over-long line inside DATA: the message is refused at the real end of DATA, the
rest of the message is never read as commands, and nothing of it is kept.
"""

from __future__ import annotations

import pytest_twisted

from tests.inbound.harness import connect, ehlo, make_config
from xrelay.testing.spool import FIRST_ID


@pytest_twisted.ensureDeferred
async def test_long_data_line_does_not_fall_into_command_mode(relay):
    r = await relay(make_config(max_line_length=1000))
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.org>")
    assert (await client.command(b"DATA")).startswith("354")
    # 5000 bytes on one line, sent in pieces, then lines that look like commands.
    client.send(b"Subject: x\r\n\r\n")
    for _ in range(5):
        client.send(b"A" * 1000)
    client.send(b"\r\nRSET\r\nMAIL FROM:<ceo@example.com>\r\nRCPT TO:<v@example.org>\r\n"
                b"DATA\r\nQUIT\r\n.\r\n")
    replies = await client.read(1)
    [reply] = replies  # (issue 23: the text names the setting)
    assert reply.startswith("552 5.6.0 Message refused: a line is longer than 1000 bytes "
                            "(server.max_line_length")
    assert (await client.command(b"NOOP")) == "250 2.0.0 Ok"
    assert client.replies == []
    assert r.spool.stored == {}
    assert len(r.spool.aborted) == 1 and r.spool.aborted[0].data == b""
    # The connection is in command mode again and usable.
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.org>")
    await client.command(b"DATA")
    assert (await client.command(b"fine\r\n.\r\n")) == "250 2.0.0 Ok: queued as " + FIRST_ID
    [(_, data)] = r.spool.messages()
    assert data.endswith(b"\r\n\r\nfine\r\n") or data.endswith(b"\r\nfine\r\n")


@pytest_twisted.ensureDeferred
async def test_line_at_the_limit_is_accepted(relay):
    r = await relay(make_config(max_line_length=1000))
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.org>")
    await client.command(b"DATA")
    assert (await client.command(b"B" * 998 + b"\r\n.\r\n")) == (
        "250 2.0.0 Ok: queued as " + FIRST_ID)
    [(_, data)] = r.spool.messages()
    assert data.endswith(b"\r\n" + b"B" * 998 + b"\r\n")


@pytest_twisted.ensureDeferred
async def test_long_command_line_refused_and_not_executed(relay):
    r = await relay(make_config(max_line_length=1000))
    client = await connect(r.port)
    await ehlo(client)
    reply = await client.command(b"MAIL FROM:<" + b"a" * 2000 + b"@example.com>")
    assert reply == "500 5.5.2 Line too long; the limit is 1000 bytes"
    # No transaction was started by it.
    assert (await client.command(b"RCPT TO:<alice@example.org>")) == (
        "503 5.5.1 Need MAIL command first")
