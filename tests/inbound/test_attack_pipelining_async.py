"""
Pipelined commands after a reply that is decided asynchronously (the spool's commit,
the password check in a thread): later commands wait, and replies come in order.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, reactor

from tests.inbound.harness import ERP_PASSWORD, connect, ehlo, make_config, plain
from xrelay.inbound.testing import MemorySpool
from xrelay.testing.spool import FIRST_ID, memory_entry_id


def later(seconds: float) -> "defer.Deferred[None]":
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@pytest_twisted.ensureDeferred
async def test_commands_pipelined_behind_a_pending_commit_wait_their_turn(relay):
    spool = MemorySpool(hold_commits=True)
    r = await relay(make_config(), spool=spool)
    client = await connect(r.port)
    await ehlo(client)
    client.send(b"MAIL FROM:<scanner@example.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n"
                b"one\r\n.\r\n"
                b"MAIL FROM:<scanner@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                b"two\r\n.\r\nNOOP\r\n")
    first = await client.read(3)
    assert first == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    await later(0.2)
    # Nothing after the end of the first message is answered before its commit.
    assert client.replies == []
    assert len(spool.held) == 1
    spool.release()
    assert (await client.read(4)) == [
        "250 2.0.0 Ok: queued as " + FIRST_ID, "250 2.1.0 Ok", "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>"]
    await later(0.1)
    spool.release()
    assert (await client.read(2)) == ["250 2.0.0 Ok: queued as " + memory_entry_id(2), "250 2.0.0 Ok"]
    assert [e.recipients for e, _ in spool.messages()] == [
        ("a@example.org",), ("b@example.org",)]
    assert [d for _, d in spool.messages()][1].endswith(b"\r\ntwo\r\n")


@pytest_twisted.ensureDeferred
async def test_commands_pipelined_behind_auth_in_a_thread(relay, certs):
    r = await relay(make_config(certs))
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"STARTTLS")
    client.start_tls(certs)
    await ehlo(client)
    client.send(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD) + b"\r\n"
                b"MAIL FROM:<invoices@example.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n"
                b"hi\r\n.\r\nQUIT\r\n")
    assert (await client.read(6)) == [
        "235 2.7.0 Authentication successful", "250 2.1.0 Ok", "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 Ok: queued as " + FIRST_ID,
        "221 2.0.0 Bye"]
    [(envelope, _)] = r.spool.messages()
    assert envelope.authenticated_user == "erp"
