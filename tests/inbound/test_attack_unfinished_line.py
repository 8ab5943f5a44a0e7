"""
A client that never finishes a line: the server keeps at most one line limit of it in
memory, and the idle timeout (which only complete lines reset) disconnects it.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet.task import Clock

from tests.inbound.harness import connect, ehlo, make_config, only_connection, until

TIMEOUT = "421 4.4.2 relay.test Error: timeout exceeded"


@pytest_twisted.ensureDeferred
async def test_endless_command_line_is_bounded_then_timed_out(relay):
    clock = Clock()
    r = await relay(make_config(max_line_length=1000, idle_timeout=60), clock=clock)
    client = await connect(r.port)
    await ehlo(client)
    protocol = only_connection(r)
    sent = 0
    for _ in range(50):
        client.send(b"A" * 10_000)
        sent += 10_000
    await until(lambda: protocol.lines._discarding)
    assert protocol.lines.pending <= 1000 + 65536
    # Bytes keep arriving, but a partial line is not activity: the timer still runs.
    clock.advance(59)
    client.send(b"B" * 10_000)
    assert client.replies == []
    clock.advance(1)
    assert (await client.read(1)) == [TIMEOUT]
    await client.wait_closed()
    assert protocol.lines.pending <= 1000 + 65536


@pytest_twisted.ensureDeferred
async def test_endless_data_line_is_timed_out_and_message_dropped(relay):
    clock = Clock()
    r = await relay(make_config(max_line_length=1000, idle_timeout=60), clock=clock)
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<a@example.com>")
    await client.command(b"RCPT TO:<b@example.org>")
    await client.command(b"DATA")
    protocol = only_connection(r)
    client.send(b"complete line\r\n")
    await until(lambda: protocol.transaction.received > 0)
    clock.advance(30)  # a complete line arrived at t=0: the timer restarted then
    for _ in range(20):
        client.send(b"C" * 5000)
    await until(lambda: protocol.lines._discarding)
    clock.advance(29.9)
    assert client.replies == []
    clock.advance(0.2)
    assert (await client.read(1)) == [TIMEOUT]
    await client.wait_closed()
    assert r.spool.stored == {} and len(r.spool.aborted) == 1
