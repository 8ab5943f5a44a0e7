"""
A printer set to "SMTP AUTH on, SSL off" on the trusted network (issue 23): with
C{auth_without_tls = "trusted"} on its listener it logs in and delivers; without it,
the 530 and the log line name the settings, and never a STARTTLS the listener does
not offer.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest_twisted

from tests.inbound.harness import (
    NOWHERE,
    SCANNER_PASSWORD,
    connect,
    ehlo,
    inline,
    make_config,
)
from xrelay.config import ListenerConfig


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


async def printer_login(client: Any) -> list[str]:
    """AUTH LOGIN as a printer does it: the command, the name, the password."""
    replies = [await client.command(b"AUTH LOGIN")]
    if replies[0].startswith("334"):
        replies.append(await client.command(b64("scanner")))
        replies.append(await client.command(b64(SCANNER_PASSWORD)))
    return replies


TRUSTED = (ListenerConfig("tcp:0:interface=127.0.0.1", auth_without_tls="trusted"),)


@pytest_twisted.ensureDeferred
async def test_printer_logs_in_without_tls_on_a_trusted_listener(relay: Any) -> None:
    r = await relay(make_config(listen=TRUSTED), run_blocking=inline)
    client = await connect(r.port)
    reply = await ehlo(client)
    assert "250-AUTH PLAIN LOGIN" in reply.split("\n")
    assert "STARTTLS" not in reply
    assert (await printer_login(client))[-1] == "235 2.7.0 Authentication successful"
    await client.command(b"MAIL FROM:<scanner@example.com>")
    await client.command(b"RCPT TO:<alice@example.net>")
    await client.command(b"DATA")
    reply = await client.command(b"Subject: scan\r\n\r\npage 1\r\n.\r\n")
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    [(envelope, data)] = r.spool.messages()
    assert envelope.authenticated_user == "scanner"


@pytest_twisted.ensureDeferred
async def test_a_client_outside_allow_networks_still_needs_tls(relay: Any, logged: Any
                                                               ) -> None:
    r = await relay(make_config(listen=TRUSTED, allow_networks=NOWHERE),
                    run_blocking=inline)
    client = await connect(r.port)
    reply = await ehlo(client)
    assert "AUTH" not in reply
    [refused] = await printer_login(client)
    assert refused.startswith("530 5.7.0 Authentication requires TLS and this listener "
                              "offers no STARTTLS (server.require_tls_for_auth = true")
    assert "STARTTLS command" not in refused  # never a command this listener lacks
    assert "auth_without_tls = \"trusted\"" in refused
    assert "require_tls_for_auth" in logged.text and "auth_without_tls" in logged.text


@pytest_twisted.ensureDeferred
async def test_starttls_off_listener_never_asks_for_starttls(relay: Any, certs: Any
                                                             ) -> None:
    listen = (ListenerConfig("tcp:0:interface=127.0.0.1", starttls=False),)
    r = await relay(make_config(certs, listen=listen), run_blocking=inline)
    client = await connect(r.port)
    reply = await ehlo(client)
    assert "STARTTLS" not in reply
    [refused] = await printer_login(client)
    assert refused.startswith("530 5.7.0 Authentication requires TLS")
    assert "Must issue a STARTTLS" not in refused
    # where STARTTLS is offered, the classic text leads (devices match it)
    r2 = await relay(make_config(certs), run_blocking=inline)
    client = await connect(r2.port)
    await ehlo(client)
    [refused] = await printer_login(client)
    assert refused.startswith("530 5.7.0 Must issue a STARTTLS command first "
                              "(server.require_tls_for_auth = true")
