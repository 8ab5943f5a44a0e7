"""
Real devices' quirks, imitated with raw sockets, from a network in relay.allow_networks
(trusted: accepted, one message, byte-correct after CRLF normalisation) and from
outside it (strict: the strict reply, which names the setting when bare line ends are
the reason).  The client outside authenticates so that it may send at all; an
authenticated client is strict wherever it connects from.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from tests.inbound.harness import (
    NOWHERE,
    SCANNER_PASSWORD,
    connect,
    ehlo,
    inline,
    make_config,
    only_connection,
    plain,
    until,
)
from xrelay.transport.data import DotStuffer
from xrelay.testing.spool import FIRST_ID

#: A header block with both fields, so that the relay adds nothing to it.
HEADER = b"Subject: scan\nDate: Tue, 01 Dec 2026 10:00:00 +0000\nMessage-ID: <1@printer>\n"
BODY = b"page one\n..stuffed dot\nlast line"
#: What the spool must hold after the Received: line, whatever the line ends were.
NORMALISED = (b"Subject: scan\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
              b"Message-ID: <1@printer>\r\n\r\npage one\r\n.stuffed dot\r\nlast line\r\n")

#: Message text as devices send it, each with its own end of data.
ENDINGS = {
    "LF.LF": HEADER + b"\n" + BODY + b"\n.\n",
    "CRLF.LF": (HEADER + b"\n" + BODY).replace(b"\n", b"\r\n") + b"\r\n.\n",
    "LF.CRLF": HEADER + b"\n" + BODY + b"\n.\r\n",
    "LF-only body, CRLF.CRLF": (HEADER + b"\n").replace(b"\n", b"\r\n") + BODY
    + b"\r\n.\r\n",
}


class Logged:
    """The relay's log lines while a test runs."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    @property
    def text(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)


@pytest.fixture
def logged() -> Any:
    observer = Logged()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def after_received(data: bytes) -> bytes:
    """The message as the device sent it: what follows our three-line Received:."""
    return data.split(b"\r\n", 3)[3]


def upstream_view(spooled: bytes) -> bytes:
    stuffer = DotStuffer()
    return stuffer.encode(spooled) + stuffer.finish()


async def open_transaction(r: Any, authenticate: bool = False) -> Any:
    client = await connect(r.port)
    await ehlo(client, b"printer.lan")
    if authenticate:
        assert (await client.command(b"AUTH PLAIN " + plain("scanner", SCANNER_PASSWORD))
                ).startswith("235 ")
    assert (await client.command(b"MAIL FROM:<scanner@example.com>")) == "250 2.1.0 Ok"
    assert (await client.command(b"RCPT TO:<alice@example.org>")) == "250 2.1.5 Ok"
    assert (await client.command(b"DATA")).startswith("354 ")
    return client


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest_twisted.ensureDeferred
async def test_trusted_device_endings_give_one_byte_correct_message(relay, logged, ending):
    r = await relay(make_config())
    client = await open_transaction(r)
    client.send(ENDINGS[ending] + b"NOOP\r\n")
    assert (await client.read(2)) == ["250 2.0.0 Ok: queued as " + FIRST_ID, "250 2.0.0 Ok"]
    [(_, data)] = r.spool.messages()
    assert after_received(data) == NORMALISED
    wire = upstream_view(data)
    assert wire.count(b"\r\n.\r\n") == 1 and wire.endswith(b"\r\n.\r\n")
    assert b"\r\n..stuffed dot\r\n" in wire  # stuffed again on the way out
    if ending != "LF-only body, CRLF.CRLF":
        assert "relay.bare_lf_end_of_data" in logged.text


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest_twisted.ensureDeferred
async def test_strict_client_endings(relay, logged, ending):
    """
    From outside allow_networks (authenticated): only CRLF.CRLF ends DATA.  A bare-LF end
    is content; when the device then waits, the timeout reply and the log say why.
    """
    clock = Clock()
    r = await relay(make_config(allow_networks=NOWHERE, require_tls_for_auth=False,
                                idle_timeout=300), clock=clock, run_blocking=inline)
    client = await open_transaction(r, authenticate=True)
    client.send(ENDINGS[ending])
    if ending == "LF-only body, CRLF.CRLF":
        # The end is a proper CRLF.CRLF (after the last line's CRLF): accepted everywhere.
        assert (await client.read(1)) == ["250 2.0.0 Ok: queued as " + FIRST_ID]
        [(_, data)] = r.spool.messages()
        assert after_received(data) == NORMALISED
        return
    server = only_connection(r)
    await until(lambda: server.transaction is not None
                and server.transaction.dot_lookalikes == 1)
    clock.advance(301)
    [reply] = await client.read(1)
    assert reply.startswith("421 4.4.2 relay.test Error: timeout exceeded waiting for the "
                            "end of data; 1 \".\" line(s) with bare LF line ends did not "
                            "end the data: ")
    assert "relay.bare_lf_end_of_data" in reply and "relay.allow_networks" in reply
    assert r.spool.messages() == []
    assert "abandoned: timeout; 1 \".\" line(s) with bare LF" in logged.text
    assert "relay.bare_lf_end_of_data" in logged.text


@pytest_twisted.ensureDeferred
async def test_strict_client_that_gives_up_is_logged_with_the_reason(relay, logged):
    """Devices often time out first (60 s) and hang up: the log still says why."""
    r = await relay(make_config(allow_networks=NOWHERE, require_tls_for_auth=False),
                    run_blocking=inline)
    client = await open_transaction(r, authenticate=True)
    client.send(ENDINGS["LF.LF"])
    server = only_connection(r)
    await until(lambda: server.transaction is not None
                and server.transaction.dot_lookalikes == 1)
    client.transport.loseConnection()
    await until(lambda: "abandoned: connection lost; " in logged.text)
    assert "relay.bare_lf_end_of_data" in logged.text.split("abandoned: connection lost")[1]
    assert r.spool.messages() == []


@pytest_twisted.ensureDeferred
async def test_never_makes_a_trusted_device_strict(relay, logged):
    clock = Clock()
    r = await relay(make_config(bare_lf_end_of_data="never"), clock=clock)
    client = await open_transaction(r)
    client.send(ENDINGS["LF.LF"])
    server = only_connection(r)
    await until(lambda: server.transaction is not None
                and server.transaction.dot_lookalikes == 1)
    clock.advance(301)
    [reply] = await client.read(1)
    assert reply.startswith("421 4.4.2 ") and "relay.bare_lf_end_of_data" in reply
    assert r.spool.messages() == []


@pytest_twisted.ensureDeferred
async def test_authenticated_user_inside_the_network_stays_strict(relay):
    """Authenticated submission is strict wherever it comes from."""
    clock = Clock()
    r = await relay(make_config(require_tls_for_auth=False), clock=clock,
                    run_blocking=inline)
    client = await open_transaction(r, authenticate=True)
    client.send(ENDINGS["LF.LF"] + b"more text\r\n.\r\n")
    [reply] = await client.read(1)
    assert reply == "250 2.0.0 Ok: queued as " + FIRST_ID
    [(_, data)] = r.spool.messages()
    assert after_received(data).endswith(b"last line\r\n.\r\nmore text\r\n")


# -- the greeting --------------------------------------------------------------


@pytest.mark.parametrize("greeting", [None, b"HELO", b"HELO ", b"HELO my printer",
                                      b"EHLO HP LaserJet M404"],
                         ids=["no HELO", "HELO", "HELO space", "HELO my printer",
                              "EHLO with spaces"])
@pytest_twisted.ensureDeferred
async def test_trusted_device_greeting_quirks_are_accepted(relay, logged, greeting):
    r = await relay(make_config())
    client = await connect(r.port)
    if greeting is not None:
        assert (await client.command(greeting)).startswith("250")
    assert (await client.command(b"MAIL FROM:<scanner@example.com>")) == "250 2.1.0 Ok"
    assert (await client.command(b"RCPT TO:<alice@example.org>")) == "250 2.1.5 Ok"
    assert (await client.command(b"DATA")).startswith("354 ")
    assert (await client.command(HEADER.replace(b"\n", b"\r\n") + b"\r\nhello\r\n.\r\n")
            ) == "250 2.0.0 Ok: queued as " + FIRST_ID
    [(envelope, data)] = r.spool.messages()
    assert after_received(data) == HEADER.replace(b"\n", b"\r\n") + b"\r\nhello\r\n"
    # The odd name is recorded, made harmless, in the Received: line.
    name = (greeting or b"").partition(b" ")[2].strip(b" ").decode()
    assert envelope.client_helo == name
    expected = name.replace(" ", "?") or "unknown"
    assert data.startswith(f"Received: from {expected} ([127.0.0.1])\r\n".encode())
    assert "accepted (a device in relay.allow_networks)" in logged.text


@pytest_twisted.ensureDeferred
async def test_greeting_quirks_from_outside_get_the_strict_replies(relay):
    r = await relay(make_config(allow_networks=NOWHERE))
    client = await connect(r.port)
    assert (await client.command(b"MAIL FROM:<scanner@example.com>")) == (
        "503 5.5.1 Send EHLO/HELO first")
    assert (await client.command(b"HELO")) == "501 5.5.4 Syntax: HELO hostname"
    assert (await client.command(b"HELO my printer")) == "501 5.5.4 Syntax: HELO hostname"
    assert (await client.command(b"EHLO")) == "501 5.5.4 Syntax: EHLO hostname"
    assert (await client.command(b"HELO printer.lan")) == "250 relay.test"
