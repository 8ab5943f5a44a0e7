"""
Finding (medium): a user's C{senders} covered only the envelope.  User C{scanner}
(allowed only scanner@example.com) sent C{From: printer@example.com} and it was
delivered; C{MAIL FROM:<>} was accepted for every user.  Kept here with the messages
the attacker sent.
"""

from __future__ import annotations

import attrs
import pytest
import pytest_twisted

from tests.inbound.harness import (
    NOWHERE,
    SCANNER_PASSWORD,
    connect,
    ehlo,
    inline,
    make_config,
    plain,
    users,
)
from xrelay.addresses import SenderPattern
from xrelay.inbound.headers import MAX_KEPT

RULE = 'users."scanner".senders; allowed: scanner@example.com'
PADDED = ('550 5.7.1 Header From: cannot be checked against users."scanner".senders for '
          "user scanner; send a plain From: with one of: scanner@example.com")


async def signed_in(relay, config=None):  # type: ignore[no-untyped-def]
    r = await relay(config or make_config(allow_networks=NOWHERE,
                                          require_tls_for_auth=False),
                    run_blocking=inline)
    client = await connect(r.port)
    await ehlo(client)
    assert (await client.command(b"AUTH PLAIN " + plain("scanner", SCANNER_PASSWORD))) == (
        "235 2.7.0 Authentication successful")
    return r, client


async def send(client, message: bytes, sender: bytes = b"scanner@example.com") -> str:  # type: ignore[no-untyped-def]
    assert (await client.command(b"MAIL FROM:<" + sender + b">")) == "250 2.1.0 Ok"
    assert (await client.command(b"RCPT TO:<alice@example.org>")) == "250 2.1.5 Ok"
    assert (await client.command(b"DATA")).startswith("354")
    return await client.command(message + b".\r\n")


@pytest.mark.parametrize("headers, reply", [
    (b"From: printer@example.com\r\n",
     f"550 5.7.1 Header From: <printer@example.com> is not allowed for user scanner by "
     f"{RULE}"),
    (b"From: \"Scanner\" <scanner@example.com>\r\nSender: ceo@example.com\r\n",
     f"550 5.7.1 Header Sender: <ceo@example.com> is not allowed for user scanner by "
     f"{RULE}"),
    (b"From: scanner@example.com, ceo@example.com\r\n",
     f"550 5.7.1 Header From: <ceo@example.com> is not allowed for user scanner by "
     f"{RULE}"),
    (b"From: scanner@example.com\r\nFrom:\r\n ceo@example.com\r\n",
     f"550 5.7.1 Header From: <ceo@example.com> is not allowed for user scanner by "
     f"{RULE}"),
    # Padding the header block past what is kept (folded lines, each short) must not
    # hide the forged field, nor leave only the honest one to be checked.
    (b"Subject: x\r\n" + b" yyyyyyy\r\n" * (MAX_KEPT // 8 + 1)
     + b"From: ceo@example.com\r\n", PADDED),
    (b"From: scanner@example.com\r\nSubject: x\r\n"
     + b" yyyyyyy\r\n" * (MAX_KEPT // 8 + 1)
     + b"From: ceo@example.com\r\n", PADDED),
], ids=["from", "sender", "second-address", "second-field", "padded", "padded-second"])
@pytest_twisted.ensureDeferred
async def test_forged_from_by_a_restricted_user_is_refused(relay, headers, reply):
    r, client = await signed_in(relay)
    assert (await send(client, headers + b"Subject: invoice\r\n\r\npay now\r\n")) == reply
    assert r.spool.stored == {} and len(r.spool.aborted) == 1
    # The session goes on: the next, honest message is accepted.
    assert (await send(client, b"From: Scanner <SCANNER@example.com>\r\n\r\nscan\r\n")
            ).startswith("250 2.0.0 Ok: queued as ")


@pytest_twisted.ensureDeferred
async def test_a_user_allowed_every_sender_is_not_checked(relay):
    scanner, erp = users()
    anyone = attrs.evolve(scanner, senders=(SenderPattern.parse("*"),))
    config = attrs.evolve(make_config(allow_networks=NOWHERE, require_tls_for_auth=False),
                          users=(anyone, erp))
    r, client = await signed_in(relay, config)
    assert (await send(client, b"From: printer@example.com\r\n\r\nscan\r\n")
            ).startswith("250 2.0.0 Ok: queued")


@pytest_twisted.ensureDeferred
async def test_network_clients_are_not_checked(relay):
    r = await relay(make_config())  # loopback is in allow_networks
    client = await connect(r.port)
    await ehlo(client)
    assert (await send(client, b"From: printer@example.com\r\n\r\nscan\r\n",
                       sender=b"scanner@example.com")).startswith("250 2.0.0 Ok: queued")


@pytest_twisted.ensureDeferred
async def test_null_sender_refused_for_a_user_without_it(relay):
    r, client = await signed_in(relay)
    assert (await client.command(b"MAIL FROM:<>")) == (
        '550 5.7.1 The null sender <> is not allowed for user scanner by '
        'users."scanner".senders; add "<>" to it if this device sends bounces')


@pytest_twisted.ensureDeferred
async def test_null_sender_for_a_user_that_names_it(relay):
    scanner, erp = users()
    bouncer = attrs.evolve(scanner, senders=scanner.senders + (SenderPattern.parse("<>"),))
    config = attrs.evolve(make_config(allow_networks=NOWHERE, require_tls_for_auth=False),
                          users=(bouncer, erp))
    r, client = await signed_in(relay, config)
    assert (await send(client, b"From: scanner@example.com\r\n\r\nbounce\r\n",
                       sender=b"")).startswith("250 2.0.0 Ok: queued")
