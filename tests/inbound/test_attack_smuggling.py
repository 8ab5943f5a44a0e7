"""
SMTP smuggling: end-of-data look-alikes (bare LF / bare CR around a dot) must not end
the message, the commands after them must not run, and what reaches the spool must not
let an upstream see two messages after the transport dot-stuffs it.

Our choice (see L{xrelay.inbound.lines}): bare LF and bare CR inside DATA are
normalised to CRLF, and for strict clients (authenticated, or any client with
C{relay.bare_lf_end_of_data = "never"}) DATA ends only at CRLF "." CRLF.  Trusted devices
(admitted by network) may end DATA with a "." line whatever its line ends
(L{xrelay.inbound.leniency}); for them the test is that every transaction still reaches
the upstream as exactly one message.
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted

from tests.inbound.harness import NOWHERE, SCANNER_PASSWORD, connect, ehlo, inline, make_config, plain
from xrelay.transport.data import DotStuffer
from xrelay.testing.spool import FIRST_ID, memory_entry_id

SMUGGLED = (b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\npay this invoice\r\n")

VARIANTS = [b"\n.\n", b"\n.\r\n", b"\r.\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r",
            b"\r\n.\r\r\n", b"\n.\r\r\n"]


def upstream_view(spooled: bytes) -> bytes:
    """What a transport sends upstream for these spool bytes (real dot-stuffer)."""
    stuffer = DotStuffer()
    return stuffer.encode(spooled) + stuffer.finish()


def assert_one_message_upstream(spooled: bytes) -> None:
    # The spool holds only CRLF line ends: no bare CR, no bare LF.
    assert b"\r" not in spooled.replace(b"\r\n", b"")
    assert b"\n" not in spooled.replace(b"\r\n", b"")
    wire = upstream_view(spooled)
    # The only end-of-data-like sequence, by any server's lenient reading, is the last.
    assert [m.start() for m in re.finditer(rb"[\r\n]\.[\r\n]", wire)] == [len(wire) - 4]
    assert wire.endswith(b"\r\n.\r\n")


#: The clients read strictly: a user that authenticated from outside relay.allow_networks,
#: and a device inside them when the relay is told never to accept a bare-LF end.
STRICT = ["authenticated", "never"]


def strict_config(kind: str, **kwargs):  # type: ignore[no-untyped-def]
    if kind == "authenticated":
        return make_config(allow_networks=NOWHERE, require_tls_for_auth=False, **kwargs)
    return make_config(bare_lf_end_of_data="never", **kwargs)


async def strict_client(r, kind: str):  # type: ignore[no-untyped-def]
    client = await connect(r.port)
    await ehlo(client)
    if kind == "authenticated":
        assert (await client.command(b"AUTH PLAIN " + plain("scanner", SCANNER_PASSWORD))
                ).startswith("235 ")
    return client


async def send_variant(relay, variant: bytes, kind: str = "authenticated"):  # type: ignore[no-untyped-def]
    r = await relay(strict_config(kind), run_blocking=inline)
    client = await strict_client(r, kind)
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.org>")
    assert (await client.command(b"DATA")).startswith("354")
    client.send(b"Subject: scan\r\n\r\nhello" + variant + SMUGGLED + b".\r\n")
    replies = await client.read(1)
    # Give any (wrongly) executed smuggled command time to answer, then look.
    assert (await client.command(b"NOOP")) == "250 2.0.0 Ok"
    return r, replies, client


@pytest.mark.parametrize("kind", STRICT)
@pytest.mark.parametrize("variant", VARIANTS, ids=[repr(v) for v in VARIANTS])
@pytest_twisted.ensureDeferred
async def test_end_of_data_look_alike_does_not_end_the_message(relay, variant, kind):
    r, replies, client = await send_variant(relay, variant, kind)
    assert replies == ["250 2.0.0 Ok: queued as " + FIRST_ID]
    assert client.replies == []
    [(envelope, data)] = r.spool.messages()
    assert envelope.sender == "scanner@example.com"
    assert envelope.recipients == ("alice@example.org",)
    body = data.split(b"\r\n\r\n", 1)[1]
    # The smuggled "commands" are content of the one message.
    assert b"MAIL FROM:<ceo@example.com>\r\n" in body
    assert b"pay this invoice\r\n" in body
    assert_one_message_upstream(data)
    assert r.delivery.submissions == list(r.spool.stored)


@pytest.mark.parametrize("kind", STRICT)
@pytest_twisted.ensureDeferred
async def test_bare_lf_dot_is_kept_as_a_dot_line_exactly(relay, kind):
    r, replies, _ = await send_variant(relay, b"\n.\n", kind)
    [(_, data)] = r.spool.messages()
    body = data.split(b"\r\n\r\n", 1)[1]
    assert body == b"hello\r\n.\r\n" + SMUGGLED
    # Upstream it is stuffed: the recipient sees a line with one dot, not an end.
    assert b"\r\nhello\r\n..\r\nMAIL FROM" in upstream_view(data)


@pytest_twisted.ensureDeferred
async def test_bare_cr_becomes_a_line_break(relay):
    r, _, _ = await send_variant(relay, b"\r.\r\n")
    [(_, data)] = r.spool.messages()
    assert data.split(b"\r\n\r\n", 1)[1] == b"hello\r\n.\r\n" + SMUGGLED


@pytest.mark.parametrize("kind", STRICT)
@pytest_twisted.ensureDeferred
async def test_real_end_after_bare_lf_line_still_ends(relay, kind):
    """A message whose lines end in bare LF ends at the first proper CRLF.CRLF."""
    r = await relay(strict_config(kind), run_blocking=inline)
    client = await strict_client(r, kind)
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.org>")
    await client.command(b"DATA")
    assert (await client.command(b"Subject: lf\n\nline one\nline two\r\n.\r\n")) == (
        "250 2.0.0 Ok: queued as " + FIRST_ID)
    [(_, data)] = r.spool.messages()
    assert data.split(b"\r\n\r\n", 1)[1] == b"line one\r\nline two\r\n"


@pytest.mark.parametrize("kind", STRICT)
@pytest_twisted.ensureDeferred
async def test_smuggling_through_the_real_spool_leaves_one_entry(relay, tmp_path, kind):
    from twisted.internet import reactor

    from xrelay.spool import Spool

    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    r = await relay(strict_config(kind), spool=spool, run_blocking=inline)
    client = await strict_client(r, kind)
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.org>")
    await client.command(b"DATA")
    client.send(b"Subject: scan\r\n\r\nhello\n.\n" + SMUGGLED + b".\r\n")
    [reply] = await client.read(1)
    entry_id = reply.rsplit(" ", 1)[1]
    assert reply == f"250 2.0.0 Ok: queued as {entry_id}"
    assert spool.ids("queued") == [entry_id]
    data = spool.read_data(entry_id)
    assert data.split(b"\r\n\r\n", 1)[1] == b"hello\r\n.\r\n" + SMUGGLED
    assert_one_message_upstream(data)


# -- trusted devices: a bare-LF "." line ends DATA, one message per transaction ------


@pytest.mark.parametrize("variant", VARIANTS, ids=[repr(v) for v in VARIANTS])
@pytest_twisted.ensureDeferred
async def test_trusted_device_gets_one_upstream_message_per_transaction(relay, variant):
    """
    From relay.allow_networks, a "." line with bare line ends ends the message, and what
    follows is the device's next transaction: every accepted transaction is one spool
    entry, each of which an upstream reads as exactly one message.
    """
    r = await relay(make_config())
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.org>")
    assert (await client.command(b"DATA")).startswith("354")
    client.send(b"Subject: scan\r\n\r\nhello" + variant + SMUGGLED + b".\r\nNOOP\r\n")
    ends_here = variant in (b"\n.\n", b"\n.\r\n", b"\r\n.\n")
    if ends_here:
        replies = await client.read(6)
        assert replies == ["250 2.0.0 Ok: queued as " + FIRST_ID, "250 2.1.0 Ok", "250 2.1.5 Ok",
                           "354 End data with <CR><LF>.<CR><LF>",
                           "250 2.0.0 Ok: queued as " + memory_entry_id(2), "250 2.0.0 Ok"]
    else:
        assert (await client.read(2)) == ["250 2.0.0 Ok: queued as " + FIRST_ID, "250 2.0.0 Ok"]
    messages = r.spool.messages()
    # Each 250 to a DATA is one entry, and each entry is one message upstream.
    assert len(messages) == (2 if ends_here else 1)
    for _, data in messages:
        assert_one_message_upstream(data)
    first = messages[0][1].split(b"\r\n\r\n", 1)[1]
    if ends_here:
        # The first message is exactly the text before the dot, CRLF-normalised; the
        # second is the device's own second transaction, ending at its own dot.
        assert first == b"hello\r\n"
        assert messages[1][0].sender == "ceo@example.com"
        assert messages[1][1].split(b"\r\n\r\n", 1)[1] == b"pay this invoice\r\n"
    else:
        assert b"MAIL FROM:<ceo@example.com>\r\n" in first
