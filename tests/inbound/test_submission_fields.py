"""
The submission fixes (RFC 6409 section 8): a message without Date: or Message-ID: gets
them at the end of its own header block; a message that has them is stored
byte-identical.  Also what the relay learns while streaming DATA (8-bit data, declared
upstream as BODY=8BITMIME), and that an internal error in DATA ends the transaction with
451 and keeps nothing.
"""

from __future__ import annotations

import email
import email.policy
import re

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.inbound.harness import connect, ehlo, make_config, only_connection, until
from tests.inbound.test_smuggling_end_to_end import SendAtOnce, sandbox_transport
from xrelay.spool import Spool
from xrelay.testing.spool import FIRST_ID

COMPLETE = (b"From: Scanner <scanner@example.com>\r\nSubject: scan\r\n"
            b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nmessage-id: <abc@printer>\r\n"
            b"\r\nbody\r\n")

_DATE = rb"Date: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}\r\n"
_MESSAGE_ID = rb"Message-ID: <[0-9a-f]{12}\.[0-9a-f]{12}@relay\.test>\r\n"


def after_received(data: bytes) -> bytes:
    return data.split(b"\r\n", 3)[3]


async def send(relay, text: bytes, *packets: bytes):  # type: ignore[no-untyped-def]
    """One message; C{text} in one write, or in the given C{packets}."""
    r = await relay(make_config())
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.org>")
    assert (await client.command(b"DATA")).startswith("354 ")
    for packet in packets or (text,):
        client.send(packet)
    client.send(b".\r\n")
    assert (await client.read(1)) == ["250 2.0.0 Ok: queued as " + FIRST_ID]
    [(envelope, data)] = r.spool.messages()
    return envelope, data


@pytest.mark.parametrize("split", [False, True], ids=["one-packet", "line-by-line"])
@pytest_twisted.ensureDeferred
async def test_message_with_both_fields_is_byte_identical(relay, split):
    packets = COMPLETE.splitlines(keepends=True) if split else ()
    _, data = await send(relay, COMPLETE, *packets)
    assert after_received(data) == COMPLETE


@pytest.mark.parametrize("split", [False, True], ids=["one-packet", "line-by-line"])
@pytest_twisted.ensureDeferred
async def test_missing_fields_go_at_the_end_of_the_header_block(relay, split):
    text = b"From: scanner@example.com\r\nSubject: scan\r\n\r\nbody\r\n\r\nmore\r\n"
    packets = text.splitlines(keepends=True) if split else ()
    _, data = await send(relay, text, *packets)
    assert re.fullmatch(b"From: scanner@example.com\r\nSubject: scan\r\n" + _DATE
                        + _MESSAGE_ID + rb"\r\nbody\r\n\r\nmore\r\n", after_received(data))


@pytest_twisted.ensureDeferred
async def test_only_the_missing_field_is_added(relay):
    text = b"Subject: scan\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n"
    _, data = await send(relay, text)
    assert re.fullmatch(b"Subject: scan\r\nDate: Tue, 01 Dec 2026 10:00:00 \\+0000\r\n"
                        + _MESSAGE_ID + rb"\r\nbody\r\n", after_received(data))
    text = b"Message-ID: <x@printer>\r\n\r\nbody\r\n"
    _, data = await send(relay, text)
    assert re.fullmatch(b"Message-ID: <x@printer>\r\n" + _DATE + rb"\r\nbody\r\n",
                        after_received(data))


@pytest_twisted.ensureDeferred
async def test_header_only_message_gets_fields_appended(relay):
    _, data = await send(relay, b"Subject: no body, no empty line\r\n")
    assert re.fullmatch(b"Subject: no body, no empty line\r\n" + _DATE + _MESSAGE_ID,
                        after_received(data))


@pytest_twisted.ensureDeferred
async def test_empty_message_gets_fields(relay):
    _, data = await send(relay, b"")
    assert re.fullmatch(_DATE + _MESSAGE_ID, after_received(data))


@pytest_twisted.ensureDeferred
async def test_text_without_any_header_becomes_the_body(relay):
    """A device that sends only text: the fields come first, then the empty line."""
    _, data = await send(relay, b"Scan complete.\r\nPages: 3\r\n")
    assert re.fullmatch(_DATE + _MESSAGE_ID + rb"\r\nScan complete\.\r\nPages: 3\r\n",
                        after_received(data))


@pytest_twisted.ensureDeferred
async def test_fields_are_visible_to_the_header_readers(relay):
    r = await relay(make_config())
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.org>")
    await client.command(b"DATA")
    server = only_connection(r)
    client.send(b"Subject: scan\r\n\r\nbody\r\n")
    await until(lambda: server.transaction is not None and server.transaction.headers.done)
    headers = server.transaction.headers
    assert headers.has("date") and headers.has("message-id")
    assert headers.first("message-id").endswith("@relay.test>")


# -- through the real spool and transport into the Exchange stand-in ---------------


@pytest_twisted.ensureDeferred
async def test_upstream_receives_date_and_message_id_and_8bitmime(relay, sandbox, tmp_path):
    account, transport = sandbox_transport(sandbox)
    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    delivery = SendAtOnce(spool, transport)
    r = await relay(make_config(accounts=(account,)), spool=spool, delivery=delivery)
    try:
        client = await connect(r.port)
        await ehlo(client)
        # No BODY=8BITMIME, as devices do: the relay finds the 8-bit bytes itself.
        await client.command(b"MAIL FROM:<scanner@example.com>")
        await client.command(b"RCPT TO:<alice@example.net>")
        await client.command(b"DATA")
        body = "Grüße aus dem Scanner\r\n".encode("utf-8")
        client.send(b"Subject: scan\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body + b".\r\n")
        [reply] = await client.read(1)
        entry = reply.rsplit(" ", 1)[1]
        assert spool.get(entry).body_8bitmime is True
        await until(lambda: delivery.results, timeout=20)
        assert [x.reply.code for x in delivery.results[0].recipients] == [250]
        [message] = sandbox.mailbox.messages
        parsed = email.message_from_bytes(message.data, policy=email.policy.default)
        assert parsed["Date"] is not None and parsed["Date"].datetime is not None
        assert re.fullmatch(r"<[0-9a-f.]+@relay\.test>", parsed["Message-ID"])
        assert message.data.endswith(b"\r\n\r\n" + body)
    finally:
        await transport.close()


@pytest_twisted.ensureDeferred
async def test_ascii_message_is_not_declared_8bit(relay):
    envelope, _ = await send(relay, b"Subject: plain\r\n\r\nascii only\r\n")
    assert envelope.body_8bitmime is False
    envelope, _ = await send(relay, b"Subject: plain\r\n\r\n\xe9t\xe9\r\n")
    assert envelope.body_8bitmime is True


# -- an internal error in DATA: 451, nothing kept ------------------------------------


@pytest.mark.parametrize("where", ["line", "block"])
@pytest_twisted.ensureDeferred
async def test_internal_error_in_data_gives_451_and_no_spool_entry(relay, monkeypatch,
                                                                   logged, where):
    """A bug while a DATA line is handled must never end in a 250 for a partial message."""
    import xrelay.inbound.transaction as transaction_module

    calls = []

    def broken(*args):  # type: ignore[no-untyped-def]
        calls.append(args)
        raise RuntimeError("a bug")

    if where == "line":
        # Lines that are not plain (here: a stuffed dot) go one by one.
        monkeypatch.setattr(transaction_module, "data_line_bytes", broken)
        text = b"Subject: x\r\n\r\n..dot line\r\nafter\r\n"
    else:
        monkeypatch.setattr(transaction_module.MailCommands, "_data_block",
                            lambda self, block: broken(block))
        text = b"Subject: x\r\n\r\nplain line\r\n"
    r = await relay(make_config())
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.org>")
    await client.command(b"DATA")
    transaction_id = only_connection(r).transaction.id
    client.send(text + b".\r\n")
    assert (await client.read(1)) == ["451 4.3.0 Local error in processing, try again "
                                      "later"]
    assert calls
    assert (f"inbound message {transaction_id} from 127.0.0.1: internal error while "
            "receiving DATA; answering 451 4.3.0") in logged.text
    assert r.spool.stored == {}
    assert [m.aborted for m in r.spool.started] == [True]
    # The session goes on, in command mode.
    assert (await client.command(b"NOOP")) == "250 2.0.0 Ok"
