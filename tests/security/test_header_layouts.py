"""
Finding (medium): a restricted user forged C{From:} past a line that ended the relay's
header block early (C{":x"}, C{"From\\t:"}, a line without a colon), which Python's
C{email} (the parser of the independent Exchange stand-in) still read as the message's
C{From:}.  And C{relay.senders} covered only the envelope.

Every layout here is sent through a real listener on loopback by user C{scanner}
(allowed only scanner@example.com), and also read by the parsers an upstream could use:
Python's C{email} with C{policy.default} and with C{compat32}, and a line-oriented
reader that takes any C{name:} line before the first empty line, whatever comes before
it.  They read the layout as the upstream would get it: with the bare CRs and LFs that
the relay turns into CRLF already turned (L{xrelay.inbound.lines}).  A layout in which
any of them finds a C{From:} or C{Sender:} other than scanner@example.com must be
refused; every other layout must be accepted, and what was stored must again show no
parser a forbidden address.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re

import attrs
import pytest
import pytest_twisted

from tests.inbound.harness import NOWHERE, connect, ehlo, make_config, users
from tests.security.test_sender_rules import send, signed_in
from xrelay.addresses import SenderPattern
from xrelay.inbound.headers import MAX_KEPT

ALLOWED = "scanner@example.com"
OWN = b"Date: Mon, 7 Dec 2026 18:00:00 +0000\r\nMessage-ID: <layout@example.com>\r\n"

#: name, the header block as sent (the empty line and body are added).
LAYOUTS: list[tuple[str, bytes]] = [
    ("plain", OWN + b"From: scanner@example.com\r\n"),
    ("display-name", OWN + b'From: "Scanner" <SCANNER@example.com>\r\n'),
    ("folded-allowed", OWN + b"From:\r\n Scanner\r\n <scanner@example.com>\r\n"),
    ("group-allowed", OWN + b"From: Devices: scanner@example.com;\r\n"),
    ("space-colon-allowed", OWN + b"From : scanner@example.com\r\n"),
    ("encoded-name", OWN + b"From: =?utf-8?q?ceo=40example=2Ecom?= <scanner@example.com>\r\n"),
    ("no-from", OWN + b"Subject: scan\r\n"),
    ("bare-lf-empty-line", OWN + b"From: scanner@example.com\r\n\nFrom: ceo@example.com\r\n"),
    ("two-from", OWN + b"From: scanner@example.com\r\nFrom: printer@example.com\r\n"),
    ("forged-sender", OWN + b"From: scanner@example.com\r\nSender: ceo@example.com\r\n"),
    ("folded-list", OWN + b"From: scanner@example.com,\r\n ceo@example.com\r\n"),
    ("folded-value", OWN + b"From:\r\n\tceo@example.com\r\n"),
    ("group-forbidden", OWN + b"From: Devices: scanner@example.com, ceo@example.com;\r\n"),
    ("space-colon", OWN + b"From : ceo@example.com\r\n"),
    ("tab-colon", OWN + b"From\t: ceo@example.com\r\n"),
    ("upper-case", OWN + b"FROM: ceo@example.com\r\n"),
    ("empty-name", OWN + b":x\r\nFrom: printer@example.com\r\n"),
    ("no-colon", OWN + b"not a field\r\nFrom: printer@example.com\r\n"),
    ("spaced-name", OWN + b"X Y: z\r\nFrom: printer@example.com\r\n"),
    ("non-ascii-name", OWN + "Fr\u00f6m: x\r\n".encode() + b"From: printer@example.com\r\n"),
    ("leading-continuation", b" x\r\n" + OWN + b"From: printer@example.com\r\n"),
    ("leading-continuation-from", b" From: printer@example.com\r\n" + OWN),
    ("mbox-from-line", b"From printer@example.com\r\n" + OWN + b"From: printer@example.com\r\n"),
    ("bare-lf-between", OWN + b"From: scanner@example.com\r\nSubject: a\nFrom: ceo@example.com\r\n"),
    ("bare-cr-between", OWN + b"From: scanner@example.com\r\nSubject: a\rSender: ceo@example.com\r\n"),
    ("padded-watched", OWN + b"Subject: x\r\n" + b" yyyyyyy\r\n" * (MAX_KEPT // 8 + 1)
     + b"From: ceo@example.com\r\n"),
    ("padded-fields", OWN + b"".join(b"X-Pad-%d: yyyyyyyyyyyy\r\n" % i
                                     for i in range(MAX_KEPT // 16 + 1))
     + b"From: scanner@example.com\r\nFrom: ceo@example.com\r\n"),
    ("unparseable", OWN + b"From: <<<>>>\r\n"),
]


def upstream_bytes(message: bytes) -> bytes:
    """The message as the relay passes it on: every bare CR and LF made a CRLF."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", message)


def email_senders(message: bytes, policy: email.policy.Policy) -> list[str]:
    parsed = email.parser.BytesParser(policy=policy).parsebytes(message)
    found: list[str] = []
    for name in ("From", "Sender"):
        for value in parsed.get_all(name) or []:
            try:
                addresses = [a.addr_spec for a in value.addresses]  # policy.default
            except AttributeError:
                addresses = [a for _, a in email.utils.getaddresses([str(value)])]
            except Exception:
                addresses = []
            found.extend(addresses or [str(value)])
    return found


def grep_senders(message: bytes) -> list[str]:
    """The most lenient reader: any "From:"/"Sender:" line before the first empty line."""
    found: list[str] = []
    for line in message.split(b"\r\n"):
        if not line:
            break
        name, colon, value = line.lstrip(b" \t").partition(b":")
        if colon and name.strip(b" \t").lower() in (b"from", b"sender"):
            found.extend(a for _, a in email.utils.getaddresses(
                [value.decode("utf-8", "replace")]) if a)
            if not value.strip(b" \t"):
                found.append("")  # folded: the Python parsers read the rest
    return found


def forbidden(message: bytes) -> list[str]:
    """What any of the three readers takes for a sender other than the allowed one."""
    seen = (email_senders(message, email.policy.default)
            + email_senders(message, email.policy.compat32) + grep_senders(message))
    return [a for a in seen if a and a.lower() != ALLOWED]


def test_the_layouts_cover_what_the_issue_asks():
    """At least 19 layouts, each name once, and both outcomes present."""
    names = [name for name, _ in LAYOUTS]
    assert len(names) == len(set(names)) >= 19
    refused = [name for name, layout in LAYOUTS
               if forbidden(upstream_bytes(layout + b"\r\nbody\r\n"))]
    assert {"empty-name", "tab-colon", "no-colon", "two-from", "forged-sender",
            "folded-list", "space-colon", "leading-continuation", "bare-lf-between",
            "bare-cr-between", "group-forbidden", "padded-watched"} <= set(refused)
    assert {"plain", "group-allowed", "bare-lf-empty-line", "no-from"}.isdisjoint(refused)


@pytest.mark.parametrize("name, layout", LAYOUTS, ids=[name for name, _ in LAYOUTS])
@pytest_twisted.ensureDeferred
async def test_header_layout_from_a_restricted_user(relay, name, layout):
    message = layout + b"\r\nbody line\r\n"
    found = forbidden(upstream_bytes(message))
    r, client = await signed_in(relay)
    reply = await send(client, message)
    if found or name in ("unparseable", "padded-watched"):
        # Refused for what a parser finds, or for what the relay cannot check.
        assert reply.startswith("550 5.7.1 Header "), (name, found, reply)
        assert 'users."scanner".senders' in reply and "user scanner" in reply
        assert r.spool.stored == {}
    else:
        assert reply.startswith("250 2.0.0 Ok: queued as "), (name, reply)
        [(_, stored)] = r.spool.messages()
        assert forbidden(stored) == [], name
    # The session goes on.
    assert (await send(client, OWN + b"From: scanner@example.com\r\n\r\nok\r\n")
            ).startswith("250 2.0.0 Ok: queued as ")


@pytest_twisted.ensureDeferred
async def test_the_finding_is_refused_with_the_line_and_the_fix(relay):
    r, client = await signed_in(relay)
    reply = await send(client, OWN + b":x\r\nFrom: printer@example.com\r\n\r\nhi\r\n")
    assert reply == (
        '550 5.7.1 Header From: and Sender: cannot be checked against users."scanner".'
        "senders for user scanner: line 3 of the header block has an empty field name; "
        "end the header block with an empty line before the body")


@pytest_twisted.ensureDeferred
async def test_a_message_without_a_header_block_gets_one_and_passes(relay):
    """A body from the first line on (a script's message) is not a malformed block:
    the relay puts Date:, Message-ID: and the empty line in front of it."""
    r, client = await signed_in(relay)
    reply = await send(client, b"hello\r\nFrom: printer@example.com\r\n\r\nhi\r\n")
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    [(_, stored)] = r.spool.messages()
    assert b"\r\n\r\nhello\r\nFrom: printer@example.com\r\n" in stored
    assert forbidden(stored) == []


def network_config(senders: tuple[str, ...]):  # type: ignore[no-untyped-def]
    return make_config(relay_senders=senders)  # loopback is in allow_networks


@pytest.mark.parametrize("headers, reply", [
    (b"From: CEO <ceo@example.com>\r\n",
     "550 5.7.1 Header From: <ceo@example.com> is not allowed for clients admitted by "
     "network by relay.senders; allowed: printer@example.com"),
    (b"From: printer@example.com\r\nSender: ceo@example.com\r\n",
     "550 5.7.1 Header Sender: <ceo@example.com> is not allowed for clients admitted by "
     "network by relay.senders; allowed: printer@example.com"),
    (b":x\r\nFrom: ceo@example.com\r\n",
     "550 5.7.1 Header From: and Sender: cannot be checked against relay.senders for "
     "clients admitted by network: line 3 of the header block has an empty field name; "
     "end the header block with an empty line before the body"),
    (b"From: printer@example.com\r\n", None),
], ids=["from", "sender", "empty-name", "allowed"])
@pytest_twisted.ensureDeferred
async def test_relay_senders_when_restricted_apply_to_the_header(relay, headers, reply):
    r = await relay(network_config(("printer@example.com",)))
    client = await connect(r.port)
    await ehlo(client)
    got = await send(client, OWN + headers + b"\r\nscan\r\n", sender=b"printer@example.com")
    if reply is None:
        assert got.startswith("250 2.0.0 Ok: queued as ")
    else:
        assert got == reply
        assert r.spool.stored == {}


@pytest_twisted.ensureDeferred
async def test_relay_senders_star_checks_no_header(relay):
    r = await relay(network_config(("*",)))
    client = await connect(r.port)
    await ehlo(client)
    assert (await send(client, OWN + b":x\r\nFrom: ceo@example.com\r\n\r\nscan\r\n",
                       sender=b"printer@example.com")).startswith("250 2.0.0 Ok: queued")


@pytest_twisted.ensureDeferred
async def test_a_user_allowed_every_sender_is_not_refused_for_a_malformed_block(relay):
    scanner, erp = users()
    anyone = attrs.evolve(scanner, senders=(SenderPattern.parse("*"),))
    config = attrs.evolve(make_config(allow_networks=NOWHERE, require_tls_for_auth=False),
                          users=(anyone, erp))
    r, client = await signed_in(relay, config)
    assert (await send(client, OWN + b"From\t: x@example.com\r\n:x\r\n\r\nscan\r\n")
            ).startswith("250 2.0.0 Ok: queued")



@pytest.mark.parametrize("block, malformed", [
    (b"From: a@example.com\r\n\r\n", None),
    (b"From : a@example.com\r\nFrom\t: b@example.com\r\n\r\n", None),
    (b"hello\r\nFrom: a@example.com\r\n\r\n", None),  # a body from line 1: no header block
    (b"Date: x\r\n:x\r\n\r\n", "line 2 of the header block has an empty field name"),
    (b"Date: x\r\nnot a field\r\n\r\n",
     "line 2 of the header block has no colon (it is not a header field)"),
    (b" x\r\nFrom: a@example.com\r\n\r\n",
     "line 1 of the header block is a continuation line before any field"),
    (b"From printer@example.com\r\n\r\n",
     "line 1 of the header block has no colon (it is not a header field)"),
    (b"Date: x\r\nX Y: z\r\n\r\n", "line 2 of the header block has a field name with a "
     "space or a character outside printable US-ASCII"),
], ids=["plain", "obsolete-space", "body-first", "empty-name", "no-colon",
        "leading-continuation", "mbox-from", "spaced-name"])
def test_the_header_scanner_says_where_the_block_went_wrong(block, malformed):
    from xrelay.inbound.headers import HeaderBlock

    headers = HeaderBlock()
    headers.feed(block + b"body\r\n")
    assert headers.done and headers.malformed == malformed
    if block.startswith(b"From : "):
        assert headers.addresses("from") == ["a@example.com", "b@example.com"]
